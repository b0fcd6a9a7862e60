"""The pure-PyTorch DRConv kernels: sorted rows, one GEMM per (sample, region).

Every output pixel is a row. Per sample, rows are ordered by region (a stable sort of the region
map), so each region owns one contiguous run of rows. The k x k input patches are gathered
straight from the zero-padded, channels-last input (im2col fused with the gather: one
``index_select`` of whole ``C_in`` vectors), and each region's run is multiplied by that region's
filter only. The sorted pixels are cut into spans of bounded size, so the working memory does
not grow with the image.

Layouts used here (``L = H_out * W_out``, ``K = kh * kw * C_in``):
    padded input    (B, H_pad * W_pad, C_in)   channels-last
    filters         (B, m, C_out, K)           K ordered (kh, kw, C_in)
    patch index     (L, kh * kw)               flat positions in the padded input
"""
from typing import Iterator, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

# Elements one span may hold in its largest temporary (gathered patches or all-region responses).
PIECE_ELEMENTS = 1 << 22


class Geometry(NamedTuple):
    """Convolution geometry: kernel, stride, padding and dilation as (h, w) pairs."""

    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]


def pad_channels_last(x: torch.Tensor, padding: Tuple[int, int]) -> torch.Tensor:
    """Zero-pad ``x`` (B, C, H, W) and return it channels-last as (B, H_pad * W_pad, C)."""
    ph, pw = padding
    x = x.permute(0, 2, 3, 1)
    if ph or pw:
        x = F.pad(x, (0, 0, pw, pw, ph, ph))
    b, hp, wp, c = x.shape
    return x.contiguous().view(b, hp * wp, c)


def patch_index(padded_size: Tuple[int, int], output_size: Tuple[int, int], geo: Geometry,
                device: torch.device) -> torch.Tensor:
    """Flat padded-input positions read by each output pixel: (L, kh * kw), int64."""
    wp = padded_size[1]
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    rows = torch.arange(output_size[0], device=device) * sh
    cols = torch.arange(output_size[1], device=device) * sw
    base = (rows[:, None] * wp + cols[None, :]).reshape(-1, 1)
    taps = (torch.arange(kh, device=device)[:, None] * (dh * wp)
            + torch.arange(kw, device=device)[None, :] * dw).reshape(1, -1)
    return base + taps


class Span(NamedTuple):
    """A run of one sample's region-sorted pixels and the regions it holds.

    ``pixels`` (Tensor[n], int64) are the pixels in region order; ``segments`` lists
    ``(region, lo, hi)``: rows ``lo:hi`` of the span belong to ``region``.
    """

    pixels: torch.Tensor
    segments: List[Tuple[int, int, int]]


def region_spans(region: torch.Tensor, num_regions: int, max_rows: int) -> Iterator[Span]:
    """Sort one sample's pixels by region and cut them into spans of at most ``max_rows``.

    Args:
        region (Tensor[L]): region of each output pixel.
        num_regions (int): m.
        max_rows (int): longest span yielded.
    """
    order = torch.argsort(region, stable=True)
    ends = torch.bincount(region, minlength=num_regions).cumsum(0).tolist()
    starts = [0] + ends[:-1]
    for lo in range(0, region.numel(), max_rows):
        hi = min(lo + max_rows, region.numel())
        segments = [(r, max(a, lo) - lo, min(b, hi) - lo)
                    for r, (a, b) in enumerate(zip(starts, ends)) if min(b, hi) > max(a, lo)]
        yield Span(order[lo:hi], segments)


def gather_patches(padded: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Patches from one sample's padded input (P, C) at ``taps`` (n, kh * kw): (n, kh * kw * C)."""
    return padded.index_select(0, taps.view(-1)).view(taps.shape[0], -1)


def forward(padded: torch.Tensor, filters: torch.Tensor, region: torch.Tensor,
            index: torch.Tensor) -> torch.Tensor:
    """Selected-filter convolution, rows out.

    Args:
        padded (Tensor[B, P, C_in]): padded channels-last input.
        filters (Tensor[B, m, C_out, K]): per-sample region filters.
        region (Tensor[B, L]): region of each output pixel.
        index (Tensor[L, kh * kw]): patch index.

    Returns:
        Tensor[B, L, C_out]: output rows (channels-last).
    """
    b, m, c_out, k = filters.shape
    out = padded.new_empty(b, region.shape[1], c_out)
    max_rows = max(1, PIECE_ELEMENTS // k)
    for s in range(b):
        for span in region_spans(region[s], m, max_rows):
            rows = gather_patches(padded[s], index.index_select(0, span.pixels))
            span_out = rows.new_empty(rows.shape[0], c_out)
            for r, lo, hi in span.segments:
                torch.mm(rows[lo:hi], filters[s, r].t(), out=span_out[lo:hi])
            out[s].index_copy_(0, span.pixels, span_out)
    return out


def backward(grad_rows: torch.Tensor, padded: torch.Tensor, filters: torch.Tensor,
             region: torch.Tensor, index: torch.Tensor, need_input: bool, need_filters: bool,
             scores_of: Optional[str]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor],
                                                Optional[torch.Tensor]]:
    """Gradients of :func:`forward`, on the same sorted spans.

    Args:
        grad_rows (Tensor[B, L, C_out]): gradient of the output rows.
        padded, filters, region, index: as in :func:`forward`.
        need_input, need_filters (bool): whether to compute those gradients.
        scores_of (str or None): None, ``'all'`` (every region's score: one dense GEMM against
            all m filters per span, m convolutions' worth of work) or ``'selected'`` (the
            selected region's score only, almost free).

    Returns:
        (grad_padded, grad_filters, scores): Tensor[B, P, C_in], Tensor[B, m, C_out, K] and
        scores, Tensor[B, L, m] (``'all'``) or Tensor[B, L] (``'selected'``), or None each.
        ``scores[b, p, j]`` is the inner product of the output gradient at p with region j's
        response at p, <dL/dy_p, (W[b, j] * x)_p>, what the guide gradient is made of.
    """
    b, m, c_out, k = filters.shape
    c_in = padded.shape[2]
    grad_padded = torch.zeros_like(padded) if need_input else None
    grad_filters = torch.empty_like(filters) if need_filters else None
    scores = None
    if scores_of is not None:
        scores = padded.new_empty((b, region.shape[1], m) if scores_of == 'all' else region.shape)
    max_rows = max(1, PIECE_ELEMENTS // (max(k, m * c_out) if scores_of == 'all' else k))
    for s in range(b):
        unwritten = set(range(m))  # regions whose filter gradient is not written yet
        for span in region_spans(region[s], m, max_rows):
            taps = index.index_select(0, span.pixels)
            rows = gather_patches(padded[s], taps)
            grad = grad_rows[s].index_select(0, span.pixels)
            grad_patches = torch.empty_like(rows)
            for r, lo, hi in span.segments:
                if need_filters:
                    grad_filters[s, r].addmm_(grad[lo:hi].t(), rows[lo:hi],
                                              beta=0 if r in unwritten else 1)
                    unwritten.discard(r)
                torch.mm(grad[lo:hi], filters[s, r], out=grad_patches[lo:hi])
            if need_input:
                grad_padded[s].index_add_(0, taps.view(-1), grad_patches.view(-1, c_in))
            if scores_of == 'all':
                responses = torch.mm(rows, filters[s].reshape(m * c_out, k).t())
                span_scores = torch.bmm(responses.view(-1, m, c_out), grad.unsqueeze(2))
                scores[s].index_copy_(0, span.pixels, span_scores.squeeze(2))
            elif scores_of == 'selected':
                scores[s].index_copy_(0, span.pixels, (grad_patches * rows).sum(1))
        if need_filters:
            grad_filters[s, list(unwritten)] = 0  # regions without pixels get no gradient
    return grad_padded, grad_filters, scores

"""The pure-PyTorch DRConv kernels: one GEMM per (sample, region) group of sorted rows.

The output pixels are sorted by (sample, region) (:mod:`drconv.sorted_rows`), their patches
gathered (:mod:`drconv.patches`), and each group multiplied by its own filter only: one GEMM
per group in spans of bounded size, so the working memory does not grow with the image, or one
batched GEMM per sample whose groups are balanced. The temporaries come from
:func:`drconv.scratch.scratch` (on CPU, memory kept between calls; the all-region responses of
the exact guide gradient excepted: oneDNN makes those, :func:`region_scores`), and the results
are copied to their pixels.

Layouts used here (``L = H_out * W_out``, ``K = kh * kw * C_in``):
    filters         (B, m, C_out, K)    K ordered (kh, kw, C_in)
    output rows     (B, L, C_out)       channels-last
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .patches import (COLUMN_PAD, Patches, blocks_of, channels_last, from_rows,
                      padded_columns, put_columns)
from .onednn import linear
from .scratch import scratch
from .sorted_rows import Blocks, RowLayout, Span, in_run, runs, spans

# Elements of gathered patches one span may hold (bounds the rows of a span).
PIECE_ELEMENTS = 1 << 20
# Rows of all-region responses (rows x m x C_out) computed at a time for the exact guide gradient.
RESPONSE_ROWS = 512


def forward(x: Tensor, filters: Tensor, layout: RowLayout, index: Tensor, zero_row: bool,
            out_size: Tuple[int, int]) -> Tensor:
    """Selected-filter convolution.

    Args:
        x (Tensor[B, C_in, H, W]): input.
        filters (Tensor[B, m, C_out, K]): per-sample region filters.
        layout (RowLayout): the output pixels sorted by region (:func:`row_layout`).
        index (Tensor[L, kh * kw]): patch index.
        zero_row (bool): whether the convolution pads (``index`` reads the zero row).
        out_size (Tuple[int, int]): (H_out, W_out).

    Returns:
        Tensor[B, C_out, H_out, W_out]: the output, in the memory format of x.
    """
    b, m, c_out, k = filters.shape
    flat_filters = filters.view(b * m, c_out, k)
    (order, ends), blocks = layout
    patches_of = Patches(x, index, order, zero_row, 'input_rows')
    l = order.numel() // b
    columns = patches_of.per_sample  # NCHW in and out: each GEMM writes output columns
    if columns:
        out = x.new_empty(b, c_out, l)
    else:  # the output itself when channels-last (from_rows gives a view), else a temporary
        out = (x.new_empty(b * l, c_out) if channels_last(x)
               else scratch('result_rows', b * l * c_out, x).view(-1, c_out))
    if blocks.samples:
        forward_blocks(patches_of, filters, blocks, out)
    batched = set(blocks.samples)
    max_rows = max(1, PIECE_ELEMENTS // k)
    n = min(max_rows, l)  # rows of the longest span: spans hold one sample
    patches_buffer = scratch('patches', patches_of.buffer_numel(n), x)
    span_out_buffer = scratch('span_out', c_out * (n + COLUMN_PAD), x)
    for span in spans(ends, max_rows, m, skip=batched):
        sample = span.segments[0][0] // m
        patches = patches_of.gather(span, m, patches_buffer)
        if columns:
            span_out = padded_columns(span_out_buffer, c_out, span.hi - span.lo)
            for g, lo, hi in span.segments:
                torch.mm(flat_filters[g], patches[lo:hi].t(), out=span_out[:, lo:hi])
            put_columns(out[sample], order[span.lo:span.hi] % l, span_out)
        else:
            span_out = span_out_buffer[:(span.hi - span.lo) * c_out].view(-1, c_out)
            for g, lo, hi in span.segments:
                torch.mm(patches[lo:hi], flat_filters[g].t(), out=span_out[lo:hi])
            out.index_copy_(0, order[span.lo:span.hi], span_out)
    if columns:
        return out.view(b, c_out, *out_size)
    return from_rows(out.view(b, -1, c_out), out_size, x)


def forward_blocks(patches_of: Patches, filters: Tensor, blocks: Blocks, out: Tensor) -> None:
    """The forward of the samples in ``blocks``, in runs of consecutive samples (:func:`runs`):
    one gather of the run's patches, one ``bmm`` per sample of its m padded groups by its m
    filters, and one ``index_select`` putting the run's products in pixel order (columns: into
    rows, then into ``out`` with one transposing copy, twice as fast as one per sample).

    Args:
        patches_of (Patches): x at the sorted rows' taps.
        filters (Tensor[B, m, C_out, K]): per-sample region filters.
        blocks (Blocks): the samples done here.
        out (Tensor): the output, (B, C_out, L) (columns) or rows (B * L, C_out).
    """
    b, m, c_out, k = filters.shape
    l = patches_of.pixels_out
    # rows in pixel order: ``out`` itself (rows), or a temporary (columns)
    rows_out = (scratch('result_rows', b * l * c_out, out).view(-1, c_out)
                if patches_of.per_sample else out)
    for samples, width in runs(blocks, max(k, c_out)):
        n = len(samples)
        taps = patches_of.block_taps(samples, blocks, width)
        patches = patches_of.gather_blocks(samples, taps, scratch('patches', n * width * k, out))
        products = scratch('span_out', n * width * c_out, out).view(n, width, c_out)
        for i, s in enumerate(samples):
            torch.bmm(blocks_of(patches[i], blocks.widths[s], m), filters[s].transpose(1, 2),
                      out=blocks_of(products[i], blocks.widths[s], m))
        rows = slice(samples.start * l, samples.stop * l)
        torch.index_select(products.view(-1, c_out), 0, in_run(blocks.pixel_slot[rows], n, width),
                           out=rows_out[rows])
    if patches_of.per_sample:
        rows_out = rows_out.view(b, l, c_out)
        if len(blocks.samples) == b:
            out.copy_(rows_out.transpose(1, 2))
        else:
            for s in blocks.samples:
                out[s].copy_(rows_out[s].t())


def backward(grad_out: Tensor, x: Tensor, filters: Tensor, layout: RowLayout, index: Tensor,
             zero_row: bool, need_input: bool, need_filters: bool, scores_of: Optional[str]
             ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of :func:`forward`, on the same sorted spans.

    Args:
        grad_out (Tensor[B, C_out, H_out, W_out]): gradient of the output.
        x, filters, layout, index, zero_row: as in :func:`forward`.
        need_input, need_filters (bool): whether to compute those gradients.
        scores_of (str or None): None, ``'all'`` (every region's score, m convolutions' worth
            of work: per span, one dense GEMM against the sample's m filters, or with
            K <= C_out one ``bmm`` of every region's patch gradient) or ``'selected'`` (the
            selected region's score only, almost free).

    Returns:
        (grad_x, grad_filters, scores): Tensor[B, C_in, H, W] in the memory format of x,
        Tensor[B, m, C_out, K] and scores, Tensor[B, L, m] (``'all'``) or Tensor[B, L]
        (``'selected'``), or None each.
        ``scores[b, p, j]`` is the inner product of the output gradient at p with region j's
        response at p, <dL/dy_p, (W[b, j] * x)_p>, what the guide gradient is made of.
    """
    b, m, c_out, k = filters.shape
    c_in = x.shape[1]
    flat_filters = filters.view(b * m, c_out, k)
    (order, ends), blocks = layout
    patches_of = Patches(x, index, order, zero_row, 'input_rows')
    identity = torch.arange(index.shape[0], device=index.device)[:, None]
    grads_of = Patches(grad_out, identity, order, False, 'grad_rows')
    columns = patches_of.per_sample  # x read (and its gradient written) column-wise
    grad_x = None
    if need_input and columns:  # a 1x1 kernel reads each input pixel at most once, and with
        # stride 1 exactly once: then every pixel's gradient is written, and none need zeroing
        pixels = x.shape[2] * x.shape[3]
        grad_x = (x.new_empty if index.shape[0] == pixels else x.new_zeros)(b, c_in, pixels)
    elif need_input:  # the gradient itself when channels-last (from_rows gives a view)
        grad_x = (x.new_zeros(b * patches_of.rows_per_sample, c_in) if channels_last(x) else
                  scratch('result_rows', b * patches_of.rows_per_sample * c_in, x)
                  .view(-1, c_in).zero_())
    # zeroed at once (groups without pixels keep it): MKL reads a GEMM's output before
    # writing it, so each fresh page would fault twice, and one memset is one parallel region
    grad_filters = torch.zeros_like(flat_filters) if need_filters else None
    scores = None
    if scores_of is not None:
        shape = (order.numel(), m) if scores_of == 'all' else (order.numel(),)
        scores = scratch('scores', order.numel() * (m if scores_of == 'all' else 1), x).view(shape)
    # rows only: a 1x1 kernel read column-wise has small per-group GEMMs, and its all-region
    # scores need the unpadded rows anyway (batched there, fwd+bwd took 28.3 vs 27.0 ms)
    batched = (set() if columns or not (need_input or need_filters or scores_of == 'selected')
               else set(blocks.samples))
    if batched:
        backward_blocks(patches_of, grads_of, filters, blocks, grad_x, grad_filters,
                        scores_of, scores)
    max_rows = max(1, PIECE_ELEMENTS // k)
    n = min(max_rows, order.numel())  # rows of the longest span
    patches_buffer = scratch('patches', patches_of.buffer_numel(n), x)
    # scratch shared with the forward ('result_rows': the rows a result is assembled in, the
    # output there, x's gradient here; 'span_out') is never in use by both at once
    grad_buffer = scratch('span_out', grads_of.buffer_numel(n), x)
    grad_patches_buffer = (scratch('grad_patches', k * (n + COLUMN_PAD), x)
                           if need_input or scores_of == 'selected' else None)
    step = min(RESPONSE_ROWS, max_rows)  # all-region responses, RESPONSE_ROWS rows at a time
    if scores_of == 'all' and k <= c_out:  # for scores_via_patch_grads (region_scores: oneDNN's)
        responses_buffer = scratch('responses', step * m * k, x)
    # one sample per span (what column reads need), split evenly: the all-region scores pack
    # the sample's m filters once per GEMM, so a short leftover span would cost a whole packing
    for span in spans(ends, max_rows, m, skip=batched if scores_of != 'all' else ()):
        sample = span.segments[0][0] // m
        done = sample in batched  # by backward_blocks, all but the all-region scores
        count = span.hi - span.lo
        patches = patches_of.gather(span, m, patches_buffer)
        grad = grads_of.gather(span, m, grad_buffer)
        grad_patches = (patch_grads(grad_patches_buffer, columns, count, k)
                        if not done and grad_x is not None else None)
        # with K <= C_out the scores come from every region's patch gradient, which gives the
        # selected one's for free (1x1 fwd+bwd: 0 vs 64 GEMMs of one group each)
        via_patch_grads = scores_of == 'all' and k <= c_out and not done
        if scores_of == 'all':
            for a in range(0, count, step):
                z = min(a + step, count)
                if via_patch_grads:
                    segments = [(g % m, max(lo, a) - a, min(hi, z) - a)
                                for g, lo, hi in span.segments if lo < z and hi > a]
                    scores_via_patch_grads(
                        patches[a:z], grad[a:z], filters[sample], segments, responses_buffer,
                        scores[span.lo + a:span.lo + z],
                        grad_patches[a:z] if grad_patches is not None else None)
                else:
                    region_scores(patches[a:z], grad[a:z], filters[sample].view(m * c_out, k),
                                  scores[span.lo + a:span.lo + z])
        if not done and (need_input or need_filters or scores_of == 'selected'):
            backward_span(span, sample, patches, grad, flat_filters, patches_of,
                          grad_patches_buffer, via_patch_grads, grad_x, grad_filters,
                          scores if scores_of == 'selected' else None)
    if need_filters:
        grad_filters = grad_filters.view_as(filters)
    if need_input and columns:
        grad_x = grad_x.view_as(x)
    elif need_input:
        rows = grad_x.view(b, patches_of.rows_per_sample, c_in)
        grad_x = from_rows(rows[:, :x.shape[2] * x.shape[3]], x.shape[2:], x)
    if scores is not None:
        scores = torch.empty_like(scores).index_copy_(0, order, scores).view(
            b, -1, *scores.shape[1:])
    return grad_x, grad_filters, scores


def backward_span(span: Span, sample: int, patches: Tensor, grad: Tensor, flat_filters: Tensor,
                  patches_of: Patches, grad_patches_buffer: Tensor, have_grad_patches: bool,
                  grad_x: Optional[Tensor], grad_filters: Optional[Tensor],
                  selected_scores: Optional[Tensor]) -> None:
    """The backward of one span, one GEMM per group, but for the all-region scores.

    Args:
        span (Span), sample (int): the sorted rows done, all of that sample.
        patches, grad (Tensor[n, K], Tensor[n, C_out]): their patches and output gradient.
        flat_filters (Tensor[B * m, C_out, K]): per-sample region filters.
        patches_of (Patches): x at the sorted rows' taps.
        grad_patches_buffer (Tensor or None): scratch of at least K * (n + COLUMN_PAD)
            elements, for the patches' gradient (:func:`patch_grads`; None when neither x's
            gradient nor the selected scores are asked for); ``have_grad_patches``: it holds
            them already (:func:`scores_via_patch_grads`).
        grad_x, grad_filters: as :func:`backward` fills them (None: not asked), the gradient
            of x as (B, C_in, H * W) (columns) or rows (B * P, C_in), the filters' as
            (B * m, C_out, K), zeroed, the groups' gradients added to it.
        selected_scores (Tensor or None): the selected region's scores, (B * L), sorted rows.
    """
    n, k = patches.shape
    grad_patches = (patch_grads(grad_patches_buffer, patches_of.per_sample, n, k)
                    if grad_x is not None or selected_scores is not None else None)
    for g, lo, hi in span.segments:
        if grad_filters is not None:
            grad_filters[g].addmm_(grad[lo:hi].t(), patches[lo:hi])
        if (grad_x is not None or selected_scores is not None) and not have_grad_patches:
            torch.mm(grad[lo:hi], flat_filters[g], out=grad_patches[lo:hi])
    if grad_x is not None and patches_of.per_sample:
        put_columns(grad_x[sample], patches_of.pixels[span.lo:span.hi],
                    padded_columns(grad_patches_buffer, k, n))
    elif grad_x is not None:
        grad_x.index_add_(0, patches_of.taps[span.lo:span.hi].view(-1),
                          grad_patches.view(-1, grad_x.shape[1]))
    if selected_scores is not None:
        torch.sum(grad_patches.mul_(patches), 1, out=selected_scores[span.lo:span.hi])


def patch_grads(buffer: Tensor, columns: bool, n: int, k: int) -> Tensor:
    """The (n, K) patch gradient of a span in ``buffer`` (1-D): rows, or (columns) the
    transpose of the first n columns of a :func:`padded_columns` matrix (K, n + COLUMN_PAD)."""
    return padded_columns(buffer, k, n)[:, :n].t() if columns else buffer[:n * k].view(n, k)


def backward_blocks(patches_of: Patches, grads_of: Patches, filters: Tensor, blocks: Blocks,
                    grad_x: Optional[Tensor], grad_filters: Optional[Tensor],
                    scores_of: Optional[str], scores: Optional[Tensor]) -> None:
    """The backward of the samples in ``blocks``, the :func:`forward_blocks` way, but for the
    all-region scores (left to the spans: padding rows would add to the largest GEMMs): per
    sample, one ``bmm`` each for the filter gradient and for the patches' gradient (the padding
    rows' output gradient is zeroed, so they add nothing) and the selected region's scores.

    Args:
        patches_of, grads_of (Patches): x (read row-wise) and the output gradient at the
            sorted rows.
        filters (Tensor[B, m, C_out, K]): per-sample region filters.
        blocks (Blocks): the samples done here.
        grad_x, grad_filters, scores: as :func:`backward` fills them (None: not asked), the
            gradient of x as rows (B * P, C_in), the filters' as (B * m, C_out, K), zeroed
            (the products are added to it), and the ``'selected'`` scores in sorted-row order.
    """
    m, c_out, k = filters.shape[1:]
    l = patches_of.pixels_out
    widest = max(blocks.widths[s] for s in blocks.samples)
    patches_buffer = scratch('patches', widest * k, filters)
    grad_buffer = scratch('span_out', widest * c_out, filters)
    grad_patches_buffer = scratch('grad_patches', widest * k, filters)
    if scores_of == 'selected':
        block_scores = scratch('block_scores', widest, filters)
    for s in blocks.samples:
        sample, rows, width = range(s, s + 1), slice(s * l, (s + 1) * l), blocks.widths[s]
        taps = patches_of.block_taps(sample, blocks, width)
        patches = blocks_of(patches_of.gather_blocks(sample, taps, patches_buffer)[0], width, m)
        grad = blocks_of(grads_of.gather_blocks(
            sample, grads_of.block_taps(sample, blocks, width), grad_buffer)[0], width, m)
        valid = grad.new_zeros(width).index_fill_(0, blocks.slot[rows], 1)
        grad.mul_(valid.view(m, -1, 1))  # padding rows get a zero gradient: they add nothing
        if grad_filters is not None:
            grad_filters[s * m:(s + 1) * m].baddbmm_(grad.transpose(1, 2), patches)
        if grad_x is not None or scores_of == 'selected':
            grad_patches = grad_patches_buffer[:width * k].view(m, -1, k)
            torch.bmm(grad, filters[s], out=grad_patches)
        if grad_x is not None:
            grad_x.index_add_(0, taps.view(-1), grad_patches.view(-1, grad_x.shape[1]))
        if scores_of == 'selected':
            padded_scores = block_scores[:width]
            torch.sum(grad_patches.mul_(patches).view(width, k), 1, out=padded_scores)
            torch.index_select(padded_scores, 0, blocks.slot[rows], out=scores[rows])


def region_scores(patches: Tensor, grad: Tensor, every_filter: Tensor, out: Tensor) -> None:
    """Every region's score at n pixels of one sample, into ``out`` (n, m).

    The responses, n * m * C_out values, are a new tensor from :func:`drconv.onednn.linear`:
    oneDNN writes no given output.

    Args:
        patches (Tensor[n, K]): the pixels' patches (rows, or a transposed view of columns).
        grad (Tensor[n, C_out]): the output gradient there (likewise); the responses are laid
            out to match it.
        every_filter (Tensor[m * C_out, K]): the sample's m filters.
    """
    n, c_out = grad.shape
    if grad.stride(1) != 1:  # read column-wise: responses as (m * C_out, n), no strided reads
        responses = linear(every_filter, patches)
        out.copy_(responses.view(-1, c_out, n).mul_(grad.t()).sum(1).t())
    else:
        responses = linear(patches, every_filter)
        torch.sum(responses.view(n, -1, c_out).mul_(grad[:, None, :]), 2, out=out)


def scores_via_patch_grads(patches: Tensor, grad: Tensor, filters: Tensor,
                           segments: List[Tuple[int, int, int]], buffer: Tensor, out: Tensor,
                           grad_patches: Optional[Tensor]) -> None:
    """:func:`region_scores` the other way round: every region's patch gradient
    ``U_j = grad @ W_j`` (n, K), then ``s_j = <U_j, patches>`` row by row. The same multiply-adds
    over m * K products instead of m * C_out, so the way when K <= C_out (1x1 kernels); the
    selected region's U_j is the patch gradient, copied into ``grad_patches`` at no GEMM's cost.

    Args:
        patches (Tensor[n, K]): the pixels' patches (rows, or a transposed view of columns).
        grad (Tensor[n, C_out]): the output gradient there (likewise).
        filters (Tensor[m, C_out, K]): the sample's m filters.
        segments (List[Tuple[int, int, int]]): ``(region, a, b)``: rows a:b have that region.
        buffer (Tensor): scratch of at least n * m * K elements.
        out (Tensor[n, m]): the scores.
        grad_patches (Tensor[n, K] or None): the patch gradient (laid out like ``patches``).
    """
    n, (m, c_out, k) = patches.shape[0], filters.shape
    if patches.stride(0) == 1:  # columns: U as (m, K, n), read as (m, n, K)
        u = torch.bmm(filters.transpose(1, 2), grad.t().expand(m, c_out, n),
                      out=buffer[:m * k * n].view(m, k, n)).transpose(1, 2)
    else:
        u = torch.bmm(grad.expand(m, n, c_out), filters, out=buffer[:m * n * k].view(m, n, k))
    if grad_patches is not None:
        for region, a, b in segments:
            grad_patches[a:b].copy_(u[region, a:b])
    out.copy_(u.mul_(patches).sum(2).t())

"""The pure-PyTorch DRConv kernels: sorted rows, one GEMM per (sample, region) group.

Every output pixel of the batch is a row. Rows are sorted by group ``g = sample * m + region``
(one stable sort for the whole batch), so each group owns one contiguous run of rows. The
k x k input patches are gathered straight from the channels-last input (im2col fused with the
gather: one ``index_select`` of whole ``C_in`` vectors; taps in the zero padding read a zero row
kept after each sample's pixels), and each group's run is multiplied by that group's filter only.
A 1x1 kernel on an NCHW tensor gathers the tensor's own columns instead (:class:`Patches`). The
sorted rows are cut into spans of one sample and bounded size, so the working memory does not
grow with the image; a sample whose groups are balanced is instead laid out as m equal blocks
(:class:`Blocks`) and multiplied in one batched GEMM. The temporaries come from
:func:`drconv.scratch.scratch` (on CPU, memory kept between calls), and each span's results are
copied to their pixels.

Layouts used here (``L = H_out * W_out``, ``P = H * W`` plus 1 if padded, ``K = kh * kw * C_in``):
    input rows      (B, P, C_in)        channels-last pixels, then the zero row if padded
    filters         (B, m, C_out, K)    K ordered (kh, kw, C_in)
    patch index     (L, kh * kw)        input row read by each tap (``H * W``: the zero row)
    output rows     (B, L, C_out)       channels-last
"""
from typing import Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .scratch import scratch

# Elements of gathered patches one span may hold (bounds the rows of a span).
PIECE_ELEMENTS = 1 << 20
# Rows of all-region responses (rows x m x C_out) computed at a time for the exact guide gradient.
RESPONSE_ROWS = 512
# Elements left after each row of a scratch matrix of columns: a row length that is a power of
# two (the 1024 pixels of a 32x32 image) maps a GEMM's rows to the same cache sets.
COLUMN_PAD = 16
# The forward multiplies a sample's m groups in one batched GEMM, each group padded to the
# largest (:class:`Blocks`), when that pads the work by at most BATCH_PADDING and the padded
# patches have at most BATCH_ELEMENTS elements; else one GEMM per group. m short GEMMs are m
# parallel regions, and on a shared VM each can wait on a descheduled thread: measured in one
# process over 90 s, the batched forward took 21.3 vs 22.5 ms (k=3) while the machine was
# quiet and 23.2 vs 30.7 ms while it was not.
BATCH_PADDING = 1.3
BATCH_ELEMENTS = 1 << 21


class Geometry(NamedTuple):
    """Convolution geometry: kernel, stride, padding and dilation as (h, w) pairs."""

    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]


def to_rows(x: Tensor, zero_row: bool, name: str) -> Tensor:
    """``x`` (B, C, H, W) as channels-last rows (B, H * W, C), plus a zero row if asked.

    A view when ``x`` is channels-last already and no zero row is asked for; otherwise a copy,
    into the scratch buffer ``name`` (a temporary), made one sample at a time as a 2-D transpose
    (torch copies those blockwise, about twice as fast as one 4-D permute on CPU).
    """
    b, c, h, w = x.shape
    nhwc = x.permute(0, 2, 3, 1)
    if nhwc.is_contiguous() and not zero_row:
        return nhwc.view(b, h * w, c)
    rows = scratch(name, b * (h * w + int(zero_row)) * c, x).view(b, -1, c)
    if zero_row:
        rows[:, h * w].zero_()
    if nhwc.is_contiguous():
        rows[:, :h * w].copy_(nhwc.reshape(b, h * w, c))
    else:
        for s in range(b):
            rows[s, :h * w].copy_(x[s].reshape(c, h * w).t())
    return rows


def from_rows(rows: Tensor, size: Tuple[int, int], like: Tensor) -> Tensor:
    """Rows (B, H * W, C) as a (B, C, H, W) tensor in the memory format of ``like``.

    Channels-last ``like``: a view. Otherwise an NCHW copy, one 3-D transposing copy (measured
    1.1x faster in the op's forward than one 2-D transpose per sample, the other way round from
    :func:`to_rows`).
    """
    b, _, c = rows.shape
    if channels_last(like):
        return rows.view(b, *size, c).permute(0, 3, 1, 2)
    out = rows.new_empty(b, c, size[0] * size[1])
    out.copy_(rows.transpose(1, 2))
    return out.view(b, c, *size)


def patch_index(input_size: Tuple[int, int], output_size: Tuple[int, int], geo: Geometry,
                device: torch.device) -> Tensor:
    """Input row read by each output pixel's taps: (L, kh * kw), int64.

    Taps that fall in the zero padding read row ``H * W``, the zero row of :func:`to_rows`
    (there are none without padding).
    """
    (h, w), (kh, kw) = input_size, geo.kernel
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation
    ih = (torch.arange(output_size[0], device=device)[:, None] * sh - ph
          + torch.arange(kh, device=device)[None, :] * dh)  # (H_out, kh)
    iw = (torch.arange(output_size[1], device=device)[:, None] * sw - pw
          + torch.arange(kw, device=device)[None, :] * dw)  # (W_out, kw)
    inside = (((ih >= 0) & (ih < h))[:, None, :, None]
              & ((iw >= 0) & (iw < w))[None, :, None, :])
    index = torch.where(inside, ih[:, None, :, None] * w + iw[None, :, None, :], h * w)
    return index.reshape(-1, kh * kw)


class SortedRows(NamedTuple):
    """A batch's output pixels sorted by group ``g = sample * m + region``.

    ``order`` (Tensor[B * L]): flat pixel ``b * L + p`` of each sorted row; ``ends`` (List[int],
    B * m entries): the end of each group's rows.
    """

    order: Tensor
    ends: List[int]


def sort_by_region(region: Tensor, num_regions: int) -> SortedRows:
    """Sort the pixels of ``region`` (Tensor[B, L]: region of each output pixel) by group."""
    b, l = region.shape
    group = (region + torch.arange(b, device=region.device)[:, None] * num_regions).view(-1)
    order = torch.argsort(group, stable=True)
    ends = torch.bincount(group, minlength=b * num_regions).cumsum(0).tolist()
    return SortedRows(order, ends)


class Span(NamedTuple):
    """Sorted rows ``lo:hi`` and their groups: ``segments`` lists ``(group, a, b)``, rows
    ``lo + a : lo + b`` belong to ``group``."""

    lo: int
    hi: int
    segments: List[Tuple[int, int, int]]


def spans(ends: List[int], max_rows: int, regions: Optional[int] = None) -> Iterator[Span]:
    """Cut the sorted rows (group ends ``ends``) into spans of at most ``max_rows``.

    With ``regions`` (m), spans are also cut where a sample's rows end, so each holds one sample,
    and a sample's rows are split into spans of equal length.
    """
    total = ends[-1]
    stops = ends[regions - 1::regions] if regions else [total]
    g, start = 0, 0
    for stop in stops:
        step = max_rows
        if regions:
            pieces = -(-(stop - start) // max_rows)
            step = -(-(stop - start) // max(pieces, 1))
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            segments = []
            while g < len(ends) and ends[g] <= lo:
                g += 1
            for group in range(g, len(ends)):
                first = ends[group - 1] if group else 0
                if first >= hi:
                    break
                if ends[group] > first:
                    segments.append((group, max(first, lo) - lo, min(ends[group], hi) - lo))
            yield Span(lo, hi, segments)
        start = stop


def sorted_taps(index: Tensor, order: Tensor, rows_per_sample: int) -> Tensor:
    """Flat input rows read by each sorted row's taps: (B * L, kh * kw).

    Args:
        index (Tensor[L, kh * kw]): patch index.
        order (Tensor[B * L]): flat pixel ``b * L + p`` of each sorted row.
        rows_per_sample (int): P, input rows per sample.
    """
    sample, pixel = order.div(index.shape[0], rounding_mode='floor'), order % index.shape[0]
    return index.index_select(0, pixel).add_((sample * rows_per_sample)[:, None])


class Patches:
    """Reads a (B, C, H, W) tensor at the taps of the sorted rows, a span or a sample's
    :class:`Blocks` at a time.

    Two ways, same results. Rows: a channels-last copy (:func:`to_rows`; a view when the tensor
    is channels-last already) gathered row-wise, whole C vectors per tap; any kernel. Columns, for
    one tap per pixel (a 1x1 kernel without padding) on a contiguous NCHW tensor: the tensor itself
    gathered column-wise, one sample at a time, with no channels-last copy; the patches are then
    a transposed view, and spans must hold one sample (:attr:`per_sample`).

    Args:
        t (Tensor[B, C, H, W]): the tensor read.
        index (Tensor[L, kh * kw]): patch index (:func:`patch_index`).
        order (Tensor[B * L]): flat pixel of each sorted row (:func:`sort_by_region`).
        zero_row (bool): whether ``index`` reads the zero row (the convolution pads).
        name (str): scratch buffer of the channels-last copy, if one is made.
    """

    def __init__(self, t: Tensor, index: Tensor, order: Tensor, zero_row: bool, name: str):
        b, c, h, w = t.shape
        self.per_sample = index.shape[1] == 1 and not zero_row and t.is_contiguous()
        self.rows_per_sample = h * w + int(zero_row)
        self.pixels_out = index.shape[0]  # L, sorted rows per sample
        if self.per_sample:  # the pixel of its sample read by each sorted row, (B * L)
            self.source = t.view(b, c, h * w)
            self.pixels = index.view(-1).index_select(0, order % index.shape[0])
        else:  # the flat input row (B * P) read by each sorted row's taps, (B * L, kh * kw)
            self.source = to_rows(t, zero_row, name).view(-1, c)
            self.taps = sorted_taps(index, order, self.rows_per_sample)

    def buffer_numel(self, n: int) -> int:
        """Elements of the buffer :meth:`gather` needs for spans of up to n rows."""
        c = self.source.shape[1]
        return c * (n + COLUMN_PAD) if self.per_sample else n * self.taps.shape[1] * c

    def gather(self, span: Span, regions: int, buffer: Tensor) -> Tensor:
        """The span's patches, (n, kh * kw * C), written into ``buffer``: rows, or (columns) the
        transpose of the first n columns of a :func:`padded_columns` matrix."""
        if self.per_sample:
            pixels = self.pixels[span.lo:span.hi]
            padded = padded_columns(buffer, self.source.shape[1], pixels.numel())
            # the pad reads pixel 0: index_select writes contiguous output much faster
            torch.index_select(self.source[span.segments[0][0] // regions], 1,
                               torch.cat((pixels, pixels.new_zeros(COLUMN_PAD))), out=padded)
            return padded[:, :pixels.numel()].t()
        return gather_patches(self.source, self.taps[span.lo:span.hi], buffer)

    def block_taps(self, sample: int, blocks: 'Blocks') -> Tensor:
        """What each row of the sample's :class:`Blocks` reads: pixels of the sample (width,)
        (columns) or flat input rows (width, kh * kw) (rows). Padding rows read pixel 0 or the
        sample's last input row (its zero row when the convolution pads)."""
        rows = slice(sample * self.pixels_out, (sample + 1) * self.pixels_out)
        slot, width = blocks.slot[rows], blocks.widths[sample]
        if self.per_sample:
            return self.pixels.new_zeros(width).index_copy_(0, slot, self.pixels[rows])
        taps = self.taps.new_full((width, self.taps.shape[1]),
                                  (sample + 1) * self.rows_per_sample - 1)
        return taps.index_copy_(0, slot, self.taps[rows])

    def gather_blocks(self, sample: int, taps: Tensor, regions: int, buffer: Tensor) -> Tensor:
        """The sample's patches as its :class:`Blocks`, (m, longest, kh * kw * C), read at
        ``taps`` (:meth:`block_taps`) into ``buffer`` (1-D, at least taps.numel() * C
        elements): contiguous (rows) or a permuted view of (kh * kw * C, width) (columns)."""
        c = self.source.shape[1]
        gathered = buffer[:taps.numel() * c]
        if self.per_sample:
            columns = gathered.view(c, -1)
            torch.index_select(self.source[sample], 1, taps, out=columns)
            return columns.view(c, regions, -1).permute(1, 2, 0)
        torch.index_select(self.source, 0, taps.view(-1), out=gathered.view(-1, c))
        return gathered.view(regions, -1, taps.shape[1] * c)


class Blocks(NamedTuple):
    """Samples whose sorted rows are laid out as m blocks of equal length, group j's rows first
    in block j and padding after them, so that one batched GEMM multiplies all their groups.

    ``samples`` (List[int]): the samples laid out so; ``widths`` (List[int], every sample):
    m times its largest group; ``slot`` (Tensor[B * L]): the row of each sorted row in its
    sample's blocks; ``pixel_slot`` (Tensor[B * L]): the same for each output pixel
    ``b * L + p``.
    """

    samples: List[int]
    widths: List[int]
    slot: Optional[Tensor]
    pixel_slot: Optional[Tensor]


def balanced_blocks(order: Tensor, ends: List[int], regions: int, k: int) -> Blocks:
    """Lay out the samples whose groups are balanced enough (BATCH_PADDING, BATCH_ELEMENTS;
    ``k`` patch elements per row) as :class:`Blocks`."""
    m = regions
    b = len(ends) // m
    l = order.numel() // b
    counts = torch.tensor(ends).diff(prepend=torch.zeros(1, dtype=torch.long)).view(b, m)
    longest = counts.max(1).values
    widths = (longest * m).tolist()
    samples = [s for s, width in enumerate(widths)
               if width <= BATCH_PADDING * l and width * k <= BATCH_ELEMENTS]
    if not samples:
        return Blocks(samples, widths, None, None)
    shift = torch.arange(m) * longest[:, None] - (counts.cumsum(1) - counts)  # (B, m)
    slot = torch.arange(l).repeat(b) + shift.view(-1).repeat_interleave(
        counts.view(-1), output_size=b * l)
    slot = slot.to(order.device)
    return Blocks(samples, widths, slot, torch.empty_like(order).index_copy_(0, order, slot))


def padded_columns(buffer: Tensor, rows: int, columns: int) -> Tensor:
    """The (rows, columns + COLUMN_PAD) matrix at the start of ``buffer`` (1-D); its first
    ``columns`` columns hold the values."""
    return buffer[:rows * (columns + COLUMN_PAD)].view(rows, -1)


def gather_patches(rows: Tensor, taps: Tensor, buffer: Tensor) -> Tensor:
    """Patches from the flat input rows (B * P, C) at ``taps`` (n, kh * kw): (n, kh * kw * C).

    Written into the start of ``buffer`` (1-D, at least n * kh * kw * C elements), reused by
    every span.
    """
    n, c = taps.numel(), rows.shape[1]
    out = buffer[:n * c].view(n, c)
    torch.index_select(rows, 0, taps.view(-1), out=out)
    return out.view(taps.shape[0], -1)


def forward(x: Tensor, filters: Tensor, region: Tensor, index: Tensor, zero_row: bool,
            out_size: Tuple[int, int]) -> Tensor:
    """Selected-filter convolution.

    Args:
        x (Tensor[B, C_in, H, W]): input.
        filters (Tensor[B, m, C_out, K]): per-sample region filters.
        region (Tensor[B, L]): region of each output pixel.
        index (Tensor[L, kh * kw]): patch index.
        zero_row (bool): whether the convolution pads (``index`` reads the zero row).
        out_size (Tuple[int, int]): (H_out, W_out).

    Returns:
        Tensor[B, C_out, H_out, W_out]: the output, in the memory format of x.
    """
    b, m, c_out, k = filters.shape
    flat_filters = filters.view(b * m, c_out, k)
    order, ends = sort_by_region(region, m)
    patches_of = Patches(x, index, order, zero_row, 'input_rows')
    l = order.numel() // b
    columns = patches_of.per_sample  # NCHW in and out: each GEMM writes output columns
    if columns:
        out = x.new_empty(b, c_out, l)
    else:  # the output itself when channels-last (from_rows gives a view), else a temporary
        out = (x.new_empty(b * l, c_out) if channels_last(x)
               else scratch('result_rows', b * l * c_out, x).view(-1, c_out))
    blocks = balanced_blocks(order, ends, m, k)
    if blocks.samples:
        forward_blocks(patches_of, filters, blocks, out)
    batched = set(blocks.samples)
    max_rows = max(1, PIECE_ELEMENTS // k)
    n = min(max_rows, l)  # rows of the longest span: spans hold one sample
    patches_buffer = scratch('patches', patches_of.buffer_numel(n), x)
    span_out_buffer = scratch('span_out', c_out * (n + COLUMN_PAD), x)
    for span in spans(ends, max_rows, m):
        sample = span.segments[0][0] // m
        if sample in batched:
            continue
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
    """The forward of the samples in ``blocks``: one ``bmm`` of each sample's m padded groups
    by its m filters, then the products' rows put in pixel order (columns: into rows, then into
    ``out`` with one transposing copy, twice as fast as one per sample).

    Args:
        patches_of (Patches): x at the sorted rows' taps.
        filters (Tensor[B, m, C_out, K]): per-sample region filters.
        blocks (Blocks): the samples done here.
        out (Tensor): the output, (B, C_out, L) (columns) or rows (B * L, C_out).
    """
    b, m, c_out, k = filters.shape
    l = blocks.slot.numel() // b
    widest = max(blocks.widths[s] for s in blocks.samples)
    patches_buffer = scratch('patches', widest * k, out)
    products_buffer = scratch('span_out', widest * c_out, out)
    # rows in pixel order: ``out`` itself (rows), or a temporary (columns)
    rows_out = (scratch('result_rows', b * l * c_out, out).view(-1, c_out)
                if patches_of.per_sample else out)
    for s in blocks.samples:
        rows = slice(s * l, (s + 1) * l)
        patches = patches_of.gather_blocks(s, patches_of.block_taps(s, blocks), m,
                                           patches_buffer)
        products = products_buffer[:blocks.widths[s] * c_out].view(m, -1, c_out)
        torch.bmm(patches, filters[s].transpose(1, 2), out=products)
        torch.index_select(products.view(-1, c_out), 0, blocks.pixel_slot[rows],
                           out=rows_out[rows])
    if patches_of.per_sample:
        rows_out = rows_out.view(b, l, c_out)
        if len(blocks.samples) == b:
            out.copy_(rows_out.transpose(1, 2))
        else:
            for s in blocks.samples:
                out[s].copy_(rows_out[s].t())


def channels_last(x: Tensor) -> bool:
    """Whether ``x`` (B, C, H, W) is laid out channels-last (and not also contiguous)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def put_columns(out: Tensor, pixels: Tensor, padded: Tensor) -> None:
    """``out[:, pixels] = padded[:, :n]`` for one sample's output (C_out, L), n pixels and a
    :func:`padded_columns` matrix (C_out, >= n).

    A span holding all the sample's pixels is gathered back through the inverse permutation
    (contiguous writes, about twice as fast); a part is scattered.
    """
    n = pixels.numel()
    if n == out.shape[1]:
        inverse = torch.empty_like(pixels).index_copy_(0, pixels,
                                                       torch.arange(n, device=pixels.device))
        torch.index_select(padded, 1, inverse, out=out)
    else:
        out.index_copy_(1, pixels, padded[:, :n])


def backward(grad_out: Tensor, x: Tensor, filters: Tensor, region: Tensor, index: Tensor,
             zero_row: bool, need_input: bool, need_filters: bool, scores_of: Optional[str]
             ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of :func:`forward`, on the same sorted spans.

    Args:
        grad_out (Tensor[B, C_out, H_out, W_out]): gradient of the output.
        x, filters, region, index, zero_row: as in :func:`forward`.
        need_input, need_filters (bool): whether to compute those gradients.
        scores_of (str or None): None, ``'all'`` (every region's score: one dense GEMM against
            the sample's m filters per span, m convolutions' worth of work) or ``'selected'``
            (the selected region's score only, almost free).

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
    order, ends = sort_by_region(region, m)
    patches_of = Patches(x, index, order, zero_row, 'input_rows')
    identity = torch.arange(index.shape[0], device=index.device)[:, None]
    grads_of = Patches(grad_out, identity, order, False, 'grad_rows')
    columns = patches_of.per_sample  # x read (and its gradient written) column-wise
    grad_x = None
    if need_input and columns:  # a 1x1 kernel reads each input pixel at most once
        grad_x = x.new_zeros(b, c_in, x.shape[2] * x.shape[3])
    elif need_input:  # the gradient itself when channels-last (from_rows gives a view)
        grad_x = (x.new_zeros(b * patches_of.rows_per_sample, c_in) if channels_last(x) else
                  scratch('result_rows', b * patches_of.rows_per_sample * c_in, x)
                  .view(-1, c_in).zero_())
    grad_filters = torch.empty_like(flat_filters) if need_filters else None
    written = [False] * (b * m)  # groups whose filter gradient holds a value
    scores = None
    if scores_of is not None:
        shape = (order.numel(), m) if scores_of == 'all' else (order.numel(),)
        scores = scratch('scores', order.numel() * (m if scores_of == 'all' else 1), x).view(shape)
    batched = set()
    # rows only: a 1x1 kernel read column-wise has small per-group GEMMs, and its all-region
    # scores need the unpadded rows anyway (batched there, fwd+bwd took 28.3 vs 27.0 ms)
    blocks = None if columns else balanced_blocks(order, ends, m, k)
    if blocks is not None and blocks.samples:
        backward_blocks(patches_of, grads_of, filters, blocks, grad_x, grad_filters,
                        scores_of, scores)
        for s in blocks.samples:
            written[s * m:(s + 1) * m] = [True] * m
        batched = set(blocks.samples)
    max_rows = max(1, PIECE_ELEMENTS // k)
    n = min(max_rows, order.numel())  # rows of the longest span
    patches_buffer = scratch('patches', patches_of.buffer_numel(n), x)
    # scratch shared with the forward ('result_rows': the rows a result is assembled in, the
    # output there, x's gradient here; 'span_out') is never in use by both at once
    grad_buffer = scratch('span_out', grads_of.buffer_numel(n), x)
    grad_patches_buffer = scratch('grad_patches', k * (n + COLUMN_PAD), x)
    if scores_of == 'all':  # all-region responses, RESPONSE_ROWS rows at a time
        responses_buffer = scratch('responses', min(RESPONSE_ROWS, max_rows) * m * c_out, x)
    # one sample per span (what column reads need), split evenly: the all-region scores pack
    # the sample's m filters once per GEMM, so a short leftover span would cost a whole packing
    for span in spans(ends, max_rows, m):
        sample = span.segments[0][0] // m
        done = sample in batched  # by backward_blocks, all but the all-region scores
        if done and scores_of != 'all':
            continue
        patches = patches_of.gather(span, m, patches_buffer)
        grad = grads_of.gather(span, m, grad_buffer)
        if not done:
            backward_span(span, sample, patches, grad, flat_filters, patches_of,
                          grad_patches_buffer, grad_x, grad_filters, written,
                          scores if scores_of == 'selected' else None)
        if scores_of == 'all':
            every_filter = filters[sample].view(m * c_out, k)
            step = responses_buffer.numel() // (m * c_out)
            for a in range(0, span.hi - span.lo, step):
                z = min(a + step, span.hi - span.lo)
                region_scores(patches[a:z], grad[a:z], every_filter, responses_buffer,
                              scores[span.lo + a:span.lo + z])
    if need_filters:
        grad_filters[[g for g in range(b * m) if not written[g]]] = 0  # groups without pixels
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
                  patches_of: Patches, grad_patches_buffer: Tensor, grad_x: Optional[Tensor],
                  grad_filters: Optional[Tensor], written: List[bool],
                  selected_scores: Optional[Tensor]) -> None:
    """The backward of one span, one GEMM per group, but for the all-region scores.

    Args:
        span (Span), sample (int): the sorted rows done, all of that sample.
        patches, grad (Tensor[n, K], Tensor[n, C_out]): their patches and output gradient.
        flat_filters (Tensor[B * m, C_out, K]): per-sample region filters.
        patches_of (Patches): x at the sorted rows' taps.
        grad_patches_buffer (Tensor): scratch of at least K * (n + COLUMN_PAD) elements.
        grad_x, grad_filters: as :func:`backward_blocks` takes them; ``written`` flags the
            groups whose filter gradient holds a value.
        selected_scores (Tensor or None): the selected region's scores, (B * L), sorted rows.
    """
    n, k = patches.shape
    if patches_of.per_sample:
        grad_columns = padded_columns(grad_patches_buffer, k, n)
        grad_patches = grad_columns[:, :n].t()
    else:
        grad_patches = grad_patches_buffer[:patches.numel()].view(patches.shape)
    for g, lo, hi in span.segments:
        if grad_filters is not None:
            if not written[g]:  # MKL reads the output first: fresh pages would fault twice
                grad_filters[g].zero_()
                written[g] = True
            grad_filters[g].addmm_(grad[lo:hi].t(), patches[lo:hi])
        if grad_x is not None or selected_scores is not None:
            torch.mm(grad[lo:hi], flat_filters[g], out=grad_patches[lo:hi])
    if grad_x is not None and patches_of.per_sample:
        put_columns(grad_x[sample], patches_of.pixels[span.lo:span.hi], grad_columns)
    elif grad_x is not None:
        grad_x.index_add_(0, patches_of.taps[span.lo:span.hi].view(-1),
                          grad_patches.view(-1, grad_x.shape[1]))
    if selected_scores is not None:
        torch.sum(grad_patches.mul_(patches), 1, out=selected_scores[span.lo:span.hi])


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
            gradient of x as rows (B * P, C_in), the filters' as (B * m, C_out, K) and the
            ``'selected'`` scores in sorted-row order.
    """
    b, m, c_out, k = filters.shape
    l = patches_of.pixels_out
    widest = max(blocks.widths[s] for s in blocks.samples)
    patches_buffer = scratch('patches', widest * k, filters)
    grad_buffer = scratch('span_out', widest * c_out, filters)
    grad_patches_buffer = scratch('grad_patches', widest * k, filters)
    if scores_of == 'selected':
        block_scores = scratch('block_scores', widest, filters)
    for s in blocks.samples:
        rows, width = slice(s * l, (s + 1) * l), blocks.widths[s]
        taps = patches_of.block_taps(s, blocks)
        patches = patches_of.gather_blocks(s, taps, m, patches_buffer)
        grad = grads_of.gather_blocks(s, grads_of.block_taps(s, blocks), m, grad_buffer)
        valid = grad.new_zeros(width).index_fill_(0, blocks.slot[rows], 1)
        grad.mul_(valid.view(m, -1, 1))  # padding rows get a zero gradient: they add nothing
        if grad_filters is not None:  # zeroed first: MKL reads its output (a page fault each)
            grad_filters[s * m:(s + 1) * m].zero_().baddbmm_(grad.transpose(1, 2), patches)
        if grad_x is not None or scores_of == 'selected':
            grad_patches = grad_patches_buffer[:width * k].view(m, -1, k)
            torch.bmm(grad, filters[s], out=grad_patches)
        if grad_x is not None:
            grad_x.index_add_(0, taps.view(-1), grad_patches.view(-1, grad_x.shape[1]))
        if scores_of == 'selected':
            padded_scores = block_scores[:width]
            torch.sum(grad_patches.mul_(patches).view(width, k), 1, out=padded_scores)
            torch.index_select(padded_scores, 0, blocks.slot[rows], out=scores[rows])


def region_scores(patches: Tensor, grad: Tensor, every_filter: Tensor, buffer: Tensor,
                  out: Tensor) -> None:
    """Every region's score at n pixels of one sample, into ``out`` (n, m).

    Args:
        patches (Tensor[n, K]): the pixels' patches (rows, or a transposed view of columns).
        grad (Tensor[n, C_out]): the output gradient there (likewise); the responses are laid
            out to match it.
        every_filter (Tensor[m * C_out, K]): the sample's m filters.
        buffer (Tensor): scratch of at least n * m * C_out elements for the responses.
    """
    n, (m_c, _) = patches.shape[0], every_filter.shape
    c_out = grad.shape[1]
    if grad.stride(1) != 1:  # read column-wise: responses as (m, C_out, n), no strided reads
        responses = buffer[:m_c * n].view(m_c, n)
        torch.mm(every_filter, patches.t(), out=responses)
        out.copy_(responses.view(-1, c_out, n).mul_(grad.t()).sum(1).t())
    else:
        responses = buffer[:n * m_c].view(n, m_c)
        torch.mm(patches, every_filter.t(), out=responses)
        torch.sum(responses.view(n, -1, c_out).mul_(grad[:, None, :]), 2, out=out)

"""Reading a (B, C, H, W) tensor at the taps of the sorted rows (im2col fused with a gather).

The k x k input patches are gathered straight from the channels-last input: one
``index_select`` of whole ``C_in`` vectors, taps in the zero padding reading a zero row kept
after each sample's pixels. A 1x1 kernel on an NCHW tensor gathers the tensor's own columns
instead (:class:`Patches`).

Layouts used here (``L = H_out * W_out``, ``P = H * W`` plus 1 if padded, ``K = kh * kw * C_in``):
    input rows      (B, P, C_in)        channels-last pixels, then the zero row if padded
    patch index     (L, kh * kw)        input row read by each tap (``H * W``: the zero row)
    patches         (n, K)              K ordered (kh, kw, C_in)
"""
from typing import NamedTuple, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .scratch import scratch
from .sorted_rows import Blocks, Span, in_run

# Elements left after each row of a scratch matrix of columns: a row length that is a power of
# two (the 1024 pixels of a 32x32 image) maps a GEMM's rows to the same cache sets.
COLUMN_PAD = 16


class Geometry(NamedTuple):
    """Convolution geometry: kernel, stride, padding and dilation as (h, w) pairs."""

    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]


def patch_index(input_size: Tuple[int, int], output_size: Tuple[int, int], geo: Geometry,
                device: torch.device) -> Tensor:
    """Input row read by each output pixel's taps: (L, kh * kw), int64.

    Taps that fall in the zero padding read row ``H * W``, the zero row of :func:`to_rows`
    (there are none without padding): the windows of the padded grid of row numbers.
    """
    (h, w), (kh, kw) = input_size, geo.kernel
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation
    grid = F.pad(torch.arange(h * w, device=device).view(1, h, w), (pw, pw, ph, ph),
                 value=h * w)[0]
    windows = grid.unfold(0, (kh - 1) * dh + 1, sh).unfold(1, (kw - 1) * dw + 1, sw)
    return windows[..., ::dh, ::dw].reshape(-1, kh * kw)


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


def channels_last(x: Tensor) -> bool:
    """Whether ``x`` (B, C, H, W) is laid out channels-last (and not also contiguous)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


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

    def block_taps(self, samples: range, blocks: Blocks, width: int) -> Tensor:
        """What each row of the samples' :class:`Blocks` reads, each sample's blocks padded to
        ``width`` rows: pixels of the sample (n, width) (columns) or flat input rows
        (n, width, kh * kw) (rows). Padding rows read pixel 0 or the sample's last input row
        (its zero row when the convolution pads)."""
        l, n = self.pixels_out, len(samples)
        rows = slice(samples.start * l, samples.stop * l)
        slot = in_run(blocks.slot[rows], n, width)
        if self.per_sample:
            taps = self.pixels.new_zeros(n * width)
            return taps.index_copy_(0, slot, self.pixels[rows]).view(n, width)
        last_row = torch.arange(samples.start + 1, samples.stop + 1, device=self.taps.device)
        taps = self.taps.new_empty(n, width, self.taps.shape[1])
        taps.copy_((last_row * self.rows_per_sample - 1)[:, None, None])
        return taps.view(n * width, -1).index_copy_(0, slot, self.taps[rows]).view_as(taps)

    def gather_blocks(self, samples: range, taps: Tensor, buffer: Tensor) -> Tensor:
        """The samples' patches as their :class:`Blocks`, (n, width, kh * kw * C), read at
        ``taps`` (:meth:`block_taps`) into ``buffer`` (1-D, at least taps.numel() * C
        elements): contiguous (rows) or a transposed view of (n, kh * kw * C, width) (columns).
        Sample i's m blocks are ``blocks_of(patches[i], widths[s], m)``."""
        if self.per_sample:
            n, width = taps.shape
            columns = buffer[:taps.numel() * self.source.shape[1]].view(n, -1, width)
            torch.gather(self.source[samples.start:samples.stop], 2,
                         taps[:, None, :].expand(columns.shape), out=columns)
            return columns.transpose(1, 2)
        return gather_patches(self.source, taps.view(-1, taps.shape[2]), buffer).view(
            taps.shape[0], taps.shape[1], -1)


def blocks_of(rows: Tensor, width: int, regions: int) -> Tensor:
    """A sample's first ``width`` rows (rows, K) as its m blocks, (m, width / m, K)."""
    return rows[:width].view(regions, -1, rows.shape[1])


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

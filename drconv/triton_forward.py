"""Fused Triton forward of :func:`drconv.region_conv`, used automatically on CUDA.

One program computes a tile of ``BLOCK_M`` output pixels that share a (sample, region) group
(pixels sorted by region, as in :mod:`drconv.sorted_rows`) times ``BLOCK_N`` output channels.
It gathers each pixel's k x k patch straight from the channels-last input while it multiplies (no
im2col buffer, no padded copy: out-of-image taps are masked to zero) and writes the finished
rows to their pixels. Triton is optional: without it, or off CUDA, the pure-PyTorch path runs.
``TRITON_INTERPRET=1`` runs the same kernel on the CPU, which is how the tests check it.
"""
from typing import Tuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the op then runs its pure-PyTorch path
    triton = None

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def is_available(x: torch.Tensor) -> bool:
    """Whether the fused kernel can run on ``x``: Triton installed, CUDA tensor, kernel dtype."""
    return triton is not None and x.is_cuda and x.dtype in KERNEL_DTYPES


if triton is not None:

    @triton.jit
    def _region_conv_kernel(x_ptr, w_ptr, order_ptr, tile_group_ptr, tile_row_ptr, tile_end_ptr,
                            out_ptr, H, W, W_OUT, L, C_IN, C_OUT, M, K,
                            KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr,
                            SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                            DH: tl.constexpr, DW: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            PRECISION: tl.constexpr):
        tile = tl.program_id(0)
        group = tl.load(tile_group_ptr + tile)
        sample = group // M
        rows = tl.load(tile_row_ptr + tile) + tl.arange(0, BLOCK_M)
        row_ok = rows < tl.load(tile_end_ptr + tile)
        pixel = tl.load(order_ptr + sample * L + rows, mask=row_ok, other=0)
        oh = pixel // W_OUT
        ow = pixel % W_OUT
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < C_OUT
        channels = tl.arange(0, BLOCK_K)
        w_rows = w_ptr + (group.to(tl.int64) * C_OUT + cols[None, :]) * K
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for i in tl.static_range(KH):
            ih = oh * SH - PH + i * DH
            for j in tl.static_range(KW):
                iw = ow * SW - PW + j * DW
                inside = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                x_rows = x_ptr + ((sample.to(tl.int64) * H + ih) * W + iw) * C_IN
                tap = (i * KW + j) * C_IN
                for c0 in range(0, C_IN, BLOCK_K):
                    c = c0 + channels
                    c_ok = c < C_IN
                    patch = tl.load(x_rows[:, None] + c[None, :],
                                    mask=inside[:, None] & c_ok[None, :], other=0.0)
                    filt = tl.load(w_rows + tap + c[:, None],
                                   mask=c_ok[:, None] & col_ok[None, :], other=0.0)
                    acc = tl.dot(patch, filt, acc, input_precision=PRECISION)
        out = out_ptr + (sample.to(tl.int64) * L + pixel[:, None]) * C_OUT + cols[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def tile_schedule(region: torch.Tensor, num_regions: int,
                  block_m: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort pixels by region and cut each (sample, region) group into tiles of ``block_m``.

    Args:
        region (Tensor[B, L]): region of each output pixel.

    Returns:
        order (Tensor[B, L], int32): pixels in region order per sample;
        tile_group, tile_row, tile_end (Tensor[T], int32): each tile's group b * m + r, its first
        row in the sample's sorted order and the end of its group's rows.
    """
    b, _ = region.shape
    order = torch.argsort(region, dim=1, stable=True).to(torch.int32)
    counts = torch.bincount((region + torch.arange(b, device=region.device)[:, None]
                             * num_regions).flatten(), minlength=b * num_regions)
    group_start = (counts.view(b, num_regions).cumsum(1) - counts.view(b, num_regions)).flatten()
    tiles = (counts + block_m - 1) // block_m
    tile_group = torch.repeat_interleave(torch.arange(b * num_regions, device=region.device),
                                         tiles)
    first_tile = torch.repeat_interleave(tiles.cumsum(0) - tiles, tiles)
    tile_index = torch.arange(tile_group.numel(), device=region.device) - first_tile
    tile_row = group_start[tile_group] + tile_index * block_m
    tile_end = group_start[tile_group] + counts[tile_group]
    return order, tile_group.to(torch.int32), tile_row.to(torch.int32), tile_end.to(torch.int32)


def forward(x: torch.Tensor, filters: torch.Tensor, region: torch.Tensor,
            out_size: Tuple[int, int], stride: Tuple[int, int], padding: Tuple[int, int],
            dilation: Tuple[int, int], kernel: Tuple[int, int]) -> torch.Tensor:
    """Selected-filter convolution with the fused kernel.

    Args:
        x (Tensor[B, C_in, H, W]): input (any memory format; read channels-last).
        filters (Tensor[B, m, C_out, K]): region filters, K ordered (kh, kw, C_in).
        region (Tensor[B, L]): region of each output pixel, L = H_out * W_out.
        out_size, stride, padding, dilation, kernel: (h, w) pairs.

    Returns:
        Tensor[B, L, C_out]: output rows (channels-last), dtype of x.
    """
    b, c_in, h, w = x.shape
    _, m, c_out, k = filters.shape
    x_nhwc = x.permute(0, 2, 3, 1).contiguous()
    filters = filters.contiguous()
    block_m = 64
    block_n = 128 if c_out >= 128 else max(16, triton.next_power_of_2(c_out))
    block_k = max(16, min(64 if x.element_size() == 2 else 32, triton.next_power_of_2(c_in)))
    order, tile_group, tile_row, tile_end = tile_schedule(region, m, block_m)
    out = x.new_empty(b, region.shape[1], c_out)
    grid = (tile_group.numel(), triton.cdiv(c_out, block_n))
    _region_conv_kernel[grid](
        x_nhwc, filters, order, tile_group, tile_row, tile_end, out, h, w, out_size[1],
        region.shape[1], c_in, c_out, m, k, KH=kernel[0], KW=kernel[1], SH=stride[0],
        SW=stride[1], PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1],
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        PRECISION='tf32' if torch.backends.cuda.matmul.allow_tf32 else 'ieee')
    return out

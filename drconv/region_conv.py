"""``region_conv``: convolution with a per-sample filter chosen per output pixel by a guide.

Autograd Function -> functional op. The module that generates filters and guide is
:class:`drconv.DRConv2d`; this file holds no state.
"""
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import cpu_kernels, region_gemm, triton_forward
from .patches import Geometry, from_rows, patch_index
from .sorted_rows import row_layout
from ._utils import IntPair, conv_output_size, pair


def check_inputs(x: Tensor, weight: Tensor, guide: Tensor, geo: Geometry) -> None:
    """Raise ValueError naming the tensor and shapes when the op's inputs do not fit together."""
    if x.dim() != 4:
        raise ValueError(f'region_conv: x must be (B, C_in, H, W), got shape {tuple(x.shape)}')
    if weight.dim() != 6:
        raise ValueError('region_conv: weight must be (B, m, C_out, C_in, kh, kw), '
                         f'got shape {tuple(weight.shape)}')
    if guide.dim() != 4:
        raise ValueError('region_conv: guide must be (B, m, H_out, W_out), '
                         f'got shape {tuple(guide.shape)}')
    b, c_in, h, w = x.shape
    wb, m, c_out, wc, kh, kw = weight.shape
    if wb != b or guide.shape[0] != b:
        raise ValueError(f'region_conv: batch sizes differ: x {tuple(x.shape)}, '
                         f'weight {tuple(weight.shape)}, guide {tuple(guide.shape)}')
    if wc != c_in:
        raise ValueError(f'region_conv: weight has {wc} input channels (dim 3 of '
                         f'{tuple(weight.shape)}) but x has {c_in} ({tuple(x.shape)})')
    if min(m, c_out, c_in, kh, kw, h, w) < 1:
        raise ValueError(f'region_conv: empty dimension in x {tuple(x.shape)} or '
                         f'weight {tuple(weight.shape)}')
    if guide.shape[1] != m:
        raise ValueError(f'region_conv: guide has {guide.shape[1]} regions (dim 1 of '
                         f'{tuple(guide.shape)}) but weight has {m} '
                         f'(dim 1 of {tuple(weight.shape)})')
    out_size = tuple(conv_output_size(n, k, s, p, d) for n, k, s, p, d in zip(
        (h, w), (kh, kw), geo.stride, geo.padding, geo.dilation))
    if min(out_size) < 1:
        raise ValueError(f'region_conv: x {tuple(x.shape)} is smaller than the dilated kernel '
                         f'{(kh, kw)} (padding {geo.padding}, dilation {geo.dilation})')
    if tuple(guide.shape[2:]) != out_size:
        raise ValueError(f'region_conv: guide is {tuple(guide.shape[2:])} spatially '
                         f'({tuple(guide.shape)}) but the output of x {tuple(x.shape)} is '
                         f'{out_size} with stride {geo.stride}, padding {geo.padding}, '
                         f'dilation {geo.dilation}')
    for name, t in (('weight', weight), ('guide', guide)):
        if t.device != x.device:
            raise ValueError(f'region_conv: {name} is on {t.device} but x is on {x.device}')
        if t.dtype != x.dtype:
            raise ValueError(f'region_conv: {name} is {t.dtype} but x is {x.dtype}')


GUIDE_GRADS = ('exact', 'top2')


def guide_gradient(guide: Tensor, scores: Tensor) -> Tensor:
    """DRConv's guide gradient from region scores.

    dL/dG_i = q_i (s_i - sum_j q_j s_j) with q = softmax(G) over the regions given.

    Args:
        guide (Tensor[B, n, H_out, W_out]): guide logits G of n regions.
        scores (Tensor[B, n, H_out, W_out]): s_j = <dL/dy, (W[b, j] * x)> at each pixel.
    """
    q = torch.softmax(guide, dim=1)
    return q * (scores - (q * scores).sum(dim=1, keepdim=True))


def top2_guide_gradient(guide: Tensor, region: Tensor, second: Tensor, first_scores: Tensor,
                        second_scores: Tensor) -> Tensor:
    """The guide gradient with the softmax restricted to each pixel's two best regions.

    Args:
        guide (Tensor[B, m, H_out, W_out]): guide logits.
        region, second (Tensor[B, L]): best and second-best region of each pixel.
        first_scores, second_scores (Tensor[B, L]): their scores s_j.

    Returns:
        Tensor[B, m, H_out, W_out]: zero outside the two regions.
    """
    b, m = guide.shape[:2]
    top = torch.stack((region, second), dim=1)  # (B, 2, L)
    logits = guide.reshape(b, m, -1).gather(1, top)
    grad = guide_gradient(logits, torch.stack((first_scores, second_scores), dim=1))
    return torch.zeros_like(guide).view(b, m, -1).scatter_(1, top, grad).view_as(guide)


def second_region(guide: Tensor, region: Tensor) -> Tensor:
    """Each pixel's second-best region, (B, L), from guide (B, m, H_out, W_out) and its best."""
    b = guide.shape[0]
    others = guide.scatter(1, region.view(b, 1, *guide.shape[2:]), float('-inf'))
    return others.max(dim=1).indices.view(b, -1)


def guide_gradient_from_scores(guide: Tensor, region: Tensor, scores: Tensor,
                               mode: str) -> Tensor:
    """The guide's gradient (``mode`` ``'exact'`` or ``'top2'``) from every region's scores.

    Args:
        guide (Tensor[B, m, H_out, W_out]): guide logits.
        region (Tensor[B, L]): each pixel's region.
        scores (Tensor[B, L, m]): every region's score at every pixel.
    """
    if mode == 'exact':
        return guide_gradient(guide, scores.permute(0, 2, 1).reshape(guide.shape))
    second = second_region(guide, region)
    return top2_guide_gradient(guide, region, second, scores.gather(2, region[..., None])[..., 0],
                               scores.gather(2, second[..., None])[..., 0])


class RegionConvFunction(torch.autograd.Function):
    """Autograd Function of :func:`region_conv`.

    The CPU kernels of :mod:`drconv.cpu_kernels` (float32 on an AVX-512 or AVX2 CPU) read the
    weight where it lies and do forward and backward; elsewhere the forward is Triton's on CUDA,
    else the sorted-rows GEMMs of :mod:`drconv.region_gemm`, which do the backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, guide: Tensor, geo: Geometry,
                guide_grad: str) -> Tensor:
        b, c_in, h, w = x.shape
        _, m, c_out = weight.shape[:3]
        out_size = tuple(guide.shape[2:])
        ctx.layout = None  # the sorted rows, kept for the backward when the forward made them
        ctx.on_kernels = cpu_kernels.is_available(x)
        ctx.geo, ctx.guide_grad = geo, guide_grad
        if ctx.on_kernels:
            region = cpu_kernels.region_of(guide)
            # kept for the guide's scores: each pixel's own region's then costs no convolution
            keep = ctx.needs_input_grad[2] and cpu_kernels.scores_from_responses(geo, c_in, c_out)
            responses = x.new_empty(region.numel(), c_out) if keep else None
            # x's rows kept for the backward where the weight's or the guide's gradient reads them
            need_rows = any(ctx.needs_input_grad[1:3])
            sorted_x = cpu_kernels.sort_input(x, region, m, keep=need_rows)
            out = cpu_kernels.forward(x, cpu_kernels.explicit_source(weight), m, c_out, region,
                                      out_size, geo, responses=responses, sorted_x=sorted_x)
            ctx.save_for_backward(x, weight, guide, region, responses,
                                  sorted_x.rows if need_rows else None, sorted_x.order,
                                  sorted_x.starts)
            return out
        region = guide.max(dim=1).indices.view(b, -1)  # the first max, as argmax; faster on CPU
        filters = weight.permute(0, 1, 2, 4, 5, 3).reshape(b, m, c_out, -1).contiguous()
        index = patch_index((h, w), out_size, geo, x.device)
        if triton_forward.is_available(x):
            rows = triton_forward.forward(x, filters, region, out_size, geo.stride, geo.padding,
                                          geo.dilation, geo.kernel)
            out = from_rows(rows, out_size, x)
        else:
            ctx.layout = row_layout(region, m, filters.shape[-1])
            out = region_gemm.forward(x, filters, ctx.layout, index, any(geo.padding), out_size)
        ctx.save_for_backward(x, filters, guide, region, index)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        need_x, need_w, need_g = ctx.needs_input_grad[:3]
        if ctx.on_kernels:
            x, weight, guide, region, responses, *sorted_x = ctx.saved_tensors
            b, m, c_out, c_in, kh, kw = weight.shape
            grad_x, grad_w, scores = cpu_kernels.backward(
                grad_out, x, cpu_kernels.explicit_source(weight), m, region, ctx.geo, need_x,
                need_w, need_g, responses=responses,
                sorted_x=cpu_kernels.SortedInput(*sorted_x))
            if need_w:
                grad_w = grad_w.view(b, m, c_out, kh, kw, c_in).permute(0, 1, 2, 5, 3, 4)
            grad_g = (guide_gradient_from_scores(guide, region, scores, ctx.guide_grad)
                      if need_g else None)
            return grad_x, grad_w, grad_g, None, None
        x, filters, guide, region, index = ctx.saved_tensors
        b, c_in = x.shape[:2]
        _, m, c_out, _ = filters.shape
        zero_row = any(ctx.geo.padding)
        scores_of = ({'exact': 'all', 'top2': 'selected'}[ctx.guide_grad] if need_g else None)
        layout = ctx.layout or row_layout(region, m, filters.shape[-1])
        grad_x, grad_filters, scores = region_gemm.backward(
            grad_out, x, filters, layout, index, zero_row, need_x, need_w, scores_of)
        grad_w = grad_g = None
        if need_w:
            grad_w = grad_filters.view(b, m, c_out, *ctx.geo.kernel, c_in).permute(
                0, 1, 2, 5, 3, 4)
        if need_g and ctx.guide_grad == 'exact':
            grad_g = guide_gradient(guide, scores.permute(0, 2, 1).reshape(guide.shape))
        elif need_g:  # 'top2': one more grouped pass, by each pixel's second-best region
            second = second_region(guide, region)
            _, _, second_scores = region_gemm.backward(
                grad_out, x, filters, row_layout(second, m, filters.shape[-1]), index, zero_row,
                False, False, 'selected')
            grad_g = top2_guide_gradient(guide, region, second, scores, second_scores)
        return grad_x, grad_w, grad_g, None, None


def empty_batch_output(x: Tensor, c_out: int, geo: Geometry,
                       inputs: Iterable[Optional[Tensor]]) -> Tensor:
    """The output of an empty batch, x (0, C_in, H, W) -> (0, C_out, H_out, W_out) as
    ``F.conv2d``'s, connected to x and every tensor of ``inputs`` (None skipped) so that each
    gets its (zero) gradient."""
    out = F.conv2d(x, x.new_zeros(c_out, x.shape[1], *geo.kernel), None, geo.stride,
                   geo.padding, geo.dilation)
    return out + sum(t.sum() for t in inputs if t is not None) * 0


def region_conv(x: Tensor, weight: Tensor, guide: Tensor, stride: IntPair = 1,
                padding: IntPair = 0, dilation: IntPair = 1, *,
                guide_grad: str = 'exact') -> Tensor:
    """Dynamic region-aware convolution.

    Output pixel p of sample b belongs to region r = argmax_j guide[b, j, p] and is computed with
    that region's filter only: ``y[b, :, p] = (weight[b, r] * x[b])[:, p]``. Gradients reach x and
    weight through the hard selection; the guide gets DRConv's softmax approximation
    ``dL/dG_i = q_i (s_i - sum_j q_j s_j)``, q = softmax(G), s_j = <dL/dy_p, (weight[b, j] * x)_p>.

    Args:
        x (Tensor[batch_size, in_channels, in_height, in_width]): input.
        weight (Tensor[batch_size, region_num, out_channels, in_channels, kernel_height,
            kernel_width]): each sample's region filters.
        guide (Tensor[batch_size, region_num, out_height, out_width]): guide logits.
        stride (int or Tuple[int, int]): distance between kernel positions. Default: 1
        padding (int or Tuple[int, int]): zero padding on both sides. Default: 0
        dilation (int or Tuple[int, int]): spacing between kernel taps. Default: 1
        guide_grad (str): ``'exact'``: the gradient above, which needs every region's response
            at every pixel (m convolutions' worth of work in the backward). ``'top2'``: an
            approximation that changes the gradient: the softmax is restricted to each pixel's
            two highest guide logits (the other regions get zero gradient), which costs one
            convolution's worth. Default: ``'exact'``

    Returns:
        Tensor[batch_size, out_channels, out_height, out_width]: the output, in the memory format
        of x (channels-last when x is, else contiguous), as is the gradient x receives; an empty
        batch gives an empty output, as conv's.
    """
    kernel = (weight.shape[-2], weight.shape[-1]) if weight.dim() == 6 else (1, 1)
    geo = Geometry(kernel, pair(stride, 'stride', 1), pair(padding, 'padding', 0),
                   pair(dilation, 'dilation', 1))
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight, guide = x.to(dtype), weight.to(dtype), guide.to(dtype)
    check_inputs(x, weight, guide, geo)
    if guide_grad not in GUIDE_GRADS:
        raise ValueError(f'region_conv: guide_grad must be one of {GUIDE_GRADS}, '
                         f'got {guide_grad!r}')
    if x.shape[0] == 0:
        return empty_batch_output(x, weight.shape[2], geo, (weight, guide))
    with torch.autocast(device_type, enabled=False):
        return RegionConvFunction.apply(x, weight, guide, geo, guide_grad)


def region_conv_dense(x: Tensor, weight: Tensor, guide: Tensor, stride: IntPair = 1,
                      padding: IntPair = 0, dilation: IntPair = 1) -> Tensor:
    """All-regions-then-select version of :func:`region_conv`: m times the work and memory.

    Computes every region's convolution with one grouped conv, then keeps the argmax region's
    output per pixel. Plain autograd ops give the same gradients as :func:`region_conv` (the guide
    gets the softmax approximation through a straight-through mask). It is the reference the op
    is tested against, the baseline the benchmark compares with, and the graph ONNX export
    records (Conv, ArgMax, Equal, Mul, ReduceSum).

    Args and returns: as :func:`region_conv`.
    """
    b, c_in, h, w = x.shape
    m, c_out = weight.shape[1:3]
    per_region = torch.nn.functional.conv2d(
        x.reshape(1, b * c_in, h, w), weight.reshape(b * m * c_out, c_in, *weight.shape[-2:]),
        stride=stride, padding=padding, dilation=dilation, groups=b)
    per_region = per_region.view(b, m, c_out, *per_region.shape[-2:])
    regions = torch.arange(m, device=x.device).view(1, m, 1, 1)
    mask = (guide.argmax(dim=1, keepdim=True) == regions).to(x.dtype)
    if torch.is_grad_enabled() and guide.requires_grad:
        q = torch.softmax(guide, dim=1)
        mask = mask + (q - q.detach())
    return (per_region * mask.unsqueeze(2)).sum(dim=1)


"""``region_conv_factored``: :func:`drconv.region_conv` of filters in factored form.

Autograd Function -> functional op. DRConv2d's filter generators give each sample's region
filters as :class:`drconv.Factors` (the static weight plus per-sample combinations of parameter
tensors). On the CPU kernels' path the filters are formed where the kernels pack them and their
gradient is reduced straight into the factors' gradients: nothing B * m filters in size is
allocated. Elsewhere the filters are materialised and :func:`drconv.region_conv` runs.
"""
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import cpu_kernels
from ._utils import IntPair, pair
from .factors import Factors
from .patches import Geometry
from .region_conv import (GUIDE_GRADS, check_inputs, empty_batch_output,
                          guide_gradient_from_scores, region_conv)


def check_factors(f: Factors, x: Tensor, guide: Tensor) -> None:
    """Raise ValueError naming the factor and shapes when the factors do not fit x and guide."""
    c_out, c_in, kh, kw = f.weight.shape
    b, m = guide.shape[:2]
    n = f.terms.shape[1] if f.terms.dim() >= 2 else -1
    terms_ok = (f.terms.dim() in (4, 6) and f.terms.shape[0] in (1, m)
                and tuple(f.terms.shape[2:]) in ((c_out, kh, kw, c_in), (c_out, c_in)))
    coef_ok = (f.coef.dim() == 4 and tuple(f.coef.shape[:3]) == (b, m, n)
               and f.coef.shape[3] in (1, kh * kw))
    bias_ok = f.bias is None or tuple(f.bias.shape) == (m, c_out, c_in)
    if not (terms_ok and coef_ok and bias_ok):
        shapes = ', '.join(f'{name} {tuple(t.shape)}' for name, t in f._asdict().items()
                           if t is not None)
        raise ValueError(
            f'region_conv_factored: factors do not fit guide {tuple(guide.shape)} (B={b}, m={m}) '
            f'and weight (C_out={c_out}, C_in={c_in}, kh={kh}, kw={kw}): {shapes}; expected '
            'terms (m or 1, n, C_out, kh, kw, C_in) or (m or 1, n, C_out, C_in), coef '
            '(B, m, n, kh * kw or 1), bias (m, C_out, C_in) or None')


def stand_in_filters(f: Factors) -> Tensor:
    """The filters whose scores give every region's, where the terms are shared by the regions
    and the taps have one coefficient (the 'bases' generator): the static weight, then each
    term, (n + 1, C_out, C_in, kh, kw), lying as (n + 1, C_out, kh, kw, C_in)."""
    c_out, c_in, kh, kw = f.weight.shape
    stacked = torch.cat([f.weight.permute(0, 2, 3, 1).reshape(1, c_out, -1),
                         f.terms[0].reshape(f.terms.shape[1], c_out, -1)])
    return stacked.view(-1, c_out, kh, kw, c_in).permute(0, 1, 4, 2, 3)


def scores_through_stand_ins(f: Factors, regions: int) -> bool:
    """Whether every region's score is cheaper as a combination of stand-in scores: region j's
    filter is ``weight + sum_c coef[b, j, c] * terms[c]``, so its score is
    ``s_weight + sum_c coef[b, j, c] * s_c`` (exact), where ``s_weight`` is what the terms'
    scores leave of the pixel's own region's (from the forward's responses): n scores per pixel
    instead of the m - 1 regions' other than its own."""
    return (f.bias is None and f.terms.shape[0] == 1 and f.coef.shape[-1] == 1
            and f.terms.shape[1] + 1 < regions)


class FactoredRegionConvFunction(torch.autograd.Function):
    """Autograd Function of :func:`region_conv_factored` on the CPU kernels' path."""

    @staticmethod
    def forward(ctx, x: Tensor, guide: Tensor, weight: Tensor, region_bias: Tensor,
                terms: Tensor, coef: Tensor, bias: Tensor, geo: Geometry,
                guide_grad: str) -> Tensor:
        m = guide.shape[1]
        c_out = weight.shape[0]
        # the static weight as the kernels read it: (C_out, kh, kw, C_in) in memory
        weight = weight.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        f = Factors(weight, None if region_bias is None else region_bias.contiguous(),
                    terms.contiguous(), coef.contiguous())
        region = cpu_kernels.region_of(guide)
        # kept for the guide's scores: each pixel's own region's then costs no convolution
        # (with stand-ins, the static weight's: see backward)
        keep = ctx.needs_input_grad[1] and (
            scores_through_stand_ins(f, m)
            or cpu_kernels.scores_from_responses(geo, x.shape[1], c_out))
        responses = x.new_empty(region.numel(), c_out) if keep else None
        # x's rows kept for the backward where the guide's or the factors' gradient reads them
        need_rows = any(ctx.needs_input_grad[1:6])
        sorted_x = cpu_kernels.sort_input(x, region, m, keep=need_rows)
        out = cpu_kernels.forward(x, cpu_kernels.factored_source(f), m, c_out, region,
                                  tuple(guide.shape[2:]), geo, bias, responses, sorted_x)
        ctx.save_for_backward(x, guide, region, responses, sorted_x.rows if need_rows else None,
                              sorted_x.order, sorted_x.starts, *f)
        ctx.geo, ctx.guide_grad = geo, guide_grad
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, guide, region, responses, rows, order, starts, *saved = ctx.saved_tensors
        f = Factors(*saved)
        m = guide.shape[1]
        need_x, need_g = ctx.needs_input_grad[:2]
        need_factors = any(ctx.needs_input_grad[2:6])
        stand_ins = scores_through_stand_ins(f, m) and need_g
        score_source = (cpu_kernels.explicit_source(stand_in_filters(f), shared=True)
                        if stand_ins else None)
        grad_x, grads, scores = cpu_kernels.backward(
            grad_out, x, cpu_kernels.factored_source(f), m, region, ctx.geo, need_x,
            need_factors, need_g, factors=f, score_source=score_source, responses=responses,
            sorted_x=cpu_kernels.SortedInput(rows, order, starts))
        grad_g = None
        if need_g:
            if stand_ins:
                # the kernel gave each pixel's own region's score (from its response) in the
                # weight's stead: the weight's is what the terms' scores leave of it
                coef = f.coef[..., 0]  # (B, m, n)
                own = coef.gather(1, region[..., None].expand(-1, -1, coef.shape[2]))
                weight_scores = scores[..., :1] - (scores[..., 1:] * own).sum(2, keepdim=True)
                # (B, L, 1) + (B, L, n) @ (B, n, m)
                scores = torch.baddbmm(weight_scores, scores[..., 1:], coef.transpose(1, 2))
            grad_g = guide_gradient_from_scores(guide, region, scores, ctx.guide_grad)
        grads = grads if need_factors else Factors(None, None, None, None)
        grad_bias = grad_out.sum(dim=(0, 2, 3)) if ctx.needs_input_grad[6] else None
        return (grad_x, grad_g, *(g if need else None
                                  for g, need in zip(grads, ctx.needs_input_grad[2:6])),
                grad_bias, None, None)


def region_conv_factored(x: Tensor, factors: Factors, guide: Tensor, stride: IntPair = 1,
                         padding: IntPair = 0, dilation: IntPair = 1, *,
                         bias: Optional[Tensor] = None, guide_grad: str = 'exact') -> Tensor:
    """:func:`drconv.region_conv` with each sample's region filters given as :class:`Factors`.

    The same result and gradients as ``region_conv(x, factors.materialize(), guide, ...)``
    (up to float rounding), the gradients reaching each factor. On the CPU kernels' path (float32
    on an AVX-512 or AVX2 CPU) no B * m filters, nor their gradient, are ever held in memory,
    and with terms shared by the regions and one coefficient per term (the 'bases' generator),
    the exact guide gradient takes n convolutions' worth of scores instead of m - 1 (each
    pixel's own region's score comes from the forward).

    Args:
        x (Tensor[batch_size, in_channels, in_height, in_width]): input.
        factors (Factors): the region filters, shapes as :class:`Factors` documents them.
        guide (Tensor[batch_size, region_num, out_height, out_width]): guide logits.
        stride, padding, dilation, guide_grad: as :func:`drconv.region_conv`.
        bias (Tensor[out_channels]): added to the output, if given.

    Returns:
        Tensor[batch_size, out_channels, out_height, out_width]: as :func:`drconv.region_conv`.
    """
    if guide.dim() == 4 and factors.weight.dim() == 4:
        check_factors(factors, x, guide)
    if not cpu_kernels.is_available(x) or torch.is_autocast_enabled(x.device.type):
        out = region_conv(x, factors.materialize(), guide, stride, padding, dilation,
                          guide_grad=guide_grad)
        return out if bias is None else out + bias.view(1, -1, 1, 1).to(out.dtype)
    geo = Geometry(tuple(factors.weight.shape[-2:]), pair(stride, 'stride', 1),
                   pair(padding, 'padding', 0), pair(dilation, 'dilation', 1))
    b, m = guide.shape[:2]
    check_inputs(x, factors.weight.expand(b, m, *factors.weight.shape), guide, geo)
    if guide_grad not in GUIDE_GRADS:
        raise ValueError(f'region_conv_factored: guide_grad must be one of {GUIDE_GRADS}, '
                         f'got {guide_grad!r}')
    if b == 0:
        return empty_batch_output(x, factors.weight.shape[0], geo, (guide, *factors, bias))
    return FactoredRegionConvFunction.apply(x, guide, *factors, bias, geo, guide_grad)

"""DRConv2d in mmengine's complexity counter (``mmengine.analysis``): its real cost, not m times.

mmengine counts FLOPs (one multiply-add = one FLOP, i.e. MAdds) by tracing the model with
torch.jit and pricing each traced op. Traced as is, a DRConv2d takes its export path
(:func:`drconv.region_conv_dense`, every region's convolution then a selection) and would be
counted ``m`` times. While an analysis traces a model, this module runs each DRConv2d as

    guide_conv(x)          an nn.Conv2d child: mmengine's conv handle, B*m*C_in*kh*kw*H_out*W_out
    filter_generator(x)    the per-sample coefficients, its own children and ops priced by
                           mmengine's handles ('paper': pooling matmuls, 1x1 conv C_in -> m*m;
                           'bases': linear)
    RegionConvCount        one traced op (prim::PythonOp) priced here:
                           'region_filters'     forming each sample's m filters from the factors
                                                (:class:`drconv.Factors`: static weight, n
                                                terms, the paper's bias),
                                                B*m*C_out*C_in*kh*kw*(n + 1 [+ 1])
                           'region_conv'        the selected filter at each pixel,
                                                B*C_out*C_in*kh*kw*H_out*W_out (a plain conv's)

and leaves everything else as mmengine counts it (sigmoid, mean, bias adds: not counted, as for
any model). One of mmengine's handles is made exact, as the generator's MAdds need:
``aten::matmul`` counts broadcast batch dimensions of either operand (mmengine's counts only the
first operand's, so ``(kh, H) @ (B, C, H, W)``, the paper generator's pooling, came out B*C
times too small); it agrees with mmengine's wherever that is exact.

:func:`install` (run when this module is imported) wraps
``JitModelAnalysis._analyze`` so :class:`~mmengine.analysis.FlopAnalyzer`,
:class:`~mmengine.analysis.ActivationAnalyzer` and ``get_model_complexity_info`` -- and with
them mmdet's and mmseg's ``tools/analysis_tools/get_flops.py`` -- see this graph.
"""
import contextlib
import types
from collections import Counter
from typing import Any, Iterator, List

import torch
from mmengine.analysis import complexity_analysis
from mmengine.analysis.jit_analysis import JitModelAnalysis
from mmengine.analysis.jit_handles import generic_activation_jit, get_shape, prod
from torch import Tensor, nn

from drconv import DRConv2d, Factors, region_conv_dense

OP_NAME = 'prim::PythonOp.RegionConvCount'


class RegionConvCount(torch.autograd.Function):
    """``region_conv_factored(x, factors, guide) + bias`` as one traced node, for counting only.

    Traced, an autograd Function is one ``prim::PythonOp`` node whose inner ops stay out of
    the graph, so the node can be priced by formula. The value is computed with
    :func:`drconv.region_conv_dense` (same result; the op's own Function cannot be nested in a
    trace). Not differentiable: analysis only.
    """

    @staticmethod
    def forward(ctx, x: Tensor, terms: Tensor, coef: Tensor, weight: Tensor, region_bias,
                bias, guide: Tensor, stride, padding, dilation) -> Tensor:
        region_bias = region_bias if region_bias.numel() else None
        filters = Factors(weight, region_bias, terms, coef).materialize()
        out = region_conv_dense(x, filters, guide, stride, padding, dilation)
        if bias is not None:
            out = out + bias.view(1, -1, 1, 1).to(out.dtype)
        return out


def region_conv_flop_jit(inputs: List[Any], outputs: List[Any]) -> Counter:
    """MAdds of a traced :class:`RegionConvCount`: forming the filters and the selected-filter
    conv.

    Inputs are the node's ``x (B, C_in, H, W), terms (., n, ...), coef (B, m, n, .), weight
    (C_out, C_in, kh, kw), region_bias (m, C_out, C_in) or empty, ...``; the output is
    (B, C_out, H_out, W_out).
    """
    b, m, n = get_shape(inputs[2])[:3]
    c_out, c_in, kh, kw = get_shape(inputs[3])
    h_out, w_out = get_shape(outputs[0])[2:]
    added = 1 + (prod(get_shape(inputs[4])) > 0)  # the weight, the region bias
    return Counter({'region_filters': b * m * c_out * c_in * kh * kw * (n + added),
                    'region_conv': b * c_out * c_in * kh * kw * h_out * w_out})


def matmul_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """MAdds of ``torch.matmul`` with broadcasting: prod(batch) * n * k * m."""
    a, b = (list(get_shape(v)) for v in inputs[:2])
    a = [1] + a if len(a) == 1 else a
    b = b + [1] if len(b) == 1 else b
    batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return prod(batch) * a[-2] * a[-1] * b[-1]


def _counted_forward(self: DRConv2d, x: Tensor) -> Tensor:
    """DRConv2d.forward with the selection as one :class:`RegionConvCount` node."""
    guide = self.guide_conv(x)
    f = self.filter_generator(x, self.weight)
    region_bias = f.bias if f.bias is not None else f.terms.new_zeros(0)  # traced as a tensor
    return RegionConvCount.apply(x, f.terms, f.coef, f.weight, region_bias, self.bias, guide,
                                 self.stride, self.padding, self.dilation)


@contextlib.contextmanager
def counted_drconv(model: nn.Module) -> Iterator[None]:
    """Within the block, every DRConv2d of ``model`` runs as the counter prices it."""
    layers = [m for m in model.modules() if isinstance(m, DRConv2d)]
    saved = [m.__dict__.get('forward') for m in layers]
    for layer in layers:
        layer.forward = types.MethodType(_counted_forward, layer)
    try:
        yield
    finally:
        for layer, forward in zip(layers, saved):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


def install() -> None:
    """Make mmengine's analyzers price DRConv2d as above (idempotent)."""
    complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS.update({
        OP_NAME: region_conv_flop_jit, 'aten::matmul': matmul_flop_jit})
    complexity_analysis._DEFAULT_SUPPORTED_ACT_OPS[OP_NAME] = generic_activation_jit(
        'region_conv')
    analyze = JitModelAnalysis._analyze
    if getattr(analyze, 'drconv_counted', False):
        return

    def _analyze(self):
        if self._stats is not None:
            return self._stats
        with counted_drconv(self._model):
            return analyze(self)

    _analyze.drconv_counted = True
    _analyze.__doc__ = analyze.__doc__
    JitModelAnalysis._analyze = _analyze


install()

"""DRConv2d in mmengine's complexity counter (``mmengine.analysis``): its real cost, not m times.

mmengine counts FLOPs (one multiply-add = one FLOP, i.e. MAdds) by tracing the model with
torch.jit and pricing each traced op. Traced as is, a DRConv2d takes its export path
(:func:`drconv.region_conv_dense`, every region's convolution then a selection) and would be
counted ``m`` times. While an analysis traces a model, this module runs each DRConv2d as

    guide_conv(x)          an nn.Conv2d child: mmengine's conv handle, B*m*C_in*kh*kw*H_out*W_out
    filter_generator(x)    its own children and ops, priced by mmengine's handles
                           ('paper': adaptive_avg_pool2d (input numel), 1x1 conv, einsum
                           B*m*C_out*C_in*m*kh*kw; 'bases': linear, mm B*m*nb*C_out*C_in*kh*kw)
    RegionConvCount        one traced op (prim::PythonOp) priced here:
                           'region_filter_add'  weight + delta, B*m*C_out*C_in*kh*kw
                           'region_conv'        the selected filter at each pixel,
                                                B*C_out*C_in*kh*kw*H_out*W_out (a plain conv's)

and leaves everything else as mmengine counts it (sigmoid, mean, bias adds: not counted, as for
any model). Two of mmengine's handles are made exact, as the generator's MAdds need:
``aten::matmul`` counts broadcast batch dimensions of either operand (mmengine's counts only the
first operand's, so ``(kh, H) @ (B, C, H, W)``, the paper generator's pooling, came out B*C
times too small), and two-operand ``aten::einsum`` is counted from the index sizes (mmengine's
reads numpy's printout rounded to 4 digits). Both agree with mmengine's wherever that is exact.

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
from mmengine.analysis.jit_handles import (einsum_flop_jit, generic_activation_jit, get_shape,
                                           prod)
from torch import Tensor, nn

from drconv import DRConv2d, region_conv_dense

OP_NAME = 'prim::PythonOp.RegionConvCount'


class RegionConvCount(torch.autograd.Function):
    """``region_conv(x, weight + delta, guide) + bias`` as one traced node, for counting only.

    Traced, an autograd Function is one ``prim::PythonOp`` node whose inner ops stay out of
    the graph, so the node can be priced by formula. The value is computed with
    :func:`drconv.region_conv_dense` (same result; the op's own Function cannot be nested in a
    trace). Not differentiable: analysis only.
    """

    @staticmethod
    def forward(ctx, x: Tensor, delta: Tensor, weight: Tensor, bias, guide: Tensor, stride,
                padding, dilation) -> Tensor:
        filters = delta + weight.view(1, 1, *weight.shape).to(delta.dtype)
        out = region_conv_dense(x, filters, guide, stride, padding, dilation)
        if bias is not None:
            out = out + bias.view(1, -1, 1, 1).to(out.dtype)
        return out


def region_conv_flop_jit(inputs: List[Any], outputs: List[Any]) -> Counter:
    """MAdds of a traced :class:`RegionConvCount`: the filter add and the selected-filter conv.

    Inputs are the node's tensors ``x (B, C_in, H, W), delta (B, m, C_out, C_in, kh, kw), ...``;
    the output is (B, C_out, H_out, W_out).
    """
    b, m, c_out, c_in, kh, kw = get_shape(inputs[1])
    h_out, w_out = get_shape(outputs[0])[2:]
    return Counter({'region_filter_add': b * m * c_out * c_in * kh * kw,
                    'region_conv': b * c_out * c_in * kh * kw * h_out * w_out})


def matmul_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """MAdds of ``torch.matmul`` with broadcasting: prod(batch) * n * k * m."""
    a, b = (list(get_shape(v)) for v in inputs[:2])
    a = [1] + a if len(a) == 1 else a
    b = b + [1] if len(b) == 1 else b
    batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return prod(batch) * a[-2] * a[-1] * b[-1]


def einsum_flop_jit_exact(inputs: List[Any], outputs: List[Any]) -> Any:
    """MAdds of a two-operand einsum: the product of all index sizes (half that without a sum,
    as numpy and mmengine count); other einsums as mmengine counts them."""
    equation = inputs[0].toIValue().replace(' ', '')
    operands = list(inputs[1].node().inputs())
    if '.' in equation or '->' not in equation or len(operands) != 2:
        return einsum_flop_jit(inputs, outputs)
    terms, result = equation.split('->')
    sizes = {}
    for term, value in zip(terms.split(','), operands):
        sizes.update(zip(term, get_shape(value)))
    total = prod(sizes.values())
    return total if set(sizes) - set(result) else total // 2


def _counted_forward(self: DRConv2d, x: Tensor) -> Tensor:
    """DRConv2d.forward with the selection as one :class:`RegionConvCount` node."""
    guide = self.guide_conv(x)
    delta = self.filter_generator(x)
    return RegionConvCount.apply(x, delta, self.weight, self.bias, guide, self.stride,
                                 self.padding, self.dilation)


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
        OP_NAME: region_conv_flop_jit, 'aten::matmul': matmul_flop_jit,
        'aten::einsum': einsum_flop_jit_exact})
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

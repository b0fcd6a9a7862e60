"""The guide conv (C_in -> m logits, m small) on CPU: its forward as one GEMM and shifted sums.

A k x k conv with few output channels runs far below a GEMM's speed through oneDNN (8 outputs
from 128 channels at 32 x 32, batch 8, 3x3: 4.3 ms, a fifth of the 128-output conv's time for a
sixteenth of its work). As every tap's 1x1 product at once, ``(kh * kw * m, C_in) @ x``, then
the sum of kh * kw shifted slices of it, the same took 3.1 ms (0.56 against 0.82 ms at 1x1), of
which the sum, as kh * kw separate adds of padded slices, was about 1.5 ms: where the CPU
kernels run, it is one pass (about 0.2 ms) adding the same floats in the same order.
Its backward through autograd would be slower than conv's (38 against 21 ms forward+backward at
3x3), so the backward is conv's own, except at 1x1 (stride 1, no padding) where the CPU kernels
run: there it is theirs, vectorised over the pixels with an input channel's m weights in
registers (oneDNN's, with 8 outputs, ran far below its speed: 1.4 against 0.8 ms at 1x1 alone,
about 1.2 ms more inside the layer's forward+backward; ours is now 0.7).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cpu_kernels
from ._utils import conv_output_size
from .patches import Geometry


def shifted_sum_conv2d(x: Tensor, weight: Tensor, geo: Geometry,
                       bias: Optional[Tensor] = None) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation)`` as one GEMM of every tap's 1x1
    product, then shifted slices summed (by the CPU kernels where they run, in the same order:
    the same floats), then the bias added: x (B, C_in, H, W), weight (m, C_in, kh, kw), bias
    (m) or None -> (B, m, H_out, W_out)."""
    b, c_in, h, w = x.shape
    m, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = geo.stride, geo.padding, geo.dilation
    h_out, w_out = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
    # bmm of the expanded weight: torch.matmul would copy x into a transposed layout first
    taps = torch.bmm(weight.permute(2, 3, 0, 1).reshape(1, kh * kw * m, c_in).expand(b, -1, -1),
                     x.reshape(b, c_in, h * w)).view(b, kh, kw, m, h, w)
    # the kernel's sum has no autograd: it runs where no gradient is recorded (GuideConvFunction)
    recorded = torch.is_grad_enabled() and (taps.requires_grad
                                            or (bias is not None and bias.requires_grad))
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        out = taps.view(b, m, h, w)
    elif (cpu_kernels.is_available(taps) and not recorded
          and (bias is None or bias.dtype == taps.dtype)):
        return cpu_kernels.shifted_sum(taps, bias, (h_out, w_out), geo)
    else:
        taps = F.pad(taps, (pw, pw, ph, ph))
        out = sum(taps[:, i, j, :, i * dh:i * dh + (h_out - 1) * sh + 1:sh,
                       j * dw:j * dw + (w_out - 1) * sw + 1:sw]
                  for i in range(kh) for j in range(kw))
    return out if bias is None else out.add_(bias.view(1, -1, 1, 1))


class GuideConvFunction(torch.autograd.Function):
    """Forward :func:`shifted_sum_conv2d` plus bias, backward conv's
    (``aten.convolution_backward``), or at 1x1 (stride 1, no padding, a contiguous float32 x)
    the CPU kernels'."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias, geo: Geometry) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geo = geo
        return shifted_sum_conv2d(x, weight, geo, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        geo = ctx.geo
        if (cpu_kernels.pointwise(geo) and cpu_kernels.is_available(x) and x.is_contiguous()
                and weight.dtype == grad_out.dtype == x.dtype):
            return (*cpu_kernels.pointwise_guide_backward(grad_out, x, weight,
                                                          *ctx.needs_input_grad[:3]), None)
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, x, weight, [weight.shape[0]], list(geo.stride), list(geo.padding),
            list(geo.dilation), False, [0, 0], 1, list(ctx.needs_input_grad[:3]))
        return grad_x, grad_w, grad_b, None


def guide_conv2d(x: Tensor, weight: Tensor, bias, geo: Geometry) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation)`` for a guide conv on CPU.

    Args:
        x (Tensor[B, C_in, H, W]): input.
        weight (Tensor[m, C_in, kh, kw]): the guide's filters.
        bias (Tensor[m] or None): its bias.
        geo (Geometry): kernel (kh, kw), stride, padding, dilation.

    Returns:
        Tensor[B, m, H_out, W_out].
    """
    return GuideConvFunction.apply(x, weight, bias, geo)


class GuideConv(nn.Conv2d):
    """DRConv2d's guide conv: an nn.Conv2d (same parameters, hooks and checkpoint keys) whose
    CPU forward at stride 1 is :func:`guide_conv2d` (at larger strides it would compute every
    tap at every input pixel, 4 times the outputs at stride 2: conv's is faster there; and not
    while tracing or exporting, which record ``F.conv2d``)."""

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> guide logits (B, m, H_out, W_out)."""
        if (x.device.type != 'cpu' or self.stride != (1, 1) or torch.jit.is_tracing()
                or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()):
            return super().forward(x)
        geo = Geometry(self.kernel_size, self.stride, self.padding, self.dilation)
        return guide_conv2d(x, self.weight, self.bias, geo)

"""Filter generators: each sample's m region filters, in factored form (:class:`drconv.Factors`).

Both combine parameter tensors with per-sample coefficients and add the static weight, so the
filters need never be materialised (:func:`drconv.region_conv_factored`). Both start with a zero
change (their parameter tensors are zero-initialised), so a fresh DRConv2d equals its static
convolution.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import cpu_kernels
from .factors import Factors


def adaptive_pool_matrix(size_in: int, size_out: int, like: Tensor) -> Tensor:
    """Averaging matrix (size_out, size_in) of adaptive average pooling along one axis.

    Bin i averages inputs floor(i * size_in / size_out) to ceil((i + 1) * size_in / size_out),
    as F.adaptive_avg_pool2d does. Pooling as two matrix products exports to ONNX for any sizes
    (ONNX has no adaptive pooling to sizes that do not divide the input).
    """
    i = torch.arange(size_out, device=like.device)
    start = (i * size_in) // size_out
    end = ((i + 1) * size_in + size_out - 1) // size_out
    pos = torch.arange(size_in, device=like.device)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class AdaptiveAvgPoolFunction(torch.autograd.Function):
    """Forward :func:`drconv.cpu_kernels.adaptive_avg_pool`, backward torch's own."""

    @staticmethod
    def forward(ctx, x: Tensor, size: Tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x)
        return cpu_kernels.adaptive_avg_pool(x, size)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, = ctx.saved_tensors
        return torch.ops.aten._adaptive_avg_pool2d_backward(grad, x), None


class SpatialMeanFunction(torch.autograd.Function):
    """``x.mean(dim=(2, 3), keepdim)``, whose x gradient is the output's divided by H * W and
    expanded, not materialised: the same floats as the mean's own backward, which writes (and
    autograd then reads) an input-sized tensor of them (0.7 ms at 8 x 128 x 32 x 32)."""

    @staticmethod
    def forward(ctx, x: Tensor, keepdim: bool) -> Tensor:
        ctx.shape = x.shape
        return x.mean(dim=(2, 3), keepdim=keepdim)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        b, c, h, w = ctx.shape
        return (grad / (h * w)).view(b, c, 1, 1).expand(b, c, h, w), None


def spatial_mean(x: Tensor, keepdim: bool = False) -> Tensor:
    """``x.mean(dim=(2, 3), keepdim)`` of x (B, C, H, W), the same floats forward and backward
    (:class:`SpatialMeanFunction`; the mean itself while tracing or exporting)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return x.mean(dim=(2, 3), keepdim=keepdim)
    return SpatialMeanFunction.apply(x, keepdim)


def adaptive_avg_pool2d(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """``F.adaptive_avg_pool2d(x, size)``, the same floats, by the CPU kernels where they run
    (torch's sums one bin at a time, each a chain of dependent adds: 0.69 against 0.36 ms at
    8 x 128 x 32 x 32 to 3 x 3): x (B, C, H, W) -> (B, C, *size). A 1 x 1 output is torch's
    mean (summed in another order; :func:`spatial_mean`), a non-contiguous x torch's pooling
    (its channels-last kernel is another, not reproduced here)."""
    if not x.is_contiguous():
        return F.adaptive_avg_pool2d(x, size)
    if tuple(size) == (1, 1):  # as torch pools to 1 x 1
        return spatial_mean(x, keepdim=True)
    if x.numel() and cpu_kernels.is_available(x):
        return AdaptiveAvgPoolFunction.apply(x, tuple(size))
    return F.adaptive_avg_pool2d(x, size)


class PaperFilterGenerator(nn.Module):
    """The paper's generator (DRConv, Sec. 3.2).

    Adaptive average pool to kh x kw -> 1x1 conv C_in -> m*m -> sigmoid -> grouped 1x1 conv
    (groups=m, with bias) giving m*C_out*C_in values at each of the kh x kw positions: region
    r's filter at tap t is ``weight + bias[r] + sum_c projection[r, c] * hidden[b, r, c, t]``.
    Its projection has m*m*C_out*C_in parameters (m*m/(kh*kw) times a conv's): prefer
    :class:`BasesFilterGenerator` for wide layers.

    Args:
        in_channels (int): C_in.
        out_channels (int): C_out.
        kernel_size (Tuple[int, int]): (kh, kw).
        region_num (int): m.
    """

    # 2: projection stored (m regions, m inputs, C_out, C_in) and a bias (m, C_out, C_in);
    # 1 (or none): projection (m, C_out, C_in, m), no bias (loaded as a zero bias)
    _version = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Tuple[int, int],
                 region_num: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.region_num = region_num
        self.squeeze = nn.Conv2d(in_channels, region_num * region_num, 1)
        # the grouped 1x1 conv: weight (m groups, m inputs per group, C_out, C_in), bias
        self.projection = nn.Parameter(
            torch.empty(region_num, region_num, out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(region_num, out_channels, in_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the projection and its bias: the generated change starts at zero."""
        nn.init.zeros_(self.projection)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, weight: Tensor) -> Factors:
        """x (B, C_in, H, W) and the static weight (C_out, C_in, kh, kw) -> the region filters:
        terms the projection (m, m, C_out, C_in), coef the hidden units (B, m, m, kh * kw)."""
        m = self.region_num
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
            # as matrix products: ONNX has no adaptive pooling to sizes that do not divide
            pool_h = adaptive_pool_matrix(x.shape[2], self.kernel_size[0], x)
            pool_w = adaptive_pool_matrix(x.shape[3], self.kernel_size[1], x)
            pooled = torch.matmul(torch.matmul(pool_h, x), pool_w.t())  # (B, C_in, kh, kw)
        else:
            pooled = adaptive_avg_pool2d(x, self.kernel_size)
        hidden = torch.sigmoid(self._squeeze(pooled))  # (B, m*m, kh, kw)
        hidden = hidden.reshape(x.shape[0], m, m, self.kernel_size[0] * self.kernel_size[1])
        return Factors(weight, self.bias, self.projection, hidden)

    def _squeeze(self, pooled: Tensor) -> Tensor:
        """``self.squeeze`` (1x1 conv C_in -> m*m) of the pooled map (B, C_in, kh, kw); of a 1x1
        layer's one-pixel map as the matrix product it is (oneDNN's conv of it took 0.34 against
        0.13 ms, with the backward 1.2 against 0.8 ms, at the 1x1 target layer)."""
        if tuple(self.kernel_size) != (1, 1):
            return self.squeeze(pooled)
        hidden = F.linear(pooled.flatten(1), self.squeeze.weight.flatten(1), self.squeeze.bias)
        return hidden.view(*hidden.shape, 1, 1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        """Reads version 1 checkpoints: projection (m, C_out, C_in, m), no bias."""
        key = prefix + 'projection'
        old_shape = (self.region_num, *self.projection.shape[2:], self.region_num)
        if ((local_metadata.get('version') or 1) < 2 and key in state_dict
                and tuple(state_dict[key].shape) == old_shape):
            state_dict[key] = state_dict[key].permute(0, 3, 1, 2)
            state_dict.setdefault(prefix + 'bias', torch.zeros_like(self.bias))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


class BasesFilterGenerator(nn.Module):
    """The official code's generator: each region's filter mixes ``num_bases`` shared kernels.

    Routing weights per sample and region come from global average pooling -> linear ->
    2 * sigmoid(.) / num_bases; region r's filter is ``weight + sum_j mix[b, r, j] * bases[j]``.

    Args:
        in_channels (int): C_in.
        out_channels (int): C_out.
        kernel_size (Tuple[int, int]): (kh, kw).
        region_num (int): m.
        num_bases (int): shared base kernels.
    """

    # 2: bases stored (num_bases, C_out, kh * kw * C_in); 1 (or none): (num_bases, C_out, kh,
    # kw, C_in), the same values in the same order
    _version = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Tuple[int, int],
                 region_num: int, num_bases: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.region_num = region_num
        self.num_bases = num_bases
        self.routing = nn.Linear(in_channels, region_num * num_bases)
        # base kernels stored (num_bases, C_out, kh * kw * C_in), each filter's taps then its
        # channels: three dimensions, so that Module.to(memory_format=torch.channels_last),
        # which converts every 4- and 5-dimensional parameter, leaves them as they are
        self.bases = nn.Parameter(
            torch.empty(num_bases, out_channels, kernel_size[0] * kernel_size[1] * in_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the bases: the generated change starts at zero."""
        nn.init.zeros_(self.bases)

    def forward(self, x: Tensor, weight: Tensor) -> Factors:
        """x (B, C_in, H, W) and the static weight (C_out, C_in, kh, kw) -> the region filters:
        terms the bases (1, num_bases, C_out, kh, kw, C_in), coef the mix (B, m, num_bases, 1)."""
        logits = self.routing(spatial_mean(x))
        mix = 2.0 * torch.sigmoid(logits) / self.num_bases
        mix = mix.view(x.shape[0], self.region_num, self.num_bases, 1)
        bases = self.bases.reshape(1, self.num_bases, self.bases.shape[1], *self.kernel_size, -1)
        return Factors(weight, None, bases, mix)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        """Reads version 1 checkpoints: bases (num_bases, C_out, kh, kw, C_in)."""
        key = prefix + 'bases'
        kh, kw = self.kernel_size
        old_shape = (*self.bases.shape[:2], kh, kw, self.bases.shape[2] // (kh * kw))
        if ((local_metadata.get('version') or 1) < 2 and key in state_dict
                and tuple(state_dict[key].shape) == old_shape):
            state_dict[key] = state_dict[key].reshape(self.bases.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


FILTER_GENERATORS = {'paper': PaperFilterGenerator, 'bases': BasesFilterGenerator}

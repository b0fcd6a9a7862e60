"""Filter generators: each sample's m region filters, as a change to a static conv weight.

Both return ``delta`` of shape (B, m, C_out, C_in, kh, kw) whose memory is ordered
(B, m, C_out, kh, kw, C_in), the layout :func:`drconv.region_conv` multiplies with, so adding the
static weight and reshaping costs no transpose. Both start at zero (their last projection is
zero-initialised), so a fresh DRConv2d equals its static convolution.
"""
from typing import Tuple

import torch
from torch import Tensor, nn


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


class PaperFilterGenerator(nn.Module):
    """The paper's generator (DRConv, Sec. 3.2).

    Adaptive average pool to kh x kw -> 1x1 conv C_in -> m*m -> sigmoid -> grouped 1x1 conv
    (groups=m) giving m*C_out*C_in values at each of the kh x kw positions. Its projection has
    m*m*C_out*C_in parameters (m*m/(kh*kw) times a conv's): prefer :class:`BasesFilterGenerator`
    for wide layers.

    Args:
        in_channels (int): C_in.
        out_channels (int): C_out.
        kernel_size (Tuple[int, int]): (kh, kw).
        region_num (int): m.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Tuple[int, int],
                 region_num: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.region_num = region_num
        self.squeeze = nn.Conv2d(in_channels, region_num * region_num, 1)
        # grouped 1x1 conv weight, stored (m groups, C_out, C_in, m inputs per group)
        self.projection = nn.Parameter(
            torch.empty(region_num, out_channels, in_channels, region_num))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the projection: the generated change starts at zero."""
        nn.init.zeros_(self.projection)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> delta (B, m, C_out, C_in, kh, kw)."""
        m = self.region_num
        pool_h = adaptive_pool_matrix(x.shape[2], self.kernel_size[0], x)
        pool_w = adaptive_pool_matrix(x.shape[3], self.kernel_size[1], x)
        pooled = torch.matmul(torch.matmul(pool_h, x), pool_w.t())  # (B, C_in, kh, kw)
        hidden = torch.sigmoid(self.squeeze(pooled)).flatten(2)  # (B, m*m, kh*kw)
        hidden = hidden.view(x.shape[0], m, m, -1)  # (B, group, input, position)
        delta = torch.einsum('goic,bgcp->bgopi', self.projection, hidden)
        delta = delta.reshape(*delta.shape[:3], *self.kernel_size, delta.shape[-1])
        return delta.permute(0, 1, 2, 5, 3, 4)


class BasesFilterGenerator(nn.Module):
    """The official code's generator: each region's filter mixes ``num_bases`` shared kernels.

    Routing weights per sample and region come from global average pooling -> linear ->
    2 * sigmoid(.) / num_bases.

    Args:
        in_channels (int): C_in.
        out_channels (int): C_out.
        kernel_size (Tuple[int, int]): (kh, kw).
        region_num (int): m.
        num_bases (int): shared base kernels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Tuple[int, int],
                 region_num: int, num_bases: int):
        super().__init__()
        self.region_num = region_num
        self.num_bases = num_bases
        self.routing = nn.Linear(in_channels, region_num * num_bases)
        # base kernels stored (num_bases, C_out, kh, kw, C_in)
        self.bases = nn.Parameter(
            torch.empty(num_bases, out_channels, *kernel_size, in_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the bases: the generated change starts at zero."""
        nn.init.zeros_(self.bases)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> delta (B, m, C_out, C_in, kh, kw)."""
        b = x.shape[0]
        logits = self.routing(x.mean(dim=(2, 3))).view(b * self.region_num, self.num_bases)
        mix = 2.0 * torch.sigmoid(logits) / self.num_bases
        delta = torch.mm(mix, self.bases.flatten(1))
        delta = delta.view(b, self.region_num, *self.bases.shape[1:])
        return delta.permute(0, 1, 2, 5, 3, 4)


FILTER_GENERATORS = {'paper': PaperFilterGenerator, 'bases': BasesFilterGenerator}

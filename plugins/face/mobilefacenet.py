"""MobileFaceNet as insightface's arcface_torch defines it (``get_mbf``), with DRConv by config.

Layout (scale=2, 112x112 input; C = 64*scale):

- stem: 3x3 s2 conv 3 -> C, then stage 0 at 56x56: a 3x3 grouped conv (groups=64) when
  ``blocks[0] == 1``, otherwise ``blocks[0]`` residual bottlenecks;
- stages 1-3: a stride-2 bottleneck then ``blocks[i]`` residual bottlenecks
  (28x28 C, 14x14 2C, 7x7 2C); a bottleneck is ``1x1 expand -> 3x3 depthwise -> 1x1 project``;
- ``conv_sep`` 1x1 -> 512, then GDC: 7x7 depthwise conv -> Linear -> BatchNorm1d.

Which convs take DRConv (DRConv2d needs groups=1, so every depthwise/grouped conv stays plain):
the 1x1 expand and 1x1 project convs of the bottlenecks in the stages whose
``stage_with_drconv`` entry is True, and ``conv_sep`` when the last stage's entry is True.
``conv_cfg`` applies to every other groups=1 conv (the stem conv included).
"""
from typing import Optional, Sequence

import torch
from mmengine.model import BaseModule
from torch import nn

from ..registry import MODELS
from ._layers import init_backbone, make_conv, stage_conv_cfgs


class ConvBlock(nn.Sequential):
    """conv -> BN -> PReLU (``linear=True`` drops the PReLU)."""

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=0, groups=1,
                 conv_cfg=None, linear=False):
        layers = [make_conv(in_channels, out_channels, kernel_size, stride, padding, groups,
                            conv_cfg), nn.BatchNorm2d(out_channels)]
        if not linear:
            layers.append(nn.PReLU(out_channels))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear project, residual when asked."""

    def __init__(self, in_channels, out_channels, inner_channels, stride=1, residual=False,
                 conv_cfg=None):
        super().__init__()
        self.residual = residual
        self.expand = ConvBlock(in_channels, inner_channels, conv_cfg=conv_cfg)
        self.depthwise = ConvBlock(inner_channels, inner_channels, 3, stride, 1,
                                   groups=inner_channels)
        self.project = ConvBlock(inner_channels, out_channels, conv_cfg=conv_cfg, linear=True)

    def forward(self, x):
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


@MODELS.register_module()
class MobileFaceNet(BaseModule):
    """MobileFaceNet (arcface_torch's ``mbf``), with DRConv on its 1x1 convs by config.

    Args:
        num_features (int): Embedding size. Default: 512.
        blocks (Sequence[int]): Residual bottlenecks of stages 0-3. Default: (1, 4, 6, 2)
            (arcface_torch's mbf; mbf_large is (2, 8, 12, 4) with scale=4).
        scale (float): Width multiplier; C = 64*scale must be a whole number (0.5 gives the
            32-channel net of the CPU demo). Default: 2.
        inner_channels (Sequence[int]): Expansion widths of stages 0-3 (stage 0 only when
            ``blocks[0] > 1``). Default: (128, 128, 256, 256) as arcface_torch.
        down_channels (Sequence[int]): Expansion widths of the stride-2 bottlenecks opening
            stages 1-3. Default: (128, 256, 512) as arcface_torch.
        sep_channels (int): Width of ``conv_sep`` and GDC. Default: 512.
        input_size (int): Square input side (a multiple of 16); GDC's kernel is
            ``input_size/16``. Default: 112.
        conv_cfg (dict, optional): Conv config for the groups=1 convs not given DRConv.
        drconv (dict, optional): Conv config of the DRConv stages, e.g.
            ``dict(type='DRConv', region_num=8)``. Default: None.
        stage_with_drconv (Sequence[bool], optional): Which of stages 0-3 use ``drconv``.
            Default: all four when ``drconv`` is given.
        init_cfg (dict, optional): Default: arcface_torch's init (Kaiming normal, fan_out).
    """

    def __init__(self, num_features: int = 512, blocks: Sequence[int] = (1, 4, 6, 2),
                 scale: float = 2, inner_channels: Sequence[int] = (128, 128, 256, 256),
                 down_channels: Sequence[int] = (128, 256, 512), sep_channels: int = 512,
                 input_size: int = 112, conv_cfg: Optional[dict] = None,
                 drconv: Optional[dict] = None, stage_with_drconv: Optional[Sequence[bool]] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg)
        if len(blocks) != 4 or len(inner_channels) != 4 or len(down_channels) != 3:
            raise ValueError(f'blocks and inner_channels need 4 entries, down_channels 3; got '
                             f'{blocks}, {inner_channels}, {down_channels}')
        if input_size % 16 != 0:
            raise ValueError(f'MobileFaceNet input_size must be a multiple of 16, got {input_size}')
        self.input_size = input_size
        cfgs = stage_conv_cfgs(4, conv_cfg, drconv, stage_with_drconv)
        c = 64 * scale
        if c <= 0 or c != int(c):
            raise ValueError(f'MobileFaceNet: 64 * scale must be a positive whole number of '
                             f'channels, got scale={scale}')
        c = int(c)
        widths = (c, c, 2 * c, 2 * c)
        self.stem = ConvBlock(3, c, 3, 2, 1, conv_cfg=conv_cfg)
        if blocks[0] == 1:
            stage0 = [ConvBlock(c, c, 3, 1, 1, groups=min(64, c))]
        else:
            stage0 = [Bottleneck(c, c, inner_channels[0], 1, True, cfgs[0])
                      for _ in range(blocks[0])]
        self.stage0 = nn.Sequential(*stage0)
        for i in range(1, 4):
            layers = [Bottleneck(widths[i - 1], widths[i], down_channels[i - 1], 2, False,
                                 cfgs[i])]
            layers += [Bottleneck(widths[i], widths[i], inner_channels[i], 1, True, cfgs[i])
                       for _ in range(blocks[i])]
            self.add_module(f'stage{i}', nn.Sequential(*layers))
        self.conv_sep = ConvBlock(widths[3], sep_channels, conv_cfg=cfgs[3])
        k = input_size // 16
        self.gdc = ConvBlock(sep_channels, sep_channels, k, groups=sep_channels, linear=True)
        self.linear = nn.Linear(sep_channels, num_features, bias=False)
        self.features = nn.BatchNorm1d(num_features)
        if init_cfg is None:
            init_backbone(self, lambda w: nn.init.kaiming_normal_(w, mode='fan_out',
                                                                  nonlinearity='relu'))
            nn.init.kaiming_normal_(self.linear.weight, mode='fan_out', nonlinearity='relu')

    def init_weights(self) -> None:
        if self.init_cfg is not None:
            super().init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S, S), normalised RGB -> embedding (B, num_features)."""
        x = self.stage0(self.stem(x))
        x = self.stage3(self.stage2(self.stage1(x)))
        x = self.gdc(self.conv_sep(x))
        return self.features(self.linear(torch.flatten(x, 1)))

"""IResNet (improved ResNet of ArcFace), as insightface's arcface_torch defines it.

Pre-activation basic blocks ``BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN (+ shortcut)``,
a 3x3 stride-1 stem, four stages of stride 2 (112 -> 7), then ``BN -> flatten -> dropout ->
Linear -> BatchNorm1d`` (scale frozen at 1) giving the embedding.

Which convs take DRConv: the two 3x3 convs of every block of the stages whose
``stage_with_drconv`` entry is True (built from ``drconv``). ``conv_cfg`` applies to every other
conv (stem, shortcut 1x1s, and the block convs of the remaining stages).
"""
from typing import Optional, Sequence

import torch
from mmengine.model import BaseModule
from torch import nn

from ..registry import MODELS
from ._layers import init_backbone, make_conv, stage_conv_cfgs

ARCH_SETTINGS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    """arcface_torch's IBasicBlock; ``block_conv_cfg`` builds its two 3x3 convs."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, block_conv_cfg: Optional[dict] = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = make_conv(in_channels, channels, 3, 1, 1, conv_cfg=block_conv_cfg)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = make_conv(channels, channels, 3, stride, 1, conv_cfg=block_conv_cfg)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


@MODELS.register_module()
class IResNet(BaseModule):
    """IResNet-18/34/50/100 (arcface_torch's ``iresnet*``), with DRConv by config.

    Args:
        depth (int): 18, 34, 50 or 100 (blocks per stage as arcface_torch:
            [2,2,2,2], [3,4,6,3], [3,4,14,3], [3,13,30,3]).
        num_features (int): Embedding size. Default: 512.
        input_size (int): Square input side; the flattened map is ``(input_size/16)^2``.
            Default: 112.
        base_channels (int): Width of the first stage (stages are 1, 2, 4, 8 times it).
            Default: 64.
        dropout (float): Dropout before the embedding Linear. Default: 0.
        conv_cfg (dict, optional): Conv config for all convs not given DRConv (e.g.
            ``dict(type='DRConv')`` to put DRConv everywhere). Default: None (nn.Conv2d).
        drconv (dict, optional): Conv config of the DRConv stages, e.g.
            ``dict(type='DRConv', region_num=8, filter_generator='bases')``. Default: None.
        stage_with_drconv (Sequence[bool], optional): Which of the 4 stages use ``drconv``.
            Default: all four when ``drconv`` is given.
        zero_init_residual (bool): Zero the last BN of each block. Default: False.
        init_cfg (dict, optional): mmengine init config; default is arcface_torch's init
            (conv weights N(0, 0.1), BN (1, 0)).
    """

    def __init__(self, depth: int = 50, num_features: int = 512, input_size: int = 112,
                 base_channels: int = 64, dropout: float = 0.0, conv_cfg: Optional[dict] = None,
                 drconv: Optional[dict] = None, stage_with_drconv: Optional[Sequence[bool]] = None,
                 zero_init_residual: bool = False, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg)
        if depth not in ARCH_SETTINGS:
            raise ValueError(f'IResNet depth must be one of {sorted(ARCH_SETTINGS)}, got {depth}')
        if input_size % 16 != 0:
            raise ValueError(f'IResNet input_size must be a multiple of 16, got {input_size}')
        self.depth = depth
        self.input_size = input_size
        self.zero_init_residual = zero_init_residual
        stage_cfgs = stage_conv_cfgs(4, conv_cfg, drconv, stage_with_drconv)
        self.conv1 = make_conv(3, base_channels, 3, 1, 1, conv_cfg=conv_cfg)
        self.bn1 = nn.BatchNorm2d(base_channels, eps=1e-5)
        self.prelu = nn.PReLU(base_channels)
        in_channels = base_channels
        for i, num_blocks in enumerate(ARCH_SETTINGS[depth]):
            channels = base_channels * 2**i
            downsample = nn.Sequential(
                make_conv(in_channels, channels, 1, 2, conv_cfg=conv_cfg),
                nn.BatchNorm2d(channels, eps=1e-5))
            blocks = [IBasicBlock(in_channels, channels, 2, downsample, stage_cfgs[i])]
            blocks += [IBasicBlock(channels, channels, 1, None, stage_cfgs[i])
                       for _ in range(1, num_blocks)]
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            in_channels = channels
        self.bn2 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_channels * (input_size // 16)**2, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        if init_cfg is None:
            self._arcface_init()

    def _arcface_init(self) -> None:
        init_backbone(self, lambda w: nn.init.normal_(w, 0, 0.1))
        if self.zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.zeros_(m.bn3.weight)

    def init_weights(self) -> None:
        if self.init_cfg is not None:
            super().init_weights()
        # else: the arcface_torch init ran in __init__; keep it (and any loaded weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S, S), normalised RGB -> embedding (B, num_features)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))

"""Helpers shared by the face backbones: conv building with DRConv switches, and init."""
from typing import Optional

from mmcv.cnn import build_conv_layer
from torch import nn

from drconv import DRConv2d


def make_conv(in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
              groups: int = 1, conv_cfg: Optional[dict] = None) -> nn.Module:
    """A bias-free conv built from ``conv_cfg`` (mmcv's build_conv_layer).

    Grouped/depthwise convs (``groups > 1``) stay ``nn.Conv2d`` whatever ``conv_cfg`` says:
    DRConv2d supports groups=1 only.
    """
    if groups != 1:
        conv_cfg = None
    return build_conv_layer(conv_cfg, in_channels, out_channels, kernel_size, stride=stride,
                            padding=padding, groups=groups, bias=False)


def stage_conv_cfgs(num_stages: int, conv_cfg: Optional[dict], drconv: Optional[dict],
                    stage_with_drconv) -> list:
    """The conv cfg of each stage: ``drconv`` where ``stage_with_drconv`` is True, else conv_cfg."""
    if stage_with_drconv is None:
        stage_with_drconv = (drconv is not None, ) * num_stages
    stage_with_drconv = tuple(bool(s) for s in stage_with_drconv)
    if len(stage_with_drconv) != num_stages:
        raise ValueError(f'stage_with_drconv needs {num_stages} entries, got '
                         f'{stage_with_drconv}')
    if any(stage_with_drconv) and drconv is None:
        raise ValueError('stage_with_drconv asks for DRConv but drconv is None; give e.g. '
                         "drconv=dict(type='DRConv', region_num=8)")
    if drconv is not None:
        drconv = dict(drconv)
        drconv.setdefault('type', 'DRConv')
    return [drconv if use else conv_cfg for use in stage_with_drconv]


def init_backbone(model: nn.Module, conv_init) -> None:
    """arcface_torch's init: ``conv_init`` on every conv weight, BN to (1, 0), Linear likewise.

    Inside a DRConv2d only its static ``weight`` is initialised; its guide conv and filter
    generator keep their own init, and ``reset_filter_generator`` then zeroes the generated
    change so the layer starts as the plain conv.
    """
    inner = set()
    for m in model.modules():
        if isinstance(m, DRConv2d):
            inner.update(id(sub) for sub in m.modules() if sub is not m)
    for m in model.modules():
        if id(m) in inner:
            continue
        if isinstance(m, nn.Conv2d):
            conv_init(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, DRConv2d):
            m.reset_filter_generator()

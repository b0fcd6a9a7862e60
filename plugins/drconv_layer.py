"""Registers :class:`drconv.DRConv2d` as the mmcv conv layer ``'DRConv'``.

It goes into mmengine's root MODELS registry, which every scope (mmdet, mmseg, drconv) falls
back to, so ``build_conv_layer(dict(type='DRConv', region_num=8), ...)``, a ResNet's
``dcn=dict(type='DRConv')`` and ``ConvModule(conv_cfg=dict(type='DRConv'))`` all find it.
"""
from mmengine.registry import MODELS

from drconv import DRConv2d

MODELS.register_module('DRConv', module=DRConv2d)

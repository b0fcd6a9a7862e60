"""'DRConv' in mmengine's root registry: build_conv_layer, ConvModule, mmdet/mmseg ResNet."""
import importlib

import pytest
import torch
from mmcv.cnn import ConvModule, build_conv_layer
from mmengine.registry import MODELS, init_default_scope

import drconv_mm  # noqa: F401  registers 'DRConv'
from drconv import DRConv2d


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'drconv_mm'])
def test_build_conv_layer_in_every_scope(scope):
    init_default_scope(scope)
    layer = build_conv_layer(dict(type='DRConv', region_num=4), 8, 16, kernel_size=3,
                             stride=2, padding=1, bias=False)
    assert isinstance(layer, DRConv2d) and layer.region_num == 4 and layer.bias is None
    assert layer(torch.randn(1, 8, 10, 10)).shape == (1, 16, 5, 5)
    assert MODELS.get('DRConv') is DRConv2d


def test_wrong_key_names_bad_and_accepted_keys():
    with pytest.raises(TypeError, match=r"\['regions'\]; accepted: .*'region_num'"):
        build_conv_layer(dict(type='DRConv', regions=8), 8, 8, kernel_size=3)


def test_conv_module_with_norm_and_act():
    init_default_scope('mmdet')
    module = ConvModule(8, 8, 3, padding=1, conv_cfg=dict(type='DRConv', region_num=2),
                        norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'))
    module.init_weights()
    assert isinstance(module.conv, DRConv2d) and module.conv.bias is None
    out = module(torch.randn(2, 8, 6, 6))
    out.mean().backward()
    assert module.conv.guide_conv.weight.grad is not None


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_resnet50_dcn_entry_makes_13_drconv_layers(scope):
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    cfg = dict(type='ResNet', depth=50, dcn=dict(type='DRConv', region_num=8),
               stage_with_dcn=(False, True, True, True))
    if scope == 'mmseg':
        cfg.update(type='ResNetV1c', strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
    backbone = registry.build(cfg)
    names = [n for n, m in backbone.named_modules() if isinstance(m, DRConv2d)]
    assert len(names) == 13 and all(n.endswith('conv2') for n in names)
    assert not any(n.startswith('layer1') for n in names)


def test_imagenet_style_checkpoint_reproduces_plain_resnet():
    """A plain ResNet's weights (strict=False) give a DRConv ResNet the same outputs."""
    init_default_scope('mmdet')
    from mmdet.registry import MODELS as DET_MODELS
    common = dict(type='ResNet', depth=50, base_channels=8, out_indices=(3,),
                  norm_cfg=dict(type='BN'))
    torch.manual_seed(0)
    plain = DET_MODELS.build(common)
    plain.init_weights()
    dynamic = DET_MODELS.build(dict(common, dcn=dict(type='DRConv', region_num=8),
                                    stage_with_dcn=(False, True, True, True)))
    missing, unexpected = dynamic.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and len(missing) > 0
    plain.eval()
    dynamic.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(dynamic(x)[0], plain(x)[0], rtol=1e-4, atol=1e-4)

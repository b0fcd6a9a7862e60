"""DRConv behaves like nn.Conv2d wherever mmcv puts a conv layer.

The checks of mmcv v2.1.0's tests/test_cnn (build_conv_layer, ConvModule) with
``type='DRConv'`` against ``conv_cfg=None`` under the same seed: shapes, the static init, every
ConvModule order, activation, padding mode and spectral norm; conv-BN fusion is refused.
"""
import pytest
import torch
from mmcv.cnn import ConvModule, build_conv_layer
from mmengine.model import Sequential
from mmengine.model.efficient_conv_bn_eval import turn_on_efficient_conv_bn_eval
from mmengine.registry import MODELS, init_default_scope
from torch import nn

import drconv_mm  # noqa: F401  registers 'DRConv'
from drconv import DRConv2d

DRCONV = dict(type='DRConv', region_num=4)


def build_pair(build, *args, **kwargs):
    """``build(conv_cfg)`` for Conv2d and DRConv under seed 0, and a draw made after each."""
    built = []
    for conv_cfg in (None, DRCONV):
        torch.manual_seed(0)
        model = build(conv_cfg, *args, **kwargs)
        built += [model, torch.rand(4)]
    plain, after_plain, dynamic, after_dynamic = built
    assert any(isinstance(m, DRConv2d) for m in dynamic.modules())
    return plain, dynamic, torch.equal(after_plain, after_dynamic)


def assert_same_start(plain: nn.Module, dynamic: nn.Module) -> None:
    """Every tensor of the Conv2d model equals the DRConv model's of the same name."""
    dynamic_state = dynamic.state_dict()
    for name, value in plain.state_dict().items():
        assert torch.equal(dynamic_state[name], value), name


@pytest.mark.parametrize('geometry', [
    dict(kernel_size=3), dict(kernel_size=1), dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(3, 5), padding=(1, 2)),
    dict(kernel_size=3, padding=2, dilation=2), dict(kernel_size=2, stride=2, bias=False),
    dict(kernel_size=(1, 3), stride=(2, 1), padding=(0, 1), dilation=(1, 3)),
])
def test_build_conv_layer_shapes_init_and_output(geometry):
    plain, dynamic, same_stream = build_pair(build_conv_layer, 5, 6, **geometry)
    assert isinstance(dynamic, DRConv2d) and same_stream
    for attr in ('in_channels', 'out_channels', 'kernel_size', 'stride', 'padding', 'dilation',
                 'groups', 'transposed', 'output_padding'):
        assert getattr(dynamic, attr) == getattr(plain, attr), attr
    assert_same_start(plain, dynamic)
    x = torch.randn(2, 5, 13, 10)
    torch.testing.assert_close(dynamic(x), plain(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('conv_type', ['DRConv', DRConv2d])
def test_build_conv_layer_by_name_and_by_class(conv_type):
    """mmcv's loop over MODELS: in 4, out 8, kernel 3, dilation 2, by name and by class."""
    layer = build_conv_layer(dict(type=conv_type), in_channels=4, out_channels=8,
                             kernel_size=3, dilation=2)
    assert isinstance(layer, DRConv2d)
    assert (layer.in_channels, layer.out_channels) == (4, 8)
    assert layer.kernel_size == (3, 3) and layer.dilation == (2, 2)
    assert MODELS.get('DRConv') is DRConv2d


def conv_module(conv_cfg, **kwargs):
    return ConvModule(6, 8, 3, padding=1, conv_cfg=conv_cfg, **kwargs)


@pytest.mark.parametrize('kwargs', [
    dict(norm_cfg=dict(type='BN')),
    dict(norm_cfg=dict(type='BN'), order=('norm', 'conv', 'act')),
    dict(norm_cfg=dict(type='BN'), order=('act', 'conv', 'norm')),
    dict(norm_cfg=dict(type='GN', num_groups=2), order=('conv', 'act', 'norm')),
    dict(),
    dict(act_cfg=None),
    dict(act_cfg=dict(type='LeakyReLU')),
    dict(act_cfg=dict(type='Tanh')),
    dict(act_cfg=dict(type='Sigmoid')),
    dict(act_cfg=dict(type='PReLU')),
    dict(act_cfg=dict(type='HSwish')),
    dict(act_cfg=dict(type='HSigmoid')),
    dict(padding_mode='reflect'),
    dict(with_spectral_norm=True),
    dict(bias=False),
], ids=str)
def test_conv_module_starts_as_with_conv2d(kwargs):
    plain, dynamic, same_stream = build_pair(conv_module, **kwargs)
    assert same_stream
    assert isinstance(dynamic.conv, DRConv2d) or isinstance(
        getattr(dynamic.conv, 'module', None), DRConv2d)
    assert (dynamic.conv.bias is None) == (plain.conv.bias is None)
    assert_same_start(plain, dynamic)
    x = torch.randn(2, 6, 9, 7)
    for train in (True, False):
        plain.train(train)
        dynamic.train(train)
        torch.testing.assert_close(dynamic(x), plain(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dynamic(x, activate=False), plain(x, activate=False),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dynamic(x, norm=False), plain(x, norm=False),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape', [(0, 6, 9, 7), (6, 9, 7)], ids=['empty batch', 'unbatched'])
def test_conv_module_empty_and_unbatched_input_as_with_conv2d(shape):
    """ConvModule (conv, BN in eval, ReLU) on an empty batch (as RoI heads see) and on an
    unbatched (C, H, W) input: the shape Conv2d gives, and a backward that works."""
    plain, dynamic, _ = build_pair(conv_module, norm_cfg=dict(type='BN'))
    x = torch.randn(*shape, requires_grad=True)
    plain.eval()
    dynamic.eval()
    if len(shape) == 3:  # BatchNorm2d needs a batch: the conv alone
        plain, dynamic = plain.conv, dynamic.conv
    out = dynamic(x)
    assert out.shape == plain(x).shape
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_inplace_activation_after_drconv():
    """ConvModule's default in-place ReLU right after a bias-free DRConv, as after Conv2d."""
    module = ConvModule(6, 8, 3, padding=1, conv_cfg=DRCONV, bias=False)
    module(torch.randn(2, 6, 9, 7)).sum().backward()


def test_conv_module_kaiming_init_reaches_drconv():
    """ConvModule's Kaiming init (std sqrt(2 / fan_out)), not PyTorch's default, as for Conv2d."""
    torch.manual_seed(0)
    module = ConvModule(64, 64, 3, conv_cfg=DRCONV, norm_cfg=dict(type='BN'))
    want = (2 / (64 * 9))**0.5
    assert abs(module.conv.weight.std().item() - want) < 0.1 * want


def test_parent_init_cfg_reaches_drconv_as_conv2d():
    """A parent's init_cfg (Kaiming on 'Conv2d') over ConvModules, then init_weights()."""

    def build(conv_cfg):
        return Sequential(conv_module(conv_cfg, norm_cfg=dict(type='BN')),
                          ConvModule(8, 8, 3, conv_cfg=conv_cfg),
                          init_cfg=dict(type='Kaiming', layer='Conv2d', mode='fan_in'))

    def build_and_init(conv_cfg):
        model = build(conv_cfg)
        model.init_weights()
        return model

    plain, dynamic, same_stream = build_pair(build_and_init)
    assert same_stream
    assert_same_start(plain, dynamic)
    # the init changed the weights (fan_in, not ConvModule's fan_out) and kept delta at zero
    torch.manual_seed(0)
    assert not torch.equal(build(None)[1].conv.weight, plain[1].conv.weight)
    for layer in (m for m in dynamic.modules() if isinstance(m, DRConv2d)):
        filters = layer.region_filters(torch.randn(1, layer.in_channels, 5, 5))
        assert (filters == layer.weight).all()  # every region's filter is the static weight


def build_in_scope(scope: str, cfg: dict) -> nn.Module:
    """Builds ``cfg`` from ``scope``'s registry and runs its init_weights()."""
    init_default_scope(scope)
    registry = MODELS if scope == 'drconv_mm' else __import__(f'{scope}.registry').registry.MODELS
    model = registry.build(cfg)
    model.init_weights()
    return model


def resnet_with(conv_cfg):
    return build_in_scope('mmdet', dict(
        type='ResNet', depth=50, base_channels=8, out_indices=(3, ), dcn=conv_cfg,
        stage_with_dcn=(False, True, True, True)))


def fpn_with(conv_cfg):
    return build_in_scope('mmdet', dict(type='FPN', in_channels=[8, 16], out_channels=8,
                                        num_outs=3, conv_cfg=conv_cfg))


def aspp_with(conv_cfg):
    return build_in_scope('mmseg', dict(
        type='ASPPHead', in_channels=16, in_index=0, channels=8, dilations=(1, 2, 3),
        num_classes=3, norm_cfg=dict(type='BN'), conv_cfg=conv_cfg))


def mobilefacenet_with(conv_cfg):
    return build_in_scope('drconv_mm', dict(
        type='MobileFaceNet', num_features=16, blocks=(1, 1, 1, 1), scale=1,
        inner_channels=(8, 8, 16, 16), down_channels=(8, 16, 32), sep_channels=32,
        input_size=32, drconv=conv_cfg))


def iresnet_with(conv_cfg):
    return build_in_scope('drconv_mm', dict(
        type='IResNet', depth=18, base_channels=4, num_features=16, input_size=32,
        drconv=conv_cfg))


@pytest.mark.parametrize('build', [resnet_with, fpn_with, aspp_with, mobilefacenet_with,
                                   iresnet_with], ids=lambda f: f.__name__)
def test_models_start_as_their_conv2d_baseline(build):
    """The same seed gives the DRConv model every weight of its Conv2d baseline."""
    plain, dynamic, same_stream = build_pair(build)
    assert same_stream
    assert_same_start(plain, dynamic)


def test_efficient_conv_bn_eval_is_refused_by_name():
    module = conv_module(DRCONV, norm_cfg=dict(type='BN'), efficient_conv_bn_eval=True)
    x = torch.randn(2, 6, 9, 7)
    assert module(x).shape == (2, 8, 9, 7)  # training mode: no fusion
    module.eval()
    with pytest.raises(RuntimeError, match='DRConv2d.*efficient_conv_bn_eval'):
        module(x)


def test_runner_efficient_conv_bn_eval_on_drconv_backbone_is_refused_by_name():
    init_default_scope('mmdet')
    from mmdet.registry import MODELS as DET_MODELS
    model = nn.Module()
    model.backbone = DET_MODELS.build(dict(
        type='ResNet', depth=50, base_channels=8, out_indices=(3, ),
        dcn=DRCONV, stage_with_dcn=(False, True, True, True)))
    with pytest.raises(RuntimeError, match='DRConv2d.*efficient_conv_bn_eval'):
        turn_on_efficient_conv_bn_eval(model, ['backbone'])

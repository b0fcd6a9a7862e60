"""DRConv2d in mmengine's complexity counter: each part equals its hand-computed MAdds."""
import os.path as osp

import pytest
import torch
from mmengine.analysis import FlopAnalyzer, get_model_complexity_info
from torch import nn

import drconv_mm.analysis  # noqa: F401  installs DRConv2d's pricing
from drconv import DRConv2d

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = osp.join(REPO, 'configs', 'det', 'demo',
                       'faster-rcnn_r50-thin-drconv-c3-c5_fpn_300i_demo-coco.py')


def analyzer(model, x):
    return FlopAnalyzer(model.eval(), (x,)).unsupported_ops_warnings(False) \
        .uncalled_modules_warnings(False)


def hand_madds(b, c_in, c_out, h, w, k, m, h_out, w_out, generator='paper', num_bases=4):
    """DRConv's MAdds by part, from its definition."""
    filter_values = b * m * c_out * c_in * k * k
    parts = dict(region_conv=b * c_out * c_in * k * k * h_out * w_out,
                 guide_conv=b * m * c_in * k * k * h_out * w_out)
    if generator == 'paper':
        parts['filter_generator'] = (
            b * c_in * k * h * w + b * c_in * k * w * k  # pooling: (k, H) @ x @ (W, k)
            + b * m * m * c_in * k * k)                   # squeeze 1x1 conv C_in -> m*m
        # m projection terms, the static weight and the region bias
        parts['region_filters'] = filter_values * (m + 2)
    else:
        parts['filter_generator'] = b * c_in * m * num_bases  # routing linear (mean not counted)
        parts['region_filters'] = filter_values * (num_bases + 1)  # the bases and the weight
    return parts


@pytest.mark.parametrize('generator', ['paper', 'bases'])
@pytest.mark.parametrize('k,stride', [(3, 2), (1, 1)])
def test_one_layer_equals_hand_formula(generator, k, stride):
    b, c_in, c_out, h, w, m = 2, 6, 10, 11, 9, 4
    layer = DRConv2d(c_in, c_out, k, stride=stride, padding=k // 2, region_num=m,
                     filter_generator=generator)
    x = torch.randn(b, c_in, h, w)
    h_out, w_out = layer(x).shape[2:]
    expected = hand_madds(b, c_in, c_out, h, w, k, m, h_out, w_out, generator)
    flops = analyzer(layer, x)
    ops = flops.by_operator()
    assert ops['region_conv'] == expected['region_conv']  # one filter per pixel, not m
    assert ops['region_filters'] == expected['region_filters']
    assert flops.total('guide_conv') == expected['guide_conv']
    assert flops.total('filter_generator') == expected['filter_generator']
    assert flops.total() == sum(expected.values())


def test_selected_conv_counts_as_the_plain_conv_and_output_is_unchanged():
    layer = DRConv2d(8, 8, 3, padding=1, region_num=8).eval()
    plain = nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 16, 16)
    assert analyzer(layer, x).by_operator()['region_conv'] == analyzer(plain, x).total()
    reference = layer(x)
    info = get_model_complexity_info(layer, inputs=(x,), show_table=False, show_arch=False)
    assert info['flops'] == analyzer(layer, x).total()
    assert 'forward' not in layer.__dict__  # the counting forward is removed afterwards
    torch.testing.assert_close(layer(x), reference)


def test_tiny_model_minus_baseline_is_guide_generator_and_add():
    def net(conv):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                             conv(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                             conv(16, 16, 1), nn.AdaptiveAvgPool2d(1))

    x = torch.randn(2, 3, 20, 20)
    dynamic = net(lambda *a, **kw: DRConv2d(*a, region_num=4, **kw))
    baseline = net(nn.Conv2d)
    extra = hand_madds(2, 8, 16, 20, 20, 3, 4, 10, 10)
    extra2 = hand_madds(2, 16, 16, 10, 10, 1, 4, 10, 10)
    expected = sum(extra[p] + extra2[p] for p in ('guide_conv', 'filter_generator',
                                                   'region_filters'))
    assert analyzer(dynamic, x).total() - analyzer(baseline, x).total() == expected


def test_get_flops_on_a_config_counts_every_layer(tool):
    from drconv_mm.analysis import models
    get_flops = tool('analysis_tools/get_flops')
    result = get_flops.complexity_of_config(DEMO_CONFIG, (64, 64))
    model, base = result['model'], result['baseline']
    assert len(model['drconv']) == 13 and not base['drconv']
    extra = sum(layer[p] for layer in model['drconv'].values()
                for p in ('guide_conv', 'filter_generator', 'region_filters'))
    assert model['flops'] - base['flops'] == extra > 0
    assert model['params'] > base['params']
    # the selected-filter conv of every layer is a plain conv's MAdds at its shapes
    net = models.build_model(models.load_config(DEMO_CONFIG))
    data = models.preprocess(net, models.fake_batch(net, 1, (3, 64, 64)))
    for layer in models.drconv_layers(net, data):
        b, c_in, h, w = layer['input_shape']
        h_out = (h + 2 * layer['padding'][0] - 3) // layer['stride'][0] + 1
        w_out = (w + 2 * layer['padding'][1] - 3) // layer['stride'][1] + 1
        assert model['drconv'][layer['name']]['region_conv'] == \
            b * layer['out_channels'] * c_in * 9 * h_out * w_out

"""DRConv2d: a drop-in for nn.Conv2d that starts equal to its static conv."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drconv import DRConv2d, region_conv_dense


@pytest.mark.parametrize('generator', ['paper', 'bases'])
@pytest.mark.parametrize('kw', [dict(kernel_size=3, padding=1), dict(kernel_size=1),
                                dict(kernel_size=(3, 5), stride=2, padding=(1, 2), dilation=1),
                                dict(kernel_size=3, padding=2, dilation=2, bias=False)])
def test_fresh_layer_equals_its_static_conv(generator, kw):
    torch.manual_seed(0)
    layer = DRConv2d(6, 5, region_num=4, filter_generator=generator, **kw)
    x = torch.randn(3, 6, 11, 9)
    want = F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('generator', ['paper', 'bases'])
def test_reset_filter_generator_restores_static_conv_and_keeps_weight(generator):
    layer = DRConv2d(4, 4, 3, padding=1, region_num=3, filter_generator=generator)
    for p in layer.filter_generator.parameters():
        nn.init.normal_(p)
    x = torch.randn(2, 4, 7, 7)
    weight = layer.weight.detach().clone()
    assert not torch.allclose(layer(x), F.conv2d(x, weight, layer.bias, padding=1))
    layer.reset_filter_generator()
    assert torch.equal(layer.weight, weight)
    torch.testing.assert_close(layer(x), F.conv2d(x, weight, layer.bias, padding=1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('generator', ['paper', 'bases'])
def test_trained_layer_uses_region_filters(generator):
    """With a non-zero generator the layer is region_conv of its region filters plus bias."""
    torch.manual_seed(1)
    layer = DRConv2d(3, 4, 3, padding=1, region_num=5, filter_generator=generator).double()
    for p in layer.filter_generator.parameters():
        nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    want = region_conv_dense(x, layer.region_filters(x), layer.guide_conv(x), padding=1)
    torch.testing.assert_close(out, want + layer.bias.view(1, -1, 1, 1))
    out.sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_standard_checkpoint_reproduces_standard_model():
    torch.manual_seed(2)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))
    dynamic = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                            DRConv2d(8, 8, 3, 2, 1, region_num=8))
    missing, unexpected = dynamic.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(k.startswith('2.guide_conv') or k.startswith('2.filter_generator')
                           for k in missing)
    x = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(dynamic(x), plain(x), rtol=1e-5, atol=1e-5)


def test_conv_attributes_and_repr():
    layer = DRConv2d(4, 6, 3, stride=2, padding=1, bias=False, region_num=16,
                     filter_generator='bases', num_bases=2)
    assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (4, 6, (3, 3))
    assert (layer.stride, layer.padding, layer.dilation, layer.groups) == ((2, 2), (1, 1),
                                                                           (1, 1), 1)
    assert layer.transposed is False and layer.output_padding == (0, 0)
    assert layer.bias is None and isinstance(layer, nn.Conv2d)
    assert "region_num=16, filter_generator='bases'" in repr(layer)
    assert layer.guide_conv.out_channels == 16
    assert layer.filter_generator.bases.shape[0] == 2


def test_channels_last_and_autocast():
    layer = DRConv2d(4, 4, 3, padding=1, region_num=2)
    x = torch.randn(2, 4, 6, 6)
    want = layer(x)
    torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), want)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want, rtol=5e-2, atol=1e-1)


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(region_num=0), ValueError, 'region_num must be a positive int'),
    (dict(region_num=2.5), ValueError, 'region_num must be a positive int'),
    (dict(in_channels=0), ValueError, 'in_channels must be a positive int'),
    (dict(out_channels=-3), ValueError, 'out_channels must be a positive int'),
    (dict(groups=2), ValueError, 'groups=1 only'),
    (dict(padding_mode='reflect'), ValueError, "padding_mode='zeros' only"),
    (dict(padding='same'), ValueError, 'padding as an int'),
    (dict(filter_generator='mlp'), ValueError, r"one of \['bases', 'paper'\]"),
    (dict(num_bases=0, filter_generator='bases'), ValueError, 'num_bases must be a positive int'),
    (dict(num_bases=4), ValueError, "num_bases applies to filter_generator='bases' only"),
    (dict(guide_grad='approx'), ValueError, 'guide_grad must be one of'),
    (dict(stride=0), ValueError, 'stride must be >= 1'),
    (dict(kernel_size=(3, 3, 3)), TypeError, 'kernel_size must be an int or a pair'),
    (dict(regions=8), TypeError, r"unexpected argument\(s\) \['regions'\]; accepted: "
                                 r"\[.*'region_num'"),
])
def test_refused_arguments(kwargs, error, message):
    args = dict(in_channels=4, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        DRConv2d(**args)


def test_import_needs_only_torch():
    import subprocess
    import sys
    code = ('import sys, drconv; bad = [m for m in ("mmcv", "mmengine", "mmdet", "mmseg") '
            'if m in sys.modules]; assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True)


@pytest.mark.parametrize('size_in, size_out', [(10, 3), (7, 3), (3, 3), (2, 3), (56, 5), (8, 1)])
def test_adaptive_pool_matrix_equals_adaptive_avg_pool(size_in, size_out):
    from drconv.filter_generator import adaptive_pool_matrix
    x = torch.randn(2, 3, size_in, size_in + 1)
    pooled = (adaptive_pool_matrix(size_in, size_out, x) @ x
              @ adaptive_pool_matrix(size_in + 1, size_out, x).t())
    torch.testing.assert_close(pooled, F.adaptive_avg_pool2d(x, size_out))


def test_onnx_export_matches_pytorch(tmp_path):
    """Exported, DRConv becomes all-region convs selected by a one-hot argmax mask."""
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    torch.manual_seed(0)
    model = nn.Sequential(DRConv2d(4, 8, 3, padding=1, region_num=4), nn.ReLU(),
                          DRConv2d(8, 8, 3, stride=2, padding=1, region_num=3,
                                   filter_generator='bases')).eval()
    for p in model.parameters():
        nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 4, 10, 10)
    with torch.no_grad():
        want = model(x).numpy()
        torch.onnx.export(model, (x,), str(tmp_path / 'm.onnx'), dynamo=False, opset_version=17)
    ops = {n.op_type for n in onnx.load(str(tmp_path / 'm.onnx')).graph.node}
    assert {'Conv', 'ArgMax'} <= ops
    session = ort.InferenceSession(str(tmp_path / 'm.onnx'))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert abs(got - want).max() < 1e-4

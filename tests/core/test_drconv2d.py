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


@pytest.mark.parametrize('generator', ['paper', 'bases'])
@pytest.mark.parametrize('k', [3, 1])
def test_layer_converted_to_channels_last(generator, k):
    """``model.to(memory_format=torch.channels_last)`` (which converts every 4- and
    5-dimensional parameter) works on DRConv layers: the same output and gradients, in
    channels_last."""
    layer = trained(DRConv2d(5, 6, k, padding=k // 2, region_num=8, filter_generator=generator))
    x = torch.randn(2, 5, 7, 6)
    grad = torch.randn(2, 6, 7, 6)
    want = layer(x.requires_grad_(True))
    want_grads = torch.autograd.grad(want, [x, *layer.parameters()], grad)
    converted = layer.to(memory_format=torch.channels_last)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = converted(x_cl)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, want)
    got = torch.autograd.grad(out, [x_cl, *converted.parameters()],
                              grad.contiguous(memory_format=torch.channels_last))
    for g, w in zip(got, want_grads):
        torch.testing.assert_close(g, w)


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


def trained(layer: DRConv2d, seed: int = 0) -> DRConv2d:
    """``layer`` with its generator's parameters non-zero, as after training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.filter_generator.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return layer


@pytest.mark.parametrize('generator', ['paper', 'bases'])
def test_unbatched_input_as_conv(generator):
    layer = trained(DRConv2d(4, 6, 3, padding=1, region_num=3, filter_generator=generator))
    x = torch.randn(4, 9, 7)
    out = layer(x)
    assert out.shape == nn.Conv2d(4, 6, 3, padding=1)(x).shape == (6, 9, 7)
    torch.testing.assert_close(out, layer(x[None])[0])
    with pytest.raises(ValueError, match=r'got shape \(2, 2, 4, 9, 7\)'):
        layer(x.expand(2, 2, 4, 9, 7))


@pytest.mark.parametrize('generator', ['paper', 'bases'])
def test_empty_batch_as_conv(generator):
    """RoI heads see empty batches: the output is empty, as conv's, and every parameter gets
    a (zero) gradient."""
    layer = trained(DRConv2d(4, 6, 3, stride=2, padding=1, region_num=3,
                             filter_generator=generator))
    x = torch.randn(0, 4, 9, 7, requires_grad=True)
    out = layer(x)
    assert out.shape == nn.Conv2d(4, 6, 3, 2, 1)(x).shape == (0, 6, 5, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape
    for name, p in layer.named_parameters():
        assert p.grad is not None and not p.grad.any(), name


@pytest.mark.parametrize('generator', ['paper', 'bases'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_layer_equals_its_materialised_filters(generator, dtype):
    """On the CPU kernels (float32: the filters formed in the kernel, the bias added as the
    output is written) and on the PyTorch path (float64) alike."""
    layer = trained(DRConv2d(5, 7, 3, padding=1, region_num=6, filter_generator=generator,
                             num_bases=2 if generator == 'bases' else None)).to(dtype)
    x = torch.randn(2, 5, 8, 6, dtype=dtype, requires_grad=True)
    out = layer(x)
    grad_out = torch.randn(out.shape, dtype=dtype)
    out.backward(grad_out)
    got = [x.grad] + [p.grad for p in layer.parameters()]
    x.grad = None
    layer.zero_grad()
    filters = layer.region_filters(x)
    want = region_conv_dense(x, filters, layer.guide_conv(x), padding=1)
    want = want + layer.bias.view(1, -1, 1, 1)
    want.backward(grad_out)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    torch.testing.assert_close(out, want, **tol)
    for g, p in zip(got, [x] + list(layer.parameters())):
        torch.testing.assert_close(g, p.grad, **tol)


def test_paper_generator_version_1_checkpoint_loads():
    """Version 1 stored the projection as (m, C_out, C_in, m) and had no bias: it loads, the
    projection transposed and a zero bias, and the layer computes what it did."""
    layer = trained(DRConv2d(3, 4, 3, padding=1, region_num=2))
    with torch.no_grad():
        layer.filter_generator.bias.zero_()
    state = layer.state_dict()
    state['filter_generator.projection'] = state['filter_generator.projection'].permute(
        0, 2, 3, 1).contiguous()
    del state['filter_generator.bias']
    state._metadata['filter_generator'] = dict(version=1)
    fresh = DRConv2d(3, 4, 3, padding=1, region_num=2)
    fresh.load_state_dict(state)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fresh(x), layer(x))


def test_bases_generator_version_1_checkpoint_loads():
    """Version 1 stored the bases as (num_bases, C_out, kh, kw, C_in): they load, reshaped, and
    the layer computes what it did; a shape that fits neither version is refused by name."""
    layer = trained(DRConv2d(3, 4, (3, 1), padding=(1, 0), region_num=8,
                             filter_generator='bases', num_bases=2))
    state = layer.state_dict()
    state['filter_generator.bases'] = state['filter_generator.bases'].view(2, 4, 3, 1, 3)
    state._metadata['filter_generator'] = dict(version=1)
    fresh = DRConv2d(3, 4, (3, 1), padding=(1, 0), region_num=8, filter_generator='bases',
                     num_bases=2)
    fresh.load_state_dict(state)
    x = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(fresh(x), layer(x))
    state['filter_generator.bases'] = state['filter_generator.bases'].view(2, 4, 1, 3, 3)
    with pytest.raises(RuntimeError, match='filter_generator.bases'):
        fresh.load_state_dict(state)


class AllRegionsDRConv(nn.Module):
    """DRConv as the public all-regions implementations build it (written here for the
    comparison): pool to k x k -> 1x1 conv C_in -> m*m -> sigmoid -> grouped 1x1 conv with
    bias giving every region's full filter, every region's conv, then the argmax region's output
    with the softmax straight-through guide gradient. No static weight, no output bias."""

    def __init__(self, c_in, c_out, k, m):
        super().__init__()
        self.m, self.k = m, k
        self.kernels = nn.Sequential(nn.AdaptiveAvgPool2d(k), nn.Conv2d(c_in, m * m, 1),
                                     nn.Sigmoid(), nn.Conv2d(m * m, m * c_out * c_in, 1, groups=m))
        self.guide = nn.Conv2d(c_in, m, k, padding=k // 2)

    def forward(self, x):
        b, c_in = x.shape[:2]
        filters = self.kernels(x).view(-1, c_in, self.k, self.k)  # (B * m * C_out, C_in, k, k)
        out = F.conv2d(x.reshape(1, -1, *x.shape[2:]), filters, padding=self.k // 2, groups=b)
        out = out.view(b, self.m, -1, *out.shape[2:])
        guide = self.guide(x)
        mask = F.one_hot(guide.argmax(1), self.m).permute(0, 3, 1, 2).to(x.dtype)
        q = torch.softmax(guide, 1)
        return (out * (mask + q - q.detach()).unsqueeze(2)).sum(1)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('k', [3, 1])
def test_paper_generator_expresses_the_all_regions_module(dtype, k):
    """Its parameters copied in (static weight zero, no output bias), DRConv2d with the paper
    generator gives the same output and gradients (float64: the PyTorch path; float32: the
    CPU kernels where they run), at 1x1 too (its squeeze of one pixel a matrix product)."""
    torch.manual_seed(3)
    c_in, c_out, m = 4, 5, 3
    ref = AllRegionsDRConv(c_in, c_out, k, m).to(dtype)
    layer = DRConv2d(c_in, c_out, k, padding=k // 2, region_num=m, bias=False).to(dtype)
    gen = layer.filter_generator
    with torch.no_grad():
        layer.weight.zero_()
        gen.squeeze.load_state_dict(ref.kernels[1].state_dict())
        grouped = ref.kernels[3]
        gen.projection.copy_(grouped.weight.view(m, c_out, c_in, m).permute(0, 3, 1, 2))
        gen.bias.copy_(grouped.bias.view(m, c_out, c_in))
        layer.guide_conv.load_state_dict(ref.guide.state_dict())
    x = torch.randn(2, c_in, 7, 6, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(2, c_out, 7, 6, dtype=dtype)
    out = layer(x)
    out.backward(grad_out)
    got = [x.grad, gen.squeeze.weight.grad, gen.squeeze.bias.grad, gen.projection.grad,
           gen.bias.grad, layer.guide_conv.weight.grad]
    x.grad = None
    want = ref(x)
    want.backward(grad_out)
    wants = [x.grad, ref.kernels[1].weight.grad, ref.kernels[1].bias.grad,
             grouped.weight.grad.view(m, c_out, c_in, m).permute(0, 3, 1, 2),
             grouped.bias.grad.view(m, c_out, c_in), ref.guide.weight.grad]
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    torch.testing.assert_close(out, want, **tol)
    for g, w in zip(got, wants):
        torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize('k,stride,padding,dilation', [(3, 1, 1, 1), (1, 1, 0, 1),
                                                       (3, 2, 2, 2), (1, 2, 1, 1)])
def test_guide_conv_is_conv(k, stride, padding, dilation):
    """The guide conv's own CPU forward (one GEMM, shifted sums; the module uses it at stride
    1) and conv's backward."""
    from drconv.guide_conv import GuideConv, guide_conv2d
    from drconv.patches import Geometry
    guide = GuideConv(5, 4, k, stride, padding, dilation).double()
    conv = nn.Conv2d(5, 4, k, stride, padding, dilation).double()
    conv.load_state_dict(guide.state_dict())
    geo = Geometry((k, k), (stride,) * 2, (padding,) * 2, (dilation,) * 2)
    x = torch.randn(2, 5, 9, 11, dtype=torch.float64, requires_grad=True)
    grads = []
    for run, module in ((lambda: guide_conv2d(x, guide.weight, guide.bias, geo), guide),
                        (lambda: guide(x), guide), (lambda: conv(x), conv)):
        out = run()
        out.backward(torch.ones_like(out))
        grads.append([x.grad.clone(), module.weight.grad.clone(), module.bias.grad.clone(), out])
        x.grad = None
        module.zero_grad()
    for a, b, c in zip(*grads):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, c)


@pytest.mark.parametrize('shape', [(3, 5, 7, 9), (2, 4, 1, 1), (2, 3, 6, 6)])
@pytest.mark.parametrize('keepdim', [True, False])
def test_spatial_mean_is_the_means_bit_for_bit(shape, keepdim):
    """The generators' spatial mean gives the mean's very floats, forward and backward (also
    where an x gradient from elsewhere is added to it), and F.adaptive_avg_pool2d's at 1 x 1;
    its x gradient is expanded, not written out."""
    from drconv.filter_generator import SpatialMeanFunction, adaptive_avg_pool2d, spatial_mean
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen) * 100
    x[0, 0, 0, 0] = -0.0
    grad = torch.randn(*shape[:2], *((1, 1) if keepdim else ()), generator=gen)
    other = torch.randn(*shape, generator=gen)
    results = []
    for mean in (lambda t: t.mean(dim=(2, 3), keepdim=keepdim),
                 lambda t: spatial_mean(t, keepdim)):
        leaf = x.clone().requires_grad_()
        out = mean(leaf)
        alone, = torch.autograd.grad(out, leaf, grad)
        with_other, = torch.autograd.grad((mean(leaf) * grad).sum() + (leaf * other).sum(),
                                          leaf)
        results.append((out, alone, with_other))
    assert results[1][0].grad_fn.name().startswith(SpatialMeanFunction.__name__)
    for want, got in zip(*results):
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    if keepdim:
        pooled = adaptive_avg_pool2d(x, (1, 1))
        assert torch.equal(pooled.view(torch.int32),
                           F.adaptive_avg_pool2d(x, (1, 1)).view(torch.int32))
    leaf = x.clone().requires_grad_()
    grad_x, = torch.autograd.grad(spatial_mean(leaf, keepdim), leaf, grad)
    assert grad_x.stride()[2:] == (0, 0) or shape[2:] == (1, 1)

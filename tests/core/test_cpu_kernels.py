"""The CPU kernels (AVX-512 or AVX2) equal the reference; where they cannot run, the PyTorch
path does."""
import os

import pytest
import torch

from drconv import cpu_kernels, region_conv, region_conv_dense, region_gemm
from drconv._utils import conv_output_size
from drconv.patches import Geometry

needs_kernel = pytest.mark.skipif(
    not cpu_kernels.is_available(torch.zeros(1)),
    reason='the CPU kernels need AVX-512 or AVX2 and a C++ compiler (the PyTorch path runs '
           'instead)')


def make_inputs(b, c_in, c_out, size, k, stride, padding, dilation, m, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kh, kw = k if isinstance(k, tuple) else (k, k)
    h_out = conv_output_size(size[0], kh, stride, padding, dilation)
    w_out = conv_output_size(size[1], kw, stride, padding, dilation)
    x = torch.randn(b, c_in, *size, generator=gen)
    weight = torch.randn(b, m, c_out, c_in, kh, kw, generator=gen)
    guide = torch.randn(b, m, h_out, w_out, generator=gen)
    guide[0, m - 1] = -1e4  # an empty region in sample 0 (its guide gradient is about zero)
    return x, weight, guide


@pytest.fixture
def pytorch_forward_fails(monkeypatch):
    """Makes the PyTorch forward raise, so a passing op shows that the kernel ran."""
    def fail(*args):
        raise AssertionError('the PyTorch forward ran instead of the CPU kernel')
    monkeypatch.setattr(region_gemm, 'forward', fail)


CASES = [
    # b, c_in, c_out, (h, w), k, stride, padding, dilation, m
    (2, 3, 5, (7, 9), 3, 1, 1, 1, 4),       # C_in, C_out below one vector
    (1, 40, 20, (6, 5), 3, 2, 2, 2, 3),     # stride, dilation, padding wider than 1
    (2, 4, 130, (5, 6), 1, 1, 0, 1, 2),     # C_out past two panels of 64
    (3, 2, 3, (9, 8), 5, 3, 1, 1, 6),
    (2, 33, 70, (8, 8), 3, 1, 1, 1, 4),     # C_in, C_out with tails
    (2, 16, 64, (5, 7), (3, 1), 1, 0, 1, 2),  # kh != kw
    (2, 32, 16, (6, 6), 3, 1, 0, 1, 1),     # one region, no padding
    (2, 20, 40, (7, 6), 1, 2, 1, 1, 3),     # 1x1 with stride and padding: taps in the padding
    (2, 40, 64, (6, 6), 1, 1, 0, 1, 3),     # 1x1 with C_in past one block of 32
]


@needs_kernel
@pytest.mark.usefixtures('pytorch_forward_fails')
@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'sliced'])
def test_kernel_matches_reference(case, layout):
    x, weight, guide = make_inputs(*case)
    _, _, _, _, _, s, p, d, _ = case
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == 'sliced':  # neither contiguous nor channels-last
        x = torch.cat([x, x], dim=3)[..., ::2]
    out = region_conv(x, weight, guide, s, p, d)
    want = region_conv_dense(x.double(), weight.double(), guide.double(), s, p, d)
    torch.testing.assert_close(out, want.float(), rtol=1e-5, atol=1e-4)
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == 'channels_last')


@needs_kernel
@pytest.mark.usefixtures('pytorch_forward_fails')
def test_target_layer_shape():
    x, weight, guide = make_inputs(2, 128, 128, (12, 12), 3, 1, 1, 1, 8)
    want = region_conv_dense(x.double(), weight.double(), guide.double(), 1, 1, 1)
    torch.testing.assert_close(region_conv(x, weight, guide, 1, 1, 1), want.float(),
                               rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last', 'grad_channels_last'])
@pytest.mark.parametrize('guide_grad', ['exact', 'top2', None])  # None: the guide is fixed
def test_backward_kernels_match_reference(monkeypatch, case, layout, guide_grad):
    asked = []  # what the PyTorch backward was asked for: (x's gradient, the filters')
    backward = region_gemm.backward
    monkeypatch.setattr(region_gemm, 'backward',
                        lambda *a: asked.append(a[6:8]) or backward(*a))
    x, weight, guide = make_inputs(*case)
    b, c_in, c_out, _, k, s, p, d, _ = case
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    want = [t.double().requires_grad_() for t in (x, weight, guide)]
    out = region_conv_dense(*want, s, p, d)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    if layout == 'grad_channels_last':
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    out.backward(grad_out.double())
    got = [t.clone().requires_grad_(i < 2 or guide_grad is not None)
           for i, t in enumerate((x, weight, guide))]
    region_conv(*got, s, p, d, guide_grad=guide_grad or 'exact').backward(grad_out)
    checked = got if guide_grad == 'exact' else got[:2]  # top2 changes the guide's gradient
    for g, w in zip(checked, want):
        torch.testing.assert_close(g.grad, w.grad.float(), rtol=1e-4, atol=1e-4)
    assert got[0].grad.is_contiguous(memory_format=torch.channels_last) == (
        layout == 'channels_last')
    assert not asked  # top2 too: its two scores are taken from every region's


@needs_kernel
def test_kernels_repeat_exactly():  # each element summed by one thread in a fixed order
    x, weight, guide = make_inputs(2, 40, 70, (9, 8), 3, 1, 1, 1, 4)
    grad_out = torch.randn(2, 70, 9, 8, generator=torch.Generator().manual_seed(1))
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (x, weight, guide)]
        out = region_conv(*leaves, padding=1)
        out.backward(grad_out)
        runs.append([out] + [t.grad for t in leaves])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@needs_kernel
@pytest.mark.parametrize('generator,k', [('bases', 1), ('paper', 3)])
def test_small_calls_run_on_one_thread_with_the_same_floats(monkeypatch, generator, k):
    """A call below cpu_kernels.SERIAL_WORK multiply-adds runs each kernel on the calling thread
    alone; its output and every gradient are the same floats as on torch's threads."""
    from drconv import DRConv2d
    layer = DRConv2d(12, 20, k, padding=k // 2, region_num=4, filter_generator=generator)
    with torch.no_grad():
        for p in layer.filter_generator.parameters():
            p.normal_(0, 0.1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 6, 7, generator=gen)
    grad_out = torch.randn(2, 20, 6, 7, generator=gen)
    lib = cpu_kernels.library()
    forward_threads = []

    class Recorded:  # records the threads each forward call is given
        def __getattr__(self, name):
            if name == 'drconv_region_forward_f32':
                return lambda *a: forward_threads.append(a[-1]) or lib.drconv_region_forward_f32(*a)
            return getattr(lib, name)

    monkeypatch.setattr(cpu_kernels, 'library', Recorded)
    runs = []
    for serial_work in (0, 1 << 60):
        monkeypatch.setattr(cpu_kernels, 'SERIAL_WORK', serial_work)
        layer.zero_grad(set_to_none=True)
        leaf = x.clone().requires_grad_()
        out = layer(leaf)
        out.backward(grad_out)
        runs.append([out, leaf.grad] + [p.grad for p in layer.parameters()])
    assert forward_threads == [torch.get_num_threads(), 1]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@needs_kernel
@pytest.mark.parametrize('c_in,c_out', [(6, 10), (10, 6)])  # with the scores; its own kernel
def test_pointwise_input_gradient_is_written_whole(c_in, c_out):
    """A pointwise layer's x gradient is written by the kernels, not added to zeros (one sum
    per element): a scratch buffer full of NaN beforehand changes no gradient."""
    from drconv.scratch import scratch
    x, weight, guide = make_inputs(3, c_in, c_out, (5, 7), 1, 1, 0, 1, 4)
    grad_out = torch.randn(3, c_out, 5, 7, generator=torch.Generator().manual_seed(1))
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (x, weight, guide)]
        runs.append(torch.autograd.grad(region_conv(*leaves), leaves, grad_out))
        scratch('result_rows', 4 * x.numel(), x).fill_(float('nan'))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert not runs[1][0].isnan().any()


@needs_kernel
@pytest.mark.parametrize('case', [CASES[0], CASES[1], CASES[4]])  # K > C_out; C_out tails
def test_own_region_scores_from_the_forwards_responses_bit_for_bit(case):
    """Where the scores are responses times output gradient, each pixel's own region's score
    is made from the responses the forward kept: the very floats of computing it again."""
    x, weight, guide = make_inputs(*case)
    b, c_in, c_out, _, k, s, p, d, m = case
    geo = Geometry((k, k), (s, s), (p, p), (d, d))
    assert cpu_kernels.scores_from_responses(geo, c_in, c_out)
    region, source = cpu_kernels.region_of(guide), cpu_kernels.explicit_source(weight)
    responses = x.new_empty(region.numel(), c_out)
    out = cpu_kernels.forward(x, source, m, c_out, region, tuple(guide.shape[2:]), geo,
                              responses=responses)
    assert torch.equal(responses.view(b, *out.shape[2:], c_out).permute(0, 3, 1, 2), out)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))

    def scores(kept):
        return cpu_kernels.backward(grad_out, x, source, m, region, geo, False, False, True,
                                    responses=kept).scores

    recomputed = scores(None)
    assert torch.equal(scores(responses), recomputed)
    changed = scores(torch.zeros_like(responses)) != recomputed  # read there, and only there
    own = torch.nn.functional.one_hot(region, m).bool()
    assert changed[own].any() and not changed[~own].any()


@needs_kernel
def test_guide_gradient_alone(monkeypatch):
    monkeypatch.setattr(region_gemm, 'backward', None)  # the kernels' scores only
    x, weight, guide = make_inputs(2, 24, 20, (7, 6), 3, 1, 1, 1, 4)
    got, want = guide.clone().requires_grad_(), guide.double().requires_grad_()
    grad_out = torch.randn(2, 20, 7, 6, generator=torch.Generator().manual_seed(1))
    region_conv(x, weight, got, padding=1).backward(grad_out)
    region_conv_dense(x.double(), weight.double(), want, padding=1).backward(grad_out.double())
    torch.testing.assert_close(got.grad, want.grad.float(), rtol=1e-4, atol=1e-4)


@needs_kernel
def test_switch_and_other_dtypes_run_the_pytorch_path(monkeypatch):
    calls = []
    forward = region_gemm.forward
    monkeypatch.setattr(region_gemm, 'forward', lambda *a: calls.append(1) or forward(*a))
    x, weight, guide = make_inputs(2, 8, 6, (6, 6), 3, 1, 1, 1, 3)
    kernel_out = region_conv(x, weight, guide, padding=1)
    assert not calls
    region_conv(x.double(), weight.double(), guide.double(), padding=1)
    assert len(calls) == 1
    monkeypatch.setenv(cpu_kernels.SWITCH, '0')
    torch.testing.assert_close(region_conv(x, weight, guide, padding=1), kernel_out,
                               rtol=1e-5, atol=1e-5)
    assert len(calls) == 2


@needs_kernel
# x's rows the longer (items a cache line wide, the last one part of it: 40 and 100 columns) or
# not, tails of rows and columns
@pytest.mark.parametrize('shape', [(2, 16, 32), (2, 16, 40), (3, 9, 100), (2, 24, 24),
                                   (3, 37, 21), (1, 5, 3)])
def test_transpose(shape):
    x = torch.randn(*shape)
    out = torch.empty(shape[0], shape[2], shape[1])
    cpu_kernels.library().drconv_transpose_f32(x.data_ptr(), out.data_ptr(), *shape, 2)
    assert torch.equal(out, x.transpose(1, 2))


@needs_kernel
@pytest.mark.parametrize('shape,size', [((2, 5, 32, 32), (3, 3)), ((1, 3, 9, 17), (2, 5)),
                                        ((2, 2, 7, 3), (3, 1)), ((1, 4, 40, 40), (20, 17))])
def test_adaptive_avg_pool_is_torchs_bit_for_bit(shape, size):
    """The paper generator's pooling (the kernel's, with torch's backward) gives torch's very
    floats, forward and backward; also with -0, inf and NaN inputs."""
    from drconv.filter_generator import AdaptiveAvgPoolFunction, adaptive_avg_pool2d
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen) * 100
    x[0, 0, 0, 0] = -0.0
    if shape[1] > 2:
        x[0, 1, 1, 1], x[0, 2, 2, 0] = float('inf'), float('nan')
    grad = torch.randn(*shape[:2], *size, generator=gen)
    results = []
    for pool in (torch.nn.functional.adaptive_avg_pool2d, adaptive_avg_pool2d):
        leaf = x.clone().requires_grad_()
        out = pool(leaf, size)
        out.backward(grad)
        results.append((out, leaf.grad))
    assert results[1][0].grad_fn.name().startswith(AdaptiveAvgPoolFunction.__name__)
    for want, got in zip(*results):
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@needs_kernel
@pytest.mark.parametrize('k,stride,padding,dilation', [
    ((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 5), (1, 1), (1, 2), (1, 1)),
    ((3, 3), (2, 2), (2, 2), (2, 2)), ((1, 1), (1, 1), (1, 1), (1, 1)),
    ((3, 3), (1, 2), (0, 4), (1, 1)), ((5, 5), (3, 1), (2, 2), (1, 3))])
@pytest.mark.parametrize('bias', [True, False])
def test_guide_shifted_sum_is_the_pytorch_paths_bit_for_bit(monkeypatch, k, stride, padding,
                                                            dilation, bias):
    """The kernel's shifted sum adds the very floats of the PyTorch path, in its order: the
    guide (and so the regions) are the same to the bit; also with -0, inf and NaN taps."""
    from drconv.guide_conv import shifted_sum_conv2d
    from drconv.patches import Geometry
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 9, 11, generator=gen)
    x[0, :, 0, 0] = -0.0
    x[1, 0, 2, 3], x[1, 1, 4, 5] = float('inf'), float('nan')
    weight = torch.randn(4, 7, *k, generator=gen)
    b = torch.randn(4, generator=gen) if bias else None
    geo = Geometry(k, stride, padding, dilation)
    ran = []
    monkeypatch.setattr(cpu_kernels, 'shifted_sum',
                        lambda *a, real=cpu_kernels.shifted_sum: ran.append(1) or real(*a))
    got = shifted_sum_conv2d(x, weight, geo, b)
    assert ran, 'the kernel did not run'
    monkeypatch.setattr(cpu_kernels, 'is_available', lambda t: False)
    want = shifted_sum_conv2d(x, weight, geo, b)
    assert got.shape == want.shape
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    torch.testing.assert_close(
        got.nan_to_num(), torch.nn.functional.conv2d(x, weight, b, stride, padding, dilation)
        .nan_to_num(), rtol=1e-4, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize('b,c_in,m,size', [(3, 5, 3, (7, 9)), (2, 16, 8, (8, 8)),
                                           (2, 7, 19, (5, 6)), (1, 3, 1, (1, 1)),
                                           (0, 4, 3, (4, 4))])
@pytest.mark.parametrize('bias', [True, False])
def test_guide_backward_at_1x1_is_convs(monkeypatch, b, c_in, m, size, bias):
    """At 1x1 (stride 1, no padding) the guide conv's backward is the kernel's: x's, the
    weight's and the bias's gradients against conv's in float64 (more regions than one pass
    keeps in registers, one region, a tail of pixels, an empty batch), the same on 1 and 3
    threads; with a channels-last x, conv's backward."""
    from drconv.guide_conv import guide_conv2d
    from drconv.patches import Geometry
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, c_in, *size, generator=gen, requires_grad=True)
    weight = torch.randn(m, c_in, 1, 1, generator=gen, requires_grad=True)
    bias_ = torch.randn(m, generator=gen, requires_grad=True) if bias else None
    grad = torch.randn(b, m, *size, generator=gen)
    leaves = [x, weight] + ([bias_] if bias else [])
    ran = []
    monkeypatch.setattr(cpu_kernels, 'pointwise_guide_backward',
                        lambda *a, real=cpu_kernels.pointwise_guide_backward:
                        ran.append(1) or real(*a))
    geo = Geometry((1, 1), (1, 1), (0, 0), (1, 1))
    got, threads = [], torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            got.append(torch.autograd.grad(guide_conv2d(x, weight, bias_, geo), leaves, grad))
    finally:
        torch.set_num_threads(threads)
    assert len(ran) == 2, 'the kernel did not run'
    for one, three in zip(*got):
        assert torch.equal(one, three)
    wide = [t.detach().double().requires_grad_() for t in leaves]
    want = torch.autograd.grad(torch.nn.functional.conv2d(
        wide[0], wide[1], wide[2] if bias else None), wide, grad.double())
    for g, w in zip(got[0], want):
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5)
    channels_last = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    torch.autograd.grad(guide_conv2d(channels_last, weight, bias_, geo), channels_last, grad)
    assert len(ran) == 2 + channels_last.is_contiguous()  # at 1 x 1 pixels it is both


@needs_kernel
def test_guide_shifted_sum_keeps_autograd():
    """Called where autograd records (outside GuideConvFunction), the shifted sum still gives
    conv's gradients (the PyTorch path: the kernel's sum records none)."""
    from drconv.guide_conv import shifted_sum_conv2d
    from drconv.patches import Geometry
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 7, 8, generator=gen, requires_grad=True)
    weight = torch.randn(4, 5, 3, 3, generator=gen, requires_grad=True)
    bias = torch.randn(4, generator=gen, requires_grad=True)
    grads = []
    for run in (lambda: shifted_sum_conv2d(x, weight, Geometry((3, 3), (1, 1), (1, 1), (1, 1)),
                                           bias),
                lambda: torch.nn.functional.conv2d(x, weight, bias, 1, 1)):
        run().square().sum().backward()
        grads.append([t.grad.clone() for t in (x, weight, bias)])
        for t in (x, weight, bias):
            t.grad = None
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_sort_by_group_is_a_stable_sort():
    region = torch.randint(0, 5, (3, 41), generator=torch.Generator().manual_seed(0))
    region[1] = 2  # one sample in a single group
    order = torch.empty(region.numel(), dtype=torch.int64)
    starts = torch.empty(3 * 5 + 1, dtype=torch.int64)
    assert cpu_kernels.library().drconv_sort_by_group(region.data_ptr(), 3, 41, 5,
                                                      order.data_ptr(), starts.data_ptr()) == 0
    group = (region + torch.arange(3)[:, None] * 5).view(-1)
    assert torch.equal(order, torch.argsort(group, stable=True))
    counts = torch.bincount(group, minlength=15)
    assert torch.equal(starts, torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]))


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty kernel cache, and the library loaded anew (and again after the test)."""
    monkeypatch.setenv('DRCONV_CACHE_DIR', str(tmp_path))
    cpu_kernels.library.cache_clear()
    yield tmp_path
    cpu_kernels.library.cache_clear()


@pytest.mark.parametrize('compiler', ['/nonexistent/c++', 'false'])
def test_failed_build_warns_and_falls_back(monkeypatch, fresh_build, compiler):
    monkeypatch.setenv('CXX', compiler)
    with pytest.warns(UserWarning, match='PyTorch path'):
        assert cpu_kernels.library() is None
    x, weight, guide = make_inputs(2, 8, 6, (6, 6), 3, 1, 1, 1, 3)
    assert not cpu_kernels.is_available(x)
    want = region_conv_dense(x, weight, guide, padding=1)
    torch.testing.assert_close(region_conv(x, weight, guide, padding=1), want,
                               rtol=1e-5, atol=1e-5)
    assert os.listdir(fresh_build) == []  # no partial library left behind


@needs_kernel
def test_build_is_cached_by_source_and_command(fresh_build):
    path = cpu_kernels.build(os.environ.get('CXX', 'c++'), str(fresh_build))
    built = os.stat(path).st_mtime_ns
    assert cpu_kernels.build(os.environ.get('CXX', 'c++'), str(fresh_build)) == path
    assert os.stat(path).st_mtime_ns == built
    assert os.listdir(fresh_build) == [os.path.basename(path)]

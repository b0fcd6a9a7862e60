"""region_conv_factored: the factored filters' op equals region_conv of the materialised filters,
forward and every gradient, on the CPU kernels (no per-sample filters formed) and elsewhere."""
import pytest
import torch

from drconv import Factors, cpu_kernels, region_conv, region_conv_dense, region_conv_factored
from drconv._utils import conv_output_size
from drconv.region_conv_factored import scores_through_stand_ins

needs_kernel = pytest.mark.skipif(
    not cpu_kernels.is_available(torch.zeros(1)),
    reason='the CPU kernels need AVX-512 or AVX2 and a C++ compiler')


def make_factors(kind, b, c_in, c_out, k, m, n, seed=0):
    """Factors as the 'bases' generator gives them (terms shared by the regions, one
    coefficient per term) or as the 'paper' one does (terms per region, coefficients per tap,
    a region bias)."""
    gen = torch.Generator().manual_seed(seed)
    kh, kw = k if isinstance(k, tuple) else (k, k)
    weight = torch.randn(c_out, c_in, kh, kw, generator=gen)
    if kind == 'bases':
        return Factors(weight, None, torch.randn(1, n, c_out, kh, kw, c_in, generator=gen),
                       torch.rand(b, m, n, 1, generator=gen))
    return Factors(weight, torch.randn(m, c_out, c_in, generator=gen),
                   torch.randn(m, n, c_out, c_in, generator=gen),
                   torch.rand(b, m, n, kh * kw, generator=gen))


CASES = [
    # kind, b, c_in, c_out, (h, w), k, stride, padding, dilation, m, n
    ('bases', 2, 5, 7, (7, 9), 3, 1, 1, 1, 6, 2),    # stand-in scores: n + 1 < m
    ('bases', 2, 9, 20, (6, 5), 1, 1, 0, 1, 4, 3),   # no stand-ins: n + 1 == m; 1x1
    ('bases', 1, 17, 33, (8, 8), 3, 2, 2, 2, 5, 1),  # stride, dilation, tails
    ('paper', 2, 5, 7, (7, 9), 3, 1, 1, 1, 4, 4),
    ('paper', 2, 20, 9, (6, 6), 1, 2, 1, 1, 3, 3),   # 1x1 with stride and padding
    ('paper', 2, 6, 18, (9, 8), (3, 1), 1, 0, 1, 2, 2),  # kh != kw
    # the forward forms 4 samples' filters at once: 5 samples (a chunk of 4, then 1), sample 0
    # without one region; more terms than the kernels keep in registers (formed per sample)
    ('paper', 5, 10, 20, (6, 7), 3, 1, 1, 1, 3, 3),
    ('bases', 5, 8, 20, (5, 6), 1, 1, 0, 1, 4, 9),
    ('paper', 6, 12, 17, (5, 5), 3, 1, 1, 1, 10, 10),
    # the scores form a region's filters once where they fit in about 1 MB: here in two blocks
    # of panels (responses), then in blocks of input channels (patch gradients, 1x1), then too
    # large to form once
    ('paper', 2, 512, 80, (5, 5), 3, 1, 1, 1, 3, 2),
    ('paper', 2, 40, 64, (5, 5), 1, 1, 0, 1, 3, 2),
    ('paper', 2, 512, 600, (4, 4), 1, 1, 0, 1, 3, 2),
    # stand-in scores where K <= C_out (made from responses all the same)
    ('bases', 2, 6, 20, (5, 6), 1, 1, 0, 1, 6, 2),
]


def leaves(f, x, guide, bias):
    return [t.detach().clone().requires_grad_() if t is not None else None
            for t in (x, guide, *f, bias)]


def run_factored(kind, ts, s, p, d, guide_grad='exact'):
    x, guide, weight, region_bias, terms, coef, bias = ts
    out = region_conv_factored(x, Factors(weight, region_bias, terms, coef), guide, s, p, d,
                               bias=bias, guide_grad=guide_grad)
    return out


def run_reference(ts, s, p, d):
    x, guide, weight, region_bias, terms, coef, bias = ts
    filters = _materialised(Factors(weight, region_bias, terms, coef))
    return region_conv_dense(x, filters, guide, s, p, d) + bias.view(1, -1, 1, 1)


def inputs(case, seed=0):
    kind, b, c_in, c_out, size, k, s, p, d, m, n = case
    kh, kw = k if isinstance(k, tuple) else (k, k)
    f = make_factors(kind, b, c_in, c_out, k, m, n, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(b, c_in, *size, generator=gen)
    out_size = (conv_output_size(size[0], kh, s, p, d), conv_output_size(size[1], kw, s, p, d))
    guide = torch.randn(b, m, *out_size, generator=gen)
    guide[0, m - 1] = -1e4  # an empty region in sample 0
    bias = torch.randn(c_out, generator=gen)
    grad_out = torch.randn(b, c_out, *out_size, generator=gen)
    return f, x, guide, bias, grad_out


@pytest.fixture
def never_materialised(monkeypatch):
    """Makes materialising the filters raise: a passing op formed no per-sample filters."""
    def fail(self):
        raise AssertionError('the per-sample filters were materialised')
    monkeypatch.setattr(Factors, 'materialize', fail)


@needs_kernel
@pytest.mark.usefixtures('never_materialised')
@pytest.mark.parametrize('case', CASES)
def test_kernel_path_matches_reference_in_float64(case):
    check_against_reference(case)


def check_against_reference(case):
    """The factored op's output and every gradient against the dense reference in float64."""
    kind, _, _, _, _, k, s, p, d, m, n = case
    f, x, guide, bias, grad_out = inputs(case)
    want = leaves([t.double() if t is not None else None for t in f], x.double(),
                  guide.double(), bias.double())
    reference = run_reference(want, s, p, d)
    reference.backward(grad_out.double())
    got = leaves(f, x, guide, bias)
    out = run_factored(kind, got, s, p, d)
    out.backward(grad_out)
    torch.testing.assert_close(out, reference.float(), rtol=1e-4, atol=1e-4)
    for g, w in zip(got, want):
        if w is not None:  # errors relative to the gradient's size: the sums are long
            scale = w.grad.abs().max().item()
            torch.testing.assert_close(g.grad / scale, (w.grad / scale).float(), rtol=1e-4,
                                       atol=1e-5)


@needs_kernel
def test_bases_scores_go_through_the_stand_ins(monkeypatch, never_materialised):
    case = CASES[0]
    f = inputs(case)[0]
    assert scores_through_stand_ins(f, case[9])  # 2 bases + 1 < 6 regions
    used = []
    explicit = cpu_kernels.explicit_source
    monkeypatch.setattr(cpu_kernels, 'explicit_source',
                        lambda t, shared=False: used.append(tuple(t.shape)) or explicit(t, shared))
    f, x, guide, bias, grad_out = inputs(case)
    run_factored('bases', leaves(f, x, guide, bias), 1, 1, 1).backward(grad_out)
    assert used == [(3, 7, 5, 3, 3)]  # the weight and the 2 bases, shared by the samples


@needs_kernel
def test_top2_and_fixed_guide(never_materialised):
    """'top2' on the factored path equals region_conv's top2 of the materialised filters."""
    case = CASES[3]
    kind, _, _, _, _, _, s, p, d, _, _ = case
    f, x, guide, bias, grad_out = inputs(case)
    got = leaves(f, x, guide, bias)
    run_factored(kind, got, s, p, d, guide_grad='top2').backward(grad_out)
    want_guide = guide.double().requires_grad_()
    filters = Factors(*[t.double() if t is not None else None for t in f])
    ref = region_conv(x.double(), _materialised(filters), want_guide, s, p, d,
                      guide_grad='top2')
    ref.backward(grad_out.double())
    torch.testing.assert_close(got[1].grad, want_guide.grad.float(), rtol=1e-4, atol=1e-4)
    fixed = leaves(f, x, guide, bias)
    fixed[1].requires_grad_(False)
    run_factored(kind, fixed, s, p, d).backward(grad_out)
    torch.testing.assert_close(fixed[0].grad, got[0].grad)


def _materialised(f):
    """The filters by the formula of :class:`Factors`, written out here: the reference
    (``Factors.materialize`` is patched to fail where the kernels must not call it)."""
    c_out, c_in, kh, kw = f.weight.shape
    b, m, n, coef_taps = f.coef.shape
    terms = f.terms.reshape(f.terms.shape[0], n, c_out, -1, c_in)
    delta = (f.coef.view(b, m, n, 1, coef_taps, 1) * terms.unsqueeze(0)).sum(2)
    if f.bias is not None:
        delta = delta + f.bias.view(1, m, c_out, 1, c_in)
    delta = delta.expand(b, m, c_out, kh * kw, c_in).reshape(b, m, c_out, kh, kw, c_in)
    return f.weight[None, None] + delta.permute(0, 1, 2, 5, 3, 4)


@pytest.mark.parametrize('case', [CASES[0], CASES[3]])
def test_pytorch_path_matches_reference(case, monkeypatch):
    """Without the kernels (switched off, or float64) the filters are materialised and
    region_conv runs: the same result and gradients."""
    monkeypatch.setenv(cpu_kernels.SWITCH, '0')
    kind, _, _, _, _, _, s, p, d, _, _ = case
    f, x, guide, bias, grad_out = inputs(case)
    f = Factors(*[t.double() if t is not None else None for t in f])
    got = leaves(f, x.double(), guide.double(), bias.double())
    want = leaves(f, x.double(), guide.double(), bias.double())
    run_factored(kind, got, s, p, d).backward(grad_out.double())
    run_reference(want, s, p, d).backward(grad_out.double())
    for g, w in zip(got, want):
        if w is not None:
            torch.testing.assert_close(g.grad, w.grad)


@needs_kernel
def test_repeats_exactly():
    """Every factor's gradient is summed by one thread in a fixed order."""
    case = CASES[3]
    f, x, guide, bias, grad_out = inputs(case)
    runs = []
    for _ in range(2):
        ts = leaves(f, x, guide, bias)
        out = run_factored('paper', ts, 1, 1, 1)
        out.backward(grad_out)
        runs.append([out] + [t.grad for t in ts if t is not None])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@needs_kernel
@pytest.mark.parametrize('case', [
    ('paper', 10, 12, 20, (3, 4), 1, 1, 0, 1, 3, 3),     # a wave of 10 samples: a region's
    # groups 8, then 2 (1 where sample 0 has none)
    ('paper', 5, 2048, 24, (3, 3), 1, 1, 0, 1, 8, 8),    # waves of 2, 2 and 1 samples
    ('bases', 10, 12, 20, (3, 4), 1, 1, 0, 1, 3, 2),     # shared terms: 8, 8, 8, then 5 groups
])
@pytest.mark.usefixtures('never_materialised')
def test_1x1_filter_gradient_in_waves(case):
    """At 1x1 the terms (each region's own, or shared) get their gradient from several groups at
    once (the kernel's waves, sized here for 2 threads)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        check_against_reference(case)
    finally:
        torch.set_num_threads(threads)


@needs_kernel
@pytest.mark.parametrize('case', [CASES[0], CASES[1], CASES[3]])
def test_backward_reads_its_own_forwards_input(case):
    """The forward keeps x's rows and the pixels' order for the backward (where the guide's or
    the factors' gradient reads them): another forward in between, of another x of the same
    shape, changes no gradient; with x alone needing its gradient nothing is kept."""
    kind, _, _, _, _, _, s, p, d, _, _ = case
    f, x, guide, bias, grad_out = inputs(case)
    alone = leaves(f, x, guide, bias)
    run_factored(kind, alone, s, p, d).backward(grad_out)
    first = leaves(f, x, guide, bias)
    out = run_factored(kind, first, s, p, d)
    _, other, other_guide, _, _ = inputs(case, seed=5)
    run_factored(kind, leaves(f, other, other_guide, bias), s, p, d)  # its backward never runs
    out.backward(grad_out)
    for a, b in zip(alone, first):
        if a is not None:
            assert torch.equal(a.grad, b.grad)
    x_only = x.clone().requires_grad_()
    region_conv_factored(x_only, f, guide, s, p, d, bias=bias).backward(grad_out)
    assert torch.equal(x_only.grad, alone[0].grad)


@needs_kernel
@pytest.mark.parametrize('case', [CASES[0], CASES[3], CASES[9], CASES[10]])
def test_what_the_kernels_sum_into_they_zero_first(case, monkeypatch):
    """The scores and the factors' gradients are zeroed by the kernels that sum into them
    (stand-ins; a region bias; two blocks of panels; patch gradients): memory full of NaN where
    they are allocated changes no result."""
    kind, _, _, _, _, _, s, p, d, _, _ = case
    f, x, guide, bias, grad_out = inputs(case)

    def run():
        ts = leaves(f, x, guide, bias)
        out = run_factored(kind, ts, s, p, d)
        out.backward(grad_out)
        return [out] + [t.grad for t in ts if t is not None]

    clean = run()
    new_empty, empty_like = torch.Tensor.new_empty, torch.empty_like

    def nan(t):
        return t.fill_(float('nan')) if t.is_floating_point() else t

    monkeypatch.setattr(torch.Tensor, 'new_empty', lambda *a, **k: nan(new_empty(*a, **k)))
    monkeypatch.setattr(torch, 'empty_like', lambda *a, **k: nan(empty_like(*a, **k)))
    dirty = run()
    assert all(torch.equal(a, b) for a, b in zip(clean, dirty))


@pytest.mark.parametrize('kernels', ['1', '0'])
@pytest.mark.parametrize('kind', ['bases', 'paper'])
def test_empty_batch_as_conv(kind, kernels, monkeypatch):
    """An empty batch gives conv's empty output, and x, the guide and every factor a (zero)
    gradient, on the CPU kernels and on the PyTorch path alike; so does region_conv."""
    monkeypatch.setenv(cpu_kernels.SWITCH, kernels)
    f, x, guide, bias, _ = inputs((kind, 1, 4, 6, (5, 7), 3, 2, 1, 1, 3, 2))
    ts = leaves(Factors(f.weight, f.bias, f.terms, f.coef[:0]), x[:0], guide[:0], bias)
    out = run_factored(kind, ts, 2, 1, 1)
    assert out.shape == torch.nn.functional.conv2d(x[:0], f.weight, None, 2, 1).shape
    out.sum().backward()
    for t in ts:
        if t is not None:
            assert t.grad is not None and t.grad.shape == t.shape and not t.grad.any()
    weight = torch.randn(0, 3, 6, 4, 3, 3, requires_grad=True)
    x_, guide_ = x[:0].clone().requires_grad_(), guide[:0].clone().requires_grad_()
    out = region_conv(x_, weight, guide_, 2, 1)
    assert out.shape == (0, 6, 3, 4)
    out.sum().backward()
    assert all(t.grad is not None and not t.grad.any() for t in (x_, weight, guide_))


@needs_kernel
def test_forward_is_the_same_on_any_number_of_threads():
    """Each output element is made by one work item, whatever the items: with more threads than
    panels and regions keep busy, each item takes a run of the samples (here 3 regions, 1 or 2
    panels and 2 chunks of samples: a chunk per item on 7 threads)."""
    case = CASES[6]
    assert case[1] == 5 and case[0] == 'paper'
    f, x, guide, bias, _ = inputs(case)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 7):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(region_conv_factored(x, f, guide, 1, 1, 1, bias=bias))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outs[0].view(torch.int32), o.view(torch.int32)) for o in outs)


@needs_kernel
@pytest.mark.parametrize('layout', ['contiguous', 'k_ordered', 'sliced', 'k_ordered_sliced',
                                    'regions_outer'])
def test_region_conv_reads_any_weight_layout(layout):
    """A plain contiguous (B, m, C_out, C_in, kh, kw) weight is read where it lies (no copy),
    as are DRConv2d's (kh, kw, C_in) order and sliced channels (in either order); a weight whose
    sample and region dims cannot be read as one is copied once."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 7, 7, generator=gen)
    weight = torch.randn(2, 3, 5, 6, 3, 3, generator=gen)
    guide = torch.randn(2, 3, 7, 7, generator=gen)
    want = region_conv_dense(x.double(), weight.double(), guide.double(), padding=1)
    if layout == 'k_ordered':
        weight = weight.permute(0, 1, 2, 4, 5, 3).contiguous().permute(0, 1, 2, 5, 3, 4)
    elif layout == 'sliced':
        wide = torch.zeros(2, 3, 10, 6, 3, 3)
        wide[:, :, ::2] = weight
        weight = wide[:, :, ::2]
    elif layout == 'k_ordered_sliced':
        wide = torch.zeros(2, 3, 10, 3, 3, 6)
        wide[:, :, ::2] = weight.permute(0, 1, 2, 4, 5, 3)
        weight = wide[:, :, ::2].permute(0, 1, 2, 5, 3, 4)
    elif layout == 'regions_outer':
        weight = weight.transpose(0, 1).contiguous().transpose(0, 1)
    source = cpu_kernels.explicit_source(weight)
    assert (source.tensors[0].data_ptr() == weight.data_ptr()) == (layout != 'regions_outer')
    torch.testing.assert_close(region_conv(x, weight, guide, padding=1), want.float(),
                               rtol=1e-5, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize('m, size', [(5, (4, 6)), (5, (5, 7)), (1, (3, 3))])  # a vector's tail
def test_region_of_is_torch_max(m, size):
    guide = torch.randn(3, m, *size)
    guide[0, m // 2] = guide[0, -1]  # ties: the first
    guide[1, m // 2, 0, 0] = float('nan')  # NaN: the largest, as torch.max
    guide[1, :, 0, 1] = float('nan')  # NaNs: the first
    guide[1, -1, 0, 2] = float('nan')  # NaN after a larger value
    guide[1, 0, 0, 2] = 1e30
    guide[2, :, -1, -1] = float('-inf')
    want = guide.max(dim=1).indices.view(3, -1)
    assert torch.equal(cpu_kernels.region_of(guide), want)


def test_functional_refuses_bad_inputs():
    f, x, guide, bias, _ = inputs(CASES[0])
    with pytest.raises(ValueError, match=r'factors do not fit guide \(2, 5, 7, 9\).*coef '
                       r'\(2, 6, 2, 1\)'):
        region_conv_factored(x, f, guide[:, :5], padding=1)
    with pytest.raises(ValueError, match=r'weight has 5 input channels'):
        region_conv_factored(x[:, :4], f, guide, padding=1)
    with pytest.raises(ValueError, match='guide_grad must be one of'):
        region_conv_factored(x, f, guide, padding=1, guide_grad='all')

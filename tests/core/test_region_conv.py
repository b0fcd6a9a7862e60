"""region_conv against the all-regions reference, gradcheck, and its refusals.

These test the pure-PyTorch path, so the fused CPU forward is switched off here
(tests/core/test_cpu_kernels.py tests it).
"""

import pytest
import torch
import torch.nn.functional as F

from drconv import cpu_kernels, region_conv, region_conv_dense
from drconv._utils import conv_output_size


@pytest.fixture(autouse=True)
def pytorch_forward(monkeypatch):
    monkeypatch.setenv(cpu_kernels.SWITCH, '0')


def make_inputs(b, c_in, c_out, size, k, stride, padding, dilation, m, seed=0,
                dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    h_out = conv_output_size(h, k, stride, padding, dilation)
    w_out = conv_output_size(w, k, stride, padding, dilation)
    x = torch.randn(b, c_in, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(b, m, c_out, c_in, k, k, generator=gen, dtype=dtype)
    guide = torch.randn(b, m, h_out, w_out, generator=gen, dtype=dtype)
    return x, weight, guide


def grads(fn, inputs, grad_out, **kw):
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = fn(*leaves, **kw)
    return (out,) + torch.autograd.grad(out, leaves, grad_out)


CASES = [
    # b, c_in, c_out, (h, w), k, stride, padding, dilation, m
    (1, 3, 4, (7, 7), 1, 1, 0, 1, 1),
    (2, 3, 5, (9, 6), 3, 1, 1, 1, 4),
    (3, 4, 2, (11, 8), 3, 2, 2, 2, 5),
    (4, 2, 3, (10, 13), 5, 3, 2, 1, 3),
    (2, 5, 4, (12, 9), 3, 1, 3, 3, 16),
    (1, 2, 2, (6, 10), 1, 3, 0, 1, 8),
    (2, 3, 3, (9, 11), 5, 1, 0, 2, 2),
    (4, 1, 6, (5, 7), 3, 2, 1, 1, 7),
]


@pytest.mark.parametrize('case', CASES, ids=[str(c) for c in CASES])
def test_matches_all_regions_reference(case):
    b, c_in, c_out, size, k, s, p, d, m = case
    x, weight, guide = make_inputs(b, c_in, c_out, size, k, s, p, d, m)
    kw = dict(stride=s, padding=p, dilation=d)
    grad_out = torch.randn(region_conv_dense(x, weight, guide, **kw).shape, dtype=torch.float64)
    got = grads(region_conv, (x, weight, guide), grad_out, **kw)
    want = grads(region_conv_dense, (x, weight, guide), grad_out, **kw)
    for name, a, e in zip(('output', 'd/dx', 'd/dweight', 'd/dguide'), got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=name)


def test_guide_gradient_formula():
    """dL/dG_i = q_i (s_i - sum_j q_j s_j), s_j = <dL/dy, W_j * x>, computed by hand."""
    x, weight, guide = make_inputs(2, 3, 4, (6, 7), 3, 1, 1, 1, 5, seed=3)
    grad_out = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    _, _, _, grad_guide = grads(region_conv, (x, weight, guide), grad_out, padding=1)
    s = torch.stack([(F.conv2d(x[i:i + 1], weight[i, j], padding=1)[0] * grad_out[i]).sum(0)
                     for i in range(2) for j in range(5)]).view(2, 5, 6, 7)
    q = torch.softmax(guide, 1)
    torch.testing.assert_close(grad_guide, q * (s - (q * s).sum(1, keepdim=True)))


def test_gradcheck_x_and_weight():
    x, weight, guide = make_inputs(2, 2, 2, (5, 6), 3, 2, 1, 1, 2, seed=1)
    x.requires_grad_()
    weight.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, w: region_conv(a, w, guide, stride=2, padding=1), (x, weight))


def test_single_region_equals_conv2d():
    x, weight, guide = make_inputs(3, 4, 5, (9, 10), 3, 2, 1, 2, 1)
    for i in range(3):
        weight[i] = weight[0]
    out = region_conv(x, weight, guide, stride=2, padding=1, dilation=2)
    torch.testing.assert_close(out, F.conv2d(x, weight[0, 0], stride=2, padding=1, dilation=2))


@pytest.mark.parametrize('layout', ['empty_region', 'one_region'])
def test_degenerate_region_maps(layout):
    x, weight, guide = make_inputs(2, 3, 4, (8, 8), 3, 1, 1, 1, 4, seed=2)
    if layout == 'empty_region':
        guide[:, 2] = -1e3  # region 2 owns no pixel
    else:
        guide[:, 1] = 1e3  # every pixel in region 1
    grad_out = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    got = grads(region_conv, (x, weight, guide), grad_out, padding=1)
    want = grads(region_conv_dense, (x, weight, guide), grad_out, padding=1)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)
    if layout == 'empty_region':
        assert got[2][:, 2].abs().max() == 0  # an empty region's filter gets no gradient
    else:
        torch.testing.assert_close(got[0], torch.stack(
            [F.conv2d(x[i:i + 1], weight[i, 1], padding=1)[0] for i in range(2)]))


def test_float32_and_channels_last_and_noncontiguous():
    x, weight, guide = make_inputs(2, 6, 4, (9, 9), 3, 1, 1, 1, 3, dtype=torch.float32)
    want = region_conv_dense(x, weight, guide, padding=1)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w_nc = weight.transpose(-1, -2).contiguous().transpose(-1, -2)
    g_nc = guide.transpose(2, 3).contiguous().transpose(2, 3)
    assert not w_nc.is_contiguous() and not g_nc.is_contiguous()
    torch.testing.assert_close(region_conv(x_cl, w_nc, g_nc, padding=1), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('grad_layout', ['nchw', 'nhwc'])
def test_float32_gradients(grad_layout):
    """Float32 on CPU takes the all-region scores through oneDNN (drconv.onednn), with the
    output gradient read column-wise (NCHW) or row-wise (channels-last)."""
    x, weight, guide = make_inputs(2, 6, 4, (9, 9), 3, 1, 1, 1, 3, dtype=torch.float32)
    grad_out = torch.randn(2, 4, 9, 9)
    if grad_layout == 'nhwc':
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    got = grads(region_conv, (x, weight, guide), grad_out, padding=1)
    want = grads(region_conv_dense, [t.double() for t in (x, weight, guide)], grad_out.double(),
                 padding=1)
    for name, a, e in zip(('output', 'd/dx', 'd/dweight', 'd/dguide'), got, want):
        torch.testing.assert_close(a, e.float(), rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('piece_elements', [1 << 20, 30])
@pytest.mark.parametrize('x_layout,grad_layout', [('nchw', 'nchw'), ('nhwc', 'nchw'),
                                                   ('nchw', 'nhwc'), ('nhwc', 'nhwc')])
def test_pointwise_reads_columns_or_rows(monkeypatch, x_layout, grad_layout, piece_elements,
                                         stride):
    """1x1 kernels read NCHW tensors column-wise and channels-last ones row-wise; same results,
    whether a span holds a whole sample or a part."""
    from drconv import region_gemm, sorted_rows
    monkeypatch.setattr(region_gemm, 'PIECE_ELEMENTS', piece_elements)
    monkeypatch.setattr(sorted_rows, 'BATCH_PADDING', 0.0)  # spans, not batched blocks
    x, weight, guide = make_inputs(3, 4, 5, (9, 8), 1, stride, 0, 1, 3, seed=4)
    h_out, w_out = guide.shape[2:]
    grad_out = torch.randn(3, 5, h_out, w_out, dtype=torch.float64)
    cl = torch.channels_last
    x_in = x.contiguous(memory_format=cl) if x_layout == 'nhwc' else x
    grad_in = grad_out.contiguous(memory_format=cl) if grad_layout == 'nhwc' else grad_out
    got = grads(region_conv, (x_in, weight, guide), grad_in, stride=stride)
    want = grads(region_conv_dense, (x, weight, guide), grad_out, stride=stride)
    for name, a, e in zip(('output', 'd/dx', 'd/dweight', 'd/dguide'), got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=name)
    layout = cl if x_layout == 'nhwc' else torch.contiguous_format
    assert got[0].is_contiguous(memory_format=layout)  # output and x's gradient keep x's layout
    assert got[1].is_contiguous(memory_format=layout)


@pytest.mark.parametrize('k,stride,layout', [(1, 1, 'nchw'), (1, 2, 'nchw'), (3, 1, 'nchw'),
                                             (3, 2, 'nhwc'), (1, 1, 'nhwc')])
@pytest.mark.parametrize('batch_padding,batched', [(1.3, [0]), (100.0, [0, 1, 2]),
                                                   (0.5, [])])
@pytest.mark.parametrize('guide_grad', ['exact', 'top2'])
def test_balanced_samples_are_batched(monkeypatch, k, stride, layout, batch_padding, batched,
                                      guide_grad):
    """A sample whose regions are balanced is multiplied in one batched GEMM, its groups padded
    to the largest, forward and backward; the others group by group; same results, empty
    regions included."""
    from drconv import region_gemm, sorted_rows
    monkeypatch.setattr(sorted_rows, 'BATCH_PADDING', batch_padding)
    done = {'forward': [], 'backward': []}
    forward_blocks, backward_blocks = region_gemm.forward_blocks, region_gemm.backward_blocks

    def spy(name, fn):
        def spied(*args):
            done[name].append(args[2].samples if name == 'forward' else args[3].samples)
            return fn(*args)
        return spied

    monkeypatch.setattr(region_gemm, 'forward_blocks', spy('forward', forward_blocks))
    monkeypatch.setattr(region_gemm, 'backward_blocks', spy('backward', backward_blocks))
    x, weight, guide = make_inputs(3, 4, 5, (16, 16), k, stride, k // 2, 1, 4, seed=6)
    if layout == 'nhwc':
        x = x.contiguous(memory_format=torch.channels_last)
    h_out, w_out = guide.shape[2:]
    pixel = torch.arange(h_out * w_out).view(h_out, w_out)
    guide[0] = F.one_hot(pixel % 4, 4).permute(2, 0, 1)  # 4 equal regions
    guide[1] = F.one_hot(torch.zeros_like(pixel), 4).permute(2, 0, 1)  # one region, 3 empty
    guide[2] = F.one_hot((pixel < 5).long() * 2, 4).permute(2, 0, 1)  # 5 pixels vs the rest
    kw = dict(stride=stride, padding=k // 2)
    grad_out = torch.randn(3, 5, h_out, w_out, dtype=torch.float64)
    if layout == 'nhwc':
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    got = grads(region_conv, (x, weight, guide), grad_out, guide_grad=guide_grad, **kw)
    assert done['forward'] == ([batched] if batched else [])
    if (k, layout) == (1, 'nchw'):  # a 1x1 kernel read column-wise batches its forward only
        assert done['backward'] == []
    elif batched:  # the forward's blocks ('top2': then blocks of the second regions)
        assert done['backward'][0] == batched
    monkeypatch.setattr(sorted_rows, 'BATCH_PADDING', 0.0)  # every group its own GEMM
    wants = [grads(region_conv, (x, weight, guide), grad_out, guide_grad=guide_grad, **kw)]
    if guide_grad == 'exact':
        wants.append(grads(region_conv_dense, (x, weight, guide), grad_out, **kw))
    for want in wants:
        for name, a, e in zip(('output', 'd/dx', 'd/dweight', 'd/dguide'), got, want):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize('k,layout', [(1, 'nchw'), (1, 'nhwc'), (3, 'nchw')])
@pytest.mark.parametrize('batch_elements', [1 << 21, 600, 1])
def test_consecutive_batched_samples_share_a_run(monkeypatch, k, layout, batch_elements):
    """Consecutive balanced samples are gathered and put back together (their blocks padded to
    the run's widest), an unbalanced sample between them splits the run, and so does the
    element bound; results are unchanged."""
    from drconv import region_gemm, sorted_rows
    x, weight, guide = make_inputs(5, 3, 4, (8, 8), k, 1, k // 2, 1, 4, seed=8)
    if layout == 'nhwc':
        x = x.contiguous(memory_format=torch.channels_last)
    pixel = torch.arange(64).view(8, 8)
    # sample 1 one region, the others balanced, sample 3 less so (18, 15, 15, 16 pixels)
    regions = (pixel % 4, pixel * 0, pixel // 16, pixel % 4, (pixel // 2) % 4)
    regions[3].view(-1)[1:3] = 0
    guide.copy_(F.one_hot(torch.stack(regions), 4).permute(0, 3, 1, 2))
    grad_out = torch.randn(5, 4, 8, 8, dtype=torch.float64)
    done = []
    runs = region_gemm.runs

    def spy(*args):
        done.extend(samples for samples, _ in runs(*args))
        return runs(*args)

    monkeypatch.setattr(region_gemm, 'runs', spy)
    monkeypatch.setattr(sorted_rows, 'BATCH_ELEMENTS', batch_elements)
    got = grads(region_conv, (x, weight, guide), grad_out, padding=k // 2)
    if batch_elements == 1 << 21:
        assert done == [range(0, 1), range(2, 5)]
    elif batch_elements == 600 and k == 1:  # 2 samples of 4 x 18 rows of 4 elements fit
        assert done == [range(0, 1), range(2, 4), range(4, 5)]
    else:  # no sample fits: every group its own GEMM
        assert done == []
    monkeypatch.setattr(sorted_rows, 'BATCH_PADDING', 0.0)  # every group its own GEMM
    want = grads(region_conv, (x, weight, guide), grad_out, padding=k // 2)
    for name, a, e in zip(('output', 'd/dx', 'd/dweight', 'd/dguide'), got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=name)


def test_runs_are_consecutive_samples_within_the_bound(monkeypatch):
    from drconv import sorted_rows
    from drconv.sorted_rows import Blocks, runs
    blocks = Blocks([0, 1, 3, 4, 5], [10, 12, 99, 8, 10, 10], None, None)
    monkeypatch.setattr(sorted_rows, 'BATCH_ELEMENTS', 30)
    assert list(runs(blocks, 1)) == [(range(0, 2), 12), (range(3, 6), 10)]
    monkeypatch.setattr(sorted_rows, 'BATCH_ELEMENTS', 25)
    assert list(runs(blocks, 1)) == [(range(0, 2), 12), (range(3, 5), 10), (range(5, 6), 10)]
    assert list(runs(blocks, 3)) == [(range(0, 1), 10), (range(1, 2), 12), (range(3, 4), 8),
                                     (range(4, 5), 10), (range(5, 6), 10)]


@pytest.mark.parametrize('k', [3, 1])
def test_bfloat16_under_cpu_autocast(k):
    x, weight, guide = make_inputs(2, 4, 4, (8, 8), k, 1, k // 2, 1, 3, dtype=torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = region_conv(x, weight, guide, padding=k // 2)
    assert out.dtype == torch.bfloat16
    # the reference sees the same bf16-rounded guide, so both pick the same regions
    x, weight, guide = (t.bfloat16().float() for t in (x, weight, guide))
    want = region_conv_dense(x, weight, guide, padding=k // 2)
    torch.testing.assert_close(out.float(), want, rtol=5e-2, atol=1e-1)


@pytest.mark.parametrize('piece_elements,response_rows', [(100, 512), (1 << 20, 3), (100, 2)])
def test_large_image_is_cut_into_spans(monkeypatch, piece_elements, response_rows):
    """Spans shorter than a region run split it, and so do the chunks of all-region responses;
    results are unchanged."""
    from drconv import region_gemm, sorted_rows
    x, weight, guide = make_inputs(2, 3, 4, (16, 16), 3, 1, 1, 1, 2, seed=5)
    grad_out = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    want = grads(region_conv, (x, weight, guide), grad_out, padding=1)
    monkeypatch.setattr(region_gemm, 'PIECE_ELEMENTS', piece_elements)
    monkeypatch.setattr(sorted_rows, 'BATCH_PADDING', 0.0)  # spans, not batched blocks
    monkeypatch.setattr(region_gemm, 'RESPONSE_ROWS', response_rows)
    got = grads(region_conv, (x, weight, guide), grad_out, padding=1)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)


def test_spans_cover_every_row_once():
    from drconv.sorted_rows import spans
    ends = [0, 3, 3, 10, 11, 11, 17]  # groups 0, 2 and 5 are empty
    got = [(span.lo, span.hi, span.segments) for span in spans(ends, 4)]
    assert got == [(0, 4, [(1, 0, 3), (3, 3, 4)]), (4, 8, [(3, 0, 4)]),
                   (8, 12, [(3, 0, 2), (4, 2, 3), (6, 3, 4)]), (12, 16, [(6, 0, 4)]),
                   (16, 17, [(6, 0, 1)])]
    # one sample per span (m = 2 regions), each sample's rows split into near-equal spans
    got = [(span.lo, span.hi, span.segments) for span in spans([3, 10, 12, 17], 4, 2)]
    assert got == [(0, 4, [(0, 0, 3), (1, 3, 4)]), (4, 8, [(1, 0, 4)]), (8, 10, [(1, 0, 2)]),
                   (10, 14, [(2, 0, 2), (3, 2, 4)]), (14, 17, [(3, 0, 3)])]
    # samples skipped (done another way) get no span
    got = [(span.lo, span.hi, span.segments) for span in spans([3, 10, 12, 17], 4, 2, {0})]
    assert got == [(10, 14, [(2, 0, 2), (3, 2, 4)]), (14, 17, [(3, 0, 3)])]


BAD = {
    'x not 4d': ((2, 3, 8), (2, 4, 5, 3, 3, 3), (2, 4, 8, 8), 'x must be'),
    'weight not 6d': ((2, 3, 8, 8), (2, 4, 5, 3, 3), (2, 4, 8, 8), 'weight must be'),
    'batch differs': ((2, 3, 8, 8), (3, 4, 5, 3, 3, 3), (2, 4, 8, 8), 'batch sizes differ'),
    'channels differ': ((2, 3, 8, 8), (2, 4, 5, 2, 3, 3), (2, 4, 8, 8), 'input channels'),
    'regions differ': ((2, 3, 8, 8), (2, 4, 5, 3, 3, 3), (2, 5, 8, 8), 'regions'),
    'guide size': ((2, 3, 8, 8), (2, 4, 5, 3, 3, 3), (2, 4, 6, 6), 'spatially'),
    'kernel too big': ((2, 3, 2, 2), (2, 4, 5, 3, 3, 3), (2, 4, 1, 1), 'smaller than'),
}


@pytest.mark.parametrize('name', sorted(BAD))
def test_refuses_mismatched_shapes(name):
    xs, ws, gs, message = BAD[name]
    with pytest.raises(ValueError, match=message):
        region_conv(torch.zeros(xs), torch.zeros(ws), torch.zeros(gs), padding=1 if
                    name not in ('kernel too big',) else 0)


def test_refuses_mixed_dtypes_and_bad_geometry():
    x, weight, guide = make_inputs(1, 2, 2, (6, 6), 3, 1, 1, 1, 2)
    with pytest.raises(ValueError, match='guide is torch.float32'):
        region_conv(x, weight, guide.float(), padding=1)
    for kw, err in (({'stride': 0}, ValueError), ({'padding': -1}, ValueError),
                    ({'dilation': (1, 2, 3)}, TypeError), ({'stride': 1.5}, TypeError)):
        with pytest.raises(err):
            region_conv(x, weight, guide, **kw)


@pytest.mark.parametrize('m,k', [(1, 3), (2, 3), (5, 3), (5, 1)])
def test_top2_guide_gradient(m, k):
    """'top2': x and weight gradients unchanged; guide gradient is the softmax restricted to
    each pixel's two best regions, computed here by hand from every region's response."""
    p = k // 2
    x, weight, guide = make_inputs(2, 3, 4, (7, 6), k, 2, p, 1, m, seed=4)
    grad_out = torch.randn(region_conv_dense(x, weight, guide, 2, p).shape, dtype=torch.float64)
    exact = grads(region_conv, (x, weight, guide), grad_out, stride=2, padding=p)
    top2 = grads(region_conv, (x, weight, guide), grad_out, stride=2, padding=p,
                 guide_grad='top2')
    for a, e in zip(top2[:3], exact[:3]):
        torch.testing.assert_close(a, e)
    s = torch.stack([torch.stack([(F.conv2d(x[i:i + 1], weight[i, j], stride=2, padding=p)[0]
                                   * grad_out[i]).sum(0) for j in range(m)]) for i in range(2)])
    keep = torch.zeros_like(guide, dtype=torch.bool).scatter_(1, guide.topk(min(2, m), 1).indices,
                                                              True)
    q = torch.softmax(guide.masked_fill(~keep, float('-inf')), 1)
    want = q * (s - (q * s).sum(1, keepdim=True))
    torch.testing.assert_close(top2[3], want)
    with pytest.raises(ValueError, match="guide_grad must be one of"):
        region_conv(x, weight, guide, stride=2, padding=p, guide_grad='top3')

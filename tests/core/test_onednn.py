"""drconv.onednn.linear: oneDNN's matmul for dense float32/bfloat16 operands, torch.mm else."""
import pytest
import torch

from drconv import onednn

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                  reason='torch built without oneDNN')


def mm_forbidden(*args, **kwargs):
    raise AssertionError('torch.mm called where oneDNN should have been')


@needs_onednn
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_dense_operands_go_to_onednn(monkeypatch, dtype, tol):
    a, b = torch.randn(37, 70), torch.randn(19, 70)
    if not onednn.available(a.to(dtype)):
        pytest.skip(f'oneDNN has no {dtype} matmul on this CPU')
    want = a @ b.t()
    monkeypatch.setattr(torch, 'mm', mm_forbidden)
    got = onednn.linear(a.to(dtype), b.to(dtype))
    assert got.shape == (37, 19) and got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize('layout', ['float64', 'strided', 'transposed'])
def test_other_operands_go_to_torch_mm(monkeypatch, layout):
    """oneDNN runs strided operands through a reference kernel (seconds for a few MiB), and
    float64 not at all: those stay with torch.mm, with the same result."""
    a, b = torch.randn(37, 70, dtype=torch.float64), torch.randn(19, 70, dtype=torch.float64)
    want = a @ b.t()
    if layout != 'float64':
        a, want = a.float(), want.float()
        b = (torch.randn(19, 80)[:, :70].copy_(b) if layout == 'strided'
             else b.float().t().contiguous().t())
        assert not b.is_contiguous()
    calls = []
    mm = torch.mm
    monkeypatch.setattr(torch, 'mm', lambda *args: calls.append(1) or mm(*args))
    torch.testing.assert_close(onednn.linear(a, b), want)
    assert calls == [1]


@pytest.fixture
def fresh_probe():
    onednn._linear_pointwise_works.cache_clear()
    yield
    onednn._linear_pointwise_works.cache_clear()


@pytest.mark.parametrize('error', [AttributeError, RuntimeError, TypeError])
def test_a_changed_private_op_falls_back_to_torch_mm(monkeypatch, fresh_probe, error):
    """``_linear_pointwise`` is private to torch: if it is gone or its signature changed,
    linear still answers, through torch.mm."""
    def changed(*args):
        raise error('changed')
    monkeypatch.setattr(torch.ops.mkldnn, '_linear_pointwise', changed)
    a, b = torch.randn(5, 7), torch.randn(3, 7)
    assert not onednn.available(a)
    torch.testing.assert_close(onednn.linear(a, b), a @ b.t())

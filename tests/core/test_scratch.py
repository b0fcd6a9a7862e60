"""Scratch memory kept between calls: reused where it should be, never leaking into results."""
import threading

import pytest
import torch

from drconv import region_conv, region_conv_dense, scratch as scratch_module
from drconv.scratch import scratch


def test_same_name_reuses_memory_per_thread_and_dtype():
    like = torch.empty(0)
    a = scratch('test_buffer', 100, like)
    b = scratch('test_buffer', 60, like)
    assert b.data_ptr() == a.data_ptr() and b.shape == (60,)
    assert scratch('test_other', 100, like).data_ptr() != a.data_ptr()
    assert scratch('test_buffer', 100, like.double()).dtype == torch.float64
    grown = scratch('test_buffer', 1000, like)
    assert grown.numel() == 1000
    assert scratch('test_buffer', 10, like).data_ptr() == grown.data_ptr()
    in_thread = []
    thread = threading.Thread(
        target=lambda: in_thread.append(scratch('test_buffer', 100, like).data_ptr()))
    thread.start()
    thread.join()
    assert in_thread[0] != grown.data_ptr()


def test_large_buffers_are_not_kept(monkeypatch):
    monkeypatch.setattr(scratch_module, 'KEEP_BYTES', 64)
    like = torch.empty(0)
    kept = scratch('test_small', 16, like)
    assert scratch('test_small', 16, like).data_ptr() == kept.data_ptr()
    assert scratch('test_large', 17, like).numel() == 17
    assert ('test_large', torch.float32) not in scratch_module._kept.buffers


@pytest.mark.parametrize('k', [1, 3])
@pytest.mark.parametrize('layout', ['nchw', 'channels_last'])
def test_results_survive_later_calls(k, layout):
    """Outputs and gradients are fresh memory: a second call leaves the first call's intact."""
    fmt = torch.channels_last if layout == 'channels_last' else torch.contiguous_format
    results = []
    for seed in range(2):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 3, 6, 7, generator=gen, dtype=torch.float64).to(memory_format=fmt)
        weight = torch.randn(2, 4, 5, 3, k, k, generator=gen, dtype=torch.float64)
        guide = torch.randn(2, 4, 6, 7, generator=gen, dtype=torch.float64)
        grad_out = torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64)
        got, want = [], []
        for fn, into in ((region_conv, got), (region_conv_dense, want)):
            leaves = [t.detach().clone().requires_grad_() for t in (x, weight, guide)]
            out = fn(*leaves, padding=k // 2)
            into.extend((out,) + torch.autograd.grad(out, leaves, grad_out))
        results.append((got, [t.clone() for t in got], want))
    for got, copies, want in results:
        for a, copy, e in zip(got, copies, want):
            torch.testing.assert_close(a, copy, rtol=0, atol=0)
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_buffers_made_in_inference_mode_serve_autograd_later():
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    weight = torch.randn(2, 4, 5, 3, 3, 3, dtype=torch.float64)
    guide = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    with torch.inference_mode():
        region_conv(x.clone(), weight.clone(), guide.clone(), padding=1)
    leaves = [t.clone().requires_grad_() for t in (x, weight, guide)]
    out = region_conv(*leaves, padding=1)
    grads = torch.autograd.grad(out.sum(), leaves)
    dense = [t.clone().requires_grad_() for t in (x, weight, guide)]
    want = torch.autograd.grad(region_conv_dense(*dense, padding=1).sum(), dense)
    for a, e in zip(grads, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_release_drops_kept_buffers():
    like = torch.empty(0)
    scratch('test_release', 8, like)
    assert ('test_release', torch.float32) in scratch_module._kept.buffers
    scratch_module.release()
    assert ('test_release', torch.float32) not in scratch_module._kept.buffers

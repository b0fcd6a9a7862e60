"""The fused Triton forward equals the reference (on CPU through TRITON_INTERPRET=1)."""
import pytest
import torch

from drconv import region_conv, region_conv_dense
from drconv import triton_forward
from drconv._utils import conv_output_size

pytestmark = pytest.mark.skipif(triton_forward.triton is None, reason='Triton not installed')
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def run_kernel(x, weight, guide, stride, padding, dilation):
    b, m, c_out = weight.shape[:3]
    filters = weight.permute(0, 1, 2, 4, 5, 3).reshape(b, m, c_out, -1)
    region = guide.argmax(1).view(b, -1)
    out_size = tuple(guide.shape[2:])
    rows = triton_forward.forward(x, filters, region, out_size, (stride,) * 2, (padding,) * 2,
                                  (dilation,) * 2, tuple(weight.shape[-2:]))
    return rows.view(b, *out_size, c_out).permute(0, 3, 1, 2)


@pytest.mark.parametrize('case', [
    # b, c_in, c_out, (h, w), k, stride, padding, dilation, m
    (2, 3, 5, (7, 9), 3, 1, 1, 1, 4),
    (1, 40, 20, (6, 5), 3, 2, 2, 2, 3),
    (2, 4, 130, (5, 6), 1, 1, 0, 1, 2),
    (3, 2, 3, (9, 8), 5, 3, 1, 1, 6),
])
def test_kernel_matches_reference(case):
    b, c_in, c_out, (h, w), k, s, p, d, m = case
    gen = torch.Generator().manual_seed(0)
    ho, wo = (conv_output_size(n, k, s, p, d) for n in (h, w))
    x = torch.randn(b, c_in, h, w, generator=gen).to(DEVICE)
    weight = torch.randn(b, m, c_out, c_in, k, k, generator=gen).to(DEVICE)
    guide = torch.randn(b, m, ho, wo, generator=gen).to(DEVICE)
    guide[0, m - 1] = -1e4  # an empty region in sample 0
    want = region_conv_dense(x, weight, guide, s, p, d)
    torch.testing.assert_close(run_kernel(x, weight, guide, s, p, d), want,
                               rtol=1e-4, atol=1e-4)


def test_tile_schedule_covers_every_pixel_once():
    region = torch.tensor([[2, 0, 2, 2, 1, 0, 2], [1, 1, 1, 1, 1, 1, 1]])
    order, group, row, end = triton_forward.tile_schedule(region, 3, block_m=2)
    assert group.tolist() == [0, 1, 2, 2, 4, 4, 4, 4]
    assert row.tolist() == [0, 2, 3, 5, 0, 2, 4, 6] and end.tolist() == [2, 3, 7, 7, 7, 7, 7, 7]
    sorted_regions = torch.gather(region, 1, order.long())
    assert sorted_regions.tolist() == [[0, 0, 1, 2, 2, 2, 2], [1] * 7]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_op_uses_kernel_and_matches(dtype):
    x = torch.randn(2, 16, 12, 12, device='cuda', dtype=dtype, requires_grad=True)
    weight = torch.randn(2, 4, 16, 16, 3, 3, device='cuda', dtype=dtype, requires_grad=True)
    guide = torch.randn(2, 4, 12, 12, device='cuda', dtype=dtype, requires_grad=True)
    assert triton_forward.is_available(x)
    out = region_conv(x, weight, guide, padding=1)
    want = region_conv_dense(x.float(), weight.float(), guide.float(), padding=1)
    tol = 1e-2 if dtype == torch.float32 else 1e-1
    torch.testing.assert_close(out.float(), want, rtol=tol, atol=tol)
    out.sum().backward()
    assert x.grad is not None and weight.grad is not None and guide.grad is not None

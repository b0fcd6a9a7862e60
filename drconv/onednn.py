"""Matrix products through oneDNN on CPU.

torch's CPU ``mm`` calls MKL, which on this project's AMD EPYC machines runs below oneDNN's
AVX-512 matmul (the library behind ``F.conv2d``): (8192, 1152) @ (1152, 128) took 14.0 ms
against 11.5 ms on 2 threads, and 8 samples' (1024, 1152) @ (1152, 1024), the exact guide
gradient's products, 99-102 ms against 88-92 ms. :func:`linear` reaches that matmul through
``torch.ops.mkldnn._linear_pointwise`` (the op ``torch.compile`` uses for frozen linear layers
on CPU) for dense float32/bfloat16 operands. oneDNN runs strided operands through a reference
kernel (8 s for a (1024, 1152) @ (1152, 512) product with padded rows), so those, like every
other case, go to ``torch.mm``; so does everything when the op, private to torch, is missing or
no longer takes these arguments.
"""
import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=None)
def _linear_pointwise_works(dtype: torch.dtype) -> bool:
    """Whether this torch has the op, with the signature used here (a private op may change),
    for ``dtype`` on this CPU (bfloat16 needs instructions that AVX2 CPUs lack)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        one = torch.ones(1, 1, dtype=dtype)
        return torch.ops.mkldnn._linear_pointwise(one, one, None, 'none', [], '').item() == 1
    except (AttributeError, RuntimeError, TypeError):
        return False


def available(t: Tensor) -> bool:
    """Whether :func:`linear` can run through oneDNN for operands like ``t``."""
    return (t.device.type == 'cpu' and t.dtype in (torch.float32, torch.bfloat16)
            and _linear_pointwise_works(t.dtype))


def linear(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b.t()`` for a (n, K) and b (N, K): a new (n, N) tensor; through oneDNN when both
    are contiguous and :func:`available`."""
    if available(a) and a.is_contiguous() and b.is_contiguous():
        return torch.ops.mkldnn._linear_pointwise(a, b, None, 'none', [], '')
    return torch.mm(a, b.t())

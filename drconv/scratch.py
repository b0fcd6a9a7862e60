"""Scratch memory the CPU kernels keep between calls.

Memory fresh from the system costs a page fault at first touch of every 4 KiB page (measured
at 1.5-2 us each on our 2-core VM: a 4 MiB temporary costs about 2 ms before any work). The
kernels' temporaries (channels-last copies, gathered patches, sorted output rows) have the same
sizes call after call, so on CPU they come from buffers kept per thread, purpose and dtype
(CUDA's caching allocator does this already there). A buffer larger than :data:`KEEP_BYTES` is
not kept, so a thread holds at most a few times that much; :func:`release` drops them.
"""
import threading

import torch
from torch import Tensor

# Largest buffer kept between calls, in bytes.
KEEP_BYTES = 16 << 20

_kept = threading.local()


def scratch(name: str, numel: int, like: Tensor) -> Tensor:
    """An uninitialised 1-D tensor of ``numel`` elements, dtype and device of ``like``.

    On CPU the same memory is handed out again by the next call with the same ``name`` on this
    thread: use it only for temporaries that never leave the call.
    """
    nbytes = numel * like.element_size()
    if like.device.type != 'cpu' or nbytes > KEEP_BYTES:
        return like.new_empty(numel)
    buffers = getattr(_kept, 'buffers', None)
    if buffers is None:
        buffers = _kept.buffers = {}
    key = (name, like.dtype)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        # made outside inference mode, so later calls with autograd may still write it
        with torch.inference_mode(False):
            buffer = buffers[key] = torch.empty(numel, dtype=like.dtype)
    return buffer[:numel]


def release() -> None:
    """Drop this thread's kept buffers; their memory goes back to the allocator."""
    _kept.buffers = {}

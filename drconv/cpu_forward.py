"""Fused AVX-512 forward of :func:`drconv.region_conv` on CPU (float32), used automatically.

The kernel, ``csrc/region_forward_avx512.cpp``, does what :func:`drconv.region_gemm.forward`
does without its temporaries: per (sample, region) group and panel of 64 output channels, it
reads each sorted pixel's k x k patch straight from the channels-last input while it multiplies
(no im2col buffer, no padded copy) and writes the results to their pixels in the output's
memory format. On the target layer (8 x 128 x 32 x 32, m = 8, 3x3, 2 threads) its GEMM ran at
84 GMAC/s against 85 for ``F.conv2d`` of the same shape, where the batched ``bmm`` of the
PyTorch path runs at about 85% of conv's speed before its gathers and copies.

It is plain C++ (no torch headers), compiled on first use with the system's C++ compiler
(``CXX``, default ``c++``; about two seconds) into a cache folder (``DRCONV_CACHE_DIR``, default
``$XDG_CACHE_HOME/drconv`` or ``~/.cache/drconv``) under a hash of its source and command, and
loaded with ctypes. Its OpenMP is the libgomp torch has loaded, so it runs on torch's threads
(``torch.get_num_threads()``). Where it cannot run (no AVX-512, not float32, not CPU) or cannot
be built (a warning says why, once), or with ``DRCONV_CPU_KERNEL=0``, the PyTorch path runs.
"""
import ctypes
import functools
import hashlib
import os
import os.path as osp
import subprocess
import tempfile
import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .patches import Geometry, channels_last
from .scratch import scratch

SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc', 'region_forward_avx512.cpp')
FLAGS = ['-O3', '-mavx512f', '-fopenmp', '-shared', '-fPIC', '-std=c++17']
SWITCH = 'DRCONV_CPU_KERNEL'


def cache_dir() -> str:
    """Folder of built kernels: ``DRCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/drconv``, else
    ``~/.cache/drconv``."""
    if os.environ.get('DRCONV_CACHE_DIR'):
        return os.environ['DRCONV_CACHE_DIR']
    base = os.environ.get('XDG_CACHE_HOME') or osp.join(osp.expanduser('~'), '.cache')
    return osp.join(base, 'drconv')


def build(compiler: str, folder: str) -> str:
    """Compile the kernel with ``compiler`` into ``folder`` unless built there already; return
    the library's path. Raises OSError or subprocess.CalledProcessError when the build fails."""
    with open(SOURCE, 'rb') as f:
        source = f.read()
    command: List[str] = [compiler, *FLAGS]
    key = hashlib.sha256(source + ' '.join(command).encode()).hexdigest()[:16]
    path = osp.join(folder, f'region_forward_avx512_{key}.so')
    if osp.exists(path):
        return path
    os.makedirs(folder, exist_ok=True)
    # a private name, renamed when complete: processes building at once never see half a file
    fd, partial = tempfile.mkstemp(suffix='.so', dir=folder)
    os.close(fd)
    try:
        subprocess.run([*command, SOURCE, '-o', partial], check=True, capture_output=True,
                       text=True)
        os.replace(partial, path)
    finally:
        if osp.exists(partial):
            os.remove(partial)
    return path


@functools.lru_cache(maxsize=None)
def library() -> Optional[ctypes.CDLL]:
    """The built kernel, or None (with a warning) when it cannot be built or loaded."""
    compiler = os.environ.get('CXX', 'c++')
    try:
        lib = ctypes.CDLL(build(compiler, cache_dir()))
    except subprocess.CalledProcessError as e:
        warnings.warn(f'drconv: building {SOURCE} with {compiler} failed, so region_conv runs '
                      f'its PyTorch forward on CPU:\n{e.stderr}')
        return None
    except OSError as e:
        warnings.warn(f'drconv: could not build or load {SOURCE} with {compiler} ({e}), so '
                      'region_conv runs its PyTorch forward on CPU')
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    lib.drconv_region_forward_f32.argtypes = [pointer] * 6 + [ctypes.c_int]
    lib.drconv_transpose_f32.argtypes = [pointer, pointer, size, size, size, ctypes.c_int]
    lib.drconv_transpose_f32.restype = None
    lib.drconv_sort_by_group.argtypes = [pointer, size, size, size, pointer, pointer]
    return lib


def is_available(x: Tensor) -> bool:
    """Whether the kernel runs on ``x``: a float32 CPU tensor, a CPU with AVX-512, the kernel
    built, and ``DRCONV_CPU_KERNEL`` not ``0``."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32
            and os.environ.get(SWITCH, '1') != '0'
            and torch.backends.cpu.get_cpu_capability().startswith('AVX512')
            and library() is not None)


def forward(x: Tensor, filters: Tensor, region: Tensor, out_size: Tuple[int, int],
            geo: Geometry) -> Tensor:
    """Selected-filter convolution with the kernel.

    Args:
        x (Tensor[B, C_in, H, W]): input, float32 on CPU, any memory format.
        filters (Tensor[B, m, C_out, K]): region filters, K ordered (kh, kw, C_in).
        region (Tensor[B, L]): region of each output pixel, L = H_out * W_out.
        out_size (Tuple[int, int]): (H_out, W_out).
        geo (Geometry): kernel, stride, padding, dilation.

    Returns:
        Tensor[B, C_out, H_out, W_out]: the output, in the memory format of x.
    """
    lib = library()
    threads = torch.get_num_threads()
    b, c_in, h, w = x.shape
    _, m, c_out, _ = filters.shape
    l = out_size[0] * out_size[1]
    x_rows = x.permute(0, 2, 3, 1)
    if not x_rows.is_contiguous():  # read channels-last: transposed here, 4x faster than torch
        x = x.contiguous()
        x_rows = scratch('input_rows', x.numel(), x)
        lib.drconv_transpose_f32(x.data_ptr(), x_rows.data_ptr(), b, c_in, h * w, threads)
    filters = filters.contiguous()
    order = torch.empty(b * l, dtype=torch.int64)
    starts = torch.empty(b * m + 1, dtype=torch.int64)
    status = lib.drconv_sort_by_group(region.contiguous().data_ptr(), b, l, m,
                                      order.data_ptr(), starts.data_ptr())
    if channels_last(x):
        out = torch.empty(b, c_out, *out_size, dtype=x.dtype,
                          memory_format=torch.channels_last)
        out_rows = out
    else:  # rows, then transposed: faster than storing each result to its NCHW place
        out = x.new_empty(b, c_out, *out_size)
        out_rows = scratch('result_rows', out.numel(), x)
    shape = torch.tensor([b, m, c_in, h, w, c_out, *out_size, *geo.kernel, *geo.stride,
                          *geo.padding, *geo.dilation], dtype=torch.int64)
    status = status or lib.drconv_region_forward_f32(
        x_rows.data_ptr(), filters.data_ptr(), order.data_ptr(), starts.data_ptr(),
        out_rows.data_ptr(), shape.data_ptr(), threads)
    if status:
        raise MemoryError('region_conv: the CPU kernel could not allocate its buffers '
                          f'({geo.kernel[0] * geo.kernel[1] * c_in} x 64 floats per thread)')
    if out_rows is not out:
        lib.drconv_transpose_f32(out_rows.data_ptr(), out.data_ptr(), b, l, c_out, threads)
    return out

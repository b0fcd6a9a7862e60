"""Fused AVX-512 CPU kernels of :func:`drconv.region_conv` (float32), used automatically.

``csrc/region_conv_avx512.cpp`` holds the forward, the input and filter gradients and every
region's scores (what the exact guide gradient is made of), each reading the sorted pixels'
k x k patches straight from the channels-last tensors while it multiplies (no im2col buffer,
no padded copy, no zeroed filter gradient): the forward per (sample, region) group and 64
output channels, the filter gradient per group, the input gradient per sample and 32 input
channels (so no two threads add to one element), the scores per sample and region (as each
pixel's patch gradient for that region times its patch when K <= C_out, x's gradient coming
with them for 1x1 kernels; else as its response times its output gradient). On the target
layer (8 x 128 x 32 x 32, m = 8, 3x3, 2 threads) the forward's products ran at 84 GMAC/s
against 85 for ``F.conv2d`` of the same shape, the input and filter gradients at 67 and
45 GMAC/s (18 and 27 ms, against 61 ms for both through the PyTorch path; the filter
gradient's time includes the page faults of its fresh 38 MB), the scores in 91 ms against
106 ms through oneDNN's GEMMs and the PyTorch path's gathers; at the 1x1 target the scores took
14.8 ms against 16.5.

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

SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc', 'region_conv_avx512.cpp')
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
    path = osp.join(folder, f'region_conv_avx512_{key}.so')
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
    """The built kernels, or None (with a warning) when they cannot be built or loaded."""
    compiler = os.environ.get('CXX', 'c++')
    try:
        lib = ctypes.CDLL(build(compiler, cache_dir()))
    except subprocess.CalledProcessError as e:
        warnings.warn(f'drconv: building {SOURCE} with {compiler} failed, so region_conv runs '
                      f'its PyTorch path on CPU:\n{e.stderr}')
        return None
    except OSError as e:
        warnings.warn(f'drconv: could not build or load {SOURCE} with {compiler} ({e}), so '
                      'region_conv runs its PyTorch path on CPU')
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    lib.drconv_region_forward_f32.argtypes = [pointer] * 6 + [ctypes.c_int]
    lib.drconv_transpose_f32.argtypes = [pointer, pointer, size, size, size, ctypes.c_int]
    lib.drconv_transpose_f32.restype = None
    lib.drconv_sort_by_group.argtypes = [pointer, size, size, size, pointer, pointer]
    for kernel in (lib.drconv_region_filter_grad_f32, lib.drconv_region_input_grad_f32):
        kernel.argtypes = [pointer] * 6 + [ctypes.c_int]
    lib.drconv_region_scores_f32.argtypes = [pointer] * 8 + [ctypes.c_int]
    return lib


def is_available(x: Tensor) -> bool:
    """Whether the kernels run on ``x``: a float32 CPU tensor, a CPU with AVX-512, the kernels
    built, and ``DRCONV_CPU_KERNEL`` not ``0``."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32
            and os.environ.get(SWITCH, '1') != '0'
            and torch.backends.cpu.get_cpu_capability().startswith('AVX512')
            and library() is not None)


def channels_last_rows(t: Tensor, name: str, threads: int) -> Tensor:
    """``t`` (B, C, H, W) as a contiguous (B, H, W, C) tensor: a view when ``t`` is laid out so,
    else a copy into the scratch buffer ``name``, transposed here (4x faster than torch's)."""
    rows = t.permute(0, 2, 3, 1)
    if rows.is_contiguous():
        return rows
    t = t.contiguous()
    rows = scratch(name, t.numel(), t).view(rows.shape)
    library().drconv_transpose_f32(t.data_ptr(), rows.data_ptr(), t.shape[0], t.shape[1],
                                   t.shape[2] * t.shape[3], threads)
    return rows


def sort_by_group(region: Tensor, regions: int) -> Tuple[Tensor, Tensor]:
    """A counting sort of the pixels of ``region`` (Tensor[B, L]) by group ``b * m + region``,
    stable: ``order`` (Tensor[B * L], flat pixels) and ``starts`` (Tensor[B * m + 1], offsets)."""
    b, l = region.shape
    order = torch.empty(b * l, dtype=torch.int64)
    starts = torch.empty(b * regions + 1, dtype=torch.int64)
    region = region.contiguous()  # kept referenced: the kernels get raw pointers
    if library().drconv_sort_by_group(region.data_ptr(), b, l, regions, order.data_ptr(),
                                      starts.data_ptr()):
        raise MemoryError(f'region_conv: no memory to sort {b} x {regions} groups')
    return order, starts


def shape_of(x: Tensor, filters: Tensor, out_size: Tuple[int, int], geo: Geometry) -> Tensor:
    """The kernels' geometry argument."""
    b, c_in, h, w = x.shape
    m, c_out = filters.shape[1:3]
    return torch.tensor([b, m, c_in, h, w, c_out, *out_size, *geo.kernel, *geo.stride,
                         *geo.padding, *geo.dilation], dtype=torch.int64)


def check(status: int, what: str) -> None:
    """Raise MemoryError when a kernel returned non-zero: its per-thread buffers could not be
    allocated."""
    if status:
        raise MemoryError(f'region_conv: the CPU kernel ({what}) could not allocate its '
                          'per-thread buffers')


def from_channels_last_rows(rows: Tensor, like: Tensor, threads: int) -> Tensor:
    """``rows`` (B, H, W, C) as a (B, C, H, W) tensor in the memory format of ``like``: a view
    when ``like`` is channels-last (so then ``rows`` must not be scratch), else an NCHW copy."""
    if channels_last(like):
        return rows.permute(0, 3, 1, 2)
    b, h, w, c = rows.shape
    out = rows.new_empty(b, c, h, w)
    library().drconv_transpose_f32(rows.data_ptr(), out.data_ptr(), b, h * w, c, threads)
    return out


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
    threads = torch.get_num_threads()
    b = x.shape[0]
    m, c_out = filters.shape[1:3]
    # in the scratch the PyTorch backward gathers patches into, not in one of its own: a 1x1
    # layer's backward, which reads x's columns, would otherwise keep 4 MiB more at the target
    x_rows = channels_last_rows(x, 'patches', threads)
    filters = filters.contiguous()
    order, starts = sort_by_group(region, m)
    # the output itself when channels-last, else rows transposed at the end: faster than
    # storing each result to its NCHW place
    out_rows = (torch.empty(b, *out_size, c_out) if channels_last(x) else
                scratch('result_rows', b * out_size[0] * out_size[1] * c_out, x)
                .view(b, *out_size, c_out))
    shape = shape_of(x, filters, out_size, geo)
    check(library().drconv_region_forward_f32(
        x_rows.data_ptr(), filters.data_ptr(), order.data_ptr(), starts.data_ptr(),
        out_rows.data_ptr(), shape.data_ptr(), threads), 'forward')
    return from_channels_last_rows(out_rows, x, threads)


def backward(grad_out: Tensor, x: Tensor, filters: Tensor, region: Tensor, geo: Geometry,
             need_input: bool, need_filters: bool, need_scores: bool
             ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """The gradients of x and of the filters, and every region's scores, with the kernels.

    Args:
        grad_out (Tensor[B, C_out, H_out, W_out]): gradient of the output.
        x, filters, region, geo: as in :func:`forward`.
        need_input, need_filters, need_scores (bool): whether to compute those.

    Returns:
        (grad_x, grad_filters, scores): Tensor[B, C_in, H, W] in the memory format of x,
        Tensor[B, m, C_out, K] and Tensor[B, L, m], or None each. ``scores[b, p, j]`` is
        <dL/dy_p, (W[b, j] * x)_p>, what the exact guide gradient is made of.
    """
    threads = torch.get_num_threads()
    b, c_in, h, w = x.shape
    m, c_out = filters.shape[1:3]
    lib = library()
    grad_rows = channels_last_rows(grad_out, 'grad_rows', threads)
    x_rows = channels_last_rows(x, 'input_rows', threads) if need_filters or need_scores else None
    filters = filters.contiguous()
    order, starts = sort_by_group(region, m)
    shape = shape_of(x, filters, tuple(grad_out.shape[2:]), geo)
    grad_x = grad_filters = scores = None
    if need_filters:
        grad_filters = torch.empty_like(filters)
        check(lib.drconv_region_filter_grad_f32(
            x_rows.data_ptr(), grad_rows.data_ptr(), order.data_ptr(), starts.data_ptr(),
            grad_filters.data_ptr(), shape.data_ptr(), threads), 'filter gradient')
    if need_input:
        grad_x = (torch.zeros(b, h, w, c_in) if channels_last(x) else
                  scratch('result_rows', x.numel(), x).view(b, h, w, c_in).zero_())
    # scores as patch gradients (K <= C_out) hold x's gradient, which a 1x1 kernel may add
    # there: no two pixels share an input pixel
    fused_x = (need_scores and need_input and geo.kernel == (1, 1)
               and filters.shape[-1] <= c_out)
    if need_scores:
        scores = x.new_zeros(order.numel(), m)
        check(lib.drconv_region_scores_f32(
            x_rows.data_ptr(), filters.data_ptr(), grad_rows.data_ptr(), order.data_ptr(),
            starts.data_ptr(), scores.data_ptr(), grad_x.data_ptr() if fused_x else None,
            shape.data_ptr(), threads), 'scores')
        scores = scores.view(b, -1, m)
    if need_input and not fused_x:
        check(lib.drconv_region_input_grad_f32(
            filters.data_ptr(), grad_rows.data_ptr(), order.data_ptr(), starts.data_ptr(),
            grad_x.data_ptr(), shape.data_ptr(), threads), 'input gradient')
    if need_input:
        grad_x = from_channels_last_rows(grad_x, x, threads)
    return grad_x, grad_filters, scores

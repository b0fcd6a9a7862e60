"""Fused CPU kernels of :func:`drconv.region_conv` and :func:`drconv.region_conv_factored`
(float32, AVX-512 or AVX2 with FMA), used automatically.

``csrc/region_conv_simd.cpp`` holds the forward, the input gradient, the filter gradient
(per group for explicit filters; reduced into each factor's gradient for factored ones) and
every region's scores (what the exact guide gradient is made of), each reading the sorted
pixels' k x k patches straight from the channels-last tensors while it multiplies (no im2col
buffer, no padded copy). A group's filters come from a :class:`FilterSource`: explicit filters
of any strides, or :class:`drconv.Factors`, formed where the kernel packs them. See
docs/op_design.md for the work items and tiles.

It is plain C++ (no torch headers), compiled on first use for the CPU's vector instructions
(AVX-512, else AVX2 with FMA) with the system's C++ compiler (``CXX``, default ``c++``; about
two seconds) into a cache folder (``DRCONV_CACHE_DIR``, default ``$XDG_CACHE_HOME/drconv`` or
``~/.cache/drconv``) under a hash of its source and command, and loaded with ctypes. Its OpenMP
is the libgomp torch has loaded, so it runs on torch's threads (``torch.get_num_threads()``;
one for a call too small to gain from more: :func:`threads_for`).
Where it cannot run (neither instruction set, not float32, not CPU) or cannot be built (a
warning says why, once), or with ``DRCONV_CPU_KERNEL=0``, the PyTorch path runs.
"""
import ctypes
import functools
import hashlib
import os
import os.path as osp
import subprocess
import tempfile
import warnings
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .factors import Factors
from .patches import Geometry, channels_last
from .scratch import scratch

SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'csrc', 'region_conv_simd.cpp')
FLAGS = ['-O3', '-fopenmp', '-shared', '-fPIC', '-std=c++17']
# the instruction sets the kernels are built for, by torch's name of the CPU's capability
ISA_FLAGS = {'AVX512': ['-mavx512f'], 'AVX2': ['-mavx2', '-mfma']}
SWITCH = 'DRCONV_CPU_KERNEL'


def cache_dir() -> str:
    """Folder of built kernels: ``DRCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/drconv``, else
    ``~/.cache/drconv``."""
    if os.environ.get('DRCONV_CACHE_DIR'):
        return os.environ['DRCONV_CACHE_DIR']
    base = os.environ.get('XDG_CACHE_HOME') or osp.join(osp.expanduser('~'), '.cache')
    return osp.join(base, 'drconv')


def instruction_set() -> Optional[str]:
    """``'AVX512'`` or ``'AVX2'``: the vector instructions the kernels use on this CPU, or None
    when it has neither."""
    capability = torch.backends.cpu.get_cpu_capability()
    return next((isa for isa in ISA_FLAGS if capability.startswith(isa)), None)


def build(compiler: str, folder: str, isa: str = 'AVX2') -> str:
    """Compile the kernels for ``isa`` with ``compiler`` into ``folder`` unless built there
    already; return the library's path. Raises OSError or subprocess.CalledProcessError when the
    build fails."""
    with open(SOURCE, 'rb') as f:
        source = f.read()
    command: List[str] = [compiler, *FLAGS, *ISA_FLAGS[isa]]
    key = hashlib.sha256(source + ' '.join(command).encode()).hexdigest()[:16]
    path = osp.join(folder, f'region_conv_{isa.lower()}_{key}.so')
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


class FilterSource(ctypes.Structure):
    """Where the kernels read a group's filters (``Filters`` in the C++ source): explicit
    filters, or :class:`Factors`. Made by :func:`explicit_source` and :func:`factored_source`,
    which keep the tensors it points into alive in ``tensors``."""

    _fields_ = [('filters', ctypes.c_void_p), ('weight', ctypes.c_void_p),
                ('bias', ctypes.c_void_p), ('terms', ctypes.c_void_p), ('coef', ctypes.c_void_p),
                ('shared', ctypes.c_int64), ('group_stride', ctypes.c_int64),
                ('out_stride', ctypes.c_int64), ('tap_stride', ctypes.c_int64),
                ('in_stride', ctypes.c_int64), ('n_terms', ctypes.c_int64),
                ('terms_by_region', ctypes.c_int64), ('terms_by_tap', ctypes.c_int64),
                ('coef_by_tap', ctypes.c_int64)]


class FactorGradBuffers(ctypes.Structure):
    """The factors' gradients the factored filter-gradient kernel adds to (``FactorGrads``)."""

    _fields_ = [('weight', ctypes.c_void_p), ('bias', ctypes.c_void_p),
                ('terms', ctypes.c_void_p), ('coef_parts', ctypes.c_void_p),
                ('block_rows', ctypes.c_int64)]


@functools.lru_cache(maxsize=None)
def library() -> Optional[ctypes.CDLL]:
    """The built kernels, or None (with a warning) when they cannot be built or loaded."""
    compiler = os.environ.get('CXX', 'c++')
    isa = instruction_set() or 'AVX2'
    try:
        lib = ctypes.CDLL(build(compiler, cache_dir(), isa))
    except subprocess.CalledProcessError as e:
        warnings.warn(f'drconv: building {SOURCE} with {compiler} failed, so region_conv runs '
                      f'its PyTorch path on CPU:\n{e.stderr}')
        return None
    except OSError as e:
        warnings.warn(f'drconv: could not build or load {SOURCE} with {compiler} ({e}), so '
                      'region_conv runs its PyTorch path on CPU')
        return None
    pointer, size, source = ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(FilterSource)
    lib.drconv_region_forward_f32.argtypes = [pointer, source] + [pointer] * 6 + [ctypes.c_int]
    lib.drconv_region_of.argtypes = [pointer, size, size, size, pointer]
    lib.drconv_region_of.restype = None
    lib.drconv_shifted_sum_f32.argtypes = [pointer, pointer, pointer, pointer, ctypes.c_int]
    lib.drconv_shifted_sum_f32.restype = None
    lib.drconv_pointwise_guide_backward_f32.argtypes = [pointer] * 6 + [size] * 4 + [ctypes.c_int]
    lib.drconv_adaptive_avg_pool_f32.argtypes = [pointer, pointer] + [size] * 5 + [ctypes.c_int]
    lib.drconv_adaptive_avg_pool_f32.restype = None
    lib.drconv_transpose_f32.argtypes = [pointer, pointer, size, size, size, ctypes.c_int]
    lib.drconv_transpose_f32.restype = None
    lib.drconv_sort_by_group.argtypes = [pointer, size, size, size, pointer, pointer]
    lib.drconv_region_filter_grad_f32.argtypes = [pointer] * 6 + [ctypes.c_int]
    lib.drconv_factored_filter_grad_f32.argtypes = (
        [pointer] * 4 + [source, ctypes.POINTER(FactorGradBuffers), pointer, ctypes.c_int])
    lib.drconv_region_input_grad_f32.argtypes = [source] + [pointer] * 5 + [ctypes.c_int]
    lib.drconv_region_scores_f32.argtypes = [pointer, source] + [pointer] * 8 + [ctypes.c_int]
    return lib


# Multiply-adds (or their worth of other work) below which a kernel call runs on the calling
# thread alone: waking torch's other threads for a parallel region took longer than they saved
# (on our 2-core VM, with OMP_WAIT_POLICY=PASSIVE, DRConv2d at 1 x 128 x 7 x 7, 1x1, 0.8
# million: forward 1.08 against 1.29 ms, forward+backward 2.83 against 3.42 ms, interleaved; at
# 16 x 16 the break-even lay between 4 and 8 million).
SERIAL_WORK = 1 << 22
# What moving one element in a transpose costs, in multiply-adds' worth of time (about two
# cycles, in which a core's vector units do about 32).
TRANSPOSE_WORK = 32


def threads_for(work: int) -> int:
    """Threads for a kernel call of ``work`` multiply-adds: ``torch.get_num_threads()``, or
    1 below SERIAL_WORK. A call's floats do not depend on how many threads run it."""
    return torch.get_num_threads() if work >= SERIAL_WORK else 1


def is_available(x: Tensor) -> bool:
    """Whether the kernels run on ``x``: a float32 CPU tensor, a CPU with AVX-512 or AVX2, the
    kernels built, and ``DRCONV_CPU_KERNEL`` not ``0``."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32
            and os.environ.get(SWITCH, '1') != '0' and instruction_set() is not None
            and library() is not None)


def explicit_source(filters: Tensor, shared: bool = False) -> FilterSource:
    """The source of explicit filters, read where they lie.

    Args:
        filters (Tensor[B, m, C_out, C_in, kh, kw] or, ``shared`` by the samples,
            Tensor[m, C_out, C_in, kh, kw]): any strides; copied only when its (sample, region)
            or its (kh, kw) dims cannot be read as one dim each.
    """
    if shared:
        filters = filters.unsqueeze(0)
    b, m, _, _, kh, kw = filters.shape
    s = filters.stride()
    if (b > 1 and m > 1 and s[0] != m * s[1]) or (kh > 1 and kw > 1 and s[4] != kw * s[5]):
        filters = filters.contiguous()
        s = filters.stride()
    source = FilterSource(filters=filters.data_ptr(), shared=int(shared),
                          group_stride=s[1] if m > 1 else s[0], out_stride=s[2],
                          tap_stride=s[5] if kw > 1 else s[4], in_stride=s[3])
    source.tensors, source.regions = (filters,), m
    return source


def factored_source(f: Factors) -> FilterSource:
    """The source of factored filters: :class:`Factors`, float32, with ``weight`` as
    (C_out, kh, kw, C_in) in memory and the others contiguous."""
    if not f.weight.permute(0, 2, 3, 1).is_contiguous():
        raise ValueError('factored_source: weight must lie as (C_out, kh, kw, C_in)')
    source = FilterSource(
        weight=f.weight.data_ptr(), bias=f.bias.data_ptr() if f.bias is not None else None,
        terms=f.terms.data_ptr(), coef=f.coef.data_ptr(), n_terms=f.terms.shape[1],
        terms_by_region=int(f.terms.shape[0] > 1), terms_by_tap=int(f.terms.dim() == 6),
        coef_by_tap=int(f.coef.shape[-1] > 1))
    source.tensors = tuple(f)
    return source


def channels_last_rows(t: Tensor, name: Optional[str], threads: int) -> Tensor:
    """``t`` (B, C, H, W) as a contiguous (B, H, W, C) tensor: a view when ``t`` is laid out so,
    else a copy into the scratch buffer ``name`` (None: memory of its own), transposed here (4x
    faster than torch's)."""
    rows = t.permute(0, 2, 3, 1)
    if rows.is_contiguous():
        return rows
    t = t.contiguous()
    rows = (t.new_empty(rows.shape) if name is None else
            scratch(name, t.numel(), t).view(rows.shape))
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


class SortedInput(NamedTuple):
    """x as the kernels read it and the output pixels in group order (:func:`sort_input`).

    Attributes:
        rows (Tensor[B, H, W, C_in]): x's rows (given to :func:`backward`: None where the
            forward's were scratch, and the backward then transposes x again).
        order, starts (Tensor): as :func:`sort_by_group` gives them.
    """

    rows: Optional[Tensor]
    order: Tensor
    starts: Tensor


def sort_input(x: Tensor, region: Tensor, regions: int, keep: bool = False) -> SortedInput:
    """x's rows and its output pixels sorted by group, for :func:`forward` and, when ``keep``,
    also for :func:`backward` (the rows then in memory of their own, not in scratch: the
    backward needs not transpose x again).

    Args:
        x (Tensor[B, C_in, H, W]): input, float32 on CPU, any memory format.
        region (Tensor[B, L]): region of each output pixel.
        regions (int): m.
    """
    # else in the scratch the PyTorch backward gathers patches into, not in one of its own: a
    # 1x1 layer's backward, which reads x's columns, would otherwise keep 4 MiB more at the
    # target
    rows = channels_last_rows(x, None if keep else 'patches',
                              threads_for(x.numel() * TRANSPOSE_WORK))
    return SortedInput(rows, *sort_by_group(region, regions))


def shape_of(x: Tensor, regions: int, c_out: int, out_size: Tuple[int, int],
             geo: Geometry) -> Tensor:
    """The kernels' geometry argument."""
    b, c_in, h, w = x.shape
    return torch.tensor([b, regions, c_in, h, w, c_out, *out_size, *geo.kernel, *geo.stride,
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


def region_of(guide: Tensor) -> Tensor:
    """Each pixel's region, the first of its largest guide logits (NaN the largest, as torch's
    max): guide (B, m, H_out, W_out), float32 -> (B, L) int64."""
    b, m = guide.shape[:2]
    guide = guide.contiguous()
    region = torch.empty(b, guide[0, 0].numel(), dtype=torch.int64)
    library().drconv_region_of(guide.data_ptr(), b, m, region.shape[1], region.data_ptr())
    return region


def shifted_sum(taps: Tensor, bias: Optional[Tensor], out_size: Tuple[int, int],
                geo: Geometry) -> Tensor:
    """The guide conv's sum of shifted taps with the kernel, the same floats as
    :func:`drconv.guide_conv.shifted_sum_conv2d`'s PyTorch path.

    Args:
        taps (Tensor[B, kh, kw, m, H, W]): every tap's 1x1 products, float32, contiguous.
        bias (Tensor[m]): added last, if given.
        out_size (Tuple[int, int]): (H_out, W_out).
        geo (Geometry): kernel, stride, padding, dilation.

    Returns:
        Tensor[B, m, H_out, W_out]: ``out[b, r, oh, ow]``, the sum over taps (i, j) of
        ``taps[b, i, j, r, oh * sh + i * dh - ph, ow * sw + j * dw - pw]`` (zero outside x),
        plus ``bias[r]``.
    """
    b, kh, kw, m, h, w = taps.shape
    out = taps.new_empty(b, m, *out_size)
    shape = torch.tensor([b, kh, kw, m, h, w, *out_size, *geo.stride, *geo.padding,
                          *geo.dilation], dtype=torch.int64)
    bias = bias.contiguous() if bias is not None else None  # referenced: a pointer
    library().drconv_shifted_sum_f32(taps.data_ptr(), bias.data_ptr() if bias is not None
                                     else None, out.data_ptr(), shape.data_ptr(),
                                     threads_for(taps.numel()))
    return out


def pointwise_guide_backward(grad: Tensor, x: Tensor, weight: Tensor, need_x: bool,
                             need_weight: bool, need_bias: bool
                             ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """The gradients of x, weight and bias (None where not needed) of a 1x1 guide conv at
    stride 1 without padding, ``F.conv2d(x, weight, bias)``, each summed in an order that no
    thread count changes.

    Args:
        grad (Tensor[B, m, H, W]): the logits' gradient.
        x (Tensor[B, C_in, H, W]): float32, contiguous.
        weight (Tensor[m, C_in, 1, 1]): the guide's filters.
    """
    b, c_in, h, w = x.shape
    m = weight.shape[0]
    grad = grad.contiguous()  # referenced: pointers
    weight = weight.contiguous()
    grad_x = x.new_empty(x.shape) if need_x else None
    grad_weight = weight.new_empty(weight.shape) if need_weight else None
    grad_bias = weight.new_empty(m) if need_bias else None
    check(library().drconv_pointwise_guide_backward_f32(
        *(t.data_ptr() if t is not None else None
          for t in (x, weight, grad, grad_x, grad_weight, grad_bias)),
        b, c_in, m, h * w, threads_for(2 * x.numel() * m)), "guide conv's backward")
    return grad_x, grad_weight, grad_bias


def adaptive_avg_pool(x: Tensor, out_size: Tuple[int, int]) -> Tensor:
    """``F.adaptive_avg_pool2d(x, out_size)`` of a contiguous x (B, C, H, W), float32: the same
    floats as torch's CPU kernel, 8 planes' sums side by side -> (B, C, *out_size)."""
    b, c, h, w = x.shape
    out = x.new_empty(b, c, *out_size)
    library().drconv_adaptive_avg_pool_f32(x.data_ptr(), out.data_ptr(), b * c, h, w, *out_size,
                                           threads_for(x.numel()))
    return out


def forward(x: Tensor, source: FilterSource, regions: int, c_out: int, region: Tensor,
            out_size: Tuple[int, int], geo: Geometry, bias: Optional[Tensor] = None,
            responses: Optional[Tensor] = None,
            sorted_x: Optional[SortedInput] = None) -> Tensor:
    """Selected-filter convolution with the kernel.

    Args:
        x (Tensor[B, C_in, H, W]): input, float32 on CPU, any memory format.
        source (FilterSource): the region filters (:func:`explicit_source` of
            Tensor[B, m, C_out, K], K ordered (kh, kw, C_in), or :func:`factored_source`).
        regions, c_out (int): m and C_out.
        region (Tensor[B, L]): region of each output pixel, L = H_out * W_out.
        out_size (Tuple[int, int]): (H_out, W_out).
        geo (Geometry): kernel, stride, padding, dilation.
        bias (Tensor[C_out]): added to the output, if given.
        responses (Tensor[B * L, C_out]): contiguous, if given: filled with the output without
            the bias, for :func:`backward`'s scores.
        sorted_x (SortedInput): :func:`sort_input` of x and region, if made already.

    Returns:
        Tensor[B, C_out, H_out, W_out]: the output, in the memory format of x.
    """
    b = x.shape[0]
    threads = threads_for(multiply_adds(x, c_out, out_size, geo))
    x_rows, order, starts = sorted_x or sort_input(x, region, regions)
    # the output itself when channels-last, else rows transposed at the end: faster than
    # storing each result to its NCHW place
    out_rows = (torch.empty(b, *out_size, c_out) if channels_last(x) else
                scratch('result_rows', b * out_size[0] * out_size[1] * c_out, x)
                .view(b, *out_size, c_out))
    shape = shape_of(x, regions, c_out, out_size, geo)
    bias = bias.contiguous() if bias is not None else None  # referenced: a pointer
    check(library().drconv_region_forward_f32(
        x_rows.data_ptr(), source, order.data_ptr(), starts.data_ptr(),
        bias.data_ptr() if bias is not None else None, out_rows.data_ptr(),
        responses.data_ptr() if responses is not None else None, shape.data_ptr(), threads),
        'forward')
    return from_channels_last_rows(out_rows, x, threads)


def scores_from_responses(geo: Geometry, c_in: int, c_out: int) -> bool:
    """Whether :func:`backward` makes the scores as response times output gradient (K > C_out,
    the kernels' choice), where the forward's responses give each pixel's own region's."""
    return w_numel(geo, c_in) > c_out


def factor_grad_rows(c_out: int, threads: int) -> int:
    """Output channels per block of the factored filter gradient (the coefficients' gradient is
    summed per block, then over the blocks): about three blocks per thread, in whole register
    tiles (12 rows). The kernel's work items are runs of consecutive blocks."""
    per_item = -(-c_out // (3 * threads))
    return -(-per_item // 12) * 12


class Backward(NamedTuple):
    """What :func:`backward` returns, None where not asked for.

    Attributes:
        grad_x (Tensor[B, C_in, H, W]): in the memory format of x.
        grad_filters (Tensor[B, m, C_out, K] or Factors): of explicit filters, or of each factor
            (a factor's gradient is None when the factor is).
        scores (Tensor[B, L, m]): ``scores[b, p, j] = <dL/dy_p, (W[b, j] * x)_p>``, what the
            exact guide gradient is made of.
    """

    grad_x: Optional[Tensor]
    grad_filters: Optional[object]
    scores: Optional[Tensor]


def stand_in_starts(starts: Tensor, regions: int, stand_ins: int) -> Tensor:
    """Group offsets (B * stand_ins + 1) that put every pixel of a sample in its first
    stand-in region, from the offsets of its ``regions`` groups (B * regions + 1)."""
    sample_starts = starts[::regions]  # (B + 1)
    ends = sample_starts[1:, None].expand(-1, stand_ins - 1)
    return torch.cat([torch.cat([sample_starts[:-1, None], ends], 1).reshape(-1),
                      sample_starts[-1:]])


def backward(grad_out: Tensor, x: Tensor, source: FilterSource, regions: int, region: Tensor,
             geo: Geometry, need_input: bool, need_filters: bool, need_scores: bool,
             factors: Optional[Factors] = None, score_source: Optional[FilterSource] = None,
             responses: Optional[Tensor] = None,
             sorted_x: Optional[SortedInput] = None) -> Backward:
    """The gradients of x and of the filters, and every region's scores, with the kernels.

    Args:
        grad_out (Tensor[B, C_out, H_out, W_out]): gradient of the output.
        x, source, regions, region, geo: as in :func:`forward`.
        need_input, need_filters, need_scores (bool): whether to compute those.
        factors (Factors): the factors ``source`` was made of, if it was: the filters'
            gradient is then each factor's.
        score_source (FilterSource): stand-in filters shared by the samples, (n, C_out, K),
            whose scores are computed instead of the regions' (Tensor[B, L, n]).
        responses (Tensor[B * L, C_out]): the responses :func:`forward` filled, if it did: each
            pixel's own region's score is made from them (with ``score_source``: in the first
            stand-in's place, which is not computed), the others' as response times output
            gradient (given where :func:`scores_from_responses`, or with ``score_source``).
        sorted_x (SortedInput): the forward's, if it kept it (with or without x's rows).
    """
    b, c_in, h, w = x.shape
    c_out = grad_out.shape[1]
    out_size = tuple(grad_out.shape[2:])
    threads = threads_for(multiply_adds(x, c_out, out_size, geo))
    lib = library()
    grad_rows = channels_last_rows(grad_out, 'grad_rows', threads)
    x_rows, order, starts = sorted_x or (None, *sort_by_group(region, regions))
    if x_rows is None and (need_filters or need_scores):
        x_rows = channels_last_rows(x, 'input_rows', threads)
    shape = shape_of(x, regions, c_out, out_size, geo)
    grad_x = grad_filters = scores = None
    if need_filters and factors is None:
        grad_filters = x.new_empty(b, regions, c_out, w_numel(geo, c_in))
        check(lib.drconv_region_filter_grad_f32(
            x_rows.data_ptr(), grad_rows.data_ptr(), order.data_ptr(), starts.data_ptr(),
            grad_filters.data_ptr(), shape.data_ptr(), threads), 'filter gradient')
    elif need_filters:
        grad_filters = factor_grads(x_rows, grad_rows, order, starts, source, factors, shape,
                                    threads)
    if need_input:
        # a pointwise layer's kernels write each element once: no zeros first
        grad_x = (x.new_empty(b, h, w, c_in) if channels_last(x) else
                  scratch('result_rows', x.numel(), x).view(b, h, w, c_in))
        if not pointwise(geo):
            grad_x.zero_()
    # scores as patch gradients (K <= C_out) hold x's gradient, which a 1x1 kernel may add
    # there: no two pixels share an input pixel
    fused_x = (need_scores and need_input and geo.kernel == (1, 1) and c_in <= c_out
               and score_source is None)
    if need_scores:
        score_regions, score_starts = regions, starts
        if score_source is not None:
            score_regions = score_source.regions
            score_starts = stand_in_starts(starts, regions, score_regions)
        scores = x.new_empty(order.numel(), score_regions)  # every element written
        score_shape = shape_of(x, score_regions, c_out, out_size, geo)  # referenced: a pointer
        # with stand-ins, every pixel "in" the first: its own region's score in that one's place
        owner = region if score_source is None else torch.zeros_like(region)
        check(lib.drconv_region_scores_f32(
            x_rows.data_ptr(), score_source or source, grad_rows.data_ptr(), order.data_ptr(),
            score_starts.data_ptr(), owner.data_ptr() if responses is not None else None,
            responses.data_ptr() if responses is not None else None, scores.data_ptr(),
            grad_x.data_ptr() if fused_x else None,
            score_shape.data_ptr(), threads), 'scores')
        scores = scores.view(b, -1, score_regions)
    if need_input and not fused_x:
        check(lib.drconv_region_input_grad_f32(
            source, grad_rows.data_ptr(), order.data_ptr(), starts.data_ptr(),
            grad_x.data_ptr(), shape.data_ptr(), threads), 'input gradient')
    if need_input:
        grad_x = from_channels_last_rows(grad_x, x, threads)
    return Backward(grad_x, grad_filters, scores)


def pointwise(geo: Geometry) -> bool:
    """A 1x1 kernel at stride 1 without padding: each output pixel is its input pixel."""
    return geo.kernel == (1, 1) and geo.stride == (1, 1) and geo.padding == (0, 0)


def w_numel(geo: Geometry, c_in: int) -> int:
    """K, a filter's values per output channel."""
    return geo.kernel[0] * geo.kernel[1] * c_in


def multiply_adds(x: Tensor, c_out: int, out_size: Tuple[int, int], geo: Geometry) -> int:
    """The forward's multiply-adds, B * H_out * W_out * C_out * K, for :func:`threads_for`."""
    return x.shape[0] * out_size[0] * out_size[1] * c_out * w_numel(geo, x.shape[1])


def factor_grads(x_rows: Tensor, grad_rows: Tensor, order: Tensor, starts: Tensor,
                 source: FilterSource, factors: Factors, shape: Tensor, threads: int) -> Factors:
    """Each factor's gradient (the weight's lying as (C_out, kh, kw, C_in) in memory), reduced
    from every group's filter gradient in the kernel, which never holds more than a block of
    one group's."""
    c_out = factors.weight.shape[0]
    # blocks as torch's threads take them, whatever threads run the call (threads_for): the
    # coefficients' gradient, summed block by block, then has the same floats
    rows = factor_grad_rows(c_out, torch.get_num_threads())
    blocks = -(-c_out // rows)
    # zeroed by the kernel, each part by the thread that sums into it
    grads = Factors(torch.empty_like(factors.weight),
                    None if factors.bias is None else torch.empty_like(factors.bias),
                    torch.empty_like(factors.terms),
                    factors.coef.new_empty(blocks, *factors.coef.shape))
    buffers = FactorGradBuffers(
        weight=grads.weight.data_ptr(),
        bias=grads.bias.data_ptr() if grads.bias is not None else None,
        terms=grads.terms.data_ptr(), coef_parts=grads.coef.data_ptr(), block_rows=rows)
    check(library().drconv_factored_filter_grad_f32(
        x_rows.data_ptr(), grad_rows.data_ptr(), order.data_ptr(), starts.data_ptr(), source,
        buffers, shape.data_ptr(), threads), 'factored filter gradient')
    return grads._replace(coef=grads.coef.sum(0))

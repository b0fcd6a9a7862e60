"""A batch's output pixels as rows sorted by (sample, region), and the two ways the GEMMs
take them.

Every output pixel of the batch is a row. Rows are sorted by group ``g = sample * m + region``
(one stable sort for the whole batch), so each group owns one contiguous run of rows and is
multiplied by its own filter. :func:`spans` cuts the sorted rows into spans of one sample and
bounded size, one GEMM per group in each; :func:`balanced_blocks` lays a sample whose groups
are balanced out as m blocks of equal length, for one batched GEMM, and :func:`runs` groups
consecutive such samples so that the forward gathers and puts back their rows in one operation
each (each large operation is a parallel region, and on a shared VM each can wait for a
descheduled thread).
"""
from typing import AbstractSet, Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

# A sample's m groups are multiplied in one batched GEMM, each group padded to the largest
# (:class:`Blocks`), when that pads the work by at most BATCH_PADDING and the padded patches
# have at most BATCH_ELEMENTS elements; else one GEMM per group. m short GEMMs are m parallel
# regions, and on a shared VM each can wait on a descheduled thread: measured in one process
# over 90 s, the batched forward took 21.3 vs 22.5 ms (k=3) while the machine was quiet and
# 23.2 vs 30.7 ms while it was not. BATCH_ELEMENTS also bounds a :func:`runs` of samples.
BATCH_PADDING = 1.3
BATCH_ELEMENTS = 1 << 21


class SortedRows(NamedTuple):
    """A batch's output pixels sorted by group ``g = sample * m + region``.

    ``order`` (Tensor[B * L]): flat pixel ``b * L + p`` of each sorted row; ``ends`` (List[int],
    B * m entries): the end of each group's rows.
    """

    order: Tensor
    ends: List[int]


def sort_by_region(region: Tensor, num_regions: int) -> SortedRows:
    """Sort the pixels of ``region`` (Tensor[B, L]: region of each output pixel) by group."""
    b, l = region.shape
    group = (region + torch.arange(b, device=region.device)[:, None] * num_regions).view(-1)
    order = torch.argsort(group, stable=True)
    ends = torch.bincount(group, minlength=b * num_regions).cumsum(0).tolist()
    return SortedRows(order, ends)


class Span(NamedTuple):
    """Sorted rows ``lo:hi`` and their groups: ``segments`` lists ``(group, a, b)``, rows
    ``lo + a : lo + b`` belong to ``group``."""

    lo: int
    hi: int
    segments: List[Tuple[int, int, int]]


def spans(ends: List[int], max_rows: int, regions: Optional[int] = None,
          skip: AbstractSet[int] = frozenset()) -> Iterator[Span]:
    """Cut the sorted rows (group ends ``ends``) into spans of at most ``max_rows``.

    With ``regions`` (m), spans are also cut where a sample's rows end, so each holds one sample,
    and a sample's rows are split into spans of equal length; the samples in ``skip`` get none.
    """
    total = ends[-1]
    stops = ends[regions - 1::regions] if regions else [total]
    g, start = 0, 0
    for sample, stop in enumerate(stops):
        if sample in skip:
            start = stop
            continue
        step = max_rows
        if regions:
            pieces = -(-(stop - start) // max_rows)
            step = -(-(stop - start) // max(pieces, 1))
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            segments = []
            while g < len(ends) and ends[g] <= lo:
                g += 1
            for group in range(g, len(ends)):
                first = ends[group - 1] if group else 0
                if first >= hi:
                    break
                if ends[group] > first:
                    segments.append((group, max(first, lo) - lo, min(ends[group], hi) - lo))
            yield Span(lo, hi, segments)
        start = stop


class Blocks(NamedTuple):
    """Samples whose sorted rows are laid out as m blocks of equal length, group j's rows first
    in block j and padding after them, so that one batched GEMM multiplies all their groups.

    ``samples`` (List[int]): the samples laid out so; ``widths`` (List[int], every sample):
    m times its largest group; ``slot`` (Tensor[B * L]): the row of each sorted row in its
    sample's blocks; ``pixel_slot`` (Tensor[B * L]): the same for each output pixel
    ``b * L + p``.
    """

    samples: List[int]
    widths: List[int]
    slot: Optional[Tensor]
    pixel_slot: Optional[Tensor]


def balanced_blocks(order: Tensor, ends: List[int], regions: int, k: int) -> Blocks:
    """Lay out the samples whose groups are balanced enough (BATCH_PADDING, BATCH_ELEMENTS;
    ``k`` patch elements per row) as :class:`Blocks`."""
    m = regions
    b = len(ends) // m
    l = order.numel() // b
    counts = torch.tensor(ends).diff(prepend=torch.zeros(1, dtype=torch.long)).view(b, m)
    longest = counts.max(1).values
    widths = (longest * m).tolist()
    samples = [s for s, width in enumerate(widths)
               if width <= BATCH_PADDING * l and width * k <= BATCH_ELEMENTS]
    if not samples:
        return Blocks(samples, widths, None, None)
    shift = torch.arange(m) * longest[:, None] - (counts.cumsum(1) - counts)  # (B, m)
    slot = torch.arange(l).repeat(b) + shift.view(-1).repeat_interleave(
        counts.view(-1), output_size=b * l)
    slot = slot.to(order.device)
    return Blocks(samples, widths, slot, torch.empty_like(order).index_copy_(0, order, slot))


class RowLayout(NamedTuple):
    """A batch's output pixels as the GEMMs take them: ``rows`` (:class:`SortedRows`) and
    ``blocks`` (:class:`Blocks`), computed once per forward and kept for the backward."""

    rows: SortedRows
    blocks: Blocks


def row_layout(region: Tensor, num_regions: int, k: int) -> RowLayout:
    """:func:`sort_by_region` and :func:`balanced_blocks` of ``region`` (Tensor[B, L]) for
    ``k`` patch elements per row."""
    rows = sort_by_region(region, num_regions)
    return RowLayout(rows, balanced_blocks(rows.order, rows.ends, num_regions, k))


def runs(blocks: Blocks, row_elements: int) -> Iterator[Tuple[range, int]]:
    """Cut the samples of ``blocks`` into runs of consecutive samples done together, each
    sample's blocks padded to the run's widest, with at most BATCH_ELEMENTS elements in a run
    (``row_elements`` per row). Yields ``(samples, width)``."""
    run: List[int] = []
    width = 0
    for s in blocks.samples:
        wider = max(width, blocks.widths[s])
        if run and (s != run[-1] + 1 or (len(run) + 1) * wider * row_elements > BATCH_ELEMENTS):
            yield range(run[0], run[-1] + 1), width
            run, wider = [], blocks.widths[s]
        run.append(s)
        width = wider
    if run:
        yield range(run[0], run[-1] + 1), width


def in_run(slot: Tensor, samples: int, width: int) -> Tensor:
    """Rows in the samples' :class:`Blocks` (``slot`` or ``pixel_slot`` of n consecutive
    samples, (n * L)) as rows of their run, each sample's blocks ``width`` rows after the
    previous one's: (n * L)."""
    step = torch.arange(0, samples * width, width, device=slot.device)
    return (slot.view(samples, -1) + step[:, None]).view(-1)

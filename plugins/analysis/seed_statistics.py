"""Statistics over training seeds for ``compare.py``: mean and spread of an arm, and the
difference of two arms paired by seed with a Student t confidence interval."""
import math
import statistics
from typing import Dict, Mapping, Optional

from scipy import stats


def mean_std(values) -> Dict[str, Optional[float]]:
    """``mean`` and sample ``std`` (n - 1 in the denominator; None for one value)."""
    values = list(values)
    return dict(mean=statistics.fmean(values),
                std=statistics.stdev(values) if len(values) > 1 else None)


def paired_difference(first: Mapping[int, float], other: Mapping[int, float],
                      confidence: float = 0.95) -> Optional[Dict[str, object]]:
    """``other - first`` over the seeds both have: mean, std and a t-interval of the mean.

    The interval is ``mean +- t_{(1 + confidence) / 2, n - 1} * std / sqrt(n)`` (None with
    fewer than two seeds). Returns None when no seed is shared.
    """
    seeds = sorted(set(first) & set(other))
    if not seeds:
        return None
    diffs = [other[s] - first[s] for s in seeds]
    result = dict(seeds=seeds, values=diffs, confidence=confidence, **mean_std(diffs),
                  ci=None)
    if len(diffs) > 1:
        half = stats.t.ppf((1 + confidence) / 2, len(diffs) - 1) * result['std'] / \
            math.sqrt(len(diffs))
        result['ci'] = [result['mean'] - half, result['mean'] + half]
    return result

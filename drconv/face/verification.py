"""Face verification accuracy as insightface reports it (LFW protocol), and TAR@FAR.

Pairs are consecutive rows: pair ``i`` compares ``embeddings[2i]`` with ``embeddings[2i+1]``.
The protocol of insightface's ``eval/verification.py`` (after FaceNet's ``lfw.py``):

1. L2-normalise every embedding; the distance of a pair is the squared L2 distance (0..4).
2. Split the pairs into ``num_folds`` consecutive folds, in order, without shuffling (the first
   ``n % num_folds`` folds hold one pair more, as sklearn's ``KFold`` does).
3. For each fold: on the other folds pick the threshold (``0, 0.01, ..., 3.99``) with the best
   accuracy (first one on ties), predict "same" for distances ``< threshold`` on the held-out
   fold, and score it. Report mean and std of the fold accuracies.

TAR@FAR is computed without interpolation: the threshold of a fold is the largest one whose
false-accept rate on the other folds stays at or below the target, found from the sorted
distances directly (insightface's ``calculate_val`` interpolates ``far -> threshold`` with scipy,
which raises on current scipy when several thresholds share one FAR).
"""
from typing import Iterator, Sequence, Tuple

import numpy as np

LFW_THRESHOLDS = np.arange(0, 4, 0.01)


def _as_pairs(embeddings, issame) -> Tuple[np.ndarray, np.ndarray]:
    """Returns (squared distances of the pairs, issame as bool) after checking the shapes."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool).ravel()
    if embeddings.ndim != 2:
        raise ValueError(f'embeddings must be (2N, D), got shape {embeddings.shape}')
    if embeddings.shape[0] != 2 * issame.size:
        raise ValueError(f'{embeddings.shape[0]} embeddings for {issame.size} pairs: '
                         'expected exactly 2 per pair (rows 2i and 2i+1)')
    if issame.size == 0:
        raise ValueError('no pairs to evaluate')
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    embeddings = embeddings / np.maximum(norms, 1e-12)
    diff = embeddings[0::2] - embeddings[1::2]
    return np.sum(diff * diff, axis=1), issame


def consecutive_folds(num_items: int, num_folds: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yields ``(train_indices, test_indices)`` like ``sklearn.model_selection.KFold(shuffle=False)``.

    With ``num_folds == 1`` the single fold trains and tests on everything (insightface's LFold).
    """
    indices = np.arange(num_items)
    if num_folds == 1:
        yield indices, indices
        return
    if not 2 <= num_folds <= num_items:
        raise ValueError(f'num_folds must be in [2, {num_items}] (or 1), got {num_folds}')
    sizes = np.full(num_folds, num_items // num_folds)
    sizes[:num_items % num_folds] += 1
    start = 0
    for size in sizes:
        test = indices[start:start + size]
        train = np.concatenate([indices[:start], indices[start + size:]])
        start += size
        yield train, test


def _accuracies(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of "same if dist < t" for every threshold t (vectorised)."""
    predict = dist[None, :] < thresholds[:, None]
    return np.mean(predict == issame[None, :], axis=1)


def verification_accuracy(embeddings, issame: Sequence[bool], num_folds: int = 10,
                          thresholds=None) -> Tuple[float, float]:
    """Verification accuracy with insightface's 10-fold LFW protocol.

    Args:
        embeddings (array[2N, D]): Pair ``i`` is rows ``2i`` and ``2i+1``; normalised inside.
        issame (Sequence[bool]): ``N`` flags, True where the pair shows one identity.
        num_folds (int): Consecutive folds, not shuffled. Default: 10.
        thresholds (array, optional): Candidate squared-distance thresholds. Default:
            ``np.arange(0, 4, 0.01)``.

    Returns:
        tuple[float, float]: Mean and standard deviation of the held-out fold accuracies.
    """
    dist, issame = _as_pairs(embeddings, issame)
    thresholds = LFW_THRESHOLDS if thresholds is None else np.asarray(thresholds, np.float64)
    fold_acc = []
    for train, test in consecutive_folds(issame.size, num_folds):
        best = thresholds[np.argmax(_accuracies(dist[train], issame[train], thresholds))]
        fold_acc.append(np.mean((dist[test] < best) == issame[test]))
    fold_acc = np.asarray(fold_acc)
    return float(fold_acc.mean()), float(fold_acc.std())


def _threshold_at_far(dist: np.ndarray, issame: np.ndarray, far_target: float) -> float:
    """Largest threshold t with FAR(dist < t) <= far_target on these pairs.

    Only impostor distances can raise the FAR, so t is the k-th smallest impostor distance with
    ``k = floor(far_target * n_impostors)`` (everything strictly below it is accepted: at most
    ``k`` impostors, ties included). With no impostor pairs every pair is accepted.
    """
    impostor = np.sort(dist[~issame])
    if impostor.size == 0:
        return np.inf
    k = int(np.floor(far_target * impostor.size + 1e-9))
    if k >= impostor.size:
        return np.inf
    return float(impostor[k])


def tar_at_far(embeddings, issame: Sequence[bool], far_target: float = 1e-3,
               num_folds: int = 10) -> Tuple[float, float, float]:
    """True-accept rate at a false-accept rate, per fold as insightface's VAL@FAR.

    The threshold of each fold is chosen on the other folds (the largest one whose FAR there is
    ``<= far_target``) and applied to the held-out fold. Repeated distances are fine.

    Args:
        embeddings (array[2N, D]): As for :func:`verification_accuracy`.
        issame (Sequence[bool]): ``N`` pair flags.
        far_target (float): Target false-accept rate. Default: 1e-3.
        num_folds (int): Consecutive folds. Default: 10.

    Returns:
        tuple[float, float, float]: Mean TAR, its std over folds, and the mean FAR reached.
    """
    dist, issame = _as_pairs(embeddings, issame)
    tars, fars = [], []
    for train, test in consecutive_folds(issame.size, num_folds):
        threshold = _threshold_at_far(dist[train], issame[train], far_target)
        accept = dist[test] < threshold
        same, diff = issame[test], ~issame[test]
        tars.append(accept[same].mean() if same.any() else 0.0)
        fars.append(accept[diff].mean() if diff.any() else 0.0)
    return float(np.mean(tars)), float(np.std(tars)), float(np.mean(fars))


def threshold_fold_impostors(issame: Sequence[bool], num_folds: int = 10) -> int:
    """Fewest impostor pairs among the folds' threshold-picking splits (the other folds).

    A TAR@FAR threshold can only hold a FAR that is a multiple of ``1 / impostors`` there: with
    fewer than ``1 / far_target`` impostor pairs (1000 for FAR=1e-3), :func:`tar_at_far` picks
    the threshold at FAR 0, and its TAR is the TAR at FAR 0.
    """
    issame = np.asarray(issame, dtype=bool).ravel()
    folds = consecutive_folds(issame.size, num_folds)
    return int(min((~issame[train]).sum() for train, _ in folds))

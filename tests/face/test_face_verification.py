"""verification_accuracy against a direct transcription of insightface's LFW protocol."""
import numpy as np
import pytest

from drconv.face import tar_at_far, verification_accuracy


def reference_accuracy(embeddings, issame, nfolds=10):
    """insightface eval/verification.py calculate_roc, written out with loops."""
    emb = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    dist = np.sum((emb[0::2] - emb[1::2])**2, 1)
    issame = np.asarray(issame)
    n = len(issame)
    thresholds = np.arange(0, 4, 0.01)
    # sklearn KFold(shuffle=False): the first n % k folds get one extra item
    sizes = [n // nfolds + (1 if i < n % nfolds else 0) for i in range(nfolds)]
    bounds = np.cumsum([0] + sizes)
    accs = []
    for f in range(nfolds):
        test = np.arange(bounds[f], bounds[f + 1])
        train = np.setdiff1d(np.arange(n), test)
        best_acc, best_t = -1, None
        for t in thresholds:
            acc = np.mean(np.less(dist[train], t) == issame[train])
            if acc > best_acc:
                best_acc, best_t = acc, t
        accs.append(np.mean(np.less(dist[test], best_t) == issame[test]))
    return np.mean(accs), np.std(accs)


@pytest.mark.parametrize('num_pairs', [100, 103])
def test_matches_reference(num_pairs):
    rng = np.random.default_rng(num_pairs)
    issame = rng.random(num_pairs) < 0.5
    base = rng.normal(size=(num_pairs, 16))
    other = np.where(issame[:, None], base + rng.normal(scale=0.9, size=base.shape),
                     rng.normal(size=base.shape))
    emb = np.empty((2 * num_pairs, 16))
    emb[0::2], emb[1::2] = base * rng.uniform(0.5, 3), other  # scale: normalised inside
    acc, std = verification_accuracy(emb, issame)
    ref_acc, ref_std = reference_accuracy(emb, issame)
    assert 0.6 < acc < 1.0
    assert acc == pytest.approx(ref_acc, abs=1e-12)
    assert std == pytest.approx(ref_std, abs=1e-12)


def test_crafted_perfect_and_order_dependent_folds():
    # identical embeddings for same pairs, orthogonal for different: every fold is perfect
    issame = [True, False] * 10
    emb = []
    for k, same in enumerate(issame):
        a = np.eye(4)[k % 4]
        emb += [a, a if same else np.eye(4)[(k + 1) % 4]]
    assert verification_accuracy(np.stack(emb), issame) == (1.0, 0.0)
    with pytest.raises(ValueError, match='2 per pair'):
        verification_accuracy(np.stack(emb)[:-1], issame)


def test_tar_at_far_with_repeated_distances():
    # all impostor distances equal (insightface's interp1d raises on such data)
    issame = [True, False] * 500
    same = np.array([1.0, 0.0])
    emb = []
    for k, s in enumerate(issame):
        emb += [same, same if s else np.array([0.0, 1.0])]
    tar, std, far = tar_at_far(np.stack(emb), issame)
    assert tar == 1.0 and far == 0.0

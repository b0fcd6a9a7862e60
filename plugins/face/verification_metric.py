"""``VerificationMetric``: insightface's LFW-protocol accuracy on ``.bin`` sets, for mmengine."""
from collections import defaultdict
from typing import Any, Dict, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MessageHub, print_log

from drconv.face.verification import tar_at_far, verification_accuracy
from ..registry import METRICS


def training_step() -> Optional[int]:
    """Training iterations done so far (arcface_torch's ``global_step``), or None outside training.

    mmengine's message hub holds ``iter``, the index of the training iteration in progress or
    last done; validation runs after it, so the iterations done are ``iter + 1``.
    """
    last = MessageHub.get_current_instance().get_info('iter')
    return None if last is None else int(last) + 1


@METRICS.register_module()
class VerificationMetric(BaseMetric):
    """Verification accuracy per ``.bin`` set, from :class:`FaceRecognizer` predictions.

    The embedding of an image is ``normalize(emb + emb_flipped)`` when the model gives the
    flipped one (flip test-time augmentation, as insightface's ``Accuracy-Flip``), else
    ``normalize(emb)``. Per set it reports ``<set>/accuracy`` and ``<set>/std`` (10-fold),
    ``<set>/xnorm`` (mean L2 norm of the raw embeddings, flipped ones included),
    ``<set>/tar@far1e-3`` and ``<set>/far``, the false-accept rate that TAR's thresholds give on
    the held-out folds (with fewer than 1000 impostor pairs in the other folds the threshold
    sits at FAR 0 there, see :func:`drconv.face.threshold_fold_impostors`).

    It logs arcface_torch's verification lines, tagged with the training iteration when it
    runs inside training: ``[lfw][2000]XNorm``, ``[lfw][2000]Accuracy-Flip: 0.99500+-0.00500``
    and ``[lfw][2000]Accuracy-Highest``, the best Accuracy-Flip this metric has seen on the set.

    Args:
        num_folds (int): Folds of the protocol. Default: 10.
        far_target (float): FAR of the TAR@FAR entry. Default: 1e-3.
    """

    default_prefix: Optional[str] = ''  # keys are '<set>/accuracy', no prefix

    def __init__(self, num_folds: int = 10, far_target: float = 1e-3,
                 collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.num_folds = num_folds
        self.far_target = far_target
        exponent = np.log10(far_target)
        self._tar_key = (f'tar@far1e{int(round(exponent))}' if abs(exponent - round(exponent)) < 1e-9
                         else f'tar@far{far_target:g}')
        self.highest: Dict[str, float] = {}  # best accuracy per set, as arcface_torch logs it

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            emb = np.asarray(sample['pred_embedding'].float().cpu(), dtype=np.float64)
            flip = sample.get('pred_embedding_flip')
            flip = None if flip is None else np.asarray(flip.float().cpu(), dtype=np.float64)
            self.results.append(dict(set_name=sample.get('set_name', 'verification'),
                                     index=int(sample['sample_idx']),
                                     issame=bool(sample['issame']), emb=emb, flip=flip))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        by_set = defaultdict(dict)
        for r in results:
            by_set[r['set_name']][r['index']] = r  # de-duplicates distributed padding
        metrics = {}
        step = training_step()
        for name, items in by_set.items():
            n = len(items)
            if sorted(items) != list(range(n)) or n % 2:
                raise ValueError(f'{name}: predictions for images {min(items)}..{max(items)} '
                                 f'({n} images) do not form complete pairs')
            rows = [items[i] for i in range(n)]
            raw = [r['emb'] for r in rows] + [r['flip'] for r in rows if r['flip'] is not None]
            xnorm = float(np.mean(np.linalg.norm(np.stack(raw), axis=1)))
            emb = np.stack([r['emb'] + (r['flip'] if r['flip'] is not None else 0.0)
                            for r in rows])
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            issame = [rows[2 * i]['issame'] for i in range(n // 2)]
            folds = min(self.num_folds, n // 2)
            acc, std = verification_accuracy(emb, issame, num_folds=folds)
            tar, _, far = tar_at_far(emb, issame, self.far_target, num_folds=folds)
            self.highest[name] = max(self.highest.get(name, 0.0), acc)
            tag = f'[{name}]' if step is None else f'[{name}][{step}]'
            print_log(f'{tag}XNorm: {xnorm:f}', logger='current')
            print_log(f'{tag}Accuracy-Flip: {acc:1.5f}+-{std:1.5f}', logger='current')
            print_log(f'{tag}Accuracy-Highest: {self.highest[name]:1.5f}', logger='current')
            metrics.update({f'{name}/accuracy': acc, f'{name}/std': std,
                            f'{name}/xnorm': xnorm, f'{name}/{self._tar_key}': tar,
                            f'{name}/far': far})
        return metrics

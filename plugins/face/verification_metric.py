"""``VerificationMetric``: insightface's LFW-protocol accuracy on ``.bin`` sets, for mmengine."""
from collections import defaultdict
from typing import Any, Dict, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from drconv.face.verification import tar_at_far, verification_accuracy
from ..registry import METRICS


@METRICS.register_module()
class VerificationMetric(BaseMetric):
    """Verification accuracy per ``.bin`` set, from :class:`FaceRecognizer` predictions.

    The embedding of an image is ``normalize(emb + emb_flipped)`` when the model gives the
    flipped one (flip test-time augmentation, as insightface's ``Accuracy-Flip``), else
    ``normalize(emb)``. Per set it reports ``<set>/accuracy`` and ``<set>/std`` (10-fold),
    ``<set>/xnorm`` (mean L2 norm of the raw embeddings, flipped ones included) and
    ``<set>/tar@far1e-3``; and logs insightface's lines (``[lfw]Accuracy-Flip: ...``).

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
            tar, _, _ = tar_at_far(emb, issame, self.far_target, num_folds=folds)
            print_log(f'[{name}]XNorm: {xnorm:f}', logger='current')
            print_log(f'[{name}]Accuracy-Flip: {acc:1.5f}+-{std:1.5f}', logger='current')
            metrics.update({f'{name}/accuracy': acc, f'{name}/std': std,
                            f'{name}/xnorm': xnorm, f'{name}/{self._tar_key}': tar})
        return metrics

"""Data transforms of the face datasets; a result dict holds ``img`` (HWC uint8, BGR)."""
import random
from typing import Sequence, Union

import cv2
import numpy as np
import torch
from mmengine.structures import BaseDataElement

from ..registry import TRANSFORMS


@TRANSFORMS.register_module()
class FaceResize:
    """Resizes ``img`` to ``size`` (int or (h, w)) when it differs (bilinear)."""

    def __init__(self, size: Union[int, Sequence[int]] = 112):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, results: dict) -> dict:
        img = results['img']
        if img.shape[:2] != self.size:
            results['img'] = cv2.resize(img, self.size[::-1], interpolation=cv2.INTER_LINEAR)
        return results

    def __repr__(self):
        return f'{type(self).__name__}(size={self.size})'


@TRANSFORMS.register_module()
class FaceRandomFlip:
    """Flips ``img`` horizontally with probability ``prob`` (arcface_torch's training aug)."""

    def __init__(self, prob: float = 0.5):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f'prob must be in [0, 1], got {prob}')
        self.prob = prob

    def __call__(self, results: dict) -> dict:
        if random.random() < self.prob:
            results['img'] = np.ascontiguousarray(results['img'][:, ::-1])
            results['flip'] = True
        return results

    def __repr__(self):
        return f'{type(self).__name__}(prob={self.prob})'


@TRANSFORMS.register_module()
class PackFaceInputs:
    """Packs ``img`` as a (3, H, W) uint8 tensor and the rest as a data sample.

    ``gt_label`` becomes a tensor field of the data sample; ``meta_keys`` present in the results
    go to its metainfo (the verification set's name, image index, pair flag).
    """

    def __init__(self, meta_keys: Sequence[str] = ('sample_idx', 'set_name', 'pair_idx',
                                                   'issame', 'flip')):
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: dict) -> dict:
        img = results['img']
        if img.ndim == 2:
            img = img[:, :, None].repeat(3, axis=2)
        inputs = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        sample = BaseDataElement(
            metainfo={k: results[k] for k in self.meta_keys if k in results})
        if 'gt_label' in results:
            sample.gt_label = torch.tensor(int(results['gt_label']), dtype=torch.long)
        return dict(inputs=inputs, data_samples=sample)

    def __repr__(self):
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'

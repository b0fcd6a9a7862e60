"""Face-recognition data formats and evaluation (insightface's), without mxnet or mmengine.

Not imported by ``import drconv``; use ``import drconv.face``. Needs numpy (and OpenCV to
decode images).

- :mod:`drconv.face.recordio`: ``train.rec``/``train.idx`` with ``mxnet.recordio``'s names.
- :mod:`drconv.face.binfile`: ``.bin`` verification sets.
- :func:`verification_accuracy`, :func:`tar_at_far`: insightface's 10-fold protocol.
"""
from . import recordio
from .binfile import BinFormatError, check_bin, decode_image, load_bin, save_bin
from .recordio import RecordIOError
from .verification import (consecutive_folds, tar_at_far, threshold_fold_impostors,
                           verification_accuracy)

__all__ = [
    'recordio', 'RecordIOError', 'BinFormatError', 'load_bin', 'save_bin', 'decode_image',
    'verification_accuracy', 'tar_at_far', 'threshold_fold_impostors', 'consecutive_folds',
    'check_bin',
]

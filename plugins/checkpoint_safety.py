"""Lets torch's weights-only loading read mmengine checkpoints, and nothing more.

torch >= 2.6 loads with ``weights_only=True``: unpickling may build tensors and plain
containers only, so a checkpoint cannot run code. mmengine 0.10.7 checkpoints hold a few more
objects, in the message hub that ``resume`` restores: numeric numpy arrays and scalars, and
``HistoryBuffer``s whose state names the buffer's statistics methods (pickled as
``getattr(HistoryBuffer, 'mean')``). Importing this module allow-lists exactly those,
process-wide; ``getattr`` is allowed for those four methods only, not as the builtin. The
toolkit's tools import it (``drconv_mm`` does too, so configs' ``custom_imports`` bring it) and
keep weights-only loading on.
"""
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

# mmengine's default statistics (HistoryBuffer._set_default_statistics)
STATISTICS_METHODS = ('min', 'max', 'current', 'mean')


def history_buffer_method(owner, name: str):
    """``getattr`` as a checkpoint may call it: a default statistics method of HistoryBuffer."""
    if owner is HistoryBuffer and name in STATISTICS_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'weights-only loading: the checkpoint asks for getattr({owner!r}, {name!r}); only '
        f'HistoryBuffer.{{{", ".join(STATISTICS_METHODS)}}} are allowed')


def _numpy_globals() -> list:
    """numpy arrays and scalars of numeric dtypes (not object): their classes and rebuilders.

    The rebuilders under numpy 2's names and numpy 1's, so checkpoints of either load.
    """
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    numeric = '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']
    allowed = [np.ndarray, np.dtype] + sorted({type(np.dtype(code)) for code in numeric},
                                               key=str)
    for rebuild in (multiarray._reconstruct, multiarray.scalar):
        allowed += [(rebuild, f'numpy.{core}.multiarray.{rebuild.__name__}')
                    for core in ('core', '_core')]
    return allowed


torch.serialization.add_safe_globals(
    [HistoryBuffer, (history_buffer_method, 'builtins.getattr')] + _numpy_globals())

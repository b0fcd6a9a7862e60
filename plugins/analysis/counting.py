"""MAdds and parameters of a built model, with DRConv2d at its real cost (``complexity``).

Shared by the analysis tools (``get_flops.py``, ``compare.py``): :func:`count` prices one
model on a random batch; :func:`copy_shared_weights` gives a DRConv model its baseline's
weights first, so that a detector proposes the same boxes in both and its RoI head costs the
same (a fresh DRConv2d computes its static conv: its filter generator's delta is zero).
"""
import functools
from typing import Any, Dict, Sequence

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count

from . import complexity  # noqa: F401  DRConv2d's pricing
from . import models

DRCONV_PARTS = ('region_conv', 'guide_conv', 'filter_generator', 'region_filters')


def copy_shared_weights(model: torch.nn.Module, source: torch.nn.Module) -> bool:
    """Loads ``source``'s weights into the parameters of ``model`` that have the same names.

    Returns False (and leaves ``model`` as it was) when a shared name has another shape.
    """
    try:
        model.load_state_dict(source.state_dict(), strict=False)
    except RuntimeError:
        return False
    return True


def count(model: torch.nn.Module, batch: int, image_shape: Sequence[int]) -> Dict[str, Any]:
    """MAdds and parameters of ``model`` on a random batch; DRConv layers by part.

    Args:
        image_shape (Sequence[int]): (C, H, W) of each image before preprocessing.

    Returns a dict: ``flops`` (int), ``params``, ``pad_shape`` (the input after the data
    preprocessor), ``drconv`` (per DRConv2d name: MAdds of ``DRCONV_PARTS`` and ``total``).
    """
    model.eval()
    if models.model_family(model) == 'mmseg' and getattr(model, 'auxiliary_head', None):
        model.auxiliary_head = None  # as mmseg's get_flops.py: not part of the deployed model
    data = models.preprocess(model, models.fake_batch(model, batch, image_shape))
    forward = model.forward
    if models.model_family(model) != 'other':
        model.forward = functools.partial(forward, data_samples=data['data_samples'])
    try:
        analyzer = FlopAnalyzer(model, data['inputs'])
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with torch.no_grad():
            flops = int(analyzer.total())
        layers = {}
        for name, module in model.named_modules():
            if not hasattr(module, 'guide_conv') or not hasattr(module, 'filter_generator'):
                continue
            ops = analyzer.by_operator(name)
            layers[name] = dict(
                region_conv=int(ops['region_conv']),
                guide_conv=int(analyzer.total(f'{name}.guide_conv')),
                filter_generator=int(analyzer.total(f'{name}.filter_generator')),
                region_filters=int(ops['region_filters']),
                total=int(analyzer.total(name)))
    finally:
        if models.model_family(model) != 'other':
            model.forward = forward
    return dict(flops=flops, params=parameter_count(model)[''],
                pad_shape=tuple(data['inputs'].shape[-2:]), drconv=layers)

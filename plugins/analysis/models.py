"""Models and fake batches from configs, for the analysis tools (get_flops, benchmark_drconv).

Builds a config's model without pretrained weights (nothing is downloaded), derives its
baseline (the same config with every ``type='DRConv'`` entry removed), packs a random batch in
the layout the model's data preprocessor expects (mmdet, mmseg, or a plain tensor), and lists
the DRConv2d layers a forward pass runs, with their input shapes.
"""
import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config, ConfigDict
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope
from torch import nn

from drconv import DRConv2d


def _map_dicts(node: Any, fn) -> Any:
    """Apply ``fn`` to every dict in a nested config (dicts and lists), bottom-up."""
    if isinstance(node, dict):
        return fn({k: _map_dicts(v, fn) for k, v in node.items()})
    if isinstance(node, (list, tuple)):
        return type(node)(_map_dicts(v, fn) for v in node)
    return node


def without_drconv(model_cfg: dict) -> Tuple[dict, int]:
    """The baseline: ``model_cfg`` with each ``dict(type='DRConv', ...)`` value set to None.

    ``backbone.dcn``/``drconv`` and ``conv_cfg`` entries then fall back to the plain conv the
    base config builds; the ``stage_with_<key>`` switches next to a removed ``<key>`` (mmdet's
    ``stage_with_dcn``, the face backbones' ``stage_with_drconv``) are all turned off. Returns
    the new config and the number of entries removed.
    """
    removed = []

    def drop(d: dict) -> dict:
        for key, value in d.items():
            if isinstance(value, dict) and value.get('type') == 'DRConv':
                d[key] = None
                removed.append(key)
                switches = d.get(f'stage_with_{key}')
                if isinstance(switches, (list, tuple)):  # an existing key: no resize
                    d[f'stage_with_{key}'] = type(switches)(False for _ in switches)
        return d

    return _map_dicts(copy.deepcopy(dict(model_cfg)), drop), len(removed)


def without_pretrained(model_cfg: dict) -> dict:
    """``model_cfg`` with every ``init_cfg`` of type 'Pretrained' and every ``pretrained`` None."""

    def drop(d: dict) -> dict:
        init = d.get('init_cfg')
        if isinstance(init, dict) and init.get('type') == 'Pretrained':
            d['init_cfg'] = None
        if d.get('pretrained') is not None:
            d['pretrained'] = None
        return d

    return _map_dicts(copy.deepcopy(dict(model_cfg)), drop)


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config (its ``custom_imports`` are imported) and merge command-line overrides."""
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def build_model(cfg: Config, baseline: bool = False) -> nn.Module:
    """The config's model, on CPU, untrained (no pretrained weights), SyncBN reverted to BN.

    Args:
        cfg (Config): a full config (``model`` and ``default_scope``).
        baseline (bool): build :func:`without_drconv` of the model instead.
    """
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model_cfg = without_pretrained(cfg.model.to_dict() if hasattr(cfg.model, 'to_dict')
                                   else cfg.model)
    if baseline:
        model_cfg, _ = without_drconv(model_cfg)
    return revert_sync_batchnorm(MODELS.build(ConfigDict(model_cfg)))


def model_family(model: nn.Module) -> str:
    """'mmdet', 'mmseg' or 'other': which packing of inputs the model expects."""
    module = type(model).__module__
    for family in ('mmdet', 'mmseg'):
        if module.startswith(family):
            return family
    return 'other'


def fake_batch(model: nn.Module, batch: int, image_shape: Sequence[int],
               seed: int = 0) -> Dict[str, Any]:
    """A random packed batch (``inputs`` list + ``data_samples``) for ``model.data_preprocessor``.

    Detection samples carry 3 random boxes each (``mmdet.testing.demo_mm_inputs``);
    segmentation samples an all-background label map; other models get images only.

    Args:
        image_shape (Sequence[int]): (C, H, W) of each image before preprocessing.
    """
    c, h, w = image_shape
    family = model_family(model)
    if family == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        return demo_mm_inputs(batch, image_shapes=(c, h, w), num_items=[3] * batch,
                              num_classes=2)
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randint(0, 256, (c, h, w), dtype=torch.uint8, generator=generator)
              for _ in range(batch)]
    if family == 'mmseg':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        samples = []
        for _ in range(batch):
            sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                                 pad_shape=(h, w)))
            sample.gt_sem_seg = PixelData(data=torch.zeros(1, h, w, dtype=torch.long))
            samples.append(sample)
        return dict(inputs=inputs, data_samples=samples)
    return dict(inputs=inputs, data_samples=None)


def preprocess(model: nn.Module, packed: Dict[str, Any], training: bool = False) -> Dict[str, Any]:
    """``model.data_preprocessor(packed, training)``; a stacked float tensor if it has none."""
    if hasattr(model, 'data_preprocessor'):
        return model.data_preprocessor(copy.copy(packed), training)
    return dict(inputs=torch.stack(packed['inputs']).float(), data_samples=None)


def forward_tensor(model: nn.Module, data: Dict[str, Any]) -> Any:
    """The network forward without post-processing (mmengine's ``mode='tensor'``)."""
    if model_family(model) == 'other':
        return model(data['inputs'])
    return model(data['inputs'], data['data_samples'], mode='tensor')


def drconv_layers(model: nn.Module, data: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every DRConv2d a forward pass of ``model`` on ``data`` calls, in call order.

    Returns dicts with ``name``, ``input_shape`` (B, C_in, H, W), ``out_channels``,
    ``kernel_size``, ``stride``, ``padding``, ``dilation`` and ``region_num``.
    """
    names = {m: n for n, m in model.named_modules() if isinstance(m, DRConv2d)}
    layers: List[Dict[str, Any]] = []

    def record(module: DRConv2d, args) -> None:
        layers.append(dict(name=names[module], input_shape=tuple(args[0].shape),
                           out_channels=module.out_channels,
                           kernel_size=tuple(module.kernel_size), stride=tuple(module.stride),
                           padding=tuple(module.padding), dilation=tuple(module.dilation),
                           region_num=module.region_num))

    handles = [m.register_forward_pre_hook(record) for m in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            forward_tensor(model, data)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return layers

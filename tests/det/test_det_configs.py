"""The DRConv Faster R-CNN configs: they load, build offline, hold DRConv where they say, train."""
import copy
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import load_checkpoint

from drconv import DRConv2d

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(glob.glob(osp.join(REPO_ROOT, 'configs/det/*.py')))
DEMO_CONFIG = osp.join(REPO_ROOT, 'configs/det/demo/'
                       'faster-rcnn_r50-thin-drconv-c3-c5_fpn_300i_demo-coco.py')


def build_detector(cfg: Config) -> torch.nn.Module:
    """Builds ``cfg.model`` without touching pretrained weights."""
    cfg.model.backbone.init_cfg = None
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return MODELS.build(cfg.model)


def drconv_layers(model: torch.nn.Module) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, DRConv2d)}


def test_configs_found():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize('config', CONFIGS, ids=osp.basename)
def test_config_builds_with_drconv_and_trains(config):
    from mmdet.testing import demo_mm_inputs
    cfg = Config.fromfile(config)
    assert cfg.model.backbone.dcn.type == 'DRConv'
    model = build_detector(cfg)
    layers = drconv_layers(model)
    in_backbone = [n for n in layers if n.startswith('backbone.')]
    # c3-c5 of R50: 4 + 6 + 3 Bottleneck conv2s
    assert len(in_backbone) == 13
    assert all('.conv2' in n and not n.startswith('backbone.layer1.') for n in in_backbone)
    if cfg.model.neck.get('conv_cfg'):
        assert any(n.startswith('neck.') for n in layers)
    else:
        assert len(layers) == 13
    dcn = cfg.model.backbone.dcn
    for layer in layers.values():
        assert layer.region_num == dcn.get('region_num', 8)
        assert layer.filter_generator_type == dcn.get('filter_generator', 'paper')

    packed = demo_mm_inputs(1, [[3, 64, 64]], num_items=[2], num_classes=80)
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(layer.guide_conv.weight.grad is not None for layer in layers.values())


def test_wrong_drconv_key_names_it():
    cfg = Config.fromfile(CONFIGS[0])
    cfg.model.backbone.dcn = dict(type='DRConv', regions=8)
    with pytest.raises(TypeError, match='regions') as info:
        build_detector(cfg)
    assert 'region_num' in str(info.value)


def test_baseline_checkpoint_loads_with_missing_keys_listed(tmp_path, capsys):
    cfg = Config.fromfile(DEMO_CONFIG)
    plain_cfg = copy.deepcopy(cfg)
    plain_cfg.model.backbone.dcn = None
    plain_cfg.model.backbone.stage_with_dcn = (False, False, False, False)
    plain = build_detector(plain_cfg)
    assert not drconv_layers(plain)
    path = str(tmp_path / 'baseline.pth')
    torch.save(dict(state_dict=plain.state_dict()), path)

    model = build_detector(cfg)
    load_checkpoint(model, path, map_location='cpu', strict=False)
    log = capsys.readouterr().out
    assert 'missing keys in source state_dict' in log
    assert 'backbone.layer2.0.conv2.guide_conv.weight' in log
    assert 'unexpected key' not in log
    # the baseline's 3x3 conv weights become DRConv's static weights
    for name, layer in drconv_layers(model).items():
        assert torch.equal(layer.weight, plain.get_submodule(name).weight)

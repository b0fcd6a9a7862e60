"""Every config of the toolkit: its types are registered, and the demos save periodically."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

from drconv_mm.registered_types import check_registered_types

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(osp.join(REPO_ROOT, 'configs/**/*.py'), recursive=True)
                 if '_base_' not in p)
DEMO_CONFIGS = [p for p in CONFIGS if '/demo/' in p]


def test_configs_found():
    # the demos of the three tasks, the det demo's two ablation variants, det and face on harder data
    assert len(CONFIGS) >= 15 and len(DEMO_CONFIGS) == 7
    assert {osp.basename(osp.dirname(osp.dirname(p))) for p in DEMO_CONFIGS} == {
        'det', 'seg', 'face'}


@pytest.mark.parametrize('config', CONFIGS, ids=osp.basename)
def test_every_type_is_registered(config):
    check_registered_types(Config.fromfile(config))


def test_misspelt_types_are_named_with_the_closest_names():
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs/det/faster-rcnn_r50-drconv-c3-c5_'
                                              'fpn-drconv_1x_coco.py'))
    cfg.model.backbone.dcn.type = 'DRconv'
    cfg.model.neck.conv_cfg.type = 'drconv'
    cfg.model.roi_head.bbox_roi_extractor.roi_layer.type = 'RoIAlgn'
    cfg.train_dataloader.dataset.pipeline[1].type = 'mmdet.LoadAnnotation'
    cfg.param_scheduler[0].type = 'Linearlr'
    cfg.optim_wrapper.optimizer.type = 'torch.optim.SGD'  # a full path that resolves
    with pytest.raises(ValueError) as info:
        check_registered_types(cfg)
    lines = str(info.value).splitlines()
    assert lines[:2] == [
        "model.backbone.dcn.type: 'DRconv' is not registered (scope 'mmdet'); "
        "did you mean 'DRConv'?",
        "model.neck.conv_cfg.type: 'drconv' is not registered (scope 'mmdet'); "
        "did you mean 'DRConv'?"]
    assert lines[2].startswith("model.roi_head.bbox_roi_extractor.roi_layer.type: 'RoIAlgn' "
                               "is not an op of mmcv.ops; did you mean 'RoIAlign'")
    assert lines[3].startswith("train_dataloader.dataset.pipeline.1.type: "
                               "'mmdet.LoadAnnotation' is not registered (scope 'mmdet'); "
                               "did you mean 'LoadAnnotations'")
    assert lines[4].endswith("did you mean 'LinearLR'?") and len(lines) == 5


def test_scope_of_a_subtree_is_its_own():
    """``_scope_`` switches the registries a subtree is looked up in, as mmengine's build."""
    cfg = Config(dict(default_scope='mmdet', model=dict(
        type='EncoderDecoder', _scope_='mmseg', backbone=dict(type='ResNetV1c'))))
    check_registered_types(cfg)
    cfg.model.pop('_scope_')
    with pytest.raises(ValueError, match="model.type: 'EncoderDecoder' is not registered"):
        check_registered_types(cfg)


@pytest.mark.parametrize('config', DEMO_CONFIGS, ids=osp.basename)
def test_demo_saves_periodically(config):
    """An interrupted demo resumes from a recent checkpoint; a few are kept, not all."""
    cfg = Config.fromfile(config)
    hook = cfg.default_hooks.checkpoint
    max_iters = cfg.train_cfg.max_iters
    assert hook.get('by_epoch') is False and hook.interval * 4 <= max_iters
    assert 1 <= hook.get('max_keep_ckpts', -1) < max_iters // hook.interval


@pytest.mark.parametrize('config', DEMO_CONFIGS, ids=osp.basename)
def test_demo_is_seeded(config):
    """A demo prints the same figure on every run (compare.py sets each run's seed itself)."""
    assert Config.fromfile(config).get('randomness', {}).get('seed') is not None

"""The face configs load, select DRConv by config entries only, and build (thin ones)."""
import os.path as osp

import pytest
from mmengine.config import Config

import drconv_mm  # noqa: F401
import drconv_mm.face  # noqa: F401
from drconv import DRConv2d
from drconv_mm.registry import MODELS

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.mark.parametrize('name,backbone,drconv', [
    ('arcface_mobilefacenet_ms1mv3.py', 'MobileFaceNet', False),
    ('arcface_mobilefacenet-drconv_ms1mv3.py', 'MobileFaceNet', True),
    ('arcface_r50_ms1mv3.py', 'IResNet', False),
    ('arcface_r50-drconv_ms1mv3.py', 'IResNet', True),
    ('demo/arcface_mobilefacenet-thin-drconv_demo-synth.py', 'MobileFaceNet', True),
])
def test_config(name, backbone, drconv):
    cfg = Config.fromfile(osp.join(REPO, 'configs/face', name))
    assert cfg.default_scope == 'drconv_mm'
    assert cfg.model.type == 'FaceRecognizer' and cfg.model.backbone.type == backbone
    assert (cfg.model.backbone.get('drconv') is not None) == drconv
    assert cfg.train_dataloader.dataset.type == 'MXFaceDataset'
    assert cfg.val_evaluator.type == 'VerificationMetric'
    assert any(h['type'] == 'FaceLabelRangeHook' for h in cfg.custom_hooks)
    if 'demo' in name:
        model = MODELS.build(cfg.model)
        assert any(isinstance(m, DRConv2d) for m in model.modules())

"""The toolkit as a user installs it (``pip install -e PATH``, the Makefile's venv step) works
in a project of its own, outside this repository, under its own import names only."""
import json
import os
import os.path as osp
import subprocess
import sys
import tomllib

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# A user's config: mmdetection's Faster R-CNN, the three DRConv lines, then shrunk to train fast.
USER_CONFIG = """\
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['drconv_mm'], allow_failed_imports=False)
model = dict(backbone=dict(dcn=dict(type='DRConv', region_num=4),
                           stage_with_dcn=(False, True, True, True)))

# thin and tiny, for the test only
model['backbone'].update(base_channels=8, init_cfg=None)
model.update(
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=16),
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=16),
                  bbox_head=dict(in_channels=16, fc_out_channels=32, num_classes=3)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=100, max_per_img=20),
                   rcnn=dict(sampler=dict(num=16)))
)
"""

# What the user's own training code does with it: build the model, take one SGD step.
USER_SCRIPT = """\
import importlib.util, json, sys
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.registry import MODELS, init_default_scope
from mmdet.testing import demo_mm_inputs

cfg = Config.fromfile(sys.argv[1])
init_default_scope(cfg.default_scope)
torch.manual_seed(0)
model = MODELS.build(cfg.model)
layers = [m for m in model.modules() if type(m).__name__ == 'DRConv2d']
before = [p.detach().clone() for m in layers for p in m.parameters()]
wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
losses = model.train_step(demo_mm_inputs(2, image_shapes=(3, 64, 64), num_items=[2, 2],
                                         num_classes=3), wrapper)
after = [p.detach() for m in layers for p in m.parameters()]
import drconv, drconv_mm
print(json.dumps(dict(
    drconv_layers=len(layers), loss=float(sum(v.item() for k, v in losses.items() if 'loss' in k)),
    changed=sum(not torch.equal(a, b) for a, b in zip(before, after)),
    files=[drconv.__file__, drconv_mm.__file__, type(layers[0]).__module__],
    plugins=importlib.util.find_spec('plugins') is not None)))
"""


def test_user_config_inheriting_mmdet_builds_and_trains_outside_the_repo(tmp_path):
    project = tmp_path / 'my_detection_project'
    (project / 'configs').mkdir(parents=True)
    config = project / 'configs' / 'faster-rcnn_r50-drconv_fpn_tiny.py'
    config.write_text(USER_CONFIG)
    (project / 'train_step.py').write_text(USER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    result = subprocess.run([sys.executable, 'train_step.py', str(config)], cwd=project,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out['drconv_layers'] == 13  # the 3x3 convs of c3-c5
    assert out['changed'] > 0 and out['loss'] == out['loss']  # a finite step that trained them
    drconv_file, glue_file, module = out['files']
    assert drconv_file == osp.join(REPO_ROOT, 'drconv', '__init__.py')
    assert glue_file == osp.join(REPO_ROOT, 'plugins', '__init__.py')
    assert module.startswith('drconv.')
    assert not out['plugins'], 'the install exposes a top-level `plugins` package'


def test_pyproject_packages_are_every_package_folder():
    with open(osp.join(REPO_ROOT, 'pyproject.toml'), 'rb') as f:
        setup = tomllib.load(f)['tool']['setuptools']
    folders = {'drconv': 'drconv', **setup['package-dir']}
    found = set()
    for name, folder in folders.items():
        for path, _, files in os.walk(osp.join(REPO_ROOT, folder)):
            if '__init__.py' in files:
                rel = osp.relpath(path, osp.join(REPO_ROOT, folder))
                found.add(name if rel == '.' else f'{name}.{rel.replace(os.sep, ".")}')
    assert sorted(setup['packages']) == sorted(found)
    assert setup['package-dir'] == {'drconv_mm': 'plugins'}

"""The DRConv DeepLabV3 configs: they build offline with DRConv where they say and train; the
demo config trains and tests through the tools."""
import glob
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.model.utils import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope
from mmengine.structures import PixelData

from drconv import DRConv2d

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# idle OpenMP threads sleep instead of spinning: spinning stalls torch on a shared CPU
SUBPROCESS_ENV = dict(os.environ,
                      OMP_WAIT_POLICY=os.environ.get('OMP_WAIT_POLICY', 'PASSIVE'))
CONFIGS = sorted(glob.glob(osp.join(REPO_ROOT, 'configs/seg/*.py')))
DEMO_CONFIG = osp.join(REPO_ROOT, 'configs/seg/demo/'
                       'deeplabv3_r50-thin-d8-drconv-c3-c5_200i_demo-cityscapes-128x256.py')


def build_segmentor(cfg: Config, size=(64, 64)) -> torch.nn.Module:
    """Builds ``cfg.model`` on CPU without pretrained weights, padding inputs to ``size``."""
    cfg.model.pretrained = None
    cfg.model.backbone.init_cfg = None
    cfg.model.data_preprocessor.size = size
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    return revert_sync_batchnorm(MODELS.build(cfg.model))


def test_configs_found():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize('config', CONFIGS, ids=osp.basename)
def test_config_builds_with_drconv_and_trains(config):
    from mmseg.structures import SegDataSample
    cfg = Config.fromfile(config)
    model = build_segmentor(cfg)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, DRConv2d)}
    in_backbone = [n for n in layers if n.startswith('backbone.')]
    assert len(in_backbone) == 13  # c3-c5 of R50: 4 + 6 + 3 Bottleneck conv2s
    assert all('.conv2' in n and not n.startswith('backbone.layer1.') for n in in_backbone)
    in_head = [n for n in layers if n.startswith('decode_head.')]
    assert bool(in_head) == bool(cfg.model.decode_head.get('conv_cfg'))
    dcn = cfg.model.backbone.dcn
    for name in in_backbone:
        assert layers[name].region_num == dcn.get('region_num', 8)
        assert layers[name].filter_generator_type == dcn.get('filter_generator', 'paper')

    samples = []
    for _ in range(2):  # two: BatchNorm after ASPP's image pooling needs more than one value
        sample = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 19, (1, 64, 64))))
        sample.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        samples.append(sample)
    inputs = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in samples]
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(m.guide_conv.weight.grad is not None for m in layers.values())


def test_missing_cityscapes_layout_names_it(tool, demo_cityscapes, tmp_path):
    root = tmp_path / 'cityscapes'
    (root / 'leftImg8bit' / 'train' / 'demo').mkdir(parents=True)
    with pytest.raises(SystemExit) as info:
        tool('train').main([DEMO_CONFIG, '--cfg-options',
                            f'train_dataloader.dataset.data_root={root}/'])
    message = str(info.value)
    assert f'{root}/gtFine/train' in message and 'does not exist' in message
    assert '_gtFine_labelTrainIds.png' in message


def test_demo_trains_and_tests(demo_cityscapes, tmp_path):
    work_dir = str(tmp_path / 'work')
    options = ['train_cfg.max_iters=2', 'train_cfg.val_interval=2',
               'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2',
               'model.data_preprocessor.size=(64,128)']
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.dataset.data_root={demo_cityscapes}', f'{loader}.num_workers=0',
                    f'{loader}.persistent_workers=False']
    for args in (['tools/train.py', DEMO_CONFIG, '--work-dir', work_dir],
                 ['tools/test.py', DEMO_CONFIG, osp.join(work_dir, 'iter_2.pth'),
                  '--work-dir', work_dir]):
        result = subprocess.run([sys.executable, *args, '--cfg-options', *options],
                                cwd=REPO_ROOT, env=SUBPROCESS_ENV, capture_output=True,
                                text=True, timeout=600)
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-3000:]
        assert 'mIoU' in log

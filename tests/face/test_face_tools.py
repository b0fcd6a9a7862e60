"""Face tools end to end: synthetic data -> tools/train.py -> tools/test.py; ONNX export."""
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = 'configs/face/demo/arcface_mobilefacenet-thin-drconv_demo-synth.py'


def run(args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


@pytest.fixture(scope='module')
def synth_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('face_synth')
    proc = run(['tools/face/make_demo_data.py', str(root), '--train-ids', '6', '--per-id', '4',
                '--val-ids', '4', '--val-per-id', '3', '--pairs', '10'])
    assert proc.returncode == 0, proc.stderr
    return root


def options(root, work_dir, num_classes=6):
    return ['--work-dir', str(work_dir), '--cfg-options', f'data_root={root}',
            f'train_dataloader.dataset.data_root={root}', 'train_dataloader.batch_size=8',
            'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
            f'val_dataloader.dataset.data_root={root}', f'test_dataloader.dataset.data_root={root}',
            f'model.head.num_classes={num_classes}', 'model.backbone.input_size=32',
            'val_dataloader.dataset.image_size=32', 'test_dataloader.dataset.image_size=32',
            'train_dataloader.dataset.pipeline.0.size=32', 'train_cfg.max_iters=3',
            'train_cfg.val_interval=3', 'default_hooks.checkpoint.interval=3',
            'default_hooks.logger.interval=1', 'param_scheduler.0.end=1',
            'param_scheduler.1.begin=1', 'param_scheduler.1.end=3']


def test_train_then_test(synth_data, tmp_path):
    proc = run(['tools/train.py', DEMO_CONFIG] + options(synth_data, tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert 'Iter(train) [3/3]' in log and 'loss_arcface' in log
    assert 'synth/accuracy' in log and '[synth]Accuracy-Flip' in log
    ckpt = tmp_path / 'iter_3.pth'
    assert ckpt.is_file()
    proc = run(['tools/test.py', DEMO_CONFIG, str(ckpt)] + options(synth_data, tmp_path / 't'))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'synth/tar@far1e-3' in proc.stdout + proc.stderr


def test_labels_beyond_num_classes_are_refused(synth_data, tmp_path):
    proc = run(['tools/train.py', DEMO_CONFIG] + options(synth_data, tmp_path, num_classes=4))
    assert proc.returncode != 0
    assert 'labels go up to 5' in proc.stderr and 'num_classes=4' in proc.stderr
    assert 'Iter(train)' not in proc.stdout + proc.stderr


def test_export_onnx_onnxruntime_and_insightface(tmp_path):
    sys.path.insert(0, REPO)
    from tools.export_onnx import build_backbone, check_insightface, export
    torch.manual_seed(0)
    backbone = build_backbone(DEMO_CONFIG, cfg_options={'model.backbone.input_size': 112})
    # give DRConv a non-zero dynamic part and BN real statistics, so regions differ
    for m in backbone.modules():
        if hasattr(m, 'bases'):
            torch.nn.init.normal_(m.bases, 0, 0.05)
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.momentum = None
            m.reset_running_stats()
    backbone.train()
    with torch.no_grad():
        backbone(torch.rand(4, 3, 112, 112) * 2 - 1)
    backbone.eval()
    out = str(tmp_path / 'face.onnx')
    diff = export(backbone, out, 112)
    with torch.no_grad():
        scale = backbone(torch.rand(1, 3, 112, 112) * 2 - 1).abs().max().item()
    print(f'onnxruntime max abs diff {diff:.3e} (embedding scale {scale:.3f})')
    assert scale > 0.1 and diff < 1e-4
    import onnx
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert {'Conv', 'ArgMax'} <= ops
    diff = check_insightface(backbone, out, 112)
    assert diff < 1e-4


def test_pack_recordio_and_make_pairs_bin_from_folders(tmp_path):
    import cv2
    from drconv.face import load_bin
    from drconv_mm.face import ImageFolderFaceDataset, MXFaceDataset
    rng = np.random.default_rng(0)
    for ident in ('alice', 'bob', 'carol'):
        (tmp_path / 'imgs' / ident).mkdir(parents=True)
        for k in range(3):
            img = rng.integers(0, 255, (120, 100, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / 'imgs' / ident / f'{k}.png'), img)
    proc = run(['tools/face/pack_recordio.py', str(tmp_path / 'imgs'), str(tmp_path / 'rec')])
    assert proc.returncode == 0, proc.stderr
    proc = run(['tools/face/make_pairs_bin.py', str(tmp_path / 'imgs'), str(tmp_path / 'p.bin'),
                '--same', '4', '--diff', '5'])
    assert proc.returncode == 0, proc.stderr
    bins, issame = load_bin(str(tmp_path / 'p.bin'))
    assert len(bins) == 18 and sum(issame) == 4
    pipeline = [dict(type='PackFaceInputs')]
    rec = MXFaceDataset(str(tmp_path / 'rec'), pipeline=pipeline)
    folders = ImageFolderFaceDataset(str(tmp_path / 'imgs'), pipeline=pipeline)
    assert len(rec) == len(folders) == 9 and rec.max_label() == folders.max_label() == 2
    item = rec[4]
    assert item['inputs'].shape == (3, 112, 112) and int(item['data_samples'].gt_label) == 1

"""tools/train.py, tools/test.py and tools/visualize_regions.py on the detection demo config."""
import os
import os.path as osp
import pickle
import subprocess
import sys

import cv2
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# idle OpenMP threads sleep instead of spinning: spinning stalls torch on a shared CPU;
# checkpoints load weights-only (torch's default), whatever the calling shell says
SUBPROCESS_ENV = dict({k: v for k, v in os.environ.items()
                       if k != 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'},
                      OMP_WAIT_POLICY=os.environ.get('OMP_WAIT_POLICY', 'PASSIVE'))
DEMO_CONFIG = osp.join(REPO_ROOT, 'configs/det/demo/'
                       'faster-rcnn_r50-thin-drconv-c3-c5_fpn_300i_demo-coco.py')


def demo_options(data_root: str, max_iters: int) -> list:
    """--cfg-options that point the demo config at ``data_root`` and shrink the run."""
    ann = data_root + 'annotations/instances_val2017.json'
    options = [f'train_cfg.max_iters={max_iters}', f'train_cfg.val_interval={max_iters}',
               'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
               'train_dataloader.batch_size=2', f'val_evaluator.ann_file={ann}',
               f'test_evaluator.ann_file={ann}']
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.dataset.data_root={data_root}', f'{loader}.num_workers=0',
                    f'{loader}.persistent_workers=False']
    return options


def run_tool(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=SUBPROCESS_ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_train_resume_test(demo_coco, tmp_path):
    work_dir = str(tmp_path / 'work')
    run_tool('tools/train.py', DEMO_CONFIG, '--work-dir', work_dir,
             '--cfg-options', *demo_options(demo_coco, 2))
    assert osp.isfile(osp.join(work_dir, 'iter_2.pth'))

    resumed = run_tool('tools/train.py', DEMO_CONFIG, '--work-dir', work_dir, '--resume',
                       '--cfg-options', *demo_options(demo_coco, 4))
    log = resumed.stdout + resumed.stderr
    assert 'resumed' in log.lower() and 'iter_2.pth' in log
    assert 'Iter(train) [3/4]' in log  # continues from iteration 2, not from 0
    assert osp.isfile(osp.join(work_dir, 'iter_4.pth'))

    out = str(tmp_path / 'results.pkl')
    tested = run_tool('tools/test.py', DEMO_CONFIG, osp.join(work_dir, 'iter_4.pth'),
                      '--work-dir', work_dir, '--out', out, '--show-dir',
                      str(tmp_path / 'show'), '--cfg-options', *demo_options(demo_coco, 4))
    assert 'coco/bbox_mAP:' in tested.stdout + tested.stderr
    assert osp.isfile(out)
    assert len(os.listdir(tmp_path / 'show')) == 4


@pytest.mark.parametrize('command', ['train', 'test'])
def test_missing_data_root_names_path_and_layout(command, tool, tmp_path):
    missing = str(tmp_path / 'no_coco') + '/'
    args = [DEMO_CONFIG] + ([__file__] if command == 'test' else [])
    args += ['--cfg-options'] + [f'{d}.dataset.data_root={missing}' for d in
                                 ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    with pytest.raises(SystemExit) as info:
        tool(command).main(args)
    message = str(info.value)
    assert missing in message and 'does not exist' in message
    assert 'annotations/instances_{train,val}2017.json' in message


def test_data_root_without_annotations_names_the_file(tool, tmp_path):
    root = tmp_path / 'coco'
    (root / 'train2017').mkdir(parents=True)
    (root / 'train2017' / 'a.jpg').write_bytes(b'')
    with pytest.raises(SystemExit) as info:
        tool('train').main([DEMO_CONFIG, '--cfg-options',
                                 f'train_dataloader.dataset.data_root={root}/'])
    assert f'{root}/annotations/instances_train2017.json' in str(info.value)


def test_visualize_regions_writes_png(demo_coco, tool, tmp_path):
    cfg = Config.fromfile(DEMO_CONFIG)
    init_default_scope('mmdet')
    checkpoint = str(tmp_path / 'model.pth')
    torch.save(dict(state_dict=MODELS.build(cfg.model).state_dict()), checkpoint)
    image = osp.join(demo_coco, 'val2017', '000000000001.jpg')
    out = str(tmp_path / 'regions.png')
    visualize = tool('visualize_regions')
    visualize.main([DEMO_CONFIG, checkpoint, image, '--out', out])
    picture = cv2.imread(out)
    # input + 13 DRConv layers in rows of 4 panels, each 256x256 under a caption strip
    assert picture.shape == (4 * (256 + visualize.CAPTION_HEIGHT), 4 * 256, 3)

    visualize.main([DEMO_CONFIG, checkpoint, image, '--out', out, '--layers',
               'backbone.layer4.0.conv2'])
    assert cv2.imread(out).shape == (256 + visualize.CAPTION_HEIGHT, 2 * 256, 3)

def test_train_resume_refuses_code(tool, demo_coco, malicious_checkpoint, tmp_path):
    path, marker = malicious_checkpoint
    with pytest.raises(pickle.UnpicklingError, match=r'GLOBAL (builtins\.)?exec\b'):
        tool('train').main([DEMO_CONFIG, '--work-dir', str(tmp_path / 'work'), '--resume', path,
                            '--cfg-options', *demo_options(demo_coco, 2)])
    assert not marker.exists()


def test_test_refuses_code(tool, demo_coco, malicious_checkpoint, tmp_path):
    path, marker = malicious_checkpoint
    with pytest.raises(pickle.UnpicklingError, match=r'GLOBAL (builtins\.)?exec\b'):
        tool('test').main([DEMO_CONFIG, path, '--work-dir', str(tmp_path / 'work'),
                           '--cfg-options', *demo_options(demo_coco, 2)])
    assert not marker.exists()


def test_visualize_regions_refuses_code(tool, demo_coco, malicious_checkpoint, tmp_path):
    path, marker = malicious_checkpoint
    image = osp.join(demo_coco, 'val2017', '000000000001.jpg')
    with pytest.raises(pickle.UnpicklingError, match=r'GLOBAL (builtins\.)?exec\b'):
        tool('visualize_regions').main([DEMO_CONFIG, path, image, '--out',
                                        str(tmp_path / 'regions.png')])
    assert not marker.exists()

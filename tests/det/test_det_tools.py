"""tools/train.py, tools/test.py and tools/visualize_regions.py on the detection demo config."""
import json
import math
import os
import os.path as osp
import pickle
import re
import socket
import subprocess
import sys

import cv2
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import drconv_mm.checkpoint_safety  # noqa: F401  the test reads checkpoints weights-only too

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


def run_tool(*args, env=SUBPROCESS_ENV, timeout=600) -> subprocess.CompletedProcess:
    command = list(args) if args[0] == 'bash' else [sys.executable, *args]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_train_resume_test(demo_coco, tmp_path):
    work_dir = str(tmp_path / 'work')
    fresh = run_tool('tools/train.py', DEMO_CONFIG, '--work-dir', work_dir, '--resume',
                     '--cfg-options', *demo_options(demo_coco, 2))
    log = fresh.stdout + fresh.stderr
    assert f'no checkpoint in {work_dir}' in log and 'starting from scratch' in log
    assert 'Auto resumed' not in log and 'Iter(train) [1/2]' in log
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


@pytest.mark.parametrize('command', ['train', 'test'])
def test_misspelt_type_stops_before_building(command, tool):
    args = [DEMO_CONFIG] + ([__file__] if command == 'test' else [])
    with pytest.raises(SystemExit) as info:
        tool(command).main(args + ['--cfg-options', 'model.backbone.dcn.type=DRconv'])
    assert str(info.value) == ("error: model.backbone.dcn.type: 'DRconv' is not registered "
                               "(scope 'mmdet'); did you mean 'DRConv'?")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_cpu_training(demo_coco, tmp_path):
    """tools/dist_train.sh CONFIG 2 without CUDA: Gloo, DDP on CPU, torchrun from the venv.

    Neither torchrun nor the venv's python is on PATH. The tiny config adds RankProbeHook
    (tests/det/rank_probe.py), which records each rank's training samples and saves.
    """
    config = tmp_path / 'probed.py'
    config.write_text(f"_base_ = {DEMO_CONFIG!r}\n"
                      "custom_imports = dict(imports=['drconv_mm', 'rank_probe'], "
                      "allow_failed_imports=False)\n"
                      "custom_hooks = [dict(type='RankProbeHook')]\n")
    path = os.pathsep.join(p for p in os.environ['PATH'].split(os.pathsep)
                           if not osp.exists(osp.join(p, 'torchrun')))
    env = dict(SUBPROCESS_ENV, PATH=path, PORT=str(free_port()),
               PYTHONPATH=osp.join(REPO_ROOT, 'tests', 'det'))
    env.pop('PYTHON', None)
    work_dir = tmp_path / 'work'
    # 8 train images, 2 per batch and rank: 2 iterations are one epoch of each rank's half
    result = run_tool('bash', 'tools/dist_train.sh', str(config), '2', '--work-dir',
                      str(work_dir), '--cfg-options', *demo_options(demo_coco, 2), env=env,
                      timeout=300)
    log = result.stdout + result.stderr
    losses = [float(v) for v in re.findall(r'Iter\(train\) \[\d/2\].*?  loss: (\S+)', log)]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)

    ranks = [json.loads((work_dir / f'rank{r}.json').read_text()) for r in (0, 1)]
    assert [(p['rank'], p['world_size']) for p in ranks] == [(0, 2), (1, 2)]
    seen = [set(p['img_ids']) for p in ranks]
    assert len(ranks[0]['img_ids']) == len(ranks[1]['img_ids']) == 4
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 8
    assert ranks[0]['saved'] == 1 and ranks[1]['saved'] == 0  # rank 0 writes checkpoints
    assert sorted(f for f in os.listdir(work_dir) if f.endswith('.pth')) == ['iter_2.pth']
    assert torch.load(work_dir / 'iter_2.pth')['meta']['iter'] == 2


def test_cpu_config_of_a_syncbn_model(tmp_path):
    """mmseg's configs norm with SyncBN (GPU only) and name NCCL: both adapted for CPU."""
    from drconv_mm.distributed import adapt_to_cpu
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs/seg/deeplabv3_r50-d8-drconv-c3-c5_'
                                              '4xb2-40k_cityscapes-512x1024.py'))
    cfg.sync_bn = 'torch'
    assert 'SyncBN' in str(cfg.model) and cfg.env_cfg.dist_cfg.backend == 'nccl'
    adapt_to_cpu(cfg)
    assert 'SyncBN' not in str(cfg.model) and "'type': 'BN'" in str(cfg.model)
    assert 'sync_bn' not in cfg and cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == 'MMDistributedDataParallel'
    assert cfg.model_wrapper_cfg.device_ids is None


def test_cpu_slurm_launcher_is_refused_with_the_alternative():
    if torch.cuda.is_available():
        pytest.skip('the refusal is for machines without CUDA')
    from mmengine.config import Config as MMConfig

    from drconv_mm.distributed import prepare_distributed
    with pytest.raises(ValueError, match='--launcher slurm needs CUDA.*torchrun'):
        prepare_distributed(MMConfig(), 'slurm')

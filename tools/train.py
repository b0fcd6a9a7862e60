"""Train any model of the toolkit from a config, on mmengine's Runner.

One entry point for every task (detection, segmentation, face recognition)::

    python tools/train.py configs/det/faster-rcnn_r50-drconv-c3-c5_fpn_1x_coco.py
    python tools/train.py CONFIG --resume                # resume from work_dir's last checkpoint
    bash tools/dist_train.sh CONFIG 8                    # 8 GPUs (or CPU processes) via torchrun

Configs load the toolkit's registrations with ``custom_imports = dict(imports=['drconv_mm'])``,
the glue (the ``plugins/`` folder) as installed with the toolkit (``pip install -e .``, which
``make venv`` runs); this script puts the repository root on ``sys.path`` for ``drconv``.
"""
import argparse
import logging
import os
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
import drconv_mm.checkpoint_safety  # noqa: E402,F401  checkpoints load weights-only

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402
from mmengine.runner import Runner, find_latest_checkpoint  # noqa: E402

from drconv_mm.det.data_check import check_data_paths  # noqa: E402
from drconv_mm.distributed import end_distributed, prepare_distributed  # noqa: E402
from drconv_mm.registered_types import check_registered_types  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """Parses the command line (mmdet/mmseg's train.py options)."""
    parser = argparse.ArgumentParser(description='Train a model of the DRConv toolkit.')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from this checkpoint, or without a value from the latest '
                        'checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision training')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value (e.g. '
                        'train_dataloader.batch_size=4 model.backbone.init_cfg=None)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher for distributed training')
    # torchrun passes --local-rank (torch >= 2.0), torch.distributed.launch --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(args: argparse.Namespace) -> Config:
    """Reads the config and applies the command-line overrides to it."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume = find_latest_checkpoint(cfg.work_dir) is not None
        cfg.load_from = None
        if not cfg.resume:
            print_log(f'--resume: no checkpoint in {cfg.work_dir} (no last_checkpoint file); '
                      'starting from scratch', logger='current', level=logging.WARNING)
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def build_runner(cfg: Config) -> Runner:
    """Builds the runner the config asks for (``runner_type``, default mmengine's Runner)."""
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = load_config(args)
    loaders = ['train_dataloader']
    if cfg.get('val_cfg'):
        loaders.append('val_dataloader')
    try:
        check_registered_types(cfg)
        check_data_paths(cfg, loaders)
        prepare_distributed(cfg, args.launcher)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f'error: {error}')
    build_runner(cfg).train()
    end_distributed()


if __name__ == '__main__':
    main()

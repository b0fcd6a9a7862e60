"""Evaluate a trained checkpoint of any toolkit model on the config's test split.

::

    python tools/test.py CONFIG CHECKPOINT
    python tools/test.py CONFIG CHECKPOINT --show-dir vis --out results.pkl

Metrics are the config's ``test_evaluator`` (mmdet's CocoMetric, mmseg's IoUMetric, ...).
"""
import argparse
import inspect
import os
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
import drconv_mm.checkpoint_safety  # noqa: E402,F401  checkpoints load weights-only

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.evaluator import DumpResults  # noqa: E402
from mmengine.registry import HOOKS, RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from drconv_mm.det.data_check import check_data_paths  # noqa: E402
from drconv_mm.registered_types import check_registered_types  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """Parses the command line (mmdet/mmseg's test.py options)."""
    parser = argparse.ArgumentParser(description='Test (and evaluate) a toolkit model.')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the metrics log goes '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--show-dir', help='write pictures of the predictions into this folder')
    parser.add_argument('--out', help='dump the raw predictions to this .pkl file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher for distributed testing')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def enable_show_dir(cfg: Config, show_dir: str) -> None:
    """Turns on the config's visualization hook and points its pictures at ``show_dir``.

    mmdet's hook takes the folder as ``test_out_dir``; hooks without that argument (mmseg's)
    write through the visualizer's ``save_dir`` (into ``<show_dir>/vis_data/vis_image/``).
    Hooks with an ``interval`` draw every test image.
    """
    hook_cfg = cfg.get('default_hooks', {}).get('visualization')
    if hook_cfg is None:
        raise SystemExit('error: --show-dir needs default_hooks.visualization in the config')
    hook_cfg['draw'] = True
    show_dir = osp.abspath(show_dir)
    with HOOKS.switch_scope_and_registry(cfg.get('default_scope')) as registry:
        hook_cls = registry.get(hook_cfg['type'])
    params = inspect.signature(hook_cls).parameters if hook_cls is not None else {}
    if 'interval' in params:
        hook_cfg['interval'] = 1  # every test image, not every 50th
    if 'test_out_dir' in params:
        hook_cfg['test_out_dir'] = show_dir
    else:
        cfg.visualizer['save_dir'] = show_dir


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        sys.exit(f'error: checkpoint {args.checkpoint!r} does not exist')
    try:
        check_registered_types(cfg)
        check_data_paths(cfg, ['test_dataloader'])
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f'error: {error}')
    if args.show_dir:
        enable_show_dir(cfg, args.show_dir)
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    if args.out is not None:
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()

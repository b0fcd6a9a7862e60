"""Does DRConv help? Train configs over seeds and compare them on their own evaluator.

    # a DRConv config against its baseline (the same config without its type='DRConv' entries)
    python tools/analysis_tools/compare.py CONFIG --seeds 0 1 2
    # arms of your own; --baseline adds the first config's baseline as the last arm
    python tools/analysis_tools/compare.py A.py B.py C.py --baseline --seeds 0 1 2 \
        [--work-dir DIR] [--metric coco/bbox_mAP] [--cfg-options ...] [--json out.json]

Each arm is trained once per seed (``randomness.seed``) by ``tools/train.py`` (mmengine's
Runner), one run after the other in this process, and evaluated at the end of training by its
config's val evaluator. The table gives per arm: the metric's mean +- std over seeds and each seed's value,
the difference to the first arm paired by seed with a Student t confidence interval over the
seeds, the median seconds of a training iteration (forward, backward, optimizer step; mean over
seeds), and the parameters and MAdds of the model (the toolkit's counting, DRConv2d at its
real cost; one image of the val set's first image size, or ``--shape``).

Everything goes under the work dir (default ``work_dirs/compare/<first config>``)::

    <arm>/<arm>.py             the config the arm trains (overrides and summary hook included)
    <arm>/seed<k>/             tools/train.py's work dir of that seed (logs, checkpoints)
    <arm>/seed<k>/run_summary.json    written when the run has finished (RunSummaryHook)

A run with a ``run_summary.json`` is not trained again, and one interrupted after a checkpoint
resumes from it, so running the same command again finishes an interrupted comparison. A
work dir whose arm config differs from what the command would train now is refused (its
results would be mixed with the new ones).
"""
import argparse
import fnmatch
import gc
import importlib.util
import json
import os
import os.path as osp
import sys
import time
import traceback
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from mmengine.analysis.print_helper import _format_size  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import DATASETS, init_default_scope  # noqa: E402

from drconv_mm.analysis import models  # noqa: E402
from drconv_mm.analysis.counting import copy_shared_weights, count  # noqa: E402
from drconv_mm.analysis.seed_statistics import mean_std, paired_difference  # noqa: E402
from drconv_mm.det.data_check import check_data_paths  # noqa: E402

TRAIN_SCRIPT = osp.join(REPO_ROOT, 'tools', 'train.py')
GLUE_PACKAGE = 'drconv_mm'
SUMMARY_FILE = 'run_summary.json'
BASELINE = 'baseline'
# the metric compared when --metric is not given: the first of these the evaluator reports
PRIMARY_METRICS = ('coco/bbox_mAP', 'mIoU', '*/accuracy')


class Arm(NamedTuple):
    """One side of the comparison: a name (its folder), a label, the config it trains."""

    name: str
    label: str
    cfg: Config


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train configs over seeds and compare their metric, speed and size',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='+', metavar='CONFIG',
                        help='the arms; with one config the second arm is its baseline')
    parser.add_argument('--baseline', action='store_true', help="add the first config without "
                        "its type='DRConv' entries as the last arm (implied with one config)")
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--work-dir', help='default: work_dirs/compare/<first config name>')
    parser.add_argument('--metric', help='the metric compared (default: the first of '
                        f'{", ".join(PRIMARY_METRICS)} the evaluator reports)')
    parser.add_argument('--confidence', type=float, default=0.95,
                        help='confidence level of the intervals of the differences')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='image size the MAdds are counted at (default: the size of the '
                        "val set's first image after its pipeline)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override entries of every arm\'s config, key=value')
    parser.add_argument('--json', metavar='PATH', help='also write the results as JSON')
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds repeats a seed: {args.seeds}')
    if not 0 < args.confidence < 1:
        parser.error(f'--confidence must lie in (0, 1), got {args.confidence}')
    return args


# ---------------------------------------------------------------- arms

def make_arms(args: argparse.Namespace) -> List[Arm]:
    """The configs as arms, each with the run summary hook; the baseline last if asked for."""
    arms = []
    for path in args.configs:
        if not osp.isfile(path):
            raise SystemExit(f'error: config {path} does not exist')
        name = osp.splitext(osp.basename(path))[0]
        arms.append(Arm(name, name, models.load_config(path, args.cfg_options)))
    if len(arms) == 1 or args.baseline:
        cfg = models.load_config(args.configs[0], args.cfg_options)
        model_cfg, removed = models.without_drconv(cfg.model.to_dict())
        if not removed:
            raise SystemExit(f"error: {args.configs[0]}: its model has no type='DRConv' entry, "
                             'so it has no baseline to compare with; give the arms as configs')
        cfg.model = model_cfg
        arms.append(Arm(BASELINE, f'{arms[0].name} without DRConv', cfg))
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise SystemExit(f'error: two arms have the same name: {names} (config file names '
                         f'name the arms; {BASELINE!r} is the baseline\'s)')
    for arm in arms:
        add_summary_hook(arm.cfg)
    return arms


def add_summary_hook(cfg: Config) -> None:
    """Makes ``cfg`` import the toolkit's glue and run ``RunSummaryHook``."""
    imports = cfg.get('custom_imports', dict(imports=[], allow_failed_imports=False))
    names = [imports['imports']] if isinstance(imports['imports'], str) else imports['imports']
    if GLUE_PACKAGE not in names:
        imports['imports'] = list(names) + [GLUE_PACKAGE]
    cfg.custom_imports = imports
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(h.get('type') == 'RunSummaryHook' for h in hooks):
        hooks.append(dict(type='RunSummaryHook', out_file=SUMMARY_FILE))
    cfg.custom_hooks = hooks


def write_arm_config(arm: Arm, arm_dir: str) -> str:
    """Writes the arm's config to ``<arm_dir>/<name>.py``; refuses to replace one that differs
    while finished runs trained from it."""
    path = osp.join(arm_dir, f'{arm.name}.py')
    text = arm.cfg.pretty_text
    if osp.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return path
        finished = [osp.join(arm_dir, d, SUMMARY_FILE) for d in sorted(os.listdir(arm_dir))
                    if osp.isfile(osp.join(arm_dir, d, SUMMARY_FILE))]
        if finished:
            raise SystemExit(f'error: {path} differs from the config this command trains for '
                             f'arm {arm.name}, and {len(finished)} finished runs came from it '
                             f'({finished[0]}, ...): use another --work-dir, or remove '
                             f'{arm_dir} to retrain them')
    os.makedirs(arm_dir, exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    return path


def check_data(arms: Sequence[Arm]) -> None:
    """The data every arm trains and validates on exists (before anything is trained)."""
    for arm in arms:
        try:
            check_data_paths(arm.cfg, ['train_dataloader', 'val_dataloader'])
        except FileNotFoundError as error:
            raise SystemExit(f'error: arm {arm.name}: {error}')


# ---------------------------------------------------------------- size and cost

def val_image_shape(cfg: Config) -> tuple:
    """(C, H, W) of the val set's first image as its pipeline packs it."""
    if not cfg.get('val_dataloader'):
        raise SystemExit('error: the config has no val_dataloader: nothing to evaluate on')
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    return tuple(dataset[0]['inputs'].shape)


def complexity(arms: Sequence[Arm], image_shape: Sequence[int]) -> List[Dict[str, int]]:
    """Parameters and MAdds of each arm's model on one image of ``image_shape`` (C, H, W).

    Every model gets the weights it shares with the first arm's baseline first, so that a
    detector proposes the same boxes in all arms (see ``counting.copy_shared_weights``).
    """
    source = models.build_model(arms[0].cfg, baseline=True)
    result = []
    for arm in arms:
        model = models.build_model(arm.cfg)
        copy_shared_weights(model, source)
        counted = count(model, 1, image_shape)
        result.append(dict(params=counted['params'], flops=counted['flops'],
                           drconv_layers=len(counted['drconv'])))
    return result


# ---------------------------------------------------------------- training

def load_train_tool():
    """tools/train.py as a module (a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location('drconv_tools_train', TRAIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_run(config: str, seed_dir: str, seed: int, title: str) -> Dict[str, Any]:
    """Trains one (arm, seed) through tools/train.py unless it has finished; its summary.

    Runs in this process; the run's own experiment (logger, message hub, visualizer) is named
    after it, so that runs do not share mmengine's named instances.
    """
    summary_path = osp.join(seed_dir, SUMMARY_FILE)
    if osp.isfile(summary_path):
        print(f'{title}: finished before ({summary_path})', flush=True)
        return load_summary(summary_path)
    name = f'compare_{osp.basename(osp.dirname(seed_dir))}_seed{seed}'
    argv = [config, '--work-dir', seed_dir, '--cfg-options', f'randomness.seed={seed}',
            f'experiment_name={name}', f'visualizer.name={name}']
    resumed = osp.isfile(osp.join(seed_dir, 'last_checkpoint'))
    if resumed:
        argv.append('--resume')
    print(f'{title}: {"resuming" if resumed else "training"} in {seed_dir}', flush=True)
    start = time.time()
    try:
        load_train_tool().main(argv)
    except Exception as error:
        traceback.print_exc()
        raise SystemExit(f'error: {title} failed ({error!r}); its log is under {seed_dir}. '
                         'Finished runs are kept: fix the cause and run the same command '
                         'again.') from error
    finally:
        gc.collect()  # the run's data loader workers and model go now, not during the next
    if not osp.isfile(summary_path):
        raise SystemExit(f'error: {title}: training ended without {summary_path}')
    print(f'{title}: done in {time.time() - start:.0f} s', flush=True)
    return load_summary(summary_path)


def load_summary(path: str) -> Dict[str, Any]:
    with open(path) as f:
        summary = json.load(f)
    if not isinstance(summary, dict) or not isinstance(summary.get('metrics'), dict):
        raise SystemExit(f'error: {path} is not a run summary (no "metrics"); remove it to '
                         'train that run again')
    return summary


# ---------------------------------------------------------------- report

def choose_metric(metrics: Dict[str, float], requested: Optional[str], source: str) -> str:
    if requested:
        if requested not in metrics:
            raise SystemExit(f'error: --metric {requested}: {source} reports only '
                             f'{sorted(metrics)}')
        return requested
    for pattern in PRIMARY_METRICS:
        for key in metrics:
            if fnmatch.fnmatchcase(key, pattern):
                return key
    raise SystemExit(f'error: none of {PRIMARY_METRICS} in {source} ({sorted(metrics)}): '
                     'choose one with --metric')


def build_report(arms: Sequence[Arm], runs: Dict[str, Dict[int, Dict[str, Any]]],
                 sizes: List[Dict[str, int]], args: argparse.Namespace, work_dir: str,
                 image_shape: Sequence[int]) -> Dict[str, Any]:
    """Per arm: each seed's value, mean and std, the paired difference to the first arm,
    training seconds per iteration, parameters and MAdds."""
    first = runs[arms[0].name][args.seeds[0]]
    metric = choose_metric(first['metrics'], args.metric,
                           osp.join(work_dir, arms[0].name, f'seed{args.seeds[0]}', SUMMARY_FILE))
    rows = []
    for arm, size in zip(arms, sizes):
        values = {}
        for seed, summary in runs[arm.name].items():
            if metric not in summary['metrics']:
                raise SystemExit(f'error: {arm.name} seed {seed} reports no {metric}: '
                                 f'{sorted(summary["metrics"])}')
            values[seed] = summary['metrics'][metric]
        times = [s['iter_seconds_median'] for s in runs[arm.name].values()
                 if s.get('iter_seconds_median') is not None]
        rows.append(dict(name=arm.name, label=arm.label, values=values,
                         **mean_std(values.values()),
                         iter_seconds=sum(times) / len(times) if times else None, **size))
    for row in rows[1:]:
        row['difference'] = paired_difference(rows[0]['values'], row['values'], args.confidence)
    return dict(metric=metric, seeds=list(args.seeds), confidence=args.confidence,
                image_shape=list(image_shape), work_dir=work_dir, arms=rows)


def table(report: Dict[str, Any]) -> str:
    """The report as a markdown table, with a line saying what its columns are."""
    metric, seeds = report['metric'], report['seeds']
    values = [v for row in report['arms'] for v in row['values'].values()]
    digits = 4 if max(abs(v) for v in values) <= 1.5 else 2

    def num(v):
        return 'n/a' if v is None else f'{v:.{digits}f}'

    level = f'{report["confidence"] * 100:g}%'
    c, h, w = report['image_shape']
    lines = [f'{metric}: mean +- std over seeds {", ".join(map(str, seeds))}; difference to the '
             f'first arm paired by seed, with its {level} t-interval; training s/iter the '
             f'median iteration (mean over seeds); MAdds of one {c}x{h}x{w} image', '',
             f'| arm | {metric} | seeds {" / ".join(map(str, seeds))} | difference '
             f'[{level} CI] | train s/iter | params | MAdds |', '|---|---|---|---|---|---|---|']
    for row in report['arms']:
        diff = row.get('difference')
        if diff is None:
            cell = '(first arm)' if row is report['arms'][0] else 'n/a'
        else:
            cell = f'{diff["mean"]:+.{digits}f}'
            if diff['ci']:
                cell += f' [{diff["ci"][0]:+.{digits}f}, {diff["ci"][1]:+.{digits}f}]'
        spread = '' if row['std'] is None else f' +- {num(row["std"])}'
        lines.append(
            f'| {row["label"]} | {num(row["mean"])}{spread} | '
            f'{" / ".join(num(row["values"].get(s)) for s in seeds)} | {cell} | '
            f'{"n/a" if row["iter_seconds"] is None else format(row["iter_seconds"], ".3f")} | '
            f'{_format_size(row["params"])} | {_format_size(row["flops"])} |')
    return '\n'.join(lines)


def main(argv=None) -> Dict[str, Any]:
    args = parse_args(argv)
    arms = make_arms(args)
    work_dir = args.work_dir or osp.join('work_dirs', 'compare', arms[0].name)
    check_data(arms)
    paths = {arm.name: write_arm_config(arm, osp.join(work_dir, arm.name))
             for arm in arms}
    image_shape = ((3, *args.shape) if args.shape else val_image_shape(arms[0].cfg))
    sizes = complexity(arms, image_shape)  # before training: a model that cannot be counted
    runs: Dict[str, Dict[int, Dict[str, Any]]] = {arm.name: {} for arm in arms}
    total = len(arms) * len(args.seeds)
    for i, seed in enumerate(args.seeds):  # seed by seed: an interrupted run leaves pairs
        for j, arm in enumerate(arms):
            title = f'[{i * len(arms) + j + 1}/{total}] {arm.name} seed {seed}'
            runs[arm.name][seed] = train_run(paths[arm.name],
                                             osp.join(work_dir, arm.name, f'seed{seed}'),
                                             seed, title)
    report = build_report(arms, runs, sizes, args, work_dir, image_shape)
    print(table(report))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == '__main__':
    main()

"""Verification accuracy of a face checkpoint on insightface ``.bin`` sets, printed as a table.

::

    python tools/face/eval_verification.py CONFIG CHECKPOINT --bins data/lfw.bin data/cfp_fp.bin

Protocol as insightface's ``eval/verification.py`` (its ``Accuracy-Flip``): each image is
embedded together with its mirror image (flip test-time augmentation, ``normalize(emb +
emb_flipped)``); pairs are scored in 10 consecutive folds with the threshold (0..4, step 0.01 on
the squared distance) chosen on the other 9. Per set it prints one row: pairs, mean accuracy and
its std over the folds, TAR@FAR=1e-3 with the FAR its thresholds actually reach on the held-out
folds, and XNorm (mean L2 norm of the raw embeddings); a note follows when a set is too small
for FAR=1e-3 (fewer than 1000 impostor pairs in the folds that pick the threshold: its TAR is
the TAR at FAR 0). ``--min-accuracy`` makes it exit with status 1 when a set scores below it.
"""
import argparse
import os.path as osp
import sys
import time

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
import drconv_mm.checkpoint_safety  # noqa: E402,F401  checkpoints load weights-only

import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402
from mmengine.utils import import_modules_from_strings  # noqa: E402


def evaluate_bins(model, bin_paths, batch_size=64, num_folds=10):
    """Runs ``model`` (a FaceRecognizer) on each .bin; returns {set name: metrics dict}."""
    from drconv.face import threshold_fold_impostors
    from drconv_mm.face import VerificationBinDataset, VerificationMetric
    size = getattr(model.backbone, 'input_size', 112)
    results = {}
    model.eval()
    for path in bin_paths:
        name = osp.splitext(osp.basename(path))[0]
        dataset = VerificationBinDataset(osp.dirname(path) or '.', [name], image_size=size)
        metric = VerificationMetric(num_folds=num_folds)
        start = time.time()
        with torch.no_grad():
            for i in range(0, len(dataset), batch_size):
                batch = pseudo_collate([dataset[j] for j in
                                        range(i, min(i + batch_size, len(dataset)))])
                outputs = model.test_step(batch)
                metric.process(batch, [o.to_dict() for o in outputs])
        metrics = metric.compute_metrics(metric.results)
        results[name] = {k.split('/', 1)[1]: v for k, v in metrics.items()}
        results[name]['pairs'] = len(dataset) // 2
        results[name]['threshold_impostors'] = threshold_fold_impostors(
            dataset.issame[name], min(num_folds, len(dataset) // 2))
        results[name]['seconds'] = time.time() - start
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='face config (a FaceRecognizer model)')
    parser.add_argument('checkpoint', help="checkpoint of that config, or 'none' for the "
                        'freshly initialised model')
    parser.add_argument('--bins', nargs='+', required=True, metavar='BIN',
                        help='insightface .bin verification files (lfw.bin, cfp_fp.bin, ...)')
    parser.add_argument('--batch-size', type=int, default=64,
                        help='images per forward pass (default: 64)')
    parser.add_argument('--num-folds', type=int, default=10,
                        help='folds of the protocol (default: 10, as insightface)')
    parser.add_argument('--min-accuracy', type=float, default=None,
                        help='exit with status 1 when a set scores below this accuracy '
                        '(default: no threshold)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries (default: none)')
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for path in args.bins:
        if osp.isdir(path):
            parser.error(f'--bins {path} is a directory; give the .bin files in it '
                         f'(e.g. --bins {osp.join(path, "lfw.bin")})')
        if not osp.isfile(path):
            parser.error(f'--bins {path} does not exist')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.get('default_scope', 'drconv_mm'))
    from drconv_mm.registry import MODELS
    model = MODELS.build(cfg.model)
    if args.checkpoint.lower() != 'none':
        load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    results = evaluate_bins(model, args.bins, args.batch_size, args.num_folds)

    tar_key = 'tar@far1e-3'
    header = (f'{"set":<14}{"pairs":>7}{"accuracy":>11}{"std":>9}{"TAR@FAR1e-3":>13}'
              f'{"(FAR)":>9}{"XNorm":>10}')
    print(header)
    print('-' * len(header))
    failed, small = [], []
    for name, r in results.items():
        print(f'{name:<14}{r["pairs"]:>7}{r["accuracy"]:>11.5f}{r["std"]:>9.5f}'
              f'{r[tar_key]:>13.5f}{r["far"]:>9.5f}{r["xnorm"]:>10.3f}')
        if r['threshold_impostors'] < 1000:
            small.append(f'{name}: {r["threshold_impostors"]}')
        if args.min_accuracy is not None and r['accuracy'] < args.min_accuracy:
            failed.append(f'{name} {r["accuracy"]:.5f}')
    if small:
        print(f'note: TAR@FAR1e-3 needs at least 1000 impostor pairs in the folds that pick each '
              f'threshold ({", ".join(small)}); with fewer the threshold sits at FAR 0 there, so '
              'the column is the TAR at FAR 0; (FAR) is the rate the held-out folds reach')
    if failed:
        sys.exit(f'error: below --min-accuracy {args.min_accuracy}: {", ".join(failed)}')


if __name__ == '__main__':
    main()

"""``RunSummaryHook``: what one training run reached, written to a JSON file at its end.

``tools/analysis_tools/compare.py`` adds it to every run it trains and reads the file back;
a run whose file exists is finished. Registered in mmengine's root HOOKS, so a config of any
scope finds ``dict(type='RunSummaryHook')``.
"""
import json
import os
import os.path as osp
import statistics
import time
from typing import Dict, List, Optional

from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RunSummaryHook(Hook):
    """Records the last validation's metrics and the seconds of each training iteration.

    At the end of training it writes ``<work_dir>/<out_file>``::

        {"metrics": {...}, "iter_seconds_median": s, "iters_timed": n, "last_iter": i}

    ``iter_seconds_median`` is the median time of ``runner.model.train_step`` over the
    iterations this process ran (data loading excluded). When training ran no validation at its
    end (a run resumed from its final checkpoint), the hook runs the val loop once itself.

    Args:
        out_file (str): File name, relative to the work dir. Default: 'run_summary.json'.
    """

    priority = 'VERY_LOW'

    def __init__(self, out_file: str = 'run_summary.json'):
        self.out_file = out_file
        self.metrics: Optional[Dict[str, float]] = None
        self.iter_seconds: List[float] = []
        self._start = 0.0

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.iter_seconds.append(time.perf_counter() - self._start)

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        self.metrics = {k: float(v) for k, v in (metrics or {}).items()}

    def after_train(self, runner) -> None:
        if self.metrics is None:
            if runner.val_loop is None:
                raise RuntimeError('RunSummaryHook: the config has no validation (val_dataloader, '
                                   'val_cfg, val_evaluator) to evaluate the trained model with')
            runner.val_loop.run()
        self._write(runner)

    @master_only
    def _write(self, runner) -> None:
        summary = dict(metrics=self.metrics,
                       iter_seconds_median=(statistics.median(self.iter_seconds)
                                            if self.iter_seconds else None),
                       iters_timed=len(self.iter_seconds), last_iter=runner.iter)
        path = osp.join(runner.work_dir, self.out_file)
        with open(path + '.tmp', 'w') as f:
            json.dump(summary, f, indent=1)
        os.replace(path + '.tmp', path)  # a file that exists is complete

"""Validation on ``.bin`` verification sets that may be missing, for mmengine's Runner.

``VerificationBinDataset(skip_missing=True)`` leaves out the sets whose file is missing (one
warning names them). Two pieces keep such a run going instead of failing mid-run:

- ``VerificationValLoop``: mmengine's ValLoop, except that it skips validation when no set is
  left (mmengine's sampler divides by the dataset size);
- ``VerificationCheckpointHook``: mmengine's CheckpointHook whose ``save_best`` may name the
  accuracy of every configured set (one best checkpoint per set); a missing set has no score and
  keeps no best checkpoint. A ``save_best`` key that names no configured set stops the run
  before training.
"""
import logging
from typing import Dict

from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.runner import ValLoop

from ..registry import HOOKS, LOOPS


@LOOPS.register_module()
class VerificationValLoop(ValLoop):
    """ValLoop that skips validation when its dataset is empty (every ``.bin`` is missing).

    Args: as mmengine's ``ValLoop``.
    """

    def __init__(self, runner, dataloader, evaluator, fp16: bool = False):
        super().__init__(runner, dataloader, evaluator, fp16)
        self.skip = len(self.dataloader.dataset) == 0
        if self.skip:
            print_log('VerificationValLoop: the validation set is empty; validation is skipped',
                      logger='current')

    def run(self) -> dict:
        """Validates (mmengine's ValLoop.run), or returns no metrics when there is nothing to."""
        return {} if self.skip else super().run()


@HOOKS.register_module()
class VerificationCheckpointHook(CheckpointHook):
    """CheckpointHook whose ``save_best`` keys (``'<set>/<metric>'``) may name missing sets.

    E.g. ``save_best=['lfw/accuracy', 'cfp_fp/accuracy', 'agedb_30/accuracy'], rule='greater'``
    keeps ``best_lfw_accuracy_iter_N.pth`` and so on next to the regular checkpoints.

    Args: as mmengine's ``CheckpointHook``.
    """

    _unscored: tuple = ()  # save_best keys of missing sets, passed on with score None

    def before_train(self, runner) -> None:
        super().before_train(runner)
        dataset = runner.val_loop.dataloader.dataset if runner.val_loop is not None else None
        if not self.save_best or 'auto' in self.key_indicators or dataset is None:
            return
        present = set(getattr(dataset, 'set_names', ()))
        missing = set(getattr(dataset, 'missing_sets', ()))
        if not present | missing:
            return
        unknown = [k for k in self.key_indicators if k.split('/')[0] not in present | missing]
        if unknown:
            raise ValueError(
                f'default_hooks.checkpoint.save_best names {unknown}, but the validation sets '
                f'are {sorted(present | missing)}: use keys like '
                f"'{sorted(present | missing)[0]}/accuracy'")
        self._unscored = tuple(k for k in self.key_indicators if k.split('/')[0] in missing)
        if self._unscored:
            print_log(f'VerificationCheckpointHook: no best checkpoint for {list(self._unscored)} '
                      '(set missing)', logger='current', level=logging.INFO)

    def _save_best_checkpoint(self, runner, metrics: Dict[str, float]) -> None:
        # CheckpointHook skips a key whose score is None; a key absent from metrics would raise
        super()._save_best_checkpoint(runner, {**dict.fromkeys(self._unscored), **metrics})

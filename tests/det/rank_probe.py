"""``RankProbeHook``, for the distributed training test: what each rank trained on and saved.

Each rank writes ``<work_dir>/rank<r>.json``: rank, world size, the img_id of every training
sample it saw, and how many checkpoints it saved.
"""
import json
import os.path as osp

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankProbeHook(Hook):

    def before_run(self, runner) -> None:
        self.img_ids, self.saved = [], 0

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.img_ids += [sample.img_id for sample in data_batch['data_samples']]

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        self.saved += 1

    def after_run(self, runner) -> None:
        with open(osp.join(runner.work_dir, f'rank{runner.rank}.json'), 'w') as f:
            json.dump(dict(rank=runner.rank, world_size=runner.world_size,
                           img_ids=self.img_ids, saved=self.saved), f)

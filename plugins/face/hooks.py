"""``FaceLabelRangeHook``: refuses to train when the data's labels exceed the head's classes."""
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..registry import HOOKS


def _leaf_datasets(dataset):
    """The datasets inside ConcatDataset/RepeatDataset-style wrappers."""
    if hasattr(dataset, 'datasets'):
        for sub in dataset.datasets:
            yield from _leaf_datasets(sub)
    elif hasattr(dataset, 'dataset'):
        yield from _leaf_datasets(dataset.dataset)
    else:
        yield dataset


def check_label_range(dataset, num_classes: int) -> int:
    """Returns the largest label of ``dataset``; raises ValueError when it is >= num_classes."""
    largest = -1
    for leaf in _leaf_datasets(dataset):
        if not hasattr(leaf, 'max_label'):
            continue
        leaf_max = int(leaf.max_label())
        where = getattr(leaf, 'data_root', type(leaf).__name__)
        if leaf_max >= num_classes:
            raise ValueError(
                f'training labels go up to {leaf_max} (in {where}) but the head has '
                f'num_classes={num_classes}: labels must lie in [0, {num_classes - 1}]. Set '
                f'model.head.num_classes to at least {leaf_max + 1} (e.g. --cfg-options '
                f'model.head.num_classes={leaf_max + 1}).')
        largest = max(largest, leaf_max)
    return largest


@HOOKS.register_module()
class FaceLabelRangeHook(Hook):
    """Before training, checks that every label of the training data is < ``num_classes``.

    ``num_classes`` is read from ``model.head.num_classes``. The largest label is found from
    the dataset's ``max_label()`` (insightface RecordIO: one record per identity when identity
    records exist, else every record's header).
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        model = runner.model
        model = getattr(model, 'module', model)
        head = getattr(model, 'head', None)
        if head is None or not hasattr(head, 'num_classes'):
            return
        largest = check_label_range(runner.train_dataloader.dataset, head.num_classes)
        print_log(f'FaceLabelRangeHook: largest training label {largest}, '
                  f'num_classes={head.num_classes}', logger='current')

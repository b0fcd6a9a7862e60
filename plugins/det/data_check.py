"""Check a config's data paths before a runner builds datasets from them.

mmengine datasets fail lazily and deep inside their loaders when a data root is wrong (a
``FileNotFoundError`` from a json reader, or an empty dataset that the sampler rejects). This
module walks the dataloader configs that a run will use and stops early with a message that
names the missing path and the layout the dataset class expects.
"""
import os
import os.path as osp
from typing import Iterator, List, Optional, Sequence

# Layouts of the data sets the toolkit's configs use, keyed by dataset type.
EXPECTED_LAYOUTS = {
    'CocoDataset': ('<data_root>/annotations/instances_{train,val}2017.json and the images in '
                    '<data_root>/{train,val}2017/ (the COCO 2017 layout)'),
    'CityscapesDataset': ('<data_root>/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and '
                          '<data_root>/gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png '
                          "(mmseg's tools/dataset_converters/cityscapes.py writes the "
                          'labelTrainIds)'),
    'MXFaceDataset': ("<data_root>/train.rec, train.idx, property (insightface's RecordIO, e.g. "
                      'MS1MV3), with the verification sets <data_root>/lfw.bin, cfp_fp.bin, '
                      'agedb_30.bin next to them'),
    'VerificationBinDataset': "<data_root>/<set>.bin (insightface's lfw.bin, cfp_fp.bin, ...)",
}
# The command that writes a small synthetic data set of that type (default: the det/seg one).
SYNTHETIC_DATA_COMMANDS = {
    'MXFaceDataset': ('`python tools/face/make_demo_data.py DATA_ROOT` (or pack image folders '
                      'with `python tools/face/pack_recordio.py IMAGES_DIR DATA_ROOT`)'),
    'VerificationBinDataset': '`python tools/face/make_demo_data.py DATA_ROOT`',
}
SYNTHETIC_DATA_COMMAND = '`python tools/make_demo_data.py`'


def _hint(dataset_type: str) -> str:
    command = SYNTHETIC_DATA_COMMANDS.get(dataset_type, SYNTHETIC_DATA_COMMAND)
    return ('Point data_root at the data set (e.g. --cfg-options '
            'train_dataloader.dataset.data_root=...), or write a small synthetic one with '
            f'{command}.')


def _leaf_datasets(dataset_cfg) -> Iterator[dict]:
    """Yields the dataset configs inside wrappers (RepeatDataset, ConcatDataset, ...)."""
    if 'dataset' in dataset_cfg:
        yield from _leaf_datasets(dataset_cfg['dataset'])
    elif 'datasets' in dataset_cfg:
        for sub_cfg in dataset_cfg['datasets']:
            yield from _leaf_datasets(sub_cfg)
    else:
        yield dataset_cfg


def _required_paths(dataset_cfg) -> List[tuple]:
    """Lists ``(path, kind)`` pairs a dataset config needs; kind is 'file' or 'dir'."""
    data_root = dataset_cfg.get('data_root') or ''
    if '://' in data_root:  # remote storage (petrel, s3, http): left to the file backend
        return []
    paths = []
    if data_root:
        paths.append((data_root, 'dir'))
    ann_file = dataset_cfg.get('ann_file')
    if isinstance(ann_file, str) and ann_file:
        paths.append((osp.join(data_root, ann_file), 'file'))
    for prefix in (dataset_cfg.get('data_prefix') or {}).values():
        if isinstance(prefix, str) and prefix:
            paths.append((osp.join(data_root, prefix), 'dir'))
    return paths


def _problem(path: str, kind: str) -> Optional[str]:
    """Returns why ``path`` does not serve as a ``kind``, or None when it does."""
    if not osp.exists(path):
        return 'does not exist'
    if kind == 'file' and not osp.isfile(path):
        return 'is not a file'
    if kind == 'dir' and not osp.isdir(path):
        return 'is not a directory'
    if kind == 'dir':
        with os.scandir(path) as entries:
            if next(entries, None) is None:
                return 'is empty'
    return None


def check_data_paths(cfg, dataloaders: Sequence[str]) -> None:
    """Checks that the data paths of the named dataloaders exist.

    Args:
        cfg (Config): A full mmengine config.
        dataloaders (Sequence[str]): Names of the dataloader entries the run uses, e.g.
            ``('train_dataloader', 'val_dataloader')``. Missing or None entries are skipped.

    Raises:
        FileNotFoundError: When a data root, annotation file or image/label folder is missing
            or empty. The message names the path, the dataloader, and the expected layout.
    """
    for name in dataloaders:
        loader_cfg = cfg.get(name)
        if not loader_cfg or 'dataset' not in loader_cfg:
            continue
        for dataset_cfg in _leaf_datasets(loader_cfg['dataset']):
            for path, kind in _required_paths(dataset_cfg):
                problem = _problem(path, kind)
                if problem is None:
                    continue
                dataset_type = str(dataset_cfg.get('type', 'dataset'))
                short_type = dataset_type.split('.')[-1]
                layout = EXPECTED_LAYOUTS.get(
                    short_type, ', '.join(p for p, _ in _required_paths(dataset_cfg)))
                raise FileNotFoundError(
                    f'{name}: {dataset_type} data path {path!r} {problem}.\n'
                    f'Expected layout: {layout}.\n{_hint(short_type)}')

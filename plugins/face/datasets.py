"""Face datasets: insightface RecordIO (``train.rec/idx``), image folders, ``.bin`` pair sets.

Every dataset yields ``pipeline(dict(img=HWC uint8 BGR, ...))``; training sets add ``gt_label``,
the verification set ``set_name``, ``sample_idx`` (image index in its set) and ``issame`` (the
flag of the image's pair). Training sets have :meth:`max_label` for the label-range check
(:class:`FaceLabelRangeHook`).
"""
import logging
import os
import os.path as osp
import struct
from typing import List, Optional, Sequence

import cv2
import numpy as np
from mmengine.dataset import Compose
from mmengine.logging import print_log
from torch.utils.data import Dataset

from drconv.face import binfile, recordio
from ..registry import DATASETS, TRANSFORMS

DEFAULT_TRAIN_PIPELINE = [dict(type='FaceRandomFlip', prob=0.5), dict(type='PackFaceInputs')]
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def _compose(pipeline):
    return Compose([TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline])


class _FaceDataset(Dataset):
    """Common parts: ``data_root``, the pipeline, ``metainfo``."""

    METAINFO: dict = {}

    def __init__(self, data_root: str, pipeline: Optional[Sequence] = None):
        self.data_root = str(data_root)
        self.pipeline = _compose(DEFAULT_TRAIN_PIPELINE if pipeline is None else pipeline)

    @property
    def metainfo(self) -> dict:
        return dict(self.METAINFO)

    def prepare(self, results: dict) -> dict:
        return self.pipeline(results)


@DATASETS.register_module()
class MXFaceDataset(_FaceDataset):
    """insightface's training data (MS1MV3, Glint360K, WebFace) from ``train.rec``/``train.idx``.

    Record 0 with ``flag > 0`` is insightface's header (``label = [end of images, end of identity
    records]``): the images are keys ``1 .. label[0]-1`` and identity records follow them.
    Without that header every key is an image. The label of an image is its header label (the
    first entry when it is an array). Read without mxnet (:mod:`drconv.face.recordio`).

    Args:
        data_root (str): Folder holding the record files (and ``property``).
        rec_file (str): Default: ``'train.rec'``. idx_file (str): Default: ``'train.idx'``.
        pipeline (list[dict], optional): Default: random flip, pack.
    """

    def __init__(self, data_root: str, rec_file: str = 'train.rec', idx_file: str = 'train.idx',
                 pipeline: Optional[Sequence] = None):
        super().__init__(data_root, pipeline)
        self.rec_path = osp.join(self.data_root, rec_file)
        self.idx_path = osp.join(self.data_root, idx_file)
        for path in (self.rec_path, self.idx_path):
            if not osp.isfile(path):
                raise FileNotFoundError(
                    f'MXFaceDataset: {path} does not exist. Expected insightface\'s layout: '
                    '<data_root>/train.rec, train.idx, property. Pack image folders with '
                    '`python tools/face/pack_recordio.py IMAGES_DIR DATA_ROOT`, or write a '
                    'small synthetic set with `python tools/face/make_demo_data.py DATA_ROOT`.')
        self._rec = None
        self._pid = None
        try:
            self.imgidx, self.identity_keys = recordio.face_record_keys(self._reader())
        except recordio.RecordIOError as error:
            raise recordio.RecordIOError(f'{error}\n{self.check_hint()}') from None
        self.num_classes_property = self._read_property()

    def check_hint(self) -> str:
        """The command that reads every record of this set (what training meets one by one)."""
        return ('Check every record with: python tools/face/pack_recordio.py --check '
                f'{self.data_root}')

    def _read_property(self) -> Optional[int]:
        path = osp.join(self.data_root, 'property')
        if not osp.isfile(path):
            return None
        with open(path) as f:
            return int(f.read().strip().split(',')[0])

    def _reader(self) -> recordio.MXIndexedRecordIO:
        """One open reader per process (dataloader workers must not share a file offset)."""
        if self._rec is None or self._pid != os.getpid():
            self._rec = recordio.MXIndexedRecordIO(self.idx_path, self.rec_path, 'r')
            self._pid = os.getpid()
        return self._rec

    def __getstate__(self):
        state = self.__dict__.copy()
        state['_rec'] = None
        return state

    def __len__(self) -> int:
        return len(self.imgidx)

    def _label_of(self, key: int) -> int:
        rec = self._reader()
        rec.seek(key)
        head = rec.handle.read(8 + 28)
        magic, lrec = struct.unpack('<II', head[:8]) if len(head) >= 8 else (0, 0)
        if magic == recordio.MAGIC and lrec >> 29 == 0 and len(head) == 36:
            flag, label = struct.unpack('<If', head[8:16])
            if flag > 0:
                label = struct.unpack('<f', head[32:36])[0]
            return int(label)
        header, _ = recordio.unpack(rec.read_idx(key))
        label = header.label
        return int(label if np.isscalar(label) else label[0])

    def max_label(self) -> int:
        """Largest label of the images (one image per identity when identity records exist)."""
        rec = self._reader()
        if self.identity_keys:
            keys = []
            for key in self.identity_keys:
                header, _ = recordio.unpack(rec.read_idx(key))
                start, end = int(header.label[0]), int(header.label[1])
                if end > start:
                    keys.append(start)
        else:
            keys = self.imgidx
        return max((self._label_of(int(k)) for k in keys), default=-1)

    def __getitem__(self, index: int) -> dict:
        key = int(self.imgidx[index])
        try:
            header, img = self._reader().read_img(key, cv2.IMREAD_COLOR)
        except recordio.RecordIOError as error:
            raise recordio.RecordIOError(f'{error}\n{self.check_hint()}') from None
        label = header.label
        label = int(label if np.isscalar(label) else label[0])
        return self.prepare(dict(img=img, gt_label=label, sample_idx=index))


@DATASETS.register_module()
class ImageFolderFaceDataset(_FaceDataset):
    """One folder per identity: ``<data_root>/<identity>/*.jpg``; labels follow sorted names.

    Args:
        data_root (str): Folder of identity folders.
        pipeline (list[dict], optional): Default: random flip, pack.
        extensions (Sequence[str]): Image file extensions. Default: jpg, jpeg, png, bmp, webp.
    """

    def __init__(self, data_root: str, pipeline: Optional[Sequence] = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS):
        super().__init__(data_root, pipeline)
        if not osp.isdir(self.data_root):
            raise FileNotFoundError(f'ImageFolderFaceDataset: {self.data_root} is not a folder')
        self.classes = sorted(d.name for d in os.scandir(self.data_root) if d.is_dir())
        exts = tuple(e.lower() for e in extensions)
        self.samples = []
        for label, name in enumerate(self.classes):
            folder = osp.join(self.data_root, name)
            for fname in sorted(os.listdir(folder)):
                if fname.lower().endswith(exts):
                    self.samples.append((osp.join(folder, fname), label))
        if not self.samples:
            raise FileNotFoundError(f'ImageFolderFaceDataset: no images under {self.data_root} '
                                    '(expected <data_root>/<identity>/<image>)')

    @property
    def metainfo(self) -> dict:
        return dict(classes=tuple(self.classes))

    def __len__(self) -> int:
        return len(self.samples)

    def max_label(self) -> int:
        return max(label for _, label in self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f'ImageFolderFaceDataset: cannot read image {path}')
        return self.prepare(dict(img=img, gt_label=label, sample_idx=index, img_path=path))


@DATASETS.register_module()
class VerificationBinDataset(_FaceDataset):
    """insightface ``.bin`` verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``).

    Args:
        data_root (str): Folder of the ``.bin`` files.
        bin_names (Sequence[str]): Set names; the files are ``<data_root>/<name>.bin``.
        image_size (int): Images are resized to it when they differ. Default: 112.
        pipeline (list[dict], optional): Default: resize, pack (no flip: the model does flip TTA).
        skip_missing (bool): Leave out sets whose file is missing instead of raising, with
            one warning that names the missing files; used for validation during training
            (``VerificationValLoop`` skips validation when no set is left). Default: False.
    """

    def __init__(self, data_root: str, bin_names: Sequence[str] = ('lfw', 'cfp_fp', 'agedb_30'),
                 image_size: int = 112, pipeline: Optional[Sequence] = None,
                 skip_missing: bool = False):
        if pipeline is None:
            pipeline = [dict(type='FaceResize', size=image_size), dict(type='PackFaceInputs')]
        super().__init__(data_root, pipeline)
        if isinstance(bin_names, str):
            bin_names = [bin_names]
        self.image_size = image_size
        self.set_names: List[str] = []
        self.missing_sets: List[str] = []
        self.paths: dict = {}
        self.issame: dict = {}
        self._items = []  # (set name, image index, encoded image)
        for name in bin_names:
            path = osp.join(self.data_root, f'{name}.bin')
            if not osp.isfile(path):
                if not skip_missing:
                    raise FileNotFoundError(f'VerificationBinDataset: {path} does not exist')
                self.missing_sets.append(name)
                continue
            bins, issame = binfile.load_bin(path)
            self.set_names.append(name)
            self.paths[name] = path
            self.issame[name] = issame
            self._items.extend((name, i, b) for i, b in enumerate(bins))
        if self.missing_sets:
            missing = ', '.join(osp.join(self.data_root, f'{n}.bin') for n in self.missing_sets)
            left = (f'validating on {", ".join(self.set_names)}' if self.set_names else
                    'no verification set is left, so there is no validation')
            print_log(f'VerificationBinDataset: {missing} not found: skipped; {left}',
                      logger='current', level=logging.WARNING)

    @property
    def metainfo(self) -> dict:
        return dict(set_names=tuple(self.set_names), missing_sets=tuple(self.missing_sets))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict:
        name, i, buf = self._items[index]
        try:
            img = binfile.decode_image(buf, self.image_size)
        except binfile.BinFormatError as error:
            path = self.paths[name]
            raise binfile.BinFormatError(
                f'{path}: image {i} (pair {i // 2}): {error}. Check every image with: python '
                f'tools/face/make_pairs_bin.py --check {path}') from None
        return self.prepare(dict(img=img, set_name=name, sample_idx=i,
                                 issame=bool(self.issame[name][i // 2])))

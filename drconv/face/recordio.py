"""insightface's training format (``train.rec``/``train.idx``) read and written without mxnet.

The names follow ``mxnet.recordio`` so that code written for it reads the same::

    from drconv.face import recordio
    rec = recordio.MXIndexedRecordIO('train.idx', 'train.rec', 'r')
    header, img = recordio.unpack_img(rec.read_idx(1))   # img: HWC uint8, BGR (cv2)

File layout (dmlc-core's RecordIO): every record starts with the magic number ``0xced7230a``
(uint32, little endian) and a uint32 ``lrecord = cflag << 29 | length``, then ``length`` bytes
padded with zeros to a multiple of 4. A payload that contains the magic number at a 4-byte
aligned offset is split there into parts with cflag 1 (first), 2 (middle) and 3 (last); the magic
itself is dropped from the parts and put back when reading. ``train.idx`` is text, one
``key<TAB>byte offset`` line per record.

A payload made by :func:`pack` starts with :class:`IRHeader` packed as ``struct 'IfQQ'``
(flag, label, id, id2: 24 bytes). ``flag > 0`` means the label is an array of ``flag`` float32
values that follow the header. insightface writes record 0 as a header record with
``flag=2, label=[first identity record, end of identity records]``; image records are the keys
``1 .. label[0]-1`` and identity records (``label=[first image, end image)``) follow them.
"""
import itertools
import numbers
import os
import struct
from collections import namedtuple
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

MAGIC = 0xced7230a
_MAGIC_BYTES = struct.pack('<I', MAGIC)
_LEN_MASK = (1 << 29) - 1
_IR_FORMAT = 'IfQQ'
_IR_SIZE = struct.calcsize(_IR_FORMAT)

IRHeader = namedtuple('HEADER', ['flag', 'label', 'id', 'id2'])
"""Header of a record made by :func:`pack`: ``flag`` (0, or the length of an array label),
``label`` (a float or a float32 array), ``id`` and ``id2`` (uint64)."""


class RecordIOError(ValueError):
    """A .rec or .idx file that does not hold what RecordIO promises; names file and offset."""


def _pad4(n: int) -> int:
    return (n + 3) & ~3


class MXRecordIO:
    """Sequential reader/writer of a RecordIO file (mxnet.recordio.MXRecordIO).

    Args:
        uri (str): Path of the ``.rec`` file.
        flag (str): ``'r'`` to read, ``'w'`` to write (truncates).
    """

    def __init__(self, uri: str, flag: str):
        if flag not in ('r', 'w'):
            raise ValueError(f"flag must be 'r' or 'w', got {flag!r}")
        self.uri = str(uri)
        self.flag = flag
        self.handle = None
        self.is_open = False
        self.open()

    def open(self) -> None:
        """Opens the file (``'w'`` truncates it)."""
        if self.flag == 'w':
            self.handle = open(self.uri, 'wb')
            self.writable = True
        else:
            self.handle = open(self.uri, 'rb')
            self.writable = False
        self._size = os.fstat(self.handle.fileno()).st_size if not self.writable else 0
        self.is_open = True

    def close(self) -> None:
        """Closes the file; a closed object can be reopened with :meth:`open`."""
        if self.is_open:
            self.handle.close()
            self.handle = None
            self.is_open = False

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        """Pickles as (path, flag) so a reader can go to dataloader worker processes."""
        state = self.__dict__.copy()
        state['handle'] = None
        state['is_open'] = False
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.flag == 'r':
            self.open()

    def reset(self) -> None:
        """Goes back to the first record."""
        self.close()
        self.open()

    def _check(self, writable: bool) -> None:
        if not self.is_open:
            raise RuntimeError(f'{self.uri}: the file is closed')
        if writable != self.writable:
            raise RuntimeError(f"{self.uri}: opened with flag {self.flag!r}")

    def tell(self) -> int:
        """Byte offset of the next record."""
        return self.handle.tell()

    def write(self, buf: bytes) -> None:
        """Appends one record (splitting it where the payload holds the magic number)."""
        self._check(writable=True)
        buf = bytes(buf)
        if len(buf) >= 1 << 29:
            raise ValueError(f'RecordIO records must be < 2**29 bytes, got {len(buf)}')
        out = []
        start = 0
        for pos in range(0, len(buf) - 3, 4):
            if buf[pos:pos + 4] == _MAGIC_BYTES:
                cflag = 1 if start == 0 else 2
                out.append(_MAGIC_BYTES + struct.pack('<I', cflag << 29 | (pos - start)))
                out.append(buf[start:pos])
                start = pos + 4
        cflag = 3 if start != 0 else 0
        out.append(_MAGIC_BYTES + struct.pack('<I', cflag << 29 | (len(buf) - start)))
        out.append(buf[start:])
        out.append(b'\0' * (_pad4(len(buf)) - len(buf)))
        self.handle.write(b''.join(out))

    def read(self) -> Optional[bytes]:
        """Reads the next record; returns None at the end of the file.

        Raises:
            RecordIOError: a bad magic number or a record cut short, with file and byte offset.
        """
        self._check(writable=False)
        parts = []
        while True:
            offset = self.handle.tell()
            head = self.handle.read(8)
            if not head and not parts:
                return None
            if len(head) < 8:
                raise RecordIOError(
                    f'{self.uri}: truncated record header at byte offset {offset} '
                    f'(file size {self._size})')
            magic, lrec = struct.unpack('<II', head)
            if magic != MAGIC:
                raise RecordIOError(
                    f'{self.uri}: bad magic number 0x{magic:08x} at byte offset {offset} '
                    f'(expected 0x{MAGIC:08x}); not a RecordIO file, or an .idx offset that '
                    'does not point at a record')
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            data = self.handle.read(_pad4(length))
            if len(data) < _pad4(length):
                raise RecordIOError(
                    f'{self.uri}: truncated record at byte offset {offset}: header says '
                    f'{length} bytes, the file ends after {len(data)} (file size {self._size})')
            parts.append(data[:length])
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)
            if cflag not in (1, 2) or (cflag == 1 and len(parts) > 1):
                raise RecordIOError(f'{self.uri}: bad continuation flag {cflag} at byte offset '
                                    f'{offset}')


class MXIndexedRecordIO(MXRecordIO):
    """RecordIO file with an index file for random access (mxnet.recordio.MXIndexedRecordIO).

    Args:
        idx_path (str): Path of the ``.idx`` file (``key\\tbyte offset`` lines).
        uri (str): Path of the ``.rec`` file.
        flag (str): ``'r'`` or ``'w'``.
        key_type (type): Type the keys are parsed as. Default: int.
    """

    def __init__(self, idx_path: str, uri: str, flag: str, key_type=int):
        self.idx_path = str(idx_path)
        self.key_type = key_type
        self.idx: Dict = {}
        self.keys: List = []
        self.fidx = None
        super().__init__(uri, flag)

    def open(self) -> None:
        super().open()
        self.idx = {}
        self.keys = []
        if self.writable:
            self.fidx = open(self.idx_path, 'w')
            return
        self.fidx = None
        with open(self.idx_path) as f:
            for line_no, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                fields = line.split('\t')
                try:
                    key, pos = self.key_type(fields[0]), int(fields[1])
                except (IndexError, ValueError):
                    raise RecordIOError(f'{self.idx_path}: line {line_no} is not '
                                        f"'key<TAB>offset': {line!r}") from None
                self.idx[key] = pos
                self.keys.append(key)

    def close(self) -> None:
        if self.is_open and self.fidx is not None:
            self.fidx.close()
            self.fidx = None
        super().close()

    def seek(self, idx) -> None:
        """Moves to the record with key ``idx``.

        Raises:
            KeyError: no such key. RecordIOError: the .idx offset lies past the end of the .rec.
        """
        self._check(writable=False)
        if idx not in self.idx:
            raise KeyError(f'{self.idx_path}: no record with key {idx!r}')
        pos = self.idx[idx]
        if pos < 0 or pos + 8 > self._size:
            raise RecordIOError(
                f'{self.idx_path}: key {idx!r} points at byte offset {pos}, past the end of '
                f'{self.uri} (file size {self._size})')
        self.handle.seek(pos)

    def read_idx(self, idx) -> bytes:
        """Reads the record with key ``idx``.

        Raises:
            KeyError: no such key. RecordIOError: a broken record; names file, offset and key.
        """
        self.seek(idx)
        try:
            return self.read()
        except RecordIOError as error:
            raise RecordIOError(f'{error} (record key {idx!r})') from None

    def read_img(self, idx, iscolor: int = -1) -> Tuple[IRHeader, np.ndarray]:
        """Reads the record with key ``idx`` and decodes its image (:func:`unpack_img`).

        Raises:
            RecordIOError: a broken record or a payload that is not an image; names the file,
                the key and the record's byte offset.
        """
        s = self.read_idx(idx)
        try:
            return unpack_img(s, iscolor)
        except RecordIOError as error:
            raise RecordIOError(f'{self.uri}: record key {idx!r} at byte offset '
                                f'{self.idx[idx]}: {error}') from None

    def write_idx(self, idx, buf: bytes) -> None:
        """Appends a record with key ``idx`` and indexes it."""
        key = self.key_type(idx)
        pos = self.tell()
        self.write(buf)
        self.fidx.write(f'{key}\t{pos}\n')
        self.idx[key] = pos
        self.keys.append(key)


def pack(header: Union[IRHeader, tuple], s: bytes) -> bytes:
    """Packs a header and a payload into a record string (mxnet.recordio.pack).

    A numeric label is stored in the header (flag 0); an array label is stored as float32 values
    after the header, with ``flag`` set to their count.
    """
    header = IRHeader(*header)
    if isinstance(header.label, numbers.Number):
        header = header._replace(flag=0)
    else:
        label = np.asarray(header.label, dtype=np.float32).ravel()
        header = header._replace(flag=label.size, label=0)
        s = label.tobytes() + bytes(s)
    return struct.pack(_IR_FORMAT, *header) + bytes(s)


def unpack(s: bytes) -> Tuple[IRHeader, bytes]:
    """Splits a record string into its header and payload (mxnet.recordio.unpack)."""
    if len(s) < _IR_SIZE:
        raise RecordIOError(f'record of {len(s)} bytes is shorter than its {_IR_SIZE}-byte header')
    header = IRHeader(*struct.unpack(_IR_FORMAT, s[:_IR_SIZE]))
    s = s[_IR_SIZE:]
    if header.flag > 0:
        if len(s) < 4 * header.flag:
            raise RecordIOError(f'record header announces {header.flag} label values, '
                                f'the record holds {len(s)} bytes')
        header = header._replace(label=np.frombuffer(s, np.float32, header.flag).copy())
        s = s[4 * header.flag:]
    return header, s


def unpack_img(s: bytes, iscolor: int = -1) -> Tuple[IRHeader, np.ndarray]:
    """Unpacks a record and decodes its image with OpenCV (BGR, HWC uint8)."""
    import cv2
    header, s = unpack(s)
    img = cv2.imdecode(np.frombuffer(s, dtype=np.uint8), iscolor)
    if img is None:
        raise RecordIOError(f'payload of {len(s)} bytes is not an image (header id={header.id})')
    return header, img


def pack_img(header: Union[IRHeader, tuple], img: np.ndarray, quality: int = 95,
             img_fmt: str = '.jpg') -> bytes:
    """Encodes an image (BGR, HWC uint8) with OpenCV and packs it (mxnet.recordio.pack_img)."""
    import cv2
    fmt = img_fmt.lower()
    if fmt in ('.jpg', '.jpeg'):
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif fmt == '.png':
        params = [cv2.IMWRITE_PNG_COMPRESSION, quality if 0 <= quality <= 9 else 3]
    else:
        params = []
    ok, buf = cv2.imencode(fmt, img, params)
    if not ok:
        raise ValueError(f'cannot encode an image of shape {img.shape} as {img_fmt}')
    return pack(header, buf.tobytes())


def write_face_records(out_dir: str, identities, image_size=(112, 112),
                       rec_name: str = 'train') -> Tuple[int, int]:
    """Writes a face training set in insightface's MS1M layout (what ``MXFaceDataset`` reads).

    Keys: 0 is the header record ``IRHeader(2, [N+1, N+1+K], 0, 0)``; ``1..N`` the images with
    their identity as float label; ``N+1..N+K`` one record per identity with
    ``label=[first key, end key)``. Also writes ``property`` (``K,h,w``).

    Args:
        out_dir (str): Output folder (``train.rec``, ``train.idx``, ``property``).
        identities (Iterable[Iterable[bytes]]): For identity ``k`` (label ``k``), its encoded
            images (JPEG/PNG bytes).
        image_size (tuple[int, int]): (h, w) recorded in ``property``.

    Returns:
        tuple[int, int]: The number of images and of identities written.
    """
    os.makedirs(out_dir, exist_ok=True)
    rec = MXIndexedRecordIO(os.path.join(out_dir, f'{rec_name}.idx'),
                            os.path.join(out_dir, f'{rec_name}.rec'), 'w')
    # the header needs the counts; reserve key 0 and write it last (read order is by key)
    ranges = []
    key = 1
    for label, images in enumerate(identities):
        start = key
        for buf in images:
            rec.write_idx(key, pack(IRHeader(0, float(label), key, 0), buf))
            key += 1
        ranges.append((start, key))
    num_images, num_ids = key - 1, len(ranges)
    for start, end in ranges:
        rec.write_idx(key, pack(IRHeader(0, [float(start), float(end)], key, 0), b''))
        key += 1
    rec.write_idx(0, pack(IRHeader(0, [float(num_images + 1), float(num_images + 1 + num_ids)],
                                   0, 0), b''))
    rec.close()
    with open(os.path.join(out_dir, 'property'), 'w') as f:
        f.write(f'{num_ids},{image_size[0]},{image_size[1]}\n')
    return num_images, num_ids


def face_record_keys(rec: MXIndexedRecordIO) -> Tuple[np.ndarray, List[int]]:
    """The image keys and the identity-record keys of a face record set.

    With insightface's header (record 0, ``flag > 0``, ``label = [end of images, end of
    identity records]``) the images are keys ``1 .. label[0]-1`` and the identity records follow;
    without it every key is an image and there are no identity records.

    Returns:
        tuple[array[int64], list[int]]: image keys, identity-record keys.
    """
    header = unpack(rec.read_idx(0))[0] if 0 in rec.idx else None
    if header is not None and header.flag > 0:
        end_images, end_ids = int(header.label[0]), int(header.label[1])
        return np.arange(1, end_images, dtype=np.int64), list(range(end_images, end_ids))
    return np.asarray(rec.keys, dtype=np.int64), []


def check_face_records(idx_path: str, rec_path: str,
                       max_problems: int = 20) -> Tuple[int, List[str]]:
    """Reads every record of a face record set and decodes every image.

    Checks what training would meet only when it reaches a record: magic numbers, truncation,
    ``.idx`` offsets, keys the header promises, label arrays, and image payloads.

    Args:
        idx_path (str): The ``.idx`` file. rec_path (str): The ``.rec`` file.
        max_problems (int): Stop after this many broken records. Default: 20.

    Returns:
        tuple[int, list[str]]: The number of records read and one message per broken record.

    Raises:
        RecordIOError: the index or the header record 0 cannot be read at all.
    """
    problems = []
    checked = 0
    with MXIndexedRecordIO(idx_path, rec_path, 'r') as rec:
        image_keys, identity_keys = face_record_keys(rec)
        reads = itertools.chain(((int(k), rec.read_img) for k in image_keys),
                                ((k, lambda key: unpack(rec.read_idx(key)))
                                 for k in identity_keys))
        for key, read in reads:
            if len(problems) >= max_problems:
                break
            checked += 1
            try:
                read(key)
            except KeyError:
                problems.append(f'{idx_path}: no record with key {key}, which the header '
                                'record 0 of this set lists')
            except RecordIOError as error:
                message = str(error)
                problems.append(message if message.startswith(rec_path) else
                                f'{rec_path}: record key {key}: {message}')
    return checked, problems

"""insightface's verification-set format (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...).

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` is a list of ``2N`` encoded images
(JPEG/PNG bytes; ``str`` in the files Python 2 wrote) and ``issame_list`` ``N`` booleans; pair
``i`` is images ``2i`` and ``2i+1``.

:func:`load_bin` unpickles with an unpickler that builds nothing but those lists, tuples, bytes
and booleans: a file whose pickle names any function or class (which ``pickle.load`` would
import and call) is refused without calling it. The one exception is ``_codecs.encode(text,
'latin1')``, the call Python 3 writes for ``bytes`` in pickle protocols 0-2; it is answered by
encoding the text, not by importing anything.
"""
import io
import pickle
from typing import List, Sequence, Tuple, Union

import numpy as np


class BinFormatError(ValueError):
    """A .bin file that is not a valid verification set."""


def _latin1_bytes(text, encoding):
    """Stands in for ``_codecs.encode`` (Python 3's pickling of bytes at protocols 0-2)."""
    if not isinstance(text, str) or encoding != 'latin1':
        raise pickle.UnpicklingError(f"_codecs.encode is allowed only as (str, 'latin1'), got "
                                     f'({type(text).__name__}, {encoding!r})')
    return text.encode('latin1')


class _VerificationSetUnpickler(pickle.Unpickler):
    """Builds containers, bytes and booleans only; refuses every global (no import, no call)."""

    def find_class(self, module, name):
        if (module, name) == ('_codecs', 'encode'):
            return _latin1_bytes
        raise pickle.UnpicklingError(f'the pickle refers to {module}.{name}; a verification '
                                     '.bin holds only encoded images and booleans')


def _unpickle(path: str, data: bytes):
    """Unpickles ``data`` (Python 2 ``str`` become bytes) or raises BinFormatError naming path."""
    try:
        return _VerificationSetUnpickler(io.BytesIO(data), encoding='bytes').load()
    except Exception as error:  # noqa: BLE001 - nothing can run: any failure is a format error
        raise BinFormatError(f'{path}: not a verification .bin (unpickling failed: '
                             f'{type(error).__name__}: {error})') from None


def load_bin(path: str) -> Tuple[List[bytes], List[bool]]:
    """Reads a ``.bin`` verification set (written by Python 2 or 3) without running its code.

    Returns:
        tuple[list[bytes], list[bool]]: The ``2N`` encoded images and the ``N`` pair flags.

    Raises:
        BinFormatError: the file is not a pickle of ``(list of bytes, list of bool)``, refers to
            a function or class, or holds a number of images other than twice its pairs.
    """
    with open(path, 'rb') as f:
        data = f.read()
    obj = _unpickle(path, data)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2
            and all(isinstance(part, (tuple, list)) for part in obj)):
        raise BinFormatError(f'{path}: expected a pickled (images, issame) pair of lists, '
                             f'got {type(obj).__name__}')
    bins, issame = obj
    for i, buf in enumerate(bins):
        if not isinstance(buf, (bytes, bytearray)):
            raise BinFormatError(f'{path}: image {i} is a {type(buf).__name__}, expected the '
                                 'bytes of an encoded image')
    for i, flag in enumerate(issame):
        if not isinstance(flag, bool):
            raise BinFormatError(f'{path}: pair flag {i} is a {type(flag).__name__}, expected '
                                 'a bool')
    if len(bins) != 2 * len(issame):
        raise BinFormatError(f'{path}: {len(bins)} images for {len(issame)} pairs; a .bin must '
                             f'hold exactly 2 images per pair ({2 * len(issame)})')
    return [bytes(b) for b in bins], list(issame)


def decode_image(buf: bytes, image_size: Union[int, Sequence[int]] = 112) -> np.ndarray:
    """Decodes one image to BGR HWC uint8 (3 channels) and resizes it to ``image_size``."""
    import cv2
    img = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise BinFormatError(f'an image of {len(buf)} bytes could not be decoded')
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return img


def check_bin(path: str) -> List[str]:
    """Loads a ``.bin`` and decodes every image; returns one message per image that fails.

    Raises:
        BinFormatError: the file itself is not a verification set (see :func:`load_bin`).
    """
    bins, _ = load_bin(path)
    problems = []
    for i, buf in enumerate(bins):
        try:
            decode_image(buf)
        except BinFormatError as error:
            problems.append(f'{path}: image {i} (pair {i // 2}): {error}')
    return problems


def save_bin(path: str, images: Sequence[Union[bytes, np.ndarray]], issame: Sequence[bool],
             img_fmt: str = '.jpg', quality: int = 95) -> None:
    """Writes a ``.bin`` verification set (arrays are encoded with OpenCV, BGR HWC uint8)."""
    import cv2
    if len(images) != 2 * len(issame):
        raise BinFormatError(f'{path}: {len(images)} images for {len(issame)} pairs; '
                             'need exactly 2 per pair')
    bins = []
    for img in images:
        if isinstance(img, np.ndarray):
            params = [cv2.IMWRITE_JPEG_QUALITY, quality] if img_fmt == '.jpg' else []
            ok, buf = cv2.imencode(img_fmt, img, params)
            if not ok:
                raise ValueError(f'cannot encode an image of shape {img.shape}')
            img = buf.tobytes()
        bins.append(bytes(img))
    with open(path, 'wb') as f:
        pickle.dump((bins, [bool(x) for x in issame]), f, protocol=pickle.HIGHEST_PROTOCOL)

"""insightface's verification-set format (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...).

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` is a list of ``2N`` encoded images
(JPEG/PNG bytes) and ``issame_list`` ``N`` booleans; pair ``i`` is images ``2i`` and ``2i+1``.
Files written by Python 2 need ``encoding='bytes'`` to unpickle; :func:`load_bin` handles both.
"""
import pickle
from typing import List, Sequence, Tuple, Union

import numpy as np


class BinFormatError(ValueError):
    """A .bin file that is not a valid verification set."""


def load_bin(path: str) -> Tuple[List[bytes], List[bool]]:
    """Reads a ``.bin`` verification set.

    Returns:
        tuple[list[bytes], list[bool]]: The ``2N`` encoded images and the ``N`` pair flags.

    Raises:
        BinFormatError: not a pickle of two lists, or the image count is not 2x the pair count.
    """
    try:
        with open(path, 'rb') as f:
            obj = pickle.load(f)
    except UnicodeDecodeError:
        with open(path, 'rb') as f:
            obj = pickle.load(f, encoding='bytes')
    except (pickle.UnpicklingError, EOFError) as error:
        raise BinFormatError(f'{path}: not a verification .bin (pickle error: {error})') from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise BinFormatError(f'{path}: expected a pickled (images, issame) pair, '
                             f'got {type(obj).__name__}')
    bins, issame = list(obj[0]), [bool(x) for x in obj[1]]
    if len(bins) != 2 * len(issame):
        raise BinFormatError(f'{path}: {len(bins)} images for {len(issame)} pairs; a .bin must '
                             f'hold exactly 2 images per pair ({2 * len(issame)})')
    return [bytes(b) for b in bins], issame


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

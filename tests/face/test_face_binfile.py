"""insightface .bin verification sets: round trip and malformed files."""
import pickle

import numpy as np
import pytest

from drconv.face import BinFormatError, decode_image, load_bin, save_bin


def test_bin_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(4)]
    save_bin(str(tmp_path / 's.bin'), imgs, [True, False], img_fmt='.png')
    bins, issame = load_bin(str(tmp_path / 's.bin'))
    assert issame == [True, False] and len(bins) == 4
    np.testing.assert_array_equal(decode_image(bins[2]), imgs[2])
    assert decode_image(bins[0], 64).shape == (64, 64, 3)


def test_python2_style_bytes_pickle(tmp_path):
    # insightface's lfw.bin: a tuple of (list of bytes, list of bool) pickled by Python 2
    path = tmp_path / 'lfw.bin'
    with open(path, 'wb') as f:
        pickle.dump(([b'\xff\xd8a', b'\xff\xd8b'], [True]), f, protocol=2)
    assert load_bin(str(path)) == ([b'\xff\xd8a', b'\xff\xd8b'], [True])


def test_image_count_must_be_twice_the_pairs(tmp_path):
    path = tmp_path / 'bad.bin'
    with open(path, 'wb') as f:
        pickle.dump(([b'a', b'b', b'c'], [True, False]), f)
    with pytest.raises(BinFormatError, match=r'bad\.bin: 3 images for 2 pairs'):
        load_bin(str(path))

"""insightface .bin verification sets: round trip, Python 2 files, malformed and crafted files."""
import os
import pickle
import struct

import cv2
import numpy as np
import pytest

from drconv.face import BinFormatError, check_bin, decode_image, load_bin, save_bin


def png(value: int) -> bytes:
    """A tiny encoded image (8x8 grey PNG)."""
    return cv2.imencode('.png', np.full((8, 8, 3), value, np.uint8))[1].tobytes()


def python2_pickle(images, issame) -> bytes:
    """What Python 2's ``pickle.dump((images, issame), f, protocol=2)`` writes: the images as
    ``str`` (SHORT_BINSTRING / BINSTRING), the flags as NEWTRUE / NEWFALSE."""
    out = [b'\x80\x02', b']', b'(']  # PROTO 2, EMPTY_LIST, MARK
    for buf in images:
        out.append(b'U' + bytes([len(buf)]) + buf if len(buf) < 256
                   else b'T' + struct.pack('<i', len(buf)) + buf)
    out += [b'e', b']', b'(']  # APPENDS, EMPTY_LIST, MARK
    out += [b'\x88' if flag else b'\x89' for flag in issame]
    out += [b'e', b'\x86', b'.']  # APPENDS, TUPLE2, STOP
    return b''.join(out)


def test_bin_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(4)]
    save_bin(str(tmp_path / 's.bin'), imgs, [True, False], img_fmt='.png')
    bins, issame = load_bin(str(tmp_path / 's.bin'))
    assert issame == [True, False] and len(bins) == 4
    np.testing.assert_array_equal(decode_image(bins[2]), imgs[2])
    assert decode_image(bins[0], 64).shape == (64, 64, 3)


def test_python2_file_loads(tmp_path):
    # insightface's lfw.bin was written by Python 2: str images (JPEG bytes, not ASCII)
    images = [png(10), png(200) * 3, b'\xff\xd8\xff\xe0' + bytes(range(256)), png(90)]
    path = tmp_path / 'lfw.bin'
    path.write_bytes(python2_pickle(images, [True, False]))
    assert pickle.loads(path.read_bytes(), encoding='bytes') == (images, [True, False])
    assert load_bin(str(path)) == (images, [True, False])


@pytest.mark.parametrize('protocol', [0, 2, 5])
def test_python3_files_load(tmp_path, protocol):
    # protocols 0-2 write bytes as a call of _codecs.encode(text, 'latin1')
    path = tmp_path / 'p.bin'
    path.write_bytes(pickle.dumps(([b'\xff\xd8a', b'\x00b'], [False]), protocol=protocol))
    assert load_bin(str(path)) == ([b'\xff\xd8a', b'\x00b'], [False])


def test_a_pickle_that_calls_a_function_is_refused_without_calling_it(tmp_path):
    target = tmp_path / 'created-by-the-pickle'

    class Crafted:
        def __reduce__(self):
            return os.makedirs, (str(target), )

    path = tmp_path / 'lfw.bin'
    path.write_bytes(pickle.dumps(([Crafted(), b'x'], [True]), protocol=2))
    with pytest.raises(BinFormatError, match=r'lfw\.bin: .*os\.makedirs'):
        load_bin(str(path))
    assert not target.exists()
    # _codecs.encode is answered only for what pickle writes for bytes
    path.write_bytes(b'\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf-8\x86R.')
    with pytest.raises(BinFormatError, match=r"lfw\.bin: .*\(str, 'latin1'\)"):
        load_bin(str(path))


@pytest.mark.parametrize('obj, message', [
    (([b'a', b'b', b'c'], [True, False]), r'3 images for 2 pairs'),
    (([b'a', 'b'], [True]), r'image 1 is a str'),
    (([b'a', b'b'], [1]), r'pair flag 0 is a int'),
    ({'images': []}, r'expected a pickled \(images, issame\) pair'),
])
def test_wrong_contents_name_the_file(tmp_path, obj, message):
    path = tmp_path / 'bad.bin'
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(BinFormatError, match=r'bad\.bin: ' + message):
        load_bin(str(path))


def test_fuzzed_files_raise_bin_format_error_naming_the_file(tmp_path):
    """300 seeded mutations of valid files: each loads as a valid set or raises BinFormatError
    with the file's name (never MemoryError, UnicodeDecodeError, UnpicklingError, ...)."""
    images, issame = [png(v) for v in (0, 60, 120, 180)], [True, False]
    seeds = [python2_pickle(images, issame), pickle.dumps((images, issame), protocol=2),
             pickle.dumps((images, issame), protocol=5)]
    rng = np.random.default_rng(0)
    path = tmp_path / 'fuzz.bin'
    errors = 0
    for trial in range(300):
        data = bytearray(seeds[trial % len(seeds)])
        kind = trial % 5
        pos = int(rng.integers(len(data)))
        if kind == 0:  # flip a few bytes
            for p in rng.integers(len(data), size=int(rng.integers(1, 4))):
                data[p] ^= int(rng.integers(1, 256))
        elif kind == 1:  # truncate
            del data[pos:]
        elif kind == 2:  # insert random bytes
            data[pos:pos] = rng.bytes(int(rng.integers(1, 9)))
        elif kind == 3:  # a huge length field
            data[pos:pos + 4] = struct.pack('<I', int(rng.integers(2**28, 2**32)))
        else:  # a random opcode
            data[pos] = int(rng.choice(list(b'cRbios\x93\x81\x82\x8a\x8c\x95\x96\x97\x98')))
        path.write_bytes(bytes(data))
        try:
            bins, flags = load_bin(str(path))
        except BinFormatError as error:
            assert str(path) in str(error), (trial, error)
            errors += 1
            continue
        assert all(isinstance(b, bytes) for b in bins) and len(bins) == 2 * len(flags), trial
    assert errors > 100


def test_check_bin_names_file_image_and_pair(tmp_path):
    path = tmp_path / 'cfp.bin'
    save_bin(str(path), [png(1), png(2), b'\xff\xd8 not a jpeg' * 40, png(3)], [True, False])
    assert check_bin(str(path)) == [
        f'{path}: image 2 (pair 1): an image of 520 bytes could not be decoded']

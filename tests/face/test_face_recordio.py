"""RecordIO without mxnet: round trips, insightface's header record, and bad files."""
import struct

import numpy as np
import pytest

from drconv.face import RecordIOError, recordio


def _write(tmp_path, payloads):
    rec = recordio.MXIndexedRecordIO(str(tmp_path / 'a.idx'), str(tmp_path / 'a.rec'), 'w')
    for key, buf in payloads.items():
        rec.write_idx(key, buf)
    rec.close()
    return recordio.MXIndexedRecordIO(str(tmp_path / 'a.idx'), str(tmp_path / 'a.rec'), 'r')


def test_roundtrip_headers_and_array_labels(tmp_path):
    payloads = {
        0: recordio.pack(recordio.IRHeader(0, [3.0, 5.0], 0, 0), b''),
        1: recordio.pack(recordio.IRHeader(0, 7.0, 1, 0), b'abc'),
        2: recordio.pack(recordio.IRHeader(0, np.array([1.5, 2.5, 3.5]), 2, 9), b'x' * 13),
    }
    rec = _write(tmp_path, payloads)
    assert rec.keys == [0, 1, 2]
    header, body = recordio.unpack(rec.read_idx(0))
    assert header.flag == 2 and body == b''
    np.testing.assert_array_equal(header.label, [3.0, 5.0])
    header, body = recordio.unpack(rec.read_idx(1))
    assert (header.flag, header.label, header.id, body) == (0, 7.0, 1, b'abc')
    header, body = recordio.unpack(rec.read_idx(2))
    assert header.flag == 3 and header.id2 == 9 and body == b'x' * 13
    np.testing.assert_array_equal(header.label, [1.5, 2.5, 3.5])
    # sequential reading returns records in file order, then None
    rec.reset()
    assert [rec.read() for _ in range(3)] == list(payloads.values())
    assert rec.read() is None
    rec.close()


def test_payload_holding_the_magic_number_is_split_and_restored(tmp_path):
    magic = struct.pack('<I', recordio.MAGIC)
    payload = b'abcd' + magic + b'efgh' + magic + magic + b'ij'
    rec = _write(tmp_path, {5: payload, 6: b'tail'})
    assert rec.read_idx(5) == payload
    assert rec.read_idx(6) == b'tail'
    raw = (tmp_path / 'a.rec').read_bytes()
    assert struct.unpack('<I', raw[4:8])[0] >> 29 == 1  # first part of a split record


def test_image_records(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    rec = _write(tmp_path, {1: recordio.pack_img((0, 4.0, 1, 0), img, img_fmt='.png')})
    header, decoded = recordio.unpack_img(rec.read_idx(1))
    assert header.label == 4.0
    np.testing.assert_array_equal(decoded, img)


def test_write_face_records_layout(tmp_path):
    ids = [[b'a', b'b'], [b'c'], [b'd', b'e', b'f']]
    assert recordio.write_face_records(str(tmp_path), ids) == (6, 3)
    rec = recordio.MXIndexedRecordIO(str(tmp_path / 'train.idx'), str(tmp_path / 'train.rec'),
                                     'r')
    header, _ = recordio.unpack(rec.read_idx(0))
    np.testing.assert_array_equal(header.label, [7, 10])
    labels = [recordio.unpack(rec.read_idx(k))[0].label for k in range(1, 7)]
    assert labels == [0, 0, 1, 2, 2, 2]
    header, _ = recordio.unpack(rec.read_idx(9))
    np.testing.assert_array_equal(header.label, [4, 7])
    assert (tmp_path / 'property').read_text().strip() == '3,112,112'


def test_bad_magic_names_file_and_offset(tmp_path):
    _write(tmp_path, {0: b'1234', 1: b'5678'}).close()
    path = tmp_path / 'a.rec'
    raw = bytearray(path.read_bytes())
    raw[12:16] = b'\0\0\0\0'  # magic of the second record (offset 12)
    path.write_bytes(bytes(raw))
    rec = recordio.MXIndexedRecordIO(str(tmp_path / 'a.idx'), str(path), 'r')
    assert rec.read_idx(0) == b'1234'
    with pytest.raises(RecordIOError, match=r'a\.rec: bad magic number .* byte offset 12'):
        rec.read_idx(1)


def test_truncated_record_and_idx_past_end(tmp_path):
    _write(tmp_path, {0: b'x' * 40}).close()
    path = tmp_path / 'a.rec'
    path.write_bytes(path.read_bytes()[:30])
    rec = recordio.MXIndexedRecordIO(str(tmp_path / 'a.idx'), str(path), 'r')
    with pytest.raises(RecordIOError, match=r'a\.rec: truncated record at byte offset 0'):
        rec.read_idx(0)
    (tmp_path / 'a.idx').write_text('0\t0\n1\t4096\n')
    rec = recordio.MXIndexedRecordIO(str(tmp_path / 'a.idx'), str(path), 'r')
    with pytest.raises(RecordIOError, match=r'a\.idx: key 1 points at byte offset 4096, past '
                       r'the end of .*a\.rec'):
        rec.read_idx(1)


def _face_set(tmp_path, broken_payload=None):
    """A face record set (3 identities x 2 images); ``broken_payload`` replaces key 3's image."""
    import cv2
    img = cv2.imencode('.jpg', np.full((16, 16, 3), 90, np.uint8))[1].tobytes()
    ids = [[img, img], [img, broken_payload or img], [img, img]]
    recordio.write_face_records(str(tmp_path), ids)
    return tmp_path / 'train.idx', tmp_path / 'train.rec'


def test_a_corrupt_image_names_file_key_and_check_command(tmp_path):
    from drconv_mm.face import MXFaceDataset
    idx, rec = _face_set(tmp_path, broken_payload=b'\xff\xd8 not a jpeg' * 10)
    checked, problems = recordio.check_face_records(str(idx), str(rec))
    offset = recordio.MXIndexedRecordIO(str(idx), str(rec), 'r').idx[4]
    assert checked == 9 and problems == [
        f'{rec}: record key 4 at byte offset {offset}: payload of 130 bytes is not an image '
        '(header id=4)']
    dataset = MXFaceDataset(str(tmp_path), pipeline=[])
    assert dataset[2]['gt_label'] == 1
    with pytest.raises(RecordIOError) as error:
        dataset[3]
    assert str(error.value) == (f'{problems[0]}\nCheck every record with: python '
                                f'tools/face/pack_recordio.py --check {tmp_path}')


def test_check_finds_a_bad_magic_number_deep_in_the_file(tmp_path):
    idx, rec = _face_set(tmp_path)
    reader = recordio.MXIndexedRecordIO(str(idx), str(rec), 'r')
    offset = reader.idx[6]
    reader.close()
    raw = bytearray(rec.read_bytes())
    raw[offset:offset + 4] = b'\0\0\0\0'
    rec.write_bytes(bytes(raw))
    checked, problems = recordio.check_face_records(str(idx), str(rec))
    assert checked == 9 and len(problems) == 1
    assert problems[0].startswith(f'{rec}: bad magic number 0x00000000 at byte offset {offset}')
    assert problems[0].endswith('(record key 6)')

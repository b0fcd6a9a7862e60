"""Packs image folders (one per identity) into insightface's training format, or checks one.

::

    python tools/face/pack_recordio.py IMAGES_DIR OUT_DIR [--size 112] [--quality 95]
    python tools/face/pack_recordio.py --check DATA_ROOT

Packing writes ``OUT_DIR/train.rec``, ``train.idx`` and ``property`` in the MS1M layout (header
record 0, image records with float labels, one record per identity), what ``MXFaceDataset`` and
insightface's arcface_torch read. Identities are the sorted folder names, labelled 0..K-1.
Images that are not ``--size`` square (aligned crops) are resized; align raw photos first with
``tools/face/align_faces.py``.

``--check`` reads every record of ``DATA_ROOT/train.rec`` (through ``train.idx``) and decodes
every image, which training otherwise meets one record at a time; it lists the broken records
(file, key, byte offset) and exits with status 1 when there is one.
"""
import argparse
import os
import os.path as osp
import sys

import cv2

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from drconv.face import recordio  # noqa: E402

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def list_identities(root):
    """[(identity name, [image paths])] of the folders under ``root``, sorted by name.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    if not osp.isdir(root):
        raise FileNotFoundError(f'{root} is not a folder (expected one folder per identity: '
                                f'{osp.join(root, "<identity>", "<image>.jpg")})')
    out = []
    for name in sorted(d.name for d in os.scandir(root) if d.is_dir()):
        folder = osp.join(root, name)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMG_EXTENSIONS))
        if files:
            out.append((name, [osp.join(folder, f) for f in files]))
    return out


def encoded_images(paths, size, quality):
    for path in paths:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f'error: cannot read image {path}')
        if img.shape[:2] != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        yield buf.tobytes()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images_dir', nargs='?',
                        help='folder of identity folders (<identity>/<image>.jpg) to pack')
    parser.add_argument('out_dir', nargs='?',
                        help='folder to write train.rec, train.idx and property to')
    parser.add_argument('--size', type=int, default=112,
                        help='side of the square images written (default: 112)')
    parser.add_argument('--quality', type=int, default=95, help='JPEG quality (default: 95)')
    parser.add_argument('--check', metavar='DATA_ROOT', default=None,
                        help='instead of packing, read and decode every record of '
                        'DATA_ROOT/train.rec (default: off)')
    return parser


def check(parser, data_root: str) -> None:
    """Reads every record of ``data_root``; exits with status 1 listing the broken ones."""
    rec_path, idx_path = osp.join(data_root, 'train.rec'), osp.join(data_root, 'train.idx')
    for path in (rec_path, idx_path):
        if not osp.isfile(path):
            parser.error(f'--check {data_root}: {path} does not exist')
    try:
        checked, problems = recordio.check_face_records(idx_path, rec_path)
    except recordio.RecordIOError as error:
        sys.exit(f'error: {error}')
    if problems:
        sys.exit('error: broken records (training stops at the first one it reads):\n  '
                 + '\n  '.join(problems))
    print(f'{rec_path}: all {checked} records read, every image decodes')


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check is not None:
        if args.images_dir is not None:
            parser.error('--check DATA_ROOT takes no IMAGES_DIR/OUT_DIR')
        return check(parser, args.check)
    if args.out_dir is None:
        parser.error('packing needs IMAGES_DIR and OUT_DIR (or --check DATA_ROOT)')
    try:
        identities = list_identities(args.images_dir)
    except FileNotFoundError as error:
        parser.error(str(error))
    if not identities:
        parser.error(f'no identity folders with images under {args.images_dir}')
    num_images, num_ids = recordio.write_face_records(
        args.out_dir, (encoded_images(paths, args.size, args.quality) for _, paths in identities),
        (args.size, args.size))
    print(f'packed {num_images} images of {num_ids} identities into '
          f'{osp.join(args.out_dir, "train.rec")}')


if __name__ == '__main__':
    main()

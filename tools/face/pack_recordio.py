"""Packs image folders (one folder per identity) into insightface's training format.

::

    python tools/face/pack_recordio.py IMAGES_DIR OUT_DIR [--size 112] [--quality 95]

Writes ``OUT_DIR/train.rec``, ``train.idx`` and ``property`` in the MS1M layout (header record
0, image records with float labels, one record per identity), what ``MXFaceDataset`` and
insightface's arcface_torch read. Identities are the sorted folder names, labelled 0..K-1.
Images that are not ``--size`` square (aligned crops) are resized; align raw photos first with
``tools/face/align_faces.py``.
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
    """[(identity name, [image paths])] of the folders under ``root``, sorted by name."""
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('images_dir', help='folder of identity folders')
    parser.add_argument('out_dir')
    parser.add_argument('--size', type=int, default=112)
    parser.add_argument('--quality', type=int, default=95, help='JPEG quality')
    args = parser.parse_args(argv)
    identities = list_identities(args.images_dir)
    if not identities:
        raise SystemExit(f'error: no identity folders with images under {args.images_dir}')
    num_images, num_ids = recordio.write_face_records(
        args.out_dir, (encoded_images(paths, args.size, args.quality) for _, paths in identities),
        (args.size, args.size))
    print(f'packed {num_images} images of {num_ids} identities into '
          f'{osp.join(args.out_dir, "train.rec")}')


if __name__ == '__main__':
    main()

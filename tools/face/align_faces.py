"""Aligns face photos to 112x112 ArcFace crops from 5-point landmarks (insightface's norm_crop).

::

    python tools/face/align_faces.py LANDMARKS.txt OUT_DIR [--size 112]

``LANDMARKS.txt`` has one line per photo: ``path x1 y1 x2 y2 ... x5 y5`` (left eye, right eye,
nose tip, left and right mouth corners, in pixels, as insightface's detectors give them). The
crop is insightface's ``norm_crop``: the least-squares similarity transform from the landmarks to
ArcFace's reference points (``insightface.utils.face_align.arcface_dst``, scaled to the crop
size), applied with ``cv2.warpAffine``. The transform comes from scikit-image's
``estimate_transform('similarity', ...)``: insightface's own ``estimate_norm`` calls
``SimilarityTransform.estimate``, which scikit-image deprecates (removed in 2.2). Each crop is
written to ``OUT_DIR/<identity folder>/<file name>``, keeping the photo's parent folder as
identity, ready for ``pack_recordio.py`` / ``make_pairs_bin.py``.
"""
import argparse
import os
import os.path as osp

import cv2
import numpy as np


def arcface_transform(landmarks, size: int = 112) -> np.ndarray:
    """The 2x3 affine matrix that maps 5 landmarks (x, y) onto ArcFace's reference points.

    The reference points are insightface's for 112x112 crops, scaled by ``size/112`` (or, for
    multiples of 128, by ``size/128`` and shifted right by ``8*size/128``), as ``norm_crop`` does.
    """
    from insightface.utils.face_align import arcface_dst
    from skimage.transform import estimate_transform
    if size % 112 and size % 128:
        raise ValueError(f'ArcFace crops are multiples of 112 or 128 pixels, got {size}')
    ratio = size / 112.0 if size % 112 == 0 else size / 128.0
    dst = arcface_dst * ratio
    if size % 112:
        dst[:, 0] += 8.0 * ratio
    src = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    transform = estimate_transform('similarity', src, dst)
    if not transform:
        raise ValueError(f'no similarity transform maps the landmarks {src.tolist()} onto '
                         "ArcFace's points (are they all the same point?)")
    return transform.params[0:2, :]


def align(img: np.ndarray, landmarks, size: int = 112) -> np.ndarray:
    """The ArcFace crop (``size`` x ``size``, as ``img``: BGR HWC uint8) from 5 landmarks."""
    return cv2.warpAffine(img, arcface_transform(landmarks, size), (size, size), borderValue=0.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('landmarks', help='text file, one photo per line: its path and the 10 '
                        'landmark coordinates x1 y1 ... x5 y5 in pixels')
    parser.add_argument('out_dir', help='folder the crops go to, one subfolder per identity '
                        "(the photo's parent folder name)")
    parser.add_argument('--size', type=int, default=112,
                        help='crop side, a multiple of 112 or 128 (default: 112)')
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size <= 0 or (args.size % 112 and args.size % 128):
        parser.error(f'--size {args.size}: ArcFace crops are multiples of 112 or 128 pixels')
    if not osp.isfile(args.landmarks):
        parser.error(f'{args.landmarks} is not a file')
    count = 0
    with open(args.landmarks) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 11:
                raise SystemExit(f'error: {args.landmarks}:{line_no}: expected a path and 10 '
                                 f'numbers, got {len(fields)} fields')
            try:
                path, coords = fields[0], [float(v) for v in fields[1:]]
            except ValueError:
                raise SystemExit(f'error: {args.landmarks}:{line_no}: the 10 landmark '
                                 f'coordinates must be numbers, got {fields[1:]}') from None
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            if img is None:
                raise SystemExit(f'error: {args.landmarks}:{line_no}: cannot read {path}')
            identity = osp.basename(osp.dirname(osp.abspath(path)))
            out_path = osp.join(args.out_dir, identity, osp.basename(path))
            os.makedirs(osp.dirname(out_path), exist_ok=True)
            cv2.imwrite(out_path, align(img, coords, args.size))
            count += 1
    print(f'aligned {count} faces into {args.out_dir}')


if __name__ == '__main__':
    main()

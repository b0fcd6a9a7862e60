"""Aligns face photos to 112x112 ArcFace crops from 5-point landmarks (insightface's norm_crop).

::

    python tools/face/align_faces.py LANDMARKS.txt OUT_DIR [--size 112]

``LANDMARKS.txt`` has one line per photo: ``path x1 y1 x2 y2 ... x5 y5`` (left eye, right eye,
nose tip, left and right mouth corners, in pixels, as insightface's detectors give them). The
crop is ``insightface.utils.face_align.norm_crop`` (the similarity transform to ArcFace's
reference points); it is written to ``OUT_DIR/<identity folder>/<file name>`` keeping the photo's
parent folder as identity, ready for ``pack_recordio.py`` / ``make_pairs_bin.py``.
"""
import argparse
import os
import os.path as osp

import cv2
import numpy as np


def align(img: np.ndarray, landmarks, size: int = 112) -> np.ndarray:
    """The ArcFace crop of ``img`` (BGR) from 5 (x, y) landmarks, by insightface's norm_crop."""
    from insightface.utils.face_align import norm_crop
    kps = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    return norm_crop(img, kps, image_size=size)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('landmarks', help='text file: path x1 y1 ... x5 y5 per line')
    parser.add_argument('out_dir')
    parser.add_argument('--size', type=int, default=112, help='crop side (a multiple of 112 '
                        'or 128, as norm_crop requires)')
    args = parser.parse_args(argv)
    count = 0
    with open(args.landmarks) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 11:
                raise SystemExit(f'error: {args.landmarks}:{line_no}: expected a path and 10 '
                                 f'numbers, got {len(fields)} fields')
            path, coords = fields[0], [float(v) for v in fields[1:]]
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

"""Builds an insightface ``.bin`` verification set from image folders, or checks one.

::

    python tools/face/make_pairs_bin.py IMAGES_DIR OUT.bin --same 3000 --diff 3000 [--seed 0]
    python tools/face/make_pairs_bin.py --check lfw.bin

Draws ``--same`` pairs of two images of one identity and ``--diff`` pairs of two identities,
interleaved same/different as LFW's folds mix them, and writes ``(images, issame)`` pickled as
insightface's .bin (images JPEG-encoded, resized to ``--size`` when they differ).

``--check`` loads a ``.bin`` (without running code from it) and decodes every image, which
evaluation otherwise meets one at a time; it lists the broken images (file, index, pair) and
exits with status 1 when there is one.
"""
import argparse
import os.path as osp
import sys

import cv2
import numpy as np

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from drconv.face import BinFormatError, check_bin, save_bin  # noqa: E402
from tools.face.pack_recordio import list_identities  # noqa: E402


def draw_pairs(identities, num_same, num_diff, rng):
    """Lists (path a, path b, issame), same and different pairs alternating."""
    multi = [paths for _, paths in identities if len(paths) >= 2]
    if num_same and not multi:
        raise SystemExit('error: same pairs need an identity with at least 2 images')
    if num_diff and len(identities) < 2:
        raise SystemExit('error: different pairs need at least 2 identities')
    same, diff = [], []
    for _ in range(num_same):
        paths = multi[rng.integers(len(multi))]
        a, b = rng.choice(len(paths), 2, replace=False)
        same.append((paths[a], paths[b], True))
    for _ in range(num_diff):
        i, j = rng.choice(len(identities), 2, replace=False)
        pa, pb = identities[i][1], identities[j][1]
        diff.append((pa[rng.integers(len(pa))], pb[rng.integers(len(pb))], False))
    pairs = []
    for k in range(max(len(same), len(diff))):
        pairs += same[k:k + 1] + diff[k:k + 1]
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images_dir', nargs='?',
                        help='folder of identity folders (<identity>/<image>.jpg)')
    parser.add_argument('out', nargs='?', help='the .bin file to write')
    parser.add_argument('--same', type=int, default=3000,
                        help='number of same-identity pairs (default: 3000, as LFW)')
    parser.add_argument('--diff', type=int, default=3000,
                        help='number of different-identity pairs (default: 3000, as LFW)')
    parser.add_argument('--size', type=int, default=112,
                        help='side of the square images written (default: 112)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the pair drawing (default: 0)')
    parser.add_argument('--check', metavar='BIN', default=None,
                        help='instead of writing, load BIN and decode every image '
                        '(default: off)')
    return parser


def check(path: str) -> None:
    """Decodes every image of the .bin ``path``; exits with status 1 listing the broken ones."""
    try:
        problems = check_bin(path)
    except (OSError, BinFormatError) as error:
        sys.exit(f'error: {error}')
    if problems:
        sys.exit('error: images that do not decode:\n  ' + '\n  '.join(problems))
    print(f'{path}: every image decodes')


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check is not None:
        if args.images_dir is not None:
            parser.error('--check BIN takes no IMAGES_DIR/OUT')
        return check(args.check)
    if args.out is None:
        parser.error('writing needs IMAGES_DIR and OUT (or --check BIN)')
    rng = np.random.default_rng(args.seed)
    try:
        identities = list_identities(args.images_dir)
    except FileNotFoundError as error:
        parser.error(str(error))
    pairs = draw_pairs(identities, args.same, args.diff, rng)
    images, issame = [], []
    for a, b, same in pairs:
        for path in (a, b):
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            if img is None:
                raise SystemExit(f'error: cannot read image {path}')
            if img.shape[:2] != (args.size, args.size):
                img = cv2.resize(img, (args.size, args.size), interpolation=cv2.INTER_AREA)
            images.append(img)
        issame.append(same)
    save_bin(args.out, images, issame)
    print(f'wrote {len(issame)} pairs ({sum(issame)} same) to {args.out}')


if __name__ == '__main__':
    main()

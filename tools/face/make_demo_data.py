"""Writes a synthetic face-recognition data set in insightface's formats (for the CPU demo, tests).

Each identity is a procedurally drawn "face" with its own geometry, colours and marks
(face oval, hair, eyes, brows, nose, mouth, a low-frequency skin texture and a few spots).
Every image of an identity is a new view of it: rotation, scale, shift (pose), brightness,
contrast and colour casts, blur and sensor noise. ``--hard`` writes a harder variant: each view
on a background of its own (the demo's identities keep theirs), a wider pose range, stronger
colour casts, noise and blur, and half the views partly covered by an occluder (a random
rectangle, as sunglasses, a mask or a hand would). Output (insightface's layout)::

    OUT/train.rec, train.idx, property      training identities (RecordIO, MS1M header)
    OUT/synth.bin                           verification pairs of held-out identities

    python tools/face/make_demo_data.py data/face_demo --train-ids 300 --per-id 24
    python tools/face/make_demo_data.py data/face_demo_hard --hard
"""
import argparse
import os.path as osp
import sys
import time

import cv2
import numpy as np

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from drconv.face import recordio, save_bin  # noqa: E402

SIZE = 112


def random_identity(rng: np.random.Generator) -> dict:
    """The fixed traits of one synthetic identity."""
    def colour(lo=0, hi=255):
        return tuple(int(c) for c in rng.integers(lo, hi, 3))

    return dict(
        background=colour(),
        skin=colour(60, 250),
        hair=colour(0, 200),
        hair_height=rng.uniform(0.15, 0.45),
        face_axes=(rng.uniform(26, 40), rng.uniform(34, 48)),
        eye_dx=rng.uniform(10, 20), eye_y=rng.uniform(-12, 2), eye_r=rng.uniform(3, 7),
        eye_colour=colour(0, 160),
        brow_tilt=rng.uniform(-0.4, 0.4), brow_colour=colour(0, 120),
        nose_len=rng.uniform(6, 16), nose_w=rng.uniform(3, 8),
        mouth_y=rng.uniform(14, 26), mouth_w=rng.uniform(8, 20), mouth_curve=rng.uniform(-6, 6),
        mouth_colour=colour(80, 255),
        texture=rng.integers(-40, 40, (4, 4, 3)).astype(np.float32),
        spots=[(rng.uniform(-25, 25), rng.uniform(-25, 30), rng.uniform(2, 6), colour())
               for _ in range(rng.integers(1, 4))],
    )


def render(identity: dict) -> np.ndarray:
    """The canonical 112x112 BGR picture of ``identity`` (drawn once per identity)."""
    s = 4  # draw at 4x and downsample: smooth edges
    c = SIZE * s // 2
    img = np.empty((SIZE * s, SIZE * s, 3), np.uint8)
    img[:] = identity['background']
    ax, ay = identity['face_axes']
    hair_top = int(c - ay * s * 1.15)
    cv2.ellipse(img, (c, c), (int(ax * 1.12 * s), int(ay * 1.15 * s)), 0, 180, 360,
                identity['hair'], -1)
    cv2.ellipse(img, (c, c), (int(ax * s), int(ay * s)), 0, 0, 360, identity['skin'], -1)
    cut = int(c - ay * s + identity['hair_height'] * ay * s)
    cv2.rectangle(img, (0, hair_top), (SIZE * s, cut), identity['hair'], -1)
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.ellipse(mask, (c, c), (int(ax * 1.12 * s), int(ay * 1.15 * s)), 0, 0, 360, 255, -1)
    img[mask == 0] = identity['background']
    texture = cv2.resize(identity['texture'], img.shape[1::-1], interpolation=cv2.INTER_CUBIC)
    img = np.clip(img.astype(np.float32) + texture * (mask[..., None] / 255.0), 0, 255)
    img = img.astype(np.uint8)

    def p(x, y):
        return int(c + x * s), int(c + y * s)

    for sign in (-1, 1):
        ex, ey = sign * identity['eye_dx'], identity['eye_y']
        cv2.circle(img, p(ex, ey), int(identity['eye_r'] * s), (245, 245, 245), -1)
        cv2.circle(img, p(ex, ey), int(identity['eye_r'] * 0.55 * s), identity['eye_colour'], -1)
        tilt = identity['brow_tilt'] * sign * 6
        cv2.line(img, p(ex - 7, ey - 8 - tilt), p(ex + 7, ey - 8 + tilt), identity['brow_colour'],
                 2 * s)
    ny = identity['eye_y'] + 4
    nose = np.array([p(0, ny), p(-identity['nose_w'], ny + identity['nose_len']),
                     p(identity['nose_w'], ny + identity['nose_len'])], np.int32)
    cv2.fillPoly(img, [nose], tuple(int(v * 0.8) for v in identity['skin']))
    my, mw, mc = identity['mouth_y'], identity['mouth_w'], identity['mouth_curve']
    mouth = np.array([p(x, my + mc * (1 - (x / mw)**2)) for x in np.linspace(-mw, mw, 12)],
                     np.int32)
    cv2.polylines(img, [mouth], False, identity['mouth_colour'], 3 * s)
    for x, y, r, col in identity['spots']:
        cv2.circle(img, p(x, y), int(r * s), col, -1)
    return cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


# How far the views of an identity vary: the demo's data, and the harder variant (--hard).
VIEWS = dict(
    demo=dict(background=False, angle=12, scale=0.1, shift=5, occluded=0.0, cast=0.2, blur=0.3,
              noise=(2, 9)),
    hard=dict(background=True, angle=20, scale=0.15, shift=8, occluded=0.5, cast=0.3, blur=0.5,
              noise=(3, 12)),
)


def augment(img: np.ndarray, rng: np.random.Generator,
            views: dict = VIEWS['demo']) -> np.ndarray:
    """A new view of a canonical picture: pose, occluder, colour, blur and noise, over the
    ranges of ``views`` (an entry of ``VIEWS``)."""
    # pose: rotation, scale, shift
    angle = rng.uniform(-views['angle'], views['angle'])
    scale = rng.uniform(1 - views['scale'], 1 + views['scale'])
    m = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), angle, scale)
    m[:, 2] += rng.uniform(-views['shift'], views['shift'], 2)
    img = cv2.warpAffine(img, m, (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT)
    if views['occluded'] and rng.random() < views['occluded']:
        w, h = rng.integers(SIZE // 4, SIZE // 2, 2)
        x, y = rng.integers(0, SIZE - w), rng.integers(0, SIZE - h)
        img = img.copy()
        img[y:y + h, x:x + w] = rng.integers(0, 256, 3)
    # colour: brightness, contrast, per-channel cast
    img = img.astype(np.float32)
    img = (img - 128) * rng.uniform(0.75, 1.25) + 128 + rng.uniform(-30, 30)
    img *= rng.uniform(1 - views['cast'], 1 + views['cast'], 3)
    if rng.random() < views['blur']:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 1.2))
    img += rng.normal(0, rng.uniform(*views['noise']), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def views_of(identity: dict, count: int, rng: np.random.Generator, views: dict) -> list:
    """``count`` views of ``identity``: (112, 112, 3) uint8 BGR images."""
    if not views['background']:
        base = render(identity)
        return [augment(base, rng, views) for _ in range(count)]
    backgrounds = (tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(count))
    return [augment(render(dict(identity, background=background)), rng, views)
            for background in backgrounds]


def encode(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


def make_pairs(rng, images_per_id, num_pairs):
    """``num_pairs`` same and ``num_pairs`` different pairs over (identity, image) indices."""
    num_ids = len(images_per_id)
    pairs = []
    for _ in range(num_pairs):
        k = int(rng.integers(num_ids))
        a, b = rng.choice(images_per_id[k], 2, replace=False)
        pairs.append(((k, a), (k, b), True))
        k1, k2 = rng.choice(num_ids, 2, replace=False)
        pairs.append(((int(k1), int(rng.integers(images_per_id[k1]))),
                      (int(k2), int(rng.integers(images_per_id[k2]))), False))
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out_dir', help='folder to write train.rec, train.idx, property and '
                        'the .bin to (the demo uses data/face_demo)')
    parser.add_argument('--train-ids', type=int, default=300,
                        help='training identities (default: 300)')
    parser.add_argument('--per-id', type=int, default=24,
                        help='images per training identity (default: 24)')
    parser.add_argument('--val-ids', type=int, default=100,
                        help='held-out identities of the .bin (default: 100)')
    parser.add_argument('--val-per-id', type=int, default=6,
                        help='images per held-out identity (default: 6)')
    parser.add_argument('--pairs', type=int, default=300,
                        help='same pairs, and as many different pairs, in the .bin '
                        '(default: 300)')
    parser.add_argument('--bin-name', default='synth',
                        help='the .bin is OUT_DIR/<bin-name>.bin (default: synth)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of identities, views and pairs (default: 0)')
    parser.add_argument('--hard', action='store_true',
                        help='the harder variant: a background per view, wider pose, occluders, '
                        'stronger colour casts, noise and blur (default: off)')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    start = time.time()
    rng = np.random.default_rng(args.seed)
    views = VIEWS['hard' if args.hard else 'demo']
    identities = [random_identity(rng) for _ in range(args.train_ids + args.val_ids)]
    train, val = identities[:args.train_ids], identities[args.train_ids:]
    num_images, num_ids = recordio.write_face_records(
        args.out_dir, (list(map(encode, views_of(identity, args.per_id, rng, views)))
                       for identity in train), (SIZE, SIZE))
    val_images = [views_of(identity, args.val_per_id, rng, views) for identity in val]
    pairs = make_pairs(rng, [args.val_per_id] * len(val), args.pairs)
    images, issame = [], []
    for (k1, i1), (k2, i2), same in pairs:
        images += [encode(val_images[k1][i1]), encode(val_images[k2][i2])]
        issame.append(same)
    bin_path = osp.join(args.out_dir, f'{args.bin_name}.bin')
    save_bin(bin_path, images, issame)
    print(f'wrote {num_images} images of {num_ids} identities to '
          f'{osp.join(args.out_dir, "train.rec")} and {len(issame)} pairs '
          f'({sum(issame)} same) of {len(val)} held-out identities to {bin_path} '
          f'in {time.time() - start:.1f}s')


if __name__ == '__main__':
    main()

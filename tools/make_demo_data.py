"""Write small synthetic data sets in the exact COCO and Cityscapes layouts.

The real dataset classes (mmdet's ``CocoDataset``, mmseg's ``CityscapesDataset``) load them
unchanged, so the demo configs differ from the real ones only in data_root and sizes::

    data/demo_coco/
        annotations/instances_train2017.json, instances_val2017.json
        train2017/000000000001.jpg ...   val2017/...
    data/demo_cityscapes/
        leftImg8bit/{train,val}/demo/demo_000000_000001_leftImg8bit.png ...
        gtFine/{train,val}/demo/demo_000000_000001_gtFine_labelTrainIds.png ...

Detection images hold a few solid-colour shapes (one class per shape) on a noisy background;
segmentation images hold a road/sky scene with buildings, cars and people, labelled with
Cityscapes train ids. The harder detection variant (``--task det-hard``, written to
``data/demo_coco_hard/`` in the same layout) draws eight shape classes in random colours (the
class is in the outline only), 2-8 objects per image over a wider range of sizes, overlapping
(later shapes occlude earlier ones), on a shaded background cluttered with unlabelled strokes and
blobs; a shape less than 60% visible is left unlabelled.

Usage::

    python tools/make_demo_data.py                  # both demo data sets under data/, if missing
    python tools/make_demo_data.py --task det --num-train 400 --force
    python tools/make_demo_data.py --task det-hard  # the harder detection variant
"""
import argparse
import json
import os
import os.path as osp

import cv2
import numpy as np
from mmengine.logging import print_log
from mmengine.utils import track_iter_progress

# Detection classes and the BGR colour each is drawn in (jittered per object).
DET_CLASSES = ('rectangle', 'ellipse', 'triangle')
DET_COLOURS = ((40, 40, 220), (40, 200, 40), (220, 60, 40))
# The harder variant's classes: outlines in the unit square (x right, y down), scaled to the box.
HARD_DET_CLASSES = DET_CLASSES + ('diamond', 'hexagon', 'cross', 'star', 'chevron')
UNIT_OUTLINES = {
    'diamond': [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)],
    'hexagon': [(0.25, 0), (0.75, 0), (1, 0.5), (0.75, 1), (0.25, 1), (0, 0.5)],
    'cross': [(1 / 3, 0), (2 / 3, 0), (2 / 3, 1 / 3), (1, 1 / 3), (1, 2 / 3), (2 / 3, 2 / 3),
              (2 / 3, 1), (1 / 3, 1), (1 / 3, 2 / 3), (0, 2 / 3), (0, 1 / 3), (1 / 3, 1 / 3)],
    'star': [(0.5 + (0.5 if i % 2 == 0 else 0.2) * np.sin(i * np.pi / 5),
              0.5 - (0.5 if i % 2 == 0 else 0.2) * np.cos(i * np.pi / 5)) for i in range(10)],
    'chevron': [(0, 0), (0.5, 0.55), (1, 0), (1, 0.45), (0.5, 1), (0, 0.45)],
}
# Cityscapes train ids used by the segmentation scenes, with their BGR colours.
ROAD, BUILDING, PERSON, SKY, CAR = 0, 2, 11, 10, 13
SEG_COLOURS = {ROAD: (90, 90, 90), BUILDING: (40, 110, 170), PERSON: (60, 20, 220),
               SKY: (230, 180, 120), CAR: (150, 30, 30)}


def noisy_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A grey image of random brightness with Gaussian pixel noise: (H, W, 3) float32."""
    base = rng.uniform(90, 170)
    return base + rng.normal(0, 18, (height, width, 3)).astype(np.float32)


def shape_polygon(rng: np.random.Generator, name: str, box: np.ndarray) -> np.ndarray:
    """The outline of the class called ``name`` inscribed in ``box`` (x1, y1, x2, y2): (N, 2)
    int32."""
    x1, y1, x2, y2 = box
    if name == 'rectangle':
        return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.int32)
    if name == 'ellipse':
        centre = (int((x1 + x2) // 2), int((y1 + y2) // 2))
        axes = (int((x2 - x1) // 2), int((y2 - y1) // 2))
        return cv2.ellipse2Poly(centre, axes, 0, 0, 360, 10).astype(np.int32)
    if name == 'triangle':
        apex = rng.integers(x1, x2 + 1)
        return np.array([[apex, y1], [x2, y2], [x1, y2]], np.int32)
    unit = np.array(UNIT_OUTLINES[name])
    return np.rint(unit * [x2 - x1, y2 - y1] + [x1, y1]).astype(np.int32)


def box_iou(box: np.ndarray, boxes: list) -> float:
    """Largest IoU between ``box`` and any of ``boxes`` (all x1, y1, x2, y2)."""
    best = 0.0
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            union = np.prod(box[2:] - box[:2]) + np.prod(other[2:] - other[:2]) - inter
            best = max(best, inter / union)
    return best


def place_box(rng: np.random.Generator, size: int, boxes: list, min_side: int, max_iou: float):
    """A box (x1, y1, x2, y2) with sides from ``min_side`` to ``size // 2`` inside the image,
    overlapping each of ``boxes`` by less than ``max_iou`` (IoU); None after 10 tries."""
    for _attempt in range(10):
        w, h = rng.integers(min_side, size // 2, 2)
        x1, y1 = rng.integers(0, size - w), rng.integers(0, size - h)
        box = np.array([x1, y1, x1 + w, y1 + h])
        if box_iou(box, boxes) < max_iou:
            return box
    return None


def det_image(rng: np.random.Generator, size: int):
    """One detection image and its objects as (label, polygon) pairs."""
    image = noisy_background(rng, size, size)
    objects, boxes = [], []
    for _ in range(rng.integers(1, 4)):
        box = place_box(rng, size, boxes, size // 6, 0.2)
        if box is None:
            continue
        label = int(rng.integers(len(DET_CLASSES)))
        polygon = shape_polygon(rng, DET_CLASSES[label], box)
        colour = np.clip(np.array(DET_COLOURS[label]) + rng.integers(-30, 31, 3), 0, 255)
        cv2.fillPoly(image, [polygon], colour.tolist())
        boxes.append(box)
        objects.append((label, polygon))
    return np.clip(image, 0, 255).astype(np.uint8), objects


def hard_det_image(rng: np.random.Generator, size: int):
    """One image of the harder variant and its objects as (label, polygon) pairs: labels index
    ``HARD_DET_CLASSES``."""
    image = noisy_background(rng, size, size)
    shading = cv2.resize(rng.normal(0, 30, (3, 3)).astype(np.float32), (size, size),
                         interpolation=cv2.INTER_CUBIC)
    image += shading[..., None]
    for _ in range(rng.integers(4, 12)):  # clutter: unlabelled strokes and blobs
        colour = rng.integers(0, 256, 3).tolist()
        if rng.random() < 0.5:
            (xa, ya), (xb, yb) = rng.integers(0, size, (2, 2))
            cv2.line(image, (int(xa), int(ya)), (int(xb), int(yb)), colour,
                     int(rng.integers(1, 4)))
        else:
            centre = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.circle(image, centre, int(rng.integers(2, size // 16)), colour, -1)
    objects, boxes = [], []
    owner = np.full((size, size), -1, np.int32)  # which object each pixel shows
    for _ in range(rng.integers(2, 9)):
        box = place_box(rng, size, boxes, size // 10, 0.4)
        if box is None:
            continue
        label = int(rng.integers(len(HARD_DET_CLASSES)))
        polygon = shape_polygon(rng, HARD_DET_CLASSES[label], box)
        cv2.fillPoly(image, [polygon], rng.integers(0, 256, 3).tolist())
        cv2.fillPoly(owner, [polygon], len(objects))
        boxes.append(box)
        objects.append((label, polygon))
    # a shape mostly hidden by later ones is drawn but not labelled (it is clutter then)
    areas = [cv2.fillPoly(np.zeros_like(owner, np.uint8), [p], 1).sum() for _, p in objects]
    visible = [obj for i, obj in enumerate(objects) if (owner == i).sum() >= 0.6 * areas[i]]
    return np.clip(image, 0, 255).astype(np.uint8), visible


def write_coco_split(root: str, split: str, num_images: int, size: int, seed: int,
                     classes: tuple = DET_CLASSES, draw=det_image) -> None:
    """Writes ``<root>/<split>2017/*.jpg`` and ``<root>/annotations/instances_<split>2017.json``:
    ``num_images`` images drawn by ``draw(rng, size)``, whose labels index ``classes``."""
    rng = np.random.default_rng(seed)
    image_dir = osp.join(root, f'{split}2017')
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    images, annotations = [], []
    print_log(f'writing {num_images} COCO {split} images to {image_dir}', logger='current')
    for image_id in track_iter_progress(list(range(1, num_images + 1))):
        image, objects = draw(rng, size)
        file_name = f'{image_id:012d}.jpg'
        cv2.imwrite(osp.join(image_dir, file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=image_id, file_name=file_name, height=size, width=size))
        for label, polygon in objects:
            x, y = polygon[:, 0], polygon[:, 1]
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=label + 1,
                bbox=[int(x.min()), int(y.min()), int(x.max() - x.min()), int(y.max() - y.min())],
                area=float(cv2.contourArea(polygon)), iscrowd=0,
                segmentation=[polygon.reshape(-1).astype(float).tolist()]))
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(classes)]
    with open(osp.join(root, 'annotations', f'instances_{split}2017.json'), 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def seg_scene(rng: np.random.Generator, height: int, width: int):
    """One street-like scene and its Cityscapes train-id label map."""
    label = np.full((height, width), ROAD, np.uint8)
    horizon = int(rng.integers(height // 3, height // 2))
    label[:horizon] = SKY
    for _ in range(rng.integers(1, 4)):  # buildings standing on the horizon
        w, h = rng.integers(width // 8, width // 3), rng.integers(height // 6, horizon)
        x = rng.integers(0, width - w)
        label[horizon - h:horizon, x:x + w] = BUILDING
    for _ in range(rng.integers(1, 4)):  # cars on the road
        w = rng.integers(width // 10, width // 5)
        h = max(4, w // 2)
        x, y = rng.integers(0, width - w), rng.integers(horizon, height - h)
        label[y:y + h, x:x + w] = CAR
    for _ in range(rng.integers(0, 4)):  # people: upright ellipses
        h = rng.integers(height // 8, height // 4)
        cx, cy = rng.integers(5, width - 5), rng.integers(horizon, height - h // 2)
        cv2.ellipse(label, (int(cx), int(cy)), (max(2, int(h // 5)), int(h // 2)), 0, 0, 360,
                    PERSON, -1)
    image = noisy_background(rng, height, width)
    for train_id, colour in SEG_COLOURS.items():
        jitter = rng.integers(-20, 21, 3)
        image[label == train_id] = np.clip(np.array(colour) + jitter, 0, 255)
    image += rng.normal(0, 12, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_cityscapes_split(root: str, split: str, num_images: int, height: int, width: int,
                           seed: int, city: str = 'demo') -> None:
    """Writes ``leftImg8bit/<split>/<city>/`` images and ``gtFine/<split>/<city>/`` labels."""
    rng = np.random.default_rng(seed)
    image_dir = osp.join(root, 'leftImg8bit', split, city)
    label_dir = osp.join(root, 'gtFine', split, city)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    print_log(f'writing {num_images} Cityscapes {split} images to {image_dir}', logger='current')
    for frame in track_iter_progress(list(range(1, num_images + 1))):
        image, label = seg_scene(rng, height, width)
        stem = f'{city}_000000_{frame:06d}'
        cv2.imwrite(osp.join(image_dir, f'{stem}_leftImg8bit.png'), image)
        cv2.imwrite(osp.join(label_dir, f'{stem}_gtFine_labelTrainIds.png'), label)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Write the synthetic demo data sets.')
    parser.add_argument('--task', choices=['det', 'det-hard', 'seg', 'all'], default='all',
                        help="'all': the demos' data (det and seg)")
    parser.add_argument('--out', default='data', help='parent folder of demo_coco/, '
                        'demo_coco_hard/ and demo_cityscapes/')
    parser.add_argument('--num-train', type=int, default=None,
                        help='training images (default: 300 det, 600 det-hard, 100 seg)')
    parser.add_argument('--num-val', type=int, default=None,
                        help='validation images (default: 50 det, 100 det-hard, 20 seg)')
    parser.add_argument('--size', type=int, default=128,
                        help='detection image side; segmentation images are size x 2*size')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true', help='rewrite existing data')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    tasks = ('det', 'seg') if args.task == 'all' else (args.task,)
    coco_sets = {'det': ('demo_coco', 300, 50, DET_CLASSES, det_image),
                 'det-hard': ('demo_coco_hard', 600, 100, HARD_DET_CLASSES, hard_det_image)}
    for task, (folder, num_train, num_val, classes, draw) in coco_sets.items():
        if task not in tasks:
            continue
        root = osp.join(args.out, folder)
        if args.force or not osp.isfile(osp.join(root, 'annotations', 'instances_val2017.json')):
            write_coco_split(root, 'train', args.num_train or num_train, args.size, args.seed,
                             classes, draw)
            write_coco_split(root, 'val', args.num_val or num_val, args.size, args.seed + 1,
                             classes, draw)
        else:
            print_log(f'{root} exists; keeping it (--force rewrites it)', logger='current')
    if 'seg' in tasks:
        root = osp.join(args.out, 'demo_cityscapes')
        if args.force or not osp.isdir(osp.join(root, 'gtFine', 'val')):
            write_cityscapes_split(root, 'train', args.num_train or 100, args.size,
                                   2 * args.size, args.seed)
            write_cityscapes_split(root, 'val', args.num_val or 20, args.size, 2 * args.size,
                                   args.seed + 1)
        else:
            print_log(f'{root} exists; keeping it (--force rewrites it)', logger='current')


if __name__ == '__main__':
    main()

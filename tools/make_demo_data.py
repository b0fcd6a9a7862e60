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
Cityscapes train ids.

Usage::

    python tools/make_demo_data.py                  # both data sets under data/, if missing
    python tools/make_demo_data.py --task det --num-train 400 --force
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
# Cityscapes train ids used by the segmentation scenes, with their BGR colours.
ROAD, BUILDING, PERSON, SKY, CAR = 0, 2, 11, 10, 13
SEG_COLOURS = {ROAD: (90, 90, 90), BUILDING: (40, 110, 170), PERSON: (60, 20, 220),
               SKY: (230, 180, 120), CAR: (150, 30, 30)}


def noisy_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A grey image of random brightness with Gaussian pixel noise: (H, W, 3) float32."""
    base = rng.uniform(90, 170)
    return base + rng.normal(0, 18, (height, width, 3)).astype(np.float32)


def shape_polygon(rng: np.random.Generator, label: int, box: np.ndarray) -> np.ndarray:
    """The outline of class ``label`` inscribed in ``box`` (x1, y1, x2, y2): (N, 2) int32."""
    x1, y1, x2, y2 = box
    if DET_CLASSES[label] == 'rectangle':
        return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.int32)
    if DET_CLASSES[label] == 'ellipse':
        centre = (int((x1 + x2) // 2), int((y1 + y2) // 2))
        axes = (int((x2 - x1) // 2), int((y2 - y1) // 2))
        return cv2.ellipse2Poly(centre, axes, 0, 0, 360, 10).astype(np.int32)
    apex = rng.integers(x1, x2 + 1)
    return np.array([[apex, y1], [x2, y2], [x1, y2]], np.int32)


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


def det_image(rng: np.random.Generator, size: int):
    """One detection image and its objects as (label, polygon) pairs."""
    image = noisy_background(rng, size, size)
    objects, boxes = [], []
    for _ in range(rng.integers(1, 4)):
        for _attempt in range(10):
            w, h = rng.integers(size // 6, size // 2, 2)
            x1, y1 = rng.integers(0, size - w), rng.integers(0, size - h)
            box = np.array([x1, y1, x1 + w, y1 + h])
            if box_iou(box, boxes) < 0.2:
                break
        else:
            continue
        label = int(rng.integers(len(DET_CLASSES)))
        polygon = shape_polygon(rng, label, box)
        colour = np.clip(np.array(DET_COLOURS[label]) + rng.integers(-30, 31, 3), 0, 255)
        cv2.fillPoly(image, [polygon], colour.tolist())
        boxes.append(box)
        objects.append((label, polygon))
    return np.clip(image, 0, 255).astype(np.uint8), objects


def write_coco_split(root: str, split: str, num_images: int, size: int, seed: int) -> None:
    """Writes ``<root>/<split>2017/*.jpg`` and ``<root>/annotations/instances_<split>2017.json``."""
    rng = np.random.default_rng(seed)
    image_dir = osp.join(root, f'{split}2017')
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    images, annotations = [], []
    print_log(f'writing {num_images} COCO {split} images to {image_dir}', logger='current')
    for image_id in track_iter_progress(list(range(1, num_images + 1))):
        image, objects = det_image(rng, size)
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
                  for i, name in enumerate(DET_CLASSES)]
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
    parser.add_argument('--task', choices=['det', 'seg', 'all'], default='all')
    parser.add_argument('--out', default='data', help='parent folder of demo_coco/ and '
                        'demo_cityscapes/')
    parser.add_argument('--num-train', type=int, default=None,
                        help='training images (default: 300 det, 100 seg)')
    parser.add_argument('--num-val', type=int, default=None,
                        help='validation images (default: 50 det, 20 seg)')
    parser.add_argument('--size', type=int, default=128,
                        help='detection image side; segmentation images are size x 2*size')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true', help='rewrite existing data')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.task in ('det', 'all'):
        root = osp.join(args.out, 'demo_coco')
        if args.force or not osp.isfile(osp.join(root, 'annotations', 'instances_val2017.json')):
            write_coco_split(root, 'train', args.num_train or 300, args.size, args.seed)
            write_coco_split(root, 'val', args.num_val or 50, args.size, args.seed + 1)
        else:
            print_log(f'{root} exists; keeping it (--force rewrites it)', logger='current')
    if args.task in ('seg', 'all'):
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

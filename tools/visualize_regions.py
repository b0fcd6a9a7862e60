"""Draw the region maps of a model's DRConv layers over an input image.

Runs the config's model (detector, segmentor, ...) on one image through the config's test
pipeline and captures each DRConv2d's region map, the argmax over its guide conv's output, with
a forward hook. Writes one PNG: the image, then one panel per DRConv layer (or per layer named
with --layers) with its regions as colours over the image::

    python tools/visualize_regions.py CONFIG CHECKPOINT IMAGE --out regions.png

Every panel is the image scaled to ``--panel-width`` pixels wide, under a caption strip of
``CAPTION_HEIGHT`` pixels, in a grid of ``--columns`` panels per row.
"""
import argparse
import math
import os
import os.path as osp
import sys
from typing import Dict, List, Optional

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
import drconv_mm.checkpoint_safety  # noqa: E402,F401  checkpoints load weights-only

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.dataset import Compose, pseudo_collate  # noqa: E402
from mmengine.model.utils import revert_sync_batchnorm  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402

from drconv import DRConv2d  # noqa: E402

CAPTION_HEIGHT = 18
# 16 well-separated colours (BGR), one per region.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195)], np.uint8)[:, ::-1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Draw DRConv region maps over an image.')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('image', help='input image')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--layers', nargs='+', help='module names of the DRConv layers to draw '
                        '(default: all), e.g. backbone.layer2.0.conv2')
    parser.add_argument('--columns', type=int, default=4, help='panels per row')
    parser.add_argument('--panel-width', type=int, default=256, help='width of each panel')
    parser.add_argument('--alpha', type=float, default=0.55, help='opacity of the regions')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value')
    return parser.parse_args(argv)


def build_model(cfg: Config, checkpoint: str) -> torch.nn.Module:
    """Builds the config's model on CPU and loads ``checkpoint`` into it."""
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    load_checkpoint(model, checkpoint, map_location='cpu')
    return model.eval()


def test_pipeline(cfg: Config) -> Compose:
    """The test dataloader's pipeline without its annotation loading."""
    dataset_cfg = cfg.test_dataloader.dataset
    while 'dataset' in dataset_cfg:
        dataset_cfg = dataset_cfg.dataset
    return Compose([t for t in dataset_cfg.pipeline if 'LoadAnnotations' not in t['type']])


def capture_regions(model: torch.nn.Module, data: dict,
                    names: Optional[List[str]] = None) -> Dict[str, np.ndarray]:
    """Runs ``model.test_step(data)`` and returns each DRConv layer's region map.

    Args:
        model (nn.Module): An mmengine model holding DRConv2d layers.
        data (dict): A collated batch of one sample.
        names (List[str], optional): Module names to capture; default all DRConv2d layers.

    Returns:
        Dict[str, ndarray]: module name -> region map (H_out, W_out), int64, in model order.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, DRConv2d)}
    if names:
        unknown = sorted(set(names) - set(layers))
        if unknown:
            raise SystemExit(f'error: no DRConv layer named {unknown}; the model has '
                             f'{list(layers)}')
        layers = {name: layers[name] for name in names}
    if not layers:
        raise SystemExit('error: the model has no DRConv2d layer')
    regions = {}

    def hook_for(name):
        def hook(module, inputs, output):
            regions[name] = output[0].argmax(0).cpu().numpy()
        return hook

    handles = [m.guide_conv.register_forward_hook(hook_for(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            model.test_step(data)
    finally:
        for handle in handles:
            handle.remove()
    return {name: regions[name] for name in layers if name in regions}


def region_panel(image: np.ndarray, region: np.ndarray, alpha: float) -> np.ndarray:
    """``region`` (h, w) resized to ``image`` (H, W, 3) and blended over it in colours."""
    height, width = image.shape[:2]
    region = cv2.resize(region.astype(np.uint8), (width, height),
                        interpolation=cv2.INTER_NEAREST)
    colours = PALETTE[region % len(PALETTE)]
    return (image * (1 - alpha) + colours * alpha).astype(np.uint8)


def compose(image: np.ndarray, panels: Dict[str, np.ndarray], columns: int) -> np.ndarray:
    """Tiles the captioned image and panels into one picture (BGR)."""
    height, width = image.shape[:2]
    tiles = [('input', image)] + list(panels.items())
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    tile_h = height + CAPTION_HEIGHT
    canvas = np.full((rows * tile_h, columns * width, 3), 255, np.uint8)
    scale = 0.35 if width < 400 else 0.5
    for i, (caption, tile) in enumerate(tiles):
        y, x = (i // columns) * tile_h, (i % columns) * width
        canvas[y + CAPTION_HEIGHT:y + tile_h, x:x + width] = tile
        cv2.putText(canvas, caption, (x + 2, y + CAPTION_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def main(argv=None) -> None:
    args = parse_args(argv)
    for path in (args.config, args.checkpoint, args.image):
        if not osp.isfile(path):
            sys.exit(f'error: {path!r} does not exist')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = build_model(cfg, args.checkpoint)
    data = pseudo_collate([test_pipeline(cfg)(dict(img_path=args.image, img_id=0))])
    regions = capture_regions(model, data, args.layers)
    image = cv2.imread(args.image, cv2.IMREAD_COLOR)
    height = round(image.shape[0] * args.panel_width / image.shape[1])
    image = cv2.resize(image, (args.panel_width, height), interpolation=cv2.INTER_AREA)
    panels = {f'{name} {r.shape[0]}x{r.shape[1]} {len(np.unique(r))} regions':
              region_panel(image, r, args.alpha) for name, r in regions.items()}
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    cv2.imwrite(args.out, compose(image, panels, args.columns))
    print(f'region maps of {len(panels)} DRConv layers written to {args.out}')


if __name__ == '__main__':
    main()

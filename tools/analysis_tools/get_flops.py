"""FLOPs (MAdds) and parameters of a config's model, next to its baseline without DRConv.

    python tools/analysis_tools/get_flops.py CONFIG [--shape H W] [--per-layer]

Counts with mmengine's complexity counter (``mmengine.analysis``, one multiply-add = one FLOP)
and prints mmdet's/mmseg's ``get_flops.py`` block for the model and for its baseline: the same
config with every ``type='DRConv'`` entry removed (``backbone.dcn``, ``conv_cfg``, ...), or
``--base-config``. DRConv2d is counted at its real cost (``drconv_mm.analysis.complexity``): the
selected filter per pixel (a plain conv's MAdds, not m times), the guide conv, the filter
generator and forming the region filters. The input is one random image (``--batch`` more).
"""
import argparse
import os.path as osp
import sys
from typing import Any, Dict, Optional, Sequence

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from mmengine.analysis.print_helper import _format_size  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from drconv_mm.analysis import models  # noqa: E402
from drconv_mm.analysis.counting import DRCONV_PARTS, copy_shared_weights, count  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='FLOPs and parameters of a DRConv model and '
                                     'of its baseline without DRConv')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs='+', default=[800, 1333],
                        help='input image size, H W (or one number for a square)')
    parser.add_argument('--batch', type=int, default=1, help='images per input')
    parser.add_argument('--base-config', help='baseline config (default: CONFIG without its '
                        "type='DRConv' entries)")
    parser.add_argument('--per-layer', action='store_true',
                        help='also print each DRConv layer\'s MAdds by part')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value')
    return parser.parse_args(argv)


def complexity_of_config(config: str, shape: Sequence[int], batch: int = 1,
                         base_config: Optional[str] = None,
                         cfg_options: Optional[dict] = None) -> Dict[str, Any]:
    """:func:`count` of a config's model (``model``) and of its baseline (``baseline``)."""
    image_shape = (3, shape[0], shape[-1])
    cfg = models.load_config(config, cfg_options)
    model = models.build_model(cfg)
    if base_config:
        base = models.build_model(models.load_config(base_config, cfg_options))
    else:
        base = models.build_model(cfg, baseline=True)
    # the same proposals, so the difference is DRConv's (a --base-config of other shapes: each
    # model is counted with its own weights)
    copy_shared_weights(model, base)
    return dict(ori_shape=tuple(image_shape[1:]), model=count(model, batch, image_shape),
                baseline=count(base, batch, image_shape))


def block(title: str, compute_type: str, ori_shape, info: Dict[str, Any]) -> str:
    """mmdet's get_flops.py output block for one model."""
    split_line = '=' * 30
    text = f'{split_line}\n{title}\n'
    if info['pad_shape'] != ori_shape:
        text += f'Use size divisor set input shape from {ori_shape} to {info["pad_shape"]}\n'
    return (text + f'Compute type: {compute_type}\nInput shape: {info["pad_shape"]}\n'
            f'Flops: {_format_size(info["flops"])}\nParams: {_format_size(info["params"])}\n'
            f'{split_line}')


def main(argv=None) -> None:
    args = parse_args(argv)
    if len(args.shape) not in (1, 2):
        raise SystemExit('--shape takes H W or one size')
    result = complexity_of_config(args.config, args.shape, args.batch, args.base_config,
                                  args.cfg_options)
    compute_type = 'direct: randomly generate a picture'
    model, base = result['model'], result['baseline']
    print(block(f'Model: {args.config}', compute_type, result['ori_shape'], model))
    print(block('Baseline: ' + (args.base_config or "the same config without type='DRConv'"),
                compute_type, result['ori_shape'], base))
    layers = model['drconv']
    parts = {p: sum(layer[p] for layer in layers.values()) for p in DRCONV_PARTS}
    print(f'DRConv layers: {len(layers)}; their MAdds: selected-filter conv '
          f'{_format_size(parts["region_conv"])}, guide conv {_format_size(parts["guide_conv"])}, '
          f'filter generator {_format_size(parts["filter_generator"])}, forming the region '
          f'filters {_format_size(parts["region_filters"])}')
    print(f'Model - baseline: Flops {model["flops"] - base["flops"]:+d} '
          f'({model["flops"] / base["flops"]:.3f}x), Params {model["params"] - base["params"]:+d} '
          f'({model["params"] / base["params"]:.3f}x)')
    if args.per_layer:
        print('layer ' + ' '.join(DRCONV_PARTS) + ' total')
        for name, layer in layers.items():
            print(name, *(layer[p] for p in DRCONV_PARTS), layer['total'])
    print('!!!Please be cautious if you use the results in papers. '
          'You may need to check if all ops are supported and verify '
          'that the flops computation is correct.')


if __name__ == '__main__':
    main()

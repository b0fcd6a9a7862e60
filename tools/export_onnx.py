"""Export the face backbone of a config + checkpoint to ONNX, checked with onnxruntime.

::

    python tools/export_onnx.py CONFIG CHECKPOINT OUT.onnx [--batch-size 1] [--check-insightface]

The graph maps a normalised RGB batch ``(B, 3, S, S)`` (``(x / 255 - 0.5) / 0.5``, what
insightface's ``ArcFaceONNX`` feeds) to the raw embedding ``(B, D)``; S is the backbone's
``input_size``. DRConv layers export through the core's trace path: every region's conv is
computed (one grouped Conv), then ``ArgMax`` of the guide, ``Equal`` to a region index, ``Mul`` and
``ReduceSum`` keep each pixel's region; the filter generator becomes ``ReduceMean``/``Gemm``/
``Sigmoid``/``MatMul``. The grouped Conv bakes the batch size in: B is fixed (``--batch-size``).
The script prints onnxruntime's max abs difference to PyTorch and fails above ``--atol``.
"""
import argparse
import os
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402
from mmengine.utils import import_modules_from_strings  # noqa: E402


def build_backbone(config, checkpoint=None, cfg_options=None) -> torch.nn.Module:
    """The eval-mode backbone of the config's FaceRecognizer, with the checkpoint's weights."""
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.get('default_scope', 'drconv_mm'))
    from drconv_mm.registry import MODELS
    model = MODELS.build(cfg.model)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return model.backbone.eval()


def export(backbone: torch.nn.Module, out_file: str, input_size: int, batch_size: int = 1,
           opset: int = 17) -> np.ndarray:
    """Exports ``backbone`` to ``out_file``; returns the max abs diff onnxruntime vs PyTorch."""
    import onnxruntime as ort
    torch.manual_seed(0)
    x = torch.rand(batch_size, 3, input_size, input_size) * 2 - 1
    with torch.no_grad():
        torch.onnx.export(backbone, (x, ), out_file, input_names=['input.1'],
                          output_names=['embedding'], opset_version=opset, dynamo=False)
        expected = backbone(x).numpy()
    session = ort.InferenceSession(out_file, providers=['CPUExecutionProvider'])
    got = session.run(None, {'input.1': x.numpy()})[0]
    return float(np.abs(got - expected).max())


def check_insightface(backbone: torch.nn.Module, out_file: str, input_size: int) -> float:
    """Loads the file with ``insightface.model_zoo.get_model`` and compares ``get_feat``."""
    from insightface.model_zoo import get_model
    recogniser = get_model(out_file, providers=['CPUExecutionProvider'])
    if recogniser is None or type(recogniser).__name__ != 'ArcFaceONNX':
        raise RuntimeError(f'insightface did not load {out_file} as an ArcFace recogniser '
                           f'(got {type(recogniser).__name__}); it needs a square input >= 112')
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (input_size, input_size, 3), dtype=np.uint8)  # BGR
    feat = recogniser.get_feat(img)
    rgb = torch.from_numpy(img[:, :, ::-1].copy()).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        expected = backbone((rgb / 255 - 0.5) / 0.5).numpy()
    return float(np.abs(feat - expected).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description='Export a face backbone to ONNX.')
    parser.add_argument('config')
    parser.add_argument('checkpoint', help="checkpoint file, or 'none' for the fresh model")
    parser.add_argument('out', help='output .onnx file')
    parser.add_argument('--batch-size', type=int, default=1, help='fixed batch size of the graph')
    parser.add_argument('--input-size', type=int, default=None,
                        help='square input side (default: the backbone input_size)')
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument('--atol', type=float, default=1e-4)
    parser.add_argument('--check-insightface', action='store_true',
                        help="also load it with insightface's model_zoo and compare get_feat")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)

    checkpoint = None if args.checkpoint.lower() == 'none' else args.checkpoint
    backbone = build_backbone(args.config, checkpoint, args.cfg_options)
    size = args.input_size or getattr(backbone, 'input_size', None) or 112
    diff = export(backbone, args.out, size, args.batch_size, args.opset)
    print(f'exported {args.out} (input {args.batch_size}x3x{size}x{size}); '
          f'onnxruntime vs PyTorch max abs diff: {diff:.3e}')
    if diff > args.atol:
        sys.exit(f'error: max abs diff {diff:.3e} exceeds --atol {args.atol}')
    if args.check_insightface:
        diff = check_insightface(backbone, args.out, size)
        print(f'insightface ArcFaceONNX.get_feat vs PyTorch max abs diff: {diff:.3e}')
        if diff > args.atol:
            sys.exit(f'error: insightface get_feat differs by {diff:.3e} > {args.atol}')


if __name__ == '__main__':
    main()

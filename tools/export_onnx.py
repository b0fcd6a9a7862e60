"""Export the face backbone of a config + checkpoint to ONNX, checked with onnxruntime.

::

    python tools/export_onnx.py CONFIG CHECKPOINT OUT.onnx [--check-insightface]

The graph maps a normalised RGB batch ``(B, 3, S, S)`` (``(x / 255 - 0.5) / 0.5``, what
insightface's ``ArcFaceONNX`` feeds) to the raw embedding ``(B, D)``. The batch axis B is dynamic
(insightface batches face crops); S is the backbone's ``input_size``, the size it was trained at.

A DRConv layer exports as its guide conv (``Conv``), its filter generator (``ReduceMean``,
``Gemm``/``MatMul``, ``Sigmoid``), every region's filters applied to the unfolded patches as one
batched ``MatMul``, then ``ArgMax`` of the guide, ``Equal`` to a region index, ``Mul`` and
``ReduceSum`` to keep each pixel's region: region_num times a conv's work, nothing tied to B.

The script runs onnxruntime on batches of 1 and 3 and compares the L2-normalised embeddings with
PyTorch's (``--rtol``: the largest ``|onnx - torch| / |torch|`` allowed, per embedding).
``--check-insightface`` then loads the file with ``insightface.model_zoo.get_model`` and embeds a
real aligned face shipped in insightface's package, alone and batched with its mirror image.
"""
import argparse
import copy
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
import drconv_mm.checkpoint_safety  # noqa: E402,F401  checkpoints load weights-only

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402
from mmengine.utils import import_modules_from_strings  # noqa: E402

from drconv import DRConv2d  # noqa: E402

# insightface's model_zoo routes a model to ArcFaceONNX only for such inputs
INSIGHTFACE_MIN_SIZE, INSIGHTFACE_SIZE_STEP = 112, 16
# a real face crop, aligned to ArcFace's 5 points, that insightface ships in its package
INSIGHTFACE_FACE = 'Tom_Hanks_54745'


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


class BatchFreeDRConv(torch.nn.Module):
    """A DRConv2d's output computed with ops whose ONNX graph does not fix the batch size.

    DRConv2d's own trace path convolves the whole batch as one grouped conv (groups = B), which
    ONNX stores as a constant. Here every region's filters multiply the unfolded patches
    (im2col) in one batched matmul, then the guide's argmax keeps each pixel's region, as
    DRConv2d does. The layer's parameters are shared, not copied.

    Args:
        layer (DRConv2d): The layer to compute.
    """

    def __init__(self, layer: DRConv2d):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W) -> (B, C_out, H_out, W_out)."""
        layer = self.layer
        guide = layer.guide_conv(x)  # (B, m, H_out, W_out)
        filters = layer.region_filters(x)  # (B, m, C_out, C_in, kh, kw)
        m, c_out = filters.shape[1:3]
        if (layer.kernel_size, layer.stride, layer.padding) == ((1, 1), (1, 1), (0, 0)):
            patches = x.flatten(2)  # (B, C_in, H*W)
        else:
            patches = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        per_region = torch.matmul(filters.flatten(3).flatten(1, 2), patches)  # (B, m*C_out, L)
        per_region = per_region.unflatten(1, (m, c_out)).unflatten(3, guide.shape[2:])
        regions = torch.arange(m, device=x.device).view(1, m, 1, 1)
        mask = (guide.argmax(dim=1, keepdim=True) == regions).to(x.dtype)
        out = (per_region * mask.unsqueeze(2)).sum(dim=1)
        if layer.bias is not None:
            out = out + layer.bias.view(1, -1, 1, 1)
        return out


def batch_free_copy(backbone: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``backbone`` whose DRConv2d layers are wrapped in :class:`BatchFreeDRConv`."""
    backbone = copy.deepcopy(backbone)
    for name, module in list(backbone.named_modules()):
        if isinstance(module, DRConv2d):
            parent_name, _, child = name.rpartition('.')
            parent = backbone.get_submodule(parent_name) if parent_name else backbone
            setattr(parent, child, BatchFreeDRConv(module))
    return backbone


def embedding_errors(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per embedding, ``|got - expected| / |expected|`` (L2): 0 for equal, ~1.4 for unrelated.

    Comparing relative to the norm makes an all-but-zero embedding (an untrained or broken
    model) fail the check instead of passing an absolute tolerance.

    Args:
        got, expected (array[B, D]): Embeddings of the same images.

    Raises:
        ValueError: the shapes differ.
    """
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if got.shape != expected.shape:
        raise ValueError(f'embeddings of shape {got.shape} vs {expected.shape}')
    norm = np.linalg.norm(expected, axis=1)
    diff = np.linalg.norm(got - expected, axis=1)
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(norm > 0, diff / np.where(norm > 0, norm, 1), np.inf)


def export(backbone: torch.nn.Module, out_file: str, input_size: int, opset: int = 17) -> float:
    """Exports ``backbone`` with a dynamic batch axis; returns the largest relative error of
    onnxruntime's embeddings against PyTorch's over batches of 1 and 3 (:func:`embedding_errors`).
    """
    import onnxruntime as ort
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, input_size, input_size, generator=generator) * 2 - 1
    with torch.no_grad():
        torch.onnx.export(batch_free_copy(backbone), (x[:2], ), out_file,
                          input_names=['input.1'], output_names=['embedding'],
                          dynamic_axes={'input.1': {0: 'batch'}, 'embedding': {0: 'batch'}},
                          opset_version=opset, dynamo=False)
        expected = backbone(x).numpy()
    session = ort.InferenceSession(out_file, providers=['CPUExecutionProvider'])
    errors = [embedding_errors(session.run(None, {'input.1': x[:n].numpy()})[0], expected[:n])
              for n in (1, 3)]
    return float(np.concatenate(errors).max())


def check_insightface(backbone: torch.nn.Module, out_file: str) -> dict:
    """Loads ``out_file`` with ``insightface.model_zoo.get_model`` and embeds a real face.

    The face is insightface's own aligned crop (``insightface.data.get_image``), embedded by
    ``ArcFaceONNX.get_feat`` alone and in a batch with its mirror image.

    Returns:
        dict: ``error`` (largest :func:`embedding_errors` against PyTorch), ``dim`` and ``norm``
        of the face's embedding, ``mirror_cosine`` (cosine of the face and its mirror image).

    Raises:
        RuntimeError: insightface does not load the file as an ArcFace recogniser.
    """
    from insightface.data import get_image
    from insightface.model_zoo import get_model
    recogniser = get_model(out_file, providers=['CPUExecutionProvider'])
    if type(recogniser).__name__ != 'ArcFaceONNX':
        raise RuntimeError(f'insightface did not load {out_file} as an ArcFace recogniser '
                           f'(got {type(recogniser).__name__})')
    face = get_image(INSIGHTFACE_FACE)  # BGR HWC uint8, 112x112
    size = recogniser.input_size
    faces = [cv2_resize(face, size), cv2_resize(np.ascontiguousarray(face[:, ::-1]), size)]
    single = recogniser.get_feat(faces[0])
    pair = recogniser.get_feat(faces)
    rgb = torch.from_numpy(np.stack(faces)[..., ::-1].copy()).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        expected = backbone((rgb / 255 - 0.5) / 0.5).numpy()
    error = max(embedding_errors(single, expected[:1]).max(),
                embedding_errors(pair, expected).max())
    unit = pair / np.linalg.norm(pair, axis=1, keepdims=True)
    return dict(error=float(error), dim=int(pair.shape[1]),
                norm=float(np.linalg.norm(single)), mirror_cosine=float(unit[0] @ unit[1]))


def cv2_resize(img: np.ndarray, size) -> np.ndarray:
    """``img`` resized to ``size`` (w, h) when it differs, as insightface's get_feat would."""
    import cv2
    return img if img.shape[1::-1] == tuple(size) else cv2.resize(img, tuple(size))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='face config (a FaceRecognizer model)')
    parser.add_argument('checkpoint', help="checkpoint of that config, or 'none' for the "
                        'freshly initialised model')
    parser.add_argument('out', help='the .onnx file to write')
    parser.add_argument('--input-size', type=int, default=None,
                        help="square input side; must be the backbone's input_size, which "
                        'fixes its last layers (default: that size)')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset (default: 17)')
    parser.add_argument('--rtol', type=float, default=1e-4,
                        help='largest |onnx - torch| / |torch| allowed per embedding '
                        '(default: 1e-4)')
    parser.add_argument('--check-insightface', action='store_true',
                        help="also load the file with insightface's model_zoo.get_model and "
                        'embed the aligned face shipped in insightface (default: off)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries (default: none)')
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    checkpoint = None if args.checkpoint.lower() == 'none' else args.checkpoint
    backbone = build_backbone(args.config, checkpoint, args.cfg_options)
    size = getattr(backbone, 'input_size', None) or args.input_size or 112
    if args.input_size is not None and args.input_size != size:
        parser.error(f'--input-size {args.input_size}: this backbone takes {size}x{size} '
                     'inputs; its GDC kernel and embedding layer are sized for them, so it '
                     f'exports at {size} only (train at {args.input_size} with '
                     f'model.backbone.input_size={args.input_size} for another size)')
    if args.check_insightface and (size < INSIGHTFACE_MIN_SIZE or size % INSIGHTFACE_SIZE_STEP):
        parser.error(f'--check-insightface: insightface loads ArcFace models with square inputs '
                     f'>= {INSIGHTFACE_MIN_SIZE} that are multiples of {INSIGHTFACE_SIZE_STEP}, '
                     f'and this backbone takes {size}x{size}; train at 112 '
                     '(model.backbone.input_size=112), as insightface models are')
    error = export(backbone, args.out, size, args.opset)
    print(f'exported {args.out} (input Bx3x{size}x{size}, dynamic batch B); onnxruntime vs '
          f'PyTorch at B=1 and B=3: largest relative error {error:.2e}')
    if not error <= args.rtol:
        sys.exit(f'error: onnxruntime differs from PyTorch by {error:.2e} > --rtol {args.rtol}')
    if args.check_insightface:
        result = check_insightface(backbone, args.out)
        print(f'insightface model_zoo.get_model: ArcFaceONNX; get_feat({INSIGHTFACE_FACE}) -> '
              f'{result["dim"]}-d embedding (norm {result["norm"]:.3f}), alone and batched with '
              f'its mirror image: largest relative error to PyTorch {result["error"]:.2e}, '
              f'cosine to the mirror image {result["mirror_cosine"]:.4f}')
        if not result['error'] <= args.rtol:
            sys.exit(f'error: insightface get_feat differs from PyTorch by '
                     f'{result["error"]:.2e} > --rtol {args.rtol}')


if __name__ == '__main__':
    main()

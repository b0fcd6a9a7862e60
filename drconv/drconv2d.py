"""``DRConv2d``: a drop-in for nn.Conv2d with region-aware dynamic filters."""
import contextlib
import hashlib
import inspect
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import Tensor, nn

from ._utils import IntPair, pair
from .filter_generator import FILTER_GENERATORS, BasesFilterGenerator, PaperFilterGenerator
from .guide_conv import GuideConv
from .region_conv import GUIDE_GRADS, region_conv_dense
from .region_conv_factored import region_conv_factored


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.jit.is_scripting()


@contextlib.contextmanager
def _own_random_stream(devices: Iterable[torch.device]) -> Iterator[None]:
    """Random draws inside the block come from a stream of their own.

    The stream is seeded from a hash of the global generators' states (CPU, and CUDA where
    ``devices`` has CUDA devices), which are restored on exit: the block is reproducible under
    ``torch.manual_seed`` and leaves the global stream where it found it.
    """
    cuda = sorted({d.index if d.index is not None else torch.cuda.current_device()
                   for d in map(torch.device, devices) if d.type == 'cuda'})
    states = [torch.get_rng_state()] + [torch.cuda.get_rng_state(i) for i in cuda]
    digest = hashlib.sha256(b''.join(s.numpy().tobytes() for s in states)).digest()
    seed = int.from_bytes(digest[:8], 'little')
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for i in cuda:
            torch.cuda.default_generators[i].manual_seed(seed)
        yield


class DRConv2d(nn.Conv2d):
    """Dynamic region-aware convolution (Chen et al., CVPR 2021), shaped like nn.Conv2d.

    A guide conv (k x k, same stride, padding and dilation, C_in -> m) assigns each output pixel
    to the region of its largest guide logit. A filter generator gives each sample m filters,
    ``weight + delta[b, r]`` in factored form (:class:`drconv.Factors`), and each pixel is
    convolved with its region's filter only (:func:`drconv.region_conv_factored`: on the CPU
    kernels' path the filters are formed where they are used, never held in memory).

    ``weight`` and ``bias`` are a standard conv's, so standard checkpoints load into them
    (``strict=False``: the guide and generator keys are new). The generated ``delta`` starts at
    zero: a fresh layer, or one after :meth:`reset_filter_generator`, computes
    ``F.conv2d(x, weight, bias, stride, padding, dilation)``.

    It initialises like nn.Conv2d wherever it sits: it has no ``init_weights`` (so mmcv's
    ConvModule gives ``weight`` its Kaiming init, as to a Conv2d), and the guide conv and the
    filter generator draw their random numbers from a stream of their own, when built and when
    an initialiser reaches them through :meth:`apply` (mmengine's ``init_cfg``). A model with
    DRConv layers therefore gets, under the same seed, the very weights of its Conv2d baseline.

    Args:
        in_channels (int): C_in.
        out_channels (int): C_out.
        kernel_size (int or Tuple[int, int]): (kh, kw).
        stride, padding, dilation (int or Tuple[int, int]): as nn.Conv2d (zero padding).
        groups (int): must be 1.
        bias (bool): add a learnable bias. Default: True
        region_num (int): m, the number of regions. Default: 8
        filter_generator (str): ``'paper'`` (pool -> 1x1 conv -> sigmoid -> grouped 1x1 conv,
            the paper's design) or ``'bases'`` (mixtures of shared kernels, the official
            code's design). Default: ``'paper'``
        num_bases (int): base kernels of the ``'bases'`` generator (refused with
            ``'paper'``). Default: 4
        guide_grad (str): ``'exact'`` or ``'top2'``, the guide gradient of
            :func:`drconv.region_conv` (``'top2'`` is a cheaper approximation). Default: 'exact'
        padding_mode (str): must be ``'zeros'``.

    Shape:
        input (B, C_in, H, W) or unbatched (C_in, H, W) -> output (B, C_out, H_out, W_out) or
        (C_out, H_out, W_out), as nn.Conv2d; an empty batch gives an empty output.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1, bias: bool = True, region_num: int = 8,
                 filter_generator: str = 'paper', num_bases: Optional[int] = None,
                 guide_grad: str = 'exact', padding_mode: str = 'zeros', device=None,
                 dtype=None, **unexpected):
        if unexpected:
            accepted = [p for p in inspect.signature(DRConv2d.__init__).parameters
                        if p not in ('self', 'unexpected')]
            raise TypeError(f'DRConv2d got unexpected argument(s) {sorted(unexpected)}; '
                            f'accepted: {accepted}')
        if num_bases is not None and filter_generator != 'bases':
            raise ValueError(f"DRConv2d: num_bases applies to filter_generator='bases' only, "
                             f'got num_bases={num_bases!r} with {filter_generator!r}')
        num_bases = 4 if num_bases is None else num_bases
        for name, value in (('in_channels', in_channels), ('out_channels', out_channels),
                            ('region_num', region_num), ('num_bases', num_bases)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f'DRConv2d: {name} must be a positive int, got {value!r}')
        if groups != 1:
            raise ValueError(f'DRConv2d supports groups=1 only, got groups={groups!r}')
        if padding_mode != 'zeros':
            raise ValueError(f"DRConv2d supports padding_mode='zeros' only, got {padding_mode!r}")
        if isinstance(padding, str):
            raise ValueError(f'DRConv2d needs padding as an int or a pair of ints, got '
                             f'{padding!r}')
        if guide_grad not in GUIDE_GRADS:
            raise ValueError(f'DRConv2d: guide_grad must be one of {GUIDE_GRADS}, '
                             f'got {guide_grad!r}')
        if filter_generator not in FILTER_GENERATORS:
            raise ValueError(f'DRConv2d: filter_generator must be one of '
                             f'{sorted(FILTER_GENERATORS)}, got {filter_generator!r}')
        kernel_size = pair(kernel_size, 'kernel_size', 1)
        stride, padding = pair(stride, 'stride', 1), pair(padding, 'padding', 0)
        dilation = pair(dilation, 'dilation', 1)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self.region_num = region_num
        self.filter_generator_type = filter_generator
        self.guide_grad = guide_grad
        factory = dict(device=device, dtype=dtype)
        with _own_random_stream([self.weight.device]):
            self.guide_conv = GuideConv(in_channels, region_num, kernel_size, stride, padding,
                                        dilation, **factory)
            if filter_generator == 'paper':
                generator = PaperFilterGenerator(in_channels, out_channels, kernel_size,
                                                 region_num)
            else:
                generator = BasesFilterGenerator(in_channels, out_channels, kernel_size,
                                                 region_num, num_bases)
            self.filter_generator = generator.to(**factory)

    def reset_filter_generator(self) -> None:
        """Zero the generated change, leaving ``weight``, ``bias`` and the guide as they are.

        Afterwards every region's filter equals ``weight``.
        """
        self.filter_generator.reset_parameters()

    def apply(self, fn: Callable[[nn.Module], None]) -> 'DRConv2d':
        """``fn`` on every submodule, then on this layer, as nn.Module.apply.

        The guide conv and the filter generator draw from their own random stream meanwhile,
        so an initialiser that reaches them (mmengine's ``init_cfg``, e.g. Kaiming on 'Conv2d')
        draws for ``weight`` and for every later layer what it draws in the Conv2d model.
        """
        with _own_random_stream({p.device for p in self.parameters()}):
            for child in self.children():
                child.apply(fn)
        fn(self)
        return self

    def region_filters(self, x: Tensor) -> Tensor:
        """Each sample's region filters, materialised: x (B, C_in, H, W) ->
        (B, m, C_out, C_in, kh, kw)."""
        return self.filter_generator(x, self.weight).materialize()

    def _conv_forward(self, x: Tensor, weight: Tensor, bias) -> Tensor:
        """Refuses the static-conv call through which conv-BN fusion runs a conv."""
        raise RuntimeError(
            "DRConv2d cannot be fused with the BatchNorm after it (mmcv ConvModule's "
            "efficient_conv_bn_eval=True, mmengine's efficient_conv_bn_eval): its filters "
            'differ per sample and region, and a static conv with the folded weights would '
            'compute another result. Turn efficient_conv_bn_eval off where DRConv is used.')

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> (B, C_out, H_out, W_out); x (C_in, H, W) -> (C_out, H_out, W_out)."""
        if isinstance(x, torch.fx.Proxy):
            raise RuntimeError(
                'DRConv2d cannot be traced by torch.fx.symbolic_trace (its regions depend on '
                "the input's values); mmengine's efficient_conv_bn_eval traces the modules it "
                'names: leave the modules that hold DRConv out of its list.')
        if x.dim() == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.dim() != 4:
            raise ValueError(f'DRConv2d: expected input (B, C_in, H, W) or (C_in, H, W), got '
                             f'shape {tuple(x.shape)}')
        guide = self.guide_conv(x)
        factors = self.filter_generator(x, self.weight)
        if _exporting():
            out = region_conv_dense(x, factors.materialize(), guide, self.stride, self.padding,
                                    self.dilation)
            return out if self.bias is None else out + self.bias.view(1, -1, 1, 1).to(out.dtype)
        # the bias added as the output is written; an empty batch gives conv's empty output
        return region_conv_factored(x, factors, guide, self.stride, self.padding, self.dilation,
                                    bias=self.bias, guide_grad=self.guide_grad)

    def extra_repr(self) -> str:
        text = (f'{super().extra_repr()}, region_num={self.region_num}, '
                f"filter_generator='{self.filter_generator_type}'")
        return text + (f", guide_grad='{self.guide_grad}'" if self.guide_grad != 'exact' else '')

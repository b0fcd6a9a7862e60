"""Speed and memory of DRConv: the op, the layer as users run it, and whole models.

    # the op and the layer on the target layers (B=8, C_in=C_out=128, 32x32, m=8; k=3 and k=1)
    python tools/analysis_tools/benchmark_drconv.py --layers
    # chosen shapes: B,C_in,C_out,H,W,k,m[,stride]
    python tools/analysis_tools/benchmark_drconv.py --shapes 8,128,128,32,32,3,8 --layers
    # the op at every DRConv layer shape of a config
    python tools/analysis_tools/benchmark_drconv.py --config CFG --input-shape 3 800 1333
    # a config's model against its baseline: training step, inference, memory, parameters
    python tools/analysis_tools/benchmark_drconv.py --shapes none --model CFG

Op mode, for each layer shape: ``conv`` (F.conv2d with a static filter, the yardstick),
``region_conv`` (this op, with a plain contiguous per-sample weight (B, m, C_out, C_in, kh, kw))
and ``dense`` (:func:`drconv.region_conv_dense`, every region's conv then a selection);
``--top2`` adds ``region_conv_top2``. Layer mode (``--layers``): ``nn.Conv2d`` against
``DRConv2d`` with each filter generator ('paper', 'bases'), their generator parameters set
non-zero (random, as after training), as a user runs them. Two modes each: ``forward``
(inference, under torch.no_grad) and ``forward_backward`` (forward with grad, then backward of a
fixed random output gradient to every input and parameter). Timing is interleaved: each
repetition runs every (variant, mode) once, in a random order drawn anew for each repetition
(seeded, the same every run), after ``--warmup`` untimed repetitions, so that no variant always
runs after the same one (what runs before a call changes its time: the cache it finds, the
memory just freed); the tables give medians and their ratio to the conv of the same shape.
``--channels-last`` runs both modes with the activations (x, the guide, the output gradient)
and the layers (``Module.to(memory_format=torch.channels_last)``) or conv's weight in
channels_last, as a model converted to it runs; the targets are for the default layout and are
not checked then.

Peak extra memory (forward_backward): the most bytes the forward + backward held allocated at
once above what was allocated before it started (the inputs and the output gradient), outputs
and gradients included, and the op's scratch buffers (kept between calls: released before the
run, so they are allocated and counted in it). On CPU it is the running sum of the allocations
made during one forward + backward and their frees, as torch.profiler (``profile_memory=True``)
records them (frees of blocks allocated before the run are not counted); on CUDA
``max_memory_allocated`` minus ``memory_allocated`` before.

Model mode (``--model``) builds a config's model and its baseline (``--model-base-config``, by
default the config without its DRConv entries), copies the baseline's weights into the DRConv
model and sets its generator parameters non-zero, then times inference (``model.test_step``,
one image of ``--infer-shape``), the two models interleaved, then training steps (data
preprocessor, forward, losses, backward, SGD step; ``model.train_step``) on a random batch of
``--batch`` x ``--input-shape``, interleaved likewise, and measures the peak extra memory of a
training step and the parameters. A two-stage detector's RoI heads take the baseline's
proposals in both modes (:func:`baseline_proposals`). Each mode is timed apart, as each is
run: an inference right after a training step ran up to about 0.5 s slower (Faster R-CNN at
800x1333, 2 threads), which skewed the ratio by whichever model's training step happened to
come before.
Models are built without pretrained weights; nothing is downloaded.
"""
import argparse
import contextlib
import copy
import inspect
import json
import os
import os.path as osp
import random
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from drconv import DRConv2d, region_conv, region_conv_dense, scratch  # noqa: E402

TARGET_SHAPES = ('8,128,128,32,32,3,8', '8,128,128,32,32,1,8')
DET_CONFIG = osp.join(REPO_ROOT, 'configs', 'det', 'faster-rcnn_r50-drconv-c3-c5_fpn_1x_coco.py')
MODES = ('forward', 'forward_backward')
# glibc's malloc settings, recorded with the results: with its defaults, a block of more than
# 128 KiB to 32 MiB (as it adapts) is returned to the system when freed, and each new one
# costs a page fault per 4 KiB touched (in a virtual machine, up to more than a 1x1 conv's
# arithmetic); make_benchmarks_md.sh sets them so that freed memory is kept for reuse.
MALLOC_KNOBS = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')
GENERATORS = ('paper', 'bases')
# Targets (ratios to the conv or the baseline) for the target shapes, and for the detection
# model, on CPU, 2 threads, float32.
TARGETS = dict(op_forward=1.3, layer_forward=1.5,
               layer_forward_backward=dict(paper=4.0, bases=3.0),
               train_step=1.5, inference=1.10, train_memory=1.3)


class LayerShape(NamedTuple):
    """One layer's geometry. ``padding`` None means k // 2 * dilation ('same' at stride 1)."""

    b: int
    c_in: int
    c_out: int
    h: int
    w: int
    k: int
    m: int
    stride: int = 1
    padding: Optional[int] = None
    dilation: int = 1

    @property
    def pad(self) -> int:
        return self.k // 2 * self.dilation if self.padding is None else self.padding

    def label(self) -> str:
        text = f'{self.b},{self.c_in},{self.c_out},{self.h},{self.w},{self.k},{self.m}'
        if self.stride != 1:
            text += f',{self.stride}'
        if self.padding is not None and self.padding != self.k // 2 * self.dilation:
            text += f' pad {self.padding}'
        if self.dilation != 1:
            text += f' dil {self.dilation}'
        return text


def parse_shape(text: str) -> LayerShape:
    """``B,C_in,C_out,H,W,k,m[,stride]`` -> LayerShape."""
    values = [int(v) for v in text.split(',')]
    if len(values) not in (7, 8) or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f'--shapes takes B,C_in,C_out,H,W,k,m[,stride] (positive ints), got {text!r}')
    return LayerShape(*values)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Benchmark DRConv: region_conv against F.conv2d and the all-regions '
        'reference, DRConv2d against nn.Conv2d, a DRConv model against its baseline',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Targets are checked for the two target shapes and the detection config under '
        'their conditions (CPU, 2 threads, float32).')
    parser.add_argument('--shapes', action='append', metavar='B,C_in,C_out,H,W,k,m[,stride]',
                        help="a layer shape (repeatable; default: the two target layers unless "
                        "--config/--model; 'none' for no layer shapes)")
    parser.add_argument('--layers', action='store_true',
                        help='also time DRConv2d (both filter generators) against nn.Conv2d '
                        'at each layer shape')
    parser.add_argument('--config', help="the op at every DRConv layer shape this config's "
                        'model runs at --input-shape and --batch')
    parser.add_argument('--model', metavar='CONFIG', help="this config's model against its "
                        'baseline: training step, inference, memory, parameters')
    parser.add_argument('--model-base-config', metavar='CONFIG', help='the baseline of --model '
                        "(default: it without its type='DRConv' entries)")
    parser.add_argument('--input-shape', type=int, nargs=3, default=[3, 512, 512],
                        metavar=('C', 'H', 'W'),
                        help='image size for --config and the training step of --model')
    parser.add_argument('--batch', type=int, default=2, help='images per batch (--config, '
                        'the training step of --model)')
    parser.add_argument('--infer-shape', type=int, nargs=3, default=[3, 800, 1333],
                        metavar=('C', 'H', 'W'), help='image size of --model inference (batch 1)')
    parser.add_argument('--model-repeat', type=int, default=3,
                        help='timed training steps and inferences of each model')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:i]'")
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--repeat', type=int, default=10, help='timed repetitions per variant')
    parser.add_argument('--warmup', type=int, default=2, help='untimed repetitions first')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'float64',
                                                                'float16', 'bfloat16'])
    parser.add_argument('--top2', action='store_true',
                        help="also run region_conv with guide_grad='top2'")
    parser.add_argument('--channels-last', action='store_true',
                        help='op and layer modes with activations and layers in '
                        'torch.channels_last (targets not checked)')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory measurement')
    parser.add_argument('--json', metavar='PATH', help="also write the results as JSON ('-': "
                        'to stdout instead of the tables)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--summarize', nargs='+', metavar='JSON',
                        help='print one table of every target over the runs whose --json '
                        'reports are given (nothing is measured)')
    args = parser.parse_args(argv)
    if args.channels_last and args.model:
        parser.error('--channels-last applies to the op and layer modes; run --model without it')
    shapes = args.shapes
    if shapes is None:
        shapes = [] if (args.config or args.model) else list(TARGET_SHAPES)
    args.layer_shapes = [parse_shape(s) for s in shapes if s.lower() != 'none']
    return args


# ---------------------------------------------------------------- layer benchmark

def variant_ops(top2: bool) -> Dict[str, Callable]:
    """Variant name -> fn(tensors, shape) computing its output."""

    def conv(t, s):
        return F.conv2d(t['x'], t['conv_weight'], None, s.stride, s.pad, s.dilation)

    def op(t, s):
        return region_conv(t['x'], t['weight'], t['guide'], s.stride, s.pad, s.dilation)

    def dense(t, s):
        return region_conv_dense(t['x'], t['weight'], t['guide'], s.stride, s.pad, s.dilation)

    ops = dict(conv=conv, region_conv=op, dense=dense)
    if top2:
        if 'guide_grad' not in inspect.signature(region_conv).parameters:
            raise SystemExit('--top2: this region_conv has no guide_grad argument')

        def op_top2(t, s):
            return region_conv(t['x'], t['weight'], t['guide'], s.stride, s.pad, s.dilation,
                               guide_grad='top2')

        ops['region_conv_top2'] = op_top2
    return ops


def make_tensors(s: LayerShape, device: torch.device, dtype: torch.dtype, seed: int,
                 memory_format: torch.memory_format = torch.contiguous_format
                 ) -> Dict[str, torch.Tensor]:
    """Random inputs of one shape: x, conv_weight, weight (per sample, plain contiguous
    (B, m, C_out, C_in, kh, kw)), guide, grad_out; the 4-dimensional ones in
    ``memory_format``."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=generator) * scale).to(device, dtype)

    h_out = (s.h + 2 * s.pad - s.dilation * (s.k - 1) - 1) // s.stride + 1
    w_out = (s.w + 2 * s.pad - s.dilation * (s.k - 1) - 1) // s.stride + 1
    scale = (s.c_in * s.k * s.k) ** -0.5
    tensors = dict(x=randn(s.b, s.c_in, s.h, s.w),
                   conv_weight=randn(s.c_out, s.c_in, s.k, s.k, scale=scale),
                   weight=randn(s.b, s.m, s.c_out, s.c_in, s.k, s.k, scale=scale),
                   guide=randn(s.b, s.m, h_out, w_out),
                   grad_out=randn(s.b, s.c_out, h_out, w_out))
    return {name: t.contiguous(memory_format=memory_format) if t.dim() == 4 else t
            for name, t in tensors.items()}


def grad_inputs(variant: str, t: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
    """The tensors a variant's backward differentiates: x, its weight (and the guide)."""
    if variant == 'conv':
        return [t['x'], t['conv_weight']]
    return [t['x'], t['weight'], t['guide']]


def op_runs(ops: Dict[str, Callable], t: Dict[str, torch.Tensor],
            s: LayerShape) -> Dict[Tuple[str, str], Callable[[], None]]:
    """(variant, mode) -> one forward (no grad) or forward + backward of the op's variant."""

    def run(variant: str, mode: str) -> Callable[[], None]:
        fn = ops[variant]

        def once() -> None:
            if mode == 'forward':
                with torch.no_grad():
                    fn(t, s)
                return
            for leaf in grad_inputs(variant, t):
                leaf.grad = None
                leaf.requires_grad_(True)
            fn(t, s).backward(t['grad_out'])
        return once

    return {(v, m): run(v, m) for m in MODES for v in ops}


def layer_runs(s: LayerShape, device: torch.device, dtype: torch.dtype, seed: int,
               memory_format: torch.memory_format = torch.contiguous_format
               ) -> Dict[Tuple[str, str], Callable[[], None]]:
    """(variant, mode) -> one forward (no grad) or forward + backward of ``nn.Conv2d`` ('conv')
    or ``DRConv2d`` with each generator ('drconv_paper', 'drconv_bases'), generator parameters
    non-zero, on the same random input; the backward reaches x and every parameter."""
    torch.manual_seed(seed)
    geometry = dict(stride=s.stride, padding=s.pad, dilation=s.dilation)
    layers = {'conv': torch.nn.Conv2d(s.c_in, s.c_out, s.k, **geometry)}
    for generator in GENERATORS:
        layer = DRConv2d(s.c_in, s.c_out, s.k, region_num=s.m, filter_generator=generator,
                         **geometry)
        with torch.no_grad():  # as after training: the generated change is not zero
            for p in layer.filter_generator.parameters():
                p.normal_(0, 0.02)
        layers[f'drconv_{generator}'] = layer
    t = make_tensors(s, device, dtype, seed, memory_format)
    x, grad_out = t['x'], t['grad_out']

    def run(layer: torch.nn.Module, mode: str) -> Callable[[], None]:
        def once() -> None:
            if mode == 'forward':
                with torch.no_grad():
                    layer(x)
                return
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x.requires_grad_(True)).backward(grad_out)
        return once

    layers = {name: layer.to(device, dtype, memory_format=memory_format)
              for name, layer in layers.items()}
    return {(name, m): run(layer, m) for m in MODES for name, layer in layers.items()}


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_runs(runs: Dict[Tuple[str, str], Callable[[], None]], device: torch.device, repeat: int,
              warmup: int) -> Dict[Tuple[str, str], List[float]]:
    """Seconds of each run, each repetition running them all in a random order, ``repeat``
    times after ``warmup``."""
    jobs = list(runs)
    times: Dict[Tuple[str, str], List[float]] = {job: [] for job in jobs}
    shuffle = random.Random(0).shuffle
    for rep in range(warmup + repeat):
        order = list(jobs)
        shuffle(order)
        for job in order:
            synchronize(device)
            start = time.perf_counter()
            runs[job]()
            synchronize(device)
            if rep >= warmup:
                times[job].append(time.perf_counter() - start)
    return times


def peak_extra_bytes(run: Callable[[], None], device: torch.device) -> int:
    """Most bytes ``run()`` held allocated at once beyond what was allocated before it."""
    if device.type == 'cuda':
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    blocks = {}  # address -> bytes of the blocks allocated during the run and still held
    live = peak = 0
    for alloc in sorted(allocation_events(prof.profiler.kineto_results.experimental_event_tree()),
                        key=lambda event: event.start_time_ns):
        fields = alloc.extra_fields
        if fields.alloc_size > 0:
            blocks[fields.ptr] = fields.alloc_size
            live += fields.alloc_size
            peak = max(peak, live)
        else:  # a free: of a block of the run's, or of one from before it (not counted)
            live -= blocks.pop(fields.ptr, 0)
    return peak


def allocation_events(events: List[Any]) -> Iterator[Any]:
    """The CPU allocations and frees among torch.profiler's events and their children."""
    for event in events:
        if (type(event.extra_fields).__name__ == '_ExtraFields_Allocation'
                and event.extra_fields.device.type == 'cpu'):
            yield event
        yield from allocation_events(event.children)


def measure_memory(runs: Dict[Tuple[str, str], Callable[[], None]],
                   device: torch.device) -> Dict[str, int]:
    """Peak extra bytes of each variant's forward + backward (its gradients included)."""
    result = {}
    for (variant, mode), run in runs.items():
        if mode == 'forward_backward':
            run()  # the gradients of the previous run are set free by this one: not counted
            scratch.release()  # the op's kept temporaries are allocated, and counted, in the run
            result[variant] = peak_extra_bytes(run, device)
    return result


def summarize(times: Dict[Tuple[str, str], List[float]], base: str) -> Dict[str, Any]:
    """Medians (seconds) of each 'variant/mode' and their ratios to ``base`` of the same mode."""
    medians = {f'{v}/{m}': statistics.median(ts) for (v, m), ts in times.items()}
    ratios = {k: medians[k] / medians[f'{base}/{k.split("/")[1]}'] for k in medians
              if not k.startswith(f'{base}/')}
    return dict(median_s=medians, ratio_to_conv=ratios)


def benchmark_shape(s: LayerShape, args: argparse.Namespace, device: torch.device,
                    dtype: torch.dtype) -> Dict[str, Any]:
    """The op (and with ``--layers`` the layer) at one shape: median times, ratios to conv,
    peak memory."""
    ops = variant_ops(args.top2)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    t = make_tensors(s, device, dtype, args.seed, memory_format)
    runs = op_runs(ops, t, s)
    result = dict(shape=s._asdict(), label=s.label(), repeat=args.repeat,
                  **summarize(time_runs(runs, device, args.repeat, args.warmup), 'conv'))
    result['dense_over_op_forward'] = (result['median_s']['dense/forward']
                                       / result['median_s']['region_conv/forward'])
    if not args.no_memory:
        result['memory'] = measure_memory(runs, device)
    for leaf in t.values():
        leaf.grad = None
    if args.layers:
        runs = layer_runs(s, device, dtype, args.seed, memory_format)
        result['layer'] = summarize(time_runs(runs, device, args.repeat, args.warmup), 'conv')
        if not args.no_memory:
            result['layer']['memory'] = measure_memory(runs, device)
    return result


def is_target(s: LayerShape) -> bool:
    return s.label() in TARGET_SHAPES


def check_targets(r: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """For a target shape under the targets' conditions: each target, its value and a verdict."""
    s = LayerShape(**r['shape'])
    if not (is_target(s) and args.device == 'cpu' and args.threads == 2
            and args.dtype == 'float32' and not args.channels_last):
        return {}
    checks = {f'region_conv forward <= {TARGETS["op_forward"]}x conv':
              (r['ratio_to_conv']['region_conv/forward'], TARGETS['op_forward'])}
    if 'layer' in r:
        ratios = r['layer']['ratio_to_conv']
        for generator in GENERATORS:
            checks[f'DRConv2d {generator} forward <= {TARGETS["layer_forward"]}x nn.Conv2d'] = (
                ratios[f'drconv_{generator}/forward'], TARGETS['layer_forward'])
            limit = TARGETS['layer_forward_backward'][generator]
            checks[f'DRConv2d {generator} forward+backward <= {limit}x nn.Conv2d'] = (
                ratios[f'drconv_{generator}/forward_backward'], limit)
    return {k: dict(value=v, met=bool(v <= limit)) for k, (v, limit) in checks.items()}


# ---------------------------------------------------------------- configs

def config_layer_shapes(config: str, image_shape: Sequence[int],
                        batch: int) -> List[Tuple[LayerShape, List[str]]]:
    """Distinct DRConv2d layer shapes a config's model runs at this input, with layer names."""
    from drconv_mm.analysis import models
    model = models.build_model(models.load_config(config))
    data = models.preprocess(model, models.fake_batch(model, batch, image_shape))
    shapes: Dict[LayerShape, List[str]] = {}
    for layer in models.drconv_layers(model, data):
        b, c_in, h, w = layer['input_shape']
        kh, kw = layer['kernel_size']
        if kh != kw or len(set(layer['stride'])) > 1 or len(set(layer['padding'])) > 1 \
                or len(set(layer['dilation'])) > 1:
            raise SystemExit(f'{layer["name"]}: only square kernels, strides, paddings and '
                             'dilations are benchmarked')
        s = LayerShape(b, c_in, layer['out_channels'], h, w, kh, layer['region_num'],
                       layer['stride'][0], layer['padding'][0], layer['dilation'][0])
        shapes.setdefault(s, []).append(layer['name'])
    return list(shapes.items())


def model_runs(args: argparse.Namespace) -> Tuple[Dict[Tuple[str, str], Callable[[], None]],
                                                  Dict[str, Any]]:
    """(model, mode) -> one training step ('train_step') or inference ('inference') of the
    ``--model`` config's model ('drconv') and its baseline; and facts about both."""
    from mmengine.optim import OptimWrapper
    from drconv_mm.analysis import models
    cfg = models.load_config(args.model)
    # seeded first: the weights (and what the models compute) do not depend on what ran before
    torch.manual_seed(args.seed)
    built = {'drconv': models.build_model(cfg),
             'baseline': (models.build_model(models.load_config(args.model_base_config))
                          if args.model_base_config else models.build_model(cfg, baseline=True))}
    torch.manual_seed(args.seed)
    # the same weights where both have them; the generated change non-zero, as after training
    built['drconv'].load_state_dict(built['baseline'].state_dict(), strict=False)
    with torch.no_grad():
        for module in built['drconv'].modules():
            if isinstance(module, DRConv2d):
                for p in module.filter_generator.parameters():
                    p.normal_(0, 0.02)
    batches = {name: (models.fake_batch(model, args.batch, args.input_shape, args.seed),
                      models.fake_batch(model, 1, args.infer_shape, args.seed))
               for name, model in built.items()}
    proposals = baseline_proposals(built['baseline'], *batches['baseline'])
    runs = {}
    for name, model in built.items():
        # lr 0: every step does the optimizer's arithmetic and leaves the weights as they are
        wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9))
        train, infer = batches[name]

        def train_step(model=model, wrapper=wrapper, packed=train) -> None:
            model.train()
            with rpn_proposals(model, 'loss_and_predict', proposals):
                model.train_step(dict(packed), wrapper)

        def inference(model=model, packed=infer) -> None:
            model.eval()
            with torch.no_grad(), rpn_proposals(model, 'predict', proposals):
                model.test_step(dict(packed))

        runs[(name, 'train_step')], runs[(name, 'inference')] = train_step, inference
    facts = dict(config=args.model, base_config=args.model_base_config or 'without DRConv',
                 params={name: sum(p.numel() for p in m.parameters())
                         for name, m in built.items()},
                 drconv_layers=sum(isinstance(m, DRConv2d) for m in built['drconv'].modules()))
    return runs, facts


def baseline_proposals(model: torch.nn.Module, train: dict,
                       infer: dict) -> Optional[Dict[str, list]]:
    """A two-stage detector's region proposals on the training batch ('loss_and_predict') and
    the inference image ('predict'), else None. Untrained, the DRConv model and its baseline
    propose different boxes, and the RoI head's work grows with the boxes' sizes (RoIAlign
    samples each box adaptively): both RoI heads take the baseline's (see rpn_proposals)."""
    if not (getattr(model, 'with_rpn', False) and getattr(model, 'with_roi_head', False)):
        return None
    with torch.no_grad():
        model.train()
        data = model.data_preprocessor(dict(train), True)
        samples = copy.deepcopy(data['data_samples'])
        for sample in samples:  # the RPN's classes, as the detector's loss gives them
            sample.gt_instances.labels = torch.zeros_like(sample.gt_instances.labels)
        cfg = model.train_cfg.get('rpn_proposal', model.test_cfg.rpn)
        _, for_training = model.rpn_head.loss_and_predict(
            model.extract_feat(data['inputs']), samples, proposal_cfg=cfg)
        model.eval()
        data = model.data_preprocessor(dict(infer), False)
        for_inference = model.rpn_head.predict(model.extract_feat(data['inputs']),
                                               data['data_samples'], rescale=False)
    return {'loss_and_predict': for_training, 'predict': for_inference}


@contextlib.contextmanager
def rpn_proposals(model: torch.nn.Module, method: str,
                  proposals: Optional[Dict[str, list]]) -> Iterator[None]:
    """Inside the block, the RPN's ``method`` runs as before but hands the RoI head copies of
    ``proposals[method]`` (the RoI head renames their fields); nothing changes when
    ``proposals`` is None."""
    if proposals is None:
        yield
        return
    original = getattr(model.rpn_head, method)

    def with_fixed(*args, **kwargs):
        result = original(*args, **kwargs)
        fixed = [p.clone() for p in proposals[method]]
        return (result[0], fixed) if method == 'loss_and_predict' else fixed

    setattr(model.rpn_head, method, with_fixed)
    try:
        yield
    finally:
        delattr(model.rpn_head, method)


def benchmark_model(args: argparse.Namespace) -> Dict[str, Any]:
    """Median seconds of training steps and inference of a config's model and its baseline,
    interleaved; peak extra memory of a training step; parameters."""
    runs, facts = model_runs(args)
    times = {}
    for mode in ('inference', 'train_step'):  # each mode apart: see the module's docstring
        times.update(time_runs({job: run for job, run in runs.items() if job[1] == mode},
                               torch.device('cpu'), args.model_repeat, 1))
    medians = {f'{name}/{mode}': statistics.median(ts) for (name, mode), ts in times.items()}
    memory = {name: peak_extra_bytes(runs[(name, 'train_step')], torch.device('cpu'))
              for name in ('drconv', 'baseline')}
    ratio = {mode: medians[f'drconv/{mode}'] / medians[f'baseline/{mode}']
             for mode in ('train_step', 'inference')}
    ratio['train_memory'] = memory['drconv'] / memory['baseline']
    ratio['params'] = facts['params']['drconv'] / facts['params']['baseline']
    return dict(facts, train_shape=[args.batch, *args.input_shape],
                infer_shape=[1, *args.infer_shape], repeat=args.model_repeat,
                median_s=medians, train_memory_bytes=memory, ratio=ratio)


def check_model_targets(m: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """The detection model's targets, for the DRConv Faster R-CNN config at 2 x 512 x 512
    (training) and 1 x 800 x 1333 (inference) on CPU, 2 threads."""
    if not (osp.basename(args.model) == osp.basename(DET_CONFIG) and args.threads == 2
            and m['train_shape'] == [2, 3, 512, 512] and m['infer_shape'] == [1, 3, 800, 1333]):
        return {}
    checks = {f'training step <= {TARGETS["train_step"]}x baseline': 'train_step',
              f'inference <= {TARGETS["inference"]}x baseline': 'inference',
              f'training step peak memory <= {TARGETS["train_memory"]}x baseline':
              'train_memory'}
    return {name: dict(value=m['ratio'][key], met=bool(m['ratio'][key] <= TARGETS[key]))
            for name, key in checks.items()}


# ---------------------------------------------------------------- report

def ms(seconds: float) -> str:
    return f'{seconds * 1e3:.2f}'


def mib(n: int) -> str:
    return f'{n / 2 ** 20:.1f}'


def ratio_cells(r: Dict[str, Any], variants: List[str]) -> List[str]:
    """A row's cells: base forward ms, each variant's forward ms (x base), the same for
    forward+backward."""
    med, rat = r['median_s'], r['ratio_to_conv']
    base = next(k.split('/')[0] for k in med if k.split('/')[0] not in variants)
    cells = []
    for mode in MODES:
        cells.append(ms(med[f'{base}/{mode}']))
        cells += [f"{ms(med[f'{v}/{mode}'])} ({rat[f'{v}/{mode}']:.2f}x)" for v in variants]
    return cells


def table(head: List[str], rows: List[List[str]]) -> List[str]:
    return ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)] + [
        '| ' + ' | '.join(row) + ' |' for row in rows]


def memory_cells(memory: Dict[str, int], base: str) -> List[str]:
    return [mib(memory[base])] + [f'{mib(v)} ({v / memory[base]:.2f}x)'
                                  for k, v in memory.items() if k != base]


def tables(report: Dict[str, Any]) -> str:
    """The results as markdown tables."""
    env = report['environment']
    layers = report['layers']
    lines = []
    if layers:
        layout = ', channels_last' if env.get('channels_last') else ''
        lines += [f"device {env['device']}, {env['threads']} threads, {env['dtype']}{layout}, "
                  f"torch {env['torch']}, OMP_WAIT_POLICY {env['omp_wait_policy']}, "
                  + ''.join(f'{k} {v}, ' for k, v in env.get('malloc', {}).items())
                  + f"median of {env['repeat']} interleaved repetitions ({env['warmup']} "
                  "warm-up)", '']
        variants = sorted({k.split('/')[0] for k in layers[0]['ratio_to_conv']})
        variants = [v for v in ('region_conv', 'region_conv_top2', 'dense') if v in variants]
        head = ['op: shape B,C_in,C_out,H,W,k,m[,s]', 'conv fwd ms']
        head += [f'{v} fwd ms (x conv)' for v in variants] + ['conv fwd+bwd ms']
        head += [f'{v} fwd+bwd ms (x conv)' for v in variants]
        rows = [[r['label'] + (f" ({r['count']} layers)" if r.get('count', 1) > 1 else '')]
                + ratio_cells(r, variants) for r in layers]
        lines += table(head, rows)
        if 'layer' in layers[0]:
            names = [f'drconv_{g}' for g in GENERATORS]
            head = ['layer: shape', 'nn.Conv2d fwd ms'] + [f'DRConv2d {g} fwd ms (x)'
                                                           for g in GENERATORS]
            head += ['nn.Conv2d fwd+bwd ms'] + [f'DRConv2d {g} fwd+bwd ms (x)'
                                                for g in GENERATORS]
            lines += [''] + table(head, [[r['label']] + ratio_cells(r['layer'], names)
                                         for r in layers])
        if 'memory' in layers[0]:
            lines += ['', 'Peak extra memory of forward+backward, MiB (x conv)', '']
            head = ['shape'] + list(layers[0]['memory'])
            rows = [[r['label']] + memory_cells(r['memory'], 'conv') for r in layers]
            if 'memory' in layers[0].get('layer', {}):
                head += [f'layer: {v}' for v in layers[0]['layer']['memory']]
                rows = [row + memory_cells(r['layer']['memory'], 'conv')
                        for row, r in zip(rows, layers)]
            lines += table(head, rows)
    if report.get('model'):
        m = report['model']
        lines += ['' if lines else '',
                  f"Model: {m['config']} ({m['drconv_layers']} DRConv layers) vs baseline "
                  f"({m['base_config']}); training step {tuple(m['train_shape'])}, inference "
                  f"{tuple(m['infer_shape'])}, medians of {m['repeat']} interleaved", '']
        head = ['', 'training step s', 'inference s', 'training step peak memory MiB',
                'parameters (M)']
        rows = [[name, f"{m['median_s'][f'{name}/train_step']:.2f}",
                 f"{m['median_s'][f'{name}/inference']:.2f}",
                 mib(m['train_memory_bytes'][name]), f"{m['params'][name] / 1e6:.1f}"]
                for name in ('drconv', 'baseline')]
        rows.append(['ratio'] + [f"{m['ratio'][k]:.2f}x" for k in
                                 ('train_step', 'inference', 'train_memory', 'params')])
        lines += table(head, rows)
    checked = [(r['label'], r['targets']) for r in layers if r.get('targets')]
    if report.get('model', {}).get('targets'):
        checked.append(('Faster R-CNN R50-FPN DRConv c3-c5', report['model']['targets']))
    if checked:
        lines += ['', 'Targets (CPU, 2 threads, float32):']
    for label, targets in checked:
        for name, t in targets.items():
            lines.append(f"  {label}: {name}: {t['value']:.2f} -> "
                         f"{'met' if t['met'] else 'NOT met'}")
    return '\n'.join(lines)


def summary(reports: List[Dict[str, Any]]) -> str:
    """One markdown table: each target checked in any of ``reports`` (one per run), its value
    in each run and whether it was met in all."""
    rows: Dict[str, List[Optional[Dict[str, Any]]]] = {}
    for i, report in enumerate(reports):
        checked = [(r['label'], r.get('targets', {})) for r in report['layers']]
        if report.get('model'):
            checked.append(('Faster R-CNN R50-FPN DRConv c3-c5',
                            report['model'].get('targets', {})))
        for label, targets in checked:
            for name, t in targets.items():
                rows.setdefault(f'{label}: {name}', [None] * len(reports))[i] = t
    head = ['target'] + [f'run {i + 1}' for i in range(len(reports))] + ['met in every run']
    lines = []
    for name, results in rows.items():
        cells = [f"{t['value']:.2f}x" + ('' if t['met'] else ' (missed)') if t else 'not run'
                 for t in results]
        met = all(t and t['met'] for t in results)
        lines.append([name] + cells + ['yes' if met else '**no**'])
    return '\n'.join(table(head, lines))


def main(argv=None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.summarize:
        reports = []
        for path in args.summarize:
            with open(path) as f:
                reports.append(json.load(f))
        print(summary(reports))
        return {}
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    shapes: List[Tuple[LayerShape, List[str]]] = [(s, []) for s in args.layer_shapes]
    if args.config:
        shapes += config_layer_shapes(args.config, args.input_shape, args.batch)
    layers = []
    for s, names in shapes:
        r = benchmark_shape(s, args, device, dtype)
        r['count'], r['layers'] = max(1, len(names)), names
        r['targets'] = check_targets(r, args)
        layers.append(r)
        if args.json != '-':
            print(f'{s.label()}: done', file=sys.stderr, flush=True)
    report = dict(environment=dict(device=str(device), threads=torch.get_num_threads(),
                                   dtype=args.dtype, torch=torch.__version__,
                                   omp_wait_policy=os.environ.get('OMP_WAIT_POLICY', 'unset'),
                                   malloc={k: os.environ.get(k, 'unset') for k in MALLOC_KNOBS},
                                   repeat=args.repeat, warmup=args.warmup,
                                   channels_last=args.channels_last,
                                   config=args.config, input_shape=list(args.input_shape),
                                   batch=args.batch),
                  layers=layers, targets=TARGETS)
    if args.model:
        report['model'] = benchmark_model(args)
        report['model']['targets'] = check_model_targets(report['model'], args)
    if args.json == '-':
        print(json.dumps(report, indent=1))
    else:
        print(tables(report))
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(report, f, indent=1)
    return report


if __name__ == '__main__':
    main()

"""Speed and memory of ``drconv.region_conv`` against F.conv2d and the all-regions reference.

    # the issue's target layers (B=8, C_in=C_out=128, 32x32, m=8; k=3 and k=1)
    python tools/analysis_tools/benchmark_drconv.py
    # chosen shapes: B,C_in,C_out,H,W,k,m[,stride]
    python tools/analysis_tools/benchmark_drconv.py --shapes 8,128,128,32,32,3,8 \
        --shapes 2,64,64,56,56,3,4,2
    # every DRConv layer of a config at an input size, and a training step against the baseline
    python tools/analysis_tools/benchmark_drconv.py --config CFG --input-shape 3 800 1333 --batch 2
    python tools/analysis_tools/benchmark_drconv.py --shapes none --e2e-config CFG \
        --input-shape 3 256 256 --batch 2

For each layer shape three variants run on the same random inputs: ``conv`` (F.conv2d with a
static filter, the yardstick), ``region_conv`` (this op) and ``dense``
(:func:`drconv.region_conv_dense`, every region's conv then a selection); ``--top2`` adds
``region_conv_top2`` (``guide_grad='top2'``). Two modes: ``forward`` (inference, under
torch.no_grad) and ``forward_backward`` (forward with grad, then backward of a fixed random
output gradient to every input: x and the weight, and the guide for the DRConv variants).
Timing is interleaved: each repetition runs every (variant, mode) once, in a random order drawn
anew for each repetition (seeded, the same every run), after ``--warmup`` untimed repetitions,
so that no variant always runs after the same one (what runs before a call changes its time:
the cache it finds, the memory just freed); the table gives medians and their ratio to ``conv``
of the same shape.

Peak extra memory (forward_backward): the most bytes the forward + backward held allocated at
once above what was allocated before it started (the inputs and the output gradient), outputs
and gradients included, and the op's scratch buffers (kept between calls: released before the
run, so they are allocated and counted in it). On CPU it is the running sum of the allocator's
allocation and free events recorded by torch.profiler (``profile_memory=True``) during one
forward + backward; on CUDA ``max_memory_allocated`` minus ``memory_allocated`` before.
Reported also without the weight's own gradient (DRConv's per-sample filters,
B*m*C_out*C_in*kh*kw values, need a gradient of their size whatever the op; conv's static
filter's gradient is left out likewise).

``--e2e-config`` times whole training steps (data preprocessor, forward, losses, backward, SGD
step; ``model.train_step``) of a config's model and of its baseline (``--e2e-base-config``, by
default the config without its DRConv entries) on one random batch, interleaved, and reports the
ratio. Models are built without pretrained weights; nothing is downloaded.
"""
import argparse
import inspect
import json
import os
import os.path as osp
import random
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from drconv import region_conv, region_conv_dense, scratch  # noqa: E402

TARGET_SHAPES = ('8,128,128,32,32,3,8', '8,128,128,32,32,1,8')
MODES = ('forward', 'forward_backward')
# Targets of issue 5, for the target shapes on CPU, 2 threads, float32.
TARGETS = dict(forward_k3=2.0, forward_k1=2.5, forward_backward=5.0, dense_over_op=5.0,
               memory=2.0)


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
        description='Benchmark region_conv against F.conv2d and the all-regions reference',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--shapes', action='append', metavar='B,C_in,C_out,H,W,k,m[,stride]',
                        help="a layer shape (repeatable; default: the issue's two target "
                        "layers unless --config/--e2e-config; 'none' for no layer shapes)")
    parser.add_argument('--config', help='benchmark every DRConv layer shape this config\'s '
                        'model runs at --input-shape and --batch')
    parser.add_argument('--input-shape', type=int, nargs=3, default=[3, 800, 1333],
                        metavar=('C', 'H', 'W'), help='image size for --config/--e2e-config')
    parser.add_argument('--batch', type=int, default=2, help='images per batch (configs)')
    parser.add_argument('--e2e-config', help='time a training step of this config\'s model')
    parser.add_argument('--e2e-base-config', help='the baseline of --e2e-config (default: it '
                        "without its type='DRConv' entries)")
    parser.add_argument('--e2e-repeat', type=int, default=3, help='timed training steps each')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:i]'")
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--repeat', type=int, default=10, help='timed repetitions per variant')
    parser.add_argument('--warmup', type=int, default=2, help='untimed repetitions first')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'float64',
                                                                'float16', 'bfloat16'])
    parser.add_argument('--top2', action='store_true',
                        help="also run region_conv with guide_grad='top2'")
    parser.add_argument('--no-memory', action='store_true', help='skip the memory measurement')
    parser.add_argument('--json', metavar='PATH', help="also write the results as JSON ('-': "
                        'to stdout instead of the tables)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    shapes = args.shapes
    if shapes is None:
        shapes = [] if (args.config or args.e2e_config) else list(TARGET_SHAPES)
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


def make_tensors(s: LayerShape, device: torch.device, dtype: torch.dtype,
                 seed: int) -> Dict[str, torch.Tensor]:
    """Random inputs of one shape: x, conv_weight, weight (per sample), guide, grad_out.

    The per-sample weight has DRConv2d's memory layout, (B, m, C_out, kh, kw, C_in), which the
    op multiplies with directly (a plain contiguous weight would cost it a transposing copy).
    """
    generator = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=generator) * scale).to(device, dtype)

    h_out = (s.h + 2 * s.pad - s.dilation * (s.k - 1) - 1) // s.stride + 1
    w_out = (s.w + 2 * s.pad - s.dilation * (s.k - 1) - 1) // s.stride + 1
    scale = (s.c_in * s.k * s.k) ** -0.5
    return dict(x=randn(s.b, s.c_in, s.h, s.w),
                conv_weight=randn(s.c_out, s.c_in, s.k, s.k, scale=scale),
                # laid out (B, m, C_out, kh, kw, C_in) in memory, as DRConv2d's generators give it
                weight=randn(s.b, s.m, s.c_out, s.k, s.k, s.c_in,
                             scale=scale).permute(0, 1, 2, 5, 3, 4),
                guide=randn(s.b, s.m, h_out, w_out),
                grad_out=randn(s.b, s.c_out, h_out, w_out))


def grad_inputs(variant: str, t: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
    """The tensors a variant's backward differentiates: x, its weight (and the guide)."""
    if variant == 'conv':
        return [t['x'], t['conv_weight']]
    return [t['x'], t['weight'], t['guide']]


def run_once(fn: Callable, variant: str, mode: str, t: Dict[str, torch.Tensor],
             s: LayerShape) -> None:
    """One forward (no grad) or forward + backward of a variant."""
    if mode == 'forward':
        with torch.no_grad():
            fn(t, s)
        return
    leaves = grad_inputs(variant, t)
    for leaf in leaves:
        leaf.grad = None
        leaf.requires_grad_(True)
    fn(t, s).backward(t['grad_out'])


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_variants(ops: Dict[str, Callable], t: Dict[str, torch.Tensor], s: LayerShape,
                  device: torch.device, repeat: int,
                  warmup: int) -> Dict[Tuple[str, str], List[float]]:
    """Seconds of each (variant, mode), each repetition running them all in a random order,
    ``repeat`` times after ``warmup``."""
    jobs = [(v, m) for m in MODES for v in ops]
    times: Dict[Tuple[str, str], List[float]] = {job: [] for job in jobs}
    shuffle = random.Random(0).shuffle
    for rep in range(warmup + repeat):
        order = list(jobs)
        shuffle(order)
        for variant, mode in order:
            synchronize(device)
            start = time.perf_counter()
            run_once(ops[variant], variant, mode, t, s)
            synchronize(device)
            if rep >= warmup:
                times[(variant, mode)].append(time.perf_counter() - start)
    for leaf in t.values():
        leaf.grad = None
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
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == '[memory]' and str(e.device_type()).endswith('CPU')]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def measure_memory(ops: Dict[str, Callable], t: Dict[str, torch.Tensor], s: LayerShape,
                   device: torch.device) -> Dict[str, Dict[str, int]]:
    """Peak extra bytes of each variant's forward + backward, with and without its weight's
    gradient."""
    result = {}
    for variant, fn in ops.items():
        leaves = grad_inputs(variant, t)
        for leaf in leaves:
            leaf.grad = None
            leaf.requires_grad_(True)
        scratch.release()  # the op's kept temporaries are allocated, and counted, in the run
        peak = peak_extra_bytes(lambda: fn(t, s).backward(t['grad_out']), device)
        weight = leaves[1]
        result[variant] = dict(peak_extra_bytes=peak,
                               peak_extra_bytes_without_weight_grad=peak
                               - weight.numel() * weight.element_size())
        for leaf in leaves:
            leaf.grad = None
    return result


def is_target(s: LayerShape) -> bool:
    return s.label() in TARGET_SHAPES


def benchmark_shape(s: LayerShape, args: argparse.Namespace, device: torch.device,
                    dtype: torch.dtype) -> Dict[str, Any]:
    """Times (median seconds), ratios to conv and peak memory of one layer shape."""
    ops = variant_ops(args.top2)
    t = make_tensors(s, device, dtype, args.seed)
    times = time_variants(ops, t, s, device, args.repeat, args.warmup)
    medians = {f'{v}/{m}': statistics.median(ts) for (v, m), ts in times.items()}
    ratios = {k: medians[k] / medians[f'conv/{k.split("/")[1]}'] for k in medians
              if not k.startswith('conv/')}
    result = dict(shape=s._asdict(), label=s.label(), median_s=medians, ratio_to_conv=ratios,
                  dense_over_op_forward=medians['dense/forward'] / medians['region_conv/forward'],
                  repeat=args.repeat)
    if not args.no_memory:
        memory = measure_memory(ops, t, s, device)
        conv = memory['conv']
        result['memory'] = memory
        result['memory_ratio_to_conv'] = {
            v: dict(peak_extra_bytes=m['peak_extra_bytes'] / conv['peak_extra_bytes'],
                    without_weight_grad=m['peak_extra_bytes_without_weight_grad']
                    / conv['peak_extra_bytes_without_weight_grad'])
            for v, m in memory.items() if v != 'conv'}
    return result


def check_targets(r: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """For a target shape under the targets' conditions: each target, its value and a verdict."""
    s = LayerShape(**r['shape'])
    if not (is_target(s) and args.device == 'cpu' and args.threads == 2
            and args.dtype == 'float32'):
        return {}
    limit = TARGETS['forward_k3'] if s.k == 3 else TARGETS['forward_k1']
    checks = {
        f'forward <= {limit}x conv': (r['ratio_to_conv']['region_conv/forward'],
                                      r['ratio_to_conv']['region_conv/forward'] <= limit),
        f'forward+backward <= {TARGETS["forward_backward"]}x conv': (
            r['ratio_to_conv']['region_conv/forward_backward'],
            r['ratio_to_conv']['region_conv/forward_backward'] <= TARGETS['forward_backward']),
        f'dense forward >= {TARGETS["dense_over_op"]}x op forward': (
            r['dense_over_op_forward'], r['dense_over_op_forward'] >= TARGETS['dense_over_op']),
    }
    if 'memory' in r:
        value = r['memory_ratio_to_conv']['region_conv']['without_weight_grad']
        checks[f'peak extra memory (without weight grad) <= {TARGETS["memory"]}x conv'] = (
            value, value <= TARGETS['memory'])
    return {k: dict(value=v, met=bool(ok)) for k, (v, ok) in checks.items()}


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


def benchmark_training_step(args: argparse.Namespace) -> Dict[str, Any]:
    """Median seconds of ``model.train_step`` for the e2e config and its baseline."""
    from mmengine.optim import OptimWrapper
    from drconv_mm.analysis import models
    cfg = models.load_config(args.e2e_config)
    built = {'drconv': models.build_model(cfg)}
    if args.e2e_base_config:
        built['baseline'] = models.build_model(models.load_config(args.e2e_base_config))
    else:
        built['baseline'] = models.build_model(cfg, baseline=True)
    try:  # same weights: both compute the same function at the start (DRConv's delta is 0)
        built['drconv'].load_state_dict(built['baseline'].state_dict(), strict=False)
    except RuntimeError:
        pass
    steps = {}
    for name, model in built.items():
        model.train()
        # lr 0: every step does the optimizer's arithmetic and leaves the weights as they are
        wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9))
        packed = models.fake_batch(model, args.batch, args.input_shape, args.seed)
        steps[name] = (lambda model=model, wrapper=wrapper, packed=packed:
                       model.train_step(dict(packed), wrapper))
    times: Dict[str, List[float]] = {name: [] for name in steps}
    order = list(steps)
    for rep in range(1 + args.e2e_repeat):  # one untimed step each first
        for name in (order if rep % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            steps[name]()
            if rep:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return dict(config=args.e2e_config, base_config=args.e2e_base_config or 'without DRConv',
                input_shape=list(args.input_shape), batch=args.batch, repeat=args.e2e_repeat,
                median_s=medians, ratio=medians['drconv'] / medians['baseline'],
                drconv_layers=sum(type(m).__name__ == 'DRConv2d'
                                  for m in built['drconv'].modules()))


# ---------------------------------------------------------------- report

def ms(seconds: float) -> str:
    return f'{seconds * 1e3:.2f}'


def mib(n: int) -> str:
    return f'{n / 2 ** 20:.1f}'


def tables(report: Dict[str, Any]) -> str:
    """The results as markdown tables."""
    env = report['environment']
    lines = [] if not report['layers'] else [
        f"device {env['device']}, {env['threads']} threads, {env['dtype']}, torch "
        f"{env['torch']}, OMP_WAIT_POLICY {env['omp_wait_policy']}, median of "
        f"{env['repeat']} interleaved repetitions ({env['warmup']} warm-up)", '']
    layers = report['layers']
    if layers:
        variants = [v for v in layers[0]['ratio_to_conv'] if v.endswith('/forward')]
        variants = [v.split('/')[0] for v in variants]
        head = ['shape B,C_in,C_out,H,W,k,m[,s]', 'conv fwd ms']
        head += [f'{v} fwd ms (x conv)' for v in variants]
        head += ['conv fwd+bwd ms'] + [f'{v} fwd+bwd ms (x conv)' for v in variants]
        head += ['dense fwd / op fwd']
        lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        for r in layers:
            med, rat = r['median_s'], r['ratio_to_conv']
            row = [r['label'] + (f" ({r['count']} layers)" if r.get('count', 1) > 1 else ''),
                   ms(med['conv/forward'])]
            row += [f"{ms(med[v + '/forward'])} ({rat[v + '/forward']:.2f}x)" for v in variants]
            row += [ms(med['conv/forward_backward'])]
            row += [f"{ms(med[v + '/forward_backward'])} ({rat[v + '/forward_backward']:.2f}x)"
                    for v in variants]
            row += [f"{r['dense_over_op_forward']:.1f}x"]
            lines.append('| ' + ' | '.join(row) + ' |')
        if 'memory' in layers[0]:
            lines += ['', 'Peak extra memory of forward+backward, MiB (x conv); second figure '
                      "without the weight's own gradient", '']
            head = ['shape'] + [v for v in layers[0]['memory']]
            lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
            for r in layers:
                row = [r['label']]
                for v, mem in r['memory'].items():
                    cell = f"{mib(mem['peak_extra_bytes'])} / " \
                           f"{mib(mem['peak_extra_bytes_without_weight_grad'])}"
                    if v != 'conv':
                        ratio = r['memory_ratio_to_conv'][v]
                        cell += f" ({ratio['peak_extra_bytes']:.2f}x / " \
                                f"{ratio['without_weight_grad']:.2f}x)"
                    row.append(cell)
                lines.append('| ' + ' | '.join(row) + ' |')
        checked = [(r['label'], r['targets']) for r in layers if r.get('targets')]
        lines += ['', 'Targets (issue 5; CPU, 2 threads, float32, the two target shapes):']
        if not checked:
            lines.append('  not checked: no target shape under the targets\' conditions in '
                         'this run')
        for label, targets in checked:
            for name, t in targets.items():
                lines.append(f"  {label}: {name}: {t['value']:.2f} -> "
                             f"{'met' if t['met'] else 'NOT met'}")
    if report.get('training_step'):
        e = report['training_step']
        lines += ['', f"Training step ({e['config']}, {e['drconv_layers']} DRConv layers) vs "
                  f"baseline ({e['base_config']}), batch {e['batch']} x "
                  f"{tuple(e['input_shape'])}, median of {e['repeat']}:",
                  f"  drconv {e['median_s']['drconv']:.2f} s, baseline "
                  f"{e['median_s']['baseline']:.2f} s, ratio {e['ratio']:.2f}x"]
    return '\n'.join(lines)


def main(argv=None) -> Dict[str, Any]:
    args = parse_args(argv)
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
                                   repeat=args.repeat, warmup=args.warmup,
                                   config=args.config, input_shape=list(args.input_shape),
                                   batch=args.batch),
                  layers=layers, targets=TARGETS)
    if args.e2e_config:
        report['training_step'] = benchmark_training_step(args)
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

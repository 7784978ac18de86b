"""Time DM synthesis iterations, evaluation training and DC/DSA outer iterations (CIFAR-10-shaped data, ConvNet).

    python bench/bench_dm.py                      # CPU, and CUDA when present
    python bench/bench_dm.py --devices cpu --ipc 10 --iters 5
    python bench/bench_dm.py --gpu --out bench/gpu.md   # the GPU session's single command (docs/benchmarks.md)
    THP_MEM_ALLOC_ENABLE=0 python bench/bench_dm.py --per_class   # the original's structure: one class at a time,
                                                                 # 4 KiB pages

Reports, per device: ms per DM iteration at each ipc and precision (fp32; bf16 = --amp bf16), images embedded
per second, achieved TFLOP/s (FLOPs of one iteration counted once with torch.utils.flop_counter) next to the
device's measured float32 and bfloat16 matmul rates, and the peak GPU memory, then the ipc-50 step over the ipc-10
step (the DM cases alternate, round after round, and each reports its median round, so that a shared machine's
drift does not fall on one ipc) next to the ratio of their FLOPs; seconds to train 20 evaluation networks for 1000
epochs (one by one, and on a GPU also together, as the evaluation trains them there; measured on fewer networks at
two run lengths, whose difference gives the cost of an epoch without the one-off costs); seconds per DC/DSA outer
iteration. The data are random uint8 images: the cost does not depend on them.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from condensation import env  # the environment PyTorch reads when it starts (env.py), before torch

import functools
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import main as main_dc
import main_DM
from condensation.common import ArgumentParser, run_cli
from condensation.data import Data
from condensation.methods.dc import DCStep
from condensation.methods.dm import DMStep, dm_step
from condensation.evaluation import EvalRecipe, evaluate_pool, trains_together
from condensation.run.runner import init_synset

STRATEGY = 'color_crop_cutout_flip_scale_rotate'
# DM variants: name -> (extra flags, dm.DMStep options)
VARIANTS = {
    'fp32': ([], {}),
    'bf16': (['--amp', 'bf16'], {}),
    'fp32 channels-last': ([], dict(channels_last=True)),
    'bf16 channels-last': (['--amp', 'bf16'], dict(channels_last=True)),
    'fp32 eager': (['--cuda_graphs', 'off'], {}),  # without CUDA graph replay
    'fp32 host-drawn': ([], dict(resident=False)),  # the CPU streams on the GPU: what the device-resident step buys
}


def sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def timed(device, fn):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def peak_reset(device):
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device):
    return torch.cuda.max_memory_allocated() / 2 ** 30 if device.startswith('cuda') else float('nan')


def matmul_tflops(device, dtype, reps=3):
    # smaller on a CPU, where bfloat16 without hardware support runs ~50x below float32
    n = 4096 if device.startswith('cuda') else 2048 if dtype == torch.float32 else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    return 2 * n ** 3 / statistics.median(timed(device, lambda: a @ b) for _ in range(reps)) / 1e12


def markdown_writer(path):
    """out(line): print the line and, when path is given, rewrite path with every line so far (a killed run
    keeps its finished rows)."""
    lines = []

    def out(line):
        print(line, flush=True)
        lines.append(line)
        if path:
            with open(path, 'w') as f:
                f.write('\n'.join(lines) + '\n')
    return out


def fake_cifar(device, num_classes=10, n_per_class=500):
    """CIFAR-10 (or, with 100 classes, CIFAR-100)-shaped random images."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = torch.randint(0, 256, (len(labels), 3, 32, 32), generator=g, dtype=torch.uint8)
    return Data(f'CIFAR{num_classes}', [str(i) for i in range(num_classes)], x, labels, x[:1000], labels[:1000],
                device)


def dm_case(data, device, ipc, batch_real, model, variant, per_class=False):
    """A warmed-up DM step on a fresh synthetic set, and the FLOPs of one of its iterations."""
    flags, options = VARIANTS[variant]
    args = main_DM.parse_args(['--dataset', 'CIFAR10', '--model', model, '--ipc', str(ipc), '--device', device,
                               '--batch_real', str(batch_real), '--dsa_strategy', STRATEGY, *flags]
                              + (['--per_class'] if per_class else []))
    image_syn, syn_cls = init_synset(data, ipc, 'real', torch.Generator().manual_seed(0))
    image_syn = image_syn.to(device).requires_grad_(True)
    opt = torch.optim.SGD([image_syn], lr=1.0, momentum=0.5)
    with FlopCounterMode(display=False) as counter:
        dm_step(args, data, image_syn, syn_cls, opt, args.seed, (0, 0), **options)
    step = DMStep(args, data, image_syn, syn_cls, opt, **options)
    for it in range(3):  # warm-up: kernels chosen, allocator filled, the CUDA graph recorded
        step(args.seed, (0, 1 + it))
    return dict(step=step, seed=args.seed, flops=counter.get_total_flops(),
                images=data.num_classes * (batch_real + ipc))


def bench_dm(make_cases, device, iters, rounds):
    """Seconds per iteration of every case (make_cases: key -> a function that builds it with dm_case). One round:
    each case is built, timed over `iters` iterations and dropped in turn, and its peak GPU memory is its own.
    Several: all cases are built first and alternate, round after round, so that a machine's drift falls on all of
    them alike; each reports its median round, and no peak memory (the other cases' memory would count)."""
    times, size, peaks = {key: [] for key in make_cases}, {}, dict.fromkeys(make_cases, float('nan'))
    cases = {key: make() for key, make in make_cases.items()} if rounds > 1 else {}
    for r in range(rounds):
        for key in make_cases:
            case = cases[key] if rounds > 1 else make_cases[key]()
            step, first = case['step'], 4 + r * iters
            peak_reset(device)
            # the loop as main_DM.py runs it: the loss is read once every 10 iterations
            losses = []
            t = timed(device, lambda: losses.extend(step(case['seed'], (0, first + it)) for it in range(iters)))
            float(losses[-1])
            times[key].append(t / iters)
            size[key] = case['images'], case['flops']
            if rounds == 1:
                peaks[key] = peak_gib(device)
            case = step = losses = None  # one round: the case's memory goes before the next is built
    results = {}
    for key, runs in times.items():
        s, (images, flops) = statistics.median(runs), size[key]
        results[key] = dict(ms=1e3 * s, img_per_s=images / s, tflops=flops / s / 1e12, gflop=flops / 1e9,
                            peak=peaks[key], rounds=runs)
    return results


def bench_eval(data, device, ipc, models, epochs, together, amp='off'):
    """Seconds to train `models` ConvNets for `epochs` (+1) epochs with evaluate_pool (test pass included)."""
    images, labels = init_synset(data, ipc, 'real', torch.Generator().manual_seed(0))
    recipe = EvalRecipe(epoch_eval_train=epochs, device=device, dsa=True, dsa_strategy=STRATEGY,
                        dsa_param=main_DM.parse_args([]).dsa_param, amp=amp, eval_one_by_one=not together)
    peak_reset(device)
    t = timed(device, lambda: evaluate_pool({'ConvNet': recipe}, models, data, images, labels, 0, (0, 0),
                                            lambda msg: None))
    return t, peak_gib(device)


def eval_modes(device, modes):
    """(the requested evaluation modes this device runs, those it does not): the evaluation trains networks
    together only where evaluation.trains_together says so (not on a CPU), so a 'together' row there would time
    one-by-one training under another name."""
    together = trains_together(EvalRecipe(epoch_eval_train=1, device=device))
    return ([m for m in modes if together or m == 'one by one'],
            [m for m in modes if not (together or m == 'one by one')])


def bench_dc(data, device, ipc, method, outer_loop):
    argv = ['--dataset', 'CIFAR10', '--model', 'ConvNet', '--ipc', str(ipc), '--device', device, '--method', method]
    if method == 'DSA':
        argv += ['--dsa_strategy', STRATEGY]
    if outer_loop:
        argv += ['--outer_loop', str(outer_loop)]
    args = main_dc.parse_args(argv)
    image_syn, syn_cls = init_synset(data, ipc, 'noise', torch.Generator().manual_seed(0))
    image_syn = image_syn.to(device).requires_grad_(True)
    opt = torch.optim.SGD([image_syn], lr=args.lr_img, momentum=0.5)
    peak_reset(device)
    step = DCStep(args, data, image_syn, syn_cls, opt)
    step(args.seed, (0, 0))  # warm-up (and, on CUDA, the graphs recorded)
    t = timed(device, lambda: step(args.seed, (0, 1)))
    return t, args.outer_loop, args.inner_loop, peak_gib(device)


def report(args, device, out):
    name = torch.cuda.get_device_name() if device.startswith('cuda') else f'CPU, {torch.get_num_threads()} threads'
    f32, b16 = matmul_tflops(device, torch.float32), matmul_tflops(device, torch.bfloat16)
    out(f'\n## {name}; torch {torch.__version__}; {time.strftime("%Y-%m-%d")}; square matmul: fp32 {f32:.3g} '
        f'TFLOP/s, bf16 {b16:.3g} TFLOP/s\n')
    data = fake_cifar(device)
    rounds = args.rounds or (1 if device.startswith('cuda') else 3)
    out(f'| DM {args.model}, batch_real {args.batch_real}, median of {rounds} rounds × {args.iters} iterations '
        f'| ms/iteration | images embedded/s '
        f'| GFLOP/iteration | achieved TFLOP/s | % of matmul | peak GPU memory (GiB) |')
    out('|---|---|---|---|---|---|---|')
    cases = {(variant, ipc): functools.partial(dm_case, data, device, ipc, args.batch_real, args.model, variant,
                                               args.per_class)
             for variant in args.variants for ipc in args.ipc}
    results = bench_dm(cases, device, args.iters, rounds)
    ms = {}
    for (variant, ipc), r in results.items():
        ms[variant, ipc] = r['ms']
        peak = b16 if 'bf16' in variant else f32
        out(f'| CIFAR10 ipc {ipc}, {variant} | {r["ms"]:.1f} | {r["img_per_s"]:.0f} | {r["gflop"]:.1f} | '
            f'{r["tflops"]:.3g} | {100 * r["tflops"] / peak:.0f} % | {r["peak"]:.2f} |')
    # what 400 more synthetic images cost: the synthetic side's share of a step (target on a CPU: at most 1.3).
    # With several rounds, also the ratio within each round (the two cases timed back to back): a drift of the
    # machine between rounds moves both alike. The FLOP ratio is the time ratio of a step that ran every FLOP at
    # one rate: a synthetic image costs its forward and its input gradients, about twice a real image's forward.
    for variant in args.variants:
        if (variant, 10) in ms and (variant, 50) in ms:
            line = f'\n{variant}: ipc-50 step / ipc-10 step = {ms[variant, 50] / ms[variant, 10]:.2f}'
            if rounds > 1:
                paired = [a / b for a, b in zip(results[variant, 50]['rounds'], results[variant, 10]['rounds'])]
                line += (f' (of the medians); within a round: median {statistics.median(paired):.2f}, '
                         f'{min(paired):.2f}–{max(paired):.2f}')
            flops = results[variant, 50]['gflop'] / results[variant, 10]['gflop']
            out(line + f'; FLOPs: {flops:.2f} (the ratio at one FLOP rate)')
    # An epoch's cost is the difference of two run lengths (E and 2E epochs), so that the one-off costs (building the
    # networks, the test pass) are counted once in the 20 × 1000 figure instead of being scaled with the epochs.
    e1, e2 = args.eval_epochs, 2 * args.eval_epochs
    out(f'\n| evaluation, ConvNet, DSA: 20 networks × 1000 epochs (measured: {args.eval_models} networks × '
        f'{e1} and × {e2} epochs) | seconds | s/network/epoch | one-off s/network (test pass included) '
        f'| peak GPU memory (GiB) |')
    out('|---|---|---|---|---|')
    modes, skipped = eval_modes(device, args.eval_modes)
    for ipc in args.eval_ipc:
        for mode in modes:
            together, amp = mode != 'one by one', 'bf16' if 'bf16' in mode else 'off'
            t1, _ = bench_eval(data, device, ipc, args.eval_models, e1, together, amp)
            t2, peak = bench_eval(data, device, ipc, args.eval_models, e2, together, amp)
            per_epoch = max(t2 - t1, 0.0) / (e2 - e1) / args.eval_models
            once = max(t1 / args.eval_models - (e1 + 1) * per_epoch, 0.0)
            out(f'| CIFAR10 ipc {ipc}, {mode} | {20 * (once + 1001 * per_epoch):.1f} | {per_epoch:.4f} | {once:.2f} '
                f'| {peak:.2f} |')
    if skipped and args.eval_ipc:
        out(f'\nNo {" or ".join(repr(m) for m in skipped)} rows: on {device} the evaluation trains its networks one '
            f'by one.')
    dc_ipc = args.dc_ipc if args.dc_ipc is not None else 10 if device.startswith('cuda') else 0
    if dc_ipc:
        out('\n| DC/DSA, ConvNet | outer_loop × inner_loop | seconds per outer iteration | peak GPU memory (GiB) |')
        out('|---|---|---|---|')
        for method in ('DC', 'DSA'):
            t, ol, il, peak = bench_dc(data, device, dc_ipc, method, args.dc_outer_loop)
            out(f'| {method} CIFAR10 ipc {dc_ipc} | {ol} × {il} | {t:.2f} | {peak:.2f} |')


def main():
    p = ArgumentParser(description=__doc__.split('\n')[0], domains={
        'ipc': '>= 1', 'batch_real': '>= 1', 'iters': '>= 1', 'rounds': '>= 1', 'eval_ipc': '>= 1',
        'eval_models': '>= 1', 'eval_epochs': '>= 1', 'dc_ipc': '>= 0', 'dc_outer_loop': '>= 1', 'threads': '>= 1'})
    p.add_argument('--devices', nargs='+', default=['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    p.add_argument('--ipc', type=int, nargs='+', default=[1, 10, 50])
    p.add_argument('--batch_real', type=int, default=256)
    p.add_argument('--iters', type=int, default=5, help='DM iterations timed per case and round')
    p.add_argument('--rounds', type=int, default=None,
                   help='rounds over the DM cases, which alternate within a round; each case reports its median '
                        'round, and no peak GPU memory when there are several (default: 3 on a CPU, 1 on CUDA)')
    p.add_argument('--model', default='ConvNet')
    p.add_argument('--variants', nargs='+', default=['fp32'], choices=list(VARIANTS))
    p.add_argument('--eval_ipc', type=int, nargs='*', default=[10, 50])
    p.add_argument('--eval_models', type=int, default=4, help='networks measured (scaled to 20)')
    p.add_argument('--eval_epochs', type=int, default=2,
                   help='epochs of the shorter of the two measured runs (the other: twice as many)')
    p.add_argument('--eval_modes', nargs='+', default=['one by one', 'together'],
                   choices=['one by one', 'together', 'together bf16'],
                   help="how the evaluation networks train; the together modes only on a GPU, where the evaluation "
                        "trains them together (on a CPU it trains them one by one)")
    p.add_argument('--dc_ipc', type=int, default=None,
                   help='ipc of the DC/DSA rows; 0: none (default: 10 on CUDA, none on a CPU, where one ipc-10 outer '
                        'iteration takes about 20 minutes)')
    p.add_argument('--dc_outer_loop', type=int, default=None, help="DC/DSA outer_loop (default: the original's)")
    p.add_argument('--per_class', action='store_true', help="one class's forward at a time, as the original")
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    p.add_argument('--gpu', action='store_true',
                   help='the GPU session preset: CUDA only, 20 iterations, every DM variant, 20 networks × 1000 '
                        'epochs together at ipc 10, fewer where one by one (under 8 minutes on an H100)')
    p.add_argument('--out', default=None, help='also write the tables to this markdown file')
    args = p.parse_args()
    if args.gpu:
        args.devices, args.iters, args.variants = ['cuda'], 20, list(VARIANTS)
        args.eval_models, args.eval_epochs = 20, 100
        args.eval_modes = ['one by one', 'together', 'together bf16']
    if args.threads:
        torch.set_num_threads(args.threads)
    out = markdown_writer(args.out)
    out(f'`{" ".join(sys.argv)}`; THP_MEM_ALLOC_ENABLE={os.environ.get("THP_MEM_ALLOC_ENABLE")}, '
        f'per_class={args.per_class}')
    for device in args.devices:
        report(args, device, out)


if __name__ == '__main__':
    run_cli(main, resumable=False)

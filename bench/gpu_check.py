"""One command that checks the GPU paths on a card and says itself whether they passed.

    python bench/gpu_check.py --data_path /root/data            # on a GPU: about 5 minutes on one H200 (estimated)
    python bench/gpu_check.py --device cpu --smoke              # on a CPU, in seconds: the script starts and runs

(a) Replay equals eager: every loop that is replayed as a CUDA graph (the DM step, the DC/DSA passes, the evaluation
    epochs of networks trained together and one by one, the GAN iteration) runs from the same state with the same
    seeds with --cuda_graphs on and off; the sets and weights must agree within a tolerance stated in the report
    (the kernels that sum with atomics are not bit-reproducible from run to run), and an audit of every step
    (graphs.audited) must find nothing that reads a value back to the host or copies across it.
(b) Speed: ms per DM iteration (ipc 1, 10, 50; eager, graphs, bf16 with its twin channels-last and contiguous,
    compiled), seconds for 20 evaluation networks x 1000 epochs (ipc 10, 50; the time per epoch from runs of 20 and
    60 epochs, so that one-off costs are counted once; cudnn.benchmark off and on), seconds per DC/DSA outer
    iteration (ipc 10), ms per DiM stage-1 iteration, each beside its target.
(c) Accuracy path: main_DM.py on CIFAR-10, ipc 10, 2000 iterations, 5 networks x 1000 epochs, evaluated at the
    start (random real images) and the end (skipped when CIFAR-10 is not in --data_path).
(d) What only a card settles: every recorded loop's first replays passed their check against an eager step
    (graphs.Graphed); TF32 on and off for the DM step and the DiM CIFAR-10 GAN iteration; a profiler pass over 20
    DM replays (GPU kernel time against wall time); a CPU-made GAN checkpoint continued on the GPU and a GPU-made
    one on the CPU; the DM step on cuda:1 where there are two GPUs; a recording forced to fail (one warning, later
    calls drawn fresh, the memory given back). On a CPU each is listed as 'needs CUDA', except the GPU-made
    checkpoint, stood in for by a CPU one whose Adam state is marked capturable.
Everything is written as markdown (and the raw numbers as JSON) under --out; the exit code is 1 on any mismatch.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from condensation import env  # the environment PyTorch reads when it starts (env.py), before torch

import argparse
import contextlib
import io
import json
import statistics
import time
import traceback

import torch

from condensation import augment
from condensation.device import graphs
import main as main_dc
import main_DM
from bench_dm import STRATEGY, fake_cifar, markdown_writer, sync
from condensation.common import ArgumentParser, make_generator, precision_text, set_precision
from condensation.data import dataset_available
from condensation.device.graphs import audited
from condensation.evaluation import EvalRecipe, evaluate_networks
from condensation.methods.dc import DCStep
from condensation.methods.dm import DMStep
from condensation.methods.gan import GANStep, adam, gan_state, load_gan_state, new_ema
from condensation.networks import define_gan, get_network
from condensation.run.runner import init_synset

TOLERANCE = 0.02  # replay and eager may differ by this share of how far the run moved its tensors (Check.agree)
# Targets of the GPU issue, for one H200 (None: no target)
TARGETS = {'DM ipc 10 fp32': 5.0, 'DM ipc 10 bf16': 2.5, 'eval ipc 10': 10.0, 'eval ipc 50': 40.0, 'DC ipc 10': 0.8,
           'DSA ipc 10': 0.8, 'DiM MNIST w32 b64': 5.0, 'DiM MNIST w196 b64': 8.0, 'DiM CIFAR-10 w196 b128': 15.0}
# What the code before this round measured on one H200 (2026-12-04), for the "before" column
BEFORE = {'DM ipc 1 fp32': 14.6, 'DM ipc 10 fp32': 16.6, 'DM ipc 50 fp32': 20.6, 'DM ipc 10 bf16': 16.8,
          'eval ipc 10': 44.5, 'eval ipc 50': 175.1, 'DC ipc 10': 3.19, 'DSA ipc 10': 3.12,
          'DiM MNIST w32 b64': 23.8, 'DiM MNIST w196 b64': 34.3, 'DiM CIFAR-10 w196 b128': 50.1}


# Seconds each part takes on one H200, from the H200 figures above for the work it does (BEFORE: eager steps, so an
# upper bound): equivalence, small shapes and the eager audit; speed, DM 6 x 60 iterations (<= 21 ms) and 4
# variants, evaluation 2 ipc x 3 settings x (21 + 61) epochs of 20 networks (<= 44.5 and 175 ms per epoch) plus
# their one-off costs, DC/DSA 12 outer iterations (<= 3.2 s), DiM 6 x 60 iterations (<= 50 ms); accuracy, 2000 DM
# iterations (<= 16 ms) and two evaluations of 5 networks x 1000 epochs; gpu, TF32 runs, profiler, checkpoints, the
# forced failure, cuda:1.
H200_SECONDS = {'equivalence': 40, 'speed': 140, 'accuracy': 80, 'gpu': 25}
H200_START, H200_COMPILE = 10, 60  # CUDA's start; --compile's compilations
H200_LIMIT = 8 * 60
NEEDS_CUDA = 'needs CUDA'


class Check:
    """Collects pass/fail lines and the raw numbers."""

    def __init__(self, out):
        self.out, self.failures, self.numbers = out, [], {}

    def agree(self, what, graph, eager, start, share=TOLERANCE):
        """Two runs from the same state `start` (tensors or lists of them) agree when they ended within `share` of
        how far the eager run moved: kernels that add with atomics are not reproducible run to run, and a rounding
        difference can push a training step across a ReLU or a crop edge, but never by a sizeable part of the run."""
        graph, eager, start = ([t.detach().float().cpu() for t in (x if isinstance(x, (list, tuple)) else [x])]
                               for x in (graph, eager, start))
        worst = max(float((g - e).abs().max()) for g, e in zip(graph, eager))
        moved = max(float((e - s).abs().max()) for e, s in zip(eager, start))
        finite = all(bool(torch.isfinite(g).all()) for g in graph)
        ok = finite and moved > 0 and worst <= share * moved
        self.line(what, ok, f'max |graph − eager| {worst:.2e}, {100 * worst / max(moved, 1e-30):.3f} % of the '
                            f'largest change of the run ({moved:.2e}; allowed {100 * share:g} %)')
        self.numbers[f'equivalence: {what}'] = worst
        return ok

    def skip(self, what, why=NEEDS_CUDA):
        self.out(f'| {what} | {why} | |')

    def guard(self, what, fn):
        """fn(), or a FAIL line when it raises: one broken measurement must not hide the others."""
        try:
            return fn()
        except Exception as e:
            self.line(what, False, f'{type(e).__name__}: {e}'.replace('\n', ' ')[:300])
            traceback.print_exc()
            return None

    def line(self, what, ok, detail=''):
        if not ok:
            self.failures.append(what)
        self.out(f'| {what} | {"pass" if ok else "FAIL"} | {detail} |')


MODEL = ['ConvNet']  # --smoke: a narrow ConvNet
GAN_SHAPES = {'DiM MNIST w32 b64': (1, 28, 32, 64), 'DiM MNIST w196 b64': (1, 28, 196, 64),
              'DiM CIFAR-10 w196 b128': (3, 32, 196, 128)}
EVAL_LENGTHS = (20, 60)  # epochs of the two evaluation runs whose difference gives the time per epoch


@contextlib.contextmanager
def cuda_settings(precision='default', benchmark=False, device='cuda'):
    """--precision `precision` (common.set_precision) and cudnn.benchmark inside the block, PyTorch's own after."""
    cudnn = torch.backends.cudnn
    saved = (torch.get_float32_matmul_precision(), cudnn.benchmark,
             *((cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) if hasattr(cudnn, 'conv') else ()))
    set_precision(precision, device)
    cudnn.benchmark = benchmark
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        cudnn.benchmark = saved[1]
        if hasattr(cudnn, 'conv'):
            cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = saved[2:]


def dm_args(device, ipc, graphs='on', amp='off', compile_='off', batch_real=256, dataset='CIFAR10'):
    return main_DM.parse_args(['--dataset', dataset, '--model', MODEL[0], '--ipc', str(ipc), '--device', device,
                               '--batch_real', str(batch_real), '--dsa_strategy', STRATEGY, '--cuda_graphs', graphs,
                               '--amp', amp, '--compile', compile_])


def dm_setup(data, args, channels_last=None, resident=None, twin_contiguous=False):
    """(DMStep on a fixed initial set, the set, a copy of it). twin_contiguous: the bf16 twin of --amp bf16 in the
    default layout instead of channels-last."""
    image_syn, syn_cls = init_synset(data, args.ipc, 'real', torch.Generator().manual_seed(0))
    image_syn = image_syn.to(args.device).requires_grad_(True)
    opt = torch.optim.SGD([image_syn], lr=args.lr_img, momentum=0.5)
    step = DMStep(args, data, image_syn, syn_cls, opt, channels_last=channels_last, resident=resident)
    if twin_contiguous and step.twin is not None:
        step.twin.to(memory_format=torch.contiguous_format)
    return step, image_syn, image_syn.detach().clone()


def run_dm(data, args, iters, channels_last=None, start=0, resident=None, twin_contiguous=False):
    """A DMStep (dm_setup) for `iters` iterations: ((final set, first set), seconds per iteration after `start`)."""
    step, image_syn, first = dm_setup(data, args, channels_last, resident, twin_contiguous)
    for it in range(start):
        step(args.seed, (0, it))
    sync(args.device)
    t = time.perf_counter()
    losses = [step(args.seed, (0, it)) for it in range(start, iters)]
    float(losses[-1]) if losses else None
    sync(args.device)
    return (image_syn.detach(), first), (time.perf_counter() - t) / max(iters - start, 1)


def dc_args(device, method, ipc, graphs='on', outer_loop=None, inner_loop=None, dataset='CIFAR10', batch_real=256):
    argv = ['--dataset', dataset, '--model', MODEL[0], '--ipc', str(ipc), '--device', device, '--method', method,
            '--cuda_graphs', graphs, '--batch_real', str(batch_real)]
    argv += ['--dsa_strategy', STRATEGY] if method == 'DSA' else []
    argv += ['--outer_loop', str(outer_loop)] if outer_loop else []
    argv += ['--inner_loop', str(inner_loop)] if inner_loop is not None else []
    return main_dc.parse_args(argv)


def run_dc(data, args, calls, start=0):
    image_syn, syn_cls = init_synset(data, args.ipc, 'noise', torch.Generator().manual_seed(0))
    image_syn = image_syn.to(args.device).requires_grad_(True)
    opt = torch.optim.SGD([image_syn], lr=args.lr_img, momentum=0.5)
    first = image_syn.detach().clone()
    step = DCStep(args, data, image_syn, syn_cls, opt)
    for it in range(start):
        step(args.seed, (0, it))
    sync(args.device)
    t = time.perf_counter()
    for it in range(start, calls):
        step(args.seed, (0, it))
    sync(args.device)
    return (image_syn.detach(), first), (time.perf_counter() - t) / max(calls - start, 1)


def run_eval(data, device, ipc, models, epochs, graphs='on', one_by_one=False):
    """`models` ConvNets trained by evaluate_pool's path (evaluate_networks): (the networks, their test accuracies,
    seconds)."""
    images, labels = init_synset(data, ipc, 'real', torch.Generator().manual_seed(0))
    recipe = EvalRecipe(epoch_eval_train=epochs, device=device, dsa=True, dsa_strategy=STRATEGY,
                        dsa_param=augment.ParamDiffAug(), eval_one_by_one=one_by_one, cuda_graphs=graphs)

    def build(i):
        return (get_network(MODEL[0], data.channel, data.num_classes, data.im_size, device=device,
                            generator=make_generator(0, 'eval_net', i)), make_generator(0, 'eval', i))
    first = [p.detach().clone() for i in range(models) for p in build(i)[0].parameters()]
    sync(device)
    t = time.perf_counter()
    results, nets = evaluate_networks(models, build, images, labels, data.testloader(), recipe, lambda i, r: None)
    sync(device)
    trained = [p.detach() for i in range(models) for p in nets[i].parameters()]
    return (trained, first), [acc for _, acc, _ in results], time.perf_counter() - t


def evaluation_time(c, key, data, device, ipc, models, lengths, graphs='on', benchmark=False):
    """Seconds for `models` evaluation networks x 1000 epochs: the time per epoch from two run lengths times 1001
    epochs, plus the one-off costs as measured once."""
    with cuda_settings(benchmark=benchmark, device=device):
        t = [run_eval(data, device, ipc, models, epochs, graphs)[2] for epochs in lengths]
    per_epoch = max(t[1] - t[0], 0.0) / (lengths[1] - lengths[0])
    once = max(t[0] - (lengths[0] + 1) * per_epoch, 0.0)
    c.numbers[f'speed: {key}: s per epoch of {models} networks'] = per_epoch
    c.numbers[f'speed: {key}: s once (builds, recordings, the test pass)'] = once
    return once + 1001 * per_epoch


def run_gan(device, channel, size, width, batch, iters, graphs, start=0, gp_every=2, mode_seeking=1.0, ema=0.999):
    """GANStep iterations on random images: ((G, D, G average) weights, ms per iteration after `start`)."""
    g = torch.Generator().manual_seed(0)
    G, D = define_gan(channel, 10, (size, size), 100, 'embed', width, device=device, generator=g)
    opt_g, opt_d = adam(G, 2e-4), adam(D, 2e-4)
    average = new_ema(G, ema)
    x = torch.rand(batch, channel, size, size, generator=g).mul_(2).sub_(1).to(device)
    y = torch.randint(10, (batch,), generator=g).to(device)
    first = [p.detach().clone() for p in list(G.parameters()) + list(D.parameters())]
    first += [p.detach().clone() for p in G.parameters()] if average is not None else []
    gan = GANStep(G, D, opt_g, opt_d, 10, 1, gp_every, mode_seeking, average, graphs=graphs)
    gan.use_stream(make_generator(0, 'gpu_check', 'gan'))
    G.train()
    D.train()
    for it in range(start):
        gan(it, x, y)
    sync(device)
    t = time.perf_counter()
    for it in range(start, iters):
        parts = gan(it, x, y)
    float(parts['d']) if iters > start else None
    sync(device)
    weights = [p.detach().clone() for p in list(G.parameters()) + list(D.parameters())]
    if average is not None:
        weights += [p.detach().clone() for p in average.G.parameters()]
    return (weights, first), 1e3 * (time.perf_counter() - t) / max(iters - start, 1)


# ----------------------------------------------------------------------------------------------------------------

def check_equivalence(c, device, smoke):
    """(a): graphs on vs off from the same state and seeds, and the audit of every step."""
    c.out('\n## (a) CUDA graph replay against eager execution, and the audit of every captured step\n')
    c.out('| check | result | detail |')
    c.out('|---|---|---|')
    data = fake_cifar(device, *((3, 6) if smoke else (10, 300)))
    n = 3 if smoke else 8

    def pair(what, run):
        """run(graphs) -> ((final tensors, start tensors), ...) for 'off' and 'on', compared."""
        (eager, start), _ = run('off')[:2]
        (graph, _), _ = run('on')[:2]
        c.agree(what, graph, eager, start)

    for amp in ('off',) if smoke else ('off', 'bf16'):
        ipc, batch_real = (2, 4) if smoke else (10, 32)
        c.guard(f'DM step {amp}', lambda: pair(
            f'DM step, ipc {ipc}, {amp}: set after {n} iterations',
            lambda g: run_dm(data, dm_args(device, ipc, g, amp, batch_real=batch_real), n)))
    for method in ('DC', 'DSA'):
        ol, calls, batch_real = (1, 1, 2) if smoke else (3, 3, 64)
        c.guard(f'{method} step', lambda: pair(
            f'{method} outer iteration ({ol} x [match, 2 inner epochs]) x {calls}: set',
            lambda g: run_dc(data, dc_args(device, method, 2, g, ol, 2, batch_real=batch_real), calls)))
    for one_by_one in (False, True):
        epochs, ipc = (2, 2) if smoke else (6, 10)
        how = 'one by one' if one_by_one else 'together'

        def evaluation():
            (eager, start), acc_e, _ = run_eval(data, device, ipc, 3, epochs, 'off', one_by_one)
            (graph, _), acc_g, _ = run_eval(data, device, ipc, 3, epochs, 'on', one_by_one)
            c.agree(f'evaluation, 3 ConvNets {how}, {epochs} epochs: weights', graph, eager, start)
            c.line(f'evaluation, 3 ConvNets {how}: test accuracies',
                   max(abs(a - b) for a, b in zip(acc_g, acc_e)) <= 0.02,
                   f'graphs {[round(100 * a, 2) for a in acc_g]} vs eager {[round(100 * a, 2) for a in acc_e]} '
                   f'(within 2 points: a rounding difference can flip a few test predictions)')
        c.guard(f'evaluation {how}', evaluation)
    its = 3 if smoke else 8
    c.guard('GAN iteration', lambda: pair(
        f'GAN iteration x {its} (gp every 2, mode seeking, G average): G, D and average weights',
        lambda g: run_gan(device, 1, 28, 8, 8, its, g == 'on' and device.startswith('cuda'))))

    cuda = device.startswith('cuda')
    grouping = augment._group_on_host
    if not cuda:
        augment._group_on_host = lambda choice: False  # the GPU's way of applying DSA, on the CPU
    try:
        with audited() as audit:
            run_dm(data, dm_args(device, 2, 'on', batch_real=4), 2, resident=True)
            run_dm(data, dm_args(device, 2, 'on', batch_real=4, amp='bf16' if cuda else 'off'), 2, resident=True)
            run_dc(data, dc_args(device, 'DSA', 2, 'on', outer_loop=2, inner_loop=1, batch_real=4), 2)
            run_eval(data, device, 2, 2, 2, 'on')
            run_gan(device, 1, 28, 8, 8, 4, False)
    finally:
        augment._group_on_host = grouping
    problems = audit.problems
    if not cuda:  # the CPU's Adam counts its steps on the host (gan.adam is capturable on CUDA)
        problems = [p for p in problems if not ('GAN' in p and 'reads a value back' in p)]
    c.line('audit: nothing in a captured step reads back to the host, copies across it or draws from another '
           'generator', not problems, '; '.join(sorted(set(problems)))[:600] or
           ', '.join(f'{k}: {audit.per_call(k):.0f} ops' for k in audit.checked))


def speed(c, device, smoke, compile_):
    """(b): the speed table."""
    c.out('\n## (b) Speed\n')
    c.out('| what | now | before (H200, 2026-12-04) | target (H200) | |')
    c.out('|---|---|---|---|---|')

    cuda = device.startswith('cuda')

    def row(key, value, unit):
        target, before = (TARGETS.get(key), BEFORE.get(key)) if cuda else (None, None)
        c.numbers[f'speed: {key} ({unit})'] = value
        met = '' if target is None else ('met' if value <= target else 'not met')
        c.out(f'| {key} | {value:.3g} {unit} | {"" if before is None else f"{before} {unit}"} | '
              f'{"" if target is None else f"≤ {target} {unit}"} | {met} |')

    data = fake_cifar(device, *((3, 6) if smoke else (10, 500)))
    iters, start = (3, 1) if smoke else (60, 20)
    modes = ('off', 'on') if cuda else ('off',)  # on a CPU there is nothing to replay
    for ipc in ((1,) if smoke else (1, 10, 50)):
        for replay in modes:
            key = f'DM ipc {ipc} fp32{"" if replay == "on" else " eager"}'
            c.guard(key, lambda: row(key, 1e3 * run_dm(data, dm_args(device, ipc, replay, batch_real=4 if smoke else
                                                                     256), iters, start=start)[1], 'ms'))
    # (precision, compiled, channels-last weights, the bf16 twin contiguous instead of channels-last)
    variants = [('bf16', 'off', None, False), ('bf16', 'off', None, True), ('fp32', 'off', True, False),
                ('bf16', 'off', True, False)]
    if compile_:
        variants += [('fp32', 'on', None, False), ('bf16', 'on', None, False)]
    for precision, comp, cl, contiguous in ([] if smoke else variants):
        key = (f'DM ipc 10 {precision}{" channels-last" if cl else ""}{" compiled" if comp == "on" else ""}'
               f'{" twin contiguous" if contiguous else ""}')
        c.guard(key, lambda: row(key, 1e3 * run_dm(data, dm_args(device, 10, 'on', 'bf16' if precision == 'bf16'
                                                                 else 'off', comp), iters, channels_last=cl,
                                                   start=start, twin_contiguous=contiguous)[1], 'ms'))
    # Evaluation: the time per epoch from two run lengths, so that the one-off costs (building the networks, the
    # warm-up, the recordings, the test pass) are counted once and not scaled with the epochs.
    models, lengths = (2, (1, 2)) if smoke else (20, EVAL_LENGTHS)
    for ipc in ((1,) if smoke else (10, 50)):
        for replay, benchmark in [(m, False) for m in modes] + ([('on', True)] if cuda else []):
            key = f'eval ipc {ipc}{"" if replay == "on" else " eager"}{" cudnn.benchmark" if benchmark else ""}'
            c.guard(key, lambda: row(key, evaluation_time(c, key, data, device, ipc, models, lengths, replay,
                                                          benchmark), 's'))
    ol, calls, first = (1, 1, 0) if smoke else (None, 3, 1)
    for method in ('DC', 'DSA'):
        for replay in modes:
            key = f'{method} ipc {1 if smoke else 10}{"" if replay == "on" else " eager"}'
            c.guard(key, lambda: row(key, run_dc(data, dc_args(device, method, 1 if smoke else 10, replay,
                                                              outer_loop=ol, batch_real=4 if smoke else 256), calls,
                                                 first)[1], 's'))
    for name, (ch, size, width, batch) in (list(GAN_SHAPES.items())[:1] if smoke else GAN_SHAPES.items()):
        width, batch = (8, 8) if smoke else (width, batch)
        for replay in modes:
            key = f'{name}{"" if replay == "on" else " eager"}'
            c.guard(key, lambda: row(key, run_gan(device, ch, size, width, batch, 4 if smoke else 60, replay == 'on',
                                                  start=2 if smoke else 20, gp_every=1, mode_seeking=0.0,
                                                  ema=0)[1], 'ms'))


RECORDED = ('DM step', 'DC matching pass', 'DC inner epochs', 'evaluation epoch', 'GAN iteration')
FORCED = 'forced failure'  # the name of the step whose recording gpu_path makes fail


def gpu_path(c, device, smoke):
    """(d): the questions only a card settles (each listed, 'needs CUDA' where this device cannot answer it)."""
    c.out('\n## (d) The GPU path: checks only a card settles\n')
    c.out('| check | result | detail |')
    c.out('|---|---|---|')
    cuda = device.startswith('cuda')
    if not cuda:
        for what in ('first-replay check of every recorded loop (the replays of (a) are each checked once against '
                     'an eager step)', 'TF32 on and off: DM step and DiM CIFAR-10 GAN iteration',
                     'evaluation per epoch with cudnn.benchmark on (rows of (b))',
                     'bf16 twin channels-last against contiguous (rows of (b))',
                     'profiler over 20 DM replays: GPU kernel time against wall time',
                     'a recording forced to fail: the warning, later draws fresh, memory returned',
                     'a CPU-made GAN checkpoint resumed on the GPU'):
            c.skip(what)
        c.guard('a GPU-made GAN checkpoint on the CPU', lambda: checkpoint_moves(c, 'cpu', 'cpu', smoke))
        c.skip('DM step on cuda:1', 'needs two CUDA devices')
        return
    for name in RECORDED:
        passed = sum(n for k, n in graphs.PASSED.items() if k.startswith(name))
        failed = [f'{k}: {r}' for k, r in graphs.FALLBACKS if k.startswith(name)]
        c.line(f'first-replay check: {name}', passed > 0 and not failed,
               f'{passed} checked replay(s) matched their eager step' + ('; ' + '; '.join(failed) if failed else ''))
    data = fake_cifar(device, *((3, 6) if smoke else (10, 500)))
    c.guard('TF32 on and off', lambda: tf32_rows(c, device, data, smoke))
    c.line('evaluation per epoch from two run lengths, cudnn.benchmark off and on', True, 'the eval rows of (b)')
    c.line('bf16 twin channels-last against contiguous', True, 'the rows DM ipc 10 bf16 [twin contiguous] of (b)')
    c.guard('profiler', lambda: profile_dm(c, device, data, smoke))
    c.guard('a CPU-made GAN checkpoint resumed on the GPU', lambda: checkpoint_moves(c, 'cpu', device, smoke))
    c.guard('a GPU-made GAN checkpoint on the CPU', lambda: checkpoint_moves(c, device, 'cpu', smoke))
    if torch.cuda.device_count() >= 2:
        c.guard('DM step on cuda:1', lambda: on_second_device(c, smoke))
    else:
        c.skip('DM step on cuda:1', 'needs two CUDA devices')
    c.guard('a recording forced to fail', lambda: forced_failure(c, device))


def tf32_rows(c, device, data, smoke):
    """ms per DM step (ipc 10) and per DiM CIFAR-10 GAN iteration, replayed, with TF32 and with IEEE float32."""
    iters, start = (3, 1) if smoke else (60, 20)
    ch, size, width, batch = GAN_SHAPES['DiM CIFAR-10 w196 b128']
    times = {}
    for precision in ('tf32', 'ieee'):
        with cuda_settings(precision, device=device):
            times['DM', precision] = 1e3 * run_dm(data, dm_args(device, 10, 'on'), iters, start=start)[1]
            times['GAN', precision] = run_gan(device, ch, size, width, batch, iters, True, start=start, gp_every=1,
                                              mode_seeking=0.0, ema=0)[1]
    for what in ('DM', 'GAN'):
        c.numbers.update({f'tf32: {what} {p} (ms)': times[what, p] for p in ('tf32', 'ieee')})
        c.line(f'{"DM step, ipc 10" if what == "DM" else "DiM CIFAR-10 GAN iteration"}: TF32 against IEEE fp32',
               True, f'{times[what, "tf32"]:.3g} ms with TF32, {times[what, "ieee"]:.3g} ms with IEEE fp32')


def profile_dm(c, device, data, smoke):
    """20 replays of the DM step (ipc 10) under the profiler: the GPU's kernel time against the wall time."""
    step, _, _ = dm_setup(data, dm_args(device, 10, 'on', batch_real=4 if smoke else 256))
    for it in range(6):  # warm-up, recording, the checked replays
        step(0, (0, it))
    sync(device)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        t = time.perf_counter()
        for it in range(6, 26):
            step(0, (0, it))
        sync(device)
        wall = time.perf_counter() - t
    kernels = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
    c.numbers.update({'profiler: DM wall s / 20 replays': wall, 'profiler: DM kernel s / 20 replays': kernels})
    c.line('profiler: 20 DM replays (ipc 10)', kernels > 0,
           f'GPU kernels {1e3 * kernels / 20:.3g} ms of {1e3 * wall / 20:.3g} ms wall per step '
           f'({100 * kernels / max(wall, 1e-9):.0f} %: '
           f'{"bound by the card" if kernels > 0.8 * wall else "the card waits for the host"})')


def checkpoint_moves(c, made, used, smoke):
    """A GAN state written by Adam on `made` (on the CPU: marked capturable, as a GPU writes it) continues on
    `used` with GANStep: it must step (weights move, stay finite) and, on CUDA, replay without falling back."""
    def gan_on(device):
        G, D = define_gan(1, 10, (28, 28), 16, 'embed', 8, device=device, generator=torch.Generator().manual_seed(0))
        return G, D, adam(G, 2e-4), adam(D, 2e-4)

    def iterate(G, D, opt_g, opt_d, device, n):
        on = graphs.graphs_enabled(device)
        step = GANStep(G, D, opt_g, opt_d, 10, graphs=on)
        step.use_stream(make_generator(0, 'gpu_check', 'checkpoint'))
        x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)).mul_(2).sub_(1).to(device)
        y = torch.arange(8).remainder(10).to(device)
        for it in range(n):
            step(it, x, y)
    made_gan = gan_on(made)
    iterate(*made_gan, made, 2)
    state = torch.load(_saved(gan_state(*made_gan)), map_location='cpu', weights_only=True)
    if made == 'cpu' and used == 'cpu':
        for key in ('optim_g', 'optim_d'):
            for group in state[key]['param_groups']:
                group['capturable'] = True
    used_gan = gan_on(used)
    load_gan_state(state, *used_gan, path=f'made on {made}')
    before = [p.detach().clone() for p in used_gan[0].parameters()]
    fell_back = len(graphs.FALLBACKS)
    iterate(*used_gan, used, 6)
    moved = all(bool(torch.isfinite(p).all()) for p in used_gan[0].parameters()) and any(
        not torch.equal(b, p) for b, p in zip(before, used_gan[0].parameters()))
    made_as = f'{made} (its Adam state marked capturable, as a GPU writes it)' if made == used == 'cpu' else made
    c.line(f'a GAN checkpoint made on {made_as} continues on {used}', moved and len(graphs.FALLBACKS) == fell_back,
           f'capturable {used_gan[2].param_groups[0]["capturable"]} after the load; 6 iterations'
           + ('' if len(graphs.FALLBACKS) == fell_back else f'; fell back: {graphs.FALLBACKS[-1]}'))


def _saved(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def on_second_device(c, smoke):
    """The DM step on cuda:1 (not the current device): replayed, it must match the eager step and pass its check."""
    data = fake_cifar('cuda:1', *((3, 6) if smoke else (10, 300)))
    passed = graphs.PASSED['DM step']
    (eager, start), _ = run_dm(data, dm_args('cuda:1', 2, 'off', batch_real=32), 6)
    (graph, _), _ = run_dm(data, dm_args('cuda:1', 2, 'on', batch_real=32), 6)
    c.agree('DM step on cuda:1, 6 iterations: set', graph, eager, start)
    c.line('DM step on cuda:1: first replays checked', graphs.PASSED['DM step'] > passed,
           f'{graphs.PASSED["DM step"] - passed} checked replay(s) matched')


def forced_failure(c, device):
    """A step whose recording fails (a host read inside it, after a 256 MiB scratch the graph's pool would hold):
    one warning line, every later call drawn fresh (the eager results), the memory given back."""
    g, w = torch.Generator(device), torch.zeros(1 << 10, device=device)

    def fn():
        scratch = torch.empty(64 << 20, device=device).uniform_(generator=g)
        w.add_(scratch[:w.numel()])
        if float(w.sum()) != float(w.sum()):  # a host read: refused while a stream is capturing
            raise FloatingPointError
        return w.sum()
    step = graphs.Graphed(fn, [g], True, name=FORCED, state=(w,))
    outs, err = [], io.StringIO()
    with contextlib.redirect_stderr(err):
        for i in range(6):
            g.manual_seed(i)
            if i == 2:
                sync(device)
                reserved = torch.cuda.memory_reserved(device)
            outs.append(float(step()))
    after = torch.cuda.memory_reserved(device)
    g, w = torch.Generator(device), torch.zeros(1 << 10, device=device)
    eager = []
    for i in range(6):
        g.manual_seed(i)
        eager.append(float(fn()))
    warnings = [line for line in err.getvalue().splitlines() if line.startswith('warning:')]
    c.line('a recording forced to fail: one warning line', len(warnings) == 1 and FORCED in warnings[0],
           (warnings or ['no warning'])[0][:200])
    c.line('a recording forced to fail: every call after it drawn fresh, as eager calls', outs == eager,
           f'outputs {[round(o, 3) for o in outs]} vs eager {[round(e, 3) for e in eager]}')
    c.line('a recording forced to fail: its memory given back', after <= reserved,
           f'reserved {reserved / 2 ** 20:.0f} MiB before the recording, {after / 2 ** 20:.0f} MiB after the fallback')


def accuracy(c, device, data_path, out_dir, smoke):
    """(c): DM on CIFAR-10, ipc 10, 2000 iterations, 5 networks."""
    c.out('\n## (c) Accuracy path: main_DM.py, CIFAR-10, ipc 10\n')
    if not dataset_available('CIFAR10', data_path):
        c.out(f'skipped: CIFAR-10 not found in {data_path}')
        return
    its, nets, epochs = (4, 1, 2) if smoke else (2000, 5, 1000)
    argv = ['--dataset', 'CIFAR10', '--data_path', data_path, '--model', 'ConvNet', '--ipc', '10', '--init', 'real',
            '--lr_img', '1', '--dsa_strategy', STRATEGY, '--Iteration', str(its), '--num_exp', '1', '--num_eval',
            str(nets), '--epoch_eval_train', str(epochs), '--eval_every', str(its), '--device', device,
            '--save_path', os.path.join(out_dir, 'dm_cifar10'), '--no_progress']
    t = time.perf_counter()
    summary = main_DM.main(argv)
    took = time.perf_counter() - t
    first, last = (summary['accs_iters'][f'0/{i}']['ConvNet'] for i in (0, its))
    m0, m1 = 100 * statistics.mean(first), 100 * statistics.mean(last)
    s1 = 100 * statistics.pstdev(last)
    times = summary['times'][0]
    c.numbers.update({'accuracy: DM CIFAR-10 ipc 10 iteration 0': m0, f'accuracy: iteration {its}': m1})
    c.out(f'`python main_DM.py {" ".join(argv)}`\n')
    c.out('| check | result | detail |')
    c.out('|---|---|---|')
    c.line(f'DM learns: iteration {its} above the random real images it starts from', smoke or m1 > m0 + 5,
           f'iteration 0: {m0:.2f} %, iteration {its}: {m1:.2f} ± {s1:.2f} % over {nets} ConvNets x {epochs} epochs '
           f'(paper, 20,000 iterations: 48.9 ± 0.6; this project at 10,000 on an H200: 49.21 ± 0.54); synthesis '
           f'{times["synthesis_s"]:.1f} s, evaluation {times["evaluation_s"]:.1f} s, {took:.0f} s in all')


def main():
    p = ArgumentParser(description=__doc__.split('\n')[0], domains={})
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--smoke', action='store_true', help='tiny shapes and counts: checks that the script runs')
    p.add_argument('--data_path', default='data', help='where CIFAR10.pt (or the torchvision CIFAR-10) is')
    p.add_argument('--out', default=os.path.join('bench', 'gpu_check'), help='folder for the report')
    p.add_argument('--parts', nargs='+', default=list(H200_SECONDS), choices=list(H200_SECONDS))
    p.add_argument('--compile', action='store_true', help='also time the DM step compiled with torch.compile')
    args = p.parse_args()
    if args.smoke:
        MODEL[0] = 'ConvNetW32'
    os.makedirs(args.out, exist_ok=True)
    out = markdown_writer(os.path.join(args.out, 'report.md'))
    name = torch.cuda.get_device_name() if args.device.startswith('cuda') else \
        f'CPU, {torch.get_num_threads()} threads'
    out(f'# gpu_check: {name}; torch {torch.__version__}; {time.strftime("%Y-%m-%d %H:%M")}\n')
    out(f'`{" ".join(sys.argv)}`\n')
    precision = precision_text(argparse.Namespace(device=args.device))
    out(f'Precision of every row unless it says otherwise: {precision}; rows marked bf16 run in bfloat16 autocast.')
    c = Check(out)
    t0 = time.perf_counter()
    parts = {'equivalence': lambda: check_equivalence(c, args.device, args.smoke),
             'speed': lambda: speed(c, args.device, args.smoke, args.compile),
             'accuracy': lambda: accuracy(c, args.device, args.data_path, args.out, args.smoke),
             'gpu': lambda: gpu_path(c, args.device, args.smoke)}
    estimate = H200_START + sum(H200_SECONDS[p] for p in args.parts) + (H200_COMPILE if args.compile else 0)
    out(f'\nEstimated time of this command on one H200: about {estimate / 60:.1f} minutes, within the '
        f'{H200_LIMIT // 60} allowed: {estimate <= H200_LIMIT} (the work of each part at the H200 figures of '
        f'2026-12-04, measured before the steps were replayed: an upper bound)')
    for part in args.parts:
        t = time.perf_counter()
        try:
            parts[part]()
            out(f'\n({part}: {time.perf_counter() - t:.0f} s)')
        except Exception as e:  # one broken part must not hide the others' results
            c.line(f'{part}: ran to the end', False, f'{type(e).__name__}: {e}'.replace('\n', ' ')[:400])
            traceback.print_exc()
    if args.device.startswith('cuda'):
        fell_back = [(name, reason) for name, reason in graphs.FALLBACKS if name != FORCED]
        c.line('every captured step was replayed (no recording fell back to eager)', not fell_back,
               '; '.join(f'{name}: {reason}' for name, reason in fell_back)[:600])
    verdict = 'PASSED' if not c.failures else f'FAILED: {", ".join(c.failures)}'
    out(f'\n**{verdict}** ({time.perf_counter() - t0:.0f} s)')
    with open(os.path.join(args.out, 'numbers.json'), 'w') as f:
        json.dump(dict(device=name, torch=torch.__version__, precision=precision, failures=c.failures,
                       numbers=c.numbers), f, indent=1)
    sys.exit(1 if c.failures else 0)


if __name__ == '__main__':
    main()

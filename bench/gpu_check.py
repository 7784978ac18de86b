"""One command that checks the GPU paths on a card and says itself whether they passed.

    python bench/gpu_check.py --data_path /root/data            # on a GPU: at most a few minutes on one H200
    python bench/gpu_check.py --device cpu --smoke              # on a CPU, in seconds: the script starts and runs

(a) Replay equals eager: every loop that is replayed as a CUDA graph (the DM step, the DC/DSA passes, the evaluation
    epochs of networks trained together and one by one, the GAN iteration) runs from the same state with the same
    seeds with --cuda_graphs on and off; the sets and weights must agree within a tolerance stated in the report
    (the kernels that sum with atomics are not bit-reproducible from run to run), and an audit of every step
    (graphs.audited) must find nothing that reads a value back to the host or copies across it.
(b) Speed: ms per DM iteration (ipc 1, 10, 50; eager, graphs, bf16, compiled), seconds for 20 evaluation networks x
    1000 epochs (ipc 10, 50; measured on fewer epochs and scaled), seconds per DC/DSA outer iteration (ipc 10),
    ms per DiM stage-1 iteration, each beside its target.
(c) Accuracy path: main_DM.py on CIFAR-10, ipc 10, 2000 iterations, 5 networks x 1000 epochs, evaluated at the
    start (random real images) and the end (skipped when CIFAR-10 is not in --data_path).
Everything is written as markdown (and the raw numbers as JSON) under --out; the exit code is 1 on any mismatch.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import env  # the environment PyTorch reads when it starts (env.py), before torch

import argparse
import json
import statistics
import time
import traceback

import torch

import augment
import graphs
import main as main_dc
import main_DM
from bench_dm import STRATEGY, fake_cifar, markdown_writer, sync
from data import dataset_available
from dc import DCStep
from dm import DMStep
from evaluation import EvalRecipe, evaluate_networks
from gan import GANStep, adam, new_ema
from graphs import audited
from networks import define_gan, get_network
from runner import init_synset
from utils import make_generator

TOLERANCE = 0.02  # replay and eager may differ by this share of how far the run moved its tensors (Check.agree)
# Targets of the GPU issue, for one H200 (None: no target)
TARGETS = {'DM ipc 10 fp32': 5.0, 'DM ipc 10 bf16': 2.5, 'eval ipc 10': 10.0, 'eval ipc 50': 40.0, 'DC ipc 10': 0.8,
           'DSA ipc 10': 0.8, 'DiM MNIST w32 b64': 5.0, 'DiM MNIST w196 b64': 8.0, 'DiM CIFAR-10 w196 b128': 15.0}
# What the code before this round measured on one H200 (2026-12-04), for the "before" column
BEFORE = {'DM ipc 1 fp32': 14.6, 'DM ipc 10 fp32': 16.6, 'DM ipc 50 fp32': 20.6, 'DM ipc 10 bf16': 16.8,
          'eval ipc 10': 44.5, 'eval ipc 50': 175.1, 'DC ipc 10': 3.19, 'DSA ipc 10': 3.12,
          'DiM MNIST w32 b64': 23.8, 'DiM MNIST w196 b64': 34.3, 'DiM CIFAR-10 w196 b128': 50.1}


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


def dm_args(device, ipc, graphs='on', amp='off', compile_='off', batch_real=256, dataset='CIFAR10'):
    return main_DM.parse_args(['--dataset', dataset, '--model', MODEL[0], '--ipc', str(ipc), '--device', device,
                               '--batch_real', str(batch_real), '--dsa_strategy', STRATEGY, '--cuda_graphs', graphs,
                               '--amp', amp, '--compile', compile_])


def run_dm(data, args, iters, channels_last=None, start=0, resident=None):
    """A DMStep on a fixed initial set for `iters` iterations: (final set, seconds per iteration after `start`)."""
    image_syn, syn_cls = init_synset(data, args.ipc, 'real', torch.Generator().manual_seed(0))
    image_syn = image_syn.to(args.device).requires_grad_(True)
    opt = torch.optim.SGD([image_syn], lr=args.lr_img, momentum=0.5)
    first = image_syn.detach().clone()
    step = DMStep(args, data, image_syn, syn_cls, opt, channels_last=channels_last, resident=resident)
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
    variants = [('bf16', 'off', None), ('fp32', 'off', True), ('bf16', 'off', True)]
    if compile_:
        variants += [('fp32', 'on', None), ('bf16', 'on', None)]
    for precision, comp, cl in ([] if smoke else variants):
        key = f'DM ipc 10 {precision}{" channels-last" if cl else ""}{" compiled" if comp == "on" else ""}'
        c.guard(key, lambda: row(key, 1e3 * run_dm(data, dm_args(device, 10, 'on', 'bf16' if precision == 'bf16'
                                                                 else 'off', comp), iters, channels_last=cl,
                                                   start=start)[1], 'ms'))
    models, epochs = (2, 1) if smoke else (20, 50)
    scale = 1001 / (epochs + 1) * 20 / models
    for ipc in ((1,) if smoke else (10, 50)):
        for replay in modes:
            key = f'eval ipc {ipc}{"" if replay == "on" else " eager"}'
            c.guard(key, lambda: row(key, run_eval(data, device, ipc, models, epochs, replay)[2] * scale, 's'))
    ol, calls, first = (1, 1, 0) if smoke else (None, 3, 1)
    for method in ('DC', 'DSA'):
        for replay in modes:
            key = f'{method} ipc {1 if smoke else 10}{"" if replay == "on" else " eager"}'
            c.guard(key, lambda: row(key, run_dc(data, dc_args(device, method, 1 if smoke else 10, replay,
                                                              outer_loop=ol, batch_real=4 if smoke else 256), calls,
                                                 first)[1], 's'))
    shapes = {'DiM MNIST w32 b64': (1, 28, 32, 64), 'DiM MNIST w196 b64': (1, 28, 196, 64),
              'DiM CIFAR-10 w196 b128': (3, 32, 196, 128)}
    for name, (ch, size, width, batch) in (list(shapes.items())[:1] if smoke else shapes.items()):
        width, batch = (8, 8) if smoke else (width, batch)
        for replay in modes:
            key = f'{name}{"" if replay == "on" else " eager"}'
            c.guard(key, lambda: row(key, run_gan(device, ch, size, width, batch, 4 if smoke else 60, replay == 'on',
                                                  start=2 if smoke else 20, gp_every=1, mode_seeking=0.0,
                                                  ema=0)[1], 'ms'))


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
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], allow_abbrev=False)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--smoke', action='store_true', help='tiny shapes and counts: checks that the script runs')
    p.add_argument('--data_path', default='data', help='where CIFAR10.pt (or the torchvision CIFAR-10) is')
    p.add_argument('--out', default=os.path.join('bench', 'gpu_check'), help='folder for the report')
    p.add_argument('--parts', nargs='+', default=['equivalence', 'speed', 'accuracy'],
                   choices=['equivalence', 'speed', 'accuracy'])
    p.add_argument('--compile', action='store_true', help='also time the DM step compiled with torch.compile')
    args = p.parse_args()
    if args.smoke:
        MODEL[0] = 'ConvNetW32'
    os.makedirs(args.out, exist_ok=True)
    out = markdown_writer(os.path.join(args.out, 'report.md'))
    name = torch.cuda.get_device_name() if args.device.startswith('cuda') else \
        f'CPU, {torch.get_num_threads()} threads'
    out(f'# gpu_check: {name}; torch {torch.__version__}; {time.strftime("%Y-%m-%d %H:%M")}\n')
    out(f'`{" ".join(sys.argv)}`')
    c = Check(out)
    t0 = time.perf_counter()
    parts = {'equivalence': lambda: check_equivalence(c, args.device, args.smoke),
             'speed': lambda: speed(c, args.device, args.smoke, args.compile),
             'accuracy': lambda: accuracy(c, args.device, args.data_path, args.out, args.smoke)}
    for part in args.parts:
        t = time.perf_counter()
        try:
            parts[part]()
            out(f'\n({part}: {time.perf_counter() - t:.0f} s)')
        except Exception as e:  # one broken part must not hide the others' results
            c.line(f'{part}: ran to the end', False, f'{type(e).__name__}: {e}'.replace('\n', ' ')[:400])
            traceback.print_exc()
    if args.device.startswith('cuda'):
        c.line('every captured step was replayed (no recording fell back to eager)', not graphs.FALLBACKS,
               '; '.join(f'{name}: {reason}' for name, reason in graphs.FALLBACKS)[:600])
    verdict = 'PASSED' if not c.failures else f'FAILED: {", ".join(c.failures)}'
    out(f'\n**{verdict}** ({time.perf_counter() - t0:.0f} s)')
    with open(os.path.join(args.out, 'numbers.json'), 'w') as f:
        json.dump(dict(device=name, torch=torch.__version__, failures=c.failures, numbers=c.numbers), f, indent=1)
    sys.exit(1 if c.failures else 0)


if __name__ == '__main__':
    main()

"""Evaluation on a CPU with NCHW networks against channels-last ones (the layout `networks.cpu_channels_last`
picks for `evaluate_synset`): seconds per evaluation epoch in steady state and per test pass, or, with --steps, one
training step and one test batch per architecture.

    python bench/eval_layout.py                               # ConvNet, CIFAR-10-shaped, ipc 10 and 50
    python bench/eval_layout.py --threads 1 --rounds 3 --shape 1 28 28
    python bench/eval_layout.py --steps --models ConvNet ConvNetGN VGG11 ResNet18

Every case builds its network twice from one seed and converts one copy with .to(memory_format=channels_last).
Both train once to warm up. Then blocks of --epochs epochs (the evaluation's own loop, DSA) alternate, the order
flipped every round, so that a shared machine's drift falls on both. It prints each layout's median and each
round's ratio, channels-last over NCHW (below 1: channels-last is faster). The images are random: the cost does
not depend on them.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from condensation import env  # the environment PyTorch reads when it starts (env.py), before torch

import statistics
import time

import torch
import torch.nn.functional as F

from condensation import evaluation
from condensation.augment import ParamDiffAug
from condensation.common import ArgumentParser, run_cli
from condensation.data import TensorLoader
from condensation.networks import NETWORKS, get_network

LAYOUTS = ('NCHW', 'channels-last')


def twins(model, shape, num_classes=10):
    """The same network in both layouts."""
    nets = [get_network(model, shape[0], num_classes, tuple(shape[1:]), generator=torch.Generator().manual_seed(0))
            for _ in LAYOUTS]
    return dict(zip(LAYOUTS, [nets[0], nets[1].to(memory_format=torch.channels_last)]))


def alternate(rounds, run):
    """{layout: [seconds per round]}, run(layout, round) timed, the layouts' order flipped every round."""
    times = {layout: [] for layout in LAYOUTS}
    for r in range(rounds):
        for layout in LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]:
            t = time.perf_counter()
            run(layout, r)
            times[layout].append(time.perf_counter() - t)
    return times


def row(what, times, scale=1.0):
    a, b = ([t * scale for t in times[layout]] for layout in LAYOUTS)
    ratios = [y / x for x, y in zip(a, b)]
    return (f'| {what} | {statistics.median(a):.3f} | {statistics.median(b):.3f} | '
            f'{min(ratios):.2f}–{max(ratios):.2f} |')


def epochs(args):
    """Rows for evaluation epochs at each ipc, and the test pass."""
    recipe = evaluation.EvalRecipe(epoch_eval_train=args.epochs - 1, dsa=True,
                                   dsa_strategy='color_crop_cutout_flip_scale_rotate', dsa_param=ParamDiffAug())
    shape, g = args.shape, torch.Generator().manual_seed(0)
    rows = []
    for ipc in args.ipc:
        x, y = torch.randn(10 * ipc, *shape, generator=g), torch.arange(10).repeat_interleave(ipc)
        nets = twins(args.model, shape)

        def train(layout, r, nets=nets, x=x, y=y):
            net = nets[layout]
            evaluation._train(list(net.parameters()), lambda b: net(b[0])[None], x, y, recipe,
                              [torch.Generator().manual_seed(r)], state=list(net.buffers()))
        for layout in LAYOUTS:
            train(layout, -1)  # warm-up: kernels chosen, the heap grown
        rows.append(row(f'{args.model}, ipc {ipc}, s per epoch', alternate(args.rounds, train), 1 / args.epochs))
    xt = torch.randn(args.test_images, *shape, generator=g)
    loader = TensorLoader(xt, torch.randint(0, 10, (args.test_images,), generator=g), 256)
    nets = twins(args.model, shape)
    for layout in LAYOUTS:
        evaluation.test_accuracy(nets[layout], [next(iter(loader))], 'cpu')
    rows.append(row(f'{args.model}, test pass of {args.test_images} images, s',
                    alternate(args.rounds, lambda layout, r: evaluation.test_accuracy(nets[layout], loader, 'cpu'))))
    return rows


def steps(args):
    """Rows for one training step (batch of 256, SGD) and one test batch per architecture, in ms."""
    shape, g = args.shape, torch.Generator().manual_seed(0)
    x, y = torch.randn(256, *shape, generator=g), torch.randint(0, 10, (256,), generator=g)
    rows = []
    for model in args.models:
        nets = twins(model, shape)
        opts = {layout: torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9) for layout, net in nets.items()}

        def train(layout, r):
            net = nets[layout].train()
            loss = F.cross_entropy(net(x), y)
            opts[layout].zero_grad()
            loss.backward()
            opts[layout].step()

        @torch.no_grad()
        def test(layout, r):
            nets[layout].eval()(x)
        for layout in LAYOUTS:
            train(layout, -1)
            test(layout, -1)
        flag = 'yes' if evaluation.cpu_channels_last(nets['NCHW']) else 'no'
        rows.append(row(f'{model} (channels-last in evaluation: {flag}), training step, ms',
                        alternate(args.rounds, train), 1e3))
        rows.append(row(f'{model}, test batch, ms', alternate(args.rounds, test), 1e3))
    return rows


def main():
    p = ArgumentParser(description=__doc__.split('\n')[0], domains={
        'ipc': '>= 1', 'epochs': '>= 1', 'rounds': '>= 1', 'test_images': '>= 1', 'shape': '>= 1', 'threads': '>= 1'})
    p.add_argument('--model', default='ConvNet', choices=list(NETWORKS), help='the network of the epoch rows')
    p.add_argument('--ipc', type=int, nargs='+', default=[10, 50])
    p.add_argument('--epochs', type=int, default=10, help='epochs per timed block')
    p.add_argument('--rounds', type=int, default=5, help='blocks per layout (they alternate)')
    p.add_argument('--test_images', type=int, default=10000)
    p.add_argument('--shape', type=int, nargs=3, default=[3, 32, 32], metavar=('C', 'H', 'W'))
    p.add_argument('--steps', action='store_true', help='one training step and one test batch per architecture '
                                                        'instead of the epoch rows')
    p.add_argument('--models', nargs='+', default=list(NETWORKS), choices=list(NETWORKS), metavar='MODEL',
                   help='the architectures of --steps (default: all)')
    p.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = steps(args) if args.steps else epochs(args)
    print(f'CPU, {torch.get_num_threads()} threads; torch {torch.__version__}; shape {tuple(args.shape)}; '
          f'median of {args.rounds} alternating rounds\n')
    print('| case | NCHW | channels-last | channels-last / NCHW per round |')
    print('|---|---|---|---|')
    for line in rows:
        print(line)


if __name__ == '__main__':
    run_cli(main)

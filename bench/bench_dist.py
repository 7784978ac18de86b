"""Time a DM iteration in one process or under torchrun (classes split over the processes), with each process's
peak memory.

    OMP_NUM_THREADS=2 python bench/bench_dist.py
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 bench/bench_dist.py
    torchrun --standalone --nproc_per_node 8 bench/bench_dist.py --device cuda --dataset-shape cifar100 --ipc 50

Every process runs dm.DMStep, the step main_DM.py runs (its share of the classes; the image gradients summed
over the processes), on random CIFAR-shaped images with ConvNet and DSA. Rank 0 prints one markdown table row:
the world size, the threads per process, the median ms per iteration over --iters iterations after --warmup, and
every rank's peak memory: the process's max RSS on a CPU (the data and torch itself included),
torch.cuda.max_memory_allocated on CUDA (the iterations only).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_dm import STRATEGY, fake_cifar, timed

import resource
import statistics
import time

import torch

import main_DM
from condensation.common import ArgumentParser, run_cli
from condensation.device import parallel
from condensation.methods.dm import DMStep
from condensation.run.runner import init_synset

SHAPES = {'cifar10': 10, 'cifar100': 100}  # --dataset-shape -> classes (500 random 32x32 images each)


def device_name(device):
    if device.startswith('cuda'):
        return torch.cuda.get_device_name(device)
    with open('/proc/cpuinfo') as f:
        models = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    return f'CPU, {os.cpu_count()} cores{", " + models[0] if models else ""}'


def peak_gib(device):
    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def main():
    p = ArgumentParser(description=__doc__.split('\n')[0],
                       domains={'ipc': '>= 1', 'batch_real': '>= 1', 'iters': '>= 1', 'warmup': '>= 0'})
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                   help="cpu or cuda (under torchrun each process takes cuda:<LOCAL_RANK>)")
    p.add_argument('--dataset-shape', choices=list(SHAPES), default='cifar10')
    p.add_argument('--ipc', type=int, default=10)
    p.add_argument('--batch-real', type=int, default=256)
    p.add_argument('--model', default='ConvNet')
    p.add_argument('--iters', type=int, default=5, help='timed iterations (the median is reported)')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--out', default=None, help='also append the lines to this markdown file')
    a = p.parse_args()
    k = SHAPES[a.dataset_shape]
    # main_DM's own argument check joins torchrun's process group and picks this process's device
    args = main_DM.parse_args(['--dataset', f'CIFAR{k}', '--model', a.model, '--ipc', str(a.ipc), '--device',
                               a.device, '--batch_real', str(a.batch_real), '--dsa_strategy', STRATEGY])
    data = fake_cifar(args.device, k)
    image_syn, syn_cls = init_synset(data, a.ipc, 'real', torch.Generator().manual_seed(0))
    image_syn = image_syn.to(args.device).requires_grad_(True)
    optimizer = torch.optim.SGD([image_syn], lr=args.lr_img, momentum=0.5)
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats(args.device)

    dm = DMStep(args, data, image_syn, syn_cls, optimizer)

    def step(it):
        dm(args.seed, (0, it))

    for it in range(a.warmup):  # kernels chosen, allocator filled
        step(it)
    ms = statistics.median(1e3 * timed(args.device, lambda: step(a.warmup + it)) for it in range(a.iters))
    ranks = parallel.gather((ms, peak_gib(args.device)))  # every iteration ends in the same collective
    if not parallel.is_main():
        return
    lines = [f'`{" ".join(sys.argv)}`: {device_name(args.device)}; torch {torch.__version__}; '
             f'{time.strftime("%Y-%m-%d")}',
             '| processes × threads | DM ConvNet, DSA | ms/iteration (median) | peak memory per process (GiB) |',
             '|---|---|---|---|',
             f'| {parallel.world_size()} × {torch.get_num_threads()} | CIFAR{k}-shaped, ipc {a.ipc}, batch_real '
             f'{a.batch_real}, {a.iters} iterations | {max(r[0] for r in ranks):.0f} | '
             f'{", ".join(f"{r[1]:.2f}" for r in ranks)} |']
    print('\n'.join(lines), flush=True)
    if a.out:
        with open(a.out, 'a') as f:
            f.write('\n'.join(lines) + '\n\n')


if __name__ == '__main__':
    run_cli(main, resumable=False)

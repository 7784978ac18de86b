"""Time DiM stage-1 iterations: one critic step (with the gradient penalty's double backward) and one generator
step, with the project's own functions (gan.critic_step, gan.generator_step, gan.gradient_penalty).

    python bench/bench_dim.py                          # CPU, and CUDA when present
    python bench/bench_dim.py --devices cpu --iters 3
    python bench/bench_dim.py --gpu --out bench/gpu_dim.md   # a GPU session's single command

Reports, per device and shape: ms per stage-1 iteration (critic step + generator step), ms of each step, and the
share of the iteration spent in the gradient penalty (its forward, the create_graph gradient and its share of the
backward, timed on its own as critic_step computes it). --gp_every k times blocks of k iterations (one with the
penalty) and reports a block's time over k; --mode_seeking adds the mode-seeking term to the generator step. The
images and labels are random tensors: the cost does not depend on them. Median of --iters timed iterations after
--warmup untimed ones.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from condensation import env  # the environment PyTorch reads when it starts (env.py), before torch

import statistics
import time

import torch

from bench_dm import markdown_writer, sync
from condensation.common import ArgumentParser, run_cli
from condensation.methods.gan import adam, critic_step, generator_step, gradient_penalty, lazy_penalty
from condensation.networks import define_gan

# name -> (channel, image size, GAN width, batch): MNIST at the CPU runs' width 32 and at the reference's 196,
# CIFAR-10 at the reference's width and stage-1 batch
SHAPES = {
    'MNIST 1x28x28, width 32, batch 64': (1, 28, 32, 64),
    'MNIST 1x28x28, width 196, batch 64': (1, 28, 196, 64),
    'CIFAR-10 3x32x32, width 196, batch 128': (3, 32, 196, 128),
}


def median_ms(device, fn, iters, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def bench_shape(device, channel, size, width, batch, iters, warmup, critic='ac', gp_every=1, mode_seeking=0.0):
    g = torch.Generator().manual_seed(0)
    G, D = define_gan(channel, 10, (size, size), 100, 'embed', width, device=device, generator=g, critic=critic)
    opt_g, opt_d = adam(G, 2e-4), adam(D, 2e-4)
    x = torch.rand(batch, channel, size, size, generator=g).mul_(2).sub_(1).to(device)
    y = torch.randint(10, (batch,), generator=g).to(device)
    G.train()
    D.train()

    def block():  # gp_every iterations, the first with the penalty
        for t in range(gp_every):
            generator_step(G, D, opt_g, y, g, mode_seeking=mode_seeking)
            critic_step(G, D, opt_d, x, y, 10, g, lazy_penalty(t, gp_every))

    def penalty():  # what critic_step spends on the penalty: forward, create_graph gradient, double backward
        with torch.no_grad():
            fake = G(torch.randn(batch, 100, generator=g).to(device), y)
        gradient_penalty(D, x, fake, torch.rand(batch, generator=g), y).backward()

    it = median_ms(device, block, iters, warmup) / gp_every
    g_ms = median_ms(device, lambda: generator_step(G, D, opt_g, y, g, mode_seeking=mode_seeking), iters, warmup)
    d_ms = median_ms(device, lambda: critic_step(G, D, opt_d, x, y, 10, g), iters, warmup)
    gp_ms = median_ms(device, penalty, iters, warmup)
    return dict(it=it, g=g_ms, d=d_ms, gp=gp_ms)


def main():
    p = ArgumentParser(description=__doc__.split('\n')[0], domains={
        'gp_every': '>= 1', 'mode_seeking': '>= 0', 'iters': '>= 1', 'warmup': '>= 0', 'threads': '>= 1'})
    p.add_argument('--devices', nargs='+', default=['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    p.add_argument('--shapes', nargs='+', default=list(SHAPES), choices=list(SHAPES))
    p.add_argument('--critic', default='ac', choices=['ac', 'projection'], help='critic head (dim.py)')
    p.add_argument('--gp_every', type=int, default=1, help='the penalty on every k-th critic step (gen_condense.py)')
    p.add_argument('--mode_seeking', type=float, default=0.0, help="the generator's mode-seeking weight")
    p.add_argument('--iters', type=int, default=5, help='timed iterations (median)')
    p.add_argument('--warmup', type=int, default=1, help='untimed iterations first')
    p.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument('--gpu', action='store_true', help='the GPU session preset: CUDA only, 20 iterations, 3 warm-up')
    p.add_argument('--out', default=None, help='also write the table to this markdown file')
    args = p.parse_args()
    if args.gpu:
        args.devices, args.iters, args.warmup = ['cuda'], 20, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    out = markdown_writer(args.out)
    out(f'`{" ".join(sys.argv)}`; THP_MEM_ALLOC_ENABLE={os.environ.get("THP_MEM_ALLOC_ENABLE")}')
    for device in args.devices:
        name = (torch.cuda.get_device_name() if device.startswith('cuda') else
                f'CPU, {torch.get_num_threads()} threads')
        out(f'\n## {name}; torch {torch.__version__}; {time.strftime("%Y-%m-%d")}; critic {args.critic}; gp_every '
            f'{args.gp_every}; mode_seeking {args.mode_seeking}; median of {args.iters} after {args.warmup} warm-up\n')
        out('| DiM stage 1 | ms/iteration (G step + D step) | G step ms | D step ms | gradient penalty ms | '
            'penalty share of the iteration |')
        out('|---|---|---|---|---|---|')
        for shape in args.shapes:
            r = bench_shape(device, *SHAPES[shape], args.iters, args.warmup, args.critic, args.gp_every,
                            args.mode_seeking)
            out(f'| {shape} | {r["it"]:.1f} | {r["g"]:.1f} | {r["d"]:.1f} | {r["gp"]:.1f} | '
                f'{100 * r["gp"] / args.gp_every / r["it"]:.0f} % |')


if __name__ == '__main__':
    run_cli(main, resumable=False)

"""Short DiM stage-1 runs on MNIST, scored for diversity within a class (docs/results.md, DiM: diversity).

    python bench/dim_diversity.py --critic projection --iters 600 --eval_at 300 600 --tag proj

Trains the stage-1 GAN (width 32, --cond embed, Adam 2e-4, batch 64) with dim.py's steps for --iters
iterations, keeping an average of the generator's weights (gan.GeneratorEMA, --ema), and at every --eval_at
scores both the raw and the averaged generator (one JSON line each point):
  cas    share of 50 samples per class that a ConvNetW32 trained one epoch on real images labels right (dim.ClassScore)
  div    mean pairwise L2 distance of 100 samples of a class over that of 100 real training images of the class,
         averaged over classes (1.0: as spread as the real digits)
  fixed  test accuracy (first 2000 real test images) of a ConvNetW32 trained with Adam (lr 1e-3, 300 steps of 100)
         on 100 samples per class drawn once
  otf    the same network trained on 100 fresh samples per step
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch
import torch.nn.functional as F

from condensation.methods import dim
from condensation.run import dim_stages
from condensation.methods import gan
from condensation.networks import get_network
from condensation.common import ArgumentParser, make_generator, run_cli


K = 10  # MNIST's classes


def parse_args():
    p = ArgumentParser(description=__doc__.split('\n')[0], domains={
        'n_critic': '>= 1', 'gp_every': '>= 1', 'mode_seeking': '>= 0', 'ema': '[0, 1)', 'iters': '>= 1',
        'eval_at': '>= 1', 'lr': '> 0', 'batch': '>= 1', 'width': '>= 1', 'seed': '>= 0'})
    p.add_argument('--data-dir', '--data_path', dest='data_dir', default='data',
                   help="dataset folder, as the DiM scripts' (MNIST is decoded into a cache file there on first use: "
                        'copy a read-only or shared folder first)')
    p.add_argument('--critic', default='ac')
    p.add_argument('--cond', default='embed')
    p.add_argument('--n_critic', type=int, default=1)
    p.add_argument('--gp_every', type=int, default=1)
    p.add_argument('--mode_seeking', type=float, default=0.0)
    p.add_argument('--ema', type=float, default=0.999)
    p.add_argument('--iters', type=int, default=800)
    p.add_argument('--eval_at', type=int, nargs='+', default=[200, 400, 600, 800])
    p.add_argument('--lr', type=float, default=2e-4)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--width', type=int, default=32)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--tag', default='x')
    p.add_argument('--extra', nargs='*', default=[], help='more gen_condense.py flags')
    return p.parse_args()


class Scorer:
    """The four scores of a generator (the module's docstring), against the real test images and the real
    within-class spread."""

    def __init__(self, data, seed):
        self.seed = seed
        t0 = time.time()
        self.cas = dim.ClassScore(data, seed)
        self.cas_seconds = time.time() - t0
        self.xt = data.real.x_test.float().div(127.5).sub(1)
        self.yt = data.real.labels_test
        spread = []
        for c in range(K):
            x = data.real.x_train[data.real.indices_class[c][:100]].float().div(127.5).sub(1).flatten(1)
            spread.append(torch.pdist(x).mean())
        self.real_spread = torch.stack(spread)

    def train_net(self, sample_fn, steps=300, seed=1):
        g = make_generator(seed, 'net')
        net = get_network('ConvNetW32', 1, K, (28, 28), generator=g)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        net.train()
        for s in range(steps):
            x, y = sample_fn(s, g)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            pairs = zip(self.xt[:2000].split(500), self.yt[:2000].split(500))
            return sum((net(xb).argmax(1) == yb).sum().item() for xb, yb in pairs) / 2000

    @torch.no_grad()
    def __call__(self, Gs):
        Gs.eval()
        g = make_generator(self.seed, 'fixed')
        y = torch.arange(K).repeat_interleave(100)
        x = gan.generate(Gs, y, g)
        spread = torch.stack([torch.pdist(x[y == c].flatten(1)).mean() for c in range(K)])
        div = (spread / self.real_spread).mean().item()
        with torch.enable_grad():
            fixed = self.train_net(lambda s, g: (x[(idx := torch.randint(1000, (100,), generator=g))], y[idx]))

            def fresh(s, g):
                yy = torch.randint(K, (100,), generator=g)
                with torch.no_grad():
                    return gan.generate(Gs, yy, g), yy
            otf = self.train_net(fresh)
        return dict(cas=self.cas.score(Gs), div=div, fixed=fixed, otf=otf)


def main():
    a = parse_args()
    args = dim_stages.parse_dim_args(1, 'exp', ['--data', 'mnist', '--data-dir', a.data_dir, '--gan_width',
                                                str(a.width), '--cond', a.cond, '--batch-size', str(a.batch), '--lr',
                                                str(a.lr), '--device', 'cpu', '--seed', str(a.seed), '--val_split',
                                                '100'] + a.extra)
    data = dim_stages.load_data(args)
    G, D = gan.build_gan(data, 100, a.cond, a.width, 'cpu', make_generator(a.seed, 'gan_init'), critic=a.critic)
    opt_g, opt_d = gan.adam(G, a.lr), gan.adam(D, a.lr)
    ema = gan.GeneratorEMA(G, a.ema)
    stream = dim.CyclingBatches(len(data.train_idx), a.batch, a.seed, 'exp')
    rng = make_generator(a.seed, 'exp_train')
    score = Scorer(data, a.seed)
    print(json.dumps(dict(tag=a.tag, cfg=vars(a), cas_net_s=round(score.cas_seconds, 1))), flush=True)
    train_time = 0.0
    for it in range(a.iters):
        t = time.time()
        G.train()
        D.train()
        x, y = data.batch(data.train_idx[stream.next()])
        if it % a.n_critic == 0:
            gan.generator_step(G, D, opt_g, y, rng, mode_seeking=a.mode_seeking)
            ema.update(G)
        parts = gan.critic_step(G, D, opt_d, x, y, K, rng, gan.lazy_penalty(it, a.gp_every))
        train_time += time.time() - t
        if it + 1 in a.eval_at:
            t = time.time()
            raw, avg = score(G), score(ema.G)
            G.train()
            print(json.dumps(dict(tag=a.tag, it=it + 1, train_s=round(train_time, 1), eval_s=round(time.time() - t, 1),
                                  raw={k: round(v, 3) for k, v in raw.items()},
                                  ema={k: round(v, 3) for k, v in avg.items()},
                                  parts={k: round(float(v), 3) for k, v in parts.items()})), flush=True)


if __name__ == '__main__':
    run_cli(main, resumable=False)

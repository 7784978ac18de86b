"""DiM: Distilling Dataset into Generative Model (Wang et al., arXiv 2303.04707), the method.

A class-conditional AC-WGAN-GP is trained on the real images (stage 1), fine-tuned so that a pool of classifiers
sees its samples as it sees real images (stage 2), and judged by classifiers trained from scratch on its samples
(stage 3). This module holds the method: the data as the GAN sees it, the evaluation and pool classifiers, the
pool matching, and the training of evaluation networks on generator samples. The GAN itself is gan.py; a stage's
run (folder, checkpoints, selection) is run/dim_stages.py; the stage loops are gen_condense.py, pool_match.py and
validate.py.

Image spaces. The GAN works in [-1, 1] (real images x/127.5 - 1, tanh output). Evaluation and pool networks see
(x + 1)/2 standardised with DiM's dataset constants (DIM_CONSTANTS); stage 2's pool keeps the reference's double
normalisation of [-1, 1] images unless --match_norm consistent (docs/design.md, D-B11).

Randomness: every draw comes from a torch.Generator passed in by the caller, never the global RNG.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from condensation import data as data_mod
from condensation import evaluation
from condensation import common
from condensation.augment import ParamDiffAug, make_dim_augs
from condensation.methods.gan import generate, sample_standardised
from condensation.networks import DIM_NETWORKS, NETWORKS, define_model, get_network
from condensation.common import UserError, make_generator

# DiM's normalisation of evaluation and pool-model inputs, by dataset name (args.dataset); other datasets use the
# project's constants (data.DATASETS), and the user's own data its training split's mean and std.
DIM_CONSTANTS = {
    'CIFAR10': ([0.491, 0.482, 0.447], [0.202, 0.199, 0.201]),
    'SVHN': ([0.437, 0.444, 0.473], [0.198, 0.201, 0.197]),
    'FashionMNIST': ([0.286], [0.353]),
    'MNIST': ([0.131], [0.308]),
}
POOL = ['convnet', 'resnet10', 'resnet18', 'resnet10_ap', 'resnet18_ap']  # the reference's stage-2 model pool
MATCH_COEFF = {'logit': 0.01, 'grad': 0.001, 'feat': 0.001}  # the reference's hard-coded weights (D-B8)


# ----------------------------------------------------------------------------------------------------------------
# Models: evaluation and pool classifiers, the GAN

def check_model_name(name):
    if name not in DIM_NETWORKS and name not in NETWORKS:
        raise UserError(f"unknown model '{name}'; choose a DiM name ({', '.join(DIM_NETWORKS)}) or a networks.py "
                        f"name ({', '.join(NETWORKS)})")


def build_model(name, data, stem, device='cpu', generator=None):
    """A freshly initialised classifier by DiM name (define_model, with the ResNet stem) or networks.py name."""
    check_model_name(name)
    try:
        if name in DIM_NETWORKS:
            return define_model(name, data.channel, data.num_classes, data.im_size, device, generator, stem=stem)
        return get_network(name, data.channel, data.num_classes, data.im_size, device=device, generator=generator)
    except ValueError as e:
        raise UserError(f'{name} on {data.name}: {e}') from None


def default_pool(stem, height):
    """The stage-2 pool when --pool is not given: without the _ap ResNets where the ImageNet stem collapses
    28x28 maps (MNIST and FashionMNIST with --resnet_stem auto; docs/design.md, D-B6)."""
    if stem == 'imagenet' and height < 32:
        return [n for n in POOL if not n.endswith('_ap')]
    return list(POOL)


def pool_members(args, data):
    """The stage-2 pool: --pool as given, else default_pool. Every member is built once on the meta device, so
    that one which cannot run fails early, in one line."""
    names = args.pool or default_pool(args.stem, data.im_size[0])
    for n in names:
        build_model(n, data, args.stem, device='meta')
    return names



# ----------------------------------------------------------------------------------------------------------------
# Data as the DiM stages see it

def split_validation(indices_class, per_class, generator):
    """(train, val) index tensors: per_class random images of every class held out for validation."""
    train, val = [], []
    for c, idx in enumerate(indices_class):
        if per_class >= len(idx):
            raise UserError(f'--val_split {per_class} leaves no training images of class {c} ({len(idx)} images); '
                            f'lower it')
        perm = idx[torch.randperm(len(idx), generator=generator)]
        val.append(perm[:per_class])
        train.append(perm[per_class:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values


class DiMData:
    """The dataset as the DiM stages see it: GAN batches in [-1, 1] from the training images (minus the validation
    split), evaluation inputs standardised with DiM's constants, and the two DiM DiffAug instances. `real` is the
    project's dataset (data.Data) underneath, with the project's constants."""

    def __init__(self, real, args, val_split=True):
        self.real, self.name, self.device = real, real.name, real.device
        self.channel, self.im_size, self.num_classes = real.channel, real.im_size, real.num_classes
        self.mean, self.std = DIM_CONSTANTS.get(args.dataset, (real.mean, real.std))
        self.val_idx, self.val_per_class = None, None
        if val_split and args.protocol == 'sound':
            smallest = min(len(i) for i in real.indices_class)
            self.val_per_class = args.val_split or max(1, min(500, smallest // 10))
            self.train_idx, self.val_idx = split_validation(real.indices_class, self.val_per_class,
                                                            make_generator(args.seed, 'val_split'))
        else:
            self.train_idx = torch.arange(len(real.labels_train))
        self.aug_batch, self.aug_rand = make_dim_augs(args.aug_type, args.mixup_net, self.mean, self.std,
                                                      ParamDiffAug())

    def batch(self, idx):
        """Training images at dataset indices idx, in [-1, 1] (the GAN's 0.5/0.5 normalisation), and labels."""
        idx = idx.to(self.device)
        return self.real.x_train[idx].float().div_(127.5).sub_(1), self.real.labels_train[idx]

    def standardise(self, x01):
        """[0, 1] images -> standardised with DiM's constants."""
        return data_mod.standardise(x01, self.mean, self.std, x01.device)

    def val_loader(self, batch_size):
        idx = self.val_idx.to(self.device)
        return data_mod.TensorLoader(self.real.x_train[idx], self.real.labels_train[idx], batch_size,
                                     transform=lambda b: data_mod.standardise(b, self.mean, self.std, self.device))

    def test_loader(self, batch_size, reference_norm=False):
        """The test set, standardised with DiM's constants; reference_norm: 0.5/0.5 for 1-channel data (the
        reference's test normalisation, docs/design.md, D-B5)."""
        mean, std = ([0.5], [0.5]) if reference_norm and self.channel == 1 else (self.mean, self.std)
        return data_mod.TensorLoader(self.real.x_test, self.real.labels_test, batch_size,
                                     transform=lambda b: data_mod.standardise(b, mean, std, self.device))


def epoch_batches(n, batch_size, generator, limit=None):
    """One epoch of a shuffled, drop_last loader over n items: positions, at most `limit` batches."""
    perm = torch.randperm(n, generator=generator)
    count = n // batch_size if limit is None else min(n // batch_size, limit)
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(count)]


class CyclingBatches:
    """An endless stream of shuffled batches over n items, a new shuffle every pass (drop_last). One stream serves
    the whole run (docs/design.md, D-B9); its state is (pass, position), so a resumed run continues the same
    stream."""

    def __init__(self, n, batch_size, seed, key):
        if batch_size > n:
            raise UserError(f'--batch-size {batch_size} exceeds the {n} training images')
        self.n, self.batch_size, self.seed, self.key = n, batch_size, seed, key
        self.pass_, self.pos, self._order = 0, 0, None

    def next(self):
        if self._order is None:
            self._order = torch.randperm(self.n, generator=make_generator(self.seed, self.key, self.pass_))
        if self.pos + self.batch_size > self.n:
            self.pass_, self.pos, self._order = self.pass_ + 1, 0, None
            return self.next()
        b = self._order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return b

    def state_dict(self):
        return dict(pass_=self.pass_, pos=self.pos)

    def load_state_dict(self, state):
        self.pass_, self.pos, self._order = state['pass_'], state['pos'], None



class ClassScore:
    """A classification accuracy score (CAS) of a conditional generator: a small ConvNet (width 32) is trained once
    on the real training images as the GAN sees them ([-1, 1]), for `epochs` Adam epochs; score(G) is the share of
    G's eval-mode samples of class c that it labels c (chance 1/K). It shows whether G has learned the labels,
    which sharp, realistic samples do not (docs/results.md, DiM). Its draws come from its own named streams."""

    def __init__(self, data, seed, epochs=1, batch_size=128, per_class=50):
        self.data, self.seed, self.per_class = data, seed, per_class
        g = make_generator(seed, 'cas_net')
        self.net = get_network('ConvNetW32', data.channel, data.num_classes, data.im_size, device=data.device,
                               generator=g)
        opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.net.train()
        for _ in range(epochs):
            for b in epoch_batches(len(data.train_idx), batch_size, g):
                x, y = data.batch(data.train_idx[b])
                loss = F.cross_entropy(self.net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def score(self, G):
        was = G.training
        G.eval()
        y = torch.arange(self.data.num_classes).repeat_interleave(self.per_class).to(self.data.device)
        g = make_generator(self.seed, 'cas_samples')
        hits = sum((self.net(generate(G, yb, g)).argmax(1) == yb).sum().item() for yb in y.split(500))
        G.train(was)
        return hits / len(y)


# ----------------------------------------------------------------------------------------------------------------
# Stage-2 matching: a pool classifier compares real and generated images

def present_class_means(v, y, num_classes):
    """Mean row of v per class present in y (K' x D, classes in increasing order)."""
    return common.class_means(v, y, num_classes)[torch.unique(y)]


def _two_passes(f, real, fake, joint_bn):
    if joint_bn:  # one pass: BN statistics over real and generated images together (D-B10's switch)
        out = f(torch.cat([real, fake]))
        return out[:len(real)], out[len(real):]
    return f(real), f(fake)


def logit_match_loss(net, real, fake, y, reduce='pair', joint_bn=False):
    """(1/(B·K)) Σ_i Σ_k [log softmax(f(x_i))_k − log softmax(f(g_i))_k]², x_i and g_i paired by batch index (same
    label); reduce 'classmean' compares class-mean log-probabilities instead. The real branch is not detached."""
    lr_, lf = _two_passes(net, real, fake, joint_bn)
    pr, pf = F.log_softmax(lr_, 1), F.log_softmax(lf, 1)
    if reduce == 'classmean':
        pr, pf = present_class_means(pr, y, pr.shape[1]), present_class_means(pf, y, pf.shape[1])
    return ((pr - pf) ** 2).mean()


def _matched_params(net, bias=False, fc=False):
    params = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d) or (fc and isinstance(m, nn.Linear)):
            params.append(m.weight)
            if bias and m.bias is not None:
                params.append(m.bias)
    return params


def grad_match_loss(net, real, fake, y, metric='l1', bias=False, fc=False):
    """Distance between the CE gradients on the real and the generated batch (conv weights; --bias, --fc add
    more), summed over parameter tensors. Second order through G; the real gradients are constants."""
    params = _matched_params(net, bias, fc)
    g_real = torch.autograd.grad(F.cross_entropy(net(real), y), params)
    g_fake = torch.autograd.grad(F.cross_entropy(net(fake), y), params, create_graph=True)
    total = 0.0
    for gr, gf in zip(g_real, g_fake):
        gr = gr.detach()
        if metric == 'l1':
            total = total + (gr - gf).abs().mean()
        elif metric == 'l2':
            total = total + ((gr - gf) ** 2).mean()
        else:
            total = total + 1 - F.cosine_similarity(gr.flatten(), gf.flatten(), dim=0, eps=1e-8)
    return total


def feat_match_loss(net, real, fake, y, first=1, last=None, joint_bn=False):
    """Class-mean features of blocks [first, last) (net.block_features), squared differences averaged per block
    and summed over blocks (the reference's feat mode crashes; this is the project's version, D-B8)."""
    if not hasattr(net, 'block_features'):
        raise UserError(f'--match feat needs per-block features; {type(net).__name__} has none (use convnet, '
                        f'the DiM ResNets or densenet in --pool)')
    fr, ff = _two_passes(net.block_features, real, fake, joint_bn)
    blocks = range(len(fr))[first:last]
    if len(blocks) == 0:
        raise UserError(f'--feat_from {first} --feat_to {last} select no block of {len(fr)}')
    K = int(y.max()) + 1
    return sum(((present_class_means(fr[b].flatten(1), y, K) - present_class_means(ff[b].flatten(1), y, K)) ** 2)
               .mean() for b in blocks)


class PoolMatcher:
    """Stage 2's extra generator loss: at every epoch a freshly initialised pool member, trained on the fly on real
    data (--epochs-match-train SGD steps per generator step, from ONE persistent cycling stream); its logits (or
    gradients, or features) on real versus generated images are matched."""

    def __init__(self, args, data):
        self.args, self.data = args, data
        self.pool = pool_members(args, data)
        self.stream = CyclingBatches(len(data.train_idx), args.batch_size, args.seed, 'pool_stream')
        self.net, self.name = None, None

    def start_epoch(self, epoch):
        """Draw and initialise this epoch's pool member; its name."""
        a = self.args
        rng = make_generator(a.seed, 'pool_member', epoch)
        self.name = self.pool[int(torch.randint(len(self.pool), (1,), generator=rng))]
        self.net = build_model(self.name, self.data, a.stem, a.device, rng).train()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=a.eval_lr, momentum=a.momentum,
                                   weight_decay=a.weight_decay)
        self.generator = make_generator(a.seed, 'pool_aug', epoch)
        return self.name

    def _to_input(self, x):
        return (x + 1) / 2 if self.args.match_norm == 'consistent' else x

    def train_steps(self, steps):
        self.net.requires_grad_(True)
        for _ in range(steps):
            x, y = self.data.batch(self.data.train_idx[self.stream.next()])
            x = self.data.aug_rand(self._to_input(x), self.generator)  # standardise, per-image colour + crop
            loss = F.cross_entropy(self.net(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    def inputs(self, real, fake):
        """What the pool model compares: with match-aug one shared DiffAug over the concatenation (which
        standardises first); without, the images as they are (reference) or standardised (consistent)."""
        real, fake = self._to_input(real), self._to_input(fake)
        if self.args.match_aug:
            both = self.data.aug_batch(torch.cat([real, fake]), self.generator)
            return both[:len(real)], both[len(real):]
        if self.args.match_norm == 'consistent':
            return self.data.standardise(real), self.data.standardise(fake)
        return real, fake

    def loss(self, real, y, fake):
        a = self.args
        self.train_steps(a.epochs_match_train)
        r, f = self.inputs(real, fake)
        if a.match == 'grad':
            return a.match_coeff * grad_match_loss(self.net, r, f, y, a.metric, a.bias, a.fc)
        # f's own gradients would only be cleared before its next step: skip computing them
        self.net.requires_grad_(False)
        if a.match == 'feat':
            return a.match_coeff * feat_match_loss(self.net, r, f, y, a.feat_from, a.feat_to, a.match_joint_bn)
        return a.match_coeff * logit_match_loss(self.net, r, f, y, a.match_reduce, a.match_joint_bn)

    def state_dict(self):
        return dict(stream=self.stream.state_dict())

    def load_state_dict(self, state):
        self.stream.load_state_dict(state['stream'])


# ----------------------------------------------------------------------------------------------------------------
# Evaluation networks trained on generator samples

@torch.no_grad()
def mix(x, y, args, generator):
    """CutMix ('cut') or mixup ('vanilla') with probability --mix-p: (x, y_b, lam), y_b None when unmixed."""
    if args.mix_p <= 0 or torch.rand(1, generator=generator).item() >= args.mix_p:
        return x, None, 1.0
    rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=generator)))
    lam = float(rng.beta(args.beta, args.beta))
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    if args.mixup_net == 'vanilla':
        return lam * x + (1 - lam) * x[perm], y[perm], lam
    H, W = x.shape[2:]
    r = np.sqrt(1 - lam)
    h, w = int(H * r), int(W * r)
    cy, cx = int(rng.integers(H)), int(rng.integers(W))
    y1, y2, x1, x2 = max(cy - h // 2, 0), min(cy + h // 2, H), max(cx - w // 2, 0), min(cx + w // 2, W)
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    return x, y[perm], 1 - (y2 - y1) * (x2 - x1) / (H * W)


def iterations_per_epoch(num_classes, ipc, batch_size, stage):
    """n_it: ⌊K·ipc/bs⌋ + 1 in the stage-1/2 validation, ⌊K·ipc/bs⌋ in validate.py (the reference's scripts
    differ; kept per script, docs/design.md, D-B16)."""
    return num_classes * ipc // batch_size + (1 if stage in (1, 2) else 0)


def train_onthefly(G, net, args, data, n_it, generator, loader, test_every=None, train_mode_test=False, desc=None):
    """Train net from scratch on fresh generator samples: every epoch n_it SGD steps, each on bs new samples
    ((x + 1)/2, then aug_rand) with random labels (a permutation of the K classes when bs = K).
    Scored on loader after the last epoch, and every test_every epochs when given.
    Returns dict(final=(top1, top5), best=(top1, top5) over the scored points, history=[(epoch, top1, top5)])."""
    G.eval()
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=args.eval_lr, momentum=args.momentum, weight_decay=args.weight_decay)
    K, bs, device = data.num_classes, args.batch_size, data.device
    history = []
    for ep in tqdm(range(args.epochs_eval), desc=desc or 'evaluation', leave=False, disable=args.no_progress,
                   dynamic_ncols=True):
        for _ in range(n_it):
            y = (torch.randperm(K, generator=generator) if bs == K else
                 torch.randint(K, (bs,), generator=generator)).to(device)
            with torch.no_grad():
                x = (generate(G, y, generator) + 1) / 2
            x = data.aug_rand(x, generator)
            x, y_b, lam = mix(x, y, args, generator)
            out = net(x)
            loss = F.cross_entropy(out, y) if y_b is None else (
                lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y_b))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if ep + 1 == args.epochs_eval or (test_every and (ep + 1) % test_every == 0):
            history.append((ep, *evaluation.test_accuracy(net, loader, device, top5=True, train_mode=train_mode_test)))
    best = max(history, key=lambda h: h[1])
    return dict(final=history[-1][1:], best=best[1:], history=history)


def validate_generator(G, args, data, stage, epoch):
    """The in-training validation of stages 1 and 2: one fresh network per --eval-model trained on samples
    (n_it = ⌊K·ipc/bs⌋ + 1) and scored. Sound protocol: final accuracy on the validation split. Reference
    protocol: the best test accuracy over the test points. Returns {model: dict(score, top5, split, history)}."""
    n_it = iterations_per_epoch(data.num_classes, args.ipc, args.batch_size, stage)
    was = G.training
    out = {}
    for name in args.eval_model:
        rng = make_generator(args.seed, 'validate', stage, epoch, name)
        net = build_model(name, data, args.stem, args.device, rng)
        if args.protocol == 'reference':
            r = train_onthefly(G, net, args, data, n_it, rng, data.test_loader(args.batch_size, reference_norm=True),
                               args.test_interval, train_mode_test=True, desc=f'validate {name}')
            out[name] = dict(score=r['best'][0], top5=r['best'][1], split='test (best of test points)',
                             history=r['history'])
        else:
            r = train_onthefly(G, net, args, data, n_it, rng, data.val_loader(args.batch_size), None,
                               desc=f'validate {name}')
            out[name] = dict(score=r['final'][0], top5=r['final'][1], split='validation', history=r['history'])
    G.train(was)
    return out


def fixed_set(G, data, ipc, generator, chunk=500):
    """The fixed-mode set: exactly ipc samples per class, class-major labels, standardised with the project's
    dataset constants (as DC/DSA/DM sets, so evaluate_synset treats it like one). CPU tensors."""
    return sample_standardised(G, data.num_classes, ipc, data.real.mean, data.real.std, data.device, generator, chunk)

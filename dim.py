"""DiM: Distilling Dataset into Generative Model (Wang et al., arXiv 2303.04707), SPEC §7.

The code shared by the three DiM scripts, so that loading, model building, augmentation, validation and checkpoints
exist once (the reference carried diverging copies, §12 B16):

    gen_condense.py  stage 1: class-conditional AC-WGAN-GP on the real training set (§7.3)
    pool_match.py    stage 2: the same GAN fine-tuned with model-pool logit matching (§7.4)
    validate.py      stage 3: classifiers trained from scratch on generator samples (§7.6)

Image spaces. The GAN works in [-1, 1] (real images x/127.5 - 1, tanh output). Evaluation and pool networks see
(x + 1)/2 standardised with DiM's dataset constants (§1.4); stage 2's pool keeps the reference's double
normalisation of [-1, 1] images (§12 B11) unless --match_norm consistent.

Evaluation protocol (§0 exception). By default checkpoints are selected on a class-balanced validation split held
out from the training set (--val_split per class), BN networks are tested in eval mode, and the final accuracy is
the number. --compat reference restores the reference: selection and report on the test set (best over test
points), train-mode testing, MNIST/FashionMNIST test images normalised with 0.5/0.5 (§12 B1, B2, B5).

Randomness: every draw comes from a torch.Generator named by (--seed, stage, epoch, ...), never the global RNG,
so a resumed run repeats an uninterrupted one.
"""
import argparse
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data as data_mod
import evaluation
import runner
import utils
from augment import ParamDiffAug, make_dim_augs, parse_strategy, DIM_TOKENS
from networks import DIM_NETWORKS, NETWORKS, define_gan, define_model, get_network, resolve_stem
from utils import UserError, make_generator

# Normalisation of evaluation and pool-model inputs (§1.4); other datasets use the project constants (§1.1).
DIM_CONSTANTS = {
    'CIFAR10': ([0.491, 0.482, 0.447], [0.202, 0.199, 0.201]),
    'SVHN': ([0.437, 0.444, 0.473], [0.198, 0.201, 0.197]),
    'FashionMNIST': ([0.286], [0.353]),
    'MNIST': ([0.131], [0.308]),
}
POOL = ['convnet', 'resnet10', 'resnet18', 'resnet10_ap', 'resnet18_ap']  # §7.4
MATCH_COEFF = {'logit': 0.01, 'grad': 0.001, 'feat': 0.001}  # the reference's hard-coded weights (§12 B8)
GAN_KEYS = ('generator', 'discriminator', 'optim_g', 'optim_d')  # §10.4
# Arguments that fix the GAN's shape: a checkpoint made with other values is foreign.
GAN_ARGS = ('dataset', 'dim_noise', 'cond', 'gan_width')
# Arguments that may change when a run is resumed.
RESUMABLE = ('resume', 'device', 'no_progress', 'epochs', 'print_freq', 'num_workers', 'data_dir', 'output_dir',
             'logs_dir', 'notes')


# ----------------------------------------------------------------------------------------------------------------
# Command line: DiM's hyphenated flags and defaults (§7.2), plus the project's (underscore or hyphen spelling)

def _project(g, name, **kw):
    """A project flag under both spellings, --val_split and --val-split."""
    flags = [f'--{name}'] + ([f'--{name.replace("_", "-")}'] if '_' in name else [])
    g.add_argument(*flags, dest=name, **kw)


def _dead(g, flag, why='unused, as in the reference'):
    # nargs='?' so that both the switch form (--fix-disc) and the valued form (--epochs-match 5) parse
    g.add_argument(flag, default=None, nargs='?', const=True, help=f'accepted and ignored ({why})')


def parser(stage, description):
    """The flags of stage 1 (gen_condense), 2 (pool_match) or 3 (validate)."""
    p = utils.ArgumentParser(description=description)
    g = p.add_argument_group('DiM flags (reference names and defaults, SPEC §7.2)')
    g.add_argument('--data', default='cifar10',
                   help="cifar10, svhn, mnist, fashion (DiM's names) or any project dataset name")
    g.add_argument('--num-classes', type=int, default=None, help="class count (default: the dataset's)")
    g.add_argument('--data-dir', default='./data', help='dataset folder')
    g.add_argument('--output-dir', default='./results/', help='checkpoints and pictures go to <output-dir><tag>')
    g.add_argument('--logs-dir', default='./logs/', help='logs.txt goes to <logs-dir><tag>')
    g.add_argument('--tag', default='test', help='run name')
    g.add_argument('--seed', type=int, default=3407, help='one seed makes the whole run repeatable')
    g.add_argument('--ipc', type=int, default=50, help='evaluation budget in images per class (§7.6)')
    g.add_argument('--batch-size', type=int, default={1: 128, 2: 64, 3: 128}[stage],
                   help='GAN batch; also the batch of evaluation networks')
    g.add_argument('--epochs-eval', type=int, default=1000, help='epochs of every evaluation network')
    g.add_argument('--eval-lr', type=float, default=0.01, help='SGD lr of evaluation (and pool) networks')
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=5e-4)
    g.add_argument('--eval-model', nargs='+', default=['convnet'],
                   help='evaluation architectures: DiM names (convnet, resnet10, resnet18, resnet10_ap, ...) or any '
                        'networks.py name (ConvNet, ResNet18BN, ...)')
    g.add_argument('--dim-noise', type=int, default=100, help='generator input width')
    g.add_argument('--num-workers', type=int, default=4, help='accepted; batches come from tensors on the device')
    g.add_argument('--print-freq', type=int, default=50, help='iterations between log lines')
    g.add_argument('--eval-interval', type=int, default=10, help='epochs between validations and checkpoints')
    g.add_argument('--test-interval', type=int, default=200, help='evaluation epochs between test passes')
    g.add_argument('--aug-type', default='color_crop_cutout', help='DiM DiffAug strategy (§3.3)')
    g.add_argument('--mixup-net', default='cut', choices=['cut', 'vanilla'],
                   help="CutMix ('cut') or mixup ('vanilla') for evaluation networks; 'cut' also drops cutout from "
                        "their augmentation, as the reference does")
    g.add_argument('--mix-p', type=float, default=-1.0, help='probability of mixing a batch (< 0: off)')
    g.add_argument('--beta', type=float, default=1.0, help='Beta(beta, beta) of the mixing ratio')
    if stage in (1, 2):
        g.add_argument('--epochs', type=int, default={1: 150, 2: 100}[stage], help='GAN epochs')
        g.add_argument('--lr', type=float, default={1: 1e-4, 2: 5e-6}[stage],
                       help='Adam lr of G and D (stage 2 overrides the lr of the loaded optimiser states)')
    if stage == 2:
        g.add_argument('--weight', required=True, help='stage-1 checkpoint (e.g. results/gan/best.pth)')
        g.add_argument('--epochs-match-train', type=int, default=16, help='pool-model SGD steps per generator step')
        g.add_argument('--match', default='logit', choices=['logit', 'grad', 'feat'],
                       help='matching loss (the reference defaults to grad; the README recipe uses logit)')
        g.add_argument('--match-aug', default=True, action=argparse.BooleanOptionalAction,
                       help='match on augmented images (the README recipe; --no-match-aug to switch off)')
        g.add_argument('--match-coeff', type=float, default=None,
                       help='weight of the matching loss (default 0.01 for logit, 0.001 for grad and feat)')
        g.add_argument('--metric', default='l1', choices=['l1', 'l2', 'cos'], help='gradient distance (grad mode)')
        g.add_argument('--bias', action='store_true', help='grad mode: also match conv (and fc) biases')
        g.add_argument('--fc', action='store_true', help='grad mode: also match the linear layers')
    if stage == 3:
        g.add_argument('--pretrain-weight', required=True, help='generator checkpoint (stage 1 or 2)')
        for flag in ('--epochs', '--lr', '--epochs-match-train', '--match', '--match-aug', '--match-coeff', '--metric',
                     '--bias', '--fc', '--weight'):
            _dead(g, flag, 'a training flag; validate.py trains no GAN')
    for flag in ('--epochs-match', '--match-model', '--fix-disc'):
        _dead(g, flag)

    g = p.add_argument_group('project additions')
    _project(g, 'device', default=None, help='cuda, cuda:1, cpu ... (default: cuda when available)')
    _project(g, 'compat', default=None, choices=['reference', 'clean'],
             help="default: the reference's training with the sound evaluation protocol; 'reference': also the "
                  "reference's evaluation protocol (test-set selection, train-mode BN tests, §12 B1 B2 B5); 'clean': "
                  "sound protocol and every number-moving fix (--match_norm consistent, --match_joint_bn)")
    _project(g, 'val_split', type=int, default=None,
             help='validation images per class held out of the training set for selecting checkpoints (default: '
                  '10%% of the smallest class, at most 500); ignored with --compat reference')
    _project(g, 'resnet_stem', default='auto', choices=['auto', 'cifar', 'imagenet'],
             help="DiM ResNet stem; 'auto' is the reference rule (CIFAR stem iff the dataset name starts with cifar)")
    _project(g, 'cond', default='overwrite', choices=['overwrite', 'embed'],
             help='label conditioning: one-hot overwrite of the first K noise entries (reference) or a learned '
                  'class embedding')
    _project(g, 'gan_width', type=int, default=196, help='channels of every GAN layer (196: the reference)')
    _project(g, 'no_progress', action='store_true', help='no progress bars')
    if stage in (1, 2):
        _project(g, 'resume', action='store_true', help="continue from <output-dir><tag>/last.pth")
        _project(g, 'iters_per_epoch', type=int, default=None, help='at most this many GAN iterations per epoch')
        _project(g, 'n_critic', type=int, default=1,
                 help='critic steps per generator step, each on its own real batch (reference: 1)')
    if stage == 2:
        _project(g, 'pool', nargs='+', default=None,
                 help=f'pool architectures (default: {" ".join(POOL)}; without _ap on 28x28 data with the ImageNet '
                      f'stem, where they collapse)')
        _project(g, 'match_reduce', default='pair', choices=['pair', 'classmean'],
                 help="'pair': real i vs generated i (reference); 'classmean': class-mean log-probabilities")
        _project(g, 'match_joint_bn', action='store_true',
                 help='one forward pass over real and generated images (shared BN statistics)')
        _project(g, 'match_norm', default='reference', choices=['reference', 'consistent'],
                 help="'consistent': map [-1, 1] to [0, 1] before standardising, as evaluation does (§12 B11)")
        _project(g, 'feat_from', type=int, default=1, help='feat mode: first block matched')
        _project(g, 'feat_to', type=int, default=None, help='feat mode: blocks before this one (default: all)')
    if stage == 3:
        _project(g, 'dim_eval', default='onthefly', choices=['onthefly', 'fixed', 'both'],
                 help="'onthefly': fresh samples every step, ipc a per-epoch budget (reference); 'fixed': ipc images "
                      "per class generated once and evaluated like DC/DM sets")
        _project(g, 'auto_bs', action='store_true', help='shrink --batch-size to K*ipc instead of failing')
        _project(g, 'num_eval', type=int, default=5, help='evaluation networks per architecture (and per set)')
        _project(g, 'num_exp', type=int, default=1, help='fixed mode: independently generated sets')
        _project(g, 'dsa_strategy', default=None,
                 help='fixed mode: DSA strategy of evaluate_synset (default: no flip for MNIST and SVHN)')
        _project(g, 'batch_train', type=int, default=256, help='fixed mode: batch of evaluate_synset')
    return p


def _note(args, msg):
    args.notes.append(msg)  # logged as a warning when the run opens its log (Run.open)


def check_args(args, stage):
    """Validate the flags (UserError: one line) and derive dataset name, device, protocol, defaults."""
    args.stage, args.notes = stage, []
    args.dataset = data_mod.canonical_dataset(args.data)
    positive = ['ipc', 'batch_size', 'epochs_eval', 'eval_lr', 'dim_noise', 'print_freq', 'eval_interval',
                'test_interval', 'gan_width']
    positive += {1: ['epochs', 'lr', 'n_critic'], 2: ['epochs', 'lr', 'n_critic', 'epochs_match_train'],
                 3: ['num_eval', 'num_exp', 'batch_train']}[stage]
    for name in positive:
        utils.check_positive(name.replace('_', '-'), getattr(args, name))
    for name in ('val_split', 'iters_per_epoch', 'num_classes'):
        if getattr(args, name, None) is not None:
            utils.check_positive(name, getattr(args, name))
    args.device = args.device or utils.default_device()
    if str(args.device).startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f'--device {args.device} asked for, but no CUDA device is available; use --device cpu')
    try:
        parse_strategy(args.aug_type, valid=DIM_TOKENS)
    except ValueError as e:
        raise UserError(f'--aug-type: {e}') from None
    for name in args.eval_model:
        check_model_name(name)
    args.protocol = 'reference' if args.compat == 'reference' else 'sound'
    for flag in ('epochs_match', 'match_model', 'fix_disc') + (
            ('epochs', 'lr', 'epochs_match_train', 'match', 'match_aug', 'match_coeff', 'metric', 'bias', 'fc',
             'weight') if stage == 3 else ()):
        if getattr(args, flag, None) is not None:
            script = ('', 'gen_condense', 'pool_match', 'validate')[stage]
            _note(args, f'--{flag.replace("_", "-")} is ignored by {script}.py')
    if stage == 2:
        if args.match_coeff is None:
            args.match_coeff = MATCH_COEFF[args.match]
        if args.compat == 'clean':
            args.match_norm, args.match_joint_bn = 'consistent', True
    if stage == 3 and args.dsa_strategy is not None:
        try:
            parse_strategy(args.dsa_strategy)
        except ValueError as e:
            raise UserError(f'--dsa_strategy: {e}') from None
    return args


def parse_args(stage, description, argv=None):
    return check_args(parser(stage, description).parse_args(argv), stage)


def config(args):
    """The arguments as a JSON-friendly dict (stored in checkpoints and config.json)."""
    ok = (str, int, float, bool, type(None), list, tuple)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(args).items()) if isinstance(v, ok)}


def protocol_label(args):
    """Every DiM result states the protocol that produced it (§0)."""
    if args.stage == 3:
        if args.protocol == 'reference':
            return ('reference protocol (--compat reference): BN networks tested in train mode, 1-channel test images '
                    'normalised 0.5/0.5; final accuracy, and the best over test points (the reference\'s number)')
        return 'sound protocol: networks tested in eval mode, final accuracy reported'
    if args.protocol == 'reference':
        return ('reference protocol (--compat reference): checkpoints selected on the test set (best of test points), '
                'BN networks tested in train mode')
    return 'sound protocol: checkpoints selected on a validation split of the training set, eval-mode tests'


# ----------------------------------------------------------------------------------------------------------------
# Models

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


def pool_members(args, data):
    """The stage-2 pool (§7.4). The default pool drops the _ap ResNets where the ImageNet stem collapses 28x28 maps
    (the parity pool on MNIST and FashionMNIST); an explicit --pool must work as given."""
    names = args.pool or list(POOL)
    if not args.pool and args.stem == 'imagenet' and data.im_size[0] < 32:
        names = [n for n in names if not n.endswith('_ap')]
        _note(args, f'pool without the _ap ResNets on {data.name} (their ImageNet stem collapses '
                    f'{data.im_size[0]}x{data.im_size[1]} inputs); --resnet_stem cifar keeps the full pool')
    for n in names:
        build_model(n, data, args.stem, device='meta')  # fails early, in one line, for a member that cannot run
    return names


def build_gan(args, data):
    """(G, D) freshly initialised from (seed, 'gan_init')."""
    try:
        return define_gan(data.channel, data.num_classes, data.im_size, args.dim_noise, args.cond, args.gan_width,
                          device=args.device, generator=make_generator(args.seed, 'gan_init'))
    except ValueError as e:
        raise UserError(f'GAN for {data.name}: {e} (flags --dim-noise, --cond)') from None


def adam(model, lr):
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.0, 0.9))


def storage(G, data, ipc):
    """The distilled artefact's size next to the image budget it replaces (uint8 images, §7.1)."""
    tensors = list(G.parameters()) + list(G.buffers())
    image_bytes = data.num_classes * ipc * data.channel * data.im_size[0] * data.im_size[1]
    return dict(generator_params=utils.count_parameters(G),
                generator_bytes=sum(t.numel() * t.element_size() for t in tensors),
                image_budget_bytes=image_bytes, ipc=ipc)


def storage_line(s):
    return (f'generator: {s["generator_params"]:,} parameters, {s["generator_bytes"] / 2 ** 20:.2f} MiB; '
            f'the same budget as images: ipc {s["ipc"]} = {s["image_budget_bytes"] / 2 ** 10:.1f} KiB as uint8 '
            f'(x{s["generator_bytes"] / s["image_budget_bytes"]:.1f})')


# ----------------------------------------------------------------------------------------------------------------
# Data (§1.4)

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
    split), evaluation inputs standardised with DiM's constants, and the two DiffAug instances (§3.3)."""

    def __init__(self, data, args, val_split=True):
        self.data, self.name, self.device = data, data.name, data.device
        self.channel, self.im_size, self.num_classes = data.channel, data.im_size, data.num_classes
        self.mean, self.std = DIM_CONSTANTS.get(data.name, (data.mean, data.std))
        all_idx = torch.arange(len(data.labels_train))
        self.val_idx, self.val_per_class = None, None
        if val_split and args.protocol == 'sound':
            smallest = min(len(i) for i in data.indices_class)
            self.val_per_class = args.val_split or max(1, min(500, smallest // 10))
            self.train_idx, self.val_idx = split_validation(data.indices_class, self.val_per_class,
                                                            make_generator(args.seed, 'val_split'))
        else:
            self.train_idx = all_idx
        self.aug_batch, self.aug_rand = make_dim_augs(args.aug_type, args.mixup_net, self.mean, self.std,
                                                      ParamDiffAug())

    def batch(self, idx):
        """Training images at dataset indices idx, in [-1, 1] (the GAN's 0.5/0.5 normalisation), and labels."""
        idx = idx.to(self.device)
        return self.data.x_train[idx].float().div_(127.5).sub_(1), self.data.labels_train[idx]

    def standardise(self, x01):
        """[0, 1] images -> standardised with DiM's constants."""
        return data_mod.standardise(x01, self.mean, self.std, x01.device)

    def val_loader(self, batch_size):
        x, y = self.data.x_train[self.val_idx.to(self.device)], self.data.labels_train[self.val_idx.to(self.device)]
        return data_mod.TensorLoader(x, y, batch_size, transform=lambda b: data_mod.standardise(b, self.mean, self.std,
                                                                                            self.device))

    def test_loader(self, batch_size, reference_norm=False):
        """The test set, standardised with DiM's constants; reference_norm: 0.5/0.5 for 1-channel data (§12 B5)."""
        mean, std = ([0.5], [0.5]) if reference_norm and self.channel == 1 else (self.mean, self.std)
        return data_mod.TensorLoader(self.data.x_test, self.data.labels_test, batch_size,
                                  transform=lambda b: data_mod.standardise(b, mean, std, self.device))


def load_data(args, val_split=True):
    data = data_mod.get_dataset(args.dataset, args.data_dir, device=args.device)
    if args.num_classes is not None and args.num_classes != data.num_classes:
        raise UserError(f'--num-classes {args.num_classes} does not match {data.name} ({data.num_classes} classes); '
                        f'drop the flag')
    args.stem = resolve_stem(args.resnet_stem, data.name)
    return DiMData(data, args, val_split)


def epoch_batches(n, batch_size, generator, limit=None):
    """One epoch of a shuffled, drop_last loader over n items: positions, at most `limit` batches."""
    perm = torch.randperm(n, generator=generator)
    count = n // batch_size if limit is None else min(n // batch_size, limit)
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(count)]


class CyclingBatches:
    """An endless stream of shuffled batches over n items, a new shuffle every pass (drop_last). One stream serves
    the whole run (§12 B9); its state is (pass, position), so a resumed run continues the same stream."""

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


# ----------------------------------------------------------------------------------------------------------------
# AC-WGAN-GP (§7.3)

def generate(G, y, generator):
    """G(z(y)): fresh N(0, I) noise (drawn on the CPU generator), conditioned on labels y."""
    z = torch.randn(len(y), G.dim_noise, generator=generator).to(y.device)
    return G(z, y)


def gradient_penalty(D, real, fake, alpha):
    """10 · mean_i (‖∂s(x̂_i)/∂x̂_i‖₂ − 1)² with x̂_i = α_i x_i + (1 − α_i) x̃_i, on the critic score only.
    The graph is kept (create_graph) so that the penalty trains D through a double backward."""
    a = alpha.to(real.device, real.dtype).view(-1, *[1] * (real.dim() - 1))
    x_hat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    score = D(x_hat)[0]
    grad, = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return 10 * ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def generator_loss(D, fake, y):
    """L_G = −mean s(G(z(y))) + CE(c(G(z(y))), y)."""
    score, logits = D(fake)
    return -score.mean() + F.cross_entropy(logits, y)


def critic_loss(D, real, y, fake, y_fake, alpha):
    """L_D = mean s(x̃) − mean s(x) + CE(c(x̃), ỹ) + CE(c(x), y) + GP; also its parts for the log."""
    s_real, c_real = D(real)
    s_fake, c_fake = D(fake)
    gp = gradient_penalty(D, real, fake, alpha)
    ce = F.cross_entropy(c_fake, y_fake) + F.cross_entropy(c_real, y)
    wd = s_real.mean() - s_fake.mean()
    return -wd + ce + gp, dict(wd=wd.item(), gp=gp.item(), d_ce=ce.item())


def generator_step(G, D, opt_g, y, generator, extra=None):
    """One Adam step on G with L_G (+ extra(fake), stage 2's matching loss). D takes no gradient here: the
    reference computes D's and clears them before D's own step, which is the same update."""
    D.eval()  # a no-op for the LayerNorm critic, kept from the reference
    D.requires_grad_(False)
    try:
        fake = generate(G, y, generator)
        loss = generator_loss(D, fake, y)
        parts = dict(g=loss.item())
        if extra is not None:
            match = extra(fake)
            loss = loss + match
            parts['match'] = match.item()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
    finally:
        D.requires_grad_(True)
        D.train()
    return parts


def critic_step(G, D, opt_d, x, y, num_classes, generator):
    """One Adam step on D: uniform random labels ỹ, x̃ = G(z(ỹ)) without gradients (G stays in train mode)."""
    y_fake = torch.randint(num_classes, (len(x),), generator=generator).to(x.device)
    with torch.no_grad():
        fake = generate(G, y_fake, generator)
    alpha = torch.rand(len(x), generator=generator)
    loss, parts = critic_loss(D, x, y, fake, y_fake, alpha)
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return dict(d=loss.item(), **parts)


# ----------------------------------------------------------------------------------------------------------------
# Stage-2 matching (§7.4)

def class_means(v, y, num_classes):
    """Mean row of v per class present in y (K' x D, classes in increasing order)."""
    return utils.class_means(v, y, num_classes)[torch.unique(y)]


def _two_passes(f, real, fake, joint_bn):
    if joint_bn:  # one pass: BN statistics over real and generated images together (§12 B10 alternative)
        out = f(torch.cat([real, fake]))
        return out[:len(real)], out[len(real):]
    return f(real), f(fake)


def logit_match_loss(net, real, fake, y, reduce='pair', joint_bn=False):
    """(1/(B·K)) Σ_i Σ_k [log softmax(f(x_i))_k − log softmax(f(g_i))_k]², x_i and g_i paired by batch index (same
    label); reduce 'classmean' compares class-mean log-probabilities instead. The real branch is not detached."""
    lr_, lf = _two_passes(net, real, fake, joint_bn)
    pr, pf = F.log_softmax(lr_, 1), F.log_softmax(lf, 1)
    if reduce == 'classmean':
        pr, pf = class_means(pr, y, pr.shape[1]), class_means(pf, y, pf.shape[1])
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
    and summed over blocks (the reference's feat mode crashes; this is the project's version, §7.4)."""
    if not hasattr(net, 'block_features'):
        raise UserError(f'--match feat needs per-block features; {type(net).__name__} has none (use convnet, '
                        f'the DiM ResNets or densenet in --pool)')
    fr, ff = _two_passes(net.block_features, real, fake, joint_bn)
    blocks = range(len(fr))[first:last]
    if len(blocks) == 0:
        raise UserError(f'--feat_from {first} --feat_to {last} select no block of {len(fr)}')
    K = int(y.max()) + 1
    return sum(((class_means(fr[b].flatten(1), y, K) - class_means(ff[b].flatten(1), y, K)) ** 2).mean()
               for b in blocks)


class PoolMatcher:
    """Stage 2's extra generator loss (§7.4): at every epoch a freshly initialised pool member, trained on the fly
    on real data (--epochs-match-train SGD steps per generator step, from ONE persistent cycling stream); its logits
    (or gradients, or features) on real versus generated images are matched."""

    def __init__(self, args, data):
        self.args, self.data = args, data
        self.pool = pool_members(args, data)
        self.stream = CyclingBatches(len(data.train_idx), args.batch_size, args.seed, 'pool_stream')
        self.net, self.name = None, None

    def start_epoch(self, epoch):
        a = self.args
        g = make_generator(a.seed, 'pool_member', epoch)
        self.name = self.pool[int(torch.randint(len(self.pool), (1,), generator=g))]
        self.net = build_model(self.name, self.data, a.stem, a.device, g).train()
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
# Evaluation networks trained on generator samples (§7.6)

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
    """n_it (§7.6): ⌊K·ipc/bs⌋ + 1 in the stage-1/2 validation, ⌊K·ipc/bs⌋ in validate.py (kept per script,
    §12 B16)."""
    return num_classes * ipc // batch_size + (1 if stage in (1, 2) else 0)


def train_onthefly(G, net, args, data, n_it, generator, loader, test_every=None, train_mode_test=False, desc=None):
    """Train net from scratch on fresh generator samples (§7.6): every epoch n_it SGD steps, each on bs new
    samples ((x + 1)/2, then aug_rand) with random labels (a permutation of the K classes when bs = K).
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
        g = make_generator(args.seed, 'validate', stage, epoch, name)
        net = build_model(name, data, args.stem, args.device, g)
        if args.protocol == 'reference':
            r = train_onthefly(G, net, args, data, n_it, g, data.test_loader(args.batch_size, reference_norm=True),
                               args.test_interval, train_mode_test=True, desc=f'validate {name}')
            out[name] = dict(score=r['best'][0], top5=r['best'][1], split='test (best of test points)',
                             history=r['history'])
        else:
            r = train_onthefly(G, net, args, data, n_it, g, data.val_loader(args.batch_size), None,
                               desc=f'validate {name}')
            out[name] = dict(score=r['final'][0], top5=r['final'][1], split='validation', history=r['history'])
    G.train(was)
    return out


@torch.no_grad()
def fixed_set(G, data, ipc, generator, chunk=500):
    """The fixed-mode set (§7.6): exactly ipc samples per class, class-major labels, from G in eval mode, mapped to
    [0, 1] and standardised with the project's dataset constants (utils, as DC/DSA/DM sets). CPU tensors."""
    was = G.training
    G.eval()
    labels = torch.arange(data.num_classes).repeat_interleave(ipc)
    parts = [generate(G, y.to(data.device), generator) for y in labels.split(chunk)]
    G.train(was)
    x01 = (torch.cat(parts) + 1) / 2
    return data_mod.standardise(x01, data.data.mean, data.data.std, x01.device).cpu(), labels


# ----------------------------------------------------------------------------------------------------------------
# Run folder, log, checkpoints (§10.3, §10.4)

class Run:
    """<output-dir><tag>/ holds checkpoints, config.json and outputs/img_<epoch>.png; <logs-dir><tag>/logs.txt the
    log. The log file is opened only once the inputs are checked, so a rejected command leaves earlier logs alone."""

    def __init__(self, args):
        self.args = args
        self.dir = os.path.join(args.output_dir, args.tag)
        self.log_dir = os.path.join(args.logs_dir, args.tag)
        self.log = utils.Log()

    def path(self, name):
        return os.path.join(self.dir, name)

    def open(self, append=False):
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        self.log.open(os.path.join(self.log_dir, 'logs.txt'), append)
        utils.write_json(self.path('config.json'), dict(args=config(self.args), protocol=protocol_label(self.args),
                                                        versions=utils.versions()))
        for line in self.args.notes:
            self.log(f'warning: {line}')

    def close(self):
        self.log.close()


def save_checkpoint(path, G, D, opt_g, opt_d, epoch, args, **extra):
    utils.atomic_save(dict(generator=G.state_dict(), discriminator=D.state_dict(), optim_g=opt_g.state_dict(),
                           optim_d=opt_d.state_dict(), epoch=epoch, args=config(args), **extra), path)


def _link(src, dst):
    """dst as a second name of src (a copy where hard links are not possible): same bytes, no second write."""
    tmp = dst + '.tmp'
    if os.path.exists(tmp):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load_checkpoint(path, flag, keys=('generator',)):
    """A DiM checkpoint dict; UserError (one line) when it is missing, unreadable or lacks `keys`."""
    if not os.path.isfile(path):
        raise UserError(f'{flag} {path}: no such file (stage 1 writes <output-dir><tag>/best.pth)')
    try:
        ck = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f'{flag} {path} is not a readable checkpoint ({type(e).__name__}); pass a .pth written by '
                        f'gen_condense.py or pool_match.py') from None
    if not isinstance(ck, dict) or any(k not in ck for k in keys):
        raise UserError(f'{flag} {path} is not a DiM checkpoint (it needs the keys {", ".join(keys)})')
    return ck


def check_foreign(ck, args, flag, path):
    """A checkpoint made for another dataset or GAN shape is refused, naming the flag that would fit it."""
    made = ck.get('args') or {}
    for k in GAN_ARGS:
        if k in made and made[k] != getattr(args, k):
            cli = {'dataset': 'data', 'dim_noise': 'dim-noise'}.get(k, k)
            raise UserError(f'{flag} {path} was made with --{cli} {made[k]}, this run has {getattr(args, k)}; pass '
                            f'--{cli} {made[k]}')


def load_into(model, state, flag, path, what):
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'{flag} {path}: its {what} does not fit this GAN ({first[:150]})') from None


def load_generator(path, args, data, flag='--pretrain-weight'):
    """G from a checkpoint's `generator` (all validate.py reads, §10.4), in eval mode."""
    ck = load_checkpoint(path, flag)
    check_foreign(ck, args, flag, path)
    G, _ = build_gan(args, data)
    load_into(G, ck['generator'], flag, path, 'generator')
    return G.eval(), ck


@torch.no_grad()
def save_preview(G, path, num_classes, channel, seed):
    """K columns (classes 0..K-1 in every row), up to 10 rows, fixed noise, G in eval mode (§10.3)."""
    was = G.training
    G.eval()
    rows = max(1, min(10, 100 // num_classes))
    y = torch.arange(num_classes).repeat(rows).to(next(G.parameters()).device)
    x = generate(G, y, make_generator(seed, 'preview'))
    G.train(was)
    runner.save_image_grid(path, x, [0.5] * channel, [0.5] * channel, nrow=num_classes)


def fingerprint(args):
    return {k: v for k, v in config(args).items() if k not in RESUMABLE}


def resume_state(args, run, G, D, opt_g, opt_d, matcher=None):
    """Restore last.pth into the models and optimisers; the training state dict. UserError if absent/foreign."""
    path = run.path('last.pth')
    if not os.path.isfile(path):
        raise UserError(f'--resume: no checkpoint at {path}; run without --resume to start')
    ck = load_checkpoint(path, '--resume', GAN_KEYS + ('state',))
    old, new = {k: v for k, v in ck['args'].items() if k not in RESUMABLE}, fingerprint(args)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise UserError(f'cannot resume: {path} belongs to another run (differs in {", ".join(diff)}); rerun with '
                        f'the same flags or drop --resume')
    for model, key in ((G, 'generator'), (D, 'discriminator'), (opt_g, 'optim_g'), (opt_d, 'optim_d')):
        load_into(model, ck[key], '--resume', path, key)
    if matcher is not None:
        matcher.load_state_dict(ck['state']['matcher'])
    return ck['state']


# ----------------------------------------------------------------------------------------------------------------
# The GAN training loop of stages 1 and 2

def _better(score, best):
    return best is None or score > best['score']


def train_gan(args, run, data, G, D, opt_g, opt_d, state=None, matcher=None):
    """Stages 1 and 2: every epoch, iterations of one G step (with the matcher's loss in stage 2) then one D step
    on a shuffled, drop_last pass over the training images; a preview; and every --eval-interval epochs (and at
    the last) validation, selection (best.pth, best_<model>.pth) and checkpoints; last.pth after every epoch.
    Every draw of epoch e comes from generators named by (seed, stage, e): a resumed run repeats the original."""
    stage = 2 if matcher is not None else 1
    state = state or dict(epoch=0, best={}, best_all=None, history=[])
    K, n = data.num_classes, len(data.train_idx)
    if n < args.batch_size:
        raise UserError(f'--batch-size {args.batch_size} exceeds the {n} training images')
    os.makedirs(run.path('outputs'), exist_ok=True)
    for epoch in range(state['epoch'], args.epochs):
        g = make_generator(args.seed, f'stage{stage}', epoch)
        batches = epoch_batches(n, args.batch_size, g, args.iters_per_epoch)
        if matcher is not None:
            run.log(f'epoch {epoch}: pool model {matcher.start_epoch(epoch)}')
        G.train()
        D.train()
        bar = tqdm(batches, desc=f'stage {stage} epoch {epoch}', disable=args.no_progress, dynamic_ncols=True)
        for it, b in enumerate(bar):
            x, y = data.batch(data.train_idx[b])
            parts = {}
            if it % args.n_critic == 0:
                extra = None if matcher is None else (lambda fake: matcher.loss(x, y, fake))
                parts.update(generator_step(G, D, opt_g, y, g, extra))
            parts.update(critic_step(G, D, opt_d, x, y, K, g))
            bar.set_postfix({k: f'{v:.3f}' for k, v in parts.items()})
            if it % args.print_freq == 0 or it + 1 == len(batches):
                run.log(f'epoch {epoch} iter {it + 1}/{len(batches)}: ' + ', '.join(f'{k} {v:.4f}' for k, v in
                                                                                   parts.items()))
        bar.close()
        save_preview(G, run.path(os.path.join('outputs', f'img_{epoch}.png')), K, data.channel, args.seed)

        if (epoch + 1) % args.eval_interval == 0 or epoch + 1 == args.epochs:
            if stage == 1:
                save_checkpoint(run.path(f'model_dict_{epoch}.pth'), G, D, opt_g, opt_d, epoch, args)
            scores = validate_generator(G, args, data, stage, epoch)
            state['history'].append(dict(epoch=epoch, scores={m: s['score'] for m, s in scores.items()}))
            for name, s in scores.items():
                best = state['best'].get(name)
                if _better(s['score'], best):
                    state['best'][name] = best = dict(score=s['score'], epoch=epoch)
                    path = run.path(f'best_{name}.pth')
                    save_checkpoint(path, G, D, opt_g, opt_d, epoch, args, selection=dict(
                        model=name, split=s['split'], top1=s['score'], protocol=args.protocol))
                    if stage == 2:
                        _link(path, run.path(f'model_dict_{name}.pth'))  # the reference's name
                run.log(f'epoch {epoch}: {name} {s["split"]} accuracy {100 * s["score"]:.2f}% (top-5 '
                        f'{100 * s["top5"]:.2f}%); best {100 * best["score"]:.2f}% at epoch {best["epoch"]}')
            mean = float(np.mean([s['score'] for s in scores.values()]))
            if _better(mean, state['best_all']):
                state['best_all'] = dict(score=mean, epoch=epoch)
                src = run.path(f'best_{args.eval_model[0]}.pth')
                if len(scores) == 1:
                    _link(src, run.path('best.pth'))
                else:
                    save_checkpoint(run.path('best.pth'), G, D, opt_g, opt_d, epoch, args,
                                    selection=dict(model='mean of ' + ', '.join(scores), split=s['split'], top1=mean,
                                                   protocol=args.protocol))
                run.log(f'epoch {epoch}: new best.pth (mean {s["split"]} accuracy {100 * mean:.2f}%)')
        state['epoch'] = epoch + 1
        extra = dict(state=dict(state, matcher=matcher.state_dict() if matcher is not None else None))
        save_checkpoint(run.path('last.pth'), G, D, opt_g, opt_d, epoch, args, **extra)
    return state


def start(args):
    """Shared start of stages 1 and 2: data, run folder, GAN and optimisers (fresh or from --weight)."""
    data = load_data(args)
    run = Run(args)
    G, D = build_gan(args, data)
    opt_g, opt_d = adam(G, args.lr), adam(D, args.lr)
    return data, run, G, D, opt_g, opt_d


def header(args, run, data, G, stage):
    run.log(f'DiM stage {stage} {args.tag}: {data.name} ({data.num_classes} classes, '
            f'{data.channel}x{data.im_size[0]}x{data.im_size[1]}), device {args.device}, seed {args.seed}')
    run.log(f'protocol: {protocol_label(args)}')
    if data.val_idx is not None:
        run.log(f'validation split: {data.val_per_class} images per class held out of the training set '
                f'({len(data.train_idx)} left for training)')
    run.log(storage_line(storage(G, data, args.ipc)))
    run.log(f'arguments: {config(args)}')


# ----------------------------------------------------------------------------------------------------------------
# Stage 3: the two labelled evaluation modes (§7.6)

def check_budget(args, data):
    """validate.py trains n_it = ⌊K·ipc/bs⌋ steps per epoch: bs > K·ipc would train nothing (§12 B3)."""
    budget = data.num_classes * args.ipc
    if args.batch_size > budget:
        if not args.auto_bs:
            raise UserError(f'--batch-size {args.batch_size} exceeds K*ipc = {budget}, so an epoch would train 0 '
                            f'steps; pass --batch-size {budget} or less, or --auto_bs')
        _note(args, f'--auto_bs: batch size {args.batch_size} -> {budget} (K*ipc)')
        args.batch_size = budget


def evaluate_onthefly(G, args, data, log):
    """On-the-fly mode: --num_eval fresh networks per --eval-model, each trained --epochs-eval epochs of
    ⌊K·ipc/bs⌋ steps on fresh samples. Sound protocol: final test accuracy in eval mode. Reference protocol:
    final accuracy with train-mode tests and the reference's test normalisation, plus the best over test points
    (the reference's number), labelled as such."""
    ref = args.protocol == 'reference'
    n_it = iterations_per_epoch(data.num_classes, args.ipc, args.batch_size, 3)
    loader = data.test_loader(args.batch_size, reference_norm=ref)
    label = f'on-the-fly (ipc {args.ipc} = {n_it} x {args.batch_size} fresh samples per epoch), ' + (
        'reference protocol' if ref else 'sound protocol')
    out = dict(mode='onthefly', label=label, steps_per_epoch=n_it, epochs=args.epochs_eval, models={})
    for name in args.eval_model:
        finals, top5, bests = [], [], []
        for i in range(args.num_eval):
            g = make_generator(args.seed, 'onthefly', name, i)
            net = build_model(name, data, args.stem, args.device, g)
            r = train_onthefly(G, net, args, data, n_it, g, loader, args.test_interval if ref else None, ref,
                               desc=f'{name} #{i}')
            finals.append(r['final'][0])
            top5.append(r['final'][1])
            bests.append(r['best'][0])
        m, s = utils.mean_std(finals)
        entry = dict(final=dict(mean=m, std=s, all=finals), final_top5=dict(zip(('mean', 'std'), utils.mean_std(top5))))
        log(f'[{label}] {name}: final test accuracy {m:.2f} ± {s:.2f}% over {args.num_eval} models')
        if ref:
            mb, sb = utils.mean_std(bests)
            entry['best_over_test_points'] = dict(mean=mb, std=sb, all=bests)
            log(f'[{label}] {name}: best over test points (the reference\'s number) {mb:.2f} ± {sb:.2f}%')
        out['models'][name] = entry
    return out


def fixed_strategy(args, data):
    if args.dsa_strategy:
        return args.dsa_strategy
    return 'color_crop_cutout_scale_rotate' if data.name in ('MNIST', 'SVHN') else 'color_crop_cutout_flip_scale_rotate'


def evaluate_fixed(G, args, data, run):
    """Fixed mode: --num_exp sets of exactly ipc samples per class, each evaluated like a DC/DSA/DM set
    (utils.evaluate_synset: DSA, --epochs-eval epochs, lr x0.1 halfway, batch --batch_train) by --num_eval networks
    per --eval-model; written in the project's results layout (§10.1)."""
    strategy = fixed_strategy(args, data)
    ev = argparse.Namespace(device=args.device, lr_net=args.eval_lr, epoch_eval_train=args.epochs_eval,
                            batch_train=args.batch_train, dsa=True, dsa_strategy=strategy, dsa_param=ParamDiffAug(),
                            dc_aug_param=None)
    label = f'fixed set ({args.ipc} images per class generated once, evaluate_synset, DSA {strategy})'
    sets, accs = [], {}
    testloader = data.data.testloader()
    for exp in range(args.num_exp):
        images, labels = fixed_set(G, data, args.ipc, make_generator(args.seed, 'fixed_set', exp))
        sets.append([images, labels])
        for name in args.eval_model:
            for i in tqdm(range(args.num_eval), desc=f'fixed set {exp}: {name}', leave=False, disable=args.no_progress):
                g = make_generator(args.seed, 'fixed_net', exp, name, i)
                net = build_model(name, data, args.stem, args.device, g)
                _, _, acc = evaluation.evaluate_synset(i, net, images, labels, testloader, ev,
                                                  generator=make_generator(args.seed, 'fixed_eval', exp, name, i))
                accs.setdefault(name, []).append(acc)
        keep = (torch.arange(len(labels)) % args.ipc < 50).nonzero()[:, 0]  # at most 50 per class in a picture
        runner.save_image_grid(run.path(f'vis_DiM_{data.name}_{args.ipc}ipc_exp{exp}.png'), images[keep],
                              data.data.mean, data.data.std, nrow=min(args.ipc, 50))
    path = run.path(f'res_DiM_{data.name}_GAN_{args.ipc}ipc.pt')
    meta = dict(dataset=data.name, im_size=list(data.im_size), channel=data.channel, mean=data.data.mean,
                std=data.data.std, normalised=True, method='DiM', model='GAN', ipc=args.ipc, args=config(args),
                seed=args.seed, versions=utils.versions(),
                protocol=dict(mode='fixed', label=label, epoch_eval_train=args.epochs_eval, dsa=True,
                              dsa_strategy=strategy, generator=args.pretrain_weight))
    runner.save_results(path, sets, accs, meta)
    out = dict(mode='fixed', label=label, results_file=path, models={})
    for name, a in accs.items():
        m, s = utils.mean_std(a)
        out['models'][name] = dict(final=dict(mean=m, std=s, all=a))
        run.log(f'[{label}] {name}: test accuracy {m:.2f} ± {s:.2f}% over {args.num_exp} x {args.num_eval} models')
    return out

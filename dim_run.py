"""DiM runs: the command line, run folder, checkpoints and training loop of the three DiM stage scripts, and the
two evaluation modes of stage 3. The method itself (GAN, losses, matching, evaluation networks) is dim.py.

    gen_condense.py  stage 1: class-conditional AC-WGAN-GP on the real training set
    pool_match.py    stage 2: the same GAN fine-tuned with model-pool logit matching
    validate.py      stage 3: classifiers trained from scratch on generator samples

The reference carried a diverging copy of this plumbing in every script; here it exists once (docs/design.md,
D-B16).

Evaluation protocol. By default checkpoints are selected on a class-balanced validation split held out from the
training set (--val_split per class), BN networks are tested in eval mode, and the final accuracy is the number.
--compat reference restores the reference: selection and report on the test set (best over test points),
train-mode testing, MNIST/FashionMNIST test images normalised with 0.5/0.5 (docs/design.md, D-B1, D-B2, D-B5).

Randomness: every draw comes from a torch.Generator named by (--seed, stage, epoch, ...), never the global RNG,
so a resumed run repeats an uninterrupted one.
"""
import argparse
import os
import shlex
import shutil
import sys

import numpy as np
import torch
from tqdm import tqdm

import data as data_mod
import evaluation
import parallel
import runner
import utils
from augment import DIM_TOKENS, ParamDiffAug, parse_strategy
from cli import FLAGS
from dim import (MATCH_COEFF, POOL, ClassScore, DiMData, GANStep, GeneratorEMA, adam, build_gan, build_model,
                 check_model_name, default_pool, epoch_batches, fixed_set, generate, generator_bytes,
                 iterations_per_epoch, train_onthefly)
from graphs import graphs_enabled
from networks import DIM_CONDITIONINGS, DIM_CRITIC_HEADS, resolve_stem
from utils import UserError, make_generator

GAN_KEYS = ('generator', 'discriminator', 'optim_g', 'optim_d')  # what a GAN checkpoint must hold
# Arguments that fix the GAN's shape: a checkpoint made with other values is foreign.
GAN_ARGS = ('dataset', 'im_size', 'dim_noise', 'cond', 'gan_width', 'critic')
# Arguments that may change when a run is resumed.
RESUMABLE = ('resume', 'device', 'no_progress', 'epochs', 'print_freq', 'num_workers', 'data_dir', 'output_dir',
             'logs_dir', 'notes', 'cas', 'cuda_graphs')
SCRIPTS = {1: 'gen_condense', 2: 'pool_match', 3: 'validate'}


# ----------------------------------------------------------------------------------------------------------------
# Command line: DiM's hyphenated flags and defaults, plus the project's (underscore or hyphen spelling)

def _both_spellings(group, name, **kw):
    """A project flag under both spellings, --val_split and --val-split."""
    flags = [f'--{name}'] + ([f'--{name.replace("_", "-")}'] if '_' in name else [])
    group.add_argument(*flags, dest=name, **kw)


def _accepted_and_ignored(group, name, why='unused, as in the reference'):
    """--name-with-hyphens (and --name_with_underscores for the project's flags, PROJECT_SPELLING)."""
    flags = ['--' + name.replace('_', '-')] + (['--' + name] if name in PROJECT_SPELLING else [])
    # nargs='?' so that both the switch form (--fix-disc) and the valued form (--epochs-match 5) parse
    group.add_argument(*flags, dest=name, default=None, nargs='?', const=True, help=f'accepted and ignored ({why})')


IGNORED = ('epochs_match', 'match_model', 'fix_disc')  # reference flags no stage uses
STAGE3_IGNORED = ('epochs', 'lr', 'epochs_match_train', 'match', 'match_aug', 'match_coeff', 'metric', 'bias', 'fc',
                  'weight', 'print_freq', 'eval_interval', 'val_split')  # training flags, meaningless to validate.py
PROJECT_SPELLING = ('val_split',)  # of these, the project's spelling is accepted too


def parser(stage, description):
    """The flags of stage 1 (gen_condense), 2 (pool_match) or 3 (validate)."""
    p = utils.ArgumentParser(description=description)
    ref = p.add_argument_group('DiM flags (the reference names and defaults)')
    ref.add_argument('--data', '--dataset', dest='data', default='cifar10',
                     help="cifar10, svhn, mnist, fashion (DiM's names), any project dataset name, or folder:PATH / "
                          "file:PATH.pt for your own data (README.md, 'Your own data')")
    ref.add_argument('--num-classes', type=int, default=None, help="class count (default: the dataset's)")
    ref.add_argument('--data-dir', '--data_path', dest='data_dir', default='data', help='dataset folder')
    ref.add_argument('--output-dir', '--save_path', dest='output_dir', default='./results/',
                     help='checkpoints and pictures go to <output-dir>/<tag>')
    ref.add_argument('--logs-dir', default='./logs/', help='logs.txt goes to <logs-dir>/<tag> (each run appends to it)')
    ref.add_argument('--tag', default='test', help='run name')
    ref.add_argument('--seed', type=int, default=3407, help='one seed makes the whole run repeatable')
    ref.add_argument('--ipc', type=int, default=50, help='evaluation budget in images per class')
    ref.add_argument('--batch-size', type=int, default={1: 128, 2: 64, 3: 128}[stage],
                     help='batch of the evaluation networks' + ('' if stage == 3 else ' and of the GAN'))
    ref.add_argument('--epochs-eval', type=int, default=1000, help='epochs of every evaluation network')
    ref.add_argument('--eval-lr', type=float, default=0.01, help='SGD lr of evaluation (and pool) networks')
    ref.add_argument('--momentum', type=float, default=0.9, help='SGD momentum of evaluation (and pool) networks')
    ref.add_argument('--weight-decay', type=float, default=5e-4,
                     help='SGD weight decay of evaluation (and pool) networks')
    ref.add_argument('--eval-model', nargs='+', default=['convnet'],
                     help='evaluation architectures: DiM names (convnet, resnet10, resnet18, resnet10_ap, ...) or '
                          'any networks.py name (ConvNet, ResNet18BN, ...)')
    ref.add_argument('--dim-noise', type=int, default=100, help='generator input width')
    ref.add_argument('--num-workers', type=int, default=4,
                     help='accepted for compatibility; ignored (batches come from tensors on the device)')
    ref.add_argument('--test-interval', type=int, default=200, help='evaluation epochs between test passes')
    ref.add_argument('--aug-type', default='color_crop_cutout', help='DiM DiffAug strategy')
    ref.add_argument('--mixup-net', default='cut', choices=['cut', 'vanilla'],
                     help="CutMix ('cut') or mixup ('vanilla') for evaluation networks; 'cut' also drops cutout "
                          "from their augmentation, as the reference does")
    ref.add_argument('--mix-p', type=float, default=-1.0, help='probability of mixing a batch (< 0: off)')
    ref.add_argument('--beta', type=float, default=1.0, help='Beta(beta, beta) of the mixing ratio')
    if stage in (1, 2):
        ref.add_argument('--print-freq', type=int, default=50, help='GAN iterations between log lines')
        ref.add_argument('--eval-interval', type=int, default=10, help='epochs between validations and checkpoints')
        ref.add_argument('--epochs', type=int, default={1: 150, 2: 100}[stage], help='GAN epochs')
        ref.add_argument('--lr', type=float, default={1: 1e-4, 2: 5e-6}[stage],
                         help='Adam lr of G and D (stage 2 overrides the lr of the loaded optimiser states)')
    if stage == 2:
        ref.add_argument('--weight', required=True, help='stage-1 checkpoint (e.g. results/gan/best.pth)')
        ref.add_argument('--epochs-match-train', type=int, default=16, help='pool-model SGD steps per generator step')
        ref.add_argument('--match', default='logit', choices=['logit', 'grad', 'feat'],
                         help='matching loss (the reference defaults to grad; the README recipe uses logit)')
        ref.add_argument('--match-aug', default=True, action=argparse.BooleanOptionalAction,
                         help='match on augmented images (the README recipe; --no-match-aug to switch off)')
        ref.add_argument('--match-coeff', type=float, default=None,
                         help='weight of the matching loss (default 0.01 for logit, 0.001 for grad and feat)')
        ref.add_argument('--metric', default='l1', choices=['l1', 'l2', 'cos'], help='gradient distance (grad mode)')
        ref.add_argument('--bias', action='store_true', help='grad mode: also match conv (and fc) biases')
        ref.add_argument('--fc', action='store_true', help='grad mode: also match the linear layers')
    if stage == 3:
        ref.add_argument('--pretrain-weight', required=True, help='generator checkpoint (stage 1 or 2)')
        for name in STAGE3_IGNORED:
            _accepted_and_ignored(ref, name, 'a training flag; validate.py trains no GAN')
    for name in IGNORED:
        _accepted_and_ignored(ref, name)

    own = p.add_argument_group('project additions')
    _both_spellings(own, 'device', default=None, help='cuda, cuda:1, cpu ... (default: cuda when available)')
    _both_spellings(own, 'cuda_graphs', **FLAGS['cuda_graphs'])
    _both_spellings(own, 'compat', default=None, choices=['reference', 'clean'],
                    help="default: the reference's training with the sound evaluation protocol; 'reference': also "
                         "the reference's evaluation protocol (test-set selection, train-mode BN tests; "
                         "docs/design.md D-B1 D-B2 D-B5); 'clean': sound protocol and every number-moving fix "
                         "(--match_norm consistent, --match_joint_bn)")
    _both_spellings(own, 'resnet_stem', default='auto', choices=['auto', 'cifar', 'imagenet'],
                    help="DiM ResNet stem; 'auto' is the reference rule (CIFAR stem iff the dataset name starts "
                         "with cifar)")
    _both_spellings(own, 'cond', default='overwrite', choices=DIM_CONDITIONINGS,
                    help="label conditioning: 'overwrite', one-hot overwrite of the first K noise entries (reference); "
                         "'embed', a learned class embedding added to the noise; 'cbn', the embedding plus "
                         "class-conditional batch norm in every generator layer")
    _both_spellings(own, 'gan_width', type=int, default=196, help='channels of every GAN layer (196: the reference)')
    _both_spellings(own, 'critic', default='ac', choices=DIM_CRITIC_HEADS,
                    help="the critic's head: 'ac' (the reference's AC-GAN: a class head trained with cross-entropy on "
                         "real and generated images, which G must also satisfy) or 'projection' (a class-dependent "
                         "score, no classification loss; more diverse samples within a class at small budgets, "
                         "docs/results.md)")
    _both_spellings(own, 'no_progress', action='store_true', help='no progress bars')
    _both_spellings(own, 'im_size', type=int, default=None,
                    help="folder: data: resize every image to this square size (the GAN makes 28, 32 or 64; default: "
                         "the images' own size)")
    if stage in (1, 2):
        _both_spellings(own, 'val_split', type=int, default=None,
                        help='validation images per class held out of the training set for selecting checkpoints '
                             '(default: 10%% of the smallest class, at most 500); ignored with --compat reference')
        _both_spellings(own, 'resume', action='store_true', help="continue from <output-dir><tag>/last.pth")
        _both_spellings(own, 'iters_per_epoch', type=int, default=None,
                        help='at most this many GAN iterations per epoch (default: a whole pass over the training '
                             'images)')
        _both_spellings(own, 'n_critic', type=int, default=1,
                        help='critic steps per generator step, each on its own real batch (reference: 1)')
        _both_spellings(own, 'gp_every', type=int, default=1,
                        help='apply the gradient penalty on every k-th critic step only, weighted by k (lazy '
                             'regularisation; 1: every step, the reference). k = 4 saves about 28 %% of a CPU '
                             'iteration (docs/benchmarks.md)')
        _both_spellings(own, 'mode_seeking', type=float, default=0.0,
                        help="weight of a mode-seeking term in the generator's loss (MSGAN, Mao et al. 2019: two "
                             "noises of one class must give different images; 1 is MSGAN's; 0: off, the reference)")
        _both_spellings(own, 'g_ema', type=float, default=0.0,
                        help='sample from an exponential moving average of the generator weights with this decay '
                             '(e.g. 0.999, with a warm-up (1+t)/(10+t) over the first updates; 0: off, the reference): '
                             'validation, previews and checkpoints then use the averaged generator, and validate.py '
                             'samples from it')
        _both_spellings(own, 'cas', action='store_true',
                        help='log a classification accuracy score after every epoch: the share of generator samples of '
                             'class c that a small ConvNet, trained once at the start on the real training images, '
                             'labels c (about a minute on a CPU core for MNIST; no effect on training)')
    if stage == 2:
        _both_spellings(own, 'pool', nargs='+', default=None,
                        help=f'pool architectures (default: {" ".join(POOL)}; without _ap on 28x28 data with the '
                             f'ImageNet stem, where they collapse)')
        _both_spellings(own, 'match_reduce', default='pair', choices=['pair', 'classmean'],
                        help="'pair': real i vs generated i (reference); 'classmean': class-mean log-probabilities")
        _both_spellings(own, 'match_joint_bn', action='store_true',
                        help='one forward pass over real and generated images (shared BN statistics)')
        _both_spellings(own, 'match_norm', default='reference', choices=['reference', 'consistent'],
                        help="'consistent': map [-1, 1] to [0, 1] before standardising, as evaluation does "
                             "(docs/design.md, D-B11)")
        _both_spellings(own, 'feat_from', type=int, default=1, help='feat mode: first block matched')
        _both_spellings(own, 'feat_to', type=int, default=None, help='feat mode: blocks before this one (default: all)')
    if stage == 3:
        _both_spellings(own, 'dim_eval', default='onthefly', choices=['onthefly', 'fixed', 'both'],
                        help="'onthefly': fresh samples every step, ipc a per-epoch budget (reference); 'fixed': ipc "
                             "images per class generated once and evaluated like DC/DM sets")
        _both_spellings(own, 'auto_bs', action='store_true', help='shrink --batch-size to K*ipc instead of failing')
        _both_spellings(own, 'num_eval', type=int, default=5, help='evaluation networks per architecture (and per set)')
        _both_spellings(own, 'num_exp', type=int, default=1, help='fixed mode: independently generated sets')
        _both_spellings(own, 'dsa_strategy', default=None,
                        help='fixed mode: DSA strategy of evaluate_synset (default: '
                             'color_crop_cutout_flip_scale_rotate, without flip for MNIST and SVHN)')
        _both_spellings(own, 'batch_train', type=int, default=256, help='fixed mode: batch of evaluate_synset')
    return p


def check_args(args, stage):
    """Validate the flags (UserError: one line) and derive everything the run needs from them: dataset name,
    device, protocol, ResNet stem, stage defaults, validate.py's batch size under --auto_bs, and `notes`, the
    warnings the run's log opens with. Nothing writes to args after this."""
    notes = []
    ignored = IGNORED + (STAGE3_IGNORED if stage == 3 else ())
    args.stage = stage
    args.dataset = data_mod.canonical_dataset(args.data)
    info = data_mod.dataset_info(args.dataset, args.data_dir, args.im_size)
    im_size, num_classes = info.im_size, info.num_classes
    positive = ['ipc', 'batch_size', 'epochs_eval', 'eval_lr', 'dim_noise', 'test_interval', 'gan_width']
    gan = ['epochs', 'lr', 'n_critic', 'gp_every', 'print_freq', 'eval_interval']
    positive += {1: gan, 2: gan + ['epochs_match_train'], 3: ['num_eval', 'num_exp', 'batch_train']}[stage]
    utils.check_finite(args)
    utils.check_output_folder(args.output_dir, '--output-dir')
    utils.check_output_folder(args.logs_dir, '--logs-dir')
    if not sys.stderr.isatty():
        args.no_progress = True  # carriage-return bar updates would fill a redirected log
    for name in positive:
        utils.check_positive(name.replace('_', '-'), getattr(args, name))
    for name in ('val_split', 'iters_per_epoch', 'num_classes', 'im_size'):
        if getattr(args, name, None) is not None and name not in ignored:
            utils.check_positive(name, getattr(args, name))
    if getattr(args, 'mode_seeking', 0.0) < 0:
        raise UserError(f'--mode_seeking must be >= 0 (0: off), got {args.mode_seeking}')
    if not 0 <= getattr(args, 'g_ema', 0.0) < 1:
        raise UserError(f'--g_ema must be in [0, 1) (0: off), got {args.g_ema}')
    args.device = utils.resolve_device(args.device)
    args.no_progress = args.no_progress or not parallel.is_main()
    try:
        parse_strategy(args.aug_type, valid=DIM_TOKENS)
    except ValueError as e:
        raise UserError(f'--aug-type: {e}') from None
    for name in args.eval_model:
        check_model_name(name)
    args.protocol = 'reference' if args.compat == 'reference' else 'sound'
    args.stem = resolve_stem(args.resnet_stem, args.dataset)
    for flag in ignored:
        if getattr(args, flag, None) is not None:
            notes.append(f'--{flag.replace("_", "-")} is ignored by {SCRIPTS[stage]}.py')
    if stage == 2:
        if args.match_coeff is None:
            args.match_coeff = MATCH_COEFF[args.match]
        if args.compat == 'clean':
            args.match_norm, args.match_joint_bn = 'consistent', True
        if not args.pool and default_pool(args.stem, im_size[0]) != POOL:
            notes.append(f'pool without the _ap ResNets on {info.name} (their ImageNet stem collapses '
                         f'{im_size[0]}x{im_size[1]} inputs); --resnet_stem cifar keeps the full pool')
    if stage == 3:
        if args.dsa_strategy is not None:
            try:
                parse_strategy(args.dsa_strategy)
            except ValueError as e:
                raise UserError(f'--dsa_strategy: {e}') from None
        args.batch_size = _stage3_batch_size(args, num_classes, notes)
    args.notes = tuple(notes)  # recorded in config.json and checkpoints, logged as warnings by Run.open
    return args


def _stage3_batch_size(args, num_classes, notes):
    """validate.py trains n_it = ⌊K·ipc/bs⌋ steps per epoch: bs > K·ipc would train nothing (docs/design.md,
    D-B3). The batch size to use: --batch-size, or K·ipc with --auto_bs; UserError otherwise."""
    budget = num_classes * args.ipc
    if args.batch_size <= budget:
        return args.batch_size
    if not args.auto_bs:
        raise UserError(f'--batch-size {args.batch_size} exceeds K*ipc = {budget}, so an epoch would train 0 '
                        f'steps; pass --batch-size {budget} or less, or --auto_bs')
    notes.append(f'--auto_bs: batch size {args.batch_size} -> {budget} (K*ipc)')
    return budget


def parse_args(stage, description, argv=None):
    return check_args(parser(stage, description).parse_args(argv), stage)


# What the command a stage prints for the next one carries over, where it differs from the next stage's default:
# the data, the GAN's shape (a checkpoint made with other values is refused), where the outputs go, and the
# experiment's evaluation protocol and GAN training options. Not carried: the run's own flags (tag, resume,
# checkpoints), the stage-specific ones (batch size, epochs, lr: their defaults differ between stages) and what
# the next stage ignores.
CARRIED = ('data', 'num_classes', 'data_dir', 'im_size', 'output_dir', 'logs_dir', 'dim_noise', 'cond', 'gan_width',
           'critic', 'seed', 'compat', 'resnet_stem', 'ipc', 'eval_model', 'epochs_eval', 'eval_lr', 'momentum',
           'weight_decay', 'aug_type', 'mixup_net', 'mix_p', 'beta', 'test_interval', 'eval_interval', 'print_freq',
           'val_split', 'iters_per_epoch', 'n_critic', 'gp_every', 'mode_seeking', 'g_ema')
NEXT_TAG = {2: 'match', 3: 'test'}  # the next stage's tag: this run's tag with this suffix


def next_command(args, stage, weight, num_classes):
    """The command line of DiM stage `stage` (2 or 3) on this run's checkpoint `weight`, runnable as printed (from
    the same directory): the script's path from there, CARRIED flags, the device when it is not the default, and
    for validate.py --auto_bs when its default batch would exceed K*ipc."""
    actions = {a.dest: a for a in parser(stage, '')._actions}
    ignored = IGNORED + (STAGE3_IGNORED if stage == 3 else ())
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), f'{SCRIPTS[stage]}.py')
    relative = os.path.relpath(script)
    argv = ['python', script if relative.startswith('..') else relative, {2: '--weight', 3: '--pretrain-weight'}[stage],
            weight, '--tag', f'{args.tag}_{NEXT_TAG[stage]}']
    for name in CARRIED:
        action, value = actions.get(name), getattr(args, name, None)
        if action is None or name in ignored or value == action.default:
            continue
        argv += [action.option_strings[0], *map(str, value if isinstance(value, (list, tuple)) else [value])]
    device = args.device if parallel.world_size() == 1 else torch.device(args.device).type  # torchrun: cuda:<rank>
    if device != utils.default_device():
        argv += ['--device', device]
    if stage == 3 and num_classes * args.ipc < actions['batch_size'].default:
        argv.append('--auto_bs')
    return shlex.join(argv)


def config(args):
    """The arguments as a JSON-friendly dict (stored in checkpoints, config.json and results)."""
    return runner.fingerprint(args)


def protocol_label(args):
    """Every DiM result states the protocol that produced it."""
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
# Data, GAN and the artefact's size

def load_data(args, val_split=True):
    """The dataset as the DiM stages see it (dim.DiMData); val_split False: no validation split (stage 3)."""
    real = data_mod.get_dataset(args.dataset, args.data_dir, device=args.device, im_size=args.im_size)
    if args.num_classes is not None and args.num_classes != real.num_classes:
        raise UserError(f'--num-classes {args.num_classes} does not match {real.name} ({real.num_classes} classes); '
                        f'drop the flag')
    return DiMData(real, args, val_split)


def new_gan(args, data):
    """(G, D) freshly initialised from the stream (seed, 'gan_init')."""
    return build_gan(data, args.dim_noise, args.cond, args.gan_width, args.device,
                     make_generator(args.seed, 'gan_init'), critic=args.critic)


def new_ema(args, G):
    """The averaged generator of --g_ema, starting from G's weights; None when off."""
    return GeneratorEMA(G, args.g_ema) if args.g_ema else None


def continue_ema(ema, G, ck):
    """After G was loaded from checkpoint ck: the average continues ck's when it holds one, else starts afresh
    from G's loaded weights (a stage-1 run without --g_ema)."""
    if ema is None:
        return
    if 'generator_ema' in ck:
        ema.load_state_dict(ck['generator_ema'])
    else:
        ema.G.load_state_dict(G.state_dict())
        ema.steps = 0


def storage(G, data, ipc):
    """The distilled artefact's size next to the image budget it replaces (ipc uint8 images per class)."""
    image_bytes = data.num_classes * ipc * data.channel * data.im_size[0] * data.im_size[1]
    return dict(generator_params=utils.count_parameters(G), generator_bytes=generator_bytes(G),
                image_budget_bytes=image_bytes, ipc=ipc)


def storage_line(s):
    return (f'generator: {s["generator_params"]:,} parameters, {s["generator_bytes"] / 2 ** 20:.2f} MiB; '
            f'the same budget as images: ipc {s["ipc"]} = {s["image_budget_bytes"] / 2 ** 10:.1f} KiB as uint8 '
            f'(x{s["generator_bytes"] / s["image_budget_bytes"]:.1f})')


# ----------------------------------------------------------------------------------------------------------------
# Run folder, log, checkpoints

class Run:
    """<output-dir><tag>/ holds checkpoints, config.json and outputs/img_<epoch>.png; <logs-dir><tag>/logs.txt the
    log. The log file is opened only once the inputs are checked, and appended to."""

    def __init__(self, args):
        self.args = args
        self.dir = os.path.join(args.output_dir, args.tag)
        self.log_dir = os.path.join(args.logs_dir, args.tag)
        self.log = utils.Log()
        self._config_written = False

    def path(self, name):
        return os.path.join(self.dir, name)

    def open(self):
        """Start the log (appended to logs.txt, after a header line); refuse a run folder that holds a run on
        other data."""
        runner.check_same_data(self.args, [self.path('config.json')], 'pass another --tag or --output-dir')
        os.makedirs(self.dir, exist_ok=True)
        utils.hold_lock(self.path('run.lock'), self.dir, 'pass another --tag')
        utils.remove_stale_temps(self.dir)
        os.makedirs(self.log_dir, exist_ok=True)
        self.log.open(os.path.join(self.log_dir, 'logs.txt'))
        for line in self.args.notes:
            self.log(f'warning: {line}')
        if self.args.stage in (1, 2):
            runner.warn_fresh_start(self.args.resume, self.path('last.pth'), self.log)

    def write_config(self):
        """config.json, written with the run's first checkpoint or results (not when it starts), so that it always
        describes the files beside it: a run that fails at its first step leaves an earlier run's config alone."""
        if not self._config_written:
            utils.write_json(self.path('config.json'), dict(args=config(self.args), protocol=protocol_label(self.args),
                                                            versions=utils.versions(),
                                                            world_size=parallel.world_size()))
            self._config_written = True

    def close(self):
        self.log.close()
        utils.release_lock(self.path('run.lock'))


def save_checkpoint(path, G, D, opt_g, opt_d, epoch, args, ema=None, **extra):
    """generator, discriminator, optim_g, optim_d, epoch and args (config(args)), plus `extra` (selection, state),
    and with --g_ema generator_ema (the averaged weights, which validate.py samples from)."""
    if ema is not None:
        extra['generator_ema'] = ema.state_dict()
    utils.atomic_save(dict(generator=G.state_dict(), discriminator=D.state_dict(), optim_g=opt_g.state_dict(),
                           optim_d=opt_d.state_dict(), epoch=epoch, args=config(args), **extra), path)


def _link(src, dst):
    """dst as a second name of src (a copy where hard links are not possible): same bytes, no second write."""
    if not parallel.is_main():
        return
    tmp = os.path.join(os.path.dirname(dst), f'.{os.path.basename(dst)}.link.tmp')  # swept by Run.open if left
    if os.path.exists(tmp):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load_checkpoint(path, flag, keys=('generator',)):
    """A DiM checkpoint dict; UserError (one line) when it is missing, unreadable or lacks `keys`."""
    if not os.path.isfile(path):
        raise UserError(f'{flag} {path}: no such file (stage 1 writes <output-dir><tag>/best.pth)')
    try:
        ck = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        advice = ('delete or move it to start afresh' if flag == '--resume' else
                  'pass a .pth written by gen_condense.py or pool_match.py')
        raise UserError(f'{flag}: {utils.unreadable(path, e)}; {advice}') from None
    if not isinstance(ck, dict) or any(k not in ck for k in keys):
        raise UserError(f'{flag} {path} is not a DiM checkpoint (it needs the keys {", ".join(keys)})')
    utils.refuse_non_finite(ck, f'{flag} {path}', 'delete it and rerun with a lower --lr' if flag == '--resume' else
                            'pass a checkpoint of a run that did not diverge (an earlier model_dict_<epoch>.pth)')
    return ck


def check_foreign(ck, args, flag, path):
    """A checkpoint made for another dataset or GAN shape is refused, naming the flag that would fit it."""
    made = ck.get('args') or {}
    for k in GAN_ARGS:
        if k in made and made[k] != getattr(args, k):
            cli = {'dataset': 'data', 'dim_noise': 'dim-noise'}.get(k, k)
            theirs = f'--{cli} {made[k]}' if made[k] is not None else f'no --{cli}'
            raise UserError(f'{flag} {path} was made with {theirs}, this run has {getattr(args, k)}; '
                            + (f'pass {theirs}' if made[k] is not None else f'drop --{cli}'))


def load_into(model, state, flag, path, what):
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'{flag} {path}: its {what} does not fit this GAN ({first[:150]})') from None


def load_gan_states(ck, G, D, opt_g, opt_d, flag, path):
    """G, D and both optimisers from a checkpoint's GAN_KEYS."""
    for model, key in zip((G, D, opt_g, opt_d), GAN_KEYS):
        load_into(model, ck[key], flag, path, key)


def sampling_weights(ck):
    """(state dict, its name) of the generator to sample from: the averaged weights of a --g_ema run, else
    `generator`."""
    if 'generator_ema' in ck:
        return ck['generator_ema']['generator'], 'generator_ema'
    return ck['generator'], 'generator'


def load_generator(path, args, data, flag='--pretrain-weight'):
    """G from a checkpoint's sampling weights (all validate.py reads; sampling_weights), in eval mode; and the
    checkpoint."""
    ck = load_checkpoint(path, flag)
    check_foreign(ck, args, flag, path)
    G, _ = new_gan(args, data)
    state, name = sampling_weights(ck)
    load_into(G, state, flag, path, name)
    return G.eval(), ck


def load_weight(args, G, D, opt_g, opt_d, ema=None):
    """Stage 2's start: G, D and both optimiser states from --weight, their lr set to --lr (the loaded states
    carry stage 1's); the --g_ema average continued (continue_ema)."""
    ck = load_checkpoint(args.weight, '--weight', GAN_KEYS)
    check_foreign(ck, args, '--weight', args.weight)
    load_gan_states(ck, G, D, opt_g, opt_d, '--weight', args.weight)
    continue_ema(ema, G, ck)


def set_lr(lr, *optimisers):
    for opt in optimisers:
        for group in opt.param_groups:
            group['lr'] = lr


def resume_state(args, run, G, D, opt_g, opt_d, matcher=None, ema=None):
    """Restore last.pth into the models and optimisers (and the matcher's stream, the --g_ema average); the
    training state dict. UserError if it is absent or belongs to another run."""
    path = run.path('last.pth')
    if not os.path.isfile(path):
        raise UserError(f'--resume: no checkpoint at {path}; run without --resume to start')
    ck = load_checkpoint(path, '--resume', GAN_KEYS + ('state',))
    theirs = {k: v for k, v in ck['args'].items() if k not in RESUMABLE}
    runner.check_same_run(path, theirs, runner.fingerprint(args, RESUMABLE))
    load_gan_states(ck, G, D, opt_g, opt_d, '--resume', path)
    continue_ema(ema, G, ck)
    if matcher is not None:
        matcher.load_state_dict(ck['state']['matcher'])
    return ck['state']


@torch.no_grad()
def save_preview(G, path, num_classes, channel, seed):
    """K columns (classes 0..K-1 in every row), up to 10 rows, fixed noise, G in eval mode."""
    was = G.training
    G.eval()
    rows = max(1, min(10, 100 // num_classes))
    y = torch.arange(num_classes).repeat(rows).to(next(G.parameters()).device)
    x = generate(G, y, make_generator(seed, 'preview'))
    G.train(was)
    runner.save_image_grid(path, x, [0.5] * channel, [0.5] * channel, nrow=num_classes)


# ----------------------------------------------------------------------------------------------------------------
# Stages 1 and 2: setup, header, the GAN training loop with validation and selection

def prepare_gan_run(args):
    """Shared start of stages 1 and 2: data, run folder (not yet opened), fresh GAN and its optimisers."""
    data = load_data(args)
    run = Run(args)
    G, D = new_gan(args, data)
    opt_g, opt_d = adam(G, args.lr), adam(D, args.lr)
    for opt in (opt_g, opt_d):
        parallel.average_gradients(opt)  # under torchrun: data parallelism over the GAN batch
    return data, run, G, D, opt_g, opt_d


def log_header(args, run, data, G):
    run.log(f'DiM stage {args.stage} {args.tag}: {data.name} ({data.num_classes} classes, '
            f'{data.channel}x{data.im_size[0]}x{data.im_size[1]}), device {args.device}, seed {args.seed}')
    if parallel.world_size() > 1:
        run.log(f'torchrun: {parallel.world_size()} processes, data parallel: each takes its share of every epoch\'s '
                f'batches of {args.batch_size} and the gradients are averaged (effective batch '
                f'{parallel.world_size() * args.batch_size}); rank 0 writes')
    run.log(f'protocol: {protocol_label(args)}')
    if data.val_idx is not None:
        run.log(f'validation split: {data.val_per_class} images per class held out of the training set '
                f'({len(data.train_idx)} left for training)')
    run.log(storage_line(storage(G, data, args.ipc)))
    run.log(f'arguments: {config(args)}')


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


def _better(score, best):
    return best is None or score > best['score']


def train_gan(args, run, data, G, D, opt_g, opt_d, state=None, matcher=None, ema=None):
    """Stages 1 and 2. Every epoch: iterations of one G step (with the matcher's loss in stage 2) and one D step
    on a shuffled, drop_last pass over the training images, then a preview; every --eval-interval epochs (and at
    the last) validation and selection (best.pth, best_<model>.pth; model_dict_<epoch>.pth in stage 1); last.pth
    after every epoch. Every draw of epoch e comes from generators named by (seed, stage, e), so a resumed run
    repeats the original. With --g_ema (`ema`) the averaged generator is the one previewed, scored and validated.
    Returns the training state: epoch, best (per model), best_all (mean), history."""
    stage = 2 if matcher is not None else 1
    sampler = G if ema is None else ema.G
    state = state or dict(epoch=0, best={}, best_all=None, history=[])
    if len(data.train_idx) < args.batch_size:
        raise UserError(f'--batch-size {args.batch_size} exceeds the {len(data.train_idx)} training images')
    os.makedirs(run.path('outputs'), exist_ok=True)

    def save(path, epoch, **extra):
        run.write_config()
        save_checkpoint(path, G, D, opt_g, opt_d, epoch, args, ema, **extra)

    cas = None
    if args.cas and state['epoch'] < args.epochs:
        cas = ClassScore(data, args.seed)
        run.log(f'--cas: classifier trained on the real training images; CAS of the start: {100 * cas.score(sampler):.1f}%')
    gan = GANStep(G, D, opt_g, opt_d, data.num_classes, args.n_critic, args.gp_every, args.mode_seeking, ema,
                  None if matcher is None else matcher.loss, graphs_enabled(args.device, args.cuda_graphs))
    for epoch in range(state['epoch'], args.epochs):
        _train_epoch(args, run, data, gan, stage, epoch, matcher)
        save_preview(sampler, run.path(os.path.join('outputs', f'img_{epoch}.png')), data.num_classes, data.channel,
                     args.seed)
        if cas is not None:
            run.log(f'epoch {epoch}: CAS {100 * cas.score(sampler):.1f}% (share of eval-mode samples of class c that a '
                    f'real-data classifier labels c; chance {100 / data.num_classes:.0f}%)')
        if (epoch + 1) % args.eval_interval == 0 or epoch + 1 == args.epochs:
            if stage == 1:
                save(run.path(f'model_dict_{epoch}.pth'), epoch)
            scores = validate_generator(sampler, args, data, stage, epoch)
            state['history'].append(dict(epoch=epoch, scores={m: s['score'] for m, s in scores.items()}))
            _select_per_model(args, run, state, scores, epoch, save, stage)
            _select_overall(args, run, state, scores, epoch, save)
        state['epoch'] = epoch + 1
        save(run.path('last.pth'), epoch,
             state=dict(state, matcher=matcher.state_dict() if matcher is not None else None))
    return state


def _train_epoch(args, run, data, gan, stage, epoch, matcher):
    """One epoch of GAN iterations (dim.GANStep); every draw from the stream (seed, 'stage<stage>', epoch). Under
    torchrun the processes split the epoch's batches (the same shuffle on each, as a distributed sampler does) and
    draw their own noise; their replicas stay equal through averaged gradients and, after the epoch, rank 0's BN
    statistics."""
    rng = make_generator(args.seed, f'stage{stage}', epoch)
    batches = epoch_batches(len(data.train_idx), args.batch_size, rng, args.iters_per_epoch)
    size = parallel.world_size()
    if size > 1:
        batches = batches[parallel.rank()::size][:len(batches) // size]  # equal counts: every step is collective
        rng = make_generator(args.seed, f'stage{stage}', epoch, 'rank', parallel.rank())
    gan.use_stream(rng)
    if matcher is not None:
        run.log(f'epoch {epoch}: pool model {matcher.start_epoch(epoch)}')
    gan.G.train()
    gan.D.train()
    # the epoch's batch indices reach the device in one copy
    idx = data.train_idx[torch.stack(batches)].to(data.device) if batches else None
    bar = tqdm(range(len(batches)), desc=f'stage {stage} epoch {epoch}', disable=args.no_progress, dynamic_ncols=True)
    for it in bar:
        parts = gan(it, *data.batch(idx[it]))
        if it % args.print_freq == 0 or it + 1 == len(batches):  # reading the losses makes the host wait
            parts = {k: float(v) for k, v in parts.items()}
            bar.set_postfix({k: f'{v:.3f}' for k, v in parts.items()})
            # A diverged GAN stays diverged: checked where the losses are logged, and before every checkpoint.
            utils.check_losses(parts, f'stage {stage} epoch {epoch} iteration {it}', f'lower --lr (now {args.lr})')
            run.log(f'epoch {epoch} iter {it + 1}/{len(batches)}: ' +
                    ', '.join(f'{k} {v:.4f}' for k, v in parts.items()))
    bar.close()
    parallel.broadcast_buffers(gan.G, gan.D, *([] if gan.ema is None else [gan.ema.G]))  # each rank's BN statistics


def _select_per_model(args, run, state, scores, epoch, save, stage):
    """best_<model>.pth for every model whose validation score improved (stage 2 also names it
    model_dict_<model>.pth, the reference's name); a log line per model."""
    for name, s in scores.items():
        best = state['best'].get(name)
        if _better(s['score'], best):
            state['best'][name] = best = dict(score=s['score'], epoch=epoch)
            path = run.path(f'best_{name}.pth')
            save(path, epoch, selection=dict(model=name, split=s['split'], top1=s['score'], protocol=args.protocol))
            if stage == 2:
                _link(path, run.path(f'model_dict_{name}.pth'))
        run.log(f'epoch {epoch}: {name} {s["split"]} accuracy {100 * s["score"]:.2f}% (top-5 '
                f'{100 * s["top5"]:.2f}%); best {100 * best["score"]:.2f}% at epoch {best["epoch"]}')


def _select_overall(args, run, state, scores, epoch, save):
    """best.pth when the mean score over the models improved: the first model's best_<model>.pth when it is the
    only model, else a checkpoint of its own."""
    mean = float(np.mean([s['score'] for s in scores.values()]))
    if not _better(mean, state['best_all']):
        return
    state['best_all'] = dict(score=mean, epoch=epoch)
    split = list(scores.values())[-1]['split']  # the same for every model
    if len(scores) == 1:
        _link(run.path(f'best_{args.eval_model[0]}.pth'), run.path('best.pth'))
    else:
        save(run.path('best.pth'), epoch, selection=dict(model='mean of ' + ', '.join(scores), split=split,
                                                         top1=mean, protocol=args.protocol))
    run.log(f'epoch {epoch}: new best.pth (mean {split} accuracy {100 * mean:.2f}%)')


# ----------------------------------------------------------------------------------------------------------------
# Stage 3: the two labelled evaluation modes (docs/design.md, D-B4)

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
    networks = args.num_eval * len(args.eval_model)
    log(f'plan: {networks} network(s), each {args.epochs_eval} epochs of {n_it:,} steps on {args.batch_size} fresh '
        f'samples ({networks * args.epochs_eval * n_it:,} steps in all; --ipc sets the steps per epoch)')
    for name in args.eval_model:
        def train_one(i, name=name):
            rng = make_generator(args.seed, 'onthefly', name, i)
            net = build_model(name, data, args.stem, args.device, rng)
            r = train_onthefly(G, net, args, data, n_it, rng, loader, args.test_interval if ref else None, ref,
                               desc=f'{name} #{i}')
            return r['final'][0], r['final'][1], r['best'][0]

        def report(i, r, name=name):
            log(f'  {name} #{i}: final test accuracy {100 * r[0]:.2f}% (top-5 {100 * r[1]:.2f}%)')

        # under torchrun the networks are spread over the processes
        finals, top5, bests = zip(*evaluation.train_shared(args.num_eval, train_one, report))
        finals, top5, bests = list(finals), list(top5), list(bests)
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
    digits = args.dataset in ('MNIST', 'SVHN')  # by name: a user's folder called MNIST is not the digits
    return 'color_crop_cutout_scale_rotate' if digits else 'color_crop_cutout_flip_scale_rotate'


def evaluate_fixed(G, args, data, run):
    """Fixed mode: --num_exp sets of exactly ipc samples per class, each evaluated like a DC/DSA/DM set
    (evaluation.evaluate_synset: DSA, --epochs-eval epochs, lr x0.1 halfway, batch --batch_train) by --num_eval
    networks per --eval-model; written in the project's results layout (runner.save_results)."""
    strategy = fixed_strategy(args, data)
    recipe = evaluation.EvalRecipe(epoch_eval_train=args.epochs_eval, lr_net=args.eval_lr,
                                   batch_train=args.batch_train, device=args.device, dsa=True, dsa_strategy=strategy,
                                   dsa_param=ParamDiffAug(), dc_aug_param=None)
    label = f'fixed set ({args.ipc} images per class generated once, evaluate_synset, DSA {strategy})'
    real = data.real
    sets, accs = [], {}
    testloader = real.testloader()
    stem = f'DiM_{data_mod.file_label(args.dataset, args.im_size)}'
    for exp in range(args.num_exp):
        images, labels = fixed_set(G, data, args.ipc, make_generator(args.seed, 'fixed_set', exp))
        sets.append([images, labels])
        for name in args.eval_model:
            def build(i, name=name):
                return (build_model(name, data, args.stem, args.device,
                                    make_generator(args.seed, 'fixed_net', exp, name, i)),
                        make_generator(args.seed, 'fixed_eval', exp, name, i))

            def report(i, result, name=name):
                run.log(f'  fixed set {exp}: {name} #{i}: test accuracy {100 * result[1]:.2f}% ({result[2]})')

            results, _ = evaluation.evaluate_networks(args.num_eval, build, images, labels, testloader, recipe, report)
            accs.setdefault(name, []).extend(acc for _, acc, _ in results)
        keep = (torch.arange(len(labels)) % args.ipc < 50).nonzero()[:, 0]  # at most 50 per class in a picture
        run.write_config()
        runner.save_image_grid(run.path(f'vis_{stem}_{args.ipc}ipc_exp{exp}.png'), images[keep], real.mean, real.std,
                               nrow=min(args.ipc, 50))
    path = run.path(f'res_{stem}_GAN_{args.ipc}ipc.pt')
    meta = dict(dataset=data.name, im_size=list(data.im_size), channel=data.channel, mean=real.mean, std=real.std,
                classes=real.class_names, normalised=True, method='DiM', model='GAN', ipc=args.ipc, args=config(args),
                seed=args.seed, versions=utils.versions(), world_size=parallel.world_size(),
                protocol=dict(mode='fixed', label=label, epoch_eval_train=args.epochs_eval, dsa=True,
                              dsa_strategy=strategy, generator=args.pretrain_weight))
    runner.save_results(path, sets, accs, meta)
    out = dict(mode='fixed', label=label, results_file=path, models={})
    for name, a in accs.items():
        m, s = utils.mean_std(a)
        out['models'][name] = dict(final=dict(mean=m, std=s, all=a))
        run.log(f'[{label}] {name}: test accuracy {m:.2f} ± {s:.2f}% over {args.num_exp} x {args.num_eval} models')
    return out

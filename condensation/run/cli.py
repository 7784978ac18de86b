"""The command lines of every script: flags declared once, and their validation.

Each flag is declared once in FLAGS with its help text; a script adds the flags it takes with `add_flags`, giving
its own defaults (the original scripts differ: main.py ipc 1, main_DM.py ipc 50, CL_DM.py ipc 20, DiM seed 3407,
...). `check_args` validates whichever of them a script has and derives the settings they imply (canonical dataset
name, device, DSA parameters), so no script repeats a check. The DiM stages keep DiM's own hyphenated flags beside
the shared ones: they are FLAGS entries too, which `dim_parser` picks from the DIM_* name lists for each stage
and spells with hyphens only; each stage prints the command of the next (`next_command`). This layer
imports no method module: DiM's checks that need the method's tables live in run/dim_stages.py.
"""
import argparse
import os
import shlex
import sys

import torch

from condensation import common
from condensation.augment import ParamDiffAug, parse_strategy
from condensation.common import SCRIPTS_DIR, Domain, UserError, check_device, check_output_folder, default_device, \
    set_precision
from condensation.data import canonical_dataset, dataset_info
from condensation.device import parallel
from condensation.evaluation import get_eval_pool
from condensation.networks import DIM_CONDITIONINGS, DIM_CRITIC_HEADS, NETWORKS, get_network

FLAGS = {
    'dataset': dict(default='CIFAR10', aliases=('--data',),
                    help='MNIST, FashionMNIST, SVHN, CIFAR10, CIFAR100, TinyImageNet; your own data: folder:PATH '
                         '(PATH/train/<class>/*.png and PATH/test/<class>/) or file:PATH.pt (a prepared tensor file; '
                         'docs/reference.md, "Your own data")'),
    'im_size': dict(type=int, default=None,
                    help="folder: datasets: resize every image to this square size (28, 32, 64 suit every network; "
                         "default: the images' own size, which must then be one size)"),
    'model': dict(default='ConvNet', help='network used for matching (see networks.NETWORKS)'),
    'ipc': dict(type=int, default=1, help='images per class'),
    'eval_mode': dict(default='S', choices=['S', 'SS', 'M', 'B', 'W', 'D', 'A', 'P', 'N'],
                      help='evaluation pool: S = the matching model without BN, SS = the matching model, M/B/W/D/A/P/N '
                           '= the named pools of evaluation.get_eval_pool'),
    'num_exp': dict(type=int, default=5, help='independent synthesis runs'),
    'num_eval': dict(type=int, default=20, help='networks trained per evaluation'),
    'epoch_eval_train': dict(type=int, default=300, help='epochs to train each evaluation network'),
    'Iteration': dict(type=int, default=1000, help='synthesis iterations'),
    'lr_img': dict(type=float, default=0.1, help='learning rate of the images'),
    'lr_net': dict(type=float, default=0.01, help='learning rate of the networks'),
    'batch_real': dict(type=int, default=256, help='real images per class per step'),
    'batch_train': dict(type=int, default=256, help='batch size for training networks'),
    'init': dict(default='noise', choices=['noise', 'real'],
                 help='initialise the synthetic set from noise or from random real images'),
    'dsa_strategy': dict(default='None',
                         help="DSA ops joined by '_' (color, crop, cutout, flip, scale, rotate); None disables DSA"),
    'data_path': dict(default='data', aliases=('--data-dir', '--data_dir'), help='dataset folder'),
    'save_path': dict(default='result', aliases=('--output-dir', '--output_dir'),
                      help='where results, images, logs and checkpoints go'),
    'dis_metric': dict(default='ours', choices=['ours', 'mse', 'cos'], help='gradient distance (DC/DSA)'),
    'seed': dict(type=int, default=0, help='one seed makes the whole run repeatable'),
    'device': dict(default=None, help='cuda, cuda:1, cpu ... (default: cuda when available)'),
    'resume': dict(action='store_true', help="continue from this run's checkpoint"),
    'checkpoint_every': dict(type=int, default=100, help='iterations between checkpoints'),
    'align_corners': dict(choices=['false', 'true'], default='false',
                          help='grid convention of DSA scale/rotate (the original, on torch 1.2, behaves as true)'),
    'no_progress': dict(action='store_true', help='no progress bar'),
    'compat': dict(choices=['reference', 'clean'], default='reference',
                   help="'reference' keeps the original's number-moving quirks; 'clean' fixes them all "
                        "(docs/design.md lists them)"),
    'outer_loop': dict(type=int, default=None,
                       help="DC/DSA: image steps per network, T (default: the original's table by ipc)"),
    'inner_loop': dict(type=int, default=None, help='DC/DSA: network epochs on the synthetic set between image steps '
                                                    "(default: the original's table by ipc)"),
    'per_class': dict(action=argparse.BooleanOptionalAction, default=None,
                      help="DM: one class's graph at a time (the original README's out-of-memory trick; the same "
                           "gradient for models without BN; default: off)"),
    'real_chunk': dict(type=int, default=None,
                       help='DM: embed the real images in chunks of this many (exact for models without BN; saves '
                            'memory; default: 16 per torch thread on a CPU, where it is also faster, all at once on '
                            'CUDA)'),
    'amp': dict(choices=['off', 'bf16'], default='off',
                help="'bf16': the matching network's forward passes (DM) and the evaluation training in bfloat16 "
                     "autocast; faster on recent GPUs, float32 otherwise (docs/reference.md, GPU speed)"),
    'precision': dict(choices=['default', 'tf32', 'ieee'], default='default',
                      help="CUDA's float32 convolutions and matrix products: 'tf32' (TensorFloat-32, faster on "
                           "Ampere and later), 'ieee' (full float32), 'default' (PyTorch's: TF32 convolutions, full "
                           "float32 matrix products); --amp bf16 runs in bfloat16 where it applies. The log and the "
                           "results record the precision that ran (docs/reference.md, GPU speed)"),
    'cuda_graphs': dict(choices=['on', 'off'], default='on',
                        help="on CUDA, replay the DM step, the DC/DSA passes, the evaluation epochs (DSA or no "
                             "augmentation) and the GAN iterations of DiM stage 1 and CL as CUDA graphs, each checked "
                             "against an eager step on its first replays; 'off' runs them eagerly (the same "
                             "computation, float rounding aside; docs/reference.md, GPU speed)"),
    'compile': dict(choices=['on', 'off'], default='off',
                    help="DM: 'on' compiles the matching network's forward with torch.compile (inductor), which fuses "
                         "each block's normalisation, activation and pooling; the first iterations wait for the "
                         "compiler "
                         "(docs/benchmarks.md)"),
    # The conditional GAN of DiM's stages and CL's DiM memories (and the shape of main_ITGAN.py's generator)
    'gan_width': dict(type=int, default=196, help='channels of every GAN layer (196: the reference)'),
    'cond': dict(default='overwrite', choices=DIM_CONDITIONINGS,
                 help="label conditioning: 'overwrite', one-hot overwrite of the first K noise entries (the "
                      "reference); "
                      "'embed', a learned class embedding added to the noise (learns the classes in far fewer "
                      "iterations); 'cbn', the embedding plus class-conditional batch norm in every generator layer"),
    'critic': dict(default='ac', choices=DIM_CRITIC_HEADS,
                   help="the critic's head: 'ac' (the reference's AC-GAN: a class head trained with cross-entropy on "
                        "real and generated images, which G must also satisfy) or 'projection' (a class-dependent "
                        "score, no classification loss; more diverse samples within a class at small budgets, "
                        "docs/results.md)"),
    'n_critic': dict(type=int, default=1, help='critic steps per generator step, each on its own real batch (the '
                                               'reference: 1)'),
    'gp_every': dict(type=int, default=1,
                     help='apply the gradient penalty on every k-th critic step only, weighted by k (lazy '
                          'regularisation; 1: every step, the reference). k = 4 saves about 28 %% of a CPU iteration '
                          '(docs/benchmarks.md)'),
    'mode_seeking': dict(type=float, default=0.0,
                         help="weight of a mode-seeking term in the generator's loss (MSGAN, Mao et al. 2019: two "
                              "noises of one class must give different images, so each class stays as spread as the "
                              "real one; 1 is MSGAN's; 0: off, the reference)"),
    'g_ema': dict(type=float, default=0.0,
                  help="sample from an exponential moving average of the generator's weights with this decay (e.g. "
                       "0.999, with a warm-up (1+t)/(10+t) over the first updates; 0: off, the reference): DiM's "
                       "validation, previews, checkpoints and validate.py, and CL's memories and replay, use it"),
    'eval_one_by_one': dict(action='store_true',
                            help='train the evaluation networks of a pool one after another; on a GPU they are '
                                 'otherwise trained together (same protocol, float rounding aside; BN models are '
                                 'always one by one)'),
    # main.py and main_DM.py
    'eval_every': dict(type=int, default=None, help='iterations between evaluations (default: the original schedule)'),
    'eval_final_only': dict(action='store_true', help='evaluate only at the last iteration'),
    's_mode_strict': dict(action='store_true',
                          help='eval mode S maps ResNet18BN_AP to ResNet18_AP instead of the strided ResNet18'),
    # The DiM stages: the reference's flags (hyphenated: --batch-size only) ...
    'data': dict(default='cifar10', aliases=('--dataset',),
                 help="cifar10, svhn, mnist, fashion (DiM's names), any project dataset name, or folder:PATH / "
                      "file:PATH.pt for your own data (docs/reference.md, 'Your own data')"),
    'num_classes': dict(type=int, default=None, help="class count (default: the dataset's)"),
    'data_dir': dict(default='data', aliases=('--data_path',), help='dataset folder'),
    'output_dir': dict(default='./results/', aliases=('--save_path',),
                       help='checkpoints and pictures go to <output-dir>/<tag>'),
    'logs_dir': dict(default='./logs/',
                     help='logs.txt goes to <logs-dir>/<tag> (each run appends to it)'),
    'tag': dict(default='test', help='run name: one folder name, inside --output-dir and --logs-dir'),
    'batch_size': dict(type=int, default=128, help='batch of the evaluation networks and of the GAN'),
    'epochs_eval': dict(type=int, default=1000, help='epochs of every evaluation network'),
    'eval_lr': dict(type=float, default=0.01, help='SGD lr of evaluation (and pool) networks'),
    'momentum': dict(type=float, default=0.9, help='SGD momentum of evaluation (and pool) networks'),
    'weight_decay': dict(type=float, default=5e-4,
                         help='SGD weight decay of evaluation (and pool) networks'),
    'eval_model': dict(nargs='+', default=['convnet'],
                       help='evaluation architectures: DiM names (convnet, resnet10, resnet18, resnet10_ap, ...) or '
                            'any networks.py name (ConvNet, ResNet18BN, ...)'),
    'dim_noise': dict(type=int, default=100, help='generator input width'),
    'num_workers': dict(type=int, default=4,
                        help='accepted for compatibility; ignored (batches come from tensors on the device)'),
    'test_interval': dict(type=int, default=200, help='evaluation epochs between test passes'),
    'aug_type': dict(default='color_crop_cutout', help='DiM DiffAug strategy'),
    'mixup_net': dict(default='cut', choices=['cut', 'vanilla'],
                      help="CutMix ('cut') or mixup ('vanilla') for evaluation networks; 'cut' also drops cutout "
                           "from their augmentation, as the reference does"),
    'mix_p': dict(type=float, default=-1.0, help='probability of mixing a batch (< 0: off)'),
    'beta': dict(type=float, default=1.0, help='Beta(beta, beta) of the mixing ratio'),
    'print_freq': dict(type=int, default=50, help='GAN iterations between log lines'),
    'eval_interval': dict(type=int, default=10,
                          help='epochs between validations and checkpoints'),
    'epochs': dict(type=int, default=150, help='GAN epochs'),
    'lr': dict(type=float, default=1e-4,
               help='Adam lr of G and D (stage 2 overrides the lr of the loaded optimiser states)'),
    'weight': dict(required=True, help='stage-1 checkpoint (e.g. results/gan/best.pth)'),
    'epochs_match_train': dict(type=int, default=16, help='pool-model SGD steps per generator step'),
    'match': dict(default='logit', choices=['logit', 'grad', 'feat'],
                  help='matching loss (the reference defaults to grad; the README recipe uses logit)'),
    'match_aug': dict(default=True, action=argparse.BooleanOptionalAction,
                      help='match on augmented images (the README recipe; --no-match-aug to switch off)'),
    'match_coeff': dict(type=float, default=None,
                        help='weight of the matching loss (default 0.01 for logit, 0.001 for grad and feat)'),
    'metric': dict(default='l1', choices=['l1', 'l2', 'cos'], help='gradient distance (grad mode)'),
    'bias': dict(action='store_true', help='grad mode: also match conv (and fc) biases'),
    'fc': dict(action='store_true', help='grad mode: also match the linear layers'),
    'pretrain_weight': dict(required=True, help='generator checkpoint (stage 1 or 2)'),
    'epochs_match': dict(help='a reference flag no stage uses'),
    'match_model': dict(help='a reference flag no stage uses'),
    'fix_disc': dict(help='a reference flag no stage uses'),
    # ... and the project's additions to them (--val_split and --val-split)
    'resnet_stem': dict(default='auto', choices=['auto', 'cifar', 'imagenet'],
                        help="DiM ResNet stem; 'auto' is the reference rule (CIFAR stem iff the dataset name starts "
                             "with cifar)"),
    'val_split': dict(type=int, default=None,
                      help='validation images per class held out of the training set for selecting checkpoints '
                           '(default: 10%% of the smallest class, at most 500); ignored with --compat reference'),
    'iters_per_epoch': dict(type=int, default=None,
                            help='at most this many GAN iterations per epoch (default: a whole pass over the training '
                                 'images)'),
    'cas': dict(action='store_true',
                help='log a classification accuracy score after every epoch: the share of generator samples of '
                     'class c that a small ConvNet, trained once at the start on the real training images, '
                     'labels c (about a minute on a CPU core for MNIST; no effect on training)'),
    'pool': dict(nargs='+', default=None, help="pool architectures (default: DiM's pool)"),
    'match_reduce': dict(default='pair', choices=['pair', 'classmean'],
                         help="'pair': real i vs generated i (reference); 'classmean': class-mean log-probabilities"),
    'match_joint_bn': dict(action='store_true',
                           help='one forward pass over real and generated images (shared BN statistics)'),
    'match_norm': dict(default='reference', choices=['reference', 'consistent'],
                       help="'consistent': map [-1, 1] to [0, 1] before standardising, as evaluation does "
                            "(docs/design.md, D-B11)"),
    'feat_from': dict(type=int, default=1, help='feat mode: first block matched'),
    'feat_to': dict(type=int, default=None, help='feat mode: blocks before this one (default: all)'),
    'dim_eval': dict(default='onthefly', choices=['onthefly', 'fixed', 'both'],
                     help="'onthefly': fresh samples every step, ipc a per-epoch budget (reference); 'fixed': ipc "
                          "images per class generated once and evaluated like DC/DM sets"),
    'auto_bs': dict(action='store_true', help='shrink --batch-size to K*ipc instead of failing'),
}

# The domain of every numeric flag of every script, by destination; each script's parser checks the values it
# parsed against it before any work (a flag declared without a domain stops the parser: none can be forgotten).
# A default of None ("decided at run time") always passes. A list flag (--seeds, --curve_at) is checked value by
# value.
_D = {text: Domain(text) for text in ('> 0', '>= 0', '>= 1', '>= 2', '<= 1', '[0, 1)', '(0, 1e4]')}
DOMAINS = {name: _D[text] for text, names in {
    '> 0': ('lr_img', 'lr_net', 'gan_lr', 'lr', 'eval_lr', 'lr_invert', 'lr_latent', 'beta', 'max_minutes'),
    '>= 0': ('seed', 'seeds', 'Iteration', 'inner_loop', 'feature_epochs', 'num_workers', 'mode_seeking',
             'weight_decay', 'feat_weight', 'reg', 'feat_from'),
    '>= 1': ('ipc', 'im_size', 'num_exp', 'num_eval', 'epoch_eval_train', 'batch_real', 'batch_train', 'eval_every',
             'checkpoint_every', 'outer_loop', 'real_chunk', 'steps', 'gan_iters', 'gan_batch', 'dim_noise',
             'gan_width', 'n_critic', 'gp_every', 'curve_at', 'invert_iters', 'invert_batch', 'batch_syn',
             'batch_size', 'epochs_eval', 'test_interval', 'print_freq', 'eval_interval', 'epochs',
             'epochs_match_train', 'val_split', 'iters_per_epoch', 'feat_to', 'full_epochs', 'full_num_eval'),
    '>= 2': ('num_classes',),
    # --mix-p: the probability of mixing a batch; any negative value switches mixing off (the reference's -1).
    '<= 1': ('mix_p',),
    # An exponential moving average's decay; 0 is off, 1 would never move.
    '[0, 1)': ('g_ema', 'momentum'),
    # The matching loss's weight against the GAN's losses, which are of order 1 (the reference: 0.01 or 0.001);
    # beyond 1e4 the GAN's own terms vanish in float32 rounding and the generator learns the matching alone.
    '(0, 1e4]': ('match_coeff',),
}.items() for name in names}


class ArgumentParser(common.ArgumentParser):
    """Every script's parser: common.ArgumentParser checking the DOMAINS of its numeric flags."""
    domains = DOMAINS


# Flags that only some modes of a script use: {flag: (whether the parsed flags use it, the mode that does)}, per
# script. One rule for them all: a flag given another value than its default in a mode that ignores it is reported
# once, as a warning among the run's opening lines (unused_flags); the run goes on, as the flag changes nothing.
def _dim_eval_fixed(a):
    return a.dim_eval != 'onthefly'


def _is(flag, *values):
    return lambda a: getattr(a, flag) in values


CONDENSE_USED_WHEN = {'eval_every': (lambda a: a.eval_mode in ('S', 'SS') and not a.eval_final_only,
                                     '--eval_mode S or SS without --eval_final_only (otherwise only the last '
                                     'iteration is evaluated)')}
USED_WHEN = {
    'main': dict(CONDENSE_USED_WHEN, dsa_strategy=(_is('method', 'DSA'), '--method DSA (DC augments only at '
                                                   'evaluation, with get_daparam)')),
    'main_DM': CONDENSE_USED_WHEN,
    'evaluate': dict(dsa_strategy=(lambda a: not a.dc_aug, 'DSA evaluation (it is off with --dc_aug)')),
    'CL_DM': dict(
        **{f: (_is('method', 'DSA', 'DM'), '--method DSA or DM') for f in ('Iteration', 'lr_img', 'batch_real',
                                                                          'checkpoint_every')},
        **{f: (_is('method', 'DSA'), '--method DSA') for f in ('outer_loop', 'inner_loop', 'dis_metric')},
        **{f: (_is('method', 'DM'), '--method DM') for f in ('per_class', 'real_chunk')},
        **{f: (_is('method', 'DiM'), '--method DiM') for f in ('gan_iters', 'gan_batch', 'gan_lr', 'dim_noise',
                                                               'gan_width', 'cond', 'critic', 'n_critic', 'gp_every',
                                                               'mode_seeking', 'g_ema', 'dim_replay')},
        **{f: (_is('method', 'herding', 'kcenter'), '--method herding or kcenter') for f in ('feature_net',
                                                                                            'feature_epochs')}),
    'dim': dict(
        beta=(lambda a: a.mix_p > 0, '--mix-p > 0 (mixing on)'),
        val_split=(lambda a: a.compat != 'reference', 'a --compat other than reference'),
        **{f: (_is('match', 'feat'), '--match feat') for f in ('feat_from', 'feat_to')},
        **{f: (_is('match', 'grad'), '--match grad') for f in ('metric', 'bias', 'fc')},
        **{f: (_dim_eval_fixed, '--dim_eval fixed or both') for f in ('num_exp', 'dsa_strategy', 'batch_train')}),
}


def unused_flags(parser, args, script):
    """The warnings, one per flag, for the flags that the mode chosen by the parsed `args` ignores (USED_WHEN)."""
    notes = []
    for action in parser._actions:
        used, mode = USED_WHEN[script].get(action.dest, (None, None))
        value = getattr(args, action.dest, None)
        if used is not None and value != action.default and not used(args):
            shown = '' if isinstance(value, bool) else ' ' + ' '.join(map(str, value if isinstance(value, list)
                                                                          else [value]))
            notes.append(f'warning: {action.option_strings[0]}{shown} is ignored without {mode}')
    return notes


def add_flags(group, names, helps=None, hyphens=False, aliases=None, ignored=None, **defaults):
    """Add the FLAGS `names` to an argparse group, with per-script defaults and, where a script's default is decided
    at run time, per-script help texts (`helps`: name -> text) that say how. hyphens: True also accepts
    --name-with-hyphens, 'only' accepts that spelling alone (the DiM reference's); aliases: name -> a script's older
    spellings, still accepted. ignored: a reason; the flags are accepted, as a switch or with a value, and ignored."""
    for name in names:
        kw, hyphen = dict(FLAGS[name]), f'--{name.replace("_", "-")}'
        spellings = [hyphen] if hyphens == 'only' else [f'--{name}'] + ([hyphen] if hyphens and '_' in name else [])
        if ignored:  # nargs='?': both the switch form (--fix-disc) and the valued form (--epochs-match 5) parse
            kw = dict(default=None, nargs='?', const=True, help=f'accepted and ignored ({ignored})')
            spellings = sorted(set(spellings), key=lambda s: s != hyphen)
        if name in defaults:
            kw['default'] = defaults[name]
        kw['help'] = (helps or {}).get(name, kw['help'])
        group.add_argument(*spellings, *kw.pop('aliases', ()), *(aliases or {}).get(name, ()), dest=name, **kw)


class Config(argparse.Namespace):
    """A script's validated arguments, read-only: whatever validation derives from the flags (canonical names, the
    device, per-method defaults) is derived before a Config is made, and nothing writes to it afterwards.
    Config(args, **changes) is a copy with some values changed (tests, benchmarks)."""

    def __init__(self, args=None, **changes):
        self.__dict__.update(vars(args) if args is not None else {}, **changes)

    def __setattr__(self, name, value):
        raise AttributeError(f'the validated arguments are read-only (--{name}); derive it where the script '
                             f'validates its flags')

    def __delattr__(self, name):
        self.__setattr__(name, None)


def check_network(name, info=None):
    """A known network name; with a data.DatasetInfo, one that takes the dataset's channels, size and classes
    (built on the meta device: no memory, no random draws)."""
    if name not in NETWORKS:
        raise UserError(f"unknown model '{name}'; choose one of {', '.join(NETWORKS)}")
    if info is not None:
        try:
            get_network(name, info.channel, info.num_classes, info.im_size, device='meta')
        except ValueError as e:
            raise UserError(f'{name} on {info.name} ({info.im_size[0]}x{info.im_size[1]}): {e}') from None


def resolve_device(device):
    """--device as the run uses it: checked (common.check_device), and under torchrun the process group joined and
    'cuda' made this process's own GPU, cuda:<rank>."""
    return parallel.start(check_device(device))


def check_args(args):
    """Validate the shared flags a script has; derive the dataset's canonical name, the device, `dsa` (is DSA on)
    and `dsa_param`. UserError (one line) for bad input."""
    has = vars(args)
    if 'dataset' in has:
        args.dataset = canonical_dataset(args.dataset)
    if 'save_path' in has:
        check_output_folder(args.save_path, '--save_path')
    if 'model' in has:
        check_network(args.model)
    if 'no_progress' in has and (not sys.stderr.isatty() or not parallel.is_main()):
        args.no_progress = True  # carriage-return bar updates would fill a redirected log; one bar under torchrun
    args.device = resolve_device(args.device)
    if 'precision' in has:
        set_precision(args.precision, args.device)
    if 'dsa_strategy' in has:
        try:
            parse_strategy(args.dsa_strategy)
        except ValueError as e:
            raise UserError(str(e)) from None
        args.dsa = str(args.dsa_strategy).strip().lower() not in ('none', '')
        args.dsa_param = ParamDiffAug(align_corners=args.align_corners == 'true')
    return args


# ----------------------------------------------------------------------------------------------------------------
# main.py and main_DM.py

CONDENSE_ORIGINAL = ('dataset', 'model', 'ipc', 'eval_mode', 'num_exp', 'num_eval', 'epoch_eval_train', 'Iteration',
                     'lr_img', 'lr_net', 'batch_real', 'batch_train', 'init', 'dsa_strategy', 'data_path',
                     'save_path', 'dis_metric')


CONDENSE_ADDED = ('seed', 'im_size', 'eval_every', 'eval_final_only', 'device', 'resume', 'checkpoint_every',
                  'align_corners', 'no_progress', 'compat', 'amp', 'eval_one_by_one', 'cuda_graphs', 'precision',
                  's_mode_strict')


def condense_parser(description, helps=None, **defaults):
    """The flags of the original main.py / main_DM.py, with per-script defaults (and help texts, add_flags), plus
    the project's additions."""
    p = ArgumentParser(description=description)
    add_flags(p.add_argument_group('original flags'), CONDENSE_ORIGINAL, helps, **defaults)
    add_flags(p.add_argument_group('project additions'), CONDENSE_ADDED, **defaults)
    return p


def check_condense_args(args):
    """check_args, plus the evaluation pool of main.py / main_DM.py."""
    check_args(args)
    args.s_mode_strict = args.s_mode_strict or args.compat == 'clean'
    if args.eval_mode == 'S' and args.model == 'ResNet18BN_AP' and not args.s_mode_strict:
        print('warning: eval mode S evaluates ResNet18BN_AP sets on the strided ResNet18, as the reference does; '
              '--s_mode_strict evaluates them on ResNet18_AP', file=sys.stderr)
    info = dataset_info(args.dataset, args.data_path, args.im_size)
    for arch in [args.model] + get_eval_pool(args.eval_mode, args.model, strict=args.s_mode_strict):
        check_network(arch, info)
    return args


# ----------------------------------------------------------------------------------------------------------------
# The DiM stages (gen_condense.py, pool_match.py, validate.py): DiM's hyphenated flags and defaults, plus the
# project's (underscore or hyphen spelling)

SCRIPTS = {1: 'gen_condense', 2: 'pool_match', 3: 'validate'}
IGNORED = ('epochs_match', 'match_model', 'fix_disc')  # reference flags no stage uses
STAGE3_IGNORED = ('epochs', 'lr', 'epochs_match_train', 'match', 'match_aug', 'match_coeff', 'metric', 'bias', 'fc',
                  'weight', 'print_freq', 'eval_interval', 'val_split')  # training flags, meaningless to validate.py
# (the last, val_split, is the project's: both spellings)

# Each stage's flags, in the order --help lists them: the reference's (DIM_REFERENCE) and the project's (DIM_OWN),
# each the flags of every stage followed by the stage's own.
DIM_REFERENCE = {
    'all': ('data', 'num_classes', 'data_dir', 'output_dir', 'logs_dir', 'tag', 'seed', 'ipc', 'batch_size',
            'epochs_eval', 'eval_lr', 'momentum', 'weight_decay', 'eval_model', 'dim_noise', 'num_workers',
            'test_interval', 'aug_type', 'mixup_net', 'mix_p', 'beta'),
    1: ('print_freq', 'eval_interval', 'epochs', 'lr'),
    2: ('print_freq', 'eval_interval', 'epochs', 'lr', 'weight', 'epochs_match_train', 'match', 'match_aug',
        'match_coeff', 'metric', 'bias', 'fc'),
    3: ('pretrain_weight',),
}
DIM_OWN = {
    'all': ('device', 'cuda_graphs', 'precision', 'compat', 'no_progress', 'im_size', 'resnet_stem', 'cond',
            'gan_width', 'critic'),
    1: ('val_split', 'resume', 'iters_per_epoch', 'n_critic', 'gp_every', 'mode_seeking', 'g_ema', 'cas'),
    2: ('val_split', 'resume', 'iters_per_epoch', 'n_critic', 'gp_every', 'mode_seeking', 'g_ema', 'cas', 'pool',
        'match_reduce', 'match_joint_bn', 'match_norm', 'feat_from', 'feat_to'),
    3: ('dim_eval', 'auto_bs', 'num_eval', 'num_exp', 'dsa_strategy', 'batch_train'),
}
DIM_DEFAULTS = {  # the reference's defaults where they differ from FLAGS's, by stage
    1: dict(seed=3407, ipc=50, compat=None),
    2: dict(seed=3407, ipc=50, compat=None, batch_size=64, epochs=100, lr=5e-6),
    3: dict(seed=3407, ipc=50, compat=None, num_eval=5, num_exp=1, dsa_strategy=None),
}
DIM_HELPS = dict(
    ipc='evaluation budget in images per class',
    compat="default: the reference's training with the sound evaluation protocol; 'reference': also the reference's "
           "evaluation protocol (test-set selection, train-mode BN tests; docs/design.md D-B1 D-B2 D-B5); 'clean': "
           "sound protocol and every number-moving fix (--match_norm consistent, --match_joint_bn)",
    im_size="folder: data: resize every image to this square size (the GAN makes 28, 32 or 64; default: the "
            "images' own size)",
    resume='continue from <output-dir><tag>/last.pth')
DIM_STAGE3_HELPS = dict(
    batch_size='batch of the evaluation networks', num_eval='evaluation networks per architecture (and per set)',
    num_exp='fixed mode: independently generated sets',
    dsa_strategy='fixed mode: DSA strategy of evaluate_synset (default: color_crop_cutout_flip_scale_rotate, without '
                 'flip for MNIST and SVHN)',
    batch_train='fixed mode: batch of evaluate_synset')


def dim_parser(stage, description, helps=None):
    """The flags of stage 1 (gen_condense), 2 (pool_match) or 3 (validate); helps: name -> a help text of the
    caller's (the method's defaults, which this layer does not know)."""
    p = ArgumentParser(description=description)
    helps = {**DIM_HELPS, **(DIM_STAGE3_HELPS if stage == 3 else {}), **(helps or {})}
    ref = p.add_argument_group('DiM flags (the reference names and defaults)')
    add_flags(ref, DIM_REFERENCE['all'] + DIM_REFERENCE[stage], helps, hyphens='only', **DIM_DEFAULTS[stage])
    if stage == 3:
        why = 'a training flag; validate.py trains no GAN'
        add_flags(ref, STAGE3_IGNORED[:-1], hyphens='only', ignored=why)
        add_flags(ref, STAGE3_IGNORED[-1:], hyphens=True, ignored=why)  # --val_split, the project's, both spellings
    add_flags(ref, IGNORED, hyphens='only', ignored='unused, as in the reference')
    own = p.add_argument_group('project additions')
    add_flags(own, DIM_OWN['all'] + DIM_OWN[stage], helps, hyphens=True, **DIM_DEFAULTS[stage])
    return p


def check_folder_name(name, flag):
    """A run name that is one folder name: it is joined to an output folder, and a path (../x, /x) would put the
    run's files outside it."""
    if name in ('', '.', '..') or any(sep and sep in name for sep in (os.sep, os.altsep, '\0')):
        raise UserError(f'{flag} {name!r} must be a single folder name (no {os.sep}, not empty, not . or ..); the '
                        f'outputs go to a folder of that name inside the output folders')


# What the command a stage prints for the next one carries over, where it differs from the next stage's default:
# the data, the GAN's shape (a checkpoint made with other values is refused), where the outputs go, and the
# experiment's evaluation protocol and GAN training options. BUDGET: carried where the printing stage ran with
# other than its own default (a 1-epoch stage 1 is followed by a 1-epoch stage 2, not by the reference's 100 epochs).
# Not carried: the run's own flags (tag, resume, checkpoints), the stage-specific ones (batch size, lr: their
# defaults differ between stages) and what the next stage ignores.
CARRIED = ('data', 'num_classes', 'data_dir', 'im_size', 'output_dir', 'logs_dir', 'dim_noise', 'cond', 'gan_width',
           'critic', 'seed', 'compat', 'resnet_stem', 'ipc', 'eval_model', 'epochs_eval', 'eval_lr', 'momentum',
           'weight_decay', 'aug_type', 'mixup_net', 'mix_p', 'beta', 'test_interval', 'eval_interval', 'print_freq',
           'val_split', 'iters_per_epoch', 'n_critic', 'gp_every', 'mode_seeking', 'g_ema')
BUDGET = ('epochs',)  # with iters_per_epoch, eval_interval, print_freq above: the length of a GAN stage
NEXT_TAG = {2: 'match', 3: 'test'}  # the next stage's tag: this run's tag with this suffix


def next_command(args, stage, weight, num_classes):
    """The command line of DiM stage `stage` (2 or 3) on this run's checkpoint `weight`, runnable as printed (from
    the same directory): the script's path from there, CARRIED flags, the BUDGET the printing stage was given, the
    device when it is not the default, and for validate.py --auto_bs when its default batch would exceed K*ipc."""
    actions = {a.dest: a for a in dim_parser(stage, '')._actions}
    ignored = IGNORED + (STAGE3_IGNORED if stage == 3 else ())
    # Only stage 1 prints a stage-2 command; stage 3 takes no GAN budget.
    own = {a.dest: a.default for a in dim_parser(1, '')._actions if a.dest in BUDGET} if stage == 2 else {}
    script = os.path.join(SCRIPTS_DIR, f'{SCRIPTS[stage]}.py')
    relative = os.path.relpath(script)
    argv = ['python', script if relative.startswith('..') else relative, {2: '--weight', 3: '--pretrain-weight'}[stage],
            weight, '--tag', f'{args.tag}_{NEXT_TAG[stage]}']
    for name in CARRIED + BUDGET:
        action, value = actions.get(name), getattr(args, name, None)
        if action is None or name in ignored or value == own.get(name, action.default):
            continue
        argv += [action.option_strings[0], *map(str, value if isinstance(value, (list, tuple)) else [value])]
    device = args.device if parallel.world_size() == 1 else torch.device(args.device).type  # torchrun: cuda:<rank>
    if device != default_device():
        argv += ['--device', device]
    if stage == 3 and num_classes * args.ipc < actions['batch_size'].default:
        argv.append('--auto_bs')
    return shlex.join(argv)

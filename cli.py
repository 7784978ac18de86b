"""Command-line flags shared by main.py, main_DM.py and CL_DM.py, declared once, and one validation function.

Each flag is declared once in FLAGS with its help text; a script adds the flags it takes with `add_flags`, giving
its own defaults (the original scripts differ: main.py ipc 1, main_DM.py ipc 50, CL_DM.py ipc 20, ...).
`check_args` validates whichever of them a script has and derives the settings they imply (canonical dataset
name, device, DSA parameters), so no script repeats a check.
"""
import argparse
import sys

import parallel
from augment import ParamDiffAug, parse_strategy
from data import canonical_dataset, dataset_info
from evaluation import get_eval_pool
from networks import NETWORKS, get_network
from utils import ArgumentParser, UserError, check_finite, check_output_folder, check_positive, resolve_device

FLAGS = {
    'dataset': dict(default='CIFAR10', aliases=('--data',),
                    help='MNIST, FashionMNIST, SVHN, CIFAR10, CIFAR100, TinyImageNet; your own data: folder:PATH '
                         '(PATH/train/<class>/*.png and PATH/test/<class>/) or file:PATH.pt (a prepared tensor file; '
                         'README.md, "Your own data")'),
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
                            'memory; default: 256 on CPU, where it is also faster, all at once on CUDA)'),
    'amp': dict(choices=['off', 'bf16'], default='off',
                help="'bf16': the matching network's forward passes (DM) and the evaluation training in bfloat16 "
                     "autocast; faster on recent GPUs, float32 otherwise (README, GPU speed)"),
    'cuda_graphs': dict(choices=['on', 'off'], default='on',
                        help="on CUDA, replay every hot step (the DM step, the DC/DSA passes, the evaluation epochs, "
                             "the GAN iterations) as one CUDA graph; 'off' runs them eagerly (the same computation, "
                             "float rounding aside; README, GPU speed)"),
    'compile': dict(choices=['on', 'off'], default='off',
                    help="DM: 'on' compiles the matching network's forward with torch.compile (inductor), which fuses "
                         "each block's normalisation, activation and pooling; the first iterations wait for the compiler "
                         "(docs/benchmarks.md)"),
    'eval_one_by_one': dict(action='store_true',
                            help='train the evaluation networks of a pool one after another; on a GPU they are '
                                 'otherwise trained together (same protocol, float rounding aside; BN models are '
                                 'always one by one)'),
}

# Flags that must be positive where a script has them (None means "the script's default" and passes).
POSITIVE = ('im_size', 'ipc', 'num_exp', 'num_eval', 'epoch_eval_train', 'lr_img', 'lr_net', 'batch_real', 'batch_train',
            'checkpoint_every', 'eval_every', 'real_chunk')


def add_flags(group, names, helps=None, **defaults):
    """Add the FLAGS `names` to an argparse group, with per-script defaults and, where a script's default is decided
    at run time, per-script help texts (`helps`: name -> text) that say how."""
    for name in names:
        kw = dict(FLAGS[name])
        if name in defaults:
            kw['default'] = defaults[name]
        kw['help'] = (helps or {}).get(name, kw['help'])
        group.add_argument(f'--{name}', *kw.pop('aliases', ()), dest=name, **kw)


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


def check_args(args):
    """Validate the shared flags a script has; derive the dataset's canonical name, the device, `dsa` (is DSA on)
    and `dsa_param`. UserError (one line) for bad input."""
    has = vars(args)
    check_finite(args)
    if 'dataset' in has:
        args.dataset = canonical_dataset(args.dataset)
    if 'save_path' in has:
        check_output_folder(args.save_path, '--save_path')
    if 'model' in has:
        check_network(args.model)
    for name in POSITIVE:
        if has.get(name) is not None:
            check_positive(name, has[name])
    if has.get('Iteration') is not None and args.Iteration < 0:
        raise UserError(f'--Iteration must be >= 0, got {args.Iteration}')
    if 'no_progress' in has and (not sys.stderr.isatty() or not parallel.is_main()):
        args.no_progress = True  # carriage-return bar updates would fill a redirected log; one bar under torchrun
    args.device = resolve_device(args.device)
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


def condense_parser(description, helps=None, **defaults):
    """The flags of the original main.py / main_DM.py, with per-script defaults (and help texts, add_flags), plus
    the project's additions."""
    p = ArgumentParser(description=description)
    add_flags(p.add_argument_group('original flags'), CONDENSE_ORIGINAL, helps, **defaults)
    g = p.add_argument_group('project additions')
    add_flags(g, ('seed', 'im_size'))
    g.add_argument('--eval_every', type=int, default=defaults.get('eval_every'),
                   help='iterations between evaluations (default: the original schedule)')
    g.add_argument('--eval_final_only', action='store_true', help='evaluate only at the last iteration')
    add_flags(g, ('device', 'resume', 'checkpoint_every', 'align_corners', 'no_progress', 'compat', 'amp',
                  'eval_one_by_one', 'cuda_graphs'))
    g.add_argument('--s_mode_strict', action='store_true',
                   help='eval mode S maps ResNet18BN_AP to ResNet18_AP instead of the strided ResNet18')
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

"""DC and DSA: dataset condensation with gradient matching and with differentiable Siamese augmentation.

Zhao, Mopuri & Bilen, Dataset Condensation with Gradient Matching, ICLR 2021; Zhao & Bilen, Dataset Condensation
with Differentiable Siamese Augmentation, ICML 2021.

Each iteration samples a fresh network θ and alternates, outer_loop times, between
  - one step on the synthetic images S, which makes the gradient of the training loss on each class's synthetic
    images match the gradient on a batch of that class's real images R_c:
        L = Σ_c D( ∇θ CE(θ; A_c(S_c)), ∇θ CE(θ; A_c(R_c)) )
  - inner_loop epochs of SGD on the network, trained on the current synthetic set.
--method DSA applies one Siamese DSA transform A_c per class to both batches (and per-image DSA when training
networks); --method DC augments nothing during synthesis.

    python main.py --dataset CIFAR10 --model ConvNet --ipc 10
    python main.py --dataset CIFAR10 --model ConvNet --ipc 10 --method DSA --init real \
        --dsa_strategy color_crop_cutout_flip_scale_rotate
"""
from condensation import env  # first: the environment PyTorch reads when it starts (env.py)

import argparse

from condensation.augment import get_daparam
from condensation.run.cli import Config, add_flags, check_condense_args, condense_parser, unused_flags
from condensation.data import canonical_dataset, get_dataset
from condensation.methods.dc import DCStep, get_loops, recommended_dsa_strategy
from condensation.evaluation import EvalRecipe, get_eval_pool
from condensation.run.runner import CondensationRun
from condensation.common import UserError, run_cli

# Flags that may change between a run and its --resume.
RESUMABLE = ('resume', 'device', 'no_progress', 'save_path', 'data_path', 'checkpoint_every', 'num_exp', 'cuda_graphs',
             'precision')


def eval_settings(args, explicit_epochs):
    """Per evaluation architecture: epochs and DC augmentation. The original overwrites epoch_eval_train for every
    architecture: DSA 1000; DC 300 when get_daparam gives no augmentation, else 1000. An explicitly passed
    --epoch_eval_train is honoured (the original ignores it)."""
    out = {}
    for arch in get_eval_pool(args.eval_mode, args.model, strict=args.s_mode_strict):
        if args.dsa:
            dc, epochs = None, 1000
        else:
            dc = get_daparam(args.dataset, args.model, arch, args.ipc)
            dc['rotate_mode'] = 'bilinear' if args.dc_rotate == 'gpu' else 'spline'
            epochs = 300 if dc['strategy'] == 'none' else 1000
        out[arch] = dict(dc_aug_param=dc, epoch_eval_train=args.epoch_eval_train if explicit_epochs else epochs)
    return out


def parse_args(argv=None, notes=None):
    """The original main.py's flags and defaults plus the project's; notes collects lines for the run log."""
    notes = [] if notes is None else notes
    p = condense_parser(__doc__.split('\n')[0], ipc=1, eval_mode='S', epoch_eval_train=None, Iteration=1000,
                        lr_img=0.1, init='noise', dsa_strategy=None, helps=dict(
                            epoch_eval_train='epochs to train each evaluation network (default: DSA 1000; DC 300, or '
                                             '1000 where DC augments: MNIST, ConvNetBN)',
                            dsa_strategy="DSA ops joined by '_' (color, crop, cutout, flip, scale, rotate) (default: "
                                         "with --method DSA color_crop_cutout_flip_scale_rotate, without flip for "
                                         "MNIST and SVHN; DC: none)"))
    g = p.add_argument_group('DC/DSA')
    g.add_argument('--method', default='DC', type=str.upper, choices=['DC', 'DSA'],
                   help='DC: gradient matching; DSA: with differentiable Siamese augmentation')
    add_flags(g, ('outer_loop', 'inner_loop'))
    g.add_argument('--bn_stats', choices=['momentum', 'exact'], default=None,
                   help="BN refresh before matching: 'momentum' = one train-mode pass (the reference's 10%% move), "
                        "'exact' = running stats set to the real batch's (default: momentum; clean: exact)")
    g.add_argument('--match_1d', action=argparse.BooleanOptionalAction, default=None,
                   help="dis_metric ours: also match 1-D parameters (biases, norm affine) (default: off; clean: on)")
    g.add_argument('--dc_rotate', choices=['cpu', 'gpu'], default='cpu',
                   help="DC evaluation rotation: 'cpu' = cubic spline as scipy (reference), 'gpu' = bilinear, faster")
    args = p.parse_args(argv)
    notes += unused_flags(p, args, 'main')
    explicit_epochs = args.epoch_eval_train is not None
    if not explicit_epochs:
        args.epoch_eval_train = 1000  # a placeholder for the checks; set per evaluation architecture below
    args.dataset = canonical_dataset(args.dataset)
    gave_strategy = args.dsa_strategy is not None
    strategy_on = gave_strategy and str(args.dsa_strategy).strip().lower() not in ('none', '')
    if args.method == 'DSA':
        if gave_strategy and not strategy_on:
            raise UserError(f'--method DSA needs an augmentation, got --dsa_strategy {args.dsa_strategy}; drop the '
                            f'flag for the recommended one or use --method DC')
        if not gave_strategy:
            args.dsa_strategy = recommended_dsa_strategy(args.dataset)
            notes.append(f'--method DSA without --dsa_strategy: using {args.dsa_strategy}, the recommended '
                         f'strategy for {args.dataset}')
    else:
        args.dsa_strategy = 'None'  # DC augments only at evaluation (unused_flags reports a strategy given)
    args = check_condense_args(args)
    assert args.dsa == (args.method == 'DSA')
    args.outer_loop, args.inner_loop = get_loops(args.ipc, args.outer_loop, args.inner_loop, notes)
    if args.bn_stats is None:
        args.bn_stats = 'exact' if args.compat == 'clean' else 'momentum'
    if args.match_1d is None:
        args.match_1d = args.compat == 'clean'
    args.eval_settings = eval_settings(args, explicit_epochs)
    # The first pool architecture's settings also sit in args, for readers that ignore eval_settings.
    first = next(iter(args.eval_settings.values()))
    args.epoch_eval_train, args.dc_aug_param = first['epoch_eval_train'], first['dc_aug_param']
    return Config(args)


def loop_notes(args):
    """Log lines that name the loop structure in both schemes (reference issue #31) and the evaluation protocol."""
    lines = [f'{args.method}: Iteration = {args.Iteration} outer iterations (the paper\'s K), each on a fresh network; '
             f'outer_loop = {args.outer_loop} image steps per network (the paper\'s T); inner_loop = '
             f'{args.inner_loop} network epochs on the synthetic set between image steps (network updates)',
             f'matching: dis_metric {args.dis_metric}, match_1d {args.match_1d}, BN refresh {args.bn_stats} '
             f'(models with BatchNorm only), augmentation {args.dsa_strategy if args.dsa else "none"}; compat '
             f'{args.compat}']
    for arch, s in args.eval_settings.items():
        aug = f'DSA {args.dsa_strategy}' if args.dsa else f'DC {s["dc_aug_param"]["strategy"]}'
        lines.append(f'evaluation on {arch}: {s["epoch_eval_train"]} epochs, augmentation {aug}')
    return lines


def main(argv=None):
    notes = []
    args = parse_args(argv, notes)
    data = get_dataset(args.dataset, args.data_path, device=args.device, im_size=args.im_size)
    recipes = {arch: EvalRecipe.from_args(args, **s) for arch, s in args.eval_settings.items()}
    run = CondensationRun(args, RESUMABLE, args.method, data, reference_every=500, recipes=recipes,
                          notes=notes + loop_notes(args))
    for exp in run.experiments():
        syn = run.synthetic_set(exp)  # Gaussian noise (--init noise) or random real images, or as checkpointed
        # Each iteration: a fresh network, outer_loop x (match gradients class by class, one image step, train the
        # network inner_loop epochs on the set); evaluations every 500 iterations (S/SS modes) and at the end.
        step = DCStep(args, data, syn.images, syn.labels, syn.optimizer)  # on CUDA: passes replayed as CUDA graphs
        for it in run.iterations(exp, syn):
            loss = step(args.seed, (exp, it))
            run.step_done(exp, it, loss, syn)  # log, progress, checkpoint
        run.experiment_done(exp, syn)  # the final set joins the results file
    return run.finish()


if __name__ == '__main__':
    run_cli(main)

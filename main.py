"""DC and DSA: Dataset Condensation with Gradient Matching (Zhao, Mopuri & Bilen, ICLR 2021) and with Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021).

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
import os

# PyTorch reads this at its first CPU allocation, so it must precede `import torch`: huge pages for large
# activations remove most of the page-fault time of a CPU run (docs/benchmarks.md).
os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')

import argparse  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import utils  # noqa: E402
from augment import DiffAugment, apply_dsa, get_daparam, sample_dsa_params  # noqa: E402
from utils import UserError, make_generator  # noqa: E402

# SPEC §5.4: ipc -> (outer_loop, inner_loop); inner_loop counts epochs over the synthetic set.
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
BN_IMAGES_PER_CLASS = 16  # real images per class in the BN refresh (SPEC §5.6)


def recommended_dsa_strategy(dataset):
    """SPEC §4.1: no flipping for digits."""
    return 'color_crop_cutout_scale_rotate' if dataset in ('MNIST', 'SVHN') else 'color_crop_cutout_flip_scale_rotate'


def _warn(msg, notes):
    print(f'warning: {msg}', file=sys.stderr)
    notes.append(f'warning: {msg}')


def get_loops(ipc, outer_loop=None, inner_loop=None, notes=None):
    """(outer_loop, inner_loop) for ipc: the table of SPEC §5.4; --outer_loop / --inner_loop always win.

    The reference exits for any other ipc. Here ipc > 50 falls back to (50, 10) with a warning, and any other ipc
    needs both flags.
    """
    notes = [] if notes is None else notes
    if outer_loop is not None and outer_loop < 1:
        raise UserError(f'--outer_loop must be >= 1, got {outer_loop}')
    if inner_loop is not None and inner_loop < 0:
        raise UserError(f'--inner_loop must be >= 0, got {inner_loop}')
    if ipc in LOOPS:
        default = LOOPS[ipc]
    elif ipc > 50:
        default = (50, 10)
        if outer_loop is None or inner_loop is None:
            # The authors pick the better of (50, 10) and (20, 25) for large sets (reference issue #2).
            _warn(f'--ipc {ipc} is outside the loop table of the original (1, 10, ..., 50); using outer_loop '
                  f'{outer_loop or 50}, inner_loop {10 if inner_loop is None else inner_loop}; also try '
                  f'--outer_loop 20 --inner_loop 25', notes)
    elif outer_loop is None or inner_loop is None:
        raise UserError(f'--ipc {ipc} has no loop setting in the original (1, 10, 20, 30, 40, 50 or > 50); pass '
                        f'--outer_loop and --inner_loop')
    else:
        default = (outer_loop, inner_loop)
    return (default[0] if outer_loop is None else outer_loop, default[1] if inner_loop is None else inner_loop)


def eval_settings(args, explicit_epochs):
    """Per evaluation architecture: epochs and DC augmentation (SPEC §4.1). The reference overwrites
    epoch_eval_train for every architecture: DSA 1000; DC 300 when get_daparam gives no augmentation, else 1000.
    An explicitly passed --epoch_eval_train is honoured (SPEC §12 A8)."""
    out = {}
    for arch in utils.get_eval_pool(args.eval_mode, args.model, args.model, args.s_mode_strict):
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
    p = utils.condense_parser(__doc__.split('\n')[0], ipc=1, eval_mode='S', epoch_eval_train=None, Iteration=1000,
                              lr_img=0.1, init='noise', dsa_strategy=None)
    g = p.add_argument_group('DC/DSA')
    g.add_argument('--method', default='DC', type=str.upper, choices=['DC', 'DSA'],
                   help='DC: gradient matching; DSA: with differentiable Siamese augmentation')
    g.add_argument('--outer_loop', type=int, default=None, help='image steps per network, T (default: SPEC §5.4)')
    g.add_argument('--inner_loop', type=int, default=None,
                   help='network epochs on the synthetic set between image steps (default: SPEC §5.4)')
    g.add_argument('--bn_stats', choices=['momentum', 'exact'], default=None,
                   help="BN refresh before matching: 'momentum' = one train-mode pass (the reference's 10%% move), "
                        "'exact' = running stats set to the real batch's (default: momentum; clean: exact)")
    g.add_argument('--match_1d', action=argparse.BooleanOptionalAction, default=None,
                   help="dis_metric ours: also match 1-D parameters (biases, norm affine) (default: off; clean: on)")
    g.add_argument('--dc_rotate', choices=['cpu', 'gpu'], default='cpu',
                   help="DC evaluation rotation: 'cpu' = cubic spline as scipy (reference), 'gpu' = bilinear, faster")
    args = p.parse_args(argv)
    explicit_epochs = args.epoch_eval_train is not None
    if not explicit_epochs:
        args.epoch_eval_train = 1000  # a placeholder for the checks; set per evaluation architecture below
    args.dataset = utils.canonical_dataset(args.dataset)
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
        if strategy_on:
            _warn(f'--method DC ignores --dsa_strategy {args.dsa_strategy} (DC augments only at evaluation, '
                  f'with get_daparam); use --method DSA for DSA', notes)
        args.dsa_strategy = 'None'
    args = utils.check_condense_args(args)
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
    return args


def describe(args):
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


# ----------------------------------------------------------------------------------------------
# Gradient matching (SPEC §5.5)

def layer_distance(gw_syn, gw_real, match_1d=False):
    """Σ over output rows of the cosine distance 1 − ⟨a, b⟩ / (‖a‖‖b‖ + 1e-6). A conv weight (out × in × h × w)
    is out × (in·h·w), a LayerNorm weight (C × h × w) is C × (h·w); 1-D tensors count 0 unless match_1d."""
    if gw_real.dim() == 1:
        if not match_1d:
            return gw_real.new_zeros(())
        gw_syn, gw_real = gw_syn.reshape(1, -1), gw_real.reshape(1, -1)
    else:
        gw_syn, gw_real = gw_syn.reshape(len(gw_syn), -1), gw_real.reshape(len(gw_real), -1)
    dot = (gw_syn * gw_real).sum(dim=-1)
    return (1 - dot / (gw_syn.norm(dim=-1) * gw_real.norm(dim=-1) + 1e-6)).sum()


def match_loss(gw_syn, gw_real, dis_metric='ours', match_1d=False):
    """Distance between two lists of parameter gradients: 'ours' (per-layer, per-row cosine), 'mse' or 'cos'
    (on the concatenation of all gradients, 1-D included)."""
    if dis_metric == 'ours':
        return sum((layer_distance(s, r, match_1d) for s, r in zip(gw_syn, gw_real)), gw_real[0].new_zeros(()))
    if dis_metric not in ('mse', 'cos'):
        raise ValueError(f"unknown dis_metric {dis_metric!r}; choose 'ours', 'mse' or 'cos'")
    s = torch.cat([g.reshape(-1) for g in gw_syn])
    r = torch.cat([g.reshape(-1) for g in gw_real])
    if dis_metric == 'mse':
        return ((s - r) ** 2).sum()
    return 1 - (s * r).sum() / (s.norm() * r.norm() + 1e-6)


def class_match_loss(net, real, syn, c, dis_metric='ours', match_1d=False, params=None, param=None):
    """D(g_S, g_R) for class c. g_R is a constant; g_S keeps its graph (create_graph), so the loss is
    differentiable w.r.t. syn through the second-order terms. params: one DSA parameter set shared by the real
    and the synthetic batch (Siamese), or None."""
    if params is not None:
        real, syn = apply_dsa(real, params, param), apply_dsa(syn, params, param)
    weights = [w for w in net.parameters() if w.requires_grad]
    lab_real = torch.full((len(real),), c, dtype=torch.long, device=real.device)
    lab_syn = torch.full((len(syn),), c, dtype=torch.long, device=syn.device)
    gw_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(real), lab_real), weights)]
    gw_syn = torch.autograd.grad(F.cross_entropy(net(syn), lab_syn), weights, create_graph=True)
    return match_loss(gw_syn, gw_real, dis_metric, match_1d)


# ----------------------------------------------------------------------------------------------
# Networks inside an iteration

def batchnorms(net):
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def refresh_bn(net, real, mode='momentum'):
    """SPEC §5.6: one train-mode forward of real images, then every BN module to eval mode for the matching passes.
    'momentum' (reference): the running stats move 10 % (the BN momentum) towards the batch's. 'exact': they become
    the batch's statistics (PyTorch's running convention: mean and unbiased variance)."""
    bns = batchnorms(net)
    momenta = [m.momentum for m in bns]
    if mode == 'exact':
        for m in bns:
            m.momentum = 1.0  # running = 0·running + 1·batch
    elif mode != 'momentum':
        raise ValueError(f"bn_stats must be 'momentum' or 'exact', got {mode!r}")
    net.train()
    with torch.no_grad():
        net(real)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
        m.eval()


def train_epochs(net, optimizer, images, labels, epochs, batch, generator, dsa_strategy=None, param=None):
    """epochs passes of SGD over (images, labels), reshuffled each pass, last partial batch kept; per-image DSA
    (one token per batch) when dsa_strategy is given. Train mode, so BN running stats follow the synthetic data."""
    net.train()
    n = len(images)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(images.device)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            x = images[idx]
            if dsa_strategy is not None:
                x = DiffAugment(x, dsa_strategy, param=param, generator=generator)
            loss = F.cross_entropy(net(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def dc_iteration(args, data, image_syn, syn_cls, optimizer, exp, it):
    """One outer iteration (SPEC §5.3): a fresh network; outer_loop times [BN refresh; per-class gradient matching;
    one image step; inner_loop network epochs on the synthetic set]. Returns ΣL / outer_loop.

    All randomness comes from generators named by (seed, exp, it), so a resumed run repeats it exactly.
    """
    net = utils.get_network(args.model, data.channel, data.num_classes, data.im_size, device=args.device,
                            generator=make_generator(args.seed, 'dc_net', exp, it))
    net.train()
    opt_net = torch.optim.SGD(net.parameters(), lr=args.lr_net)  # no momentum, no weight decay
    g = make_generator(args.seed, 'dc_batch', exp, it)
    has_bn = bool(batchnorms(net))
    labels = syn_cls.to(image_syn.device)
    strategy = args.dsa_strategy if args.dsa else None
    ipc, total = args.ipc, 0.0
    for ol in range(args.outer_loop):
        if has_bn:
            real = torch.cat([data.get_images(c, BN_IMAGES_PER_CLASS, g) for c in range(data.num_classes)])
            refresh_bn(net, real, args.bn_stats)
        optimizer.zero_grad(set_to_none=True)
        for c in range(data.num_classes):
            real = data.get_images(c, args.batch_real, g)
            params = sample_dsa_params(strategy, 1, g, args.dsa_param) if args.dsa else None
            loss = class_match_loss(net, real, image_syn[c * ipc:(c + 1) * ipc], c, args.dis_metric, args.match_1d,
                                    params, args.dsa_param)
            # L is a sum of per-class terms on disjoint slices of image_syn: backward class by class gives the
            # joint gradient while only one class's second-order graph is alive.
            loss.backward(inputs=[image_syn])
            total += loss.item()
        optimizer.step()
        if ol == args.outer_loop - 1:
            break
        train_epochs(net, opt_net, image_syn.detach().clone(), labels, args.inner_loop, args.batch_train, g,
                     strategy, args.dsa_param)
    return total / args.outer_loop


def main(argv=None):
    notes = []
    args = parse_args(argv, notes)
    utils.synthesize(args, args.method, dc_iteration, reference_every=500, notes=notes + describe(args))


if __name__ == '__main__':
    utils.run_cli(main)

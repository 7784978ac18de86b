"""DC and DSA: the gradient-matching loss and one outer iteration (Zhao, Mopuri & Bilen, ICLR 2021; Zhao & Bilen,
ICML 2021). main.py runs the experiment loop; cl.py builds continual-learning memories with the same step.
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from condensation.device import parallel
from condensation.augment import DiffAugment, apply_dsa, sample_dsa_params
from condensation.device.graphs import Graphed, graphs_enabled
from condensation.networks import get_network, init_weights
from condensation.common import UserError, derive_seed, draw_device

# The original's table, ipc -> (outer_loop, inner_loop); inner_loop counts epochs over the synthetic set.
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
BN_IMAGES_PER_CLASS = 16  # real images per class in the BN refresh, as the original


def recommended_dsa_strategy(dataset):
    """The DSA strategy the papers use for a dataset: no flipping for digits."""
    return 'color_crop_cutout_scale_rotate' if dataset in ('MNIST', 'SVHN') else 'color_crop_cutout_flip_scale_rotate'


def warn(msg, notes):
    print(f'warning: {msg}', file=sys.stderr)
    notes.append(f'warning: {msg}')


def get_loops(ipc, outer_loop=None, inner_loop=None, notes=None):
    """(outer_loop, inner_loop) for ipc: the original's table (LOOPS); --outer_loop / --inner_loop always win.

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
            warn(f'--ipc {ipc} is outside the loop table of the original (1, 10, ..., 50); using outer_loop '
                  f'{outer_loop or 50}, inner_loop {10 if inner_loop is None else inner_loop}; also try '
                  f'--outer_loop 20 --inner_loop 25', notes)
    elif outer_loop is None or inner_loop is None:
        raise UserError(f'--ipc {ipc} has no loop setting in the original (1, 10, 20, 30, 40, 50 or > 50); pass '
                        f'--outer_loop and --inner_loop')
    else:
        default = (outer_loop, inner_loop)
    return (default[0] if outer_loop is None else outer_loop, default[1] if inner_loop is None else inner_loop)


# ----------------------------------------------------------------------------------------------
# Gradient matching

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
    """One train-mode forward of real images, then every BN module to eval mode for the matching passes.
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
    try:
        with torch.no_grad():
            net(real)
    finally:  # also when the forward fails (a CUDA graph recording that falls back to eager runs it again)
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
            m.eval()


def train_epochs(net, optimizer, images, labels, epochs, batch, generator, dsa_strategy=None, param=None):
    """epochs passes of SGD over (images, labels), reshuffled each pass, last partial batch kept; per-image DSA
    (one token per batch) when dsa_strategy is given. Train mode, so BN running stats follow the synthetic data.
    Every draw is made on the generator's device."""
    net.train()
    n = len(images)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator, device=draw_device(generator)).to(images.device)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            x = images[idx]
            if dsa_strategy is not None:
                x = DiffAugment(x, dsa_strategy, param=param, generator=generator)
            loss = F.cross_entropy(net(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


class DCStep:
    """DC/DSA outer iterations on one synthetic set. One call: a freshly initialised network; outer_loop times
    [BN refresh; per-class gradient matching; one image step; inner_loop network epochs on the synthetic set].

        step = DCStep(args, data, image_syn, syn_cls, optimizer)
        for it in range(args.Iteration):
            loss = step(args.seed, (exp, it))     # ΣL / outer_loop, a detached 0-d tensor

    All randomness comes from the streams (seed, 'dc_net' | 'dc_batch', *keys), keys = (exp, it) in main.py, so a
    resumed run repeats it exactly. The network is built once and redrawn in place at every call (the draws of a
    new one). resident (default: off the CPU) draws on the device; on CUDA the matching pass and the inner epochs
    are then each replayed as a CUDA graph (graphs.Graphed). Under torchrun the processes split the classes of the
    matching and each trains the same network copy on the same set (replicated: the inner loop is cheap next to
    the matching).
    """

    def __init__(self, args, data, image_syn, syn_cls, optimizer, resident=None):
        self.args, self.data, self.image_syn, self.optimizer = args, data, image_syn, optimizer
        device = torch.device(args.device)
        gen_device = device if (device.type != 'cpu' if resident is None else resident) else torch.device('cpu')
        self.g_net, self.g_batch = torch.Generator(gen_device), torch.Generator(gen_device)
        self.net = get_network(args.model, data.channel, data.num_classes, data.im_size, device=device,
                               generator=self.g_net)
        self.opt_net = torch.optim.SGD(self.net.parameters(), lr=args.lr_net)  # no momentum, no weight decay
        self.has_bn = bool(batchnorms(self.net))
        self.labels = syn_cls.to(image_syn.device)
        self.strategy = args.dsa_strategy if args.dsa else None
        self.mine = parallel.share(data.num_classes)
        on = graphs_enabled(device, getattr(args, 'cuda_graphs', 'on'))  # with host-drawn streams: eager
        state = (image_syn, optimizer, self.net, self.opt_net)  # what both passes change
        self.match = Graphed(self._match, [self.g_batch], on, name='DC matching pass', state=state)
        self.inner = Graphed(self._inner, [self.g_batch], on and args.inner_loop > 0, name='DC inner epochs',
                             state=state)

    def __call__(self, seed, keys):
        self.g_net.manual_seed(derive_seed(seed, 'dc_net', *keys))
        self.g_batch.manual_seed(derive_seed(seed, 'dc_batch', *keys))
        init_weights(self.net, self.g_net)
        self.net.train()
        total = torch.zeros((), dtype=torch.float64, device=self.image_syn.device)
        for ol in range(self.args.outer_loop):
            total += self.match()
            if ol == self.args.outer_loop - 1:
                break
            self.inner()
        return total / self.args.outer_loop

    def _match(self):
        """[BN refresh;] every class's matching loss, its gradient, one image step. Returns ΣL (float64)."""
        args, data, net, g, ipc, image_syn = self.args, self.data, self.net, self.g_batch, self.args.ipc, self.image_syn
        if self.has_bn:
            real = torch.cat([data.get_images(c, BN_IMAGES_PER_CLASS, g) for c in range(data.num_classes)])
            refresh_bn(net, real, args.bn_stats)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64, device=image_syn.device)
        for c in range(data.num_classes):
            # Every process draws every class's batch, so the streams stay aligned; under torchrun each matches
            # only its share of the classes.
            real = data.get_images(c, args.batch_real, g)
            params = sample_dsa_params(self.strategy, 1, g, args.dsa_param) if args.dsa else None
            if c not in self.mine:
                continue
            loss = class_match_loss(net, real, image_syn[c * ipc:(c + 1) * ipc], c, args.dis_metric, args.match_1d,
                                    params, args.dsa_param)
            # L is a sum of per-class terms on disjoint slices of image_syn: backward class by class (and process
            # by process, summed by parallel.sum_grad) gives the joint gradient while only one class's
            # second-order graph is alive.
            loss.backward(inputs=[image_syn])
            total += loss.detach()  # summed in float64 like Python floats, without reading it back each class
        parallel.sum_grad(image_syn)
        parallel.sum_(total)
        self.optimizer.step()
        return total

    def _inner(self):
        args = self.args
        train_epochs(self.net, self.opt_net, self.image_syn.detach().clone(), self.labels, args.inner_loop,
                     args.batch_train, self.g_batch, self.strategy, args.dsa_param)


def dc_step(args, data, image_syn, syn_cls, optimizer, seed, keys, **options):
    """One outer iteration on its own (DCStep's; a loop builds one DCStep and calls it, which keeps the network
    and, on CUDA, the recorded graphs)."""
    return DCStep(args, data, image_syn, syn_cls, optimizer, **options)(seed, keys)

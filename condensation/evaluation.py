"""Evaluating a (synthetic) training set: networks trained from scratch on it, then tested on real test images.

`evaluate_synset` keeps the original name and signature; what it trains with is an `EvalRecipe` (or any object
with the same attribute names, as the original's `args`). `evaluate_pool` trains `num_eval` networks per
architecture of an evaluation pool (`get_eval_pool`), each from its own named random stream; `train_together`
trains them at once (one vectorised network, torch.func.vmap), each with its own weights, batch order and
augmentation draws, the same protocol as one by one.
"""
import copy
import dataclasses
import time
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from condensation.device import parallel
from condensation.augment import ParamDiffAug, augment_dc, parse_strategy, sample_dsa_params, apply_dsa
from condensation.device.graphs import Graphed, graphs_enabled
from condensation.networks import cpu_channels_last, get_network
from condensation.common import autocast, draw_device, make_generator, mean_pm


@dataclasses.dataclass(frozen=True)
class EvalRecipe:
    """How one evaluation network is trained: SGD (momentum 0.9, weight decay 5e-4) for epoch_eval_train + 1
    epochs, lr ×0.1 after the middle, batch batch_train; DSA (dsa_strategy) or DC augmentation (dc_aug_param) of
    each training batch, or none. The attribute names are the original `args` names."""
    epoch_eval_train: int
    lr_net: float = 0.01
    batch_train: int = 256
    device: str = 'cpu'
    dsa: bool = False
    dsa_strategy: Optional[str] = None
    dsa_param: Optional[ParamDiffAug] = None
    dc_aug_param: Optional[dict] = None
    amp: str = 'off'  # 'bf16': forward and loss in bfloat16 autocast (utils.autocast)
    cuda_graphs: str = 'on'  # 'on': on CUDA each epoch is replayed as a CUDA graph (graphs.Graphed)
    eval_one_by_one: bool = False  # train the networks of a pool one after another, never together

    @classmethod
    def from_args(cls, args, **over):
        """The recipe named by a script's parsed flags; `over` replaces single fields."""
        fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**{**fields, **over})


def get_eval_pool(eval_mode, model, model_eval=None, strict=False):
    """The architectures a synthetic set is evaluated on: a named pool (M, B, W, D, A, P, N), the matching model
    (SS), the matching model without BN (S), or model_eval (default: model) for any other mode."""
    pools = {
        'M': ['MLP', 'ConvNet', 'LeNet', 'AlexNet', 'VGG11', 'ResNet18'],
        'B': ['ConvNetBN', 'ConvNetASwishBN', 'AlexNetBN', 'VGG11BN', 'ResNet18BN'],
        'W': ['ConvNetW32', 'ConvNetW64', 'ConvNetW128', 'ConvNetW256'],
        'D': ['ConvNetD1', 'ConvNetD2', 'ConvNetD3', 'ConvNetD4'],
        'A': ['ConvNetAS', 'ConvNetAR', 'ConvNetAL', 'ConvNetASwish'],
        'P': ['ConvNetNP', 'ConvNetMP', 'ConvNetAP'],
        'N': ['ConvNetNN', 'ConvNetBN', 'ConvNetLN', 'ConvNetIN', 'ConvNetGN'],
    }
    if eval_mode in pools:
        return pools[eval_mode]
    if eval_mode == 'S':
        # The reference cuts the name at its first 'BN' (a few synthetic images cannot feed BN statistics), which
        # turns ResNet18BN_AP into the strided ResNet18; strict mode keeps the _AP twin.
        if strict and model == 'ResNet18BN_AP':
            return ['ResNet18_AP']
        return [model[:model.index('BN')]] if 'BN' in model else [model]
    if eval_mode == 'SS':
        return [model]
    return [model_eval or model]


def evaluate_synset(it_eval, net, images_train, labels_train, testloader, args, generator=None, on_epoch=None):
    """Train `net` from scratch on a (synthetic) set, then test it. on_epoch(ep, net), when given, is called after
    every epoch (a learning curve; it must leave the net's mode and weights as it found them).

    args: an EvalRecipe, or any object with its attribute names (lr_net, epoch_eval_train, batch_train, device;
    dsa, dsa_strategy, dsa_param or dc_aug_param for augmentation). Returns (net, training accuracy of the last
    epoch, test accuracy in [0, 1]). On a CPU, a network that runs faster channels-last (networks.cpu_channels_last)
    trains and tests so, and comes back in the layout it came in.
    """
    device = torch.device(args.device)
    net = net.to(device).train()
    # measured in float32 only: under bfloat16 autocast the norms would take ATen's slow channels-last kernels
    channels_last = (device.type == 'cpu' and getattr(args, 'amp', 'off') == 'off' and cpu_channels_last(net)
                     and all(p.is_contiguous() for p in net.parameters()))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    images = images_train.detach().to(device)
    labels = labels_train.detach().to(device)
    hook = None if on_epoch is None else (lambda ep: on_epoch(ep, net))
    correct = _train(list(net.parameters()), lambda x: net(x[0])[None], images, labels, args, [generator], hook,
                     list(net.buffers()))
    acc_test = test_accuracy(net, testloader, device)
    if channels_last:  # the layout the caller gave
        net = net.to(memory_format=torch.contiguous_format)
    return net, correct[0].item() / max(len(images), 1), acc_test


def _augment(x, args, generators):
    """The training augmentation of one batch per network (x: M x b x C x H x W, one generator each): DSA (one
    token per batch, per-image parameters, as the original's DiffAugment with seed -1) when args.dsa, else DC
    augmentation when its strategy is set, else none. The DSA parameters of all networks are applied in one call."""
    if getattr(args, 'dsa', False):
        if not parse_strategy(args.dsa_strategy):
            return x
        sets = [sample_dsa_params(args.dsa_strategy, x.shape[1], g, args.dsa_param, one_token=True)
                for g in generators]
        params = {k: torch.cat([p[k] for p in sets]) if torch.is_tensor(v) else v for k, v in sets[0].items()}
        return apply_dsa(x.flatten(0, 1), params, args.dsa_param).view_as(x)
    if _dc_augmented(args):
        return torch.stack([augment_dc(xm, args.dc_aug_param, generator=g) for xm, g in zip(x, generators)])
    return x


def _train(params, forward, images, labels, args, generators, on_epoch=None, state=()):
    """The evaluation training loop for M networks at once: params (their tensors, leading dim M when M > 1),
    forward (M x b x C x H x W -> M x b x K), one generator per network for its batch order and augmentation, each
    drawn on the generator's device. SGD (momentum 0.9, weight decay 5e-4) acts element by element, so one optimiser
    over stacked tensors steps each network as its own would. on_epoch(ep) is called after every epoch. Returns each
    network's correct predictions in the last epoch (a tensor). state: the other tensors an epoch changes (the
    networks' buffers).

    An epoch is one step: with every generator on the CUDA device and DSA (or no) augmentation, it is replayed as a
    CUDA graph (graphs.Graphed), recorded again after the learning-rate decay."""
    device = torch.device(args.device)
    images, labels = images.detach().to(device), labels.detach().to(device)
    epochs, batch = int(args.epoch_eval_train), int(args.batch_train)
    lr, amp = float(args.lr_net), getattr(args, 'amp', 'off')
    decay_after = epochs // 2 + 1
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    n = len(images)
    correct = torch.zeros(len(generators), dtype=torch.long, device=device)

    def epoch():
        order = torch.stack([torch.randperm(n, generator=g, device=draw_device(g)) for g in generators]).to(device)
        for i in range(0, n, batch):
            idx = order[:, i:i + batch]
            x, y = _augment(images[idx], args, generators), labels[idx]
            with autocast(device, amp):
                out = forward(x)
            loss = _loss(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct.add_((out.argmax(2) == y).sum(1))

    capturable = all(draw_device(g) == device for g in generators) and not _dc_augmented(args)
    step = Graphed(epoch, generators, capturable and graphs_enabled(device, getattr(args, 'cuda_graphs', 'on')),
                   name='evaluation epoch', state=(params, optimizer, correct, state))
    for ep in range(epochs + 1):
        if ep == epochs:
            correct.zero_()  # the last epoch's predictions count
        step()
        if ep == decay_after:
            # The reference builds a new optimiser here: the learning rate drops and the momentum starts again (a
            # zeroed buffer gives the first step a fresh one would).
            lr *= 0.1
            for group in optimizer.param_groups:
                group['lr'] = lr
            for state in optimizer.state.values():
                state['momentum_buffer'].zero_()
            step.rerecord()  # a recorded step holds the old rate
        if on_epoch is not None:
            on_epoch(ep)
    return correct


def _dc_augmented(args):
    dc_param = getattr(args, 'dc_aug_param', None)
    return not getattr(args, 'dsa', False) and dc_param is not None and \
        dc_param.get('strategy', 'none') not in ('none', None, '')


def _loss(out, y):
    """Each network's mean cross-entropy, summed: the sum's gradient for a network is that of its own loss. One
    network: the original's call, to the bit."""
    if len(out) == 1:
        return F.cross_entropy(out[0], y[0])
    return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction='none').view(len(out), -1).mean(1).sum()


def can_train_together(net):
    """BatchNorm updates its running statistics in place while training; rather than rely on vmap's handling of
    in-place updates of stacked buffers (not verified to match), such models are trained one by one."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def train_together(nets, images, labels, testloader, args, generators):
    """Train the networks `nets` (one architecture, can_train_together) at once on (images, labels) and test
    them: evaluate_synset's protocol for each, network i drawing from generators[i] exactly as it would alone
    (equal up to float rounding: the vectorised convolutions sum in another order). Returns [(train acc, test
    acc)]; the trained weights are written back into `nets`."""
    device = torch.device(args.device)
    params, buffers = stack_module_state([net.to(device) for net in nets])
    base = copy.deepcopy(nets[0]).to('meta')
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))
    base.train()
    correct = _train(list(params.values()), lambda x: forward(params, buffers, x), images, labels, args, generators,
                     state=list(buffers.values()))
    with torch.no_grad():
        for name, stacked in params.items():
            for net, trained in zip(nets, stacked):
                net.get_parameter(name).copy_(trained)
    base.eval()
    hits, total = torch.zeros(len(nets), dtype=torch.long, device=device), 0
    with torch.no_grad():
        for x, y in testloader:
            x, y = x.to(device), y.to(device)
            out = forward(params, buffers, x.expand(len(nets), *x.shape))
            hits += (out.argmax(2) == y).sum(1)
            total += len(y)
    return [(c / len(images), h / max(total, 1)) for c, h in zip(correct.tolist(), hits.tolist())]


@torch.no_grad()
def test_accuracy(net, testloader, device, top5=False, train_mode=False):
    """Accuracy of `net` over (images, labels) batches without gradients, in eval mode (train_mode: the DiM
    reference's test with BN layers in train mode). top5: (top-1, top-5) instead of top-1."""
    was_training = net.training
    net.train(train_mode)
    correct, correct5, total = 0, 0, 0
    for x, y in testloader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = net(x)
        if top5:
            hit = out.topk(min(5, out.shape[1]), 1).indices == y[:, None]
            correct += hit[:, 0].sum().item()
            correct5 += hit.any(1).sum().item()
        else:
            correct += (out.argmax(1) == y).sum().item()
        total += len(y)
    net.train(was_training)
    total = max(total, 1)
    return (correct / total, correct5 / total) if top5 else correct / total


def evaluate_pool(recipes, num_eval, data, images, labels, seed, keys, log, label='', on_epoch=None):
    """num_eval fresh networks per architecture of `recipes` ({arch: EvalRecipe}) trained on (images, labels) and
    tested on data's test set: {arch: [accuracies]}. Network i of arch draws its weights and its batches from the
    streams (seed, 'eval_net', *keys, arch, i) and (seed, 'eval', *keys, arch, i); label starts the log line.
    on_epoch(arch, i, ep, net), when given, is called after every epoch of every network."""
    accs = {}
    for arch, recipe in recipes.items():
        def build(i, arch=arch, recipe=recipe):
            return (get_network(arch, data.channel, data.num_classes, data.im_size, device=recipe.device,
                                generator=make_generator(seed, 'eval_net', *keys, arch, i)),
                    make_generator(seed, 'eval', *keys, arch, i))

        def report(i, result, arch=arch):
            acc_train, acc, took = result
            log(f'  {arch} #{i}: train acc {100 * acc_train:.2f}%, test acc {100 * acc:.2f}% ({took})')

        hook = None if on_epoch is None else (lambda i, ep, net, arch=arch: on_epoch(arch, i, ep, net))
        results, _ = evaluate_networks(num_eval, build, images, labels, data.testloader(), recipe, report, hook)
        accs[arch] = [acc for _, acc, _ in results]
        log(f'{label}: {arch} trained {recipe.epoch_eval_train} epochs on {len(images)} images, '
            f'test acc {mean_pm(accs[arch])} over {num_eval} models')
    return accs


def evaluate_networks(n, build, images, labels, testloader, recipe, report, on_epoch=None):
    """n networks trained on (images, labels) by evaluate_synset's protocol and tested on testloader. build(i) ->
    (network, generator): network i's initial weights and its stream. On a GPU the networks of this process train
    together (train_together; one by one with recipe.eval_one_by_one, for BN models or with on_epoch); on a CPU,
    where that is no faster and one by one is exact, one by one. Under torchrun each process trains its share
    (train_shared). on_epoch(i, ep, net) after every epoch. Returns ([(train accuracy, test accuracy, time) for
    every i], {i: trained network} of this process)."""
    built = {i: _streams_on_device(*build(i), recipe.device) for i in parallel.share(n)}
    nets = {i: net for i, (net, _) in built.items()}
    trained = {}
    if len(built) > 1 and trains_together(recipe, on_epoch) and can_train_together(next(iter(nets.values()))):
        t0 = time.time()
        results = train_together(list(nets.values()), images, labels, testloader, recipe,
                                 [g for _, g in built.values()])
        took = f'{len(built)} trained together in {time.time() - t0:.0f} s'
        trained = {i: (acc_train, acc, took) for i, (acc_train, acc) in zip(built, results)}

    def train_one(i):
        if i in trained:
            return trained[i]
        t0 = time.time()
        hook = None if on_epoch is None else (lambda ep, net: on_epoch(i, ep, net))
        _, acc_train, acc = evaluate_synset(i, nets[i], images, labels, testloader, recipe, generator=built[i][1],
                                            on_epoch=hook)
        return acc_train, acc, f'{time.time() - t0:.0f} s'
    return train_shared(n, train_one, report), nets


def _streams_on_device(net, generator, device):
    """(net, network i's stream drawn on `device`): on a GPU the batches and augmentation are drawn there, so an
    epoch never waits for the host (other numbers than the same stream on the CPU). build(i) gives a fresh stream,
    whose seed names it."""
    device = torch.device(device)
    if device.type == 'cpu' or generator is None or generator.device == device:
        return net, generator
    return net, torch.Generator(device).manual_seed(generator.initial_seed())


def trains_together(recipe, on_epoch=None):
    """Whether the networks of one architecture train together: on a GPU (one launch for all networks), unless
    recipe.eval_one_by_one or a per-epoch hook asks for them one at a time."""
    return torch.device(recipe.device).type != 'cpu' and not recipe.eval_one_by_one and on_epoch is None


def train_shared(n, train_one, report):
    """train_one(i) for this process's share of the networks 0..n-1 (all of them without torchrun), and
    report(i, result) for every network in order: as each one finishes in a single process (a network takes
    minutes on a CPU), after gathering the results under torchrun. Returns [result_i] for all i on every process."""
    results = {}
    for i in parallel.share(n):
        results[i] = train_one(i)
        if parallel.world_size() == 1:
            report(i, results[i])
    if parallel.world_size() > 1:
        for part in parallel.gather(results):
            results.update(part)
        for i in range(n):
            report(i, results[i])
    return [results[i] for i in range(n)]

"""Evaluating a (synthetic) training set: networks trained from scratch on it, then tested on real test images.

`evaluate_synset` keeps the original name and signature; what it trains with is an `EvalRecipe` (or any object
with the same attribute names, as the original's `args`). `evaluate_pool` trains `num_eval` networks per
architecture of an evaluation pool (`get_eval_pool`), each from its own named random stream.
"""
import dataclasses
import time
from typing import Optional

import torch
import torch.nn.functional as F

from augment import DiffAugment, ParamDiffAug, augment_dc
from networks import get_network
from utils import make_generator, mean_std


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
    dsa, dsa_strategy, dsa_param or dc_aug_param for augmentation). Returns (net, training accuracy of the last epoch, test accuracy in [0, 1]).
    """
    device = torch.device(args.device)
    net = net.to(device).train()
    images = images_train.detach().to(device)
    labels = labels_train.detach().to(device)
    epochs, batch = int(args.epoch_eval_train), int(args.batch_train)
    lr = float(args.lr_net)
    decay_after = epochs // 2 + 1
    dc_param = getattr(args, 'dc_aug_param', None)
    augment_dc_on = dc_param is not None and dc_param.get('strategy', 'none') not in ('none', None, '')

    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    n = len(images)
    for ep in range(epochs + 1):
        correct, total = 0, 0
        order = torch.randperm(n, generator=generator).to(device)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            x, y = images[idx], labels[idx]
            if getattr(args, 'dsa', False):
                x = DiffAugment(x, args.dsa_strategy, param=args.dsa_param, generator=generator)
            elif augment_dc_on:
                x = augment_dc(x, dc_param, generator=generator)
            out = net(x)
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ep == epochs:
                correct += (out.argmax(1) == y).sum().item()
                total += len(y)
        if ep == decay_after:
            # The reference builds a new optimiser here, so the momentum buffers start again.
            lr *= 0.1
            optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        if on_epoch is not None:
            on_epoch(ep, net)
    acc_train = correct / max(total, 1)
    acc_test = test_accuracy(net, testloader, device)
    return net, acc_train, acc_test


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
        accs[arch] = []
        for i in range(num_eval):
            net = get_network(arch, data.channel, data.num_classes, data.im_size, device=recipe.device,
                              generator=make_generator(seed, 'eval_net', *keys, arch, i))
            t0 = time.time()
            hook = None if on_epoch is None else (lambda ep, n, arch=arch, i=i: on_epoch(arch, i, ep, n))
            _, acc_train, acc = evaluate_synset(i, net, images, labels, data.testloader(), recipe,
                                                generator=make_generator(seed, 'eval', *keys, arch, i), on_epoch=hook)
            accs[arch].append(acc)
            # A model takes minutes on a CPU: say so as each one finishes.
            log(f'  {arch} #{i}: train acc {100 * acc_train:.2f}%, test acc {100 * acc:.2f}% '
                f'({time.time() - t0:.0f} s)')
        m, s = mean_std(accs[arch])
        log(f'{label}: {arch} trained {recipe.epoch_eval_train} epochs on {len(images)} images, '
            f'test acc {m:.2f} ± {s:.2f} over {num_eval} models')
    return accs

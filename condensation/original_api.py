"""The original DC repository's `utils` API on this project's code, so that scripts written against it run here:

    from condensation.common import get_loops, get_dataset, get_network, get_eval_pool, evaluate_synset, get_daparam, \
        match_loss, get_time, TensorDataset, epoch, DiffAugment, ParamDiffAug

`utils` hands these names out on first use (its module __getattr__): this module imports data, networks,
evaluation and dc, which import utils, so utils cannot import it at load time.

Signatures, return values and conventions are the original's; the work is done by the native functions
(data.get_dataset, networks.get_network, evaluation.evaluate_synset, dc.match_loss, augment.DiffAugment, ...).
Differences, all on purpose:
- Nothing seeds from the clock. Where the original reseeded torch from the clock (get_network, DiffAugment
  without a seed, the training shuffles) these draw from torch's global generator, so `torch.manual_seed(s)` at
  the top of a script makes it repeatable; get_network, DiffAugment and evaluate_synset also take a
  keyword-only `generator`. DiffAugment with a seed draws from the named stream (seed, 'DiffAugment'): the same
  seed gives the same transform (what the original's Siamese pairs rely on), and the global RNG is left alone.
- One device, no DataParallel; the datasets stay uint8 and are standardised as they are read.
- Bad input (an unknown dataset, model, loop setting or distance) ends as the original's exit() did, but with
  one line on stderr and exit code 2.
"""
import functools
import os
import sys
import time

import torch

from condensation.methods import dc
from condensation import evaluation
from condensation import networks
from condensation.augment import ParamDiffAug, get_daparam  # noqa: F401  (the original names, unchanged)
from condensation.augment import DiffAugment as _diff_augment
from condensation.data import get_dataset as _get_dataset
from condensation.evaluation import get_eval_pool  # noqa: F401
from condensation.common import UserError, _fail, default_device, make_generator


def _exits_on_bad_input(fn):
    """The original exit()s on bad input; here that is one line on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            _fail(os.path.basename(sys.argv[0]), e)
    return wrapper


class TensorDataset(torch.utils.data.Dataset):
    """(image, label) pairs over two tensors; the images are kept as float."""

    def __init__(self, images, labels):
        self.images = images.detach().float()
        self.labels = labels.detach()

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def __len__(self):
        return self.images.shape[0]


class StandardisedSplit(torch.utils.data.Dataset):
    """One split of a data.Data as a torch dataset, like the original's torchvision datasets: item i is (C x H x W
    standardised float image, int label). The uint8 images are standardised one at a time as they are read."""

    def __init__(self, data, images, labels):
        self._data, self.images, self.targets, self.classes = data, images, labels, data.class_names

    def __getitem__(self, index):
        return self._data.standardise(self.images[index][None])[0], int(self.targets[index])

    def __len__(self):
        return len(self.images)


@_exits_on_bad_input
def get_dataset(dataset, data_path):
    """(channel, im_size, num_classes, class_names, mean, std, dst_train, dst_test, testloader), on the CPU: the
    two datasets yield (standardised image, label), the test loader batches of 256 in order."""
    data = _get_dataset(dataset, data_path)
    return (data.channel, data.im_size, data.num_classes, data.class_names, data.mean, data.std,
            StandardisedSplit(data, data.x_train, data.labels_train),
            StandardisedSplit(data, data.x_test, data.labels_test),
            data.testloader(256))


@_exits_on_bad_input
def get_network(model, channel, num_classes, im_size=(32, 32), *, generator=None):
    """A freshly initialised network on the GPU when there is one, else the CPU (weights from `generator`, by
    default torch's global generator)."""
    if model not in networks.NETWORKS:
        raise UserError(f"unknown model: {model}; choose one of {', '.join(networks.NETWORKS)}")
    try:
        return networks.get_network(model, channel, num_classes, im_size, device=default_device(), generator=generator)
    except ValueError as e:  # the network does not fit the images (too small for its pooling, ...)
        raise UserError(f'{model} for {channel}-channel {tuple(im_size)} images: {e}') from None


def get_time():
    return time.strftime('[%Y-%m-%d %H:%M:%S]', time.localtime())


@_exits_on_bad_input
def match_loss(gw_syn, gw_real, args):
    """The gradient distance args.dis_metric ('ours', 'mse' or 'cos') as a 0-d tensor on args.device; 'ours' skips
    1-D gradients unless args.match_1d."""
    try:
        return dc.match_loss(gw_syn, gw_real, args.dis_metric, getattr(args, 'match_1d', False)).to(args.device)
    except ValueError:
        raise UserError(f'unknown distance function: {args.dis_metric}') from None


@_exits_on_bad_input
def get_loops(ipc):
    """(outer_loop, inner_loop) from the original's table by ipc; above 50, (50, 10) with a warning."""
    return dc.get_loops(ipc)


def epoch(mode, dataloader, net, optimizer, criterion, args, aug):
    """One pass over dataloader, training ('train') or testing (any other mode, without gradients); aug: DSA
    (args.dsa) or DC augmentation (args.dc_aug_param) of each batch. Returns (mean loss, accuracy)."""
    device = torch.device(args.device)
    net, criterion = net.to(device), criterion.to(device)
    train = mode == 'train'
    net.train(train)
    loss_sum, correct, total = 0.0, 0, 0
    with torch.set_grad_enabled(train):
        for datum in dataloader:
            img, lab = datum[0].float().to(device), datum[1].long().to(device)
            if aug:
                img = evaluation._augment(img[None], args, [None])[0]
            output = net(img)
            loss = criterion(output, lab)
            if train:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            loss_sum += loss.item() * len(lab)
            correct += (output.argmax(1) == lab).sum().item()
            total += len(lab)
    return loss_sum / total, correct / total


def evaluate_synset(it_eval, net, images_train, labels_train, testloader, args, *, generator=None):
    """Train net from scratch on (images_train, labels_train) with the protocol in args (lr_net, epoch_eval_train,
    batch_train, device; dsa/dsa_strategy/dsa_param or dc_aug_param), test it, print the original's line.
    Returns (net, training accuracy of the last epoch, test accuracy)."""
    start = time.time()
    net, acc_train, acc_test = evaluation.evaluate_synset(it_eval, net, images_train, labels_train, testloader, args,
                                                          generator=generator)
    print(f'{get_time()} Evaluate_{it_eval:02d}: epoch = {int(args.epoch_eval_train):04d} train time = '
          f'{int(time.time() - start)} s train acc = {acc_train:.4f}, test acc = {acc_test:.4f}')
    return net, acc_train, acc_test


def DiffAugment(x, strategy='', seed=-1, param=None, *, generator=None):
    """DSA of a batch. seed = -1: one op per call with per-image parameters. Any other seed: one parameter set
    for the whole batch, the same for the same seed (call it on the real and on the synthetic batch with one seed
    for a Siamese pair)."""
    param = ParamDiffAug() if param is None else param
    if seed == -1:
        return _diff_augment(x, strategy, param, generator)
    return _diff_augment(x, strategy, param, make_generator(seed, 'DiffAugment'), siamese=True)

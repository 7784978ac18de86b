"""The Python API: condense and evaluate image tensors that a program or a notebook holds.

    import condensation as cd
    data = cd.dataset(x_train, y_train, x_test, y_test)   # N x C x H x W, uint8 in [0, 255] or float in [0, 1]
    result = cd.condense(data, 'DM', ipc=10, iterations=1000, seed=0, callback=lambda it, loss: it == 500)
    result.images, result.labels                          # the condensed set (standardised, as networks see it)
    accuracies = cd.evaluate(data, result.images, result.labels, epochs=1000, num_eval=5, seed=0)

The work is done by the entry scripts' own pieces: the synthetic set and its optimiser (run.runner.SyntheticSet),
one step of the method (methods.dm.DMStep, methods.dc.DCStep), the iteration bookkeeping (run.progress.Progress:
the divergence check, a bar in a terminal, a progress line every 30 s elsewhere) and the evaluation protocol
(evaluation.evaluate_pool). Every random draw comes from the streams named by `seed`, as in the scripts, so on
the CPU `condense(data, 'DM', seed=s, experiment=e, ...)` gives, bit for bit, the e-th set of `main_DM.py --seed s`
with the same settings on the same images and normalisation (`main.py --method DC` / `DSA` likewise), and
`evaluate(..., seed=s, streams=(e, N))` the accuracies that run records for it after N iterations. The global
random generators are neither read nor reseeded. Bad input raises `UserError` with a one-line message.
"""
from condensation import env  # noqa: F401  (first: the environment PyTorch reads when it starts, env.py)

import dataclasses
import math

import torch

from condensation.augment import ParamDiffAug, parse_strategy
from condensation.common import UserError, check_device, default_device, make_generator
from condensation.data import Data, DatasetInfo, channel_stats, denormalise
from condensation.evaluation import EvalRecipe, evaluate_pool
from condensation.methods.dc import DCStep, get_loops, recommended_dsa_strategy
from condensation.methods.dm import DMStep, default_real_chunk
from condensation.run.cli import Config, check_network
from condensation.run.progress import epoch_lines
from condensation.run.runner import SyntheticSet

__all__ = ['dataset', 'condense', 'evaluate', 'Condensed', 'UserError', 'FULL_DSA']

FULL_DSA = 'color_crop_cutout_flip_scale_rotate'  # the DSA strategy DM synthesises and DM/DSA sets are evaluated with

# Each method: its step, and the defaults of its entry script (main_DM.py; main.py --method DC / DSA). 'dsa':
# whether the method must augment (True), must not (False) or may (None); 'strategy': the DSA strategy it takes
# when none is given, by the dataset's name (DSA: main.py's, no flipping for MNIST and SVHN).
METHODS = {
    'DM': dict(step=DMStep, lr_img=1.0, init='real', dsa=None, strategy=lambda name: FULL_DSA),
    'DC': dict(step=DCStep, lr_img=0.1, init='noise', dsa=False, strategy=lambda name: None),
    'DSA': dict(step=DCStep, lr_img=0.1, init='noise', dsa=True, strategy=recommended_dsa_strategy),
}
# main.py's matching settings that its flags leave at their defaults (--compat reference).
DC_DEFAULTS = dict(lr_net=0.01, batch_train=256, dis_metric='ours', match_1d=False, bn_stats='momentum')


def _quiet(line):
    pass


def dataset(images, labels, test_images=None, test_labels=None, *, classes=None, mean=None, std=None, name='tensors',
            device=None):
    """A dataset (condensation.data.Data) over tensors held in memory, for `condense` and `evaluate`.

    images: N x C x H x W, uint8 in [0, 255] or float in [0, 1] (torchvision's ToTensor scale), kept as given
    (never written to); labels: N class indices 0..K-1. test_images, test_labels: the test split `evaluate` tests
    on (optional; the same layout). classes: K class names (default: '0', '1', ... up to the largest label).
    mean, std: the per-channel normalisation (a number or C numbers, on the images' [0, 1] scale; default: the
    training images' own, over every pixel); images already standardised take mean=0, std=1. name: the name in
    logs; 'MNIST' or 'SVHN' also make DSA's default strategy skip flipping, as main.py does. device: where the
    images live and the work runs (default: cuda when available, else cpu).
    """
    images, labels = _images(images, 'images'), _labels(labels, 'labels')
    if len(images) != len(labels) or not len(images):
        raise UserError(f'images and labels must hold the same number of rows (at least one), got {len(images)} and '
                        f'{len(labels)}')
    num_classes = len(classes) if classes is not None else int(labels.max()) + 1
    if test_images is None:
        test_images, test_labels = images[:0], labels[:0]
    elif test_labels is None:
        raise UserError('test_images given without test_labels; pass both or neither')
    test_images, test_labels = _images(test_images, 'test_images'), _labels(test_labels, 'test_labels')
    if test_images.shape[1:] != images.shape[1:] or len(test_images) != len(test_labels):
        raise UserError(f'test_images must be {len(test_labels)} x {" x ".join(map(str, images.shape[1:]))} like the '
                        f'training images, got {" x ".join(map(str, test_images.shape))}')
    for what, y in (('labels', labels), ('test_labels', test_labels)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise UserError(f'{what} must lie in 0..{num_classes - 1} ({num_classes} classes), found '
                            f'{int(y.min())}..{int(y.max())}; pass classes= with a name for every class')
    empty = [c for c, n in enumerate(torch.bincount(labels, minlength=num_classes).tolist()) if n == 0]
    if empty:
        raise UserError(f'class(es) {empty} have no training image; every class needs at least one')
    stats = channel_stats(images) if mean is None and std is None else _stats(mean, std, images.shape[1])
    device = check_device(device or default_device())
    names = [str(c) for c in (classes if classes is not None else range(num_classes))]
    return Data(name, names, images, labels, test_images, test_labels, device, stats)


def _images(x, what):
    x = torch.as_tensor(x).detach()
    if x.dim() != 4 or not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise UserError(f'{what} must be a 4-d N x C x H x W tensor of uint8 or float, got {x.dim()}-d {x.dtype}')
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise UserError(f'{what} holds nan or inf values')
    return x


def _labels(y, what):
    y = torch.as_tensor(y).detach()
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise UserError(f'{what} must be a 1-d tensor of integer class indices, got {y.dim()}-d {y.dtype}')
    return y.long().cpu()


def _stats(mean, std, channel):
    """(mean, std) as C floats each; UserError unless both are given, finite and std > 0."""
    if mean is None or std is None:
        raise UserError('pass both mean and std, or neither (then they are computed from the training images)')
    out = []
    for what, v in (('mean', mean), ('std', std)):
        v = torch.as_tensor(v, dtype=torch.float64).flatten().tolist()
        v = v * channel if len(v) == 1 else v
        if len(v) != channel or not all(math.isfinite(a) for a in v):
            raise UserError(f'{what} must be one finite number or {channel} (one per channel), got {len(v)} value(s)')
        out.append(v)
    if min(out[1]) <= 0:
        raise UserError(f'std must be positive, got {out[1]}')
    return out


def _check_model(model, data):
    """A network that takes data's channels, size and classes (UserError naming the valid ones otherwise)."""
    check_network(model, DatasetInfo(data.name, data.channel, data.im_size, data.num_classes, data.class_names))


def _count(what, value, least=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f'{what} must be an integer >= {least}, got {value!r}')


def _positive(what, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise UserError(f'{what} must be a positive finite number, got {value!r}')


@dataclasses.dataclass
class Condensed:
    """What `condense` returns. images: K·ipc x C x H x W float, standardised with the dataset's mean and std (what
    networks train on; `pixels()` gives them in [0, 1] for viewing), on the dataset's device; labels: K·ipc class
    indices, class-major (ipc images of class 0, then of class 1, ...); iterations: the steps taken (fewer than asked
    when the callback stopped the run); losses: [(iteration, loss)] as read for the callback."""
    images: torch.Tensor
    labels: torch.Tensor
    iterations: int
    losses: list
    method: str
    mean: list
    std: list

    def pixels(self):
        """The images de-normalised and clamped to [0, 1], on the CPU."""
        return denormalise(self.images.detach().float().cpu(), self.mean, self.std)


def _method_args(method, data, ipc, model, lr_img, init, dsa_strategy, batch_real, outer_loop, inner_loop):
    """The settings a step reads, as the entry script derives them from its flags (a read-only Config)."""
    spec = METHODS[method]
    strategy = spec['strategy'](data.name) if dsa_strategy is None else dsa_strategy
    try:
        dsa = bool(parse_strategy(strategy))
    except ValueError as e:
        raise UserError(f'dsa_strategy: {e}') from None
    if spec['dsa'] is not None and dsa != spec['dsa']:
        raise UserError(f"method DSA needs a DSA strategy, got {strategy!r}; use method='DC' for none" if spec['dsa']
                        else f"method DC augments nothing while matching, got dsa_strategy {strategy!r}; use "
                             f"method='DSA'")
    args = dict(device=str(data.device), model=model, ipc=ipc, lr_img=lr_img, init=init, batch_real=batch_real,
                dsa=dsa, dsa_strategy=strategy if dsa else 'None', dsa_param=ParamDiffAug(), amp='off',
                cuda_graphs='on', compile='off')
    if spec['step'] is DMStep:
        args.update(per_class=False, real_chunk=default_real_chunk(model, data.device))
    else:
        outer, inner = get_loops(ipc, outer_loop, inner_loop)
        args.update(DC_DEFAULTS, outer_loop=outer, inner_loop=inner)
    return Config(**args)


def condense(data, method='DM', *, ipc=10, iterations=1000, seed=0, model='ConvNet', lr_img=None, init=None,
             dsa_strategy=None, batch_real=256, outer_loop=None, inner_loop=None, experiment=0, callback=None,
             every=1, log=print):
    """Condense `data` (a `dataset`) into ipc images per class with DM, DC or DSA; returns a `Condensed`.

    method: 'DM' (distribution matching; main_DM.py), 'DC' (gradient matching) or 'DSA' (with differentiable
    Siamese augmentation; main.py --method DC / DSA). iterations: the method's iterations (DC/DSA: outer
    iterations, each on a fresh network). seed, experiment: name the random streams as the scripts' --seed and
    experiment index. model: the matching network (networks.NETWORKS). lr_img, init ('noise' | 'real'),
    dsa_strategy ('none' switches DSA off; DM only), batch_real (real images per class per step), outer_loop,
    inner_loop (DC/DSA; default: the original's table by ipc): None takes the entry script's default.

    callback(iteration, loss) is called after iteration 0, every `every`-th one after it and the last (loss a
    float; iterations count from 0); a callback that returns True stops the run there, and the set so far is
    returned. Reading the loss makes a GPU wait, so every > 1 runs faster there. log: where progress lines go (a
    callable taking a line; None: silent); in a terminal a bar is drawn instead. A loss that is not finite stops
    the run with a UserError.
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(data, Data):
        raise UserError(f'data must be a dataset (condensation.dataset(...)), got {type(data).__name__}')
    spec = METHODS[method]
    lr_img, init = spec['lr_img'] if lr_img is None else lr_img, spec['init'] if init is None else init
    _count('ipc', ipc)
    _count('iterations', iterations, 0)
    _count('batch_real', batch_real)
    _count('every', every)
    _count('experiment', experiment, 0)
    _positive('lr_img', lr_img)
    if init not in ('noise', 'real'):
        raise UserError(f"init must be 'noise' or 'real', got {init!r}")
    smallest = min(len(i) for i in data.indices_class)
    if init == 'real' and ipc > smallest:
        raise UserError(f"ipc {ipc} exceeds the smallest class ({smallest} images); lower ipc or use init='noise'")
    _check_model(model, data)
    args = _method_args(method, data, ipc, model, lr_img, init, dsa_strategy, batch_real, outer_loop, inner_loop)
    # The script's experiment `experiment`: its initial set, then its steps (main_DM.py / main.py).
    syn = SyntheticSet(data, ipc, init, lr_img, make_generator(seed, 'init', experiment))
    step = spec['step'](args, data, syn.images, syn.labels, syn.optimizer)
    progress = syn.progress(log or _quiet, iterations, method, desc=method, bar=log is not None,
                            read_every=every if callback is not None else 10)
    losses, done = [], 0
    for it in progress:
        loss = progress.read(it, step(seed, (experiment, it)), force=it == iterations - 1)
        done = it + 1
        if loss is not None:
            losses.append((it, loss))
            if callback is not None and callback(it, loss):
                break
    return Condensed(syn.images.detach(), syn.labels, done, losses, method, data.mean, data.std)


# augment: how evaluate names its kinds -> the EvalRecipe fields (a dict is DC augmentation, augment.get_daparam's)
def _augmentation(augment):
    if isinstance(augment, dict):
        return dict(dsa=False, dc_aug_param=augment)
    try:
        on = bool(parse_strategy(augment))
    except ValueError as e:
        raise UserError(f'augment: {e}') from None
    return dict(dsa=on, dsa_strategy=augment if on else None, dsa_param=ParamDiffAug() if on else None)


def evaluate(data, images, labels, *, model='ConvNet', num_eval=5, epochs=1000, augment=FULL_DSA, lr=0.01,
             batch=256, seed=0, streams=(), log=print):
    """Train num_eval fresh networks on (images, labels) by the project's evaluation protocol and test each on the
    test split of `data`; returns their test accuracies, floats in [0, 1].

    images: M x C x H x W standardised with data's mean and std (a `Condensed` set's images; real images x go
    through data.standardise(x)); labels: M class indices. The protocol: SGD (momentum 0.9, weight decay 5e-4)
    at lr for epochs + 1 epochs, lr x 0.1 after the middle, batches of `batch`, each batch augmented by `augment`:
    a DSA strategy (default: the DM and DSA papers' protocol), 'none', or a dict of DC augmentation parameters
    (augment.get_daparam, main.py's DC protocol). Network i draws its weights and batches from the streams
    (seed, 'eval_net' | 'eval', *streams, model, i); the scripts evaluate experiment e's set after N iterations with
    streams=(e, N). log: a callable taking a line per network (None: silent).
    """
    if not isinstance(data, Data):
        raise UserError(f'data must be a dataset (condensation.dataset(...)), got {type(data).__name__}')
    if not len(data.labels_test):
        raise UserError('data has no test split to test on; build it with test_images and test_labels')
    images, labels = _images(images, 'images'), _labels(labels, 'labels')
    if not images.is_floating_point() or images.shape[1:] != (data.channel, *data.im_size) \
            or len(images) != len(labels) or not len(images):
        raise UserError(f'images must be float M x {data.channel} x {" x ".join(map(str, data.im_size))} '
                        f'(standardised) with one label each, got {images.dtype} {" x ".join(map(str, images.shape))} '
                        f'and {len(labels)} labels')
    if int(labels.min()) < 0 or int(labels.max()) >= data.num_classes:
        raise UserError(f'labels must lie in 0..{data.num_classes - 1}, found {int(labels.min())}..'
                        f'{int(labels.max())}')
    _count('num_eval', num_eval)
    _count('epochs', epochs, 0)
    _count('batch', batch)
    _positive('lr', lr)
    _check_model(model, data)
    recipe = EvalRecipe(epoch_eval_train=epochs, lr_net=lr, batch_train=batch, device=str(data.device),
                        **_augmentation(augment))
    hook = epoch_lines(log, epochs) if log is not None and data.device.type == 'cpu' else None
    accs = evaluate_pool({model: recipe}, num_eval, data, images, labels, seed, tuple(streams), log or _quiet,
                         label='evaluate', on_epoch=hook)
    return accs[model]


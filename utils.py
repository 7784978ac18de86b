"""Shared helpers: datasets, seeding, evaluation, results I/O, command-line plumbing.

The names follow the original DC/DSA/DM `utils.py` (get_dataset, get_network, evaluate_synset,
get_eval_pool, get_daparam, DiffAugment) so that researchers find their way around, but nothing
here reseeds a global RNG or reads the clock: randomness arrives as `torch.Generator`s.
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from augment import DiffAugment, ParamDiffAug, augment_dc, get_daparam  # noqa: F401  (re-exported)
from networks import NETWORKS, get_network  # noqa: F401  (re-exported)


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr with exit code 2, never a traceback."""


# ----------------------------------------------------------------------------------------------
# Datasets (SPEC §1)

# name -> (channels, (H, W), classes, mean, std); normalisation constants of SPEC §1.1.
DATASETS = {
    'MNIST': (1, (28, 28), 10, [0.1307], [0.3081]),
    'FashionMNIST': (1, (28, 28), 10, [0.2861], [0.3530]),
    'SVHN': (3, (32, 32), 10, [0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
    'CIFAR10': (3, (32, 32), 10, [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    'CIFAR100': (3, (32, 32), 100, [0.5071, 0.4866, 0.4409], [0.2673, 0.2564, 0.2762]),
    'TinyImageNet': (3, (64, 64), 200, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}
# DiM's spellings (and any capitalisation of ours) map onto the project's names.
_ALIASES = {'fashion': 'FashionMNIST', 'tiny': 'TinyImageNet', 'tinyimagenet': 'TinyImageNet'}
_ALIASES.update({name.lower(): name for name in DATASETS})

# What a user has to put in data_path for each dataset, for the error message.
_EXPECTED = {
    'MNIST': 'MNIST/raw/{train,t10k}-*-ubyte',
    'FashionMNIST': 'FashionMNIST/raw/{train,t10k}-*-ubyte',
    'SVHN': '{train,test}_32x32.mat',
    'CIFAR10': 'cifar-10-batches-py/',
    'CIFAR100': 'cifar-100-python/',
    'TinyImageNet': 'tinyimagenet.pt or tiny-imagenet-200/',
}


def canonical_dataset(name):
    """'cifar10', 'fashion', 'CIFAR10' ... -> the project's dataset name; UserError if unknown."""
    key = str(name).lower()
    if key not in _ALIASES:
        raise UserError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return _ALIASES[key]


class Data:
    """A dataset on one device (SPEC §1.2): images stay uint8 and are standardised batch by batch, which gives the
    same floats as standardising everything up front at a quarter of the memory and none of the start-up time."""

    def __init__(self, name, class_names, images_train, labels_train, images_test, labels_test, device='cpu'):
        self.name = name
        self.channel, self.im_size, self.num_classes, self.mean, self.std = DATASETS[name]
        self.class_names = list(class_names)
        self.device = torch.device(device)
        self.x_train, self.x_test = images_train.to(self.device), images_test.to(self.device)
        self.labels_train = labels_train.long().to(self.device)
        self.labels_test = labels_test.long().to(self.device)
        # Kept on the CPU: they are only used to pick indices with a CPU generator.
        labels = labels_train.long().cpu()
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=self.num_classes).tolist()
        self.indices_class = list(torch.split(order, counts))

    def standardise(self, x):
        return standardise(x, self.mean, self.std, self.device)

    def images(self, index):
        """Standardised training images at `index` (any index a tensor accepts)."""
        if isinstance(index, torch.Tensor):
            index = index.to(self.device)
        return self.standardise(self.x_train[index])

    @property
    def images_train(self):
        return self.images(slice(None))

    @property
    def images_test(self):
        return self.standardise(self.x_test)

    def get_images(self, c, n, generator=None):
        """n images of class c drawn uniformly without replacement (all of them if the class is smaller)."""
        idx = self.indices_class[c]
        return self.images(idx[torch.randperm(len(idx), generator=generator)[:n]])

    def testloader(self, batch_size=256):
        return TensorLoader(self.x_test, self.labels_test, batch_size, transform=self.standardise)

    def __repr__(self):
        return (f'Data({self.name}: train {tuple(self.x_train.shape)}, test {tuple(self.x_test.shape)}, '
                f'{self.num_classes} classes, device {self.device})')


class TensorLoader:
    """Batches over tensors already on the device: what a DataLoader does, without per-item Python work."""

    def __init__(self, images, labels, batch_size=256, transform=None):
        self.images, self.labels, self.batch_size, self.transform = images, labels, batch_size, transform

    def __iter__(self):
        for i in range(0, len(self.images), self.batch_size):
            x = self.images[i:i + self.batch_size]
            yield (self.transform(x) if self.transform else x), self.labels[i:i + self.batch_size]

    def __len__(self):
        return (len(self.images) + self.batch_size - 1) // self.batch_size


def standardise(images, mean, std, device='cpu'):
    """uint8 N×C×H×W in [0, 255] -> float (x/255 - mean)/std on `device` (SPEC §1.1 transform)."""
    x = images.to(device)
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    shape = (1, -1, 1, 1)
    return x.sub_(torch.tensor(mean, device=x.device).view(shape)).div_(torch.tensor(std, device=x.device).view(shape))


def denormalise(images, mean, std):
    """Standardised images -> [0, 1] for viewing."""
    shape = (1, -1, 1, 1)
    m = torch.tensor(mean, device=images.device).view(shape)
    s = torch.tensor(std, device=images.device).view(shape)
    return (images * s + m).clamp(0, 1)


def get_dataset(dataset, data_path, device='cpu', download=True):
    """Load a dataset as a `Data` on `device`.

    Looked up in this order: a prepared tensor file `<data_path>/<DATASET>.pt` (SPEC §1.3 layout, for any
    dataset); for TinyImageNet also `tinyimagenet.pt` and the `tiny-imagenet-200/` folder; otherwise
    torchvision's files, downloaded if missing and `download` is set. After a torchvision or folder load the
    prepared file is written next to the data (when the folder is writable), so later runs skip the decoding.
    """
    name = canonical_dataset(dataset)
    raw = _load_prepared(name, data_path)
    if raw is None:
        raw = _load_tinyimagenet_folder(data_path) if name == 'TinyImageNet' else _load_torchvision(name, data_path, download)
        _cache_prepared(raw, os.path.join(data_path, f'{name}.pt'))
    return Data(name, raw['classes'], raw['images_train'], raw['labels_train'], raw['images_val'], raw['labels_val'], device)


def _prepared_candidates(name, data_path):
    names = [f'{name}.pt'] + (['tinyimagenet.pt'] if name == 'TinyImageNet' else [])
    return [os.path.join(data_path, n) for n in names]


def _load_prepared(name, data_path):
    for path in _prepared_candidates(name, data_path):
        if os.path.isfile(path):
            try:
                raw = torch.load(path, map_location='cpu', weights_only=True)
            except Exception as e:  # a truncated or foreign file: say which and how to recover
                raise UserError(f'{path} is not a readable tensor file ({type(e).__name__}); delete it to rebuild it '
                                f'from the original files') from None
            _check_prepared(name, raw, path)
            return raw
    return None


def _check_prepared(name, raw, path):
    channel, im_size, num_classes = DATASETS[name][:3]
    keys = ('classes', 'images_train', 'labels_train', 'images_val', 'labels_val')
    if not isinstance(raw, dict) or any(k not in raw for k in keys):
        raise UserError(f'{path} lacks the keys {", ".join(keys)}; see the data layout in README.md')
    for split in ('train', 'val'):
        x, y = raw[f'images_{split}'], raw[f'labels_{split}']
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != (channel, *im_size) or len(x) != len(y):
            raise UserError(f'{path}: images_{split} must be uint8 N×{channel}×{im_size[0]}×{im_size[1]} with one '
                            f'label each, got {x.dtype} {tuple(x.shape)} and {len(y)} labels')
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise UserError(f'{path}: labels_{split} must lie in 0..{num_classes - 1}')
    if len(raw['classes']) != num_classes:
        raise UserError(f'{path}: expected {num_classes} class names, found {len(raw["classes"])}')


def _read_idx(path):
    """An uncompressed idx file (MNIST's format) as a uint8 tensor."""
    with open(path, 'rb') as f:
        buf = f.read()
    ndim = buf[3]
    shape = [int.from_bytes(buf[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
    return torch.frombuffer(bytearray(buf[4 + 4 * ndim:]), dtype=torch.uint8).view(shape)


def _load_idx(name, data_path):
    """MNIST / FashionMNIST from torchvision's raw layout, read directly (torchvision's reader is slower)."""
    raw = os.path.join(data_path, name, 'raw')
    files = [os.path.join(raw, f'{p}-{k}-idx{d}-ubyte') for p in ('train', 't10k') for k, d in (('images', 3),
                                                                                              ('labels', 1))]
    if not all(os.path.isfile(f) for f in files):
        return None
    xtr, ytr, xte, yte = (_read_idx(f) for f in files)
    classes = [str(i) for i in range(10)] if name == 'MNIST' else list(FASHION_CLASSES)
    return dict(classes=classes, images_train=xtr.unsqueeze(1), labels_train=ytr.long(),
                images_val=xte.unsqueeze(1), labels_val=yte.long())


FASHION_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                   'Ankle boot')


def _load_torchvision(name, data_path, download):
    if name in ('MNIST', 'FashionMNIST'):
        raw = _load_idx(name, data_path)
        if raw is not None:
            return raw
    import torchvision.datasets as tvd
    cls = {'MNIST': tvd.MNIST, 'FashionMNIST': tvd.FashionMNIST, 'SVHN': tvd.SVHN,
           'CIFAR10': tvd.CIFAR10, 'CIFAR100': tvd.CIFAR100}[name]
    splits = [dict(split='train'), dict(split='test')] if name == 'SVHN' else [dict(train=True), dict(train=False)]
    existed = os.path.isdir(data_path)
    out = []
    for kw in splits:
        try:
            try:
                dst = cls(data_path, download=False, **kw)
            except RuntimeError:
                if not download:
                    raise
                dst = cls(data_path, download=True, **kw)
        except Exception as e:
            if not existed:
                _remove_empty_tree(data_path)  # a failed download leaves no empty folders behind
            why = 'not found' if not download else f'not found, and the download failed ({type(e).__name__})'
            raise UserError(f'{name} {why} in {os.path.abspath(data_path)}: expected {name}.pt (prepared tensor '
                            f'file) or {_EXPECTED[name]}; pass --data_path to the folder holding them') from None
        # torchvision already holds every split as one array: convert it in one go (no per-item PIL loop).
        if name in ('MNIST', 'FashionMNIST'):
            return _load_idx(name, data_path)  # its download has just written the raw files of both splits
        if name == 'SVHN':
            images, labels = torch.from_numpy(dst.data), torch.from_numpy(dst.labels.astype(np.int64))
        else:
            images, labels = torch.from_numpy(dst.data).permute(0, 3, 1, 2), torch.tensor(dst.targets)
        out.append((images.contiguous(), labels.long()))
    classes = [str(i) for i in range(10)] if name in ('MNIST', 'SVHN') else list(dst.classes)
    return dict(classes=classes, images_train=out[0][0], labels_train=out[0][1],
                images_val=out[1][0], labels_val=out[1][1])


def _remove_empty_tree(path):
    for root, dirs, files in os.walk(path, topdown=False):
        if files:
            return
        os.rmdir(root)


def _cache_prepared(raw, path):
    """Write the prepared tensor file next to the data; a read-only data folder simply goes without."""
    if os.access(os.path.dirname(os.path.abspath(path)), os.W_OK) and not os.path.exists(path):
        try:
            atomic_save(raw, path)
        except OSError:
            pass


def _load_tinyimagenet_folder(data_path, train_per_class=500, val_per_class=50):
    folder = os.path.join(data_path, 'tiny-imagenet-200')
    if not os.path.isdir(folder):
        raise UserError(f'TinyImageNet not found in {os.path.abspath(data_path)}: expected TinyImageNet.pt, '
                        f'tinyimagenet.pt or the tiny-imagenet-200/ folder; pass --data_path to the folder holding them')
    return build_tinyimagenet(folder, train_per_class, val_per_class)


def build_tinyimagenet(folder, train_per_class=500, val_per_class=50):
    """The prepared TinyImageNet tensors from the standard `tiny-imagenet-200/` layout (SPEC §1.3).

    Classes in `wnids.txt` order; training images sorted by file name within a class; validation images
    sorted by file name and labelled from `val/val_annotations.txt`; grayscale images replicated to RGB.
    """
    from PIL import Image

    def read(paths):
        arrays = []
        for p in paths:
            with Image.open(p) as im:
                a = np.asarray(im.convert('RGB'))
            if a.shape != (64, 64, 3):
                raise UserError(f'{p} is {a.shape[1]}×{a.shape[0]}, TinyImageNet images are 64×64')
            arrays.append(a)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    with open(os.path.join(folder, 'wnids.txt')) as f:
        wnids = [line.strip() for line in f if line.strip()]
    label = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for w in wnids:
        d = os.path.join(folder, 'train', w, 'images')
        files = sorted(os.listdir(d))
        if len(files) != train_per_class:
            raise UserError(f'{d} holds {len(files)} images, expected {train_per_class}')
        train_paths += [os.path.join(d, f) for f in files]
        train_labels += [label[w]] * len(files)
    with open(os.path.join(folder, 'val', 'val_annotations.txt')) as f:
        ann = dict(line.split('\t')[:2] for line in f if line.strip())
    val_files = sorted(ann)
    val_labels = [label[ann[f]] for f in val_files]
    counts = np.bincount(val_labels, minlength=len(wnids))
    if (counts != val_per_class).any():
        raise UserError(f'{folder}/val has {counts.min()}..{counts.max()} images per class, expected {val_per_class}')
    return dict(classes=wnids, images_train=read(train_paths), labels_train=torch.tensor(train_labels),
                images_val=read([os.path.join(folder, 'val', 'images', f) for f in val_files]),
                labels_val=torch.tensor(val_labels))


# ----------------------------------------------------------------------------------------------
# Seeding: one --seed, and a named stream for everything that needs randomness

def derive_seed(seed, *keys):
    """A 63-bit seed derived from (seed, *keys), e.g. (seed, 'net', exp, it): stable across runs and machines."""
    digest = hashlib.sha256(repr((int(seed),) + tuple(keys)).encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def make_generator(seed, *keys):
    """A CPU torch.Generator for the stream named by keys (see derive_seed)."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


# ----------------------------------------------------------------------------------------------
# Evaluation (SPEC §4)

def get_eval_pool(eval_mode, model, model_eval, strict=False):
    """The architectures a synthetic set is evaluated on (SPEC §4.3)."""
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
    return [model_eval]


def evaluate_synset(it_eval, net, images_train, labels_train, testloader, args, generator=None):
    """Train `net` from scratch on a (synthetic) set, then test it (SPEC §4.1).

    args needs lr_net, epoch_eval_train, batch_train, device, and for augmentation dsa / dsa_strategy /
    dsa_param or dc_aug_param. Returns (net, training accuracy of the last epoch, test accuracy in [0, 1]).
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
            # The reference builds a new optimiser here, so the momentum buffers start again (SPEC §12 A20).
            lr *= 0.1
            optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    acc_train = correct / max(total, 1)
    acc_test = test_accuracy(net, testloader, device)
    if getattr(args, 'verbose_eval', False):
        print(f'Evaluate_{it_eval:02d}: epoch = {epochs:04d} train acc = {acc_train:.4f}, test acc = {acc_test:.4f}')
    return net, acc_train, acc_test


@torch.no_grad()
def test_accuracy(net, testloader, device, top5=False, train_mode=False):
    """Accuracy of `net` over (images, labels) batches without gradients, in eval mode (train_mode: the DiM
    reference's BN-in-train-mode test, SPEC §12 B2). top5: (top-1, top-5) instead of top-1."""
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


def class_means(rows, cls, num_classes):
    """K x D: the mean row of each class from the actual counts (zeros for an absent class)."""
    cls = cls.to(rows.device)
    sums = torch.zeros(num_classes, rows.shape[1], device=rows.device, dtype=rows.dtype).index_add(0, cls, rows)
    return sums / torch.bincount(cls, minlength=num_classes).clamp_min(1).to(rows.dtype)[:, None]


def mean_std(accs):
    """(mean, population std) in percent, the reference's reporting (SPEC §4.4, §12 A20)."""
    a = np.asarray(accs, dtype=np.float64) * 100
    return (float(a.mean()), float(a.std())) if len(a) else (float('nan'), float('nan'))


def sample_std(accs):
    """The sample std (ddof 1) in percent, logged next to the papers' population std (SPEC §12 A20)."""
    return float(np.std(np.asarray(accs, dtype=np.float64) * 100, ddof=1)) if len(accs) > 1 else float('nan')


# ----------------------------------------------------------------------------------------------
# Saving: every file is written to a temporary name and renamed, so a crash never leaves half a file

def _atomic(path, write):
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj, path):
    """torch.save, atomically."""
    _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(path, data):
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode())


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + '\n')


def save_results(path, data, accs_all_exps, meta=None, accs_iters=None):
    """The results file of SPEC §10.1: the reference keys `data` and `accs_all_exps`, plus `meta`
    (arguments, seeds, versions, protocol), per-architecture mean/std, and the intermediate accuracies."""
    summary = {arch: dict(zip(('mean', 'std'), mean_std(a))) for arch, a in accs_all_exps.items()}
    res = {'data': data, 'accs_all_exps': accs_all_exps, 'summary': summary, 'meta': meta or {}}
    if accs_iters is not None:
        res['accs_iters'] = accs_iters
    atomic_save(res, path)


def save_image_grid(path, images, mean, std, nrow):
    """De-normalise standardised images and write them as a PNG grid, nrow images per row."""
    from torchvision.utils import save_image
    grid = denormalise(images.detach().float().cpu(), mean, std)
    _atomic(path, lambda f: save_image(grid, f, nrow=nrow, format='png'))


def versions():
    import torchvision
    return {'python': sys.version.split()[0], 'torch': torch.__version__, 'torchvision': torchvision.__version__,
            'numpy': np.__version__}


# ----------------------------------------------------------------------------------------------
# Command line

class Log:
    """Messages to the console (above any progress bar) and, once opened, to a log file."""

    def __init__(self, path=None, append=False):
        self._file = None
        if path is not None:
            self.open(path, append)

    def open(self, path, append=False):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, 'a' if append else 'w')

    def __call__(self, msg, echo=True):
        if echo:
            from tqdm import tqdm
            tqdm.write(msg)
        if self._file is not None:
            self._file.write(msg + '\n')
            self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message}\n')


def run_cli(main):
    """Run main(); a UserError becomes one line on stderr and exit code 2."""
    try:
        main()
    except UserError as e:
        print(f'{os.path.basename(sys.argv[0])}: error: {e}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f'\n{os.path.basename(sys.argv[0])}: interrupted; rerun with --resume to continue', file=sys.stderr)
        sys.exit(130)


def check_positive(name, value):
    if value is None or value <= 0:
        raise UserError(f'--{name} must be positive, got {value}')


def check_network(name):
    if name not in NETWORKS:
        raise UserError(f"unknown model '{name}'; choose one of {', '.join(NETWORKS)}")


def default_device():
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def count_parameters(net):
    return sum(p.numel() for p in net.parameters())



# ----------------------------------------------------------------------------------------------
# Condensation runs (main.py, main_DM.py): one set of flags, one run folder layout, one evaluation step

def condense_parser(description, **defaults):
    """The flags of the original main.py / main_DM.py, with per-script defaults, plus the project's additions."""
    p = ArgumentParser(description=description)
    g = p.add_argument_group('original flags')
    g.add_argument('--dataset', default='CIFAR10', help='MNIST, FashionMNIST, SVHN, CIFAR10, CIFAR100, TinyImageNet')
    g.add_argument('--model', default='ConvNet', help='network used for matching (see networks.NETWORKS)')
    g.add_argument('--ipc', type=int, default=defaults.get('ipc', 1), help='images per class')
    g.add_argument('--eval_mode', default=defaults.get('eval_mode', 'S'), help='S, SS, M, B, W, D, A, P, N (SPEC §4.3)')
    g.add_argument('--num_exp', type=int, default=5, help='independent synthesis runs')
    g.add_argument('--num_eval', type=int, default=20, help='networks trained per evaluation')
    g.add_argument('--epoch_eval_train', type=int, default=defaults.get('epoch_eval_train', 300),
                   help='epochs to train each evaluation network')
    g.add_argument('--Iteration', type=int, default=defaults.get('Iteration', 1000), help='synthesis iterations')
    g.add_argument('--lr_img', type=float, default=defaults.get('lr_img', 0.1), help='learning rate of the images')
    g.add_argument('--lr_net', type=float, default=0.01, help='learning rate of the networks')
    g.add_argument('--batch_real', type=int, default=256, help='real images per class per step')
    g.add_argument('--batch_train', type=int, default=256, help='batch size for training networks')
    g.add_argument('--init', default=defaults.get('init', 'noise'), choices=['noise', 'real'],
                   help='initialise the synthetic set from noise or from random real images')
    g.add_argument('--dsa_strategy', default=defaults.get('dsa_strategy', 'None'),
                   help="DSA ops joined by '_' (color, crop, cutout, flip, scale, rotate); None disables DSA")
    g.add_argument('--data_path', default='data', help='dataset folder')
    g.add_argument('--save_path', default='result', help='where results, images, logs and checkpoints go')
    g.add_argument('--dis_metric', default='ours', choices=['ours', 'mse', 'cos'], help='gradient distance (DC/DSA)')
    g = p.add_argument_group('project additions')
    g.add_argument('--seed', type=int, default=0, help='one seed makes the whole run repeatable')
    g.add_argument('--eval_every', type=int, default=defaults.get('eval_every'),
                   help='iterations between evaluations (default: the reference schedule)')
    g.add_argument('--eval_final_only', action='store_true', help='evaluate only at the last iteration')
    g.add_argument('--device', default=None, help='cuda, cuda:1, cpu ... (default: cuda when available)')
    g.add_argument('--resume', action='store_true', help="continue from this run's checkpoint")
    g.add_argument('--checkpoint_every', type=int, default=100, help='iterations between checkpoints')
    g.add_argument('--align_corners', choices=['false', 'true'], default='false',
                   help='grid convention of DSA scale/rotate (the reference pinned torch 1.2: true)')
    g.add_argument('--no_progress', action='store_true', help='no progress bar')
    g.add_argument('--compat', choices=['reference', 'clean'], default='reference',
                   help="'reference' keeps the original's number-moving quirks (SPEC §12); 'clean' fixes them all")
    g.add_argument('--s_mode_strict', action='store_true',
                   help='eval mode S maps ResNet18BN_AP to ResNet18_AP instead of the strided ResNet18')
    return p


def check_condense_args(args):
    """Validate the shared flags; fill in dataset name, device and augmentation settings."""
    args.dataset = canonical_dataset(args.dataset)
    check_network(args.model)
    for name in ('ipc', 'num_exp', 'num_eval', 'epoch_eval_train', 'lr_img', 'lr_net', 'batch_real', 'batch_train',
                 'checkpoint_every'):
        check_positive(name, getattr(args, name))
    if args.Iteration < 0:
        raise UserError(f'--Iteration must be >= 0, got {args.Iteration}')
    if args.eval_every is not None:
        check_positive('eval_every', args.eval_every)
    args.device = args.device or default_device()
    if str(args.device).startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f'--device {args.device} asked for, but no CUDA device is available; use --device cpu')
    args.dsa = str(args.dsa_strategy).lower() not in ('none', '')
    from augment import parse_strategy
    try:
        parse_strategy(args.dsa_strategy)
    except ValueError as e:
        raise UserError(str(e)) from None
    args.dsa_param = ParamDiffAug()
    args.dsa_param.align_corners = args.align_corners == 'true'
    args.s_mode_strict = args.s_mode_strict or args.compat == 'clean'
    if args.eval_mode == 'S' and args.model == 'ResNet18BN_AP' and not args.s_mode_strict:
        print('warning: eval mode S evaluates ResNet18BN_AP sets on the strided ResNet18, as the reference does; '
              '--s_mode_strict evaluates them on ResNet18_AP', file=sys.stderr)
    for arch in get_eval_pool(args.eval_mode, args.model, args.model, args.s_mode_strict):
        check_network(arch)
    return args


def eval_iterations(args, reference_every):
    """Iterations at which the set is evaluated (SPEC §4.2): every `eval_every` (reference: `reference_every`)
    for eval modes S and SS, otherwise only the last one; always the last one."""
    last = args.Iteration
    if args.eval_final_only or args.eval_mode not in ('S', 'SS'):
        return [last]
    every = args.eval_every or reference_every
    return sorted(set(range(0, last + 1, every)) | {last})


class Run:
    """Every file of one run shares a prefix under --save_path: results, images, summary, log, checkpoint."""

    def __init__(self, args, method):
        self.args, self.method = args, method
        self.name = f'{method}_{args.dataset}_{args.model}_{args.ipc}ipc'
        os.makedirs(args.save_path, exist_ok=True)
        self.results_path = os.path.join(args.save_path, f'res_{self.name}.pt')
        self.summary_path = os.path.join(args.save_path, f'{self.name}.json')
        self.log_path = os.path.join(args.save_path, f'{self.name}.log')
        self.ckpt_path = os.path.join(args.save_path, f'{self.name}.ckpt.pt')
        self.log = Log()

    def open_log(self):
        """Called once the inputs are checked, so a rejected command leaves an earlier run's log alone."""
        self.log.open(self.log_path, append=self.args.resume)

    def vis_path(self, exp, it):
        return os.path.join(self.args.save_path, f'vis_{self.name}_exp{exp}_iter{it}.png')

    def fingerprint(self):
        """The arguments that determine the synthetic set; a checkpoint from other arguments is foreign."""
        skip = {'resume', 'device', 'no_progress', 'save_path', 'data_path', 'checkpoint_every', 'num_exp',
                'dsa_param', 'dc_aug_param'}
        return {k: v for k, v in sorted(vars(self.args).items()) if k not in skip}

    def save_checkpoint(self, state):
        atomic_save(dict(state, fingerprint=self.fingerprint(), method=self.method), self.ckpt_path)

    def load_checkpoint(self):
        """The saved state, or None when there is none; UserError for a corrupt or foreign one."""
        if not os.path.exists(self.ckpt_path):
            return None
        try:
            state = torch.load(self.ckpt_path, map_location='cpu', weights_only=False)
            fp = state['fingerprint']
        except Exception as e:
            raise UserError(f'cannot resume: {self.ckpt_path} is corrupt ({type(e).__name__}); delete it to start '
                            f'afresh') from None
        if state.get('method') != self.method or fp != self.fingerprint():
            diff = sorted(k for k in set(fp) | set(self.fingerprint()) if fp.get(k) != self.fingerprint().get(k))
            raise UserError(f'cannot resume: {self.ckpt_path} belongs to another run (differs in '
                            f'{", ".join(diff) or "method"}); rerun with the same flags or delete it')
        return state

    def write_summary(self, data, state):
        """The JSON summary: final accuracies per architecture, intermediate ones, timings, arguments."""
        acc = {arch: dict(zip(('mean', 'std'), mean_std(a)), std_ddof1=sample_std(a), all=a)
               for arch, a in state['accs_all_exps'].items()}
        summary = dict(run=self.name, dataset=data.name, accuracy=acc, accs_iters=state['accs_iters'],
                       times=state['times'], args=self.fingerprint(), versions=versions())
        write_json(self.summary_path, summary)
        return summary

    def meta(self, data, extra=None):
        return dict(dataset=data.name, im_size=list(data.im_size), channel=data.channel, mean=data.mean,
                    std=data.std, normalised=True, method=self.method, model=self.args.model, ipc=self.args.ipc,
                    args=self.fingerprint(), seed=self.args.seed, versions=versions(),
                    protocol=dict(epoch_eval_train=self.args.epoch_eval_train, eval_mode=self.args.eval_mode,
                                  dsa=self.args.dsa, dsa_strategy=self.args.dsa_strategy), **(extra or {}))


def init_synset(data, ipc, init, generator):
    """K·ipc images with class-major labels: N(0, 1) noise; for init real each class block is then overwritten by
    ipc distinct random real images of the class (SPEC §5.2, §6.3)."""
    images = torch.randn(data.num_classes * ipc, data.channel, *data.im_size, generator=generator).to(data.device)
    if init == 'real':
        for c in range(data.num_classes):
            images[c * ipc:(c + 1) * ipc] = data.get_images(c, ipc, generator)
    labels = torch.arange(data.num_classes).repeat_interleave(ipc)
    return images, labels


def synthesize(args, method, step, reference_every, notes=()):
    """The experiment loop of main.py and main_DM.py: num_exp times, initialise a synthetic set and run
    `step(args, data, image_syn, syn_cls, optimizer, exp, it) -> loss` for it = 0 … Iteration − 1, evaluating
    the set at the evaluation points (SPEC §4.2); write results, pictures, log, summary and checkpoints.

    Every random draw of an iteration must come from generators named by (args.seed, exp, it): then a run
    resumed from a checkpoint repeats the uninterrupted run exactly. notes: extra lines for the log's header.
    """
    from tqdm import tqdm
    data = get_dataset(args.dataset, args.data_path, device=args.device)
    smallest = min(len(i) for i in data.indices_class)
    if args.init == 'real' and args.ipc > smallest:
        raise UserError(f'--ipc {args.ipc} exceeds the smallest class of {args.dataset} ({smallest} images); '
                        f'lower --ipc or use --init noise')
    run = Run(args, method)
    state = run.load_checkpoint() if args.resume else None
    if args.resume and state is None:
        raise UserError(f'--resume: no checkpoint at {run.ckpt_path}; run without --resume to start')
    run.open_log()
    eval_its = eval_iterations(args, reference_every)
    run.log(f'{method} {run.name}: {data}; device {args.device}; seed {args.seed}; evaluation at iterations '
            f'{eval_its}')
    run.log(f'hyper-parameters: {run.fingerprint()}')
    for line in notes:
        run.log(line)

    state = state or dict(exp=0, it=0, data=[], accs_all_exps={}, accs_iters={}, times=[])
    while state['exp'] < args.num_exp:
        exp = state['exp']
        if 'image_syn' not in state:
            image_syn, syn_cls = init_synset(data, args.ipc, args.init, make_generator(args.seed, 'init', exp))
            optimizer_state, state['t_syn'], state['t_eval'] = None, 0.0, 0.0
        else:
            image_syn, syn_cls, optimizer_state = state['image_syn'].to(args.device), state['syn_cls'], state['optimizer']
        image_syn.requires_grad_(True)
        optimizer = torch.optim.SGD([image_syn], lr=args.lr_img, momentum=0.5)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)

        bar = tqdm(range(state['it'], args.Iteration + 1), desc=f'{method} exp {exp}', initial=state['it'],
                   total=args.Iteration + 1, disable=args.no_progress, dynamic_ncols=True)
        for it in bar:
            if it in eval_its and f'{exp}/{it}' not in state['accs_iters']:
                t0 = time.time()
                accs = evaluate_pool(args, data, image_syn.detach(), syn_cls, exp, it, run.log)
                keep = (torch.arange(len(syn_cls)) % args.ipc < 50).nonzero()[:, 0]  # ≤ 50 per class in a picture
                save_image_grid(run.vis_path(exp, it), image_syn[keep], data.mean, data.std, nrow=min(args.ipc, 50))
                state['accs_iters'][f'{exp}/{it}'] = accs
                state['t_eval'] += time.time() - t0
                if it == args.Iteration:
                    for arch, a in accs.items():
                        state['accs_all_exps'].setdefault(arch, []).extend(a)
            if it == args.Iteration:
                break  # the saved set is the evaluated one (SPEC §12 A3)
            t0 = time.time()
            loss = step(args, data, image_syn, syn_cls, optimizer, exp, it)
            state['t_syn'] += time.time() - t0
            bar.set_postfix(loss=f'{loss / data.num_classes:.4f}')
            if it % 10 == 0:
                # Logged per class like the reference; the optimised loss is the raw sum (SPEC §12 A17).
                run.log(f'exp {exp} iter {it:05d}: loss {loss:.4f} (per class {loss / data.num_classes:.4f})')
            if (it + 1) % args.checkpoint_every == 0 or it + 1 in eval_its:
                run.save_checkpoint(dict(state, it=it + 1, image_syn=image_syn.detach().cpu(), syn_cls=syn_cls,
                                         optimizer=optimizer.state_dict()))
        bar.close()

        state['data'].append([image_syn.detach().cpu(), syn_cls.clone()])
        state['times'].append(dict(synthesis_s=state['t_syn'], evaluation_s=state['t_eval']))
        run.log(f'exp {exp} done: synthesis {state["t_syn"]:.1f} s, evaluation {state["t_eval"]:.1f} s')
        save_results(run.results_path, state['data'], state['accs_all_exps'],
                     run.meta(data, dict(times=state['times'])), state['accs_iters'])
        state = dict(state, exp=exp + 1, it=0)
        state.pop('image_syn', None)
        run.save_checkpoint(state)

    summary = run.write_summary(data, state)
    for arch, s in summary['accuracy'].items():
        run.log(f'Run {args.num_exp} experiments, train on {args.model}, evaluate {len(s["all"])} random {arch}, '
                f'mean = {s["mean"]:.2f}%  std = {s["std"]:.2f}%')
    return summary


def evaluate_pool(args, data, images, labels, exp, it, log):
    """num_eval fresh networks per pool architecture trained on (images, labels): {arch: [accuracies]}."""
    accs = {}
    for arch in get_eval_pool(args.eval_mode, args.model, args.model, args.s_mode_strict):
        a = eval_args(args, arch)
        accs[arch] = []
        for i in range(args.num_eval):
            net = get_network(arch, data.channel, data.num_classes, data.im_size, device=args.device,
                              generator=make_generator(args.seed, 'eval_net', exp, it, arch, i))
            t0 = time.time()
            _, acc_train, acc = evaluate_synset(i, net, images, labels, data.testloader(), a,
                                                generator=make_generator(args.seed, 'eval', exp, it, arch, i))
            accs[arch].append(acc)
            # A model takes minutes on a CPU: say so as each one finishes.
            log(f'  {arch} #{i}: train acc {100 * acc_train:.2f}%, test acc {100 * acc:.2f}% '
                f'({time.time() - t0:.0f} s)')
        m, s = mean_std(accs[arch])
        log(f'exp {exp} iter {it}: {arch} trained {a.epoch_eval_train} epochs on {len(images)} images, '
            f'test acc {m:.2f} ± {s:.2f} over {args.num_eval} models')
    return accs


def eval_args(args, arch):
    """args with `args.eval_settings[arch]` laid over them: main.py's DC rule picks epochs and DC augmentation per
    evaluation architecture (SPEC §4.1). Without eval_settings, args itself."""
    over = (getattr(args, 'eval_settings', None) or {}).get(arch)
    return argparse.Namespace(**{**vars(args), **over}) if over else args


if __name__ == '__main__':
    # python utils.py DATASET --data_path data: write <data_path>/<DATASET>.pt once (TinyImageNet: from the
    # tiny-imagenet-200/ folder), so later loads skip torchvision and image decoding.
    def _prepare():
        p = ArgumentParser(description='write the prepared tensor file of a dataset')
        p.add_argument('dataset')
        p.add_argument('--data_path', default='data')
        a = p.parse_args()
        d = get_dataset(a.dataset, a.data_path)
        print(f'{d}; prepared file: {_prepared_candidates(d.name, a.data_path)[0]}')
    run_cli(_prepare)

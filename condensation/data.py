"""Datasets: MNIST, FashionMNIST, SVHN, CIFAR-10/100, TinyImageNet and the user's own, as uint8 tensors on one device.

`get_dataset(name, data_path)` returns a `Data`: training and test images stay uint8 where they were loaded
(CPU or GPU) and are standardised batch by batch. A prepared tensor file `<data_path>/<NAME>.pt` is read first
(the layout is in docs/design.md); after a torchvision or folder load it is written once, so later runs skip
decoding. `python -m condensation.run.prepare DATASET --data_path DIR` writes it on purpose.

The user's own data is named by a path argument instead of a name: `folder:PATH` (an image folder, `PATH/train/<class>/`
and `PATH/test/<class>/` or `PATH/val/<class>/`) or `file:PATH.pt` (a prepared tensor file with any classes,
channels and size). Its channels, size and classes come from the data, its mean and std from the training split
unless the file gives them. `dataset_info` tells a dataset's shape and classes without loading its images.
"""
import hashlib
import math
import os
import sys
from collections import namedtuple

import numpy as np
import torch

from condensation.common import UserError, atomic_save, draw_device, remove_stale_temps
from condensation.device.footprint import check_fits

# name -> (channels, (H, W), classes, mean, std): the normalisation constants of the original code.
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


# The user's own data: argument prefix -> (what PATH must be, the check).
USER_KINDS = {'folder': ('folder', os.path.isdir), 'file': ('file', os.path.isfile)}
# What a dataset holds, known without loading its images (dataset_info).
DatasetInfo = namedtuple('DatasetInfo', 'name channel im_size num_classes classes')


def user_spec(name):
    """('folder' | 'file', path) for an argument 'folder:PATH' or 'file:PATH', None for a dataset name."""
    kind, sep, path = str(name).partition(':')
    return (kind.lower(), path) if sep and kind.lower() in USER_KINDS else None


def canonical_dataset(name):
    """'cifar10', 'fashion', 'CIFAR10' ... -> the project's dataset name; 'folder:PATH' / 'file:PATH' -> the same
    argument with an absolute path (so a resumed run finds it from any directory); UserError if unknown or missing."""
    user = user_spec(name)
    if user:
        kind, path = user
        what, exists = USER_KINDS[kind]
        if not path or not exists(path):
            raise UserError(f"dataset {name}: no such {what} '{path}'")
        return f'{kind}:{os.path.abspath(path)}'
    key = str(name).lower()
    if key not in _ALIASES:
        raise UserError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}, or folder:PATH (an image "
                        f"folder) or file:PATH.pt (a prepared tensor file) for your own data")
    return _ALIASES[key]


def dataset_label(name):
    """The short name results, logs and file names use: the dataset's name, a folder's or file's base name."""
    user = user_spec(name)
    if user is None:
        return canonical_dataset(name)
    return os.path.splitext(os.path.basename(os.path.normpath(user[1])))[0]


def file_label(name, im_size=None):
    """The dataset's part of a run's file names: dataset_label, plus the size a folder's images are resized to, so
    that runs on one folder at two sizes keep their own files (res_DM_flowers_32px_ConvNet_10ipc.pt)."""
    user = user_spec(name)
    resized = im_size and user is not None and user[0] == 'folder'
    return f'{dataset_label(name)}_{im_size}px' if resized else dataset_label(name)


def dataset_info(dataset, data_path, im_size=None):
    """Channels, (H, W), class count and class names (None for the built-in datasets) without loading the images:
    the table for the built-in datasets, the memory-mapped tensors of a file, a folder's prepared tensor file
    (built here on first use). UserError for an unknown, broken or wrongly sized dataset."""
    name = canonical_dataset(dataset)
    if name in DATASETS:
        channel, size, num_classes = DATASETS[name][:3]
        _check_im_size(name, size, im_size)
        return DatasetInfo(name, channel, size, num_classes, None)
    raw = _load_user(name, im_size, mmap=True)
    x = raw['images_train']
    return DatasetInfo(dataset_label(name), int(x.shape[1]), tuple(x.shape[2:]), len(raw['classes']),
                       list(raw['classes']))


def _check_im_size(name, size, im_size):
    if im_size is not None and tuple(size) != (im_size, im_size):
        raise UserError(f'--im_size {im_size}: {name} is {size[0]}x{size[1]}; resizing is for folder: datasets '
                        f'(drop the flag)')


class Data:
    """A dataset on one device: images stay uint8 and are standardised batch by batch, which gives the
    same floats as standardising everything up front at a quarter of the memory and none of the start-up time."""

    def __init__(self, name, class_names, images_train, labels_train, images_test, labels_test, device='cpu',
                 stats=None):
        """stats: (mean, std) per channel; default: the table's constants for a built-in dataset, otherwise the
        training images' own."""
        self.name = name
        self.class_names = [str(c) for c in class_names]
        self.channel, self.im_size, self.num_classes = (int(images_train.shape[1]), tuple(images_train.shape[2:]),
                                                        len(self.class_names))
        if stats is None:
            stats = DATASETS[name][3:] if name in DATASETS else channel_stats(images_train)
        self.mean, self.std = ([float(v) for v in s] for s in stats)
        self._mean, self._std = (torch.tensor(v, device=device) for v in (self.mean, self.std))
        self.device = torch.device(device)
        self.x_train, self.x_test = images_train.to(self.device), images_test.to(self.device)
        self.labels_train = labels_train.long().to(self.device)
        self.labels_test = labels_test.long().to(self.device)
        # Kept on the CPU: they are only used to pick indices with a CPU generator.
        labels = labels_train.long().cpu()
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=self.num_classes).tolist()
        self.indices_class = list(torch.split(order, counts))
        self._indices_on = {}  # (class, device) -> indices_class[class] there, for generators on that device

    def standardise(self, x):
        # the constants live on the device: building them from lists would copy (and synchronise) every batch
        return standardise(x, self._mean, self._std, self.device)

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
        """n images of class c drawn uniformly without replacement (all of them if the class is smaller), drawn on
        the generator's device (a GPU generator never sends the draw through the host)."""
        device = draw_device(generator)
        idx = self.indices_class[c] if device.type == 'cpu' else self._class_index(c, device)
        return self.images(idx[torch.randperm(len(idx), generator=generator, device=device)[:n]])

    def _class_index(self, c, device):
        """indices_class[c] on `device`, copied once (a class view of the data, cl.class_view, renumbers classes:
        the copy is tied to the CPU tensor it came from)."""
        src, key = self.indices_class[c], (c, str(device))
        if key not in self._indices_on or self._indices_on[key][0] is not src:
            self._indices_on[key] = (src, src.to(device))
        return self._indices_on[key][1]

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
    """uint8 N×C×H×W in [0, 255] -> float (x/255 - mean)/std on `device` (ToTensor + Normalize); float images are
    taken as already scaled (x - mean)/std, and never written to (they may be the caller's own tensor)."""
    x = images.to(device)
    uint8 = x.dtype == torch.uint8
    x = x.float().div_(255) if uint8 else x.float()
    shape = (1, -1, 1, 1)
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=x.device).view(shape) for v in (mean, std))
    return (x.sub_(mean) if uint8 else x - mean).div_(std)


def channel_stats(images, chunk=4096):
    """(mean, std) per channel of uint8 N×C×H×W images scaled to [0, 1] (float images as they are), in float64 over
    every pixel (the population std, as the published constants are computed), a chunk of images at a time."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].detach().to('cpu', torch.float64)
        x = x.div_(255) if images.dtype == torch.uint8 else x  # a float chunk may be the caller's own tensor
        total += x.sum((0, 2, 3))
        squares += x.square().sum((0, 2, 3))
    n = images.numel() // images.shape[1]
    mean = total / n
    std = (squares / n - mean ** 2).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


# A synthetic image may leave the range of real images (the methods do not clip), but not by orders of magnitude:
# a standardised pixel of the data lies within (0 - mean) / std .. (1 - mean) / std, and a set or generated image
# beyond VALUE_MARGIN times the wider end of that range is the garbage of a diverged optimisation (docs/design.md).
VALUE_MARGIN = 100


def value_limit(mean, std):
    """The largest |value| a standardised image of data with per-channel `mean` and `std` may hold before it counts
    as diverged: VALUE_MARGIN times the farthest a real pixel lies from 0."""
    return VALUE_MARGIN * max(max(m, 1 - m) / s for m, s in zip(mean, std))


def denormalise(images, mean, std):
    """Standardised images -> [0, 1] for viewing."""
    shape = (1, -1, 1, 1)
    m = torch.tensor(mean, device=images.device).view(shape)
    s = torch.tensor(std, device=images.device).view(shape)
    return (images * s + m).clamp(0, 1)

def get_dataset(dataset, data_path, device='cpu', download=True, im_size=None):
    """Load a dataset as a `Data` on `device`.

    Looked up in this order: a prepared tensor file `<data_path>/<DATASET>.pt` (layout in docs/design.md,
    any dataset); for TinyImageNet also `tinyimagenet.pt` and the `tiny-imagenet-200/` folder; otherwise
    torchvision's files, downloaded if missing and `download` is set. After a torchvision or folder load the
    prepared file is written next to the data (when the folder is writable), so later runs skip the decoding.
    The user's own data ('folder:PATH', 'file:PATH') is read from PATH; im_size resizes a folder's images.
    """
    name = canonical_dataset(dataset)
    if name not in DATASETS:
        raw = _load_user(name, im_size)
        stats = (raw['mean'], raw['std']) if 'mean' in raw else channel_stats(raw['images_train'])
        return Data(dataset_label(name), raw['classes'], raw['images_train'], raw['labels_train'],
                    raw['images_val'], raw['labels_val'], device, stats)
    _check_im_size(name, DATASETS[name][1], im_size)
    _remove_cache_temps(os.path.join(data_path, f'{name}.pt'))
    raw = _load_prepared(name, data_path)
    if raw is None:
        load = _load_tinyimagenet_folder if name == 'TinyImageNet' else (
            lambda path: _load_torchvision(name, path, download))
        raw = load(data_path)
        _cache_prepared(raw, os.path.join(data_path, f'{name}.pt'))
    return Data(name, raw['classes'], raw['images_train'], raw['labels_train'], raw['images_val'], raw['labels_val'],
                device)


# The original files get_dataset reads for each dataset, relative to data_path (dataset_available).
_ORIGINALS = {
    'MNIST': ('MNIST/raw/train-images-idx3-ubyte', 'MNIST/raw/t10k-images-idx3-ubyte'),
    'FashionMNIST': ('FashionMNIST/raw/train-images-idx3-ubyte', 'FashionMNIST/raw/t10k-images-idx3-ubyte'),
    'SVHN': ('train_32x32.mat', 'test_32x32.mat'),
    'CIFAR10': ('cifar-10-batches-py',),
    'CIFAR100': ('cifar-100-python',),
    'TinyImageNet': ('tiny-imagenet-200',),
}


def dataset_available(dataset, data_path):
    """Whether get_dataset finds the dataset in data_path without downloading it: its prepared tensor file or its
    original files (a user's folder: or file: dataset, whether it exists)."""
    user = user_spec(dataset)
    if user:
        kind, path = user
        return USER_KINDS[kind][1](path)
    name = canonical_dataset(dataset)
    return (any(os.path.isfile(p) for p in _prepared_candidates(name, data_path))
            or all(os.path.exists(os.path.join(data_path, f)) for f in _ORIGINALS[name]))


def _prepared_candidates(name, data_path):
    names = [f'{name}.pt'] + (['tinyimagenet.pt'] if name == 'TinyImageNet' else [])
    return [os.path.join(data_path, n) for n in names]


def _load_prepared(name, data_path):
    for path in _prepared_candidates(name, data_path):
        if os.path.isfile(path):
            raw = _read_tensor_file(path, _recovery(name, data_path))
            _check_prepared(raw, path, *DATASETS[name][:3])
            return raw
    return None


def _read_tensor_file(path, remedy, mmap=False):
    try:
        try:
            return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(path, map_location='cpu', weights_only=True)  # an old-format file cannot be mapped
    except Exception as e:  # a truncated or foreign file: say which and how to recover
        raise UserError(f'{path} is not a readable tensor file ({type(e).__name__}); {remedy}') from None


def _check_prepared(raw, path, channel=None, im_size=None, num_classes=None):
    """The prepared layout; channel, im_size and num_classes default to what the file itself holds (own data),
    which must then be consistent: both splits one shape, at least 2 classes, each with training images."""
    keys = ('classes', 'images_train', 'labels_train', 'images_val', 'labels_val')
    if not isinstance(raw, dict) or any(k not in raw for k in keys):
        raise UserError(f'{path} lacks the keys {", ".join(keys)}; see the data layout in docs/reference.md')
    if not all(isinstance(raw[k], torch.Tensor) for k in keys[1:]):
        raise UserError(f'{path}: {", ".join(keys[1:])} must be tensors')
    x = raw['images_train']
    if x.dim() != 4:
        raise UserError(f'{path}: images_train must be uint8 N×C×H×W, got {x.dtype} {tuple(x.shape)}; a set of '
                        f'greyscale images needs its channel axis (images[:, None])')
    channel = channel or int(x.shape[1])
    im_size = im_size or tuple(x.shape[2:])
    num_classes = num_classes or len(raw['classes'])
    for split in ('train', 'val'):
        x, y = raw[f'images_{split}'], raw[f'labels_{split}']
        if (x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (channel, *im_size) or len(x) != len(y)
                or not len(x)):
            raise UserError(f'{path}: images_{split} must be uint8 N×{channel}×{im_size[0]}×{im_size[1]} with one '
                            f'label each, got {x.dtype} {tuple(x.shape)} and {len(y)} labels')
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise UserError(f'{path}: labels_{split} must lie in 0..{num_classes - 1}')
    if len(raw['classes']) != num_classes:
        raise UserError(f'{path}: expected {num_classes} class names, found {len(raw["classes"])}')
    if num_classes < 2:
        raise UserError(f'{path}: a dataset needs at least 2 classes, found {num_classes}')
    empty = (torch.bincount(raw['labels_train'].long(), minlength=num_classes) == 0).nonzero()[:, 0].tolist()
    if empty:
        raise UserError(f'{path}: class {raw["classes"][empty[0]]} has no training images')
    _check_stats(raw, path, channel)


def _check_stats(raw, path, channel):
    """A prepared file's stored mean and std (when it has them): one finite value per channel, std positive. A nan
    would make every image nan, evaluated at chance without a word."""
    for key in ('mean', 'std'):
        if key not in raw:
            continue
        try:
            values = [float(v) for v in raw[key]]
        except (TypeError, ValueError):
            values = None
        if (values is None or len(values) != channel or not all(map(math.isfinite, values))
                or (key == 'std' and min(values) <= 0)):
            raise UserError(f'{path}: {key} must hold one finite{" positive" if key == "std" else ""} value per '
                            f'channel ({channel}), got {raw[key]!r}; fix or delete the file')


def _recovery(name, data_path):
    """How to get a readable prepared file back: rebuild it from the original files when they are there."""
    originals = os.path.join(data_path, _EXPECTED[name].split('/')[0].split('{')[0])
    if name != 'TinyImageNet' and os.path.exists(originals):
        return f'delete it to rebuild it from the original files in {originals}'
    return (f'it is the only copy here, so restore it from where it came from, or put the original files '
            f'({_EXPECTED[name]}) in {os.path.abspath(data_path)} and delete it')


def _read_idx(path):
    """An uncompressed idx file (MNIST's format) as a uint8 tensor; UserError when it is truncated or foreign."""
    with open(path, 'rb') as f:
        buf = f.read()
    ndim = buf[3] if len(buf) >= 4 and buf[:3] == b'\x00\x00\x08' else 0
    shape = [int.from_bytes(buf[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(shape)) if ndim else None
    if expected is None or len(buf) != expected:
        raise UserError(f'{path} is truncated or not an idx file ({len(buf)} bytes'
                        f'{f", expected {expected}" if expected else ""}); delete it to download it again')
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
    folders_before = _folders(data_path)
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
            _remove_new_empty_folders(data_path, folders_before)  # a failed download leaves no empty folders
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


def _folders(path):
    return {root for root, _, _ in os.walk(path)}


def _remove_new_empty_folders(path, before):
    """Remove the empty folders under path (path included) that were not there before."""
    for root, _, _ in os.walk(path, topdown=False):
        if root not in before and not os.listdir(root):
            os.rmdir(root)


def _remove_cache_temps(path):
    """The temporary files a process killed while writing the prepared file `path` left beside it (55 MB for
    MNIST), and only those: the data folder may hold other files of the user's."""
    remove_stale_temps(os.path.dirname(os.path.abspath(path)), os.path.basename(path) + '.')


def _cache_prepared(raw, path, replace=False):
    """Write the prepared tensor file next to the data; a read-only data folder simply goes without. replace: over
    an outdated one. Returns whether it was written."""
    if os.access(os.path.dirname(os.path.abspath(path)), os.W_OK) and (replace or not os.path.exists(path)):
        try:
            atomic_save(raw, path)
            # a file of tens of MB in the user's data folder is not written without a word
            print(f'wrote {path} ({os.path.getsize(path) / 2 ** 20:.1f} MiB): the decoded data, read by later runs '
                  f'instead of the original files (delete it to decode them again)', flush=True)
            return True
        except OSError as e:  # a full disk: the run needs no cache, but the user should know why it is missing
            print(f'warning: {path}: {e.strerror or e}; the data was not cached, so the next run decodes it again',
                  file=sys.stderr)
    return False


def _load_tinyimagenet_folder(data_path, train_per_class=500, val_per_class=50):
    folder = os.path.join(data_path, 'tiny-imagenet-200')
    if not os.path.isdir(folder):
        raise UserError(f'TinyImageNet not found in {os.path.abspath(data_path)}: expected TinyImageNet.pt, '
                        f'tinyimagenet.pt or the tiny-imagenet-200/ folder; pass --data_path to the folder holding '
                        f'them')
    return build_tinyimagenet(folder, train_per_class, val_per_class)


def build_tinyimagenet(folder, train_per_class=500, val_per_class=50):
    """The prepared TinyImageNet tensors from the standard `tiny-imagenet-200/` layout.

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


# ----------------------------------------------------------------------------------------------------------------
# The user's own data: an image folder or a prepared tensor file

def _load_user(name, im_size, mmap=False):
    """The prepared tensors of 'folder:PATH' or 'file:PATH' (checked); mmap: map a file's tensors, not read them."""
    kind, path = user_spec(name)
    return _load_folder(path, im_size, mmap) if kind == 'folder' else _load_file(path, im_size, mmap)


def _load_file(path, im_size, mmap):
    raw = _read_tensor_file(path, 'see the data layout in docs/reference.md', mmap)
    _check_prepared(raw, path)
    _check_im_size(os.path.basename(path), raw['images_train'].shape[2:], im_size)
    return raw


# ImageFolder's extensions; other files (a README) and hidden ones (.DS_Store, ._x.png) are skipped.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp', '.gif')
GREY_MODES = ('1', 'L', 'LA')  # PIL modes read as one channel; the other 8-bit modes are read as RGB
_UNCACHED = {}  # the last folder built where its prepared file could not be written: (root, im_size, source) -> raw


def folder_cache_path(root, im_size=None):
    """Where a folder's prepared tensor file goes: inside it, one per requested size."""
    return os.path.join(root, f'prepared-{im_size}.pt' if im_size else 'prepared.pt')


def _load_folder(root, im_size, mmap=False):
    """A folder's prepared tensors: its prepared file while it matches the folder's files (names, sizes, times),
    otherwise built from the images (once: written back into the folder when it is writable)."""
    splits = _scan_folder(root)
    source = _folder_source(root, splits, im_size)
    path = folder_cache_path(root, im_size)
    _remove_cache_temps(path)
    if os.path.isfile(path):
        raw = _read_tensor_file(path, 'delete it to rebuild it from the images', mmap)
        if isinstance(raw, dict) and raw.get('source') == source:
            _check_prepared(raw, path)
            return raw
    if (root, im_size, source) in _UNCACHED:
        return _UNCACHED[(root, im_size, source)]
    if im_size:  # every image decoded into one uint8 tensor, one resized image at a time beside it
        files = [f for entries in splits.values() for _, fs in entries for f in fs]
        channels = 1 if _image_mode(files[0]) in GREY_MODES else 3
        check_fits((len(files) + 4) * channels * im_size ** 2, 'cpu',
                   f'{root} at --im_size {im_size} ({len(files)} images)', 'pass a smaller --im_size')
    raw = _build_folder(root, splits, im_size)
    raw['source'] = source
    if not _cache_prepared(raw, path, replace=True):  # kept for this process only, so it is built once here too
        _UNCACHED.clear()
        _UNCACHED[(root, im_size, source)] = raw
    return raw


def _scan_folder(root):
    """{'train': [(class, [files])], 'test': [...]}: ImageFolder's layout, classes sorted by name; UserError (one
    line) for a missing split, fewer than 2 classes, classes that differ between the splits or an empty class."""
    test = [d for d in ('test', 'val') if os.path.isdir(os.path.join(root, d))]
    if not os.path.isdir(os.path.join(root, 'train')) or not test:
        raise UserError(f'{root}: expected train/<class>/ and test/<class>/ (or val/<class>/) folders of images')
    if len(test) > 1:
        raise UserError(f'{root} holds both test/ and val/; keep the one that is the test split')
    splits = {}
    for split, sub in (('train', 'train'), ('test', test[0])):
        d = os.path.join(root, sub)
        classes = sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith('.'))
        if split == 'train' and len(classes) < 2:
            raise UserError(f'{d}: a dataset needs at least 2 class folders, found {len(classes)}')
        if split == 'test' and classes != [c for c, _ in splits['train']]:
            extra = sorted(set(classes) ^ {c for c, _ in splits['train']})
            raise UserError(f'{d}: its class folders differ from train/ ({", ".join(extra)}); both splits need the '
                            f'same classes')
        splits[split] = []
        for c in classes:
            files = sorted(e.path for e in os.scandir(os.path.join(d, c)) if e.is_file() and not e.name.startswith('.')
                           and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)  # '._x.png': macOS metadata
            if not files:
                raise UserError(f'{os.path.join(d, c)}: class {c} holds no images ({" ".join(IMAGE_EXTENSIONS)})')
            splits[split].append((c, files))
    return splits


def _folder_source(root, splits, im_size):
    """What the prepared file was built from: every image's path, size and time, and the requested size."""
    lines = [f'im_size {im_size}']
    for entries in splits.values():
        for _, files in entries:
            for f in files:
                st = os.stat(f)
                lines.append(f'{f[len(root):]} {st.st_size} {st.st_mtime_ns}')  # relative: the folder may move
    return hashlib.sha1('\n'.join(lines).encode()).hexdigest()


def _build_folder(root, splits, im_size):
    """Decode every image once into the prepared tensors, with a progress bar: one channel count for the whole
    folder, every image resized to im_size x im_size (bilinear, antialiased) or, without it, all of one size."""
    from tqdm import tqdm
    paths = [(split, label, f) for split in ('train', 'test') for label, (_, files) in enumerate(splits[split])
             for f in files]
    images, first = None, None
    labels = {split: [] for split in splits}
    for i, (split, label, f) in enumerate(tqdm(paths, desc=f'preparing {os.path.basename(root)}', unit='img',
                                               disable=None)):
        a = _read_image(f, im_size)
        if images is None:
            images, first = torch.empty((len(paths), a.shape[2], *a.shape[:2]), dtype=torch.uint8), f
        elif a.shape[2] != images.shape[1]:
            raise UserError(f'{f} has {a.shape[2]} channel(s), {first} has {images.shape[1]}; convert the folder '
                            f'to one mode (all RGB or all greyscale)')
        elif a.shape[:2] != images.shape[2:]:
            raise UserError(f'{f} is {a.shape[1]}x{a.shape[0]}, {first} is {images.shape[3]}x{images.shape[2]}; '
                            f'pass --im_size N to resize every image to NxN')
        images[i] = torch.from_numpy(a).permute(2, 0, 1)
        labels[split].append(label)
    n_train = len(labels['train'])
    raw = dict(classes=[c for c, _ in splits['train']], images_train=images[:n_train],
               labels_train=torch.tensor(labels['train']), images_val=images[n_train:],
               labels_val=torch.tensor(labels['test']))
    raw['mean'], raw['std'] = channel_stats(raw['images_train'])
    return raw


def _image_mode(path):
    """The PIL mode of an image, from its header (None when unreadable: decoding will say why)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.mode
    except Exception:
        return None


def _read_image(path, im_size):
    """One image as uint8 H×W×C (C = 1 for greyscale modes, else 3; alpha dropped), resized when im_size is set."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.mode.startswith('I') or im.mode == 'F':
                raise UserError(f'{path}: {im.mode} images (16-bit or float) are not supported; save it as 8-bit')
            im = im.convert('L' if im.mode in GREY_MODES else 'RGB')
            if im_size and im.size != (im_size, im_size):
                im = im.resize((im_size, im_size), Image.BILINEAR)
            a = np.array(im)  # a writable copy, for torch.from_numpy
    except UserError:
        raise
    except Exception as e:  # PIL reports broken files as OSError, SyntaxError, zlib.error ...
        raise UserError(f'{path}: not a readable image ({type(e).__name__}: {e})') from None
    return a[:, :, None] if a.ndim == 2 else a


"""Datasets: loading MNIST, FashionMNIST, SVHN, CIFAR-10/100 and TinyImageNet as uint8 tensors on one device.

`get_dataset(name, data_path)` returns a `Data`: training and test images stay uint8 where they were loaded
(CPU or GPU) and are standardised batch by batch. A prepared tensor file `<data_path>/<NAME>.pt` is read first
(the layout is in docs/design.md); after a torchvision or folder load it is written once, so later runs skip
decoding. `python data.py DATASET --data_path DIR` writes it on purpose.
"""
import os

import numpy as np
import torch

from utils import ArgumentParser, UserError, atomic_save, run_cli

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


def canonical_dataset(name):
    """'cifar10', 'fashion', 'CIFAR10' ... -> the project's dataset name; UserError if unknown."""
    key = str(name).lower()
    if key not in _ALIASES:
        raise UserError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return _ALIASES[key]


class Data:
    """A dataset on one device: images stay uint8 and are standardised batch by batch, which gives the
    same floats as standardising everything up front at a quarter of the memory and none of the start-up time."""

    def __init__(self, name, class_names, images_train, labels_train, images_test, labels_test, device='cpu'):
        self.name = name
        self.channel, self.im_size, self.num_classes, self.mean, self.std = DATASETS[name]
        self._mean, self._std = (torch.tensor(v, device=device) for v in (self.mean, self.std))
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
    """uint8 N×C×H×W in [0, 255] -> float (x/255 - mean)/std on `device` (ToTensor + Normalize)."""
    x = images.to(device)
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    shape = (1, -1, 1, 1)
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=x.device).view(shape) for v in (mean, std))
    return x.sub_(mean).div_(std)


def denormalise(images, mean, std):
    """Standardised images -> [0, 1] for viewing."""
    shape = (1, -1, 1, 1)
    m = torch.tensor(mean, device=images.device).view(shape)
    s = torch.tensor(std, device=images.device).view(shape)
    return (images * s + m).clamp(0, 1)

def get_dataset(dataset, data_path, device='cpu', download=True):
    """Load a dataset as a `Data` on `device`.

    Looked up in this order: a prepared tensor file `<data_path>/<DATASET>.pt` (layout in docs/design.md,
    any dataset); for TinyImageNet also `tinyimagenet.pt` and the `tiny-imagenet-200/` folder; otherwise
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


if __name__ == '__main__':
    def _prepare():
        p = ArgumentParser(description='write the prepared tensor file of a dataset once (TinyImageNet: from the '
                                       'tiny-imagenet-200/ folder), so later loads skip torchvision and decoding')
        p.add_argument('dataset')
        p.add_argument('--data_path', default='data')
        a = p.parse_args()
        d = get_dataset(a.dataset, a.data_path)
        print(f'{d}; prepared file: {_prepared_candidates(d.name, a.data_path)[0]}')
    run_cli(_prepare)

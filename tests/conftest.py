"""Fixtures in the real on-disk formats, tiny enough for a 2-core CI machine."""
import os
import struct
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Tiny tensors gain nothing from a second thread, and on a busy machine the threads wait on each other: the suite's
# parallelism is its workers instead (pytest -n auto, one per core, README).
torch.set_num_threads(1)


def toy_images(n_per_class, num_classes, channel, size, seed=0, noise=40):
    """uint8 images whose class is visible: class c lights a horizontal band at a class-specific height."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = torch.randint(0, noise, (len(labels), channel, size, size), generator=g, dtype=torch.int64)
    band = max(1, size // num_classes)
    for c in range(num_classes):
        rows = slice(c * band, c * band + band)
        x[labels == c, :, rows, :] += 200
    return x.clamp(0, 255).to(torch.uint8), labels


def write_prepared(folder, name, n_train=10, n_test=4, num_classes=10, channel=3, size=32, seed=0, noise=40):
    """A prepared tensor file `<folder>/<name>.pt` in the prepared layout (docs/design.md, section 2). A larger noise
    hides the class bands (toy_images), for a toy whose accuracies are not all 100 %."""
    xtr, ytr = toy_images(n_train, num_classes, channel, size, seed, noise)
    xte, yte = toy_images(n_test, num_classes, channel, size, seed + 1, noise)
    path = os.path.join(folder, f'{name}.pt')
    torch.save(dict(classes=[f'c{i}' for i in range(num_classes)], images_train=xtr, labels_train=ytr,
                    images_val=xte, labels_val=yte), path)
    return path


def write_idx(folder, prefix, images, labels):
    """MNIST's idx files (uncompressed), as torchvision reads them from <root>/<Name>/raw/."""
    os.makedirs(folder, exist_ok=True)
    n, _, h, w = images.shape
    with open(os.path.join(folder, f'{prefix}-images-idx3-ubyte'), 'wb') as f:
        f.write(struct.pack('>IIII', 0x803, n, h, w) + images.numpy().tobytes())
    with open(os.path.join(folder, f'{prefix}-labels-idx1-ubyte'), 'wb') as f:
        f.write(struct.pack('>II', 0x801, n) + labels.to(torch.uint8).numpy().tobytes())


@pytest.fixture
def mnist_idx(tmp_path):
    """A tiny MNIST in torchvision's raw layout: 6 train and 2 test images per class."""
    raw = tmp_path / 'MNIST' / 'raw'
    xtr, ytr = toy_images(6, 10, 1, 28, 0)
    xte, yte = toy_images(2, 10, 1, 28, 1)
    write_idx(str(raw), 'train', xtr, ytr)
    write_idx(str(raw), 't10k', xte, yte)
    return tmp_path, xtr, ytr


@pytest.fixture
def prepared_mnist(tmp_path):
    """A prepared MNIST.pt with a learnable toy structure (10 train, 10 test images per class)."""
    write_prepared(str(tmp_path), 'MNIST', n_train=10, n_test=10, channel=1, size=28)
    return tmp_path


def toy_data(n=12, classes=4, channel=1, size=28, n_test=5):
    """A `Data` with `classes` learnable classes, n training and n_test test images each (MNIST's constants and ten
    class slots, the first `classes` used)."""
    from condensation.data import Data
    x, y = toy_images(n, classes, channel, size, seed=0)
    xt, yt = toy_images(n_test, classes, channel, size, seed=1)
    data = Data('MNIST', [str(i) for i in range(10)], x, y, xt, yt)
    data.num_classes = classes
    data.indices_class = data.indices_class[:classes]
    return data


def condense_toy(step, args, data, iterations, ipc=2):
    """A noise-initialised synthetic set of `data` before and after `iterations` of `step` (dm.dm_step or
    dc.dc_step) with SGD at args.lr_img: (initial images, final images, labels)."""
    from condensation.run.runner import init_synset
    image_syn, syn_cls = init_synset(data, ipc, 'noise', torch.Generator().manual_seed(0))
    initial = image_syn.clone()
    image_syn.requires_grad_(True)
    opt = torch.optim.SGD([image_syn], lr=args.lr_img, momentum=0.5)
    for it in range(iterations):
        step(args, data, image_syn, syn_cls, opt, args.seed, (0, it))
    return initial, image_syn.detach(), syn_cls


def over_seeds(measure, holds, n=5, need=3):
    """A claim about a random process, checked over seeds instead of one seed's luck: measure(seed) for the seeds
    0, 1, ... until it is decided whether holds(value) is true for at least `need` of `n` seeds (need 3 of 5: the
    median holds). Returns (decided true, the values measured)."""
    values, hits = [], 0
    for seed in range(n):
        values.append(measure(seed))
        hits += bool(holds(values[-1]))
        if hits >= need or len(values) - hits > n - need:
            break
    return hits >= need, values


def interrupt_at(make_step, at):
    """A step class (dm.DMStep, dc.DCStep) whose steps raise KeyboardInterrupt at iteration `at`, as Ctrl-C would."""
    def make(*args, **kwargs):
        step = make_step(*args, **kwargs)

        def interrupted(seed, keys):
            if keys[-1] == at:
                raise KeyboardInterrupt
            return step(seed, keys)
        return interrupted
    return make


# ---------------------------------------------------------------------------------------------- command lines

W = 8  # GAN width in tests
CL_FAST = ['--model', 'ConvNetW32', '--ipc', '2', '--steps', '5', '--num_eval', '1', '--epoch_eval_train', '1',
           '--device', 'cpu', '--no_progress', '--batch_real', '4', '--feature_epochs', '1', '--Iteration', '2',
           '--gan_iters', '2', '--gan_batch', '8', '--gan_width', '8']
FOLDER_CLASSES = ['cat', 'apple', 'bird']  # written in this order; the folder's classes are sorted by name
FOLDER_SIZES = [(30, 30), (37, 33), (41, 45), (29, 35)]  # odd sizes, all resized by --im_size


def dm_args(**kw):
    """main_DM.py's validated arguments for a toy MNIST run, with `kw` changed."""
    import main_DM
    from condensation.run.cli import Config
    return Config(main_DM.parse_args(['--dataset', 'MNIST', '--model', 'ConvNetW32', '--ipc', '2', '--device', 'cpu',
                                      '--batch_real', '8']), **kw)


def cl_args(tmp, *extra):
    """CL_DM.py's validated arguments for a toy run on the prepared MNIST in tmp."""
    import CL_DM
    return CL_DM.parse_args(['--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'out'), *CL_FAST,
                             *extra])


def dm_argv(tmp, *extra):
    """main_DM.py's (and main.py's) command line for a seconds-long run on the prepared toy MNIST in tmp, writing
    to tmp/out."""
    return ['--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'out'), '--model', 'ConvNetW32',
            '--ipc', '1', '--Iteration', '4', '--batch_real', '4', '--num_exp', '1', '--num_eval', '1',
            '--epoch_eval_train', '1', '--eval_final_only', '--checkpoint_every', '2', '--device', 'cpu',
            '--no_progress', *extra]


def dim_flags(tmp, stage, *extra):
    """A CPU-sized command line of DiM stage 1, 2 or 3 on the prepared toy MNIST in tmp."""
    common = ['--data', 'mnist', '--data-dir', str(tmp), '--output-dir', f'{tmp}/results/', '--logs-dir',
              f'{tmp}/logs/', '--device', 'cpu', '--no_progress', '--gan_width', str(W), '--batch-size', '8',
              '--epochs-eval', '1', '--ipc', '1']
    if stage in (1, 2):
        common += ['--iters-per-epoch', '2', '--eval-interval', '1', '--val_split', '2', '--print-freq', '1']
    return common + list(extra)


def write_folder(root, channel=3, n_train=4, n_test=2, sizes=FOLDER_SIZES, test='test'):
    """root/train/<class>/*.png and root/<test>/<class>/*.png with a toy structure visible at any size."""
    from PIL import Image
    for split, n, seed in (('train', n_train, 0), (test, n_test, 1)):
        x, y = toy_images(n, len(FOLDER_CLASSES), channel, 48, seed)
        for i, (img, c) in enumerate(zip(x, y.tolist())):
            d = root / split / FOLDER_CLASSES[c]
            d.mkdir(parents=True, exist_ok=True)
            a = img.permute(1, 2, 0).numpy()
            im = Image.fromarray(a[:, :, 0] if channel == 1 else a).resize(sizes[i % len(sizes)], Image.BILINEAR)
            im.save(d / f'{i:03d}.png')
    return root


HOLD = '''import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b'%d' % os.getpid())
print('held', flush=True)
sys.stdin.read()'''


def hold_lock_file(lock):
    """Another run holding the lock file (a process that takes it as utils.hold_lock does, without torch's start-up
    time), until it is killed."""
    os.makedirs(lock.parent, exist_ok=True)
    holder = subprocess.Popen([sys.executable, '-c', HOLD, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline() == 'held\n'
    return holder

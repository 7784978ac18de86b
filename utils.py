"""Small shared pieces: user errors, named random streams, atomic writes, the run log, statistics.

Nothing here reseeds a global RNG or reads the clock for randomness: randomness arrives as `torch.Generator`s
made by `make_generator(seed, *keys)`, one stream per purpose.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import tempfile

import numpy as np
import torch


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr with exit code 2, never a traceback."""


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
    """A flag that must be a positive, finite number (nan and inf pass a plain `<= 0` test)."""
    if value is None or not math.isfinite(value) or value <= 0:
        raise UserError(f'--{name} must be positive and finite, got {value}')


def default_device():
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def count_parameters(net):
    return sum(p.numel() for p in net.parameters())


# ----------------------------------------------------------------------------------------------
# Seeding: one --seed, and a named stream for everything that needs randomness

def derive_seed(seed, *keys):
    """A 63-bit seed derived from (seed, *keys), e.g. (seed, 'net', exp, it): stable across runs and machines."""
    digest = hashlib.sha256(repr((int(seed),) + tuple(keys)).encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def make_generator(seed, *keys, device='cpu'):
    """A torch.Generator for the stream named by keys (see derive_seed); on `device` to draw there without host
    copies. A CUDA generator gives other numbers than a CPU one for the same keys."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))


AMP_DTYPES = {'off': None, 'bf16': torch.bfloat16}


def autocast(device, amp='off'):
    """The forward-pass precision context of --amp: 'off' (float32) or 'bf16' (bfloat16 autocast)."""
    dtype = AMP_DTYPES[amp or 'off']
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def class_means(rows, cls, num_classes):
    """K x D: the mean row of each class from the actual counts (zeros for an absent class)."""
    cls = cls.to(rows.device)
    sums = torch.zeros(num_classes, rows.shape[1], device=rows.device, dtype=rows.dtype).index_add(0, cls, rows)
    # counted with index_add, not bincount: on CUDA bincount reads its maximum back to the host (a sync)
    counts = torch.zeros(num_classes, device=rows.device, dtype=rows.dtype).index_add(0, cls, torch.ones_like(cls, dtype=rows.dtype))
    return sums / counts.clamp_min(1)[:, None]


def mean_std(accs):
    """(mean, population std) in percent, as the papers and the original code report."""
    a = np.asarray(accs, dtype=np.float64) * 100
    return (float(a.mean()), float(a.std())) if len(a) else (float('nan'), float('nan'))


def sample_std(accs):
    """The sample std (ddof 1) in percent, logged next to the papers' population std."""
    return float(np.std(np.asarray(accs, dtype=np.float64) * 100, ddof=1)) if len(accs) > 1 else float('nan')


# ----------------------------------------------------------------------------------------------
# Saving: every file is written to a temporary name and renamed, so a crash never leaves half a file

def atomic_write(path, write):
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
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(path, data):
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode())


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + '\n')


def versions():
    import torchvision
    return {'python': sys.version.split()[0], 'torch': str(torch.__version__), 'torchvision': str(torchvision.__version__),
            'numpy': np.__version__}



# ----------------------------------------------------------------------------------------------
# The run log

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

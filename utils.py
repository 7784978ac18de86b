"""Small shared pieces: user errors, named random streams, atomic writes, the run log, statistics.

Nothing here reseeds a global RNG or reads the clock for randomness: randomness arrives as `torch.Generator`s
made by `make_generator(seed, *keys)`, one stream per purpose.
"""
import argparse
import errno
import glob
import hashlib
import json
import math
import os
import re
import sys
import tempfile

import numpy as np
import torch

import parallel
from parallel import is_main


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr with exit code 2, never a traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 2 (no usage dump), defaults shown in --help,
    and values such as -1e-4 parse as numbers (argparse takes them for flags), so that the flag's own check can
    say what is wrong with them."""

    def __init__(self, *a, **kw):
        kw.setdefault('formatter_class', argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*a, **kw)
        self._negative_number_matcher = re.compile(r'^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$', re.I)

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message}\n')


def run_cli(main):
    """Run main(); bad input becomes one line on stderr and exit code 2, never a traceback: a UserError, a file
    system error on reading or writing (the path and the reason), or running out of memory."""
    prog = os.path.basename(sys.argv[0])
    try:
        main()
    except UserError as e:
        _fail(prog, e)
    except OSError as e:
        where = f'{e.filename}: ' if e.filename else ''
        hint = {errno.ENOSPC: '; free some space or pass another output folder',
                errno.EACCES: '; pass a folder you can write to', errno.EROFS: '; pass a writable folder'}
        _fail(prog, f'{where}{e.strerror or e}{hint.get(e.errno, "")}')
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and 'out of memory' not in str(e) and "can't allocate" not in str(e):
            raise
        _fail(prog, 'out of memory; lower --ipc, the batch sizes (--batch_real, --batch_train) or use a smaller model')
    except KeyboardInterrupt:
        print(f'\n{prog}: interrupted; rerun with --resume to continue', file=sys.stderr)
        sys.exit(130)


def _fail(prog, message):
    print(f'{prog}: error: {message}', file=sys.stderr)
    sys.exit(2)


def check_positive(name, value):
    """A flag that must be a positive, finite number (nan and inf pass a plain `<= 0` test)."""
    if value is None or not math.isfinite(value) or value <= 0:
        raise UserError(f'--{name} must be positive and finite, got {value}')


def check_finite(args):
    """Every float flag must be a finite number: nan slips through any comparison, inf through most."""
    for name, value in sorted(vars(args).items()):
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f'--{name} must be a finite number, got {value}')


def default_device():
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def resolve_device(device):
    """--device as a run uses it: the default (cuda when available), checked, and under torchrun this process's
    own device (parallel.start joins the process group)."""
    device = device or default_device()
    if str(device).startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f'--device {device} asked for, but no CUDA device is available; use --device cpu')
    return parallel.start(device)


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

def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """write(f) into a temporary file beside `path`, then rename it over `path`: readers see the old file or the
    new one, never half of one. The file gets the permissions of an ordinary open() (mkstemp's are 0600).
    Under torchrun only rank 0 writes; the other processes hold the same results."""
    if not is_main():
        return
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temps(folder, *stems):
    """Delete the temporary files that atomic_write left in `folder` for files named stem* when a process was
    killed mid-write (no stems: every one in the folder). Call it when a run starts, for the run's own files."""
    if not is_main():
        return  # rank 0 writes, and may be writing one of them now
    for stem in stems or ('',):
        for tmp in glob.glob(os.path.join(glob.escape(folder), f'.{glob.escape(stem)}*.tmp')):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def unreadable(path, error):
    """Why torch.load failed on path, in words: a damaged checkpoint (it starts like one: a zip archive or a pickle)
    or a file that is no PyTorch checkpoint at all."""
    with open(path, 'rb') as f:
        head = f.read(4)
    if not head or head.startswith(b'PK') or head.startswith(b'\x80'):
        return f'{path} is not a readable checkpoint: it is corrupt (truncated or partly written; {type(error).__name__})'
    return f'{path} is not a readable checkpoint: it is not a PyTorch file ({type(error).__name__})'


def check_output_folder(path, flag):
    """An output folder must be a folder, or not exist yet under one this process can write to. Probed with a
    temporary file (permission bits say nothing to root), so that a bad path fails before any work is done."""
    existing = path
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing.rstrip(os.sep))
    existing = existing or '.'
    if not os.path.isdir(existing):
        raise UserError(f'{flag} {path}: {existing} is a file, not a folder; pass a folder for the outputs')
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix='.write-test-')
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f'{flag} {path}: {os.path.abspath(existing)} is not writable ({e.strerror}); pass a folder '
                        f'you can write to') from None


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
    """Messages to the console (above any progress bar) and, once opened, to a log file. Under torchrun only
    rank 0 logs."""

    def __init__(self, path=None, append=False):
        self._file = None
        self._silent = not is_main()
        if path is not None:
            self.open(path, append)

    def open(self, path, append=False):
        if self._silent:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, 'a' if append else 'w')

    def __call__(self, msg, echo=True):
        if echo and not self._silent:
            from tqdm import tqdm
            tqdm.write(msg)
        if self._file is not None:
            self._file.write(msg + '\n')
            self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


# ----------------------------------------------------------------------------------------------
# The original DC repository's utils API (`from utils import get_dataset, evaluate_synset, DiffAugment, ...`)

ORIGINAL_API = ('get_loops', 'get_dataset', 'get_network', 'get_eval_pool', 'evaluate_synset', 'get_daparam',
                'match_loss', 'get_time', 'TensorDataset', 'epoch', 'DiffAugment', 'ParamDiffAug')


def __getattr__(name):
    # They live in original_api.py, which imports data, networks and evaluation; those import this module, so the
    # names are looked up on first use instead of imported here (no import cycle).
    if name in ORIGINAL_API:
        import original_api
        return getattr(original_api, name)
    raise AttributeError(f"module 'utils' has no attribute {name!r}")

"""The bottom layer every other module stands on: user errors and the command-line runner (`run_cli`), named
random streams, atomic writes and the run lock, the run log, small statistics. It imports no other module of the
project but the process-group helpers of device/parallel.py.

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
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time

import numpy as np
import torch

from condensation.device import parallel
from condensation.device.parallel import is_main


# The folder of the entry scripts (the repository's top), which the commands a run prints and reproduce.py run.
SCRIPTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

class UserError(Exception):
    """Bad input from the user: reported as one line on stderr with exit code 2, never a traceback."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default at the end of its help, unless the help already says what it is: a None default means
    "decided at run time" (the help says how), and a required flag has none."""

    def _get_help_string(self, action):
        if action.required or action.default is None or re.search(r'\(default\b|\bdefault:', action.help or ''):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 2 (no usage dump), defaults shown in --help,
    and values such as -1e-4 parse as numbers (argparse takes them for flags), so that the flag's own check can
    say what is wrong with them. No abbreviations: --Iter for --Iteration, or another script's flag that happens
    to be a prefix of one of ours (--num), would silently mean something else. domains: {destination: domain
    text} for a parser of its own (bench/), in place of the class's table."""

    def __init__(self, *a, domains=None, **kw):
        kw.setdefault('formatter_class', HelpFormatter)
        kw['allow_abbrev'] = False
        super().__init__(*a, **kw)
        if domains is not None:
            self.domains = {dest: Domain(text) for dest, text in domains.items()}
        self._negative_number_matcher = re.compile(r'^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$', re.I)

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message}\n')

    # The domain of every numeric flag by destination (cli.DOMAINS); None: the parser checks no domain.
    domains = None

    def numeric_actions(self):
        """The flags that take numbers (int or float, one or several)."""
        return [a for a in self._actions if a.type in (int, float)]

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, then every number checked against its flag's domain, before the script does any work (a
        UserError names the flag as it was typed). A numeric flag without a domain is a programming error."""
        argv = list(sys.argv[1:] if args is None else args)
        namespace, extra = super().parse_known_args(argv, namespace)
        if self.domains is not None:
            spellings = {}  # dest -> every option string that sets it
            for action in self.numeric_actions():
                if action.dest not in self.domains:
                    raise KeyError(f'{action.option_strings[0]} has no domain in the flag domain table')
                spellings.setdefault(action.dest, []).extend(action.option_strings)
            for dest, options in spellings.items():
                value = getattr(namespace, dest, None)
                for v in value if isinstance(value, list) else [value]:
                    self.domains[dest].check(_typed(options, argv), v)
        return namespace, extra


def _typed(options, argv):
    """The spelling of a flag that argv used (the last one, as argparse keeps the last value); its first one if
    argv has none."""
    used = [o for a in argv for o in options if a == o or a.startswith(o + '=')]
    return used[-1] if used else options[0]


class Domain:
    """The values a numeric flag may take, written as in maths: '> 0', '>= 1', '<= 1', '[0, 1)', '(0, 1e4]'.
    None (a default decided at run time) is always allowed; nan and inf never are, nor floats beyond float32."""

    def __init__(self, text):
        self.text = text
        m = re.fullmatch(r'([\[(])(\S+), (\S+)([\])])', text)
        if m:
            self.lo, self.lo_open, self.hi, self.hi_open = float(m[2]), m[1] == '(', float(m[3]), m[4] == ')'
        else:
            op, bound = text.split()
            self.lo, self.lo_open, self.hi, self.hi_open = -math.inf, False, math.inf, False
            if op.startswith('>'):
                self.lo, self.lo_open = float(bound), op == '>'
            else:
                self.hi, self.hi_open = float(bound), op == '<'

    def __repr__(self):
        return f'Domain({self.text!r})'

    def contains(self, value):
        return ((value > self.lo if self.lo_open else value >= self.lo)
                and (value < self.hi if self.hi_open else value <= self.hi))

    def words(self):
        return 'positive' if self.text == '> 0' else f'in {self.text}' if self.text[0] in '[(' else self.text

    def check(self, flag, value):
        if value is None:
            return
        check_float(flag, value)
        if not self.contains(value):
            raise UserError(f'{flag} must be {self.words()}, got {value}')

    def outside(self, integer):
        """Values just outside the domain (for the tests' catalogue of bad inputs): each bound crossed."""
        step = 1 if integer else 1e-3
        bad = []
        if self.lo > -math.inf:
            bad.append(self.lo if self.lo_open else self.lo - step)
        if self.hi < math.inf:
            bad.append(self.hi if self.hi_open else self.hi + (step if integer else self.hi))
        return [int(v) if integer else v for v in bad]


def run_cli(main, resumable=True):
    """Run main(); bad input becomes one line on stderr and exit code 2, never a traceback: a UserError, a file
    system error on reading or writing (the path and the reason), or running out of memory. The line also ends
    the run's log when one is open. Under torchrun every process meets the same bad input, and rank 0 alone prints
    it; a fault of one process's own (a file system error, memory) is printed by that process, with its rank. The
    run's lock files are released on every exit. resumable: the script has --resume (Ctrl-C's line then advises
    it). A SIGTERM (a scheduler ending the job, `kill`) stops the run as Ctrl-C does, with its line in the log and
    exit code 143; an unexpected exception (a bug) keeps its traceback, and the log says the run ended there."""
    prog = os.path.basename(sys.argv[0])
    _OPEN_LOGS.clear()  # logs an earlier main() left open in this process are not this run's
    held = set(_LOCKS)  # a caller's own (reproduce.py's, around the stages it runs in-process) stay held
    previous = _on_sigterm(_terminate)
    try:
        main()
    except UserError as e:
        _fail(prog, e, own=False)
    except OSError as e:
        where = f'{e.filename}: ' if e.filename else ''
        hint = {errno.ENOSPC: '; free some space or pass another output folder',
                errno.EACCES: '; pass a folder you can write to', errno.EROFS: '; pass a writable folder'}
        _fail(prog, f'{where}{e.strerror or e}{hint.get(e.errno, "")}')
    except KeyboardInterrupt as e:
        line = ('stopped by SIGTERM' if isinstance(e, Terminated) else 'interrupted') + (
            '; rerun with --resume to continue' if resumable else '')
        if is_main():
            print(f'\n{prog}: {line}', file=sys.stderr)
        _to_logs(line)
        sys.exit(143 if isinstance(e, Terminated) else 130)
    except Exception as e:
        known = _resource_error(e)
        if known is not None:
            _fail(prog, *known)
        _to_logs(f'crashed: {type(e).__name__}: {e} (the traceback is on stderr)')
        raise  # a bug: ours to fix, with its traceback
    finally:
        _on_sigterm(previous)
        for path in set(_LOCKS) - held:
            release_lock(path)


def _resource_error(e):
    """(message, own) for the failures that bad flags cause deep inside a step, else None: a float32 that
    overflowed (a learning rate near float32's largest), or running out of memory."""
    text = str(e)
    if isinstance(e, RuntimeError) and 'without overflow' in text:
        return f'a value overflowed float32 inside a training step ({text.strip()}); lower the learning rates', False
    if isinstance(e, MemoryError) or isinstance(e, RuntimeError) and ('out of memory' in text or
                                                                      "can't allocate" in text):
        return 'out of memory; lower --ipc, the batch sizes (--batch_real, --batch_train) or use a smaller model', True
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM received: the run stops where it is, as on Ctrl-C (checkpoints are written atomically, so the last
    one stays whole)."""


def _terminate(signum, frame):
    raise Terminated()


def _on_sigterm(handler):
    """Install handler for SIGTERM and return the one it replaces; None (and nothing done) outside the main thread
    or for a None handler, where Python cannot or need not install one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _fail(prog, message, own=True):
    """One line on stderr and exit code 2, also ending the run's log; under torchrun from rank 0, or from the
    process whose own fault it is."""
    if is_main():
        print(f'{prog}: error: {message}', file=sys.stderr)
    elif own:
        print(f'{prog}: error (rank {parallel.rank()}): {message}', file=sys.stderr)
    _to_logs(f'error: {message}')
    sys.exit(2)


def _to_logs(line):
    for log in list(_OPEN_LOGS):
        try:
            log(line, echo=False)
            log.close()
        except OSError:
            pass  # a full disk: the line is on stderr


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_float(flag, value):
    """A float flag's value: a finite number (nan slips through any comparison, inf through most) within float32's
    range: the tensors it reaches are float32, and a finite 1e300 would fail deep inside a step ('cannot be
    converted to type float without overflow')."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f'{flag} must be a finite number, got {value}')
    if isinstance(value, float) and abs(value) > FLOAT32_MAX:
        raise UserError(f'{flag} {value} is beyond the float32 range (largest {FLOAT32_MAX:.4g}); pass a smaller '
                        f'value')


def default_device():
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def check_device(device):
    """--device checked: the default (cuda when available), or cpu, cuda or cuda:N of a device this machine has.
    Under torchrun (WORLD_SIZE > 1) the launcher's variables must be there too: the process group is joined next
    (parallel.start, which makes 'cuda' this process's own GPU)."""
    if parallel.world_size() > 1 and ('MASTER_ADDR' not in os.environ or 'RANK' not in os.environ):
        raise UserError(f'WORLD_SIZE={parallel.world_size()} is set but RANK or MASTER_ADDR is not: start the script '
                        f'with torchrun (torchrun --standalone --nproc_per_node N script.py ...) or unset WORLD_SIZE')
    device = device or default_device()
    try:
        kind = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {device} is not a device name; use cpu, cuda or cuda:N") from None
    if kind.type not in ('cpu', 'cuda'):
        raise UserError(f'--device {device}: the scripts run on cpu or cuda[:N]')
    if kind.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f'--device {device} asked for, but no CUDA device is available; use --device cpu')
    if kind.type == 'cuda' and kind.index is not None and kind.index >= torch.cuda.device_count():
        raise UserError(f'--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), '
                        f'cuda:0 to cuda:{torch.cuda.device_count() - 1}')
    return device


def cpu_state(state):
    """A state dict's tensors, detached, on the CPU (for a checkpoint that outlives the run's device)."""
    return {k: v.detach().cpu() for k, v in state.items()}


def count_parameters(net):
    return sum(p.numel() for p in net.parameters())


# ----------------------------------------------------------------------------------------------
# Seeding: one --seed, and a named stream for everything that needs randomness

def derive_seed(seed, *keys):
    """A 63-bit seed derived from (seed, *keys), e.g. (seed, 'net', exp, it): stable across runs and machines."""
    digest = hashlib.sha256(repr((int(seed),) + tuple(keys)).encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def draw_device(generator):
    """Where `generator` draws: its device, or the CPU for None (torch's global generator)."""
    return generator.device if generator is not None else torch.device('cpu')


def make_generator(seed, *keys, device='cpu'):
    """A torch.Generator for the stream named by keys (see derive_seed); on `device` to draw there without host
    copies. A CUDA generator gives other numbers than a CPU one for the same keys."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))


def load_optimizer_state(optimizer, state):
    """optimizer.load_state_dict(state), made to step where its parameters are now. A state keeps the settings it
    was saved with, Adam's `capturable` among them (gan.adam sets it on CUDA, for CUDA graphs): a GPU's state would
    make the CPU's Adam fail at its first step, a CPU's state would stop a GPU's recordings. Each group keeps this
    optimiser's own setting, and the step counts move to where that setting wants them (the parameters' device
    when capturable, else the host)."""
    own = [group.get('capturable') for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, capturable in zip(optimizer.param_groups, own):
        if capturable is None:
            continue
        group['capturable'] = capturable
        for p in group['params']:
            step = optimizer.state.get(p, {}).get('step')
            if torch.is_tensor(step):
                optimizer.state[p]['step'] = step.to(torch.float32).to(p.device if capturable else 'cpu')


AMP_DTYPES = {'off': None, 'bf16': torch.bfloat16}


def set_precision(mode, device):
    """--precision on a CUDA device: 'tf32' (TensorFloat-32) or 'ieee' (full float32) for both cuDNN and cuBLAS
    float32 work; 'default' leaves PyTorch's own (TF32 convolutions, full float32 matrix products). Process-wide,
    as PyTorch's switches are; nothing to choose on the CPU, which computes float32 in full."""
    if mode == 'default' or torch.device(device).type != 'cuda':
        return
    # cuDNN's convolution and RNN switches both (PyTorch refuses to read allow_tf32 when they differ), and the
    # matmul precision through the setter that keeps torch.get_float32_matmul_precision readable
    torch.set_float32_matmul_precision('highest' if mode == 'ieee' else 'high')
    if hasattr(torch.backends.cudnn, 'conv'):  # torch >= 2.9
        torch.backends.cudnn.conv.fp32_precision = torch.backends.cudnn.rnn.fp32_precision = mode
    else:
        torch.backends.cudnn.allow_tf32 = mode == 'tf32'


def _fp32_precision(*switches, default):
    """The first set one of torch's fp32_precision switches ('tf32' or 'ieee'; 'none' defers to the next)."""
    for value in switches:
        if value not in (None, 'none'):
            return value
    return default


def precision_text(args):
    """The precision a run computes in (its plan line, log and results record it): float32 convolutions and
    matrix products in TF32 or IEEE float32 on CUDA, always IEEE on the CPU; with --amp bf16, bfloat16 autocast
    for the forwards that take it."""
    device = torch.device(args.device)
    if device.type != 'cuda':
        text = 'IEEE fp32 (CPU)'
    else:
        names = {'tf32': 'TF32', 'ieee': 'IEEE fp32'}
        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        if hasattr(cudnn, 'conv'):
            top = torch.backends.fp32_precision
            conv = _fp32_precision(cudnn.conv.fp32_precision, cudnn.fp32_precision, top, default='tf32')
            mm = _fp32_precision(matmul.fp32_precision, top, default=None)
        else:
            conv, mm = 'tf32' if cudnn.allow_tf32 else 'ieee', None
        mm = mm or ('ieee' if torch.get_float32_matmul_precision() == 'highest' else 'tf32')
        text = f'convolutions {names[conv]}, matmuls {names[mm]}'
    if getattr(args, 'amp', 'off') == 'bf16':
        text = f'bf16 autocast where --amp takes it, else {text}'
    return text


def autocast(device, amp='off'):
    """The forward-pass precision context of --amp: 'off' (float32) or 'bf16' (bfloat16 autocast)."""
    dtype = AMP_DTYPES[amp or 'off']
    # no cast cache: a cached cast made while a CUDA graph records would outlive the recording
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None, cache_enabled=False)


def class_means(rows, cls, num_classes):
    """K x D: the mean row of each class from the actual counts (zeros for an absent class)."""
    cls = cls.to(rows.device)
    sums = torch.zeros(num_classes, rows.shape[1], device=rows.device, dtype=rows.dtype).index_add(0, cls, rows)
    # counted with index_add, not bincount: on CUDA bincount reads its maximum back to the host (a sync)
    ones = torch.ones_like(cls, dtype=rows.dtype)
    counts = torch.zeros(num_classes, device=rows.device, dtype=rows.dtype).index_add(0, cls, ones)
    return sums / counts.clamp_min(1)[:, None]


def mean_std(accs):
    """(mean, population std) in percent, as the papers and the original code report."""
    a = np.asarray(accs, dtype=np.float64) * 100
    return (float(a.mean()), float(a.std())) if len(a) else (float('nan'), float('nan'))


def mean_pm(accs, unit=''):
    """'mean ± std' in percent, or the mean alone for one value: the std of one network is no spread."""
    m, s = mean_std(accs)
    return f'{m:.2f}{unit}' if len(accs) == 1 else f'{m:.2f} ± {s:.2f}{unit}'


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
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = _os_error(e) if isinstance(e, Exception) else None
        if cause is not None and (cause is not e or not cause.filename):
            # torch.save's zip writer reports a failed write (a full disk) as a RuntimeError whose context is the
            # OSError: raise that, naming the file, so that run_cli gives its one line and advice.
            raise OSError(cause.errno, cause.strerror or str(cause), path) from None
        raise


def atomic_write_folder(path, write):
    """write(folder) into a temporary folder beside `path`, then rename it to `path` (which must not exist): an
    interrupted write leaves neither a half folder under that name nor the temporary one. The folder gets the
    permissions of an ordinary mkdir (mkdtemp's are 0700). Under torchrun only rank 0 writes."""
    if not is_main():
        return
    path = os.path.abspath(path)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix='.' + os.path.basename(path) + '.')
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        write(tmp)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _os_error(e):
    """The OSError behind an exception: itself, or the one it was raised while handling (its cause or context)."""
    seen = set()
    while e is not None and not isinstance(e, OSError) and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return e if isinstance(e, OSError) else None


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
        return (f'{path} is not a readable checkpoint: it is corrupt (truncated or partly written; '
                f'{type(error).__name__})')
    return f'{path} is not a readable checkpoint: it is not a PyTorch file ({type(error).__name__})'


def non_finite(obj, where=''):
    """The key path ('generator/fc1.weight', 'accs/0/2') of the first floating-point tensor or float in obj (a
    tensor, a number or nested dicts, lists and tuples) that holds nan or inf; None when there is none."""
    if isinstance(obj, float):
        return where or 'value' if not math.isfinite(obj) else None
    if torch.is_tensor(obj):
        return where or 'tensor' if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = non_finite(value, f'{where}/{key}' if where else str(key))
        if found is not None:
            return found
    return None


def refuse_non_finite(obj, what, advice):
    """UserError when a loaded checkpoint holds nan or inf: a diverged run wrote it, and every number it would give
    is meaningless."""
    where = non_finite(obj)
    if where is not None:
        raise UserError(f'{what} holds non-finite values (nan or inf, in {where}): the run that wrote it diverged; '
                        f'{advice}')


def check_within(x, limit, what, advice):
    """UserError when the tensor x holds nan, inf or a value beyond ±limit: finite garbage (a set at 1e10 after a
    learning rate of 1e10) stays finite, so a check for nan and inf alone lets it through as a result."""
    peak = float(x.detach().abs().max()) if x.numel() else 0.0
    if not peak <= limit:  # nan fails every comparison
        raise UserError(f'{what} reach {peak:.3g}, beyond ±{limit:.3g}; {advice}')


def check_losses(parts, where, advice, diverged='the training diverged'):
    """UserError when a training step's loss (parts: name -> float; '' names the only loss) is nan or inf: the
    models diverged, and they stay so, so the run stops before a diverged model reaches a checkpoint."""
    for name, value in parts.items():
        if not math.isfinite(value):
            raise UserError(f'{where}: the {name + " " if name else ""}loss is {value}, {diverged}; {advice}')


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
    """torch.save, atomically, and only values worth keeping: what holds nan or inf (a diverged run's) does not
    replace the file at path, which stays as it was. (The checks of the runs stop a divergence earlier, naming the
    flag to lower; this one keeps a good file whatever they miss.)"""
    where = non_finite(obj)
    if where is not None:
        raise UserError(f'{path} was not replaced: the values to save hold nan or inf (in {where}), the run '
                        f'diverged; lower the learning rates')
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(path, data):
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode())


def write_json(path, obj):
    """obj as JSON; a non-finite float (the sample std of one value, a diverged loss) is written as null: NaN and
    Infinity are not JSON, and strict readers (jq, JavaScript, Go) reject the file."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, default=str, allow_nan=False) + '\n')


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def versions():
    import torchvision
    return {'python': sys.version.split()[0], 'torch': str(torch.__version__),
            'torchvision': str(torchvision.__version__),
            'numpy': np.__version__}



# ----------------------------------------------------------------------------------------------
# One run per output: a lock file that holds the pid of the run writing there

_LOCKS = {}  # lock path -> file descriptor of a lock this process holds


def hold_lock(path, what, advice):
    """Make this run the only one writing `what` (e.g. 'result/DM_MNIST_ConvNet_10ipc.*'), through the lock file
    `path`, which holds this process's pid, until release_lock (or the process ends). UserError, naming the pid,
    when another live run holds it. The lock is the kernel's (flock), so a lock file left by a run that was killed
    is taken over, and two runs that start at once cannot both take it. Under torchrun rank 0 takes it for the
    run and every process gets its verdict. A process may take its own lock again (a resumed run in one
    process). Where the file system cannot lock (no flock), runs go unlocked."""
    error = _take_lock(os.path.abspath(path), what, advice) if is_main() else None
    errors = [e for e in parallel.gather(error) if e]
    if errors:
        raise UserError(errors[0])


def _take_lock(path, what, advice):
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        return None
    if path in _LOCKS:
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors='replace').strip() or 'unknown'
            os.close(fd)
            return _busy(pid, what, path, advice)
        except OSError:
            os.close(fd)
            return None
        try:  # the run that held it may have removed the file between our open and flock: lock the one there now
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f'{os.getpid()}\n'.encode())
    _LOCKS[path] = fd
    return None


def _busy(pid, what, path, advice):
    return f'another run (pid {pid}) is writing {what} (lock file {path}); wait for it to finish, or {advice}'


def refuse_if_held(folder, what, advice):
    """UserError when another process holds a lock file under `folder` (a run writing there): before anything
    there is deleted."""
    try:
        import fcntl
    except ImportError:
        return
    for path in glob.glob(os.path.join(glob.escape(folder), '**', '*.lock'), recursive=True):
        path = os.path.abspath(path)
        if path in _LOCKS:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(_busy(os.read(fd, 32).decode(errors='replace').strip() or 'unknown', what, path,
                                  advice)) from None
        except OSError:
            pass
        finally:
            os.close(fd)  # (closing also gives up the lock taken for the test)


def release_lock(path=None):
    """Give up the lock file `path` (every lock this process holds when None) and remove it."""
    for held in [os.path.abspath(path)] if path else list(_LOCKS):
        fd = _LOCKS.pop(held, None)
        if fd is not None:
            try:
                os.unlink(held)  # while still locked, so that nobody takes the file being removed
            except OSError:
                pass
            os.close(fd)


# ----------------------------------------------------------------------------------------------
# The run log

_OPEN_LOGS = set()  # the logs of the running main(), which run_cli's error line also ends


class Log:
    """Messages to the console (above any progress bar) and, once opened, to a log file. Under torchrun only
    rank 0 logs. A log file is appended to, never replaced: each run adds its lines after a header line (the
    time and the command), so an earlier run's log survives a later run, failed or not, in the same place."""

    def __init__(self, path=None):
        self._file = None
        self._silent = not is_main()
        if path is not None:
            self.open(path)

    def open(self, path):
        if self._silent:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, 'a')
        command = shlex.join([os.path.basename(sys.argv[0])] + sys.argv[1:])
        self._file.write(f'==== {time.strftime("%Y-%m-%d %H:%M:%S")} {command}\n')
        self._file.flush()
        _OPEN_LOGS.add(self)

    def __call__(self, msg, echo=True):
        if echo and not self._silent:
            from tqdm import tqdm
            tqdm.write(msg)
        if self._file is not None:
            self._file.write(msg + '\n')
            self._file.flush()

    def close(self):
        _OPEN_LOGS.discard(self)
        if self._file is not None:
            self._file.close()
            self._file = None

"""Bad input and hostile conditions, script by script: one line on stderr, exit code 2, no traceback, and nothing
that an earlier run wrote is lost. Most cases run in-process through run_cli (as the scripts do); a few run the
script itself to show what a user sees."""
import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

import CL_DM
from condensation.run import cli, dim_stages
import evaluate
import gen_condense
import main
import main_DM
import main_ITGAN
import pool_match
import reproduce
import validate
from conftest import ROOT, dim_flags, dm_argv, hold_lock_file, toy_images, write_folder, write_idx
from condensation.common import Log, atomic_save, atomic_write_text, run_cli

SCRIPTS = ('main.py', 'main_DM.py', 'CL_DM.py', 'gen_condense.py', 'pool_match.py', 'validate.py', 'main_ITGAN.py',
           'evaluate.py')


def _error(main_fn, argv, capsys):
    """The one line a bad command prints (asserting exit code 2 and exactly one line)."""
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main_fn(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and 'Traceback' not in err, err
    return err


def _dim(tmp, *extra):
    """The DiM flags every stage shares (dim_flags without stage 1 and 2's training sizes)."""
    return dim_flags(tmp, 3, *extra)


def _cl(tmp, *extra):
    return ['--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'out'), '--model', 'ConvNetW32',
            '--ipc', '2', '--steps', '5', '--num_eval', '1', '--epoch_eval_train', '1', '--seeds', '0',
            '--device', 'cpu', '--no_progress', *extra]


# ---------------------------------------------------------------------------------------------- 1. non-finite

@pytest.mark.parametrize('script, argv', [
    (main_DM.main, ['--lr_img', 'nan']), (main_DM.main, ['--lr_img', 'inf']), (main.main, ['--lr_net', 'nan']),
    (CL_DM.main, ['--method', 'DM', '--lr_img', 'nan']), (gen_condense.main, ['--lr', 'nan']),
    (pool_match.main, ['--weight', 'w.pth', '--lr', 'inf']),
    (validate.main, ['--pretrain-weight', 'w', '--beta', 'nan']),
])
def test_non_finite_flags_are_refused(script, argv, capsys):
    assert 'must be a finite number' in _error(script, argv + ['--device', 'cpu'], capsys)


def test_a_diverging_cl_memory_is_not_cached(prepared_mnist):
    from condensation.common import UserError
    with pytest.raises(UserError, match='the memory diverged; lower --lr_img'):
        CL_DM.main(_cl(prepared_mnist, '--method', 'DM', '--Iteration', '3', '--lr_img', '1e30'))
    assert not list((prepared_mnist / 'out' / 'cl_data').glob('*.pt')) \
        if (prepared_mnist / 'out' / 'cl_data').exists() else True


# ---------------------------------------------------------------------------------------------- 2. plain torch.load

def test_every_file_kind_opens_with_a_plain_torch_load(prepared_mnist):
    tmp = prepared_mnist
    main_DM.main(dm_argv(tmp))
    CL_DM.main(_cl(tmp, '--method', 'DM', '--Iteration', '2'))
    gen_condense.main(_dim(tmp, '--tag', 'g', '--epochs', '1', '--iters-per-epoch', '2', '--eval-interval', '1',
                           '--val_split', '2'))
    validate.main(_dim(tmp, '--tag', 'v', '--pretrain-weight', f'{tmp}/results/g/best.pth', '--dim_eval', 'fixed',
                       '--num_eval', '1', '--batch-size', '10'))
    files = [*tmp.glob('out/*.pt'), *tmp.glob('out/cl_data/*.pt'), *tmp.glob('results/*/*.pth'),
             *tmp.glob('results/*/*.pt')]
    kinds = {f.suffix + ('/cl' if 'cl_data' in str(f) else '') for f in files}
    assert {'.pt', '.pt/cl', '.pth'} <= kinds and len(files) >= 6
    for f in files:
        assert isinstance(torch.load(f), dict), f  # the default: weights_only=True


# ---------------------------------------------------------------------------------------------- 3. no tracebacks

@pytest.mark.parametrize('script, make_argv, flag', [
    (main_DM.main, dm_argv, '--save_path'), (main.main, dm_argv, '--save_path'), (CL_DM.main, _cl, '--save_path'),
    (gen_condense.main, _dim, '--output-dir'),
])
def test_an_output_path_that_is_a_file_or_unwritable(prepared_mnist, capsys, script, make_argv, flag):
    blocker = prepared_mnist / 'a_file'
    blocker.write_text('keep me')
    argv = make_argv(prepared_mnist)
    assert 'is a file, not a folder' in _error(script, argv + [flag, str(blocker)], capsys)
    assert blocker.read_text() == 'keep me'
    assert 'not writable' in _error(script, argv + [flag, '/proc/x/out'], capsys)


def test_a_full_disk_is_one_line_and_names_the_path(capsys):
    def full():
        raise OSError(errno.ENOSPC, 'No space left on device', '/data/out/res.pt')
    with pytest.raises(SystemExit) as e:
        run_cli(full)
    err = capsys.readouterr().err
    assert e.value.code == 2 and '/data/out/res.pt: No space left on device; free some space' in err


def test_a_truncated_mnist_file_is_named(tmp_path, capsys):
    raw = tmp_path / 'MNIST' / 'raw'
    x, y = toy_images(2, 10, 1, 28)
    write_idx(str(raw), 'train', x, y)
    write_idx(str(raw), 't10k', x, y)
    path = raw / 'train-images-idx3-ubyte'
    path.write_bytes(path.read_bytes()[:1000])
    err = _error(main_DM.main, dm_argv(tmp_path), capsys)
    assert 'train-images-idx3-ubyte is truncated or not an idx file' in err


def test_an_impossible_allocation_is_one_line():
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'main_DM.py'), '--dataset', 'MNIST', '--data_path',
                        os.path.join(ROOT, 'tests'), '--ipc', '100000000', '--init', 'noise', '--device', 'cpu'],
                       capture_output=True, text=True, cwd=ROOT)
    # Either the missing data or the allocation stops it; neither may print a traceback.
    assert r.returncode == 2 and 'Traceback' not in r.stderr and r.stderr.count('\n') == 1, r.stderr


def test_run_cli_turns_a_float32_overflow_into_one_line(capsys):
    def overflow():  # what Adam's bias correction raises for a learning rate within 10x of float32's largest
        raise RuntimeError('value cannot be converted to type float without overflow')
    with pytest.raises(SystemExit) as e:
        run_cli(overflow)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and 'lower the learning rates' in err


def test_run_cli_turns_out_of_memory_into_one_line(capsys):
    def oom():
        raise RuntimeError('[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can\'t allocate memory')
    with pytest.raises(SystemExit) as e:
        run_cli(oom)
    assert e.value.code == 2 and 'out of memory; lower --ipc' in capsys.readouterr().err

    def bug():
        raise RuntimeError('a programming error')
    with pytest.raises(RuntimeError):  # other errors keep their traceback: they are ours to fix
        run_cli(bug)


def test_a_crash_keeps_its_traceback_and_its_log_says_where_the_run_ended(tmp_path):
    for error in (RuntimeError('a programming error'), KeyError('args')):
        def bug():
            log = Log(str(tmp_path / 'run.log'))
            log('iteration 3', echo=False)
            raise error
        with pytest.raises(type(error)):  # ours to fix: the traceback stays
            run_cli(bug)
        last = (tmp_path / 'run.log').read_text().splitlines()[-1]
        assert last == f'crashed: {type(error).__name__}: {error} (the traceback is on stderr)'


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM)

    def run():
        log = Log(str(tmp_path / 'run.log'))
        log('iteration 3', echo=False)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at the next bytecode, long before this ends
        log('not reached', echo=False)
    with pytest.raises(SystemExit) as e:
        run_cli(run)
    assert e.value.code == 143 and signal.getsignal(signal.SIGTERM) is before  # the handler is run_cli's alone
    assert capsys.readouterr().err.strip().endswith(': stopped by SIGTERM; rerun with --resume to continue')
    assert (tmp_path / 'run.log').read_text().splitlines()[-1] == 'stopped by SIGTERM; rerun with --resume to continue'


def test_a_run_ended_by_sigterm_says_so_and_keeps_a_whole_checkpoint(prepared_mnist):
    """A scheduler's SIGTERM in the middle of a real run: exit code 143, one line on stderr and in the log, no lock
    left, and the last checkpoint opens with a plain torch.load."""
    tmp = prepared_mnist
    argv = [sys.executable, os.path.join(ROOT, 'main_DM.py')] + dm_argv(tmp, '--Iteration', '100000',
                                                                     '--checkpoint_every', '1')
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp))
    ckpt = tmp / 'out' / 'DM_MNIST_ConvNetW32_1ipc.ckpt.pt'
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ['main_DM.py: stopped by SIGTERM; rerun with --resume to continue']
    assert not (tmp / 'out' / 'DM_MNIST_ConvNetW32_1ipc.lock').exists()
    log = (tmp / 'out' / 'DM_MNIST_ConvNetW32_1ipc.log').read_text().splitlines()
    assert log[-1] == 'stopped by SIGTERM; rerun with --resume to continue'
    assert torch.load(ckpt, weights_only=False)['it'] >= 1


# ---------------------------------------------------------------------------------------------- 5. unknown choices

def test_an_unknown_eval_mode_is_refused(prepared_mnist, capsys):
    assert "invalid choice: 'Q'" in _error(main.main, dm_argv(prepared_mnist, '--eval_mode', 'Q'), capsys)


# ---------------------------------------------------------------------------------------------- 6. leftovers

def test_stale_temporary_files_are_cleaned_and_files_honour_the_umask(prepared_mnist):
    out = prepared_mnist / 'out'
    out.mkdir()
    stale = out / '.res_DM_MNIST_ConvNetW32_1ipc.pt.x1y2.tmp'
    other = out / '.someone_else.pt.abcd.tmp'
    stale.write_bytes(b'half')
    other.write_bytes(b'not ours')
    old = os.umask(0o022)
    try:
        main_DM.main(dm_argv(prepared_mnist))
    finally:
        os.umask(old)
    assert not stale.exists() and other.exists()
    mode = stat.S_IMODE(os.stat(out / 'res_DM_MNIST_ConvNetW32_1ipc.pt').st_mode)
    assert mode == 0o644


def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / 'a.json', '{}')
        atomic_save({}, tmp_path / 'b.pt')
    finally:
        os.umask(old)
    assert {stat.S_IMODE(os.stat(tmp_path / f).st_mode) for f in ('a.json', 'b.pt')} == {0o640}


def test_a_failed_download_into_an_existing_empty_folder_leaves_it_empty(tmp_path, monkeypatch, capsys):
    import torchvision.datasets as tvd

    def offline(self, *a, **k):
        os.makedirs(os.path.join(self.root, 'MNIST', 'raw'), exist_ok=True)
        raise RuntimeError('no internet')
    monkeypatch.setattr(tvd.MNIST, 'download', offline)
    data = tmp_path / 'data'
    data.mkdir()
    assert 'download failed' in _error(main_DM.main, dm_argv(data), capsys)
    assert list(data.iterdir()) == []


# ---------------------------------------------------------------------------------------------- 7. advice

def test_a_corrupt_prepared_file_that_is_the_only_copy_is_not_deleted_on_advice(tmp_path, capsys):
    (tmp_path / 'MNIST.pt').write_bytes(b'PK\x03\x04 truncated')
    err = _error(main_DM.main, dm_argv(tmp_path), capsys)
    assert 'only copy' in err and 'delete it to rebuild' not in err


def test_checkpoint_advice_says_what_is_wrong(prepared_mnist, capsys):
    tmp = prepared_mnist
    (tmp / 'out').mkdir()
    ckpt = tmp / 'out' / 'DM_MNIST_ConvNetW32_1ipc.ckpt.pt'
    torch.save({'something': 'else'}, ckpt)  # a foreign, readable file where the checkpoint goes
    assert 'not a checkpoint of this project' in _error(main_DM.main, dm_argv(tmp, '--resume'), capsys)
    ckpt.write_text('plain text')
    assert 'not a PyTorch file' in _error(main_DM.main, dm_argv(tmp, '--resume'), capsys)
    # DiM: a truncated last.pth with --resume is corrupt, and the advice is about resuming, not about --weight.
    gen_condense.main(_dim(tmp, '--tag', 'g', '--epochs', '1', '--iters-per-epoch', '2', '--val_split', '2'))
    last = tmp / 'results' / 'g' / 'last.pth'
    last.write_bytes(last.read_bytes()[:200])
    err = _error(gen_condense.main, _dim(tmp, '--tag', 'g', '--epochs', '2', '--iters-per-epoch', '2',
                                         '--val_split', '2', '--resume'), capsys)
    assert 'corrupt' in err and 'delete or move it' in err and 'gen_condense.py or pool_match.py' not in err


@pytest.mark.parametrize('script, argv, message', [
    (main_DM.main, ['--lr_img', '-1e-4'], '--lr_img must be positive'),
    (gen_condense.main, ['--lr', '-1e-4'], '--lr must be positive'),
    (gen_condense.main, ['--gp-every', '0'], '--gp-every must be >= 1'),  # named as typed
    (gen_condense.main, ['--mode_seeking', '-1'], '--mode_seeking must be >= 0'),
    (CL_DM.main, ['--method', 'DiM', '--gan_mode_seeking', '-0.5'], '--gan_mode_seeking must be >= 0'),
])
def test_negative_numbers_parse_and_are_then_refused(script, argv, message, capsys):
    assert message in _error(script, argv + ['--device', 'cpu'], capsys)


# ---------------------------------------------------------------------------------------------- 8.-11. first hour

@pytest.mark.parametrize('script', SCRIPTS)
def test_help_shows_defaults_and_is_self_contained(script):
    r = subprocess.run([sys.executable, os.path.join(ROOT, script), '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and '(default:' in r.stdout and '§' not in r.stdout  # no section-numbered citations
    for doc in set(re.findall(r'[\w./-]+\.md\b', r.stdout)):  # every document a help text points to is here
        assert os.path.isfile(os.path.join(ROOT, doc)), doc


def test_the_docs_hold_no_placeholders_and_point_to_no_file_outside_the_repository():
    for doc in ['README.md'] + [os.path.join('docs', f) for f in os.listdir(os.path.join(ROOT, 'docs'))
                                if f.endswith('.md')]:
        with open(os.path.join(ROOT, doc), encoding='utf-8') as f:
            text = f.read()
        for placeholder in ('TODO', 'TBD', 'FIXED %', 'XX'):
            assert placeholder not in text, (doc, placeholder)
        assert not re.findall(r'\.\./[\w./-]+\.md\b', text), doc  # a document the reader of a clone does not have


def test_a_redirected_run_has_no_progress_bars_and_states_its_plan(prepared_mnist):
    argv = [a for a in dm_argv(prepared_mnist) if a != '--no_progress']
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'main_DM.py'), *argv], capture_output=True, text=True)
    assert r.returncode == 0 and '\r' not in r.stderr and '%|' not in r.stderr
    header, plan = (prepared_mnist / 'out' / 'DM_MNIST_ConvNetW32_1ipc.log').read_text().splitlines()[:2]
    assert header.startswith('==== ') and 'main_DM.py --dataset MNIST' in header  # the time and the command
    assert plan.startswith('plan: 1 experiment(s) x 4 iterations on cpu; at each of 1 evaluation point(s), 1 network')
    # the precision that ran, in the plan line and in every result
    assert plan.endswith('; precision: IEEE fp32 (CPU)')
    summary = json.loads((prepared_mnist / 'out' / 'DM_MNIST_ConvNetW32_1ipc.json').read_text())
    results = torch.load(prepared_mnist / 'out' / 'res_DM_MNIST_ConvNetW32_1ipc.pt', weights_only=True)
    assert summary['precision'] == results['meta']['precision'] == 'IEEE fp32 (CPU)'


def test_one_vocabulary_across_scripts(prepared_mnist):
    tmp = prepared_mnist
    a = main_DM.parse_args(['--data', 'mnist', '--data-dir', str(tmp), '--output-dir', str(tmp / 'o'),
                            '--device', 'cpu'])
    assert (a.dataset, a.data_path, a.save_path) == ('MNIST', str(tmp), str(tmp / 'o'))
    from condensation.run.dim_stages import parse_dim_args as dim_args
    b = dim_args(1, 'x', ['--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'o'),
                          '--device', 'cpu'])
    assert (b.dataset, b.data_dir, b.output_dir) == ('MNIST', str(tmp), str(tmp / 'o'))
    defaults = {main_DM.parse_args(['--device', 'cpu']).data_path, CL_DM.parse_args(['--device', 'cpu']).data_path,
                dim_args(1, 'x', ['--device', 'cpu']).data_dir, main.parse_args(['--device', 'cpu']).data_path}
    assert defaults == {'data'}


# ---------------------------------------------------------------------------------------------- 12. numbers, devices

@pytest.mark.parametrize('script, argv', [
    (main_DM.main, ['--lr_img', '1e300']), (gen_condense.main, ['--lr', '1e300']),
    (main_ITGAN.main, ['--generator', 'g.pth', '--lr_latent', '1e300']), (main.main, ['--lr_net', '-1e39']),
])
def test_finite_numbers_beyond_float32_are_refused(script, argv, capsys):
    assert 'beyond the float32 range' in _error(script, argv + ['--device', 'cpu'], capsys)


@pytest.mark.parametrize('script, argv', [
    (main_DM.main, []), (main.main, []), (CL_DM.main, []), (gen_condense.main, []),
    (pool_match.main, ['--weight', 'w.pth']), (validate.main, ['--pretrain-weight', 'w.pth']),
    (main_ITGAN.main, ['--generator', 'g.pth']),
])
@pytest.mark.parametrize('device, words', [('gpu', 'is not a device name'), ('cuda:x', 'is not a device name'),
                                           ('meta', 'run on cpu or cuda')])
def test_a_malformed_device_is_one_line(script, argv, device, words, capsys):
    assert words in _error(script, argv + ['--device', device], capsys)


# ---------------------------------------------------------------------------------------------- 13. a full disk

@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(pattern): every atomic write of a file whose name contains pattern fails as a full disk does,
    after part of the file is written (the temporary file's name is read back from /proc)."""
    if not os.path.isdir('/proc/self/fd'):
        pytest.skip('needs /proc to tell which file a descriptor writes')
    real = os.fdopen

    class Full:
        def __init__(self, f):
            self.f, self.budget = f, 100

        def write(self, b):
            if len(b) > self.budget:
                raise OSError(errno.ENOSPC, 'No space left on device')
            self.budget -= len(b)
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def arm(pattern):
        def fdopen(fd, *a, **k):
            f = real(fd, *a, **k)
            return Full(f) if pattern in os.readlink(f'/proc/self/fd/{fd}') else f
        monkeypatch.setattr(os, 'fdopen', fdopen)
    return arm


def _snapshot(folder, skip=('.log', 'logs.txt')):
    """Every file under folder and its bytes (logs aside: a new run starts its own)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*'))
            if p.is_file() and not str(p).endswith(skip)}


def test_a_full_disk_while_torch_save_writes_a_dm_checkpoint_keeps_the_earlier_files(prepared_mnist, full_disk,
                                                                                      capsys):
    tmp = prepared_mnist
    main_DM.main(dm_argv(tmp))
    before = _snapshot(tmp / 'out')
    full_disk('.ckpt.pt.')  # torch.save's zip writer fails with a RuntimeError, not an OSError
    err = _error(main_DM.main, dm_argv(tmp), capsys)
    assert f'{tmp / "out" / "DM_MNIST_ConvNetW32_1ipc.ckpt.pt"}: No space left on device; free some space' in err
    assert _snapshot(tmp / 'out') == before  # no temporary file left, no earlier file touched


def test_a_full_disk_while_torch_save_writes_a_dim_checkpoint_keeps_the_earlier_files(prepared_mnist, full_disk,
                                                                                       capsys):
    tmp = prepared_mnist
    argv = _dim(tmp, '--tag', 'g', '--epochs', '1', '--iters-per-epoch', '2', '--val_split', '2')
    gen_condense.main(argv)
    before = _snapshot(tmp / 'results')
    full_disk('.pth.')
    assert 'No space left on device; free some space' in _error(gen_condense.main, argv, capsys)
    assert _snapshot(tmp / 'results') == before


def test_a_full_disk_while_caching_a_folder_leaves_no_half_file_and_says_so(tmp_path, full_disk, capsys):
    from PIL import Image
    from condensation.data import get_dataset
    x, y = toy_images(2, 2, 3, 8)
    for split in ('train', 'test'):
        for i, (img, label) in enumerate(zip(x, y)):
            (tmp_path / split / f'c{label}').mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / split / f'c{label}' / f'{i}.png')
    get_dataset(f'folder:{tmp_path}', 'unused')
    before = _snapshot(tmp_path)
    full_disk('prepared-')
    data = get_dataset(f'folder:{tmp_path}', 'unused', im_size=4)  # the run goes on without the cache
    err = capsys.readouterr().err
    assert data.im_size == (4, 4) and err.count('\n') == 1 and 'No space left on device; the data was not cached' in err
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- 14. own data, plugs

def test_a_tensor_file_of_3d_images_is_one_line(tmp_path, capsys):
    x, y = toy_images(3, 2, 1, 8)
    torch.save(dict(classes=['a', 'b'], images_train=x[:, 0], labels_train=y, images_val=x[:, 0], labels_val=y),
               tmp_path / 'flat.pt')
    err = _error(main_DM.main, dm_argv(tmp_path, '--dataset', f'file:{tmp_path / "flat.pt"}'), capsys)
    assert 'images_train must be uint8 N×C×H×W, got torch.uint8 (6, 8, 8)' in err


# ---------------------------------------------------------------------------------------------- 15. divergence

def _poison(path, key):
    """A copy of a checkpoint with one weight set to nan, as a diverged run leaves it."""
    ck = torch.load(path)
    state = ck[key] if key else ck
    name = next(k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point())
    state[name] = state[name].clone().fill_(float('nan'))
    poisoned = f'{path}.nan.pth'
    torch.save(ck, poisoned)
    return poisoned


def test_a_diverging_gan_stops_and_no_loader_takes_non_finite_weights(prepared_mnist, capsys):
    """Stage 1 and stage 2 stop at a non-finite loss before a checkpoint is written; validate.py, pool_match.py,
    a resumed stage and main_ITGAN.py refuse a generator with nan weights; all in one line."""
    tmp = prepared_mnist
    short = ['--epochs', '1', '--iters-per-epoch', '3', '--val_split', '2']
    gen_condense.main(_dim(tmp, '--tag', 'g', *short))
    good = tmp / 'results' / 'g' / 'best.pth'
    assert 'the training diverged; lower --lr' in _error(gen_condense.main, _dim(tmp, '--tag', 'd', *short, '--lr',
                                                                                   '1e30'), capsys)
    assert not list((tmp / 'results' / 'd').glob('*.pth'))
    assert 'the training diverged; lower --lr' in _error(pool_match.main, _dim(
        tmp, '--tag', 'm', *short, '--weight', str(good), '--lr', '1e30', '--pool', 'convnet',
        '--epochs-match-train', '1'), capsys)
    assert not list((tmp / 'results' / 'm').glob('*.pth'))
    bad = _poison(good, 'generator')
    assert 'holds non-finite values' in _error(validate.main, _dim(tmp, '--tag', 'v', '--pretrain-weight', bad), capsys)
    assert 'holds non-finite values' in _error(pool_match.main, _dim(tmp, '--tag', 'm2', *short, '--weight', bad),
                                               capsys)
    os.replace(_poison(tmp / 'results' / 'g' / 'last.pth', 'discriminator'), tmp / 'results' / 'g' / 'last.pth')
    assert 'holds non-finite values' in _error(gen_condense.main, _dim(tmp, '--tag', 'g', *short, '--epochs', '2',
                                                                       '--resume'), capsys)
    assert 'holds non-finite values' in _error(main_ITGAN.main, [
        '--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'it'), '--generator', bad,
        '--gan_width', '8', '--device', 'cpu'], capsys)


def test_a_dm_checkpoint_with_non_finite_images_is_not_resumed(prepared_mnist, capsys):
    tmp = prepared_mnist
    main_DM.main(dm_argv(tmp, '--Iteration', '2'))
    ckpt = tmp / 'out' / 'DM_MNIST_ConvNetW32_1ipc.ckpt.pt'
    state = torch.load(ckpt)
    state['data'][0][0][0, 0, 0, 0] = float('inf')
    torch.save(state, ckpt)
    before = _snapshot(tmp / 'out')
    assert 'holds non-finite values (nan or inf, in data/0/0)' in _error(main_DM.main, dm_argv(tmp, '--Iteration', '2',
                                                                                             '--resume'), capsys)
    assert _snapshot(tmp / 'out') == before


def test_a_diverging_cl_gan_memory_stops_before_it_is_cached(prepared_mnist, capsys):
    err = _error(CL_DM.main, _cl(prepared_mnist, '--method', 'DiM', '--gan_iters', '3', '--gan_batch', '8',
                                 '--gan_width', '8', '--gan_lr', '1e30'), capsys)
    assert 'GAN iteration' in err and 'the training diverged; lower --gan_lr' in err
    assert not list((prepared_mnist / 'out').rglob('cl_DiM_*.pt'))


# ---------------------------------------------------------------------------------------------- 16. sizes

@pytest.mark.parametrize('script, argv', [
    (main_DM.main, ['--ipc', '10000000', '--init', 'noise']),  # 100 million images: terabytes on any machine
    (main_DM.main, ['--ipc', '2']), (main.main, ['--ipc', '1']), (CL_DM.main, ['--method', 'DM', '--Iteration', '2']),
])
def test_a_run_that_cannot_fit_in_memory_is_refused_before_it_starts(prepared_mnist, script, argv, monkeypatch,
                                                                     capsys):
    """The estimate against the machine's memory, and on toy sizes against a limit lowered through the environment;
    nothing is written."""
    make = _cl if script is CL_DM.main else dm_argv
    if argv[1] != '10000000':
        monkeypatch.setenv('CONDENSE_MEMORY_LIMIT', '64K')
    err = _error(script, make(prepared_mnist, *argv), capsys)
    assert re.search(r'needs at least [\d.]+ [MG]iB of memory, more than the [\d.]+ [MG]iB of '
                     r'(CONDENSE_MEMORY_LIMIT|CPU memory available)', err), err
    assert not (prepared_mnist / 'out').exists()


def test_sizes_that_cannot_fit_folder_images_and_a_fixed_dim_set(prepared_mnist, monkeypatch, capsys):
    from PIL import Image
    tmp = prepared_mnist
    for split in ('train', 'test'):
        for c in ('a', 'b'):
            (tmp / 'f' / split / c).mkdir(parents=True)
            Image.new('L', (8, 8)).save(tmp / 'f' / split / c / '0.png')
    err = _error(main_DM.main, dm_argv(tmp, '--dataset', f'folder:{tmp / "f"}', '--im_size', '1000000'), capsys)
    assert 'at --im_size 1000000 (4 images) needs at least 7450.6 GiB' in err  # 4 images + 4 resizing, 1 channel
    assert sorted(p.name for p in (tmp / 'f').iterdir()) == ['test', 'train']
    monkeypatch.setenv('CONDENSE_MEMORY_LIMIT', '1M')
    err = _error(validate.main, _dim(tmp, '--tag', 'v', '--pretrain-weight', 'w.pth', '--dim_eval', 'fixed',
                                     '--ipc', '100'), capsys)
    assert 'a fixed set of --ipc 100 per class needs at least 9.0 MiB of memory, more than the 1.0 MiB of ' \
           'CONDENSE_MEMORY_LIMIT; lower --ipc' in err
    monkeypatch.setenv('CONDENSE_MEMORY_LIMIT', 'plenty')
    assert 'expected a size such as 512M' in _error(main_DM.main, dm_argv(tmp), capsys)


# ---------------------------------------------------------------------------------------------- 17. one run at a time

def test_a_second_run_into_the_same_outputs_is_refused_until_the_first_is_gone(prepared_mnist, capsys):
    tmp = prepared_mnist
    main_DM.main(dm_argv(tmp))
    lock = tmp / 'out' / 'DM_MNIST_ConvNetW32_1ipc.lock'
    assert not lock.exists()  # a finished run leaves no lock behind
    holder = hold_lock_file(lock)
    try:
        before = _snapshot(tmp / 'out')
        err = _error(main_DM.main, dm_argv(tmp), capsys)
        assert f'another run (pid {holder.pid}) is writing {tmp / "out" / "DM_MNIST_ConvNetW32_1ipc.*"}' in err
        assert 'pass another --save_path' in err and _snapshot(tmp / 'out') == before
        # another run's outputs in the same folder are not held
        main_DM.main(dm_argv(tmp, '--ipc', '2'))
    finally:
        holder.kill()
        holder.wait()
    assert lock.read_text().strip() == str(holder.pid)  # left by the killed run: taken over now that it is gone
    main_DM.main(dm_argv(tmp))
    assert not lock.exists()


def test_a_dim_stage_does_not_replace_another_stages_run(prepared_mnist, capsys):
    """Every stage defaults to --tag test: stage 2 or 3 on the same tag as the stage-1 run would replace its
    config.json, and stage 2 its best.pth, the checkpoint it reads."""
    tmp = prepared_mnist
    gen_condense.main(_dim(tmp, '--tag', 'test', '--epochs', '1', '--iters-per-epoch', '2', '--val_split', '2'))
    before = _snapshot(tmp / 'results' / 'test')
    weight = f'{tmp}/results/test/best.pth'
    err = _error(pool_match.main, _dim(tmp, '--weight', weight, '--epochs', '1', '--iters-per-epoch', '1'), capsys)
    assert 'holds a DiM stage-1 run' in err and 'pass another --tag (e.g. --tag test_match)' in err
    err = _error(validate.main, _dim(tmp, '--pretrain-weight', weight, '--dim_eval', 'fixed', '--num_eval', '1',
                                     '--batch-size', '10'), capsys)
    assert 'holds a DiM stage-1 run' in err and '--tag test_test' in err
    assert _snapshot(tmp / 'results' / 'test') == before
    validate.main(_dim(tmp, '--tag', 'test_test', '--pretrain-weight', weight, '--dim_eval', 'fixed', '--num_eval',
                       '1', '--batch-size', '10'))
    validate.main(_dim(tmp, '--tag', 'test_test', '--pretrain-weight', weight, '--dim_eval', 'fixed', '--num_eval',
                       '1', '--batch-size', '10'))  # a stage's own earlier run is replaced, as before


def test_a_dim_stage_holds_its_run_folder(prepared_mnist, capsys):
    from condensation.common import hold_lock, release_lock
    tmp = prepared_mnist
    argv = _dim(tmp, '--tag', 'g', '--epochs', '1', '--iters-per-epoch', '2', '--val_split', '2')
    lock = tmp / 'results' / 'g' / 'run.lock'
    holder = hold_lock_file(lock)
    try:
        assert f'another run (pid {holder.pid}) is writing' in _error(gen_condense.main, argv, capsys)
        assert os.listdir(tmp / 'results' / 'g') == ['run.lock']
    finally:
        holder.kill()
        holder.wait()
    hold_lock(str(lock), 'x', 'y')  # this process holds it: its own runs may take it again (in-process resume)
    gen_condense.main(argv)
    release_lock(str(lock))
    assert not lock.exists()


# ---------------------------------------------------------------------------------------------- 18. flag domains

# Every entry script's parse function and the flags it requires (run/prepare.py's, one flag, is run as a command
# below).
ENTRY = {
    'main.py': (main.parse_args, []), 'main_DM.py': (main_DM.parse_args, []), 'CL_DM.py': (CL_DM.parse_args, []),
    'gen_condense.py': (lambda a: dim_stages.parse_dim_args(1, '', a), []),
    'pool_match.py': (lambda a: dim_stages.parse_dim_args(2, '', a), ['--weight', 'w.pth']),
    'validate.py': (lambda a: dim_stages.parse_dim_args(3, '', a), ['--pretrain-weight', 'w.pth']),
    'main_ITGAN.py': (main_ITGAN.parse_args, ['--generator', 'g.pth']),
    'evaluate.py': (evaluate.parse_args, ['--set', 's.pt']), 'reproduce.py': (reproduce.parse_args, []),
}


class _Built(Exception):
    pass


def _parser(script):
    """The parser a script's parse function builds (stopped before it parses anything)."""
    def stop(self, *a, **k):
        raise _Built(self)
    real, cli.ArgumentParser.parse_known_args = cli.ArgumentParser.parse_known_args, stop
    try:
        ENTRY[script][0](ENTRY[script][1])
    except _Built as built:
        return built.args[0]
    finally:
        cli.ArgumentParser.parse_known_args = real
    raise AssertionError(f'{script} parsed without cli.ArgumentParser')


PARSERS = {script: _parser(script) for script in ENTRY}


def _catalogue():
    """(script, flag, bad value) for every numeric flag of every script and every bound of its domain (plus nan for
    a float flag), generated from cli.DOMAINS: a new flag is in it the moment it is declared."""
    cases = []
    for script, parser in PARSERS.items():
        for action in parser.numeric_actions():
            domain = cli.DOMAINS[action.dest]
            bad = domain.outside(action.type is int) + (['nan'] if action.type is float else [])
            cases += [(script, action.option_strings[0], str(v)) for v in bad]
    return cases


def test_every_entry_script_is_in_the_catalogue():
    scripts = {f for f in os.listdir(ROOT) if f.endswith('.py') and 'run_cli(' in open(os.path.join(ROOT, f)).read()
               and "if __name__ == '__main__':" in open(os.path.join(ROOT, f)).read()}
    assert scripts == set(ENTRY)
    used = {a.dest for p in PARSERS.values() for a in p.numeric_actions()}
    assert used | {'im_size'} == set(cli.DOMAINS)  # no domain outlives its flag


@pytest.mark.parametrize('script, flag, value', _catalogue())
def test_a_number_outside_its_flags_domain_is_one_line_before_any_work(script, flag, value, capsys, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the defaults' outputs would go: nothing may be written
    parse, required = ENTRY[script]
    err = _error(parse, required + [flag, value, '--device', 'cpu'], capsys)
    assert f'error: {flag} ' in err and ('must be' in err), err
    assert os.listdir(tmp_path) == []


def test_a_domain_names_the_flag_as_typed_and_the_prepare_command_checks_its_own(tmp_path):
    assert cli.DOMAINS['g_ema'].outside(False) == [-1e-3, 1.0] and cli.DOMAINS['ipc'].outside(True) == [0]
    assert cli.DOMAINS['match_coeff'].outside(False) == [0.0, 2e4]
    r = subprocess.run([sys.executable, '-m', 'condensation.run.prepare', 'MNIST', '--data_path', str(tmp_path),
                        '--im_size', '0'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr == 'prepare.py: error: --im_size must be >= 1, got 0\n', r.stderr


@pytest.mark.parametrize('script, argv', [
    (main.main, ['--Iter', '4']), (main.main, ['--meth', 'DSA']), (CL_DM.main, ['--st', '2']),
    (main_DM.main, ['--num', '1']), (gen_condense.main, ['--epoch', '1']),
    (evaluate.main, ['--set', 's', '--mod', 'x']),
])
def test_abbreviated_flags_are_refused(script, argv, capsys):
    assert 'unrecognized arguments' in _error(script, argv + ['--device', 'cpu'], capsys)


@pytest.mark.parametrize('tag', ['../escape', '/abs', '', '.', '..', 'a/b'])
def test_a_dim_tag_is_one_folder_name(tag, prepared_mnist, capsys):
    err = _error(gen_condense.main, _dim(prepared_mnist, '--tag', tag), capsys)
    assert 'must be a single folder name' in err
    assert not (prepared_mnist / 'escape').exists() and not (prepared_mnist / 'results').exists()


# ---------------------------------------------------------------------------------------------- 19. finite garbage

@pytest.mark.parametrize('script', [main_DM.main, main.main])
def test_a_finite_but_diverged_set_stops_the_run_and_keeps_the_earlier_files(script, prepared_mnist, capsys):
    """--lr_img 1e10 gives sets far beyond any image of the data while every value stays finite."""
    tmp = prepared_mnist
    script(dm_argv(tmp))
    before = _snapshot(tmp / 'out')
    err = _error(script, dm_argv(tmp, '--lr_img', '1e10'), capsys)
    assert 'iteration 0: the synthetic images reach' in err and 'lower --lr_img (now 10000000000.0)' in err, err
    assert _snapshot(tmp / 'out') == before


def test_the_value_limit_is_far_beyond_every_image_of_the_data():
    from condensation.data import DATASETS, VALUE_MARGIN, value_limit
    for name, (_, _, _, mean, std) in DATASETS.items():
        widest = max(max(abs(0 - m), abs(1 - m)) / s for m, s in zip(mean, std))
        assert value_limit(mean, std) == pytest.approx(VALUE_MARGIN * widest) and widest < 5, name


def test_a_prepared_file_with_a_nan_statistic_is_named_before_any_work(tmp_path, capsys):
    x, y = toy_images(3, 2, 1, 8)
    for key, value in (('mean', [float('nan')]), ('std', [float('inf')]), ('std', [0.0])):
        stats = {**dict(mean=[0.5], std=[0.25]), key: value}
        torch.save(dict(classes=['a', 'b'], images_train=x, labels_train=y, images_val=x, labels_val=y, **stats),
                   tmp_path / 'own.pt')
        err = _error(main_DM.main, dm_argv(tmp_path, '--dataset', f'file:{tmp_path / "own.pt"}'), capsys)
        assert f'{tmp_path / "own.pt"}: {key} must hold one finite' in err and '--lr_img' not in err, err
        assert not (tmp_path / 'out').exists()


def test_a_folders_cached_file_with_a_nan_statistic_is_named(tmp_path, capsys):
    from condensation.data import folder_cache_path, get_dataset
    write_folder(tmp_path / 'f', channel=1, sizes=[(28, 28)])
    get_dataset(f'folder:{tmp_path / "f"}', 'unused')
    cache = folder_cache_path(str(tmp_path / 'f'))
    raw = torch.load(cache)
    raw['mean'] = [float('nan')]
    torch.save(raw, cache)
    err = _error(main_DM.main, dm_argv(tmp_path, '--dataset', f'folder:{tmp_path / "f"}'), capsys)
    assert f'{cache}: mean must hold one finite value per channel' in err


def test_a_checkpoint_float_that_is_nan_is_refused_where_it_is_read_back(prepared_mnist, capsys):
    """CL's --resume (accuracies in its checkpoint) and a DM checkpoint's stored timings: plain floats, checked as
    tensors are."""
    tmp = prepared_mnist
    argv = _cl(tmp, '--steps', '2', '--seeds', '0')
    CL_DM.main(argv)
    ckpt = next((tmp / 'out').glob('cl_*.ckpt.pt'))
    state = torch.load(ckpt)
    state['accs']['0'][0][0] = float('nan')
    torch.save(state, ckpt)
    before = _snapshot(tmp / 'out')
    err = _error(CL_DM.main, argv + ['--resume'], capsys)
    assert 'holds non-finite values (nan or inf, in accs/0/0/0)' in err
    assert _snapshot(tmp / 'out') == before


def test_an_evaluate_checkpoint_with_a_nan_accuracy_is_refused(prepared_mnist, capsys):
    tmp = prepared_mnist
    x, y = toy_images(1, 10, 1, 28, seed=5)
    torch.save(dict(images=x, labels=y), tmp / 'set.pt')
    argv = ['--set', str(tmp / 'set.pt'), '--dataset', 'MNIST', '--data_path', str(tmp), '--save_path',
            str(tmp / 'ev'), '--models', 'ConvNetW32', '--num_eval', '1', '--epoch_eval_train', '1', '--device', 'cpu',
            '--no_progress', '--baseline', 'none']
    evaluate.main(argv)
    ckpt = next((tmp / 'ev').glob('*.ckpt.pt'))
    state = torch.load(ckpt)
    key = next(iter(state['done']))
    state['done'][key][0] = float('nan')
    torch.save(state, ckpt)
    before = _snapshot(tmp / 'ev')
    err = _error(evaluate.main, argv + ['--resume'], capsys)
    assert f'holds non-finite values (nan or inf, in done/{key}/0)' in err
    assert _snapshot(tmp / 'ev') == before


def test_a_file_is_replaced_only_by_a_finite_one(tmp_path):
    from condensation.common import UserError
    atomic_save(dict(x=torch.ones(2), acc=[90.0]), tmp_path / 'c.pt')
    before = (tmp_path / 'c.pt').read_bytes()
    for bad in (dict(x=torch.tensor([1.0, float('inf')]), acc=[90.0]), dict(x=torch.ones(2), acc=[float('nan')])):
        with pytest.raises(UserError, match='was not replaced: the values to save hold nan or inf'):
            atomic_save(bad, tmp_path / 'c.pt')
        assert (tmp_path / 'c.pt').read_bytes() == before and os.listdir(tmp_path) == ['c.pt']


def test_stage_1_writes_last_pth_before_its_best_checkpoints_so_a_resume_point_always_exists(prepared_mnist,
                                                                                           full_disk, capsys):
    """A disk that fills while the first best checkpoint is written: last.pth is there, and --resume writes the
    best checkpoints it had chosen from the generator it restores."""
    tmp = prepared_mnist
    argv = _dim(tmp, '--tag', 'g', '--epochs', '1', '--iters-per-epoch', '2', '--val_split', '2')
    gen_condense.main(argv)
    whole = {p.name: torch.load(p) for p in (tmp / 'results' / 'g').glob('*.pth')}
    shutil.rmtree(tmp / 'results' / 'g')
    full_disk('best_')
    assert 'No space left on device' in _error(gen_condense.main, argv, capsys)
    assert sorted(p.name for p in (tmp / 'results' / 'g').glob('*.pth')) == ['last.pth', 'model_dict_0.pth']
    full_disk('no file has this name')  # the disk has room again
    gen_condense.main(argv + ['--resume'])
    again = {p.name: torch.load(p) for p in (tmp / 'results' / 'g').glob('*.pth')}
    assert sorted(again) == sorted(whole)
    for name in whole:
        for k, v in whole[name]['generator'].items():
            assert torch.equal(v, again[name]['generator'][k]), (name, k)


# ---------------------------------------------------------------------------------------------- 20. ignored flags

def test_a_flag_the_chosen_mode_ignores_is_reported_once_at_the_start():
    """One rule everywhere (cli.USED_WHEN): a flag set to another value than its default in a mode that does not
    use it is reported, once, among the run's opening warnings; at its default it says nothing."""
    a = dim_stages.parse_dim_args(1, '', ['--beta', '0.5', '--device', 'cpu'])
    assert a.notes == ('--beta 0.5 is ignored without --mix-p > 0 (mixing on)',)
    assert dim_stages.parse_dim_args(1, '', ['--beta', '0.5', '--mix-p', '0.5', '--device', 'cpu']).notes == ()
    a = dim_stages.parse_dim_args(2, '', ['--weight', 'w.pth', '--feat_from', '2', '--bias', '--device', 'cpu'])
    assert a.notes == ('--bias is ignored without --match grad', '--feat_from 2 is ignored without --match feat')
    a = dim_stages.parse_dim_args(3, '', ['--pretrain-weight', 'w.pth', '--num_exp', '3', '--device', 'cpu'])
    assert a.notes == ('--num_exp 3 is ignored without --dim_eval fixed or both',)
    notes = []
    CL_DM.parse_args(['--dataset', 'MNIST', '--method', 'DM', '--gan_iters', '10', '--outer_loop', '3', '--device',
                      'cpu'], notes)
    assert notes == ['warning: --outer_loop 3 is ignored without --method DSA',
                     'warning: --gan_iters 10 is ignored without --method DiM']
    notes = []
    main_DM.parse_args(['--eval_every', '5', '--eval_final_only', '--device', 'cpu'], notes)
    assert notes == ['warning: --eval_every 5 is ignored without --eval_mode S or SS without --eval_final_only '
                     '(otherwise only the last iteration is evaluated)']


def test_an_ignored_flag_is_in_the_runs_log_once(prepared_mnist):
    tmp = prepared_mnist
    main_DM.main(dm_argv(tmp, '--eval_every', '2'))
    log = (tmp / 'out' / 'DM_MNIST_ConvNetW32_1ipc.log').read_text()
    assert log.count('--eval_every 2 is ignored') == 1


@pytest.mark.parametrize('script, argv, message', [
    ('bench_dm', ['--rounds', '0'], '--rounds must be >= 1, got 0'),
    ('bench_dm', ['--eval_modes', 'alone'], "invalid choice: 'alone'"),
    ('bench_dim', ['--gp_every', '0'], '--gp_every must be >= 1, got 0'),
    ('bench_dist', ['--warmup', '-1'], '--warmup must be >= 0, got -1'),
    ('dim_diversity', ['--ema', '1'], '--ema must be in [0, 1), got 1.0'),
    ('eval_layout', ['--rounds', '0'], '--rounds must be >= 1, got 0'),
    ('eval_layout', ['--shape', '3', '0', '32'], '--shape must be >= 1, got 0'),
    ('gpu_check', ['--part', 'speed'], 'unrecognized arguments: --part'),
    ('make_image_folder', ['src.pt', 'out', '--classes', '-1'], '--classes must be >= 0, got -1'),
])
def test_the_bench_scripts_answer_a_bad_flag_with_one_line(script, argv, message, monkeypatch, capsys):
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'bench'))
    module = __import__(script)
    monkeypatch.setattr(sys, 'argv', [f'{script}.py', *argv])
    with pytest.raises(SystemExit) as e:
        run_cli(module.main, resumable=False)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and message in err, err


def test_make_image_folder_writes_the_folder_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'bench'))
    import make_image_folder
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    torch.save({'classes': ['a', 'b'], 'images_train': images, 'labels_train': torch.tensor([0, 1, 0, 1]),
                'images_val': images[:2], 'labels_val': torch.tensor([0, 1])}, tmp_path / 'src.pt')

    def run(*argv):
        monkeypatch.setattr(sys, 'argv', ['make_image_folder.py', str(tmp_path / 'src.pt'), str(tmp_path / 'out'),
                                          *argv])
        run_cli(make_image_folder.main, resumable=False)

    with pytest.raises(SystemExit) as e:
        run('--classes', '0', '2')  # the file has 2 classes: found before anything is written
    assert e.value.code == 2 and '--classes 2' in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ['src.pt']
    monkeypatch.setattr(make_image_folder, 'write_folder', lambda raw, out, classes: (_ for _ in ()).throw(
        KeyboardInterrupt))
    with pytest.raises(SystemExit):
        run('--classes', '0')  # interrupted while writing: no half folder under the name, no temporary left
    assert sorted(os.listdir(tmp_path)) == ['src.pt']
    monkeypatch.undo()
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'bench'))
    run('--classes', '0', '1')
    written = sorted(os.path.relpath(os.path.join(d, f), tmp_path / 'out') for d, _, fs in os.walk(tmp_path / 'out')
                     for f in fs)
    assert written == ['test/a/00000.png', 'test/b/00001.png', 'train/a/00000.png', 'train/a/00002.png',
                       'train/b/00001.png', 'train/b/00003.png']
    assert sorted(os.listdir(tmp_path)) == ['out', 'src.pt']

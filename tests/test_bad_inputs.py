"""Bad input and hostile conditions, script by script: one line on stderr, exit code 2, no traceback, and nothing
that an earlier run wrote is lost. Most cases run in-process through run_cli (as the scripts do); a few run the
script itself to show what a user sees."""
import errno
import os
import re
import stat
import subprocess
import sys

import pytest
import torch

import CL_DM
import gen_condense
import main
import main_DM
import pool_match
import validate
from conftest import ROOT, toy_images, write_idx
from utils import atomic_save, atomic_write_text, run_cli

SCRIPTS = ('main.py', 'main_DM.py', 'CL_DM.py', 'gen_condense.py', 'pool_match.py', 'validate.py', 'main_ITGAN.py')


def _error(main_fn, argv, capsys):
    """The one line a bad command prints (asserting exit code 2 and exactly one line)."""
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main_fn(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and 'Traceback' not in err, err
    return err


def _dm(tmp, *extra):
    return ['--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'out'), '--model', 'ConvNetW32',
            '--ipc', '1', '--Iteration', '4', '--batch_real', '4', '--num_exp', '1', '--num_eval', '1',
            '--epoch_eval_train', '1', '--eval_final_only', '--checkpoint_every', '2', '--device', 'cpu',
            '--no_progress', *extra]


def _dim(tmp, *extra):
    return ['--data', 'mnist', '--data-dir', str(tmp), '--output-dir', f'{tmp}/results/', '--logs-dir', f'{tmp}/logs/',
            '--device', 'cpu', '--no_progress', '--gan_width', '8', '--batch-size', '8', '--epochs-eval', '1',
            '--ipc', '1', *extra]


def _cl(tmp, *extra):
    return ['--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'out'), '--model', 'ConvNetW32',
            '--ipc', '2', '--steps', '5', '--num_eval', '1', '--epoch_eval_train', '1', '--seeds', '0',
            '--device', 'cpu', '--no_progress', *extra]


# ---------------------------------------------------------------------------------------------- 1. non-finite

@pytest.mark.parametrize('script, argv', [
    (main_DM.main, ['--lr_img', 'nan']), (main_DM.main, ['--lr_img', 'inf']), (main.main, ['--lr_net', 'nan']),
    (CL_DM.main, ['--method', 'DM', '--lr_img', 'nan']), (gen_condense.main, ['--lr', 'nan']),
    (pool_match.main, ['--weight', 'w.pth', '--lr', 'inf']), (validate.main, ['--pretrain-weight', 'w', '--beta', 'nan']),
])
def test_non_finite_flags_are_refused(script, argv, capsys):
    assert 'must be a finite number' in _error(script, argv + ['--device', 'cpu'], capsys)


def test_a_diverging_cl_memory_is_not_cached(prepared_mnist):
    from utils import UserError
    with pytest.raises(UserError, match='the memory diverged; lower --lr_img'):
        CL_DM.main(_cl(prepared_mnist, '--method', 'DM', '--Iteration', '3', '--lr_img', '1e30'))
    assert not list((prepared_mnist / 'out' / 'cl_data').glob('*.pt')) if (prepared_mnist / 'out' / 'cl_data').exists() \
        else True


# ---------------------------------------------------------------------------------------------- 2. plain torch.load

def test_every_file_kind_opens_with_a_plain_torch_load(prepared_mnist):
    tmp = prepared_mnist
    main_DM.main(_dm(tmp))
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
    (main_DM.main, _dm, '--save_path'), (main.main, _dm, '--save_path'), (CL_DM.main, _cl, '--save_path'),
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
    err = _error(main_DM.main, _dm(tmp_path), capsys)
    assert 'train-images-idx3-ubyte is truncated or not an idx file' in err


def test_an_impossible_allocation_is_one_line():
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'main_DM.py'), '--dataset', 'MNIST', '--data_path',
                        os.path.join(ROOT, 'tests'), '--ipc', '100000000', '--init', 'noise', '--device', 'cpu'],
                       capture_output=True, text=True, cwd=ROOT)
    # Either the missing data or the allocation stops it; neither may print a traceback.
    assert r.returncode == 2 and 'Traceback' not in r.stderr and r.stderr.count('\n') == 1, r.stderr


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


# ---------------------------------------------------------------------------------------------- 5. unknown choices

def test_an_unknown_eval_mode_is_refused(prepared_mnist, capsys):
    assert "invalid choice: 'Q'" in _error(main.main, _dm(prepared_mnist, '--eval_mode', 'Q'), capsys)


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
        main_DM.main(_dm(prepared_mnist))
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
    assert 'download failed' in _error(main_DM.main, _dm(data), capsys)
    assert list(data.iterdir()) == []


# ---------------------------------------------------------------------------------------------- 7. advice

def test_a_corrupt_prepared_file_that_is_the_only_copy_is_not_deleted_on_advice(tmp_path, capsys):
    (tmp_path / 'MNIST.pt').write_bytes(b'PK\x03\x04 truncated')
    err = _error(main_DM.main, _dm(tmp_path), capsys)
    assert 'only copy' in err and 'delete it to rebuild' not in err


def test_checkpoint_advice_says_what_is_wrong(prepared_mnist, capsys):
    tmp = prepared_mnist
    (tmp / 'out').mkdir()
    ckpt = tmp / 'out' / 'DM_MNIST_ConvNetW32_1ipc.ckpt.pt'
    torch.save({'something': 'else'}, ckpt)  # a foreign, readable file where the checkpoint goes
    assert 'not a checkpoint of this project' in _error(main_DM.main, _dm(tmp, '--resume'), capsys)
    ckpt.write_text('plain text')
    assert 'not a PyTorch file' in _error(main_DM.main, _dm(tmp, '--resume'), capsys)
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
    (gen_condense.main, ['--gp_every', '0'], '--gp-every must be positive'),
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


def test_a_redirected_run_has_no_progress_bars_and_states_its_plan(prepared_mnist):
    argv = [a for a in _dm(prepared_mnist) if a != '--no_progress']
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'main_DM.py'), *argv], capture_output=True, text=True)
    assert r.returncode == 0 and '\r' not in r.stderr and '%|' not in r.stderr
    header, plan = (prepared_mnist / 'out' / 'DM_MNIST_ConvNetW32_1ipc.log').read_text().splitlines()[:2]
    assert header.startswith('==== ') and 'main_DM.py --dataset MNIST' in header  # the time and the command
    assert plan.startswith('plan: 1 experiment(s) x 4 iterations on cpu; at each of 1 evaluation point(s), 1 network')


def test_one_vocabulary_across_scripts(prepared_mnist):
    tmp = prepared_mnist
    a = main_DM.parse_args(['--data', 'mnist', '--data-dir', str(tmp), '--output-dir', str(tmp / 'o'),
                            '--device', 'cpu'])
    assert (a.dataset, a.data_path, a.save_path) == ('MNIST', str(tmp), str(tmp / 'o'))
    from dim_run import parse_args as dim_args
    b = dim_args(1, 'x', ['--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'o'),
                          '--device', 'cpu'])
    assert (b.dataset, b.data_dir, b.output_dir) == ('MNIST', str(tmp), str(tmp / 'o'))
    defaults = {main_DM.parse_args(['--device', 'cpu']).data_path, CL_DM.parse_args(['--device', 'cpu']).data_path,
                dim_args(1, 'x', ['--device', 'cpu']).data_dir, main.parse_args(['--device', 'cpu']).data_path}
    assert defaults == {'data'}


def test_a_long_evaluation_network_reports_its_progress():
    from evaluation import progress_lines
    lines = []
    hook = progress_lines(lines.append, 1000)
    for ep in range(1001):
        hook('ConvNet', 0, ep, None)
    assert lines == [f'  ConvNet #0: epoch {e}/1000' for e in (200, 400, 600, 800)]

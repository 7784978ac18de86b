"""A new user's workflow across runs: the commands a stage prints for the next one run as printed, a generator
trained on one's own folder feeds IT-GAN, a later run (failed or not) keeps an earlier run's log and files, caches
leave no temporary files behind, files of runs on other data do not overwrite each other, results are strict JSON,
and every help text says what the script does."""
import argparse
import json
import os
import re
import shlex
import shutil

import pytest
import torch

import CL_DM
from condensation import data as data_mod
from condensation.run import cli, dim_stages
import gen_condense
import main
import main_DM
import main_ITGAN
import pool_match
from condensation import common
import validate
from conftest import ROOT, dm_argv, write_folder

W = '8'  # GAN width: a whole DiM pipeline in seconds


def _dim(tmp, *extra):
    return ['--data-dir', str(tmp), '--output-dir', f'{tmp}/results/', '--logs-dir', f'{tmp}/logs/', '--device', 'cpu',
            '--no_progress', *extra]


def _printed(log_path, prefix):
    """The command a log line 'prefix: python SCRIPT ARGS' prints: the script's name (its path from here is right)
    and the arguments."""
    line = next(line for line in open(log_path).read().splitlines() if line.startswith(prefix))
    argv = shlex.split(line[len(prefix):])
    assert argv[0] == 'python' and os.path.samefile(argv[1], os.path.join(ROOT, os.path.basename(argv[1]))), line
    return os.path.basename(argv[1]), argv[2:]


def _flags(argv):
    return {a for a in argv if a.startswith('--')}


# ------------------------------------------------------------------------------------ 1. DiM's next-stage commands

def test_the_next_stage_commands_dim_prints_run_as_printed(prepared_mnist):
    """Stage 1 with non-default GAN flags prints stage 2 and stage 3; stage 2 prints stage 3. Each runs: stage 3
    exactly as printed, stage 2 with only its own flags added (none of which the printed command holds). The budget
    stage 1 was given (epochs, iterations per epoch, evaluation cadence) goes with the stage-2 command."""
    tmp = prepared_mnist
    gen_condense.main(_dim(tmp, '--data', 'mnist', '--tag', 'gan', '--gan_width', W, '--cond', 'embed', '--critic',
                           'projection', '--dim-noise', '16', '--g_ema', '0.9', '--seed', '5', '--batch-size', '8',
                           '--epochs', '1', '--iters-per-epoch', '2', '--epochs-eval', '1', '--eval-interval', '1',
                           '--val_split', '2', '--ipc', '1'))
    log = tmp / 'logs' / 'gan' / 'logs.txt'
    script, stage2 = _printed(log, 'stage 2: ')
    assert script == 'pool_match.py'
    for flag in ('--data', '--data-dir', '--gan_width', '--cond', '--critic', '--dim-noise', '--g_ema', '--seed',
                 '--output-dir', '--logs-dir', '--ipc', '--epochs-eval', '--iters_per_epoch', '--val_split'):
        assert flag in stage2, flag
    for flag, value in (('--epochs', '1'), ('--iters_per_epoch', '2'), ('--eval-interval', '1')):
        assert stage2[stage2.index(flag) + 1] == value, flag  # stage 1's budget, not the reference's 100 epochs
    budget = ['--batch-size', '8', '--epochs-match-train', '1', '--pool', 'convnet', '--no_progress']
    assert not _flags(budget) & _flags(stage2)  # stage-specific flags: the printed command leaves them alone
    pool_match.main(stage2 + budget)

    script, direct = _printed(log, 'or stage 3 on this generator: ')
    assert script == 'validate.py' and '--auto_bs' in direct  # K*ipc = 10 < validate.py's default batch of 128
    script, stage3 = _printed(tmp / 'logs' / 'gan_match' / 'logs.txt', 'stage 3: ')
    assert script == 'validate.py'
    assert stage3[stage3.index('--pretrain-weight') + 1] == f'{tmp}/results/gan_match/best.pth'
    assert '--g_ema' not in stage3 and '--val_split' not in stage3  # what validate.py does not take or use
    res = validate.main(stage3)
    assert res['dataset'] == 'MNIST' and len(res['onthefly']['models']['convnet']['final']['all']) == 5
    assert (tmp / 'results' / 'gan_match_test' / 'results.json').is_file()


def test_a_stage_run_with_the_reference_budget_prints_the_next_stage_with_its_own(tmp_path):
    """Only a budget the user chose travels: a stage 1 of the reference's 150 epochs is followed by a stage 2 of the
    reference's 100, and validate.py takes no GAN budget at all."""
    base = _dim(tmp_path, '--data', 'mnist', '--tag', 'gan')
    stage2 = shlex.split(cli.next_command(dim_stages.parse_dim_args(1, '', base), 2, 'best.pth', 10))
    assert '--epochs' not in stage2 and dim_stages.parse_dim_args(2, '', stage2[2:]).epochs == 100
    short = dim_stages.parse_dim_args(1, '', base + ['--epochs', '3', '--iters-per-epoch', '4', '--eval-interval',
                                                     '2'])
    stage2 = shlex.split(cli.next_command(short, 2, 'best.pth', 10))
    parsed = dim_stages.parse_dim_args(2, '', stage2[2:])
    assert (parsed.epochs, parsed.iters_per_epoch, parsed.eval_interval) == (3, 4, 2)
    stage3 = shlex.split(cli.next_command(short, 3, 'best.pth', 10))
    assert '--epochs' not in stage3 and '--eval-interval' not in stage3


# ------------------------------------------------------------------------------------ 2. IT-GAN on one's own folder

def test_a_generator_trained_on_an_own_folder_feeds_itgan(tmp_path):
    """gen_condense.py --data folder:PATH --im_size 28, then main_ITGAN.py --dataset folder:PATH --generator
    best.pth: the same dataset identity on both sides and the checkpoint's image size; a folder of the same name
    elsewhere is another dataset."""
    root = write_folder(tmp_path / 'good', channel=1, n_train=8)  # images of several sizes: --im_size needed
    gen_condense.main(_dim(tmp_path, '--data', f'folder:{root}', '--im_size', '28', '--tag', 'gan', '--gan_width', W,
                           '--cond', 'embed', '--batch-size', '6', '--epochs', '1', '--iters-per-epoch', '2',
                           '--epochs-eval', '1', '--eval-interval', '1', '--val_split', '2', '--ipc', '1'))
    weight = str(tmp_path / 'results' / 'gan' / 'best.pth')
    itgan = ['--save_path', str(tmp_path / 'out'), '--device', 'cpu', '--no_progress', '--ipc', '2', '--Iteration',
             '2', '--invert_iters', '2', '--batch_real', '2', '--num_eval', '1', '--epoch_eval_train', '1', '--model',
             'ConvNetW32', '--eval_model', 'ConvNetW32', '--curve_at', '1', '--generator', weight]
    stale = tmp_path / 'out' / '.ITGAN_good_28px_ConvNetW32_2ipc.ckpt.pt.k2j3.tmp'  # of a killed run
    stale.parent.mkdir()
    stale.write_bytes(b'half')
    summary = main_ITGAN.main(['--dataset', f'folder:{root}'] + itgan)
    assert set(summary) == set(main_ITGAN.SETS) and not stale.exists()
    res = torch.load(tmp_path / 'out' / 'res_ITGAN_good_28px_ConvNetW32_2ipc.pt')
    assert res['meta']['im_size'] == [28, 28] and res['meta']['dataset'] == 'good'

    elsewhere = tmp_path / 'copy' / 'good'
    shutil.copytree(root, elsewhere)
    moved = re.escape(f'was trained on folder:{root}, this run is on folder:{elsewhere}')
    with pytest.raises(common.UserError, match=moved):
        main_ITGAN.main(['--dataset', f'folder:{elsewhere}'] + itgan)
    with pytest.raises(common.UserError, match='resized to 28, this run resizes to 32; pass --im_size 28'):
        main_ITGAN.main(['--dataset', f'folder:{root}', '--im_size', '32'] + itgan)
    with pytest.raises(common.UserError, match='was made with --im_size 28, this run has 32; pass --im_size 28'):
        validate.main(_dim(tmp_path, '--data', f'folder:{root}', '--im_size', '32', '--pretrain-weight', weight,
                           '--gan_width', W, '--cond', 'embed', '--ipc', '2', '--auto_bs'))


# ------------------------------------------------------------------------------------ 3. logs and files survive

def _fails(main_fn, argv, capsys):
    with pytest.raises(SystemExit) as e:
        common.run_cli(lambda: main_fn(argv))
    assert e.value.code == 2
    return capsys.readouterr().err.strip()


def test_a_failed_run_appends_its_error_to_the_log_of_the_run_before(prepared_mnist, capsys):
    tmp = prepared_mnist
    main.main(dm_argv(tmp))
    log = tmp / 'out' / 'DC_MNIST_ConvNetW32_1ipc.log'
    first = log.read_text()
    assert first.startswith('==== ') and 'mean = ' in first
    error = _fails(main.main, dm_argv(tmp, '--lr_img', '1e30'), capsys)
    assert 'diverged' in error
    text = log.read_text()
    assert text.startswith(first) and text.count('\n==== ') == 1 and text.rstrip().endswith(error.split(': ', 1)[1])
    assert text.splitlines()[len(first.splitlines())].startswith('==== ')  # the second run's header line
    assert 'DC_MNIST_ConvNetW32_1ipc.ckpt.pt holds the checkpoint of an earlier run; this run starts afresh' in text


def test_a_dim_run_that_fails_at_its_first_step_keeps_the_config_and_log_before(prepared_mnist, capsys):
    tmp = prepared_mnist
    base = _dim(tmp, '--data', 'mnist', '--tag', 'gan', '--gan_width', W, '--epochs', '1', '--iters-per-epoch', '2',
                '--epochs-eval', '1', '--eval-interval', '1', '--val_split', '2', '--ipc', '1')
    gen_condense.main(base + ['--batch-size', '8'])
    config, log = tmp / 'results' / 'gan' / 'config.json', tmp / 'logs' / 'gan' / 'logs.txt'
    before, first = config.read_text(), log.read_text()
    error = _fails(gen_condense.main, base + ['--batch-size', '500'], capsys)  # more than the training images
    assert 'exceeds the 80 training images' in error
    assert config.read_text() == before and json.loads(before)['args']['batch_size'] == 8
    text = log.read_text()
    assert text.startswith(first) and text.rstrip().endswith(error.split(': ', 1)[1])
    assert 'last.pth holds the checkpoint of an earlier run; this run starts afresh' in text


def test_ctrl_c_advises_resume_only_where_the_script_has_it(capsys):
    def interrupted():
        raise KeyboardInterrupt
    for resumable, line in ((True, 'interrupted; rerun with --resume to continue'), (False, 'interrupted')):
        with pytest.raises(SystemExit) as e:
            common.run_cli(interrupted, resumable)
        assert e.value.code == 130 and capsys.readouterr().err.strip().endswith(f': {line}')
    assert '--resume' not in cli.dim_parser(3, 'x').format_help()  # validate.py, which passes resumable=False


# ------------------------------------------------------------------------------------ 4. the data cache's temporaries

def test_the_prepared_data_cache_removes_its_own_stale_temporaries_only(mnist_idx):
    tmp = mnist_idx[0]
    ours = [tmp / '.MNIST.pt.k2j3h4.tmp', tmp / '.MNIST.pt.abc.tmp']
    theirs = [tmp / '.CIFAR10.pt.abc.tmp', tmp / '.MNIST.ptx.abc.tmp', tmp / 'MNIST.pt.abc.tmp', tmp / 'notes.tmp']
    for f in ours + theirs:
        f.write_bytes(b'half a file')
    data_mod.get_dataset('MNIST', str(tmp))
    assert (tmp / 'MNIST.pt').is_file() and not any(f.exists() for f in ours) and all(f.exists() for f in theirs)
    ours[0].write_bytes(b'left by a run killed after another wrote the file')
    data_mod.get_dataset('MNIST', str(tmp))  # read from MNIST.pt
    assert not ours[0].exists()

    root = write_folder(tmp / 'flowers', sizes=[(20, 20)])
    stale, other = root / '.prepared-16.pt.x1.tmp', root / '.prepared.pt.x1.tmp'
    stale.write_bytes(b'half')
    other.write_bytes(b'half')
    data_mod.get_dataset(f'folder:{root}', 'unused', im_size=16)
    assert not stale.exists() and other.exists()


# ------------------------------------------------------------------------------------ 5. runs on other data

def _dm_folder(tmp, root, *extra):
    main_DM.main(['--dataset', f'folder:{root}', '--save_path', str(tmp / 'out'), '--model', 'ConvNetW32', '--ipc',
                  '1', '--Iteration', '1', '--batch_real', '2', '--num_exp', '1', '--num_eval', '1',
                  '--epoch_eval_train', '1', '--eval_final_only', '--device', 'cpu', '--no_progress', *extra])


def test_runs_on_other_data_keep_their_own_files(tmp_path):
    root = write_folder(tmp_path / 'flowers')
    _dm_folder(tmp_path, root, '--im_size', '16')
    _dm_folder(tmp_path, root, '--im_size', '24')
    out = tmp_path / 'out'
    for size in (16, 24):
        res = torch.load(out / f'res_DM_flowers_{size}px_ConvNetW32_1ipc.pt')
        assert res['data'][0][0].shape[-1] == size and res['meta']['args']['im_size'] == size
    before = sorted(os.listdir(out))
    elsewhere = write_folder(tmp_path / 'other' / 'flowers', channel=1)
    other = re.escape(f'holds a run on folder:{root} at --im_size 16, this run is on folder:{elsewhere} at --im_size '
                      f'16; pass another --save_path')
    with pytest.raises(common.UserError, match=other):
        _dm_folder(tmp_path, elsewhere, '--im_size', '16')
    assert sorted(os.listdir(out)) == before  # refused before anything was written

    cl = ['--method', 'random', '--dataset', f'folder:{root}', '--save_path', str(tmp_path / 'cl'), '--model',
          'ConvNetW32', '--ipc', '1', '--steps', '3', '--num_eval', '1', '--epoch_eval_train', '1', '--seeds', '0',
          '--device', 'cpu', '--no_progress', '--im_size']
    CL_DM.main(cl + ['16'])
    CL_DM.main(cl + ['24'])  # the memory cache of 16 px images is another file
    names = sorted(os.listdir(tmp_path / 'cl' / 'cl_data'))
    assert names == [f'cl_random_flowers_{s}px_ConvNetW32_1ipc_3steps_seed0.pt' for s in (16, 24)]


# ------------------------------------------------------------------------------------ 6. strict JSON

def test_results_json_is_strict_json(prepared_mnist, tmp_path):
    common.write_json(tmp_path / 'x.json', dict(a=float('nan'), b=[1.5, float('inf'), -float('inf')], c=(2, 'x')))

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f'{c} is not JSON'))
    assert strict((tmp_path / 'x.json').read_text()) == dict(a=None, b=[1.5, None, None], c=[2, 'x'])
    main_DM.main(dm_argv(prepared_mnist))  # one network: no sample std
    summary = strict((prepared_mnist / 'out' / 'DM_MNIST_ConvNetW32_1ipc.json').read_text())
    assert summary['accuracy']['ConvNetW32']['std_ddof1'] is None


# ------------------------------------------------------------------------------------ 7. help texts

def _parsers(monkeypatch):
    """The argument parser of every script, as it is built (parse_args is stopped before it parses)."""
    built = []

    class Built(Exception):
        pass

    def grab(self, *a, **k):
        built.append(self)
        raise Built

    monkeypatch.setattr(common.ArgumentParser, 'parse_args', grab)
    for parse in (main.parse_args, main_DM.parse_args, CL_DM.parse_args, main_ITGAN.parse_args):
        with pytest.raises(Built):
            parse([])
    monkeypatch.undo()
    return built + [cli.dim_parser(stage, 'x') for stage in (1, 2, 3)]


def test_every_flag_says_what_it_does_and_its_real_default(monkeypatch):
    for p in _parsers(monkeypatch):
        assert 'default: None' not in ' '.join(p.format_help().split()), p.prog
        for action in p._actions:
            shown = p._get_formatter()._get_help_string(action)
            assert shown and shown.count('default:') <= 1, (p.prog, action.option_strings, shown)
            if not action.required and 'ignored' not in shown and action.default is not argparse.SUPPRESS:
                # what happens without the flag: its default, or in words where it is decided at run time
                assert re.search(r'\(default\b|\bdefault:', shown), (p.prog, action.option_strings, shown)
    itgan = _parsers(monkeypatch)[3].format_help()
    assert 'None disables DSA (default: color_crop_cutout_flip_scale_rotate, without flip for MNIST' in ' '.join(
        itgan.split())
    stage1 = ' '.join(cli.dim_parser(1, 'x').format_help().split())
    assert 'SGD momentum of evaluation (and pool) networks (default: 0.9)' in stage1
    assert 'SGD weight decay of evaluation (and pool) networks (default: 0.0005)' in stage1

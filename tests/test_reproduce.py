"""reproduce.py: the registry's commands, the smoke tier end to end on fixtures, resume after a kill, verdicts."""
import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from condensation.repro import cells
import CL_DM
from condensation.run import dim_stages
import main
import main_DM
import main_ITGAN
import reproduce
from condensation.repro import driver
from conftest import ROOT, hold_lock_file, toy_images, write_idx, write_prepared
from condensation.common import write_json

PARSERS = {'main_DM.py': main_DM.parse_args, 'main.py': main.parse_args, 'CL_DM.py': CL_DM.parse_args,
           'main_ITGAN.py': main_ITGAN.parse_args, 'gen_condense.py': lambda a: dim_stages.parse_dim_args(1, '', a),
           'pool_match.py': lambda a: dim_stages.parse_dim_args(2, '', a),
           'validate.py': lambda a: dim_stages.parse_dim_args(3, '', a)}


def write_fixtures(folder):
    """MNIST in torchvision's idx layout and CIFAR10.pt as a prepared tensor file, 10 training and 2 test images
    per class; no CIFAR-100."""
    xtr, ytr = toy_images(10, 10, 1, 28, 0)
    xte, yte = toy_images(2, 10, 1, 28, 1)
    write_idx(os.path.join(folder, 'MNIST', 'raw'), 'train', xtr, ytr)
    write_idx(os.path.join(folder, 'MNIST', 'raw'), 't10k', xte, yte)
    write_prepared(folder, 'CIFAR10', n_train=10, n_test=2)
    return folder


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    """The whole smoke tier, run once for the module: (data folder, output folder, report rows, seconds)."""
    data = write_fixtures(str(tmp_path_factory.mktemp('data')))
    out = str(tmp_path_factory.mktemp('smoke'))
    t0 = time.time()
    result = reproduce.main(['--tier', 'smoke', '--all', '--device', 'cpu', '--data_path', data, '--out', out])
    return data, out, {r['id']: r for r in result['rows']}, time.time() - t0


def test_every_command_of_every_tier_parses(tmp_path):
    for stage in cells.STAGES.values():
        for tier in cells.TIERS:
            PARSERS[stage.script](driver.stage_argv(stage, tier, str(tmp_path), str(tmp_path / 'out'), 'cpu'))


def test_the_registry_names_its_sources_and_invents_no_reference():
    assert len({c.id for c in cells.CELLS}) == len(cells.CELLS)
    for c in cells.CELLS:
        assert set(c.cuts) == set(cells.TIERS), c.id
        assert all(set(cells.STAGES[s].flags) == set(cells.TIERS) for s in c.stages)
        if c.published is not None:
            assert ('paper' in c.published.source or 'README' in c.published.source or 'figure' in c.published.source)
        for tier, refs in c.references.items():
            assert tier in cells.TIERS and tier != 'paper'
            for r in refs:  # a device and an ISO date
                assert r.n and r.source[-10:-6] == '2026' and ('CPU' in r.source or 'H200' in r.source)
    published = [c for c in cells.CELLS if c.published]
    assert {('DM', 'CIFAR10', 'ipc 10'), ('DC', 'MNIST', 'ipc 1'), ('DSA', 'CIFAR100', 'ipc 50')} <= {
        (c.method, c.dataset, c.size) for c in published}


def test_the_quick_tier_fits_ten_minutes_on_an_h200():
    stages = {s for c in cells.CELLS if c.dataset in ('MNIST', 'CIFAR10') for s in c.stages}
    assert driver.estimate(stages, 'quick', 'H200') <= 600
    # the one stage measured end to end on an H200: CL DiM on MNIST, 151 s
    assert 100 < driver.estimate(['cl-dim-mnist-5'], 'quick', 'H200') < 200


def test_the_smoke_tier_runs_every_cell_and_writes_the_report(smoke):
    data, out, rows, seconds = smoke
    print(f'smoke tier: {seconds:.1f} s')
    assert set(rows) == {c.id for c in cells.CELLS}
    for c in cells.CELLS:
        r = rows[c.id]
        if c.dataset == 'CIFAR100':
            assert r['status'] == 'skipped' and r['verdict'] == f'skipped: CIFAR100 not found in {data}'
            continue
        assert r['status'] == 'done', (c.id, r['verdict'])
        assert r['measured']['n'] >= 1 and 0 <= r['measured']['mean'] <= 100
        assert r['verdict'].startswith('not comparable: cut budget')
        # the printed command is the one that ran: script and arguments as the stage's marker records them
        for s, command in zip(c.stages, r['commands']):
            marker = driver.read_marker(driver.stage_dir(out, s))
            assert shlex.split(command) == ['python', marker['script']] + marker['argv']
    report = open(os.path.join(out, 'reproduce.md')).read()
    assert all(f'| {c.id} |' in report for c in cells.CELLS)
    assert report.count('skipped: CIFAR100 not found') == sum(c.dataset == 'CIFAR100' for c in cells.CELLS)
    with open(os.path.join(out, 'reproduce.json')) as f:
        assert [r['id'] for r in json.load(f)['rows']] == [c.id for c in cells.CELLS]
    assert Image.open(os.path.join(out, 'reproduce.png')).size[0] > 0


@pytest.mark.skipif(not hasattr(os, 'killpg'), reason='POSIX process groups')
def test_a_killed_cell_resumes_to_the_same_numbers(smoke, tmp_path, capsys, monkeypatch):
    data, _, rows, _ = smoke
    cell, out = 'cl-dm-mnist-5', str(tmp_path / 'out')
    argv = ['--tier', 'smoke', '--cells', cell, '--device', 'cpu', '--data_path', data, '--out', out]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, 'reproduce.py'] + argv, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = os.path.join(out, cell, 'cl_*.ckpt.pt')  # written after each of the 5 steps
    deadline = time.time() + 120
    while not glob.glob(ckpt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGSTOP)  # freeze it at once, then kill it: the first of 5 steps is saved
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert driver.read_marker(os.path.join(out, cell))['status'] == 'running', 'the run ended before it was killed'

    # --resume continues the interrupted stage from its checkpoint, here as the printed command (--isolate)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    resumed = reproduce.main(argv + ['--resume', '--isolate'])['rows'][0]
    printed = capsys.readouterr().out
    assert 'continuing CL_DM.py' in printed
    # the opening line states the estimated total; each cell's line the time elapsed and the estimate of the rest
    assert re.search(r'^reproduce.py: 1 cell\(s\) of tier smoke on cpu, estimated total \d', printed, re.M)
    assert re.search(rf'^\[1/1\] {cell}: .*; elapsed [^,]+, about 0 s left\)$', printed, re.M), printed
    assert driver.read_marker(os.path.join(out, cell))['resumed']
    assert resumed['measured']['all'] == rows[cell]['measured']['all']

    # a finished cell is not rerun
    started = driver.read_marker(os.path.join(out, cell))['started']
    again = reproduce.main(argv + ['--resume'])['rows'][0]
    assert 'running' not in capsys.readouterr().out
    assert driver.read_marker(os.path.join(out, cell))['started'] == started
    assert again['measured'] == resumed['measured']


def test_max_minutes_stops_before_a_cell_that_would_not_fit(smoke, tmp_path, capsys):
    data = smoke[0]
    result = reproduce.main(['--tier', 'paper', '--cells', 'dm-mnist-1', 'dm-mnist-10', '--device', 'cpu',
                             '--data_path', data, '--out', str(tmp_path), '--max_minutes', '1'])
    assert [r['status'] for r in result['rows']] == ['not run', 'not run']
    assert 'stopping before dm-mnist-1' in capsys.readouterr().out
    assert not os.path.exists(os.path.join(tmp_path, 'dm-mnist-1'))


def test_a_failing_stage_is_one_error_row_and_the_run_goes_on(tmp_path, capsys):
    data = write_fixtures(str(tmp_path / 'data'))
    with open(os.path.join(data, 'MNIST', 'raw', 'train-images-idx3-ubyte'), 'r+b') as f:
        f.truncate(1000)  # present, so not skipped, but unreadable
    result = reproduce.main(['--tier', 'smoke', '--cells', 'dm-mnist-1', 'dm-cifar10-1', '--device', 'cpu',
                             '--data_path', data, '--out', str(tmp_path / 'out')])
    bad, good = result['rows']
    assert bad['status'] == 'error' and 'main_DM.py: error:' in bad['verdict'] and 'truncated' in bad['verdict']
    assert good['status'] == 'done'


def test_a_folder_reproduce_did_not_write_is_left_alone(tmp_path, capsys):
    data = write_fixtures(str(tmp_path / 'data'))
    foreign = tmp_path / 'out' / 'dm-mnist-1'
    foreign.mkdir(parents=True)
    (foreign / 'notes.txt').write_text('mine')
    with pytest.raises(SystemExit) as e:
        reproduce.run_cli(lambda: reproduce.main(['--tier', 'smoke', '--cells', 'dm-mnist-1', '--device', 'cpu',
                                                  '--data_path', data, '--out', str(tmp_path / 'out')]))
    assert e.value.code == 2
    assert 'did not write' in capsys.readouterr().err
    assert (foreign / 'notes.txt').read_text() == 'mine'


@pytest.mark.parametrize('argv, message', [
    (['--cells', 'dm-mnist-7'], 'unknown cell dm-mnist-7'),
    ([], 'choose cells with'),
    (['--methods', 'KIP'], 'unknown method kip'),
    (['--all', '--data_path', '/nonexistent/data'], 'no such folder'),
])
def test_bad_selections_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.run_cli(lambda: reproduce.main(['--device', 'cpu'] + argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_the_list_prints_every_cell_with_its_source_and_estimates(capsys):
    reproduce.main(['--list', '--tier', 'quick', '--device', 'cpu'])
    out = capsys.readouterr().out
    assert all(c.id in out for c in cells.CELLS)
    assert 'DM paper (Zhao & Bilen, WACV 2023, arXiv 2110.04181), Table 1' in out
    assert '95.70 ± 0.11 (n 3)' in out and 'on an H200' in out


def test_the_verdict_rule():
    paper = cells.Value(48.9, 0.6, None, 'paper')
    assert driver.verdict(50.6, 0.2, paper, 'paper').startswith('agrees with the paper')  # within 3 x 0.6
    assert driver.verdict(50.8, 0.2, paper, 'paper').startswith('disagrees with the paper')
    assert driver.verdict(47.0, 1.0, paper, 'paper').startswith('agrees')  # the measured std is the larger
    assert driver.verdict(73.4, 0.1, cells.Value(72.6, None, None, 'paper'), 'paper').startswith('agrees')  # >= 1 point
    assert 'informative' in driver.verdict(39.0, 0.5, cells.Value(39.0, None, None, 'figure', True), 'paper')
    assert driver.verdict(50.0, 0.1, None, 'paper') == 'no published value'
    # Below the paper tier the word names the tier's own reference, never the paper six points away.
    ref = cells.Value(83.6, 1.4, None, 'CPU, 2026-12-04')
    for tier in ('smoke', 'cpu', 'quick'):
        assert driver.verdict(83.0, 1.0, ref, tier).startswith("matches this tier's reference")
        assert driver.verdict(60.0, 1.0, ref, tier).startswith("differs from this tier's reference")
        assert driver.verdict(83.0, 1.0, None, tier).startswith('not comparable: cut budget')


def test_a_stage_reruns_when_a_stage_it_reads_ran_after_it(tmp_path):
    """With --resume, validate.py is not kept when the generator it read was made again (a changed command)."""
    out = str(tmp_path)
    stages = ('dim-mnist-gan', 'dim-mnist-test')
    argvs = {s: driver.stage_argv(cells.STAGES[s], 'smoke', 'data', out, 'cpu') for s in stages}

    def mark(s, finished_at, argv=None):
        os.makedirs(driver.stage_dir(out, s), exist_ok=True)
        write_json(os.path.join(driver.stage_dir(out, s), driver.MARKER),
                   dict(argv=argv or argvs[s], status="done", finished_at=finished_at))

    mark('dim-mnist-gan', 1.0)
    mark('dim-mnist-test', 2.0)
    assert driver.plan(stages, out, argvs, True, set()) == {s: 'done' for s in stages}
    assert driver.plan(stages, out, argvs, False, set()) == {s: 'fresh' for s in stages}
    mark('dim-mnist-gan', 3.0)  # the generator was made again after validate.py read it
    assert driver.plan(stages, out, argvs, True, set()) == {'dim-mnist-gan': 'done', 'dim-mnist-test': 'fresh'}
    mark('dim-mnist-gan', 1.0, argv=['--other'])  # its command changed: it runs again, and so does validate.py
    assert driver.plan(stages, out, argvs, True, set()) == {s: 'fresh' for s in stages}


@pytest.mark.skipif(not hasattr(os, 'killpg'), reason='POSIX signals')
def test_a_second_reproduce_into_the_same_out_is_refused_and_the_first_finishes_whole(tmp_path, capsys):
    """The first run is frozen while its stage runs; the second, into the same --out, is refused in one line naming
    the first's pid and touches nothing; thawed, the first finishes with its stage log whole."""
    data = write_fixtures(str(tmp_path / 'data'))
    out = str(tmp_path / 'out')
    argv = ['--tier', 'smoke', '--cells', 'dm-mnist-1', '--device', 'cpu', '--data_path', data, '--out', out]
    first = subprocess.Popen([sys.executable, 'reproduce.py'] + argv, cwd=ROOT, start_new_session=True,
                             env=dict(os.environ, OMP_NUM_THREADS='1'), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    marker = os.path.join(out, 'dm-mnist-1', driver.MARKER)
    deadline = time.time() + 120
    while not os.path.exists(marker) and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        before = sorted(os.listdir(os.path.join(out, 'dm-mnist-1')))
        with pytest.raises(SystemExit) as e:
            reproduce.run_cli(lambda: reproduce.main(argv))
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count('\n') == 1, err
        assert f'another run (pid {first.pid}) is writing {out}' in err and 'pass another --out' in err
        assert sorted(os.listdir(os.path.join(out, 'dm-mnist-1'))) == before
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    with open(os.path.join(out, 'dm-mnist-1', 'reproduce_console.log')) as f:
        log = f.read()
    lines = log.splitlines()  # (the first run of a fixture's data may open with the prepared file it wrote)
    assert any(line.startswith('plan: ') for line in lines[:2]) and lines[-1].startswith('results: '), log
    assert driver.read_marker(os.path.join(out, 'dm-mnist-1'))['status'] == 'done'
    assert not os.path.exists(os.path.join(out, 'reproduce.lock'))  # released when it ended


def test_a_stage_folder_another_process_writes_in_is_not_cleared(tmp_path):
    folder = tmp_path / 'dm-mnist-1'
    folder.mkdir()
    write_json(str(folder / driver.MARKER), dict(status='running'))
    holder = hold_lock_file(folder / 'DM_MNIST_ConvNet_1ipc.lock')  # a main_DM.py run writing there
    try:
        with pytest.raises(driver.UserError, match=f'another run \\(pid {holder.pid}\\) is writing {folder}'):
            driver.clear(str(folder))
        assert sorted(os.listdir(folder)) == ['DM_MNIST_ConvNet_1ipc.lock', driver.MARKER]
    finally:
        holder.kill()
        holder.wait()
    driver.clear(str(folder))  # a lock its killed holder left is no run
    assert not folder.exists()


def test_sigterm_stops_reproduce_and_releases_its_out(tmp_path):
    data = write_fixtures(str(tmp_path / 'data'))
    out = str(tmp_path / 'out')
    argv = ['--tier', 'smoke', '--cells', 'dm-mnist-1', '--device', 'cpu', '--data_path', data, '--out', out]
    proc = subprocess.Popen([sys.executable, 'reproduce.py'] + argv, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(out, 'dm-mnist-1', driver.MARKER)) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert not os.path.exists(os.path.join(out, 'reproduce.lock'))  # --out is free again

"""torchrun against one process: the same synthetic sets bit for bit, the same accuracies, the same files; and
the DiM stages, whose data-parallel GAN keeps its replicas equal.

One torchrun launch (2 processes, gloo, one thread each) runs every scenario in turn (tests/torchrun_scenarios.py),
the last one a refused BN run that ends it; the single-process references run in this process, with the same
thread count, so their floats are comparable bit for bit. The toy has 5 classes: 2 processes split them 2 + 3
(uneven), and a continual-learning step of one class leaves one process without a class to match.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

import main_DM
from condensation.device import parallel
from conftest import ROOT, interrupt_at, write_prepared
from torchrun_scenarios import SCRIPTS  # the scripts' main functions

GLOO = dist.is_available() and dist.is_gloo_available()
needs_gloo = pytest.mark.skipif(not GLOO, reason='torch.distributed with the gloo backend is not available')


def torchrun(*argv, nproc=2):
    # One thread per process, as in the single-process references; a collective that waits on a dead rank gives up
    # after a minute instead of an hour.
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    env.update(OMP_NUM_THREADS='1', CONDENSE_DIST_TIMEOUT_MIN='1')
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
                           str(nproc), *argv], capture_output=True, text=True, env=env, timeout=600)


def scenarios(toy):
    """name -> (script, argv without --save_path): tiny runs on the 5-class toy file."""
    common = ['--dataset', f'file:{toy}', '--model', 'ConvNetW32', '--ipc', '2', '--batch_real', '4', '--device', 'cpu',
              '--no_progress', '--num_eval', '3']
    condense = common + ['--num_exp', '1', '--eval_every', '2', '--seed', '3']
    return {
        'dm': ('main_DM.py', condense + ['--Iteration', '4', '--epoch_eval_train', '4', '--checkpoint_every', '2']),
        # BN model: every process refreshes the same network's BN statistics on all classes (replicated)
        'dsa_bn': ('main.py', condense + ['--method', 'DSA', '--model', 'ConvNetBN', '--Iteration', '1',
                                          '--outer_loop', '2', '--inner_loop', '1', '--epoch_eval_train', '3']),
        # one class per step: one of the 2 processes has no class to match
        'cl': ('CL_DM.py', common + ['--method', 'DM', '--steps', '5', '--Iteration', '3', '--epoch_eval_train', '2',
                                     '--seeds', '0', '--train_mode', 'finetune']),
    }


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('torchrun')
    # noise hides part of the class bands, so that the accuracies are not all 100 %
    return root, write_prepared(str(root), 'toy5', n_train=8, n_test=6, num_classes=5, channel=1, size=16,
                                noise=255)


@pytest.fixture(scope='module')
def one(toy):
    """The single-process runs, in this process; and a DM run interrupted after its checkpoint at iteration 2."""
    root, path = toy
    for name, (script, argv) in scenarios(path).items():
        SCRIPTS[script](argv + ['--save_path', str(root / 'one' / name)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(main_DM, 'DMStep', interrupt_at(main_DM.DMStep, 3))
        with pytest.raises(KeyboardInterrupt):
            main_DM.main(scenarios(path)['dm'][1] + ['--save_path', str(root / 'interrupted')])
    return root / 'one'


@pytest.fixture(scope='module')
def launch(toy, one):
    """The same runs in one launch of 2 torchrun processes; then the interrupted single-process run resumed; then
    main_DM.py with a BN model, which must be refused (and so ends the launch). Returns (folder, the launch)."""
    root, path = toy
    two = root / 'two'
    runs = [[script, argv + ['--save_path', str(two / name)]] for name, (script, argv) in scenarios(path).items()]
    shutil.copytree(root / 'interrupted', two / 'dm_resumed')
    runs.append(['main_DM.py', scenarios(path)['dm'][1] + ['--resume', '--save_path', str(two / 'dm_resumed')]])
    runs.append(['main_DM.py', ['--dataset', f'file:{path}', '--model', 'ConvNetBN', '--ipc', '2', '--device', 'cpu',
                                '--save_path', str(two / 'bn')]])
    (root / 'runs.json').write_text(json.dumps(runs))
    return two, torchrun(os.path.join(ROOT, 'tests', 'torchrun_scenarios.py'), str(root / 'runs.json'))


@pytest.fixture(scope='module')
def two(launch):
    folder, r = launch
    # the resumed run, the last before the refused one, finished (the interrupted one wrote no results)
    assert os.path.exists(folder / 'dm_resumed' / 'res_DM_toy5_ConvNetW32_2ipc.pt'), r.stderr[-4000:]
    return folder


def load(folder, prefix):
    [name] = [f for f in os.listdir(folder) if f.startswith(prefix) and f.endswith('.pt')]
    return torch.load(folder / name)


# ---------------------------------------------------------------------------------------------- one process

@pytest.mark.parametrize('n', range(8))
@pytest.mark.parametrize('size', range(1, 6))
def test_share_covers_every_item_once_in_contiguous_blocks(monkeypatch, n, size):
    shares = []
    for r in range(size):
        monkeypatch.setenv('WORLD_SIZE', str(size))
        monkeypatch.setenv('RANK', str(r))
        shares.append(parallel.share(n))
    assert [i for s in shares for i in s] == list(range(n))  # in rank order, each item once
    assert all(s.step == 1 for s in shares)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # uneven: sizes differ by one at most
    assert sum(len(s) == 0 for s in shares) == max(0, size - n)  # more processes than items: some get none


def test_one_process_is_the_identity_and_joins_no_process_group(one, monkeypatch):
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    monkeypatch.setenv('RANK', '3')  # a cluster's environment may set RANK without torchrun: still the writer
    assert parallel.world_size() == 1 and parallel.is_main() and parallel.processes() == ''
    assert parallel.share(5) == range(5) and parallel.gather('x') == ['x'] and parallel.start('cpu') == 'cpu'
    t = torch.ones(3)
    parallel.sum_(t)
    assert torch.equal(t, torch.ones(3))
    # the single-process runs of the fixture (main_DM.main and the others, in this process) joined no group
    assert not dist.is_available() or not dist.is_initialized()
    assert load(one / 'dm', 'res_')['meta']['world_size'] == 1


# ---------------------------------------------------------------------------------------------- torchrun

def log_text(folder):
    [name] = [f for f in os.listdir(folder) if f.endswith('.log')]
    return (folder / name).read_text()


def masked_log(folder, root):
    """A run's log without what may differ between process counts: the header line (the time and the command),
    times, the output folder, the plan line's 'x N torchrun processes' and the per-epoch progress lines (under
    torchrun only rank 0's own networks')."""
    lines = [line for line in log_text(folder).replace(str(root), '<out>').splitlines() if not line.startswith('==== ')]
    lines = [re.sub(r' x \d+ torchrun processes \([^)]*\)', '', line) for line in lines]
    return [re.sub(r'\d+(\.\d+)? s\b', 'T s', line) for line in lines if not re.search(r'epoch \d+/\d+$', line)]


def files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


@needs_gloo
@pytest.mark.parametrize('name', ['dm', 'dsa_bn'])
def test_condensation_is_bit_identical_to_one_process(one, two, name):
    a, b = load(one / name, 'res_'), load(two / name, 'res_')
    assert torch.equal(a['data'][0][0], b['data'][0][0]) and torch.equal(a['data'][0][1], b['data'][0][1])
    assert a['accs_iters'] == b['accs_iters'] and a['accs_all_exps'] == b['accs_all_exps']
    assert len(set(a['accs_all_exps'][a['meta']['model'] if name == 'dm' else 'ConvNet'])) > 1  # not all 100 %
    assert (a['meta']['world_size'], b['meta']['world_size']) == (1, 2)


@needs_gloo
def test_continual_learning_is_bit_identical_to_one_process(one, two):
    a, b = (load(run / 'cl' / 'cl_data', 'cl_DM_') for run in (one, two))
    assert len(a['data']) == len(b['data']) == 5
    assert all(torch.equal(x, y) for sa, sb in zip(a['data'], b['data']) for x, y in zip(sa, sb))
    assert (a['meta']['world_size'], b['meta']['world_size']) == (1, 2)
    a, b = load(one / 'cl', 'cl_DM_'), load(two / 'cl', 'cl_DM_')  # the checkpoints
    assert a['accs'] == b['accs']
    # finetune: the networks of the last step, trained 1 + 2 by the two processes and gathered
    assert len(b['nets']) == 3
    assert all(torch.equal(sa[k], sb[k]) for sa, sb in zip(a['nets'], b['nets']) for k in sa)
    summaries = [json.loads((run / 'cl' / 'cl_DM_finetune_toy5_ConvNetW32_2ipc_5steps.json').read_text())
                 for run in (one, two)]
    assert [s['world_size'] for s in summaries] == [1, 2]


@needs_gloo
@pytest.mark.parametrize('name', ['dm', 'dsa_bn', 'cl'])
def test_only_rank_0_writes(one, two, name):
    assert files(two / name) == files(one / name)
    log_one, log_two = masked_log(one / name, one), masked_log(two / name, two)
    assert log_two == log_one  # nothing logged twice, nothing missing
    assert log_text(two / name).count('x 2 torchrun processes') == 1


@needs_gloo
def test_resuming_a_single_process_checkpoint_under_torchrun_is_exact(one, two):
    a, b = load(one / 'dm', 'res_'), load(two / 'dm_resumed', 'res_')
    assert torch.equal(a['data'][0][0], b['data'][0][0])
    assert a['accs_iters'] == b['accs_iters'] and b['meta']['world_size'] == 2


@needs_gloo
def test_a_bn_model_is_refused_under_torchrun(launch):
    folder, r = launch
    # torchrun itself ends with 1 and names the first failed process's exit code; rank 0 alone printed the line
    assert r.returncode != 0 and re.search(r'exitcode\s*:\s*2\b', r.stderr), r.stderr[-4000:]
    errors = [line for line in r.stderr.splitlines() if ': error' in line]
    assert len(errors) == 1 and 'BatchNorm' in errors[0] and '(rank' not in errors[0], r.stderr[-4000:]
    # no traceback through the project's code (torchrun's own report may show torch's files, also in a venv under ROOT)
    assert not re.search('File "' + re.escape(ROOT) + r'/(\w+\.py|tests/)', r.stderr)
    assert not (folder / 'bn').exists() or not os.listdir(folder / 'bn')


# ------------------------------------------------------------------------------------------------ DiM

DRIVER = textwrap.dedent('''
    import sys
    sys.path.insert(0, {root!r})
    import torch
    import gen_condense
    from condensation.device import parallel
    from condensation.run import dim_stages

    start, close = dim_stages.StageRun.start_training, dim_stages.StageRun.close
    before = {{}}

    def spy_start(run, *a):
        before.update({{n: t.clone() for n, t in run.G.state_dict().items()}})
        return start(run, *a)

    def spy_close(run):
        """After training, every process's G, D and averaged G weights and buffers, saved by rank 0."""
        replicas = parallel.gather({{net: {{n: t.clone() for n, t in m.state_dict().items()}}
                                     for net, m in (('G', run.G), ('D', run.D), ('G_ema', run.ema.G))}})
        if parallel.is_main():
            torch.save(dict(before=before, replicas=replicas), {out!r})
        return close(run)

    dim_stages.StageRun.start_training, dim_stages.StageRun.close = spy_start, spy_close
    gen_condense.main(sys.argv[1:])
''')


def _dim_flags(tmp, *extra):
    return ['--data', 'mnist', '--data-dir', str(tmp), '--output-dir', f'{tmp}/results/', '--logs-dir',
            f'{tmp}/logs/', '--device', 'cpu', '--gan_width', '8', '--batch-size', '8', '--epochs-eval', '1',
            '--ipc', '1'] + list(extra)


@needs_gloo
def test_data_parallel_gan_keeps_equal_replicas_and_stage3_matches_one_process(tmp_path):
    write_prepared(str(tmp_path), 'MNIST', n_train=12, n_test=3, channel=1, size=28)
    driver = tmp_path / 'driver.py'
    driver.write_text(DRIVER.format(root=ROOT, out=str(tmp_path / 'replicas.pt')))
    r = torchrun(str(driver), *_dim_flags(tmp_path, '--tag', 'gan', '--epochs', '2', '--iters-per-epoch', '4',
                                         '--eval-interval', '2', '--val_split', '2', '--critic', 'projection',
                                      '--g_ema', '0.9'))
    assert r.returncode == 0, r.stderr[-2000:]
    saved = torch.load(tmp_path / 'replicas.pt', weights_only=True)
    first, second = saved['replicas']
    for net in ('G', 'D', 'G_ema'):
        for name, t in first[net].items():
            assert torch.equal(t, second[net][name]), (net, name)  # averaged gradients, rank 0's BN statistics
    moved = [n for n, t in saved['before'].items() if t.is_floating_point() and not torch.equal(t, first['G'][n])]
    assert moved  # it trained
    log = (tmp_path / 'logs' / 'gan' / 'logs.txt').read_text()
    assert 'effective batch 16' in log
    assert log.count('epoch 1: convnet validation accuracy') == 1  # rank 0 alone logs

    weight = str(tmp_path / 'results' / 'gan' / 'best.pth')
    stage3 = ['--pretrain-weight', weight, '--num_eval', '3', '--dim_eval', 'both', '--critic', 'projection']
    r = torchrun(os.path.join(ROOT, 'validate.py'), *_dim_flags(tmp_path, '--tag', 'v2', *stage3))
    assert r.returncode == 0, r.stderr[-2000:]
    one = subprocess.run([sys.executable, os.path.join(ROOT, 'validate.py')]
                         + _dim_flags(tmp_path, '--tag', 'v1', *stage3),
                         cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = (json.loads((tmp_path / 'results' / t / 'results.json').read_text()) for t in ('v1', 'v2'))
    assert (a['world_size'], b['world_size']) == (1, 2)
    for mode in ('onthefly', 'fixed'):
        assert a[mode]['models'] == b[mode]['models'], mode
    assert torch.load(b['fixed']['results_file'], weights_only=True)['meta']['world_size'] == 2


CRASH = textwrap.dedent('''
    import sys
    sys.path.insert(0, {root!r})
    import torch
    from condensation.device import parallel

    parallel.start('cpu')
    if parallel.rank() == 1:
        raise RuntimeError('rank 1 failed here')
    parallel.sum_(torch.ones(3))  # rank 0 waits for a process that is gone
    print('rank 0 went on')
''')


@needs_gloo
def test_a_crashed_process_ends_the_job_with_its_error_not_a_hang(tmp_path):
    driver = tmp_path / 'crash.py'
    driver.write_text(CRASH.format(root=ROOT))
    r = torchrun(str(driver))  # torchrun() gives up after 10 minutes: a hang fails the test
    assert r.returncode != 0
    assert 'rank 1 failed here' in r.stderr and 'rank 0 went on' not in r.stdout


def test_world_size_without_torchrun_is_one_line_and_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    env['WORLD_SIZE'] = '2'
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'main_DM.py'), '--device', 'cpu', '--save_path',
                        str(tmp_path / 'out')], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'torchrun' in r.stderr, r.stderr
    assert not (tmp_path / 'out').exists()

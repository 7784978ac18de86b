"""DiM under torchrun (2 CPU processes, gloo): the data-parallel GAN keeps its replicas equal, and stage 3 spreads
its networks without changing a number."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import ROOT, write_prepared

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason='torch.distributed with gloo is not available')

DRIVER = textwrap.dedent('''
    import sys
    sys.path.insert(0, {root!r})
    import torch
    import dim_run, gen_condense, parallel

    train_gan = dim_run.train_gan

    def spy(args, run, data, G, D, *a, **k):
        """After training, every process's G and D weights and buffers, saved by rank 0."""
        before = {{n: t.clone() for n, t in G.state_dict().items()}}
        state = train_gan(args, run, data, G, D, *a, **k)
        replicas = parallel.gather(dict(G={{n: t.clone() for n, t in G.state_dict().items()}},
                                        D={{n: t.clone() for n, t in D.state_dict().items()}}))
        if parallel.is_main():
            torch.save(dict(before=before, replicas=replicas), {out!r})
        return state

    dim_run.train_gan = spy
    gen_condense.main(sys.argv[1:])
''')


def _torchrun(args, cwd, n=2):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(n)]
                          + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _flags(tmp, *extra):
    return ['--data', 'mnist', '--data-dir', str(tmp), '--output-dir', f'{tmp}/results/', '--logs-dir',
            f'{tmp}/logs/', '--device', 'cpu', '--gan_width', '8', '--batch-size', '8', '--epochs-eval', '1',
            '--ipc', '1'] + list(extra)


def test_data_parallel_gan_keeps_equal_replicas_and_stage3_matches_one_process(tmp_path):
    write_prepared(str(tmp_path), 'MNIST', n_train=12, n_test=3, channel=1, size=28)
    driver = tmp_path / 'driver.py'
    driver.write_text(DRIVER.format(root=ROOT, out=str(tmp_path / 'replicas.pt')))
    r = _torchrun([str(driver)] + _flags(tmp_path, '--tag', 'gan', '--epochs', '2', '--iters-per-epoch', '4',
                                         '--eval-interval', '2', '--val_split', '2'), tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    saved = torch.load(tmp_path / 'replicas.pt', weights_only=True)
    first, second = saved['replicas']
    for net in ('G', 'D'):
        for name, t in first[net].items():
            assert torch.equal(t, second[net][name]), (net, name)  # averaged gradients, rank 0's BN statistics
    moved = [n for n, t in saved['before'].items() if t.is_floating_point() and not torch.equal(t, first['G'][n])]
    assert moved  # it trained
    log = (tmp_path / 'logs' / 'gan' / 'logs.txt').read_text()
    assert 'effective batch 16' in log
    assert log.count('epoch 1: convnet validation accuracy') == 1  # rank 0 alone logs

    weight = str(tmp_path / 'results' / 'gan' / 'best.pth')
    stage3 = ['--pretrain-weight', weight, '--num_eval', '3', '--dim_eval', 'both']
    r = _torchrun([os.path.join(ROOT, 'validate.py')] + _flags(tmp_path, '--tag', 'v2', *stage3), tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    one = subprocess.run([sys.executable, os.path.join(ROOT, 'validate.py')]
                         + _flags(tmp_path, '--tag', 'v1', *stage3),
                         cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = (json.loads((tmp_path / 'results' / t / 'results.json').read_text()) for t in ('v1', 'v2'))
    assert (a['world_size'], b['world_size']) == (1, 2)
    for mode in ('onthefly', 'fixed'):
        assert a[mode]['models'] == b[mode]['models'], mode
    assert torch.load(b['fixed']['results_file'], weights_only=True)['meta']['world_size'] == 2

"""The steps replayed as CUDA graphs, checked on the CPU: the audit finds nothing in any of them that would stop a
recording or make the host wait (the GPU path itself is exercised on the CPU), the networks redrawn in place are
the networks a fresh build gives, the recording's control flow (warm-up, fallback), and a compiled DM step."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from condensation import augment
from condensation.methods import gan
from condensation.device import graphs
import main as main_dc
import main_DM
from condensation import networks
from condensation.run.cli import Config
from conftest import ROOT, over_seeds, toy_data
from condensation.methods.dc import DCStep
from condensation.methods.dm import DMStep
from condensation.evaluation import EvalRecipe, evaluate_synset
from condensation.run.runner import init_synset
from condensation.common import make_generator

STRATEGY = 'color_crop_cutout_flip_scale_rotate'


@pytest.fixture
def device_path(monkeypatch):
    """DSA applied as on a GPU (every image through every token, no grouping by token on the host)."""
    monkeypatch.setattr(augment, '_group_on_host', lambda choice: False)


def _dm(extra=(), ipc=2):
    data = toy_data()
    args = main_DM.parse_args(['--dataset', 'MNIST', '--model', 'ConvNetW32', '--ipc', str(ipc), '--batch_real', '5',
                               '--dsa_strategy', STRATEGY, '--device', 'cpu', *extra])
    image_syn, syn_cls = init_synset(data, ipc, 'noise', torch.Generator().manual_seed(0))
    image_syn.requires_grad_(True)
    return data, args, image_syn, syn_cls, torch.optim.SGD([image_syn], lr=1.0, momentum=0.5)


def _no_problems(audit, name, calls):
    assert audit.calls[name] == calls and audit.per_call(name) > 0, (dict(audit.calls), dict(audit.ops))
    assert audit.problems == [], audit.problems


# ------------------------------------------------------------------------------------------------ the audit

def test_the_audit_finds_what_would_break_a_recording():
    g = torch.Generator().manual_seed(0)
    other = torch.Generator().manual_seed(1)

    def bad():
        x = torch.rand(4, generator=g, device="cpu")
        x.sum().item()                      # host read
        (x > 0.5).nonzero()                 # data-dependent shape
        x[x > 0.5]                          # boolean mask
        torch.tensor([1.0, 2.0], device="cpu")  # Python data
        torch.randn(3)                      # global generator
        torch.rand(2, generator=other)      # a stream the step was not given
        return x

    with graphs.audited() as audit:
        step = graphs.Graphed(bad, [g], name='bad')
        step()  # the warm-up call: lazy set-up is allowed there, it is never recorded
        assert audit.problems == []
        step()
    found = ' '.join(audit.problems)
    for what in ('reads a value back', 'boolean-mask', 'Python data', 'global random generator',
                 'not given'):
        assert what in found, (what, audit.problems)

    def implicit():  # a tensor made without a device is made on the host, even in a GPU step
        return torch.rand(2, generator=g, device='cpu') + torch.zeros(2)

    with graphs.audited():
        step = graphs.Graphed(implicit, [g], name='implicit')
        step()
        with pytest.raises((RuntimeError, NotImplementedError)):
            step()


@pytest.mark.parametrize('extra', [(), ('--per_class',), ('--model', 'ConvNetBN')], ids=['joint', 'per_class', 'BN'])
def test_dm_step_on_the_gpu_path_holds_nothing_a_recording_cannot(extra, device_path):
    data, args, image_syn, syn_cls, opt = _dm(extra)
    args = Config(args, real_chunk=None)
    step = DMStep(args, data, image_syn, syn_cls, opt, resident=True)
    with graphs.audited() as audit:
        for it in range(2):
            step(0, (0, it))
    _no_problems(audit, 'DM step', 2)


@pytest.mark.parametrize('method,model', [('DSA', 'ConvNetW32'), ('DC', 'ConvNetBN')])
def test_dc_passes_hold_nothing_a_recording_cannot(method, model, device_path):
    data = toy_data()
    argv = ['--dataset', 'MNIST', '--model', model, '--ipc', '2', '--batch_real', '4', '--device', 'cpu',
            '--method', method, '--outer_loop', '2', '--inner_loop', '2']
    args = main_dc.parse_args(argv + (['--dsa_strategy', STRATEGY] if method == 'DSA' else []))
    image_syn, syn_cls = init_synset(data, 2, 'noise', torch.Generator().manual_seed(0))
    image_syn.requires_grad_(True)
    step = DCStep(args, data, image_syn, syn_cls, torch.optim.SGD([image_syn], lr=0.1, momentum=0.5))
    with graphs.audited() as audit:
        for it in range(2):
            step(0, (0, it))
    _no_problems(audit, 'DC matching pass', 4)
    _no_problems(audit, 'DC inner epochs', 2)


@pytest.mark.parametrize('aug', ['dsa', 'none'])
def test_evaluation_epoch_holds_nothing_a_recording_cannot(aug, device_path):
    x, y = torch.randn(20, 1, 28, 28), torch.arange(10).repeat(2)
    recipe = EvalRecipe(epoch_eval_train=2, batch_train=8, dsa=aug == 'dsa', dsa_strategy=STRATEGY,
                        dsa_param=augment.ParamDiffAug())
    net = networks.get_network('ConvNetW32', 1, 10, (28, 28), generator=torch.Generator().manual_seed(0))
    with graphs.audited() as audit:
        evaluate_synset(0, net, x, y, [(x, y)], recipe, generator=torch.Generator().manual_seed(1))
    _no_problems(audit, 'evaluation epoch', 3)


@pytest.mark.parametrize('critic,gp_every', [('ac', 2), ('projection', 1)])
def test_gan_iteration_holds_nothing_a_recording_cannot(critic, gp_every, monkeypatch):
    G, D = networks.define_gan(1, 4, 28, dim_noise=16, cond='embed', width=8, generator=_gen(0), critic=critic)
    opt_g, opt_d = gan.adam(G, 1e-3), gan.adam(D, 1e-3)
    for opt in (opt_g, opt_d):
        # The CPU Adam counts its steps on the host; on CUDA gan.adam keeps the count on the device (capturable).
        monkeypatch.setattr(opt, 'step', _outside_audit(opt.step))
    step = gan.GANStep(G, D, opt_g, opt_d, 4, 1, gp_every, 0.5, gan.GeneratorEMA(G, 0.99))
    step.use_stream(_gen(1))
    x, y = torch.rand(8, 1, 28, 28) * 2 - 1, torch.arange(4).repeat(2)
    with graphs.audited() as audit:
        for it in range(4):
            step(it, x, y)
    names = [n for n in audit.calls if n.startswith('GAN iteration')]
    assert len(names) == (2 if gp_every == 2 else 1) and audit.problems == [], (names, audit.problems)


def _outside_audit(fn):
    def call(*a, **kw):
        saved = graphs._AUDIT[:]
        graphs._AUDIT.clear()
        try:
            from torch.utils._python_dispatch import _disable_current_modes
            with _disable_current_modes():
                return fn(*a, **kw)
        finally:
            graphs._AUDIT[:] = saved
    return call


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ networks

@pytest.mark.parametrize('model', ['ConvNet', 'ConvNetBN', 'ResNet18', 'VGG11', 'ConvNetLN'])
def test_a_network_redrawn_in_place_is_the_network_a_fresh_build_gives(model):
    """DMStep and DCStep keep one network and redraw it at every step: the same draws from the same stream, so
    the same weights and buffers as building it anew (and so the initialisation's distribution)."""
    net = networks.get_network(model, 3, 10, (32, 32), generator=_gen(0))
    with torch.no_grad():
        for t in list(net.parameters()) + list(net.buffers()):
            t.add_(1)  # as if trained
    for seed in (1, 2):
        networks.init_weights(net, make_generator(seed, 'dm_net', 0, seed))
        fresh = networks.get_network(model, 3, 10, (32, 32), generator=make_generator(seed, 'dm_net', 0, seed))
        for a, b in zip(list(net.state_dict().values()), list(fresh.state_dict().values())):
            assert torch.equal(a, b)


def test_the_gpu_path_of_the_dm_step_learns_and_repeats(device_path):
    """The device-resident step (its own batch draw, DSA applied token by token) moves a noise set towards the real
    class means, as the host-drawn one does (a claim over the steps' seeds: 3 of 5), and a seed fixes the set."""
    def run(seed):
        data, args, image_syn, syn_cls, opt = _dm()
        start = image_syn.detach().clone()
        step = DMStep(args, data, image_syn, syn_cls, opt, resident=True)
        for it in range(10):
            step(seed, (0, it))
        return data, syn_cls, start, image_syn.detach().clone()

    assert torch.equal(run(3)[3], run(3)[3])

    def closer(seed):  # the set's distance to its classes' real means, after the steps over before
        data, syn_cls, start, end = run(seed)
        means = torch.stack([data.images(idx).mean(0) for idx in data.indices_class])
        before, after = [(s - means[syn_cls]).flatten(1).norm(dim=1).mean() for s in (start, end)]
        return float(after / before)
    ok, ratios = over_seeds(closer, lambda r: r < 0.9)
    assert ok, ratios


# ------------------------------------------------------------------------------------------------ control flow

class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: replay() re-runs what was recorded."""

    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


def test_recording_follows_the_warm_up_and_a_failed_one_runs_eagerly_with_one_warning(monkeypatch, capsys):
    monkeypatch.setattr(graphs, '_on_side_stream', lambda fn: fn())
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda *a: None)
    calls = []

    def fn():
        calls.append(1)
        return len(calls)

    def record(self):
        self.graph, self.out = _FakeGraph(self.fn), -1  # recording runs nothing; the replay does

    monkeypatch.setattr(graphs.Graphed, '_record', record)
    step = graphs.Graphed(fn, enabled=True, warmup=2)
    assert [step() for _ in range(2)] == [1, 2] and not step.replaying  # warm-up: eager
    assert step() == -1 and step.replaying and len(calls) == 3  # recorded, then replayed once
    step()
    assert len(calls) == 4
    step.rerecord()
    assert not step.replaying and step() == -1 and len(calls) == 5  # no second warm-up

    def fail(self):
        raise RuntimeError('operation not permitted when stream is capturing\nmore')

    monkeypatch.setattr(graphs.Graphed, '_record', fail)
    calls.clear()
    step = graphs.Graphed(fn, enabled=True, warmup=1, name='toy step')
    assert [step() for _ in range(4)] == [1, 2, 3, 4]  # never a lost or wrong call
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'toy step' in err[0] and 'running it eagerly' in err[0]
    assert not step.enabled


def test_graphs_are_for_cuda_only():
    assert not graphs.graphs_enabled('cpu', 'on')
    assert not graphs.graphs_enabled('cuda', 'off')
    assert graphs.graphs_enabled('cuda', 'on') == hasattr(torch.cuda.CUDAGraph, 'register_generator_state')
    # a step drawing from a generator off the GPU runs eagerly, whatever the caller asked
    assert graphs.Graphed(lambda: None, enabled=True).enabled
    assert not graphs.Graphed(lambda: None, [torch.Generator()], enabled=True).enabled
    assert not graphs.Graphed(lambda: None, [None], enabled=True).enabled


# ------------------------------------------------------------------------------------------------ compile

@pytest.mark.skipif(shutil.which('c++') is None and shutil.which('g++') is None,
                    reason='torch.compile on the CPU needs a C++ compiler')
def test_a_compiled_dm_step_agrees_with_the_eager_one():
    """--compile on: inductor's fused forward computes the same step, up to float rounding (fusion reorders sums):
    the sets after 2 iterations agree to 1e-4 relative."""
    sets = []
    for flag in ('off', 'on'):
        data, args, image_syn, syn_cls, opt = _dm(('--compile', flag, '--dsa_strategy', 'none', '--model', 'ConvNetD1'),
                                                  ipc=1)
        step = DMStep(args, data, image_syn, syn_cls, opt)
        for it in range(2):
            step(0, (0, it))
        sets.append(image_syn.detach())
    torch.testing.assert_close(sets[1], sets[0], rtol=1e-4, atol=1e-4)


def test_gpu_check_runs_on_the_cpu(tmp_path):
    """bench/gpu_check.py is run on a card between rounds: on a CPU, at toy sizes, it must start, run every part
    and pass (graphs and eager are the same computation there)."""
    r = subprocess.run([sys.executable, os.path.join('bench', 'gpu_check.py'), '--device', 'cpu', '--smoke', '--out',
                        str(tmp_path), '--data_path', str(tmp_path / 'no_data')], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = (tmp_path / 'report.md').read_text()
    assert '**PASSED**' in report and 'audit' in report and '| DM ipc 1 fp32' in report
    assert 'skipped: CIFAR-10 not found' in report


def test_host_overhead_measures_every_step():
    """bench/host_overhead.py (docs/benchmarks.md's host table) runs every step it names, on both code paths."""
    for extra in ([], ['--gpu_path']):
        r = subprocess.run([sys.executable, os.path.join('bench', 'host_overhead.py'), '--reps', '1', *extra],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        rows = [line for line in r.stdout.splitlines() if line.startswith('| ') and '(replayed)' in line]
        assert len(rows) == 6 and all(int(line.split('|')[2]) > 0 for line in rows), r.stdout

"""The steps replayed as CUDA graphs, checked on the CPU: the audit finds nothing in any of them that would stop a
recording or make the host wait (the GPU path itself is exercised on the CPU), the networks redrawn in place are
the networks a fresh build gives, the recording's control flow (warm-up, fallback), and a compiled DM step."""
import contextlib
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

class FakeRecorder:
    """Stands in for CUDA's recording on the CPU (graphs.RECORDER): a stand-in device context that every warm-up,
    recording and replay must be inside, and a graph that replays by running the step again ('right'), replays
    nothing ('nothing'), replays the draws of its recording ('stale'), works for `good` replays and then does
    nothing ('stops'), or cannot be recorded ('fail')."""

    def __init__(self, mode='right', out=lambda: torch.zeros(()), good=0):
        self.mode, self.make_out, self.good = mode, out, good
        self.stack, self.events, self.released = [], [], 0

    def accepts(self, generators):
        return True

    @contextlib.contextmanager
    def device(self, device):
        self.stack.append(torch.device(device))
        try:
            yield
        finally:
            self.stack.pop()

    def _inside(self, what):
        assert self.stack, f'{what} outside the step\'s device'
        self.events.append((what, self.stack[-1]))

    def side_stream(self, fn):
        self._inside('warm-up')
        return fn()

    def record(self, fn, generators):
        self._inside('recording')
        if self.mode == 'fail':
            raise RuntimeError('operation not permitted when stream is capturing\nmore')
        graph = _FakeGraph(self, fn, generators, self.make_out())
        return graph, graph.out

    def replay(self, graph):
        self._inside('replay')
        graph.replay()

    def release(self, graph):
        self.released += 1


class _FakeGraph:
    def __init__(self, recorder, fn, generators, out):
        self.recorder, self.fn, self.generators, self.out = recorder, fn, generators, out
        self.states = [g.get_state() for g in generators]
        self.replays = 0

    def replay(self):
        self.replays += 1
        mode = self.recorder.mode
        if mode == 'nothing' or (mode == 'stops' and self.replays > self.recorder.good):
            return None
        if mode == 'stale':
            for g, s in zip(self.generators, self.states):
                g.set_state(s)
        result = self.fn()
        if isinstance(self.out, dict):  # the static outputs, overwritten by each replay
            self.out.update(result)
        else:
            self.out.copy_(result)


def _toy(recorder, monkeypatch, name='toy step'):
    """A step that adds fresh draws to w, on the fake recorder; its eager twin."""
    monkeypatch.setattr(graphs, 'RECORDER', recorder)
    g, w = _gen(0), torch.zeros(3)

    def fn():
        w.add_(torch.rand(3, generator=g))
        return w.sum()
    return graphs.Graphed(fn, [g], enabled=True, name=name, state=(w,)), g, w


def test_recording_follows_the_warm_up_and_every_part_runs_on_the_steps_device(monkeypatch, capsys):
    recorder = FakeRecorder()
    step, g, w = _toy(recorder, monkeypatch)
    step.device = torch.device('cuda', 1)  # as a step whose generators are on cuda:1
    calls = []
    fn = step.fn
    step.fn = lambda: calls.append(1) or fn()
    for i in range(2):
        step()
        assert not step.replaying and len(calls) == i + 1  # warm-up: eager
    step()
    assert step.replaying and len(calls) == 4  # recorded, replayed, checked against an eager step
    step()
    assert len(calls) == 6  # the second replay checked too
    step()
    assert len(calls) == 7  # then plain replays
    assert [e for e, _ in recorder.events] == ['warm-up', 'warm-up', 'recording'] + ['replay'] * 3
    assert {d for _, d in recorder.events} == {torch.device('cuda', 1)}
    step.rerecord()
    assert not step.replaying and recorder.released == 1
    step()
    assert recorder.events[-2][0] == 'recording' and len(calls) == 9  # no second warm-up, the check again
    assert capsys.readouterr().err == '' and step.enabled


def test_a_step_enters_the_device_of_its_generators(monkeypatch):
    recorder = FakeRecorder()
    step, g, w = _toy(recorder, monkeypatch)
    assert step.device == g.device
    for _ in range(4):
        step()
    assert recorder.events and {d for _, d in recorder.events} == {g.device}


def _eager_toy(calls):
    g, w = _gen(0), torch.zeros(3)
    for _ in range(calls):
        w.add_(torch.rand(3, generator=g))
    return w


@pytest.mark.parametrize('mode,good', [('nothing', 0), ('stale', 0), ('stops', 3), ('fail', 0)])
def test_a_replay_that_fails_its_check_gives_the_eager_result_with_one_warning(mode, good, monkeypatch, capsys):
    """A graph that replays nothing, replays its recording's draws, stops working at a watched replay (the 4th),
    or cannot be recorded: the step ends exactly where eager calls end, and says so once."""
    recorder = FakeRecorder(mode, good=good)
    step, g, w = _toy(recorder, monkeypatch, name=f'toy {mode}')
    before = len(graphs.FALLBACKS)
    outs = [float(step()) for _ in range(12)]
    assert torch.equal(w, _eager_toy(12))
    assert outs[-1] == float(_eager_toy(12).sum())
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f'toy {mode}' in err[0] and 'running it eagerly' in err[0], err
    assert not step.enabled and not step.replaying and recorder.released >= 1
    assert len(graphs.FALLBACKS) == before + 1 and graphs.FALLBACKS[-1][0] == f'toy {mode}'


def _dm_run(recorder, monkeypatch, iters=6):
    from condensation.methods import dm
    if recorder is not None:
        monkeypatch.setattr(graphs, 'RECORDER', recorder)
        monkeypatch.setattr(dm, 'graphs_enabled', lambda *a: True)
    data, args, image_syn, syn_cls, opt = _dm()
    step = DMStep(args, data, image_syn, syn_cls, opt, resident=True)
    losses = [step(0, (0, it)) for it in range(iters)]
    monkeypatch.undo()
    return image_syn.detach(), losses, step.graphed


@pytest.mark.parametrize('mode', ['right', 'nothing', 'stale'])
def test_a_checked_dm_step_is_the_eager_step(mode, monkeypatch, capsys, device_path):
    """The first replays' check runs an eager DM step and puts its state back: with a graph that replays right
    the run is the eager run bit for bit; with one that replays nothing or stale draws, the eager run too."""
    eager, eager_losses, _ = _dm_run(None, monkeypatch)
    monkeypatch.setattr(augment, '_group_on_host', lambda choice: False)
    out = FakeRecorder(mode, out=lambda: torch.zeros(()))
    graphed, losses, step = _dm_run(out, monkeypatch)
    assert torch.equal(graphed, eager)
    err = capsys.readouterr().err
    if mode == 'right':
        assert step.enabled and step.replaying and err == ''
        assert all(torch.equal(a, b) for a, b in zip(losses, eager_losses))
    else:
        assert not step.enabled and err.count('warning: DM step') == 1, err


@pytest.mark.parametrize('mode', ['right', 'stale'])
def test_a_checked_gan_iteration_is_the_eager_one(mode, monkeypatch, capsys):
    def run(recorder):
        if recorder is not None:
            monkeypatch.setattr(graphs, 'RECORDER', recorder)
        G, D = networks.define_gan(1, 4, 28, dim_noise=16, cond='embed', width=8, generator=_gen(0))
        ema = gan.GeneratorEMA(G, 0.99)
        step = gan.GANStep(G, D, gan.adam(G, 1e-3), gan.adam(D, 1e-3), 4, 1, 1, 0.5, ema,
                           graphs=recorder is not None)
        step.use_stream(_gen(1))
        x, y = torch.rand(8, 1, 28, 28, generator=_gen(2)) * 2 - 1, torch.arange(4).repeat(2)
        for it in range(6):
            step(it, x, y)
        return [t.detach().clone() for m in (G, D, ema.G) for t in m.state_dict().values()], step
    eager, _ = run(None)
    graphed, step = run(FakeRecorder(mode, out=dict))
    assert all(torch.equal(a, b) for a, b in zip(graphed, eager))
    err = capsys.readouterr().err
    assert err.count('warning: GAN iteration') == (mode == 'stale'), err


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
    # every check only a card settles is listed, and says so; the one the CPU can run passes
    assert report.count('| needs CUDA |') == 7 and '| DM step on cuda:1 | needs two CUDA devices |' in report
    assert '(its Adam state marked capturable, as a GPU writes it) continues on cpu | pass |' in report
    assert 'on one H200: about' in report and 'within the 8 allowed: True' in report


def test_host_overhead_measures_every_step():
    """bench/host_overhead.py (docs/benchmarks.md's host table) runs every step it names, on both code paths."""
    for extra in ([], ['--gpu_path']):
        r = subprocess.run([sys.executable, os.path.join('bench', 'host_overhead.py'), '--reps', '1', *extra],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        rows = [line for line in r.stdout.splitlines() if line.startswith('| ') and '(replayed)' in line]
        assert len(rows) == 6 and all(int(line.split('|')[2]) > 0 for line in rows), r.stdout

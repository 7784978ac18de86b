"""CUDA graph replay of a step: the host launches a whole iteration with one call instead of hundreds of kernels.

A step qualifies when it has static shapes, never makes the host wait for the device (no `.item()`, `nonzero`,
host-side random draws or host copies; tests/test_graphs.py audits every captured step), and draws every random
number from generators given to `Graphed`. The caller seeds those generators before each call, so call i draws
exactly what an eager call with the same seeds draws: a replay repeats the eager step, float rounding of
non-deterministic kernels aside.

    step = Graphed(fn, generators=[g], enabled=graphs_enabled(device, args.cuda_graphs), name='DM step',
                   state=(image_syn, optimizer, net))   # what fn changes: tensors, modules, optimisers
    for it in ...:
        g.manual_seed(derive_seed(seed, 'dm', it))
        out = step()             # fn's outputs; with a graph they are overwritten by the next call

The first `warmup` calls run eagerly on a side stream, so that lazy set-up (optimiser state, the allocator's
blocks, cuBLAS and cuDNN handles) happens outside the recording; cuDNN's algorithm search is not among it, as
torch.backends.cudnn.benchmark stays off (PyTorch's default; bench/gpu_check.py measures both); the next call
records fn and replays it; later calls replay. Recording does not run fn, so no call is lost. Every part of this
(warm-up, recording, replay, the checks) runs inside the step's device (torch.cuda.device), which is the device of
its generators: with --device cuda:1 the graph, its streams and its memory pool are on cuda:1.

A recorded step proves itself before it is trusted (Graphed._checked): its first CHECKED replays are each compared with
an eager step run from the same state and the same generator states (the state is copied before and put back
after the eager step, so the reference changes nothing); later replays, at the 4th, 8th, 16th ... replay, must
move every floating tensor of `state` that the checked steps moved. A recording that fails, or a replay that fails
its check, prints one warning line naming the step and the reason, releases the graph's memory, and the step runs
eagerly from then on, from the state an eager step would have left: slower, never wrong.
"""
import collections
import contextlib
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from condensation.device import parallel

FALLBACKS = []  # (step name, reason) of every recording or check that failed in this process (bench/gpu_check.py)
PASSED = collections.Counter()  # step name -> checked replays that matched their eager step (bench/gpu_check.py)
CHECKED = 2     # replays compared with an eager step: the recording call's, and the next, whose streams are reseeded
# A checked replay agrees with the eager step when every tensor of its state and outputs is within TOLERANCE of the
# eager step's change of that tensor (plus float32 rounding of its size): kernels that add with atomics are not
# reproducible run to run, but one step's rounding is far below 1 % of what the step moved; stale random draws
# or a graph that recorded nothing miss by about 100 %.
TOLERANCE = 0.01
ROUNDING = 1e-6


def graphs_enabled(device, mode='on'):
    """Whether steps on `device` are replayed as CUDA graphs under --cuda_graphs `mode`: on CUDA, in one process
    (a collective inside a recording would need NCCL's graph support, which is not assumed)."""
    return (mode == 'on' and torch.device(device).type == 'cuda' and parallel.world_size() == 1
            and hasattr(torch.cuda.CUDAGraph, 'register_generator_state'))


class CudaRecorder:
    """How Graphed records and replays on CUDA; tests put a stand-in in its place (graphs.RECORDER) to run the
    control flow on the CPU."""

    def accepts(self, generators):
        # A draw from a generator off the GPU can be neither recorded nor reseeded in a replay: such a step runs
        # eagerly (e.g. a DM or DC step whose streams are drawn on the host).
        return all(g is not None and g.device.type == 'cuda' for g in generators)

    def device(self, device):
        return torch.cuda.device(device)

    def side_stream(self, fn):
        """fn() on a fresh stream that waits for, and is waited on by, the current one."""
        main, side = torch.cuda.current_stream(), torch.cuda.Stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = fn()
        main.wait_stream(side)
        return out

    def record(self, fn, generators):
        """(graph, fn's outputs as the graph's static tensors). A failed recording releases what it allocated
        (capture_end can raise with the graph's private pool still held) before the error goes on."""
        graph = torch.cuda.CUDAGraph()
        try:
            for g in generators:
                graph.register_generator_state(g)
            with torch.cuda.graph(graph):
                out = fn()
        except BaseException:
            self.release(graph)
            raise
        return graph, out

    def replay(self, graph):
        graph.replay()

    def release(self, graph):
        """Give a graph's private memory pool back to the device."""
        torch.cuda.synchronize()
        if graph is not None:
            try:
                graph.reset()
            except RuntimeError:  # a half-made graph may have nothing to reset
                pass
        torch.cuda.empty_cache()


RECORDER = CudaRecorder()


def tensors_of(things):
    """The tensors a step changes, from tensors, modules (parameters and buffers), optimisers (their state) and
    lists of them."""
    out = []
    for t in things:
        if torch.is_tensor(t):
            out.append(t)
        elif isinstance(t, torch.nn.Module):
            out += list(t.parameters()) + list(t.buffers())
        elif isinstance(t, torch.optim.Optimizer):
            out += [v for s in t.state.values() for v in s.values() if torch.is_tensor(v)]
        elif isinstance(t, (list, tuple)):
            out += tensors_of(t)
        elif t is not None:
            raise TypeError(f'cannot take the tensors of a {type(t).__name__}')
    return out


def _outputs(out):
    """The tensors of a step's outputs (a tensor, or dicts, lists and tuples of them), in a fixed order."""
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _outputs(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _outputs(v)]
    return []


class CheckFailed(Exception):
    pass


class Graphed:
    """fn() replayed as one CUDA graph once `warmup` eager calls have run, and checked (module docstring); with
    enabled=False a plain call of fn. state: what fn changes (tensors, modules, optimisers, read at each check:
    an optimiser's state made in the warm-up is in), which a check copies and puts back; device: where the step
    runs (default: its first generator's device)."""

    def __init__(self, fn, generators=(), enabled=False, name='step', warmup=2, state=(), device=None):
        self.fn, self.generators, self.name, self.warmup, self.state = fn, list(generators), name, warmup, state
        self.recorder = RECORDER
        self.enabled = enabled and self.recorder.accepts(self.generators)
        self.device = device if device is not None else next((g.device for g in self.generators if g is not None),
                                                              None)
        self.calls = self.replays = 0
        self.graph = self.out = None
        self.must_move = set()  # indices of the state's floating tensors that the checked steps moved

    @property
    def replaying(self):
        return self.graph is not None

    def __call__(self):
        if _AUDIT:
            with _AUDIT[-1].step(self.name, self.generators):
                return self.fn()
        if not self.enabled:
            return self.fn()
        with self._on_device():
            if self.graph is None and self.calls < self.warmup:
                self.calls += 1
                return self.recorder.side_stream(self.fn)
            if self.graph is None:
                try:
                    self.graph, self.out = self.recorder.record(self.fn, self.generators)
                except Exception as e:  # whatever stops the recording, the eager step is still right
                    self._fall_back(f'recording a CUDA graph failed ({_reason(e)})')
                    return self.fn()
                self.replays = 0
            self.replays += 1
            r = self.replays
            if r <= CHECKED:
                return self._checked()
            if r & (r - 1) == 0:  # a power of two
                return self._watched()
            self.recorder.replay(self.graph)
            return self.out

    def rerecord(self):
        """Record again at the next call (something the recording holds as a constant changed, e.g. a learning
        rate); the warm-up is not repeated, the checks are."""
        if self.graph is not None:
            self.recorder.release(self.graph)
        self.graph = self.out = None
        self.must_move = set()

    def _on_device(self):
        return self.recorder.device(self.device) if self.device is not None else contextlib.nullcontext()

    def _tensors(self):
        return tensors_of(self.state)

    def _snapshot(self):
        return [t.detach().clone() for t in self._tensors()], [g.get_state() for g in self.generators]

    def _restore(self, snapshot):
        tensors, gens = snapshot
        with torch.no_grad():
            for t, s in zip(self._tensors(), tensors):
                t.copy_(s)
        for g, s in zip(self.generators, gens):
            g.set_state(s)

    def _checked(self):
        """Replay, compared with an eager step from the same state and generator states; the eager result on a
        mismatch."""
        before = self._snapshot()
        eager_out = self.fn()
        eager = ([t.detach().clone() for t in self._tensors()], [g.get_state() for g in self.generators])
        eager_outputs = [t.detach().clone() for t in _outputs(eager_out)]
        self._restore(before)
        self.recorder.replay(self.graph)
        try:
            after = self._tensors()
            if len(after) != len(before[0]):
                raise CheckFailed(f'the step made new state ({len(before[0])} tensors before, {len(after)} after)')
            for i, (b, e, r) in enumerate(zip(before[0], eager[0], after)):
                _compare(f'state tensor {i} {tuple(r.shape)}', r, e, b)
                if r.is_floating_point() and not torch.equal(e, b):
                    self.must_move.add(i)
            for i, (e, r) in enumerate(zip(eager_outputs, _outputs(self.out))):
                _compare(f'output {i}', r, e, torch.zeros_like(e))
        except CheckFailed as e:
            self._restore(eager)
            self._fall_back(f'replay {self.replays} does not match an eager step: {e}')
            return eager_out
        PASSED[self.name] += 1
        return self.out

    def _watched(self):
        """Replay, which must move every tensor the checked steps moved; the eager step from the same state when
        it does not."""
        before = self._snapshot()
        self.recorder.replay(self.graph)
        after = self._tensors()
        still = [i for i in sorted(self.must_move) if i < len(after) and torch.equal(after[i], before[0][i])]
        if not still:
            return self.out
        self._restore(before)
        self._fall_back(f'replay {self.replays} left {len(still)} tensor(s) it must change unchanged '
                        f'(state tensor {still[0]})')
        return self.fn()

    def _fall_back(self, reason):
        graph, self.graph, self.out, self.enabled = self.graph, None, None, False
        self.recorder.release(graph)
        FALLBACKS.append((self.name, reason))
        print(f'warning: {self.name}: {reason}; running it eagerly (--cuda_graphs off skips the attempt)',
              file=sys.stderr)


def _reason(e):
    return f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'


def _compare(what, replayed, eager, before):
    """CheckFailed unless `replayed` is within TOLERANCE of the eager step's change from `before`."""
    if replayed.shape != eager.shape:
        raise CheckFailed(f'{what}: shape {tuple(replayed.shape)}, eager {tuple(eager.shape)}')
    r, e, b = (t.detach().double() for t in (replayed, eager, before))
    if not torch.equal(torch.isfinite(r), torch.isfinite(e)):
        raise CheckFailed(f'{what}: non-finite values where the eager step has others')
    finite = torch.isfinite(e)
    r, e, b = r[finite], e[finite], b[finite]
    if not len(e):
        return
    miss = float((r - e).abs().max())
    allowed = TOLERANCE * float((e - b).abs().max()) + ROUNDING * float(e.abs().max())
    if miss > allowed:
        raise CheckFailed(f'{what} differs by {miss:.3g}, allowed {allowed:.3g}')


# ----------------------------------------------------------------------------------------------------------------
# What a recorded step may not do, checked on any device (tests/test_graphs.py, bench/host_overhead.py)

_AUDIT = []
# ops that read a device value back to the host (the host waits for the device, and a recording fails)
_SYNCING = {'_local_scalar_dense', 'item', 'nonzero', 'unique', '_unique', '_unique2', 'unique_dim',
            'unique_consecutive', 'masked_select', 'is_nonzero', 'equal', 'bincount', 'allclose'}
_RANDOM = {'rand', 'randn', 'randint', 'randperm', 'rand_like', 'randn_like', 'randint_like', 'uniform', 'normal',
           'random', 'bernoulli', 'multinomial', 'exponential', 'cauchy', 'geometric', 'log_normal', 'poisson'}


class Audit(TorchDispatchMode):
    """While active (`with audited() as audit:`), every Graphed call runs eagerly. The first call of each step is
    its warm-up (lazy set-up such as optimiser state happens there, and is never recorded); every later call is
    checked and its aten ops counted (audit.ops[name] over audit.checked[name] calls): audit.problems lists, per
    step name, each op that reads a value back to the host, each random draw from a generator the step was not
    given (a recording would replay a stale state) or from the global generator, each tensor made from Python data
    and each copy between the host and a device. A tensor made without naming its device is made on the meta
    device during a checked call, so such a step fails where it meets the step's own tensors."""

    def __init__(self):
        super().__init__()
        self.ops, self.calls, self.checked = collections.Counter(), collections.Counter(), collections.Counter()
        self.problems = []
        self._name, self._generators = None, ()

    @contextlib.contextmanager
    def step(self, name, generators):
        self.calls[name] += 1
        if self.calls[name] == 1:
            yield
            return
        self.checked[name] += 1
        outer = self._name, self._generators
        self._name, self._generators = name, tuple(generators)
        try:
            # A tensor made without naming its device would be made on the host in a GPU step; here it is made
            # on the meta device, so that the step fails where it would meet the step's own tensors.
            with self, torch.device('meta'):
                yield
        finally:
            self._name, self._generators = outer

    def per_call(self, name):
        """aten ops per checked call of the step `name`."""
        return self.ops[name] / max(self.checked[name], 1)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[self._name] += 1
        for problem in self._check(func, args, kwargs):
            self.problems.append(f'{self._name}: {func}: {problem}')
        return func(*args, **kwargs)

    def _check(self, func, args, kwargs):
        op = func.overloadpacket.__name__.rstrip('_')
        if op in _SYNCING or (op == 'repeat_interleave' and kwargs.get('output_size') is None):
            yield 'reads a value back to the host'
        if op in ('index', 'index_put') and any(torch.is_tensor(t) and t.dtype == torch.bool
                                                for t in (args[1] if len(args) > 1 else ()) if t is not None):
            yield 'boolean-mask indexing reads the mask back to the host'
        if op in _RANDOM:
            gen = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Generator)), None)
            if gen is None:
                yield 'draws from the global random generator'
            elif not any(_same(gen, g) for g in self._generators):
                yield 'draws from a generator the step was not given'
        if op in ('lift_fresh', 'lift_fresh_copy'):
            yield 'makes a tensor from Python data (a host copy on a GPU)'
        if op == '_to_copy' and torch.is_tensor(args[0]) and kwargs.get('device') is not None \
                and (args[0].device.type == 'cpu') != (torch.device(kwargs['device']).type == 'cpu'):
            yield 'copies between the host and a device'
        if op == 'copy' and len(args) > 1 and torch.is_tensor(args[1]) \
                and (args[0].device.type == 'cpu') != (args[1].device.type == 'cpu'):
            yield 'copies between the host and a device'


def _same(a, b):
    # a generator reaches a dispatch mode in a new Python wrapper: same device and seed (named streams' seeds are
    # 63-bit hashes) identify it
    return a.device == b.device and a.initial_seed() == b.initial_seed()


@contextlib.contextmanager
def audited():
    """Audit every Graphed step called inside the block (Audit)."""
    audit = Audit()
    _AUDIT.append(audit)
    try:
        yield audit
    finally:
        _AUDIT.pop()

"""CUDA graph replay of a step: the host launches a whole iteration with one call instead of hundreds of kernels.

A step qualifies when it has static shapes, never makes the host wait for the device (no `.item()`, `nonzero`,
host-side random draws or host copies; tests/test_graphs.py audits every captured step), and draws every random
number from generators given to `Graphed`. The caller seeds those generators before each call, so call i draws
exactly what an eager call with the same seeds draws: a replay repeats the eager step, float rounding of
non-deterministic kernels aside (bench/gpu_check.py compares them on a card).

    step = Graphed(fn, generators=[g], enabled=graphs_enabled(device, args.cuda_graphs), name='DM step')
    for it in ...:
        g.manual_seed(derive_seed(seed, 'dm', it))
        out = step()             # fn's outputs; with a graph they are overwritten by the next call

The first `warmup` calls run eagerly on a side stream, so that lazy set-up (cuDNN's algorithm search, optimiser
state, the allocator) happens outside the recording; the next call records fn and replays it; later calls replay.
Recording does not run fn, so no call is lost. A recording that fails prints one warning line and the step runs
eagerly from then on: slower, never wrong.
"""
import collections
import contextlib
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from condensation.device import parallel

FALLBACKS = []  # (step name, reason) of every recording that failed in this process (bench/gpu_check.py reports them)


def graphs_enabled(device, mode='on'):
    """Whether steps on `device` are replayed as CUDA graphs under --cuda_graphs `mode`: on CUDA, in one process
    (a collective inside a recording would need NCCL's graph support, which is not assumed)."""
    return (mode == 'on' and torch.device(device).type == 'cuda' and parallel.world_size() == 1
            and hasattr(torch.cuda.CUDAGraph, 'register_generator_state'))


class Graphed:
    """fn() replayed as one CUDA graph once `warmup` eager calls have run (module docstring); with enabled=False
    a plain call of fn."""

    def __init__(self, fn, generators=(), enabled=False, name='step', warmup=2):
        self.fn, self.generators, self.name, self.warmup = fn, list(generators), name, warmup
        # A draw from a generator off the GPU can be neither recorded nor reseeded in a replay: such a step runs
        # eagerly (e.g. a DM or DC step whose streams are drawn on the host).
        self.enabled = enabled and all(g is not None and g.device.type == 'cuda' for g in self.generators)
        self.calls = 0
        self.graph = None
        self.out = None

    @property
    def replaying(self):
        return self.graph is not None

    def __call__(self):
        if _AUDIT:
            with _AUDIT[-1].step(self.name, self.generators):
                return self.fn()
        if not self.enabled:
            return self.fn()
        if self.graph is None and self.calls < self.warmup:
            self.calls += 1
            return _on_side_stream(self.fn)
        if self.graph is None:
            try:
                self._record()
            except Exception as e:  # whatever stops the recording, the eager step is still right
                self.enabled, self.graph = False, None
                torch.cuda.synchronize()
                reason = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
                FALLBACKS.append((self.name, reason))
                print(f'warning: {self.name}: recording a CUDA graph failed ({reason}); running it eagerly '
                      f'(--cuda_graphs off skips the attempt)', file=sys.stderr)
                return self.fn()
        self.graph.replay()
        return self.out

    def rerecord(self):
        """Record again at the next call (something the recording holds as a constant changed, e.g. a learning
        rate); the warm-up is not repeated."""
        self.graph = self.out = None

    def _record(self):
        graph = torch.cuda.CUDAGraph()
        for g in self.generators:
            graph.register_generator_state(g)
        with torch.cuda.graph(graph):
            out = self.fn()
        self.graph, self.out = graph, out


def _on_side_stream(fn):
    """fn() on a fresh stream that waits for, and is waited on by, the current one."""
    main, side = torch.cuda.current_stream(), torch.cuda.Stream()
    side.wait_stream(main)
    with torch.cuda.stream(side):
        out = fn()
    main.wait_stream(side)
    return out


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

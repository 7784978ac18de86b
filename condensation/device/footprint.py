"""What a run will hold in memory, estimated before it starts, against what the device has: a run that cannot fit
is refused with one line that states both, instead of running for minutes first or being killed by the kernel.

The estimates count what grows with the flags (images per class, batch sizes, image size): the synthetic set with
its gradient, optimiser state and copies, the activations autograd keeps for the backward pass (counted on the meta
device, so exactly for the network at hand and without memory or compute), decoded images. What does not grow
with the flags (the network's weights, the real data, which is loaded before) is left out, so an estimate is a
lower bound and a refused run could not have fitted. With CUDA graphs (graphs_pool_bytes) each recorded step's
private memory pool is counted too: an estimate (the step's activations and set-sized tensors), not a measurement.

The limit is the environment variable CONDENSE_MEMORY_LIMIT when it is set (bytes, or a number with K, M, G or
T), else the device's free memory: a GPU's as CUDA reports it, the CPU's available memory (MemAvailable, and a
cgroup's limit where that is lower).
"""
import os
import re

import torch

from condensation.common import UserError
from condensation.device import parallel
from condensation.device.graphs import graphs_enabled
from condensation.networks import get_network

ENV = 'CONDENSE_MEMORY_LIMIT'
_UNITS = {'': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40}


def memory_limit(device):
    """Bytes a run may use on `device` (see the module's doc); None where it cannot be known."""
    value = os.environ.get(ENV)
    if value:
        m = re.fullmatch(r'\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*', value, re.I)
        if not m:
            raise UserError(f'{ENV}={value}: expected a size such as 512M or 8G')
        return int(float(m[1]) * _UNITS[m[2].upper()])
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    return _cpu_available()


def _read_int(path, field=None):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    if field is not None:
        m = re.search(rf'^{field}:\s*(\d+) kB', text, re.M)
        return int(m[1]) * 1024 if m else None
    return int(text) if text.strip().isdigit() else None  # 'max': no cgroup limit


def _cpu_available():
    limits = [_read_int('/proc/meminfo', 'MemAvailable')]
    v1 = '/sys/fs/cgroup/memory/memory.'
    for limit, usage in (('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'),  # cgroup v2
                         (v1 + 'limit_in_bytes', v1 + 'usage_in_bytes')):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None:
            limits.append(max(cap - used, 0))
    if limits[0] is None and hasattr(os, 'sysconf'):  # no /proc (macOS): the physical memory
        try:
            limits.append(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))
        except (ValueError, OSError):
            pass
    limits = [v for v in limits if v is not None]
    return min(limits) if limits else None


def gib(n):
    return f'{n / 2 ** 30:.1f} GiB' if n >= 2 ** 30 else f'{n / 2 ** 20:.1f} MiB'


def check_fits(need, device, what, advice):
    """UserError (one line: the estimate and the limit) when `need` bytes exceed what `device` has."""
    limit = memory_limit(device)
    if limit is not None and need > limit:
        source = ENV if os.environ.get(ENV) else f'{torch.device(device).type.upper()} memory available'
        raise UserError(f'{what} needs at least {gib(need)} of memory, more than the {gib(limit)} of {source}; '
                        f'{advice}')


def activation_bytes(net, shape, forward='embed'):
    """Bytes autograd keeps for the backward pass per input of `shape` (C, H, W) through `net` (built on the meta
    device), in train mode, through net.embed or the whole network (forward '__call__')."""
    def saved(n):
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t
        x = torch.empty(n, *shape, device='meta', requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            getattr(net.train(), forward)(x)
        return total
    return saved(2) - saved(1)  # the weights, saved once per forward, cancel


def set_bytes(num_images, shape):
    """float32 images."""
    return 4 * num_images * shape[0] * shape[1] * shape[2]


def condensation_bytes(args, data, method):
    """A DM or DC/DSA synthesis of data.num_classes x args.ipc images: the set (the images, their gradient and
    momentum, an augmented copy and a checkpoint's copy) and the activations of one backward pass. DM embeds this
    process's classes at once (one class at a time with --per_class); DC/DSA match one class's synthetic and real
    images through a second-order graph (counted twice) and train the network on --batch_train images."""
    shape = (data.channel, *data.im_size)
    net = get_network(args.model, data.channel, data.num_classes, data.im_size, device='meta')
    if method == 'DM':
        graph = args.ipc * (1 if args.per_class else len(parallel.share(data.num_classes)))
        per_image = activation_bytes(net, shape, 'embed')
    else:
        graph = max(2 * (args.ipc + args.batch_real), args.batch_train)
        per_image = activation_bytes(net, shape, '__call__')
    if getattr(args, 'amp', 'off') == 'bf16':
        per_image //= 2  # autocast keeps most activations in bfloat16
    images = set_bytes(data.num_classes * args.ipc, shape)
    recorded = 1 if method == 'DM' else 2  # DC/DSA record the matching pass and the inner epochs apart
    pools = graphs_pool_bytes(recorded, graph * per_image, images) if graphs_enabled(
        args.device, getattr(args, 'cuda_graphs', 'on')) else 0
    return 5 * images + graph * per_image + pools


def graphs_pool_bytes(steps, activations, images):
    """An estimate of what replaying `steps` recorded steps adds on CUDA: each graph's private pool keeps its
    step's transient memory (about `activations`, plus the set's gradient) beside the blocks that the eager warm-up
    left in the caching allocator, and the check of the first replays copies the set and its momentum twice (the
    state before, the eager step's result)."""
    return steps * (activations + images) + 4 * images

"""Several processes under `torchrun`: which process this is, which share of the work is its own, and the few
collectives the scripts need.

    torchrun --standalone --nproc_per_node 8 main_DM.py --dataset CIFAR10 --ipc 50 ...

torchrun starts one process per GPU (or per CPU slot) and tells each its RANK and WORLD_SIZE in the environment.
Without torchrun there is one process: every function here is then the single-process identity and
torch.distributed is never imported, so a plain run pays nothing for this module.

What the scripts split (docs/design.md, "More than one process"):
- DM and DC/DSA: the classes of every matching step (`share`); the image gradients are summed over the processes
  (`sum_`) and every process takes the same image step, so each holds the whole synthetic set.
- evaluation: the networks of a pool (`share`), their accuracies gathered (`gather`).
- the files: rank 0 alone writes them (utils' writers and Log check `is_main`).
"""
import os
from datetime import timedelta

import torch

# A rank that crashes makes torchrun stop the others; the timeout only ends collectives that wait on a rank that
# hangs. It must outlast the longest stretch without a collective (evaluation networks of uneven shares on a CPU).
TIMEOUT = timedelta(minutes=float(os.environ.get('CONDENSE_DIST_TIMEOUT_MIN', 60)))


def world_size():
    return int(os.environ.get('WORLD_SIZE', 1))


def rank():
    return int(os.environ.get('RANK', 0)) if world_size() > 1 else 0


def is_main():
    """Rank 0: the process that writes files and logs (a lone process always is, whatever RANK a cluster's
    environment may hold)."""
    return world_size() == 1 or rank() == 0


def start(device):
    """Join torchrun's process group (once): NCCL between GPUs, gloo between CPU processes. Returns this process's
    device: 'cuda' becomes cuda:<LOCAL_RANK>, one GPU per process. One process: `device` unchanged. The device and
    torchrun's variables are checked before (utils.check_device)."""
    if world_size() == 1:
        return device
    import torch.distributed as dist
    cuda = torch.device(device).type == 'cuda'
    if cuda:
        device = f'cuda:{int(os.environ.get("LOCAL_RANK", 0))}'
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group('nccl' if cuda else 'gloo', timeout=TIMEOUT)
        import atexit
        atexit.register(_stop)
    return device


def _stop():
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


def processes():
    """For a log's first line: how the run is spread ('' for one process)."""
    n = world_size()
    return '' if n == 1 else f' x {n} torchrun processes (rank 0 writes)'


def share(n):
    """This process's share of n items (classes, networks): a contiguous block, in rank order; the blocks' sizes
    differ by one at most (n % world_size of them, spread over the ranks, take one more). A process may get none."""
    size, r = world_size(), rank()
    return range(n * r // size, n * (r + 1) // size)


def sum_(*tensors):
    """Each tensor replaced in place by its sum over the processes. A gradient that only this process computed for
    some rows holds exact zeros elsewhere, so the sum puts every process's rows together without rounding."""
    if world_size() == 1:
        return
    import torch.distributed as dist
    for t in tensors:
        dist.all_reduce(t)


def sum_grad(tensor):
    """tensor.grad summed over the processes (zeros where a process left it None)."""
    if world_size() == 1:
        return
    if tensor.grad is None:
        tensor.grad = torch.zeros_like(tensor)
    sum_(tensor.grad)


def average_gradients(optimizer):
    """Data parallelism for a model whose processes see different batches (DDP's rule): before every step of
    `optimizer` its gradients are averaged over the processes, so the replicas take the same step and stay equal.
    Every process must give every parameter a gradient (a missing one counts as zeros). One process: nothing."""
    if world_size() == 1:
        return
    import torch.distributed as dist
    params = [p for group in optimizer.param_groups for p in group['params'] if p.requires_grad]

    def hook(*_):
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= world_size()
        for p, g in zip(params, flat.split([g.numel() for g in grads])):
            p.grad = g.view_as(p)
    optimizer.register_step_pre_hook(hook)


def broadcast_buffers(*modules):
    """Rank 0's buffers (BatchNorm running statistics) on every process: replicas that normalised different
    batches agree again before a checkpoint or an eval-mode pass."""
    if world_size() == 1:
        return
    import torch.distributed as dist
    for module in modules:
        for b in module.buffers():
            dist.broadcast(b, 0)


def gather(obj):
    """Every process's obj (picklable), in rank order, on every process; [obj] for one process."""
    if world_size() == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out

"""DM: the distribution-matching loss and one DM step (Zhao & Bilen, Dataset Condensation with Distribution
Matching, WACV 2023). main_DM.py runs the experiment loop; cl.py builds continual-learning memories with the same step.

Two ways to run a step, the same algorithm and loss. On the CPU every draw comes from CPU generators (the project's
reference streams). On a GPU the step is device-resident: the network's weights, the real-image indices and the DSA
parameters are drawn by generators on the GPU, and nothing is read back to the host inside an iteration, so the
GPU never waits for Python. The two draw different numbers for the same seed (docs/benchmarks.md).
"""
import weakref

import torch

import parallel
from augment import apply_dsa, sample_dsa_params, select_params
from networks import get_network
from utils import autocast, class_means, make_generator


def pick_real(data, batch_real, generator):
    """Indices of batch_real random images of every class (all of a smaller class), class by class, and each
    one's class."""
    picks = [idx[torch.randperm(len(idx), generator=generator)[:batch_real]] for idx in data.indices_class]
    return torch.cat(picks), real_classes(data, batch_real)


def real_classes(data, batch_real):
    """The class of every row of a real batch (pick_real's layout), on the CPU."""
    return torch.cat([torch.full((min(len(idx), batch_real),), c) for c, idx in enumerate(data.indices_class)])


def sample_real(data, batch_real, generator):
    """batch_real random images of every class in one gather, with each image's class."""
    idx, cls = pick_real(data, batch_real, generator)
    return data.images(idx), cls


_TABLES = weakref.WeakKeyDictionary()  # data -> its class index table on the device, built once


def _class_table(data, batch_real, device):
    """(K x n_max table of each class's indices, padding mask, class of every pick, kept flat positions or None)."""
    key = (batch_real, str(device))
    tables = _TABLES.setdefault(data, {})
    if key not in tables:
        sizes = [len(idx) for idx in data.indices_class]
        n_max, take = max(sizes), [min(n, batch_real) for n in sizes]
        table = torch.zeros(len(sizes), n_max, dtype=torch.long)
        for c, idx in enumerate(data.indices_class):
            table[c, :len(idx)] = idx
        pad = torch.arange(n_max)[None] >= torch.tensor(sizes)[:, None]
        cls = torch.cat([torch.full((n,), c) for c, n in enumerate(take)])
        width = min(batch_real, n_max)
        keep = None if min(take) == width else torch.cat([c * width + torch.arange(n) for c, n in enumerate(take)])
        tables[key] = tuple(None if t is None else t.to(device) for t in (table, pad, cls, keep))
    return tables[key]


def pick_real_resident(data, batch_real, generator):
    """pick_real's distribution and layout (batch_real images of every class without replacement; all of a smaller
    class) drawn on the generator's device in one call: each class takes its batch_real smallest of uniform keys."""
    table, pad, cls, keep = _class_table(data, batch_real, generator.device)
    keys = torch.rand(table.shape, generator=generator, device=table.device).masked_fill_(pad, 2.0)
    picks = table.gather(1, keys.topk(min(batch_real, table.shape[1]), 1, largest=False).indices).flatten()
    return (picks if keep is None else picks[keep]), cls


def sample_real_resident(data, batch_real, generator):
    idx, cls = pick_real_resident(data, batch_real, generator)
    return data.images(idx), cls


def to_device(t, device):
    """t on device without making the host wait: a CPU tensor bound for CUDA goes through pinned memory (a copy
    from pageable memory synchronises)."""
    if t.device.type != 'cpu' or torch.device(device).type != 'cuda':
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def embed_real(net, images, chunk=None, amp='off'):
    """Real features are constants of the loss: no graph, optionally in chunks (exact: each row is independent)."""
    with torch.no_grad(), autocast(images.device, amp):
        if not chunk:
            return net.embed(images).float()
        return torch.cat([net.embed(x).float() for x in images.split(chunk)])


def dm_loss(net, real, real_cls, syn, syn_cls, num_classes, params=None, param=None, real_chunk=None, amp='off'):
    """Σ_c ‖mean embed(real_c) − mean embed(syn_c)‖² over the classes present, all classes in one forward each.

    params: one DSA parameter set per class (None: no augmentation), applied Siamese to both sides; param: the
    ParamDiffAug. For BN models this is the reference's joint branch: batch statistics over all classes per side.
    amp 'bf16': both forwards in bfloat16 autocast, the means and the distance in float32.
    """
    if params is not None:
        real = apply_dsa(real, select_params(params, real_cls), param)
        syn = apply_dsa(syn, select_params(params, syn_cls), param)
    mean_real = class_means(embed_real(net, real, real_chunk, amp), real_cls, num_classes)
    with autocast(syn.device, amp):
        emb_syn = net.embed(syn)
    mean_syn = class_means(emb_syn.float(), syn_cls, num_classes)
    return ((mean_real - mean_syn) ** 2).sum()


def dm_backward(net, real, real_cls, image_syn, syn_cls, num_classes, params=None, param=None, real_chunk=None,
                per_class=False, amp='off', classes=None):
    """Accumulate ∂L/∂image_syn and return L, a detached tensor (read it when logging: reading it syncs a GPU).
    per_class keeps one class's graph alive at a time; since L_c depends only on class c's images, the gradient
    is the same as the joint one. classes: those per_class visits (default: all)."""
    if not per_class:
        loss = dm_loss(net, real, real_cls, image_syn, syn_cls, num_classes, params, param, real_chunk, amp)
        loss.backward()
        return loss.detach()
    total = torch.zeros((), device=image_syn.device)
    for c in range(num_classes) if classes is None else classes:
        rows_r, rows_s = (real_cls == c).nonzero()[:, 0], (syn_cls == c).nonzero()[:, 0]
        sub = None if params is None else select_params(params, torch.tensor([c]))
        loss = dm_loss(net, real[rows_r.to(real.device)], torch.zeros_like(rows_r), image_syn[rows_s.to(real.device)],
                       torch.zeros_like(rows_s), 1, sub, param, real_chunk, amp)
        loss.backward()
        total = total + loss.detach()
    return total


def frozen_network(model, data, device, generator):
    """A freshly initialised network that is never trained: train mode (BN normalises with the batch's own
    statistics) and no gradient for its weights, only for its inputs."""
    net = get_network(model, data.channel, data.num_classes, data.im_size, device=device, generator=generator)
    net.train()
    net.requires_grad_(False)
    return net


def dm_step(args, data, image_syn, syn_cls, optimizer, seed, keys):
    """One DM iteration: a freshly initialised, frozen network; batch_real real images of every class; one Siamese
    DSA parameter set per class; the loss; one SGD step on the images. Every draw comes from the streams
    (seed, 'dm_net' | 'dm_batch', *keys), keys = (exp, it) in main_DM.py, so a resumed run repeats it.
    Device-resident (the default off the CPU; args.resident overrides) draws them with generators on args.device.
    Returns the loss, a detached 0-d tensor on the device."""
    device = torch.device(args.device)
    resident = getattr(args, 'resident', None)
    resident = device.type != 'cpu' if resident is None else resident
    gen_device = device if resident else 'cpu'
    net = frozen_network(args.model, data, device, make_generator(seed, 'dm_net', *keys, device=gen_device))
    channels_last = getattr(args, 'channels_last', None)
    if device.type == 'cpu' if channels_last is None else channels_last:
        # oneDNN's convolutions run faster on channels-last weights (the inputs follow); same math, float rounding.
        net = net.to(memory_format=torch.channels_last)
    g = make_generator(seed, 'dm_batch', *keys, device=gen_device)
    idx, real_cls = (pick_real_resident if resident else pick_real)(data, args.batch_real, g)
    params = sample_dsa_params(args.dsa_strategy, data.num_classes, g, args.dsa_param) if args.dsa else None
    syn, classes = image_syn, parallel.share(data.num_classes)
    if parallel.world_size() > 1:
        # Under torchrun each process matches its share of the classes (every process drew the whole batch, so
        # the streams stay aligned). L = Σ_c L_c and class c's images enter L_c alone: the processes' gradients
        # summed are the joint gradient.
        rows = _rows_of(real_classes(data, args.batch_real), classes)
        idx, real_cls = idx[rows], real_cls[rows]
        rows = _rows_of(syn_cls, classes)
        syn, syn_cls = image_syn[rows], syn_cls[rows]
    real = data.images(idx)
    syn_cls = to_device(syn_cls, gen_device)
    optimizer.zero_grad(set_to_none=True)
    loss = torch.zeros((), device=image_syn.device)  # a process without classes (more processes than classes)
    if len(classes):
        loss = dm_backward(net, real, real_cls, syn, syn_cls, data.num_classes, params, args.dsa_param,
                           args.real_chunk, args.per_class, getattr(args, 'amp', 'off'), classes)
    parallel.sum_grad(image_syn)
    parallel.sum_(loss)
    optimizer.step()
    return loss


def _rows_of(cls, classes):
    """The rows of a CPU class vector whose class is in the range `classes` (a slice when they are contiguous)."""
    rows = ((cls >= classes.start) & (cls < classes.stop)).nonzero()[:, 0]
    contiguous = len(rows) and rows[-1] - rows[0] + 1 == len(rows)
    return slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else rows

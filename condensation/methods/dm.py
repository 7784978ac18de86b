"""DM: the distribution-matching loss and one DM step (Zhao & Bilen, Dataset Condensation with Distribution
Matching, WACV 2023). main_DM.py runs the experiment loop; cl.py builds continual-learning memories with the same step.

Two ways to run a step, the same algorithm and loss. On the CPU every draw comes from CPU generators (the project's
reference streams). On a GPU the step is device-resident: the network's weights, the real-image indices and the DSA
parameters are drawn by generators on the GPU, and nothing is read back to the host inside an iteration, so the
GPU never waits for Python. The two draw different numbers for the same seed (docs/benchmarks.md).
"""
import copy
import weakref

import torch

from condensation.device import parallel
from condensation.augment import apply_dsa, sample_dsa_params, select_params
from condensation.device.graphs import Graphed, graphs_enabled
from condensation.networks import get_network, init_weights
from condensation.common import autocast, class_means, derive_seed


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


def embed_real(net, images, chunk=None, amp='off'):
    """Real features are constants of the loss: no graph, optionally in chunks (exact: each row is independent).
    A network with bfloat16 weights (DMStep's low-precision twin) takes bfloat16 channels-last images: every
    activation stays bfloat16, where autocast would run its normalisation layers in float32."""
    dtype = next(net.parameters()).dtype
    if dtype != torch.float32:
        images, amp = images.to(dtype, memory_format=torch.channels_last), 'off'
    with torch.no_grad(), autocast(images.device, amp):
        if not chunk:
            return net.embed(images).float()
        return torch.cat([net.embed(x).float() for x in images.split(chunk)])


def dm_loss(net, real, real_cls, syn, syn_cls, num_classes, params=None, param=None, real_chunk=None, amp='off',
            real_net=None):
    """Σ_c ‖mean embed(real_c) − mean embed(syn_c)‖² over the classes present, all classes in one forward each.

    params: one DSA parameter set per class (None: no augmentation), applied Siamese to both sides; param: the
    ParamDiffAug. For BN models this is the reference's joint branch: batch statistics over all classes per side.
    amp 'bf16': both forwards in bfloat16 autocast, the means and the distance in float32. real_net: the network
    that embeds the real images, when not `net` itself (a bfloat16 twin of it, see embed_real).
    """
    if params is not None:
        real = apply_dsa(real, select_params(params, real_cls), param)
        syn = apply_dsa(syn, select_params(params, syn_cls), param)
    mean_real = class_means(embed_real(real_net or net, real, real_chunk, amp), real_cls, num_classes)
    with autocast(syn.device, amp):
        emb_syn = net.embed(syn)
    mean_syn = class_means(emb_syn.float(), syn_cls, num_classes)
    return ((mean_real - mean_syn) ** 2).sum()


def dm_backward(net, real, real_cls, image_syn, syn_cls, num_classes, params=None, param=None, real_chunk=None,
                class_rows=None, amp='off', real_net=None):
    """Accumulate ∂L/∂image_syn and return L, a detached tensor (read it when logging: reading it syncs a GPU).
    class_rows [(c, real rows of c, synthetic rows of c, tensor([c]))], when given, keeps one class's graph alive at
    a time (--per_class); since L_c depends only on class c's images, the gradient is the same as the joint one."""
    if class_rows is None:
        loss = dm_loss(net, real, real_cls, image_syn, syn_cls, num_classes, params, param, real_chunk, amp, real_net)
        loss.backward()
        return loss.detach()
    total = torch.zeros((), device=image_syn.device)
    for c, rows_r, rows_s, c_tensor in class_rows:
        sub = None if params is None else select_params(params, c_tensor)
        loss = dm_loss(net, real[rows_r], torch.zeros_like(rows_r), image_syn[rows_s], torch.zeros_like(rows_s), 1,
                       sub, param, real_chunk, amp, real_net)
        loss.backward()
        total = total + loss.detach()
    return total


def class_rows(real_cls, syn_cls, classes, device='cpu', param_device='cpu'):
    """dm_backward's per-class rows, found once for a run (finding them inside a step would read the labels back
    to the host): [(c, real rows of c, synthetic rows of c, tensor([c]) for select_params)] for c in classes."""
    return [(c, (real_cls == c).nonzero()[:, 0].to(device), (syn_cls == c).nonzero()[:, 0].to(device),
             torch.tensor([c], device=param_device)) for c in classes]


# Real images per CPU thread in one chunk of a DM step's real forward (default_real_chunk)
_REAL_PER_THREAD = 16


def default_real_chunk(model, device):
    """How many real images a DM step embeds at a time unless told: on the CPU, for a model without BN, 16 per
    torch thread (32 with 2 threads, 256 with 16); otherwise all at once (None). One forward of K·batch_real images
    makes activations of gigabytes that spill every cache, and the first block's output is 0.5 MB per CIFAR image:
    16 images per thread keep a chunk's maps in the caches of the cores that work on it (docs/benchmarks.md: 1.5x
    faster than all at once with 256; 16 per thread another ~10 % on 1 and 2 threads). Exact: without BN every
    row is independent."""
    if 'BN' in model or torch.device(device).type != 'cpu':
        return None
    return _REAL_PER_THREAD * torch.get_num_threads()


def frozen_network(model, data, device, generator):
    """A freshly initialised network that is never trained: train mode (BN normalises with the batch's own
    statistics) and no gradient for its weights, only for its inputs."""
    net = get_network(model, data.channel, data.num_classes, data.im_size, device=device, generator=generator)
    net.train()
    net.requires_grad_(False)
    return net


class DMStep:
    """DM iterations on one synthetic set: a freshly initialised, frozen network; batch_real real images of every
    class; one Siamese DSA parameter set per class; the loss; one SGD step on the images.

        step = DMStep(args, data, image_syn, syn_cls, optimizer)
        for it in range(args.Iteration):
            loss = step(args.seed, (exp, it))     # a detached 0-d tensor on the device

    Every draw comes from the streams (seed, 'dm_net' | 'dm_batch', *keys), so a resumed run repeats it. The
    network is built once and its weights are redrawn in place at every step, with the draws a new network would
    make (the same weights). The device options are composed around the method, each in one place:
    resident (default: off the CPU) draws on the device with generators there, so that nothing is read back to the
    host inside a step; such a step is replayed as one CUDA graph on CUDA (graphs.Graphed; --cuda_graphs off runs
    it eagerly); channels_last (default: on the CPU, where oneDNN's convolutions are faster) stores the network's
    weights channels-last; the real images may go through a twin of the network (real_twin: bf16, compiled); under
    torchrun a process matches its share of the classes (ClassShare).
    """

    def __init__(self, args, data, image_syn, syn_cls, optimizer, resident=None, channels_last=None):
        self.args, self.data, self.image_syn, self.optimizer = args, data, image_syn, optimizer
        device = torch.device(args.device)
        self.resident = device.type != 'cpu' if resident is None else resident
        gen_device = device if self.resident else torch.device('cpu')
        self.g_net, self.g_batch = torch.Generator(gen_device), torch.Generator(gen_device)
        self.net = frozen_network(args.model, data, device, self.g_net)
        if device.type == 'cpu' if channels_last is None else channels_last:
            # oneDNN's convolutions run faster on channels-last weights (the inputs follow); same math, float rounding.
            self.net = self.net.to(memory_format=torch.channels_last)
        self.share = ClassShare(data, args.batch_real, syn_cls, gen_device, image_syn.device)
        self.class_rows = class_rows(self.share.real_cls, self.share.syn_cls_host, self.share.classes, device,
                                     gen_device) if args.per_class else None
        self.twin = real_twin(self.net, args, device)
        self.graphed = Graphed(self._step, [self.g_net, self.g_batch],
                               graphs_enabled(device, getattr(args, 'cuda_graphs', 'on')), name='DM step',
                               state=(image_syn, optimizer, self.net, self.twin))

    def __call__(self, seed, keys):
        self.g_net.manual_seed(derive_seed(seed, 'dm_net', *keys))
        self.g_batch.manual_seed(derive_seed(seed, 'dm_batch', *keys))
        return self.graphed().clone()  # a replay overwrites its outputs

    def _step(self):
        """The method: a new network, a real batch and DSA parameters, the loss, one step on the images."""
        args, data, image_syn, share = self.args, self.data, self.image_syn, self.share
        init_weights(self.net, self.g_net)
        if self.twin is not None:
            torch._foreach_copy_(list(self.twin.parameters()), list(self.net.parameters()))
        idx, real_cls = (pick_real_resident if self.resident else pick_real)(data, args.batch_real, self.g_batch)
        params = sample_dsa_params(args.dsa_strategy, data.num_classes, self.g_batch, args.dsa_param) if args.dsa \
            else None
        idx, real_cls = share.real(idx, real_cls)
        real, syn = data.images(idx), image_syn[share.syn_rows]
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=image_syn.device)  # a process without classes (more processes than classes)
        if len(share.classes):
            loss = dm_backward(self.net, real, real_cls, syn, share.syn_cls, data.num_classes, params, args.dsa_param,
                               args.real_chunk, self.class_rows, getattr(args, 'amp', 'off'), self.twin)
        parallel.sum_grad(image_syn)
        parallel.sum_(loss)
        self.optimizer.step()
        return loss


class ClassShare:
    """The classes this process matches (all of them in one process) and the rows of the real batch and of the
    synthetic set that hold them. Under torchrun every process draws the whole batch, so the streams stay aligned,
    and matches its share: L = Σ_c L_c and class c's images enter L_c alone, so the processes' gradients summed are
    the joint gradient. The rows of a process's classes are the same at every step."""

    def __init__(self, data, batch_real, syn_cls, gen_device, syn_device):
        self.classes = parallel.share(data.num_classes)
        split = parallel.world_size() > 1
        real_cls = real_classes(data, batch_real)
        real_rows = _rows_of(real_cls, self.classes) if split else slice(None)
        syn_rows = _rows_of(syn_cls, self.classes) if split else slice(None)
        self.real_cls, self.syn_cls_host = real_cls[real_rows], syn_cls[syn_rows]  # host copies (class_rows)
        self.real_rows = _on(real_rows, gen_device) if split else None
        self.syn_rows = _on(syn_rows, syn_device)
        self.syn_cls = self.syn_cls_host.to(gen_device)

    def real(self, idx, real_cls):
        """A drawn batch's indices and classes, cut to this process's classes."""
        if self.real_rows is None:
            return idx, real_cls
        return idx[self.real_rows], real_cls[self.real_rows]


def real_twin(net, args, device):
    """The network the real images (nearly all of a step's work) go through, refreshed from net's weights at every
    step, or None for net itself: in bfloat16 and channels-last with --amp bf16 on CUDA (embed_real), compiled with
    --compile on (inductor fuses each block's normalisation, activation and pooling; the synthetic images, which
    need a backward, stay eager)."""
    bf16 = getattr(args, 'amp', 'off') == 'bf16' and device.type == 'cuda'
    compiled = getattr(args, 'compile', 'off') == 'on'
    if not (bf16 or compiled):
        return None
    twin = copy.deepcopy(net)
    if bf16:
        twin = twin.to(torch.bfloat16).to(memory_format=torch.channels_last)
    if compiled:
        twin.embed = torch.compile(twin.embed, dynamic=False)
    return twin


def dm_step(args, data, image_syn, syn_cls, optimizer, seed, keys, **options):
    """One DM iteration on its own (DMStep's; a loop builds one DMStep and calls it, which keeps the network and,
    on CUDA, the recorded graph)."""
    return DMStep(args, data, image_syn, syn_cls, optimizer, **options)(seed, keys)


def _rows_of(cls, classes):
    """The rows of a CPU class vector whose class is in the range `classes` (a slice when they are contiguous)."""
    rows = ((cls >= classes.start) & (cls < classes.stop)).nonzero()[:, 0]
    contiguous = len(rows) and rows[-1] - rows[0] + 1 == len(rows)
    return slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else rows


def _on(rows, device):
    return rows if isinstance(rows, slice) else rows.to(device)

"""DM: the distribution-matching loss and one DM step (Zhao & Bilen, Dataset Condensation with Distribution
Matching, WACV 2023). main_DM.py runs the experiment loop; cl.py builds continual-learning memories with the same step.
"""
import torch

from augment import apply_dsa, sample_dsa_params, select_params
from networks import get_network
from utils import class_means, make_generator


def sample_real(data, batch_real, generator):
    """batch_real random images of every class in one gather, with each image's class."""
    picks = [idx[torch.randperm(len(idx), generator=generator)[:batch_real]] for idx in data.indices_class]
    cls = torch.cat([torch.full((len(p),), c) for c, p in enumerate(picks)])
    return data.images(torch.cat(picks)), cls


def embed_real(net, images, chunk=None):
    """Real features are constants of the loss: no graph, optionally in chunks (exact: each row is independent)."""
    with torch.no_grad():
        if not chunk:
            return net.embed(images)
        return torch.cat([net.embed(x) for x in images.split(chunk)])


def dm_loss(net, real, real_cls, syn, syn_cls, num_classes, params=None, param=None, real_chunk=None):
    """Σ_c ‖mean embed(real_c) − mean embed(syn_c)‖² over the classes present, all classes in one forward each.

    params: one DSA parameter set per class (None: no augmentation), applied Siamese to both sides; param: the
    ParamDiffAug. For BN models this is the reference's joint branch: batch statistics over all classes per side.
    """
    if params is not None:
        real = apply_dsa(real, select_params(params, real_cls), param)
        syn = apply_dsa(syn, select_params(params, syn_cls), param)
    mean_real = class_means(embed_real(net, real, real_chunk), real_cls, num_classes)
    mean_syn = class_means(net.embed(syn), syn_cls, num_classes)
    return ((mean_real - mean_syn) ** 2).sum()


def dm_backward(net, real, real_cls, image_syn, syn_cls, num_classes, params=None, param=None, real_chunk=None,
                per_class=False):
    """Accumulate ∂L/∂image_syn and return L. per_class keeps one class's graph alive at a time; since L_c
    depends only on class c's images, the gradient is the same as the joint one."""
    if not per_class:
        loss = dm_loss(net, real, real_cls, image_syn, syn_cls, num_classes, params, param, real_chunk)
        loss.backward()
        return loss.item()
    total = 0.0
    for c in range(num_classes):
        rows_r, rows_s = (real_cls == c).nonzero()[:, 0], (syn_cls == c).nonzero()[:, 0]
        sub = None if params is None else select_params(params, torch.tensor([c]))
        loss = dm_loss(net, real[rows_r.to(real.device)], torch.zeros_like(rows_r), image_syn[rows_s.to(real.device)],
                       torch.zeros_like(rows_s), 1, sub, param, real_chunk)
        loss.backward()
        total += loss.item()
    return total


def dm_step(args, data, image_syn, syn_cls, optimizer, seed, keys):
    """One DM iteration: a freshly initialised, frozen network; batch_real real images of every class; one Siamese
    DSA parameter set per class; the loss; one SGD step on the images. Every draw comes from the streams
    (seed, 'dm_net' | 'dm_batch', *keys), keys = (exp, it) in main_DM.py, so a resumed run repeats it.
    Returns the loss (a float)."""
    net = get_network(args.model, data.channel, data.num_classes, data.im_size, device=args.device,
                      generator=make_generator(seed, 'dm_net', *keys))
    net.train()
    for p in net.parameters():
        p.requires_grad_(False)
    if torch.device(args.device).type == 'cpu':
        # oneDNN's convolutions run faster on channels-last weights (the inputs follow); same math, float rounding.
        net = net.to(memory_format=torch.channels_last)
    g = make_generator(seed, 'dm_batch', *keys)
    real, real_cls = sample_real(data, args.batch_real, g)
    params = sample_dsa_params(args.dsa_strategy, data.num_classes, g, args.dsa_param) if args.dsa else None
    optimizer.zero_grad(set_to_none=True)
    loss = dm_backward(net, real, real_cls, image_syn, syn_cls, data.num_classes, params, args.dsa_param,
                       args.real_chunk, args.per_class)
    optimizer.step()
    return loss

"""IT-GAN: informative training samples from a frozen GAN (Zhao & Bilen, "Synthesizing Informative Training
Samples with GAN", arXiv 2204.07513), the method. main_ITGAN.py runs it.

A trained class-conditional generator G is frozen; what is learned is one latent vector z_i per stored sample, so
that the images G(z_i, y_i) train classifiers well. What is stored is G plus the latents, not images.

1. Inversion: z_i starts from N(0, I) and is optimised (Adam) so that G(z_i, y_i) reconstructs its real image x_i:
   mean squared pixel error plus feat_weight times the mean squared feature error under a freshly initialised,
   never trained network at every step.
2. IT-GAN: starting from the inverted latents, the latents (Adam) minimise the DM condensation loss (dm.dm_loss:
   class-mean embeddings of Siamese-augmented real and synthetic batches under a fresh random network) plus
   reg times  Σ_c mean_{i in c} ‖φ(A_c(G(z_i, y_i))) − φ(A_c(x_i))‖², which keeps every sample's features near those
   of the real image it was inverted from.

Image spaces: G maps to [-1, 1] (tanh); its samples are mapped to [0, 1] and standardised with the dataset's
constants, the space of the real images and of every evaluation in the project. G runs in eval mode with every
parameter frozen, so a sample depends on its own latent only and the latents regenerate it exactly.

Adapter: any module with forward(z, y) -> N x C x H x W images in [-1, 1] and a `dim_noise` (or BigGAN's `dim_z`)
attribute can stand in for G (main_ITGAN.py --generator_factory). Randomness: every draw comes from a
torch.Generator passed in or named by (seed, *keys), never the global RNG.
"""
import hashlib
import importlib
import inspect
import os

import torch

from condensation.methods import gan
from condensation.augment import apply_dsa, sample_dsa_params, select_params
from condensation.data import standardise
from condensation.methods.dm import dm_loss, embed_real, frozen_network, sample_real
from condensation.common import UserError, class_means, make_generator

# The latents start as N(0, 1) draws, and a standard normal does not pass 7 in a billion draws; an Adam step moves
# an entry by about its learning rate, so inversion and IT-GAN (1000 steps at 0.1 and 0.001 in the paper) move
# them by at most ~100. A latent beyond LATENT_LIMIT is the garbage of a diverged optimisation (docs/design.md).
LATENT_LIMIT = 1e3


# ----------------------------------------------------------------------------------------------------------------
# The frozen generator

def freeze(G):
    """G in eval mode (BN with running statistics: samples independent of their batch), no parameter trainable."""
    G.eval()
    G.requires_grad_(False)
    return G


def latent_width(G):
    """The latent size of G: `dim_noise` (this project's GAN) or `dim_z` (BigGAN's name)."""
    width = getattr(G, 'dim_noise', None) or getattr(G, 'dim_z', None)
    if not isinstance(width, int) or width <= 0:
        raise UserError(f'the generator ({type(G).__name__}) has no positive integer dim_noise or dim_z attribute: '
                        f'IT-GAN needs its latent size')
    return width


def check_generator(G, data, device):
    """UserError (one line) unless G takes the dataset's first and last class and returns its image shape."""
    expected = (data.channel, *data.im_size)
    y = torch.tensor([0, data.num_classes - 1], device=device)
    try:
        with torch.no_grad():
            x = G(torch.zeros(2, latent_width(G), device=device), y)
    except (IndexError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:150] if str(e).strip() else type(e).__name__
        raise UserError(f'the generator does not take the {data.num_classes} classes of {data.name} '
                        f'({first})') from None
    if tuple(x.shape[1:]) != expected:
        raise UserError(f'the generator makes {"x".join(map(str, x.shape[1:]))} images, {data.name} has '
                        f'{"x".join(map(str, expected))}')


def render(G, z, y, mean, std):
    """G(z, y) as a real image of the dataset: [-1, 1] -> [0, 1] -> standardised. Differentiable in z."""
    return standardise((G(z, y) + 1) / 2, mean, std, z.device)


@torch.no_grad()
def render_set(G, z, y, mean, std, chunk=500):
    """The images of a stored latent set, CPU tensors. Always in chunks of `chunk`, so that the same latents give
    the same floats on every call."""
    return torch.cat([render(G, zc, yc, mean, std).cpu() for zc, yc in zip(z.split(chunk), y.split(chunk))])


# ----------------------------------------------------------------------------------------------------------------
# Loading the generator (main_ITGAN.py --generator): this project's checkpoints, or any module through
# --generator_factory

def file_hash(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def recorded_im_size(args):
    """(--im_size, or the size the generator checkpoint's data was resized to (a DiM run's --im_size); the
    checkpoint when it was read for that, else None)."""
    if args.im_size is not None or args.generator_factory:
        return args.im_size, None
    ck = gan.read_checkpoint(args.generator, '--generator')
    return (ck.get('args') or {}).get('im_size'), ck


def project_generator(args, data, ck=None):
    """G from a gen_condense.py / pool_match.py checkpoint (ck: that checkpoint, when already read), its shape as
    the checkpoint records it."""
    ck = ck if ck is not None else gan.read_checkpoint(args.generator, '--generator')
    made = ck.get('args') or {}
    # Both sides as data.canonical_dataset spells them (a folder: its absolute path), as the DiM stages record it.
    if made.get('dataset', args.dataset) != args.dataset:
        raise UserError(f'--generator {args.generator} was trained on {made["dataset"]}, this run is on '
                        f'{args.dataset}; '
                        f'pass --dataset {made["dataset"]} or another generator')
    if made.get('im_size', args.im_size) != args.im_size:
        size = made['im_size']
        raise UserError(f'--generator {args.generator} was trained on images resized to '
                        f'{size or "their own size"}, this '
                        f'run resizes to {args.im_size}; ' + (f'pass --im_size {size}' if size else 'drop --im_size'))
    shape = {k: getattr(args, k) if getattr(args, k) is not None else made.get(k, default)
             for k, default in (('dim_noise', 100), ('cond', 'overwrite'), ('gan_width', 196))}
    G, _ = gan.build_gan(data, shape['dim_noise'], shape['cond'], shape['gan_width'], args.device,
                         make_generator(args.seed, 'gan_init'), flags='--dim_noise, --cond, --gan_width')
    state, what = gan.sampling_weights(ck)  # a --g_ema run's averaged weights
    gan.load_into(G, state, '--generator', args.generator, what)
    return G, shape


def factory_generator(args, data):
    """G from a user's FUNCTION(path, data, device) named as MODULE:FUNCTION."""
    module, _, name = args.generator_factory.partition(':')
    try:
        make = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f'--generator_factory {args.generator_factory}: cannot import it ({e})') from None
    try:
        inspect.signature(make).bind(args.generator, data, args.device)
    except TypeError:  # not callable, or another signature
        raise UserError(f'--generator_factory {args.generator_factory} is not a function of (path, data, device)') \
            from None
    except ValueError:
        pass  # a builtin without a signature: called as it is
    if not os.path.isfile(args.generator):
        raise UserError(f'--generator {args.generator}: no such file')
    G = make(args.generator, data, args.device)
    if not isinstance(G, torch.nn.Module):
        raise UserError(f'--generator_factory {args.generator_factory} returned a {type(G).__name__}, not a '
                        f'torch.nn.Module generator')
    return G.to(args.device), dict(factory=args.generator_factory)


def load_generator(args, data, ck=None):
    """(frozen G, description with path, sha256, shape and bytes); UserError for a missing, foreign or
    mismatched generator. ck: the --generator checkpoint, when already read."""
    G, shape = factory_generator(args, data) if args.generator_factory else project_generator(args, data, ck)
    G = freeze(G)
    check_generator(G, data, args.device)
    info = dict(path=os.path.abspath(args.generator), sha256=file_hash(args.generator), bytes=gan.generator_bytes(G),
                **dict(shape, dim_noise=latent_width(G)))
    return G, info


# ----------------------------------------------------------------------------------------------------------------
# Losses

def feature_gap(net, syn, real):
    """Per sample ‖embed(syn_i) − embed(real_i)‖² (summed over features); the real features are constants."""
    return ((net.embed(syn) - embed_real(net, real)) ** 2).sum(1)


def paired_loss(net, syn, real, cls, num_classes):
    """The regulariser: Σ_c mean_{i in c} ‖embed(syn_i) − embed(real_i)‖², so every class weighs as in dm_loss."""
    return class_means(feature_gap(net, syn, real)[:, None], cls, num_classes).sum()


def inversion_loss(net, syn, real, feat_weight):
    """Mean squared pixel error plus feat_weight times the mean squared feature error (both per element)."""
    pixel = ((syn - real) ** 2).mean()
    feat = feature_gap(net, syn, real).mean() / net.embed(real[:1]).shape[1] if feat_weight else 0.0
    return pixel + feat_weight * feat


def random_network(args, data, generator):
    """A freshly initialised, frozen network of args.model in train mode, as DM's."""
    return frozen_network(args.model, data, args.device, generator)


# ----------------------------------------------------------------------------------------------------------------
# Subset, inversion, IT-GAN steps

def choose_subset(data, ipc, generator):
    """Dataset indices of the real images to invert, class-major: ipc random images per class, or every training
    image when ipc is None."""
    picks = [idx if ipc is None else idx[torch.randperm(len(idx), generator=generator)[:ipc]]
             for idx in data.indices_class]
    return torch.cat(picks), torch.cat([torch.full((len(p),), c) for c, p in enumerate(picks)])


def invert(args, data, G, real_idx, labels, seed, key):
    """Latents for the real images at real_idx (one chunk, optimised together; each loss term is per sample, so
    the chunking changes only the draws): args.invert_iters Adam steps at args.lr_invert from N(0, I).
    Every draw comes from the streams (seed, 'invert_*', key, ...). Returns (latents on the CPU, (pixel MSE at the
    start, at the end))."""
    g = make_generator(seed, 'invert_init', key)
    z = torch.randn(len(real_idx), latent_width(G), generator=g).to(args.device).requires_grad_(True)
    y = labels.to(args.device)
    real = data.images(real_idx)
    opt = torch.optim.Adam([z], lr=args.lr_invert)
    with torch.no_grad():
        start = ((render(G, z, y, data.mean, data.std) - real) ** 2).mean().item()
    for it in range(args.invert_iters):
        net = random_network(args, data, make_generator(seed, 'invert_net', key, it))
        loss = inversion_loss(net, render(G, z, y, data.mean, data.std), real, args.feat_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = ((render(G, z, y, data.mean, data.std) - real) ** 2).mean().item()
    return z.detach().cpu(), (start, mse)


def pick_latents(index_class, n, generator):
    """Up to n random latent positions of every class."""
    return torch.cat([idx[torch.randperm(len(idx), generator=generator)[:n]] for idx in index_class])


def itgan_loss(args, data, G, z, y, real_idx, net, generator, index_class):
    """The IT-GAN objective on one batch: dm_loss between batch_real real images of every class and batch_syn
    latents of every class (one Siamese DSA draw per class), plus args.reg times the paired regulariser against
    the latents' own real images under the same augmentation. Returns (total, condensation part, regulariser)."""
    K = data.num_classes
    real, real_cls = sample_real(data, args.batch_real, generator)
    pick = pick_latents(index_class, args.batch_syn, generator)
    params = sample_dsa_params(args.dsa_strategy, K, generator, args.dsa_param) if args.dsa else None
    zb, yb = z[pick.to(z.device)], y[pick].to(z.device)
    syn = render(G, zb, yb, data.mean, data.std)
    cond = dm_loss(net, real, real_cls, syn, yb, K, params, args.dsa_param, args.real_chunk)
    if not args.reg:
        return cond, cond.detach(), 0.0
    own = data.images(real_idx[pick])
    if params is not None:
        p = select_params(params, yb.cpu())
        syn, own = apply_dsa(syn, p, args.dsa_param), apply_dsa(own, p, args.dsa_param)
    reg = paired_loss(net, syn, own, yb, K)
    return cond + args.reg * reg, cond.detach(), reg.detach()


def itgan_step(args, data, G, z, y, real_idx, optimizer, seed, keys, index_class):
    """One IT-GAN iteration: a fresh random network, a fresh batch, one Adam step on the latents. Every draw comes
    from the streams (seed, 'itgan_net' | 'itgan_batch', *keys). Returns (total, condensation part, regulariser)."""
    net = random_network(args, data, make_generator(seed, 'itgan_net', *keys))
    loss, cond, reg = itgan_loss(args, data, G, z, y, real_idx, net, make_generator(seed, 'itgan_batch', *keys),
                                 index_class)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), cond, reg


def class_positions(labels, num_classes):
    """Positions of every class in a label vector."""
    return [(labels == c).nonzero()[:, 0] for c in range(num_classes)]


def latent_storage(G_bytes, num_latents, width, data):
    """Bytes of generator + float32 latents (+ int64 labels) against the uint8 images they stand for."""
    latent_bytes = num_latents * (width * 4 + 8)
    image_bytes = num_latents * data.channel * data.im_size[0] * data.im_size[1]
    return dict(generator_bytes=G_bytes, latent_bytes=latent_bytes, total_bytes=G_bytes + latent_bytes,
                image_bytes=image_bytes, ratio=(G_bytes + latent_bytes) / image_bytes)

"""The class-conditional GAN of DiM (an AC-WGAN-GP, or a projection critic): building it, sampling, the losses, the
one GAN iteration (`GANStep`), the weight average (`GeneratorEMA`) and the one checkpoint format (`gan_state`,
`load_gan_state`). DiM's stages 1 and 2 (gen_condense.py, pool_match.py) and CL's generative memories (cl.py) train
it with the same `GANStep`; validate.py and main_ITGAN.py sample from its checkpoints.

Image space: [-1, 1] (real images x/127.5 - 1, tanh output). Randomness: every draw comes from a torch.Generator
passed in by the caller, never the global RNG.
"""
import copy
import os

import torch
import torch.nn.functional as F

from condensation import common
from condensation.data import standardise
from condensation.device.graphs import Graphed
from condensation.networks import define_gan
from condensation.common import UserError, cpu_state

# ----------------------------------------------------------------------------------------------------------------
# Building

def build_gan(data, dim_noise, cond, width, device, generator, flags='--dim-noise, --cond', critic='ac'):
    """(G, D) for data's shape and classes, freshly initialised from `generator`; UserError naming `flags` (the
    caller's spelling of the noise and conditioning flags) when the shape is impossible. critic: D's head, 'ac'
    (the reference) or 'projection'."""
    try:
        return define_gan(data.channel, data.num_classes, data.im_size, dim_noise, cond, width, device=device,
                          generator=generator, critic=critic)
    except ValueError as e:
        raise UserError(f'GAN for {data.name}: {e} (flags {flags})') from None


def adam(model, lr):
    """The Adam of both GAN players (betas 0.0, 0.9, as the reference). On CUDA its step count lives on the device
    (capturable), so that a step can be replayed as a CUDA graph; the same update either way, float rounding of the
    bias correction aside."""
    cuda = next(model.parameters()).device.type == 'cuda'
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.0, 0.9), capturable=cuda)


def generator_bytes(G):
    """The distilled artefact's size: every parameter and buffer of G, in bytes."""
    return sum(t.numel() * t.element_size() for t in list(G.parameters()) + list(G.buffers()))


# ----------------------------------------------------------------------------------------------------------------
# AC-WGAN-GP: sampling, losses and one step of each player

def _draw(fn, *args, generator):
    """fn(*args) drawn with generator on its own device (a CPU generator: on the CPU, as the reference streams)."""
    return fn(*args, generator=generator, device=common.draw_device(generator))


def generate(G, y, generator):
    """G(z(y)): fresh N(0, I) noise (drawn on the generator's device), conditioned on labels y."""
    z = _draw(torch.randn, len(y), G.dim_noise, generator=generator).to(y.device)
    return G(z, y)


@torch.no_grad()
def sample_standardised(G, num_classes, ipc, mean, std, device, generator, chunk=500):
    """(images, labels): ipc samples of each class 0..num_classes-1 (class-major labels) from G in eval mode,
    mapped to [0, 1] and standardised with (mean, std) as a real set would be. CPU tensors; G's mode is restored.
    Drawn in chunks of `chunk` labels from one generator, so the samples do not depend on the chunking."""
    was = G.training
    G.eval()
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    x = torch.cat([generate(G, y.to(device), generator) for y in labels.split(chunk)])
    G.train(was)
    x01 = (x + 1) / 2
    return standardise(x01, mean, std, x01.device).cpu(), labels


def gradient_penalty(D, real, fake, alpha, y=None):
    """10 · mean_i (‖∂s(x̂_i)/∂x̂_i‖₂ − 1)² with x̂_i = α_i x_i + (1 − α_i) x̃_i, on the critic score only (the
    projection critic's score under label y_i, the label of both x_i and x̃_i). The graph is kept (create_graph)
    so that the penalty trains D through a double backward."""
    a = alpha.to(real.device, real.dtype).view(-1, *[1] * (real.dim() - 1))
    x_hat = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    score = D(x_hat, y)[0]
    grad, = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return 10 * ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def generator_loss(D, fake, y):
    """L_G = −mean s(G(z(y))) + CE(c(G(z(y))), y); the projection critic: −mean s(G(z(y)), y), no CE."""
    score, logits = D(fake, y)
    return -score.mean() + (0 if logits is None else F.cross_entropy(logits, y))


def critic_loss(D, real, y, fake, y_fake, alpha, gp_weight=1):
    """L_D = mean s(x̃) − mean s(x) + CE(c(x̃), ỹ) + CE(c(x), y) + gp_weight · GP; the projection critic scores
    each image under its label and has no CE (its fakes carry the real batch's labels, ỹ = y). gp_weight 0 skips
    the penalty (and its double backward). Also its parts for the log."""
    s_real, c_real = D(real, y)
    s_fake, c_fake = D(fake, y_fake)
    wd = s_real.mean() - s_fake.mean()
    loss, parts = -wd, dict(wd=wd.detach())
    if gp_weight:
        gp = gradient_penalty(D, real, fake, alpha, y)
        loss, parts['gp'] = loss + gp_weight * gp, gp.detach()
    if c_real is None:
        return loss, parts
    ce = F.cross_entropy(c_fake, y_fake) + F.cross_entropy(c_real, y)
    return loss + ce, dict(parts, d_ce=ce.detach())


def lazy_penalty(step, every):
    """The gradient penalty's weight at critic step `step` when it is applied every `every` steps: `every` on those
    steps, 0 between them, so that its average pull is unchanged (lazy regularisation, Karras et al. 2020,
    StyleGAN2). every 1 is the reference: the penalty on every step. Saves most of the double backward, which is
    about half of a CPU iteration (docs/benchmarks.md)."""
    return every if step % every == 0 else 0


def mode_seeking_loss(G, y, generator, pairs):
    """(fake, L_ms): G(z(y)) for the batch and, for its first `pairs` labels, a second draw z'; L_ms =
    1 / (mean|G(z, y) − G(z', y)| / mean|z − z'| + 1e-5), the mode-seeking term of Mao et al. 2019 (MSGAN), which
    G minimises so that two noises of one class give different images. Both draws share one forward, so G's batch
    norm sees one batch."""
    z = _draw(torch.randn, len(y) + pairs, G.dim_noise, generator=generator).to(y.device)
    out = G(z, torch.cat([y, y[:pairs]]))
    fake, again = out[:len(y)], out[len(y):]
    ratio = (fake[:pairs] - again).abs().mean() / (z[:pairs] - z[len(y):]).abs().mean()
    return fake, 1 / (ratio + 1e-5)


def generator_step(G, D, opt_g, y, generator, extra=None, mode_seeking=0.0):
    """One Adam step on G with L_G (+ extra(fake), stage 2's matching loss; + mode_seeking · L_ms on a quarter of
    the batch, mode_seeking_loss). D takes no gradient here: the reference computes D's and clears them before D's
    own step, which is the same update."""
    D.eval()  # a no-op for the LayerNorm critic, kept from the reference
    D.requires_grad_(False)
    try:
        if mode_seeking:
            fake, ms = mode_seeking_loss(G, y, generator, max(1, len(y) // 4))
        else:
            fake = generate(G, y, generator)
        loss = generator_loss(D, fake, y)
        parts = dict(g=loss.detach())
        if mode_seeking:
            loss = loss + mode_seeking * ms
            parts['ms'] = ms.detach()
        if extra is not None:
            match = extra(fake)
            loss = loss + match
            parts['match'] = match.detach()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
    finally:
        D.requires_grad_(True)
        D.train()
    return parts


def critic_step(G, D, opt_d, x, y, num_classes, generator, gp_weight=1):
    """One Adam step on D: x̃ = G(z(ỹ)) without gradients (G stays in train mode), ỹ uniform random labels (the
    reference's AC critic) or the real batch's labels (the projection critic, so that every interpolate of the
    gradient penalty has one label). gp_weight: see lazy_penalty."""
    y_fake = y if D.head == 'projection' else _draw(torch.randint, num_classes, (len(x),), generator=generator).to(
        x.device)
    with torch.no_grad():
        fake = generate(G, y_fake, generator)
    alpha = _draw(torch.rand, len(x), generator=generator)
    loss, parts = critic_loss(D, x, y, fake, y_fake, alpha, gp_weight)
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return dict(d=loss.detach(), **parts)


class GANStep:
    """One GAN iteration, the one DiM's stages 1-2 and CL's generative memories run: every n_critic-th iteration a
    generator step (with `extra`, stage 2's matching loss, and the mode-seeking term) and the generator average's
    update, then a critic step with the lazy penalty's weight.

        gan = GANStep(G, D, opt_g, opt_d, num_classes, n_critic=1, gp_every=1, mode_seeking=0.0, ema=ema)
        gan.use_stream(make_generator(seed, 'stage1', epoch))
        parts = gan(it, x, y)     # this iteration's losses, detached 0-d tensors (read them when logging)

    Every noise vector, fake label and interpolation weight comes from the stream, which continues from call to
    call. On CUDA the draws are made on the device (use_stream seeds a generator there with the stream's seed) and,
    with graphs, each of an iteration's up to four forms (with or without the generator step, with or without the
    penalty) is replayed as a CUDA graph (graphs.Graphed) from static copies of x and y. The losses returned by a
    replay are overwritten by the next call.
    """

    def __init__(self, G, D, opt_g, opt_d, num_classes, n_critic=1, gp_every=1, mode_seeking=0.0, ema=None,
                 extra=None, graphs=False):
        self.G, self.D, self.opt_g, self.opt_d, self.num_classes = G, D, opt_g, opt_d, num_classes
        self.n_critic, self.gp_every, self.mode_seeking, self.ema, self.extra = n_critic, gp_every, mode_seeking, \
            ema, extra
        self.device = next(G.parameters()).device
        self.generator = torch.Generator(self.device) if self.device.type != 'cpu' else None
        # stage 2's matching loss chooses its pool model and augmentation on the host: such steps run eagerly
        self.graphs = graphs and extra is None
        self.forms, self.x, self.y = {}, None, None

    def use_stream(self, generator):
        """Draw from `generator`'s stream from now on; returns the generator that draws it (on CUDA, a generator
        on the device seeded as the stream; on the CPU the stream itself)."""
        if self.generator is None or self.device.type == 'cpu':
            self.generator = generator
        else:
            self.generator.manual_seed(generator.initial_seed())
        return self.generator

    def __call__(self, it, x, y):
        g_turn, gp_weight = it % self.n_critic == 0, lazy_penalty(it, self.gp_every)
        self._take(x, y)
        if g_turn and self.ema is not None:
            self.ema.advance()
        return self._form(g_turn, gp_weight)()

    def _iteration(self, g_turn, gp_weight):
        """The method: [a generator step and the average's update;] a critic step."""
        parts = {}
        if g_turn:
            extra = None if self.extra is None else (lambda fake: self.extra(self.x, self.y, fake))
            parts.update(generator_step(self.G, self.D, self.opt_g, self.y, self.generator, extra,
                                        self.mode_seeking))
            if self.ema is not None:
                self.ema.apply(self.G)
        parts.update(critic_step(self.G, self.D, self.opt_d, self.x, self.y, self.num_classes, self.generator,
                                 gp_weight))
        return parts

    # The device options around it: the batch in static inputs and each form of the iteration a Graphed step.

    def _take(self, x, y):
        """The batch as the iteration reads it: with graphs copied into static inputs (new ones, and new
        recordings, when the shapes change), else the tensors themselves."""
        if not self.graphs:
            self.x, self.y = x, y
            return
        if self.x is None or self.x.shape != x.shape or self.y.shape != y.shape:
            self.forms, self.x, self.y = {}, torch.empty_like(x), torch.empty_like(y)
        self.x.copy_(x)
        self.y.copy_(y)

    def _form(self, g_turn, gp_weight):
        """The Graphed step of one form of the iteration (with or without the generator step and the penalty)."""
        form = (g_turn, gp_weight)
        if form not in self.forms:
            self.forms[form] = Graphed(lambda: self._iteration(*form), [self.generator], self.graphs,
                                       name=f'GAN iteration ({"G and " if g_turn else ""}D step'
                                            f'{", penalty" if gp_weight else ""})',
                                       state=(self.G, self.D, self.opt_g, self.opt_d,
                                              None if self.ema is None else self.ema.G))
        return self.forms[form]


class GeneratorEMA:
    """An exponential moving average of G's weights, for sampling (Yazici et al. 2019, "The unusual effectiveness
    of averaging in GAN training"): after each generator step w_ema <- d·w_ema + (1 − d)·w, with the warm-up
    d_t = min(decay, (1 + t)/(10 + t)) at update t = 1, 2, ..., so that a run of a few hundred steps is not
    dominated by the initial weights. G's BatchNorm running statistics are averaged the same way (its step counter
    is copied). `G` is the averaged generator, in eval mode and without gradients."""

    def __init__(self, G, decay):
        self.decay, self.steps = decay, 0
        self.G = copy.deepcopy(G).eval().requires_grad_(False)
        self.weight = torch.zeros((), device=next(G.parameters()).device)  # 1 − d_t of the coming update

    def rate(self, t):
        """d_t, the weight kept at update t."""
        return min(self.decay, (1 + t) / (10 + t))

    def update(self, G):
        self.advance()
        self.apply(G)

    def advance(self):
        """Count the coming update and set its weight (on the host, before a recorded step that applies it)."""
        self.steps += 1
        self.weight.fill_(1 - self.rate(self.steps))

    @torch.no_grad()
    def apply(self, G):
        """w_ema <- lerp(w_ema, w, 1 − d_t), the weight read from a tensor, so that a recorded step follows d_t."""
        for mine, theirs in zip(list(self.G.parameters()) + list(self.G.buffers()),
                                list(G.parameters()) + list(G.buffers())):
            if mine.is_floating_point():
                mine.lerp_(theirs, self.weight)
            else:
                mine.copy_(theirs)

    def state_dict(self):
        return dict(generator=self.G.state_dict(), steps=self.steps, decay=self.decay)

    def load_state_dict(self, state):
        self.G.load_state_dict(state['generator'])
        self.steps = state['steps']


def new_ema(G, decay):
    """The weight average of --g_ema `decay`, starting from G's weights (GeneratorEMA); None when off (0)."""
    return GeneratorEMA(G, decay) if decay else None


# ----------------------------------------------------------------------------------------------------------------
# The checkpoint format: DiM's model_dict_<epoch>.pth, best.pth, last.pth and CL's memory files hold these keys

GAN_KEYS = ('generator', 'discriminator', 'optim_g', 'optim_d')  # what a GAN checkpoint must hold
# Arguments that fix the GAN's shape: a checkpoint made with other values is foreign.
GAN_ARGS = ('dataset', 'im_size', 'dim_noise', 'cond', 'gan_width', 'critic')


def gan_state(G, D, opt_g, opt_d, ema=None):
    """G, D and both Adam states (GAN_KEYS) and, with an average, `generator_ema` (its weights, which validate.py
    and the replay of CL samples from, and its step count). Weights as CPU tensors."""
    state = dict(generator=cpu_state(G.state_dict()), discriminator=cpu_state(D.state_dict()),
                 optim_g=opt_g.state_dict(), optim_d=opt_d.state_dict())
    if ema is not None:
        state['generator_ema'] = dict(ema.state_dict(), generator=cpu_state(ema.G.state_dict()))
    return state


def load_into(model, state, flag, path, what):
    """model.load_state_dict(state) (an optimiser's through common.load_optimizer_state, for the device it runs on
    now); UserError naming the file when it does not fit."""
    try:
        if isinstance(model, torch.optim.Optimizer):
            common.load_optimizer_state(model, state)
        else:
            model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'{flag} {path}: its {what} does not fit this GAN ({first[:150]})') from None


def load_gan_state(state, G, D, opt_g, opt_d, ema=None, flag='--weight', path=''):
    """G, D and both optimisers from a gan_state dict. The average continues the state's when it holds one, else
    starts afresh from G's loaded weights (a run without an average before)."""
    for model, key in zip((G, D, opt_g, opt_d), GAN_KEYS):
        load_into(model, state[key], flag, path, key)
    if ema is None:
        return
    if 'generator_ema' in state:
        ema.load_state_dict(state['generator_ema'])
    else:
        ema.G.load_state_dict(G.state_dict())
        ema.steps = 0


def sampling_weights(ck):
    """(state dict, its name) of the generator to sample from: the averaged weights of a run with an average, else
    `generator`."""
    if 'generator_ema' in ck:
        return ck['generator_ema']['generator'], 'generator_ema'
    return ck['generator'], 'generator'


def read_checkpoint(path, flag, keys=('generator',)):
    """A GAN checkpoint of gen_condense.py or pool_match.py; UserError (one line) when it is missing, unreadable,
    lacks `keys` or holds non-finite weights."""
    if not os.path.isfile(path):
        raise UserError(f'{flag} {path}: no such file (stage 1 writes <output-dir><tag>/best.pth)')
    try:
        ck = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f'{flag}: {common.unreadable(path, e)}; pass a .pth written by gen_condense.py or '
                        f'pool_match.py') from None
    if not isinstance(ck, dict) or any(k not in ck for k in keys):
        raise UserError(f'{flag} {path} is not a DiM checkpoint (it needs the keys {", ".join(keys)})')
    common.refuse_non_finite(ck, f'{flag} {path}', 'pass a checkpoint of a run that did not diverge (an earlier '
                                                  'model_dict_<epoch>.pth)')
    return ck


def check_foreign(ck, args, flag, path):
    """A checkpoint made for another dataset or GAN shape (GAN_ARGS) is refused, naming the flag that would fit it."""
    made = ck.get('args') or {}
    for k in GAN_ARGS:
        if k in made and made[k] != getattr(args, k):
            cli = {'dataset': 'data', 'dim_noise': 'dim-noise'}.get(k, k)
            theirs = f'--{cli} {made[k]}' if made[k] is not None else f'no --{cli}'
            raise UserError(f'{flag} {path} was made with {theirs}, this run has {getattr(args, k)}; '
                            + (f'pass {theirs}' if made[k] is not None else f'drop --{cli}'))

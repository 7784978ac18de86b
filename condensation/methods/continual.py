"""Class-incremental continual learning with condensed and generative memories, the library behind CL_DM.py.

Protocol (DM paper, GDumb-style): for a class order drawn from a seed, step s introduces K/steps new classes; a
memory of ipc images per new class is built from that step's training images alone and never revisited; a network
is then trained on the union of all memories so far (evaluate_synset, DSA) and tested on every test image of the
classes seen so far, with a K-way head and the original class ids.

Memories: random (the reference's numpy stream), herding (per class, on embed() features; DatasetCondensation
issue #15), k-center (issue #21), DSA and DM condensation (the steps of dc.py and dm.py run on a view of the data
holding only the step's classes), and DiM (a class-conditional GAN trained on the new classes plus replay of its own
samples of the old ones; the network trains on ipc generated images per seen class). Memories are cached per
(method, dataset, model, ipc, steps, seed) in the original's memory-file layout (`data` = [[images, labels]] per
step, plus `meta`) and extended step by step; the reference's released files are used when present. The loop over
seeds and steps is CL_DM.py's; its table, CSV and plot are run/continual_report.py's.

Randomness: the class orders come from a private numpy RandomState (as np.random.seed(s); np.random.permutation(K)
would give, without touching numpy's global state), everything else from torch generators named by
(seed, purpose, step, ...).
"""
import copy
import os
import time

import numpy as np
import torch

from condensation.methods import gan
from condensation.device import parallel
from condensation.data import TensorLoader, file_label
from condensation.methods.dc import DCStep
from condensation.methods.dm import DMStep
from condensation.evaluation import EvalRecipe, evaluate_synset
from condensation.device.footprint import check_fits, condensation_bytes, set_bytes
from condensation.device.graphs import graphs_enabled
from condensation.networks import get_network
from condensation.run.progress import Progress
from condensation.run.runner import SyntheticSet
from condensation.common import UserError, atomic_save, derive_seed, make_generator, non_finite, \
    refuse_non_finite

METHODS = ('random', 'herding', 'kcenter', 'DSA', 'DM', 'DiM')
# The file kind in a memory's name, per method: the reference named its DSA memories 'res_DSA'.
KIND = {'random': 'random', 'herding': 'herding', 'kcenter': 'kcenter', 'DSA': 'res_DSA', 'DM': 'DM', 'DiM': 'DiM'}
# The arguments each builder's memories depend on: a cache written with other values is foreign.
BUILDER_ARGS = {
    'random': (),
    'herding': ('feature_net', 'feature_epochs', 'lr_net', 'batch_train'),
    'kcenter': ('feature_net', 'feature_epochs', 'lr_net', 'batch_train'),
    'DSA': ('Iteration', 'lr_img', 'batch_real', 'batch_train', 'lr_net', 'outer_loop', 'inner_loop', 'dsa_strategy',
            'align_corners', 'dis_metric', 'compat'),
    'DM': ('Iteration', 'lr_img', 'batch_real', 'dsa_strategy', 'align_corners'),
    'DiM': ('gan_iters', 'gan_batch', 'gan_lr', 'gan_width', 'dim_noise', 'cond', 'critic', 'n_critic', 'g_ema',
            'gp_every', 'mode_seeking'),
}
# Memory files and CL runs name the GAN flags as CL first spelled them (--gan_cond, ...), so that the caches and
# runs made before the renaming stay valid.
CACHE_NAMES = {'cond': 'gan_cond', 'critic': 'gan_critic', 'n_critic': 'gan_n_critic', 'g_ema': 'gan_ema',
               'gp_every': 'gan_gp_every', 'mode_seeking': 'gan_mode_seeking'}
# Builder arguments added after caches were written: recorded only when they differ from the value those caches
# were built with, so that the older caches stay valid.
LATER_ARGS = {'gp_every': 1, 'mode_seeking': 0.0}



# ----------------------------------------------------------------------------------------------------------------
# Protocol: class orders and steps

def class_order(seed, num_classes):
    """The reference's order, np.random.seed(seed); np.random.permutation(K), from a private RandomState."""
    return np.random.RandomState(seed).permutation(num_classes).tolist()


def step_classes(order, steps, step):
    k = len(order) // steps
    return order[step * k:(step + 1) * k]


def seen_classes(order, steps, step):
    return order[:(step + 1) * (len(order) // steps)]


def test_subset(data, classes):
    """The (uint8) test images whose label is among `classes`, and their labels: one boolean mask (the original
    looped over images)."""
    mask = torch.isin(data.labels_test, torch.as_tensor(list(classes), device=data.labels_test.device))
    return data.x_test[mask], data.labels_test[mask]


def test_loader(data, classes, batch_size=256):
    x, y = test_subset(data, classes)
    return TensorLoader(x, y, batch_size, transform=data.standardise)


def class_view(data, classes):
    """`data` as a k-class dataset of `classes` (relabelled 0..k-1), for the condensation step functions, which
    iterate over data.num_classes and data.indices_class. Tensors are shared, nothing is copied."""
    view = copy.copy(data)
    view.num_classes = len(classes)
    view.indices_class = [data.indices_class[c] for c in classes]
    view.class_names = [data.class_names[c] for c in classes]
    return view


# ----------------------------------------------------------------------------------------------------------------
# Coreset selection

def herding(features, m):
    """Indices of m rows of features (n×d), in selection order: each pick brings the running mean of the
    selected rows closest to the mean of all rows (target i·μ − Σ selected, Euclidean)."""
    n = len(features)
    mu = features.mean(0)
    total = torch.zeros_like(mu)
    taken = torch.zeros(n, dtype=torch.bool, device=features.device)
    picks = []
    for i in range(1, min(m, n) + 1):
        dist = ((features - (i * mu - total)) ** 2).sum(1)
        dist[taken] = float('inf')
        j = int(dist.argmin())
        picks.append(j)
        taken[j] = True
        total = total + features[j]
    return torch.tensor(picks, dtype=torch.long)


def kcenter(features, m):
    """Indices of m rows of features: first the row nearest the mean, then greedily the row farthest from its
    nearest selected centre (Euclidean)."""
    n = len(features)
    if n == 0 or m <= 0:
        return torch.zeros(0, dtype=torch.long)
    first = int(((features - features.mean(0)) ** 2).sum(1).argmin())
    picks = [first]
    nearest = ((features - features[first]) ** 2).sum(1)
    nearest[first] = -1.0  # duplicates of a centre sit at distance 0; a selected row must never win again
    for _ in range(min(m, n) - 1):
        j = int(nearest.argmax())
        picks.append(j)
        nearest = torch.minimum(nearest, ((features - features[j]) ** 2).sum(1))
        nearest[picks] = -1.0
    return torch.tensor(picks, dtype=torch.long)


@torch.no_grad()
def embed(net, data, idx, chunk=1024):
    """net.embed of the training images at idx, in eval mode, without gradients."""
    was = net.training
    net.eval()
    out = torch.cat([net.embed(data.images(i)) for i in idx.split(chunk)])
    net.train(was)
    return out


def load_feature_net(args, data):
    """--feature_net: a state dict (or {'state_dict' | 'net' | 'model': state dict}) of an args.model network; a
    classifier of another class count is dropped, since only embed() is used."""
    try:
        state = torch.load(args.feature_net, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f'--feature_net {args.feature_net} is not a readable checkpoint ({type(e).__name__})') from None
    refuse_non_finite(state, f'--feature_net {args.feature_net}', 'pass the weights of a network that did not diverge')
    for key in ('state_dict', 'net', 'model'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    net = get_network(args.model, data.channel, data.num_classes, data.im_size, device=args.device)
    own = net.state_dict()
    state = {k: v for k, v in state.items()
             if not (k.startswith('classifier') and k in own and v.shape != own[k].shape)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith('classifier') for k in missing):
        raise UserError(f'--feature_net {args.feature_net} does not hold {args.model} weights for {data.name} '
                        f'(missing {len(missing)}, unexpected {len(unexpected)} tensors); pass --model to match it')
    return net.eval()


def train_feature_net(args, data, classes, seed, step, log):
    """The default feature extractor: an args.model network trained on the step's real images (k-way head), with
    the evaluation recipe (evaluate_synset) for feature_epochs (+1) passes without augmentation; 0 keeps it
    untrained."""
    net = get_network(args.model, data.channel, len(classes), data.im_size, device=args.device,
                            generator=make_generator(seed, 'cl_feature_net', step))
    if args.feature_epochs == 0:
        return net
    view = class_view(data, classes)
    idx = torch.cat(view.indices_class)
    labels = torch.cat([torch.full((len(i),), c) for c, i in enumerate(view.indices_class)])
    remap = torch.full((data.num_classes,), -1, dtype=torch.long, device=data.device)
    remap[torch.as_tensor(classes, device=data.device)] = torch.arange(len(classes), device=data.device)
    x_test, y_test = test_subset(data, classes)
    loader = TensorLoader(x_test, remap[y_test], 256, transform=data.standardise)
    recipe = EvalRecipe(epoch_eval_train=args.feature_epochs, lr_net=args.lr_net, batch_train=args.batch_train,
                        device=args.device)
    t0 = time.time()
    net, acc_train, acc = evaluate_synset(0, net, data.images(idx), labels, loader, recipe,
                                          generator=make_generator(seed, 'cl_feature_train', step))
    log(f'  feature net: {args.feature_epochs} epochs on {len(idx)} real images of {len(classes)} classes, train acc '
        f'{100 * acc_train:.1f}%, test acc {100 * acc:.1f}% on the step\'s classes ({time.time() - t0:.0f} s)')
    return net


# ----------------------------------------------------------------------------------------------------------------
# Memory builders: each returns [images (standardised, CPU), labels (original ids)] for one step

def random_memories(data, order, steps, ipc, seed):
    """All steps at once, drawn as the reference draws them: after the class order, the same numpy stream gives
    each new class (in step order) permutation(indices of the class)[:ipc]."""
    rs = np.random.RandomState(seed)
    if rs.permutation(data.num_classes).tolist() != list(order):
        raise ValueError('random_memories: order is not the class order of this seed')
    out = []
    for step in range(steps):
        picks = [torch.from_numpy(rs.permutation(data.indices_class[c].numpy())[:ipc]) for c in
                 step_classes(order, steps, step)]
        labels = torch.cat([torch.full((len(p),), c) for p, c in zip(picks, step_classes(order, steps, step))])
        out.append([data.images(torch.cat(picks)).cpu(), labels])
    return out


def coreset_memory(args, data, classes, seed, step, log, net=None):
    """herding or kcenter per class, on embed() features of `net` (default: trained on the step's classes)."""
    net = net if net is not None else train_feature_net(args, data, classes, seed, step, log)
    select = herding if args.method == 'herding' else kcenter
    images, labels = [], []
    for c in classes:
        idx = data.indices_class[c]
        chosen = idx[select(embed(net, data, idx), args.ipc).cpu()]
        images.append(data.images(chosen).cpu())
        labels.append(torch.full((len(chosen),), c))
    return [torch.cat(images), torch.cat(labels)]


def condense_memory(args, data, classes, seed, step, partial_path, log):
    """DSA or DM condensation of the step's classes into ipc images each (init real), with the step functions of
    main.py / main_DM.py on a k-class view of the data (so the matching networks have k-way heads). A partial
    result is checkpointed every checkpoint_every iterations; since every draw is named by (seed, step, it), the
    resumed synthesis equals an uninterrupted one."""
    view = class_view(data, classes)
    synthesis_seed = derive_seed(seed, 'cl', args.method)
    fingerprint = builder_fingerprint(args)
    part = _partial(partial_path, step, fingerprint)
    syn = SyntheticSet(view, args.ipc, 'real', args.lr_img, make_generator(synthesis_seed, 'init', step), part,
                       'the memory diverged')
    start = part['it'] if part else 0
    if part:
        log(f'  resuming the synthesis of step {step} at iteration {start} from {partial_path}')
    step_fn = (DMStep if args.method == 'DM' else DCStep)(args, view, syn.images, syn.labels, syn.optimizer)
    progress = syn.progress(log, args.Iteration, f'seed {seed} step {step} ({args.method})', start=start,
                            desc=f'{args.method} seed {seed} step {step}', bar=not args.no_progress, leave=False,
                            checkpoint_every=args.checkpoint_every)
    for it in progress:
        loss = step_fn(synthesis_seed, (step, it))
        save = progress.checkpoint_due(it) and it + 1 < args.Iteration
        loss = progress.read(it, loss, save or it + 1 == args.Iteration)
        if loss is not None and it % 100 == 0:
            log(f'  step {step} iter {it:05d}: loss {loss:.4f} (per class {loss / len(classes):.4f})', echo=False)
        if save:
            atomic_save(dict(step=step, it=it + 1, builder=fingerprint, **syn.state_dict()), partial_path)
    return [syn.images.detach().cpu(), torch.as_tensor(classes)[syn.labels]]


def _partial(path, step, fingerprint):
    """The partial synthesis of this step and builder at path; None when there is none (or it is another's, or
    unreadable, or diverged: the synthesis then starts afresh)."""
    if not os.path.isfile(path):
        return None
    try:
        part = torch.load(path, map_location='cpu', weights_only=True)
        ok = part['step'] == step and part['builder'] == fingerprint and non_finite(part) is None
    except Exception:
        ok = False
    return part if ok else None


def dim_noise(args, num_classes):
    """The generator's input width: --dim_noise, else 100 (DiM's) while it exceeds K, else K + 28 (the one-hot label
    overwrites the first K entries)."""
    return args.dim_noise or (100 if num_classes < 100 else num_classes + 28)


@torch.no_grad()
def sample_memory(G, data, order, n_seen, ipc, generator, chunk=500):
    """ipc images of each of the first n_seen classes of `order` from G (labelled by class-order position), as a
    real set would be standardised; the labels are the original class ids."""
    images, pos = gan.sample_standardised(G, n_seen, ipc, data.mean, data.std, data.device, generator, chunk)
    return images, torch.as_tensor(order)[pos]


def memory_gan(args, data, seed):
    """(G, D, opt_g, opt_d): the CL GAN, K-way over all classes, initialised from (seed, 'cl_gan_init')."""
    G, D = gan.build_gan(data, dim_noise(args, data.num_classes), args.cond, args.gan_width, args.device,
                         make_generator(seed, 'cl_gan_init'), flags='--dim_noise, --cond', critic=args.critic)
    return G, D, gan.adam(G, args.gan_lr), gan.adam(D, args.gan_lr)


def dim_memory(args, data, order, step, seed, state, log):
    """One CL step of the generative memory. The GAN (K-way conditioning on class-order positions, so labels are
    0..seen−1 at every step and the critic's random labels stay among the seen classes) continues from the previous
    step's `state` (gan.gan_state); each batch mixes real images of the new classes with samples of the old classes
    from a frozen copy of the previous generator, in proportion to their class counts. With --g_ema the averaged
    generator (continued across steps) is the frozen copy, and the one the memory is sampled from. Returns (memory,
    gan state)."""
    G, D, opt_g, opt_d = memory_gan(args, data, derive_seed(seed, 'cl', 'DiM'))
    ema = gan.new_ema(G, args.g_ema)
    if state is not None:
        gan.load_gan_state(state, G, D, opt_g, opt_d, ema)
    sampler = G if ema is None else ema.G
    k = data.num_classes // args.steps
    n_old, n_seen = step * k, (step + 1) * k
    pos_of = torch.empty(data.num_classes, dtype=torch.long)
    pos_of[torch.as_tensor(order)] = torch.arange(data.num_classes)
    pos_of = pos_of.to(data.device)
    replay = round(args.gan_batch * n_old / n_seen)
    G_old = None
    if replay:
        G_old = copy.deepcopy(sampler).eval()
        G_old.requires_grad_(False)
    gan_step = gan.GANStep(G, D, opt_g, opt_d, n_seen, args.n_critic, args.gp_every, args.mode_seeking,
                           ema, graphs=graphs_enabled(args.device, args.cuda_graphs))
    g = gan_step.use_stream(make_generator(seed, 'cl_gan', step))  # the batches are drawn from the same stream
    new_idx = torch.cat([data.indices_class[c] for c in step_classes(order, args.steps, step)]).to(g.device)
    # A diverged GAN stays diverged: checked where the losses are logged and before the memory is drawn.
    progress = Progress(log, args.gan_iters, desc=f'DiM seed {seed} step {step}', bar=not args.no_progress,
                        leave=False, read_every=100, shown=('g', 'd'),
                        where=f'seed {seed} step {step} GAN iteration {{it}}',
                        advice=f'lower --gan_lr (now {args.gan_lr})')
    for it in progress:
        pick = new_idx[torch.randperm(len(new_idx), generator=g, device=g.device)[:args.gan_batch - replay]]
        pick = pick.to(data.device)
        x = data.x_train[pick].float().div_(127.5).sub_(1)
        y = pos_of[data.labels_train[pick]]
        if replay:
            y_old = torch.randint(n_old, (replay,), generator=g, device=g.device).to(data.device)
            with torch.no_grad():
                x = torch.cat([x, gan.generate(G_old, y_old, g)])
            y = torch.cat([y, y_old])
        parts = progress.read(it, gan_step(it, x, y), it + 1 == args.gan_iters)
        if parts is not None:
            log(f'  step {step} GAN iter {it:05d}: ' + ', '.join(f'{n} {v:.4f}' for n, v in parts.items()), echo=False)
    memory = list(sample_memory(sampler, data, order, n_seen, args.ipc, make_generator(seed, 'cl_gan_sample', step)))
    return memory, dict(gan.gan_state(G, D, opt_g, opt_d, ema), step=step, generator_bytes=gan.generator_bytes(G))


# ----------------------------------------------------------------------------------------------------------------
# Memory files: `data` = list over steps of [images, labels]

def memory_name(args, seed):
    return (f'cl_{KIND[args.method]}_{file_label(args.dataset, args.im_size)}_{args.model}_{args.ipc}ipc_'
            f'{args.steps}steps_seed{seed}.pt')


def builder_fingerprint(args):
    return {CACHE_NAMES.get(k, k): getattr(args, k) for k in ('method', 'model') + BUILDER_ARGS[args.method]
            if k not in LATER_ARGS or getattr(args, k) != LATER_ARGS[k]}


def check_memory(memory, data, order, steps, path, cumulative=False):
    """Every step's entry is [images like the dataset's, labels of exactly that step's classes (DiM: all seen)]."""
    for step, entry in enumerate(memory):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise UserError(f'{path}: step {step} is not an [images, labels] pair')
        images, labels = entry
        if images.dim() != 4 or tuple(images.shape[1:]) != (data.channel, *data.im_size) or len(images) != len(labels):
            raise UserError(f'{path}: step {step} holds images {tuple(images.shape)} with {len(labels)} labels; '
                            f'expected N×{data.channel}×{data.im_size[0]}×{data.im_size[1]} for {data.name}')
        want = (seen_classes if cumulative else step_classes)(order, steps, step)
        if set(labels.tolist()) != set(want):
            raise UserError(f'{path}: step {step} holds other classes than the class order of its seed gives; it was '
                            f'built for another class order or dataset')


class Memories:
    """The memories of one (method, seed), step by step: from the reference's released file in
    <data_path>/metasets/cl_data when present, else from the project's cache in <save_path>/cl_data (written after
    every step, so an interrupted run keeps its finished steps), else built."""

    def __init__(self, args, data, seed, order, log):
        self.args, self.data, self.seed, self.order, self.log = args, data, seed, order, log
        name = memory_name(args, seed)
        self.released = os.path.join(args.data_path, 'metasets', 'cl_data', name)
        self.path = os.path.join(args.save_path, 'cl_data', name)
        self.partial_path = self.path[:-3] + '.partial.pt'
        self.cumulative = args.method == 'DiM'  # a generator's memory at step s covers every seen class
        self.memory, self.gan, self.source, self.times, self.feature_net = [], None, 'built', [], None
        self.samplers = []  # DiM: the generator each step's memory was drawn from (its weights), for fresh replay
        if args.method != 'DiM' and os.path.isfile(self.released):
            raw = self._load(self.released)
            if len(raw['data']) != args.steps:
                raise UserError(f'{self.released} holds {len(raw["data"])} steps, --steps is {args.steps}')
            self.memory, self.source = raw['data'], 'released'
        elif os.path.isfile(self.path):
            raw = self._load(self.path)
            meta = raw.get('meta', {})
            if meta.get('source', args.dataset) != args.dataset:  # another folder or file of the same base name
                raise UserError(f'{self.path} was built from {meta["source"]}, this run is on {args.dataset}; delete '
                                f'it or pass another --save_path')
            if meta.get('builder') != builder_fingerprint(args) or meta.get('class_order') != list(order):
                theirs, ours = meta.get('builder', {}), builder_fingerprint(args)
                diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k)) or ['class order']
                raise UserError(f'{self.path} was built with other settings ({", ".join(diff)}); delete it or pass '
                                f'another --save_path')
            self.memory, self.gan, self.times, self.source = raw['data'], raw.get('gan'), meta.get('times', []), 'cache'
            self.samplers = raw.get('samplers', [])
        self.memory = [[x.detach().float().cpu(), y.long().cpu()] for x, y in self.memory]
        check_memory(self.memory, data, order, args.steps, self.released if self.source == 'released' else self.path,
                     self.cumulative)
        if self.memory:
            log(f'seed {seed}: {len(self.memory)} of {args.steps} steps of {args.method} memories from {self.source} '
                f'file {self.released if self.source == "released" else self.path}')

    def _load(self, path):
        try:
            raw = torch.load(path, map_location='cpu', weights_only=True)
            raw['data']
        except Exception as e:
            raise UserError(f'{path} is not a readable CL memory file with the key "data" ({type(e).__name__}); '
                            f'delete it to rebuild it') from None
        refuse_non_finite(raw, f'the CL memory file {path}', 'delete it to rebuild it')
        return raw

    def step(self, s):
        """The memory added at step s (DiM: the generated set of all classes seen at step s), built if missing."""
        while len(self.memory) <= s:
            self._build(len(self.memory))
        return self.memory[s]

    def training_set(self, s):
        """The union of the memories of steps 0..s (DiM: step s's generated set)."""
        if self.cumulative:
            return self.step(s)
        parts = [self.step(i) for i in range(s + 1)]
        return [torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])]

    def _build(self, s):
        args, data = self.args, self.data
        t0 = time.time()
        classes = step_classes(self.order, args.steps, s)
        self.log(f'seed {self.seed} step {s}: building the {args.method} memory of classes {classes}')
        if args.method == 'random':
            self.memory = random_memories(data, self.order, args.steps, args.ipc, self.seed)
        elif args.method in ('herding', 'kcenter'):
            if args.feature_net and self.feature_net is None:
                self.feature_net = load_feature_net(args, data)
            self.memory.append(coreset_memory(args, data, classes, self.seed, s, self.log, self.feature_net))
        elif args.method in ('DSA', 'DM'):
            self.memory.append(condense_memory(args, data, classes, self.seed, s, self.partial_path, self.log))
        else:
            memory, self.gan = dim_memory(args, data, self.order, s, self.seed, self.gan, self.log)
            self.memory.append(memory)
            sampler, _ = gan.sampling_weights(self.gan)
            self.samplers = self.samplers[:s] + [sampler]
        self.times = self.times[:s] + [time.time() - t0] * (len(self.memory) - s)
        self.log(f'seed {self.seed} step {s}: memory built in {time.time() - t0:.1f} s -> {self.path}')
        self.source = 'built'
        meta = dict(kind=KIND[args.method], dataset=data.name, source=args.dataset, model=args.model, ipc=args.ipc,
                    steps=args.steps,
                    seed=self.seed, class_order=list(self.order), builder=builder_fingerprint(args),
                    normalised=True, mean=data.mean, std=data.std, classes=data.class_names,
                    world_size=parallel.world_size(),
                    cumulative=self.cumulative, times=self.times)
        out = dict(data=self.memory, meta=meta)
        if self.gan is not None:
            out['gan'] = self.gan
        if self.samplers:
            out['samplers'] = self.samplers
        atomic_save(out, self.path)
        if parallel.is_main() and os.path.exists(self.partial_path):
            os.unlink(self.partial_path)

    def budget(self, s):
        """(images, bytes) the memory holds after step s: images stored as uint8, or the generator's float32."""
        images, _ = self.training_set(s)
        if self.cumulative:
            return len(images), int(self.gan['generator_bytes']) if self.gan else None
        return len(images), int(images[0].numel()) * len(images)


# ----------------------------------------------------------------------------------------------------------------
# The run's files and its memory budget

def run_name(args):
    mode = '' if args.train_mode == 'scratch' else '_finetune'
    return f'{args.method}{mode}_{file_label(args.dataset, args.im_size)}_{args.model}_{args.ipc}ipc_{args.steps}steps'


def check_budget(args, data):
    """UserError when --ipc exceeds the smallest class (a selected or condensed memory), or when every memory
    together (as stored, as the training set and on the device) and one step's synthesis would not fit."""
    smallest = min(len(i) for i in data.indices_class)
    if args.method != 'DiM' and args.ipc > smallest:
        raise UserError(f'--ipc {args.ipc} exceeds the smallest class of {data.name} ({smallest} images); lower --ipc')
    shape = (data.channel, *data.im_size)
    need = 3 * set_bytes(data.num_classes * args.ipc, shape) + (condensation_bytes(
        args, class_view(data, range(data.num_classes // args.steps)), args.method) if args.method in ('DSA', 'DM')
        else 0)
    check_fits(need, args.device, f'CL {args.method} with --ipc {args.ipc}', 'lower --ipc')

"""The run layer of every script: the files one run writes, its checkpoint and resume check (`Run`), and the
condensation experiment of DC/DSA/DM (`CondensationRun`, `SyntheticSet`).

Every script (main.py, main_DM.py, CL_DM.py, the DiM stages, main_ITGAN.py) writes its outputs atomically and
resumes the same way: a checkpoint stores the *fingerprint* of the arguments that determine the result, and
`--resume` refuses a checkpoint whose fingerprint differs, naming the flags that differ.

main.py and main_DM.py read (see either script):

    run = CondensationRun(args, RESUMABLE, 'DM', data, reference_every=2000, recipes=...)
    for exp in run.experiments():
        syn = run.synthetic_set(exp)                  # the images, their optimiser (or as checkpointed)
        for it in run.iterations(exp, syn):           # evaluates the set at the evaluation points
            loss = <one step of the method on syn.images>
            run.step_done(exp, it, loss, syn)         # log, progress, checkpoint
        run.experiment_done(exp, syn)                 # the final set joins the results file
    run.finish()
"""
import functools
import json
import os
import time

import torch

from condensation.common import (Log, UserError, atomic_save, check_within, hold_lock, load_optimizer_state,
                                 make_generator, mean_std, precision_text, refuse_non_finite, release_lock,
                                 remove_stale_temps, sample_std, unreadable, versions, write_json)
from condensation.data import denormalise, file_label, value_limit
from condensation.device import parallel
from condensation.device.footprint import check_fits, condensation_bytes
from condensation.evaluation import evaluate_pool
from condensation.plots import save_grids
from condensation.run.progress import Progress, epoch_lines


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints and checkpoints, for every script

_PLAIN = (str, int, float, bool, type(None), list, tuple, dict)


def fingerprint(args, skip=()):
    """The arguments that determine a run's result, as a plain dict: a checkpoint made with another is foreign."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(args).items())
            if k not in skip and isinstance(v, _PLAIN)}


def check_same_run(path, theirs, ours):
    """UserError naming the differing flags when a checkpoint's fingerprint is not this run's."""
    diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if diff:
        raise UserError(f'cannot resume: {path} belongs to another run (differs in {", ".join(diff)}); rerun with '
                        f'the same flags or delete it')


def load_state(path, needs=('fingerprint',)):
    """A run's own checkpoint (a dict of tensors and plain values, holding the keys `needs`); UserError when it is
    unreadable, foreign or holds non-finite values."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f'cannot resume: {unreadable(path, e)}; delete or move it to start afresh') from None
    missing = [k for k in needs if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f'cannot resume: {path} is not a checkpoint of this project (no {", ".join(missing)}); move '
                        f'it away or pass another --save_path')
    refuse_non_finite(state, f'cannot resume: {path}', 'delete it and rerun with a lower learning rate')
    return state


def resume_state(path, ours, resumable=(), key='fingerprint', needs=('fingerprint',)):
    """The state of the checkpoint at path for --resume, without its fingerprint; UserError when there is none, it
    is unreadable, or it belongs to a run with other flags (ours: this run's fingerprint; the checkpoint's, under
    `key`, is compared without the `resumable` flags)."""
    if not os.path.exists(path):
        raise UserError(f'--resume: no checkpoint at {path}; run without --resume to start')
    state = load_state(path, needs)
    stored = state.pop(key) if key == 'fingerprint' else state[key]
    check_same_run(path, {k: v for k, v in (stored or {}).items() if k not in resumable}, ours)
    return state


def recorded_args(path):
    """The arguments a run recorded in one of its files: `args` of a JSON summary or config, `fingerprint` of a
    checkpoint, `meta['args']` of a results file (tensors memory-mapped, not read); {} when unreadable."""
    try:
        if path.endswith('.json'):
            with open(path) as f:
                obj = json.load(f)
            return obj.get('args') or {}
        obj = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        return obj.get('fingerprint') or (obj.get('meta') or {}).get('args') or {}
    except Exception:  # a foreign or damaged file says nothing about its data; the run replaces it as before
        return {}


def check_same_data(args, paths, remedy):
    """UserError when one of `paths`, the files this run would write, holds a run on other data: another folder or
    file of the same base name, or another --im_size. A rerun replaces its own results, never another dataset's."""
    def key(dataset, im_size):  # --im_size resizes folders only; elsewhere it can only repeat the data's own size
        return dataset, im_size if str(dataset).startswith('folder:') else None

    ours = key(args.dataset, args.im_size)
    for path in paths:
        if not os.path.isfile(path):
            continue
        made = recorded_args(path)
        theirs = key(made.get('dataset', args.dataset), made.get('im_size', args.im_size))
        if theirs != ours:
            words = [f'{d}' + (f' at --im_size {s}' if s else '') for d, s in (theirs, ours)]
            raise UserError(f'{path} holds a run on {words[0]}, this run is on {words[1]}; {remedy}')


def results_meta(data, args, method, model, recorded, protocol, stats=None, images=True, **extra):
    """The `meta` of a results file, one builder for every method: the data's name and shape, its standardisation
    (mean, std: `stats`' when given, e.g. DiM's real data, else data's), with images=True (the file holds
    standardised sets) the class names and normalised=True, what made it (method, model, ipc), the recorded
    arguments, seed, library versions, precision and process count, `extra` (what only one method has), and the
    evaluation protocol last."""
    stats = stats or data
    meta = dict(dataset=data.name, im_size=list(data.im_size), channel=data.channel, mean=stats.mean, std=stats.std)
    if images:
        meta.update(classes=stats.class_names, normalised=True)
    meta.update(method=method, model=model, ipc=args.ipc, args=recorded, seed=args.seed, versions=versions(),
                precision=precision_text(args), world_size=parallel.world_size())
    return dict(meta, **extra, protocol=protocol)


def save_results(path, data, accs_all_exps, meta=None, accs_iters=None):
    """The original results layout, `data` = [[images, labels]] per experiment and `accs_all_exps` =
    {arch: [accuracies]}, plus `meta` (arguments, seed, versions, protocol), per-architecture mean/std and the
    accuracies at intermediate evaluation points."""
    summary = {arch: dict(zip(('mean', 'std'), mean_std(a))) for arch, a in accs_all_exps.items()}
    res = {'data': data, 'accs_all_exps': accs_all_exps, 'summary': summary, 'meta': meta or {}}
    if accs_iters is not None:
        res['accs_iters'] = accs_iters
    atomic_save(res, path)


def save_image_grid(path, images, mean, std, nrow, titles=None):
    """De-normalise standardised images and write them as a PNG grid, nrow images per row, enlarged to be seen
    (plots.save_grids). titles: [(title, count)]: consecutive blocks of the images, each titled."""
    grid = denormalise(images.detach().float().cpu(), mean, std)
    if grid.shape[1] not in (1, 3):
        grid = grid[:, :1]  # a PNG holds 1 or 3 channels: other data is shown by its first channel
    counts = [n for _, n in titles] if titles else [len(grid)]
    save_grids(path, list(zip([t for t, _ in titles] if titles else [None], grid.split(counts))), nrow)


def grid_columns(ipc, num_classes):
    """Images a row in the picture of a set with ipc images per class (class-major): the images of c whole classes,
    c the smallest divisor of K with c ≥ √(K / ipc), for a picture about as wide as high (ipc 1 of 10 classes: 2
    rows of 5; ipc 10: a row per class)."""
    c = next(c for c in range(1, num_classes + 1) if num_classes % c == 0 and c * c * ipc >= num_classes)
    return c * ipc


def run_files(folder, stem):
    """The files Run keeps for a run named `stem` in `folder`: <stem>.ckpt.pt, <stem>.log, the lock file
    <stem>.lock, and what the lock holds, <stem>.* (DiM's stages keep their own layout)."""
    path = functools.partial(os.path.join, folder)
    return dict(checkpoint=path(f'{stem}.ckpt.pt'), log=path(f'{stem}.log'), lock=path(f'{stem}.lock'),
                lock_what=path(f'{stem}.*'))


class Run:
    """The files of one run, for every script: the run's lock, its checkpoint and the resume check, the temporary
    files a killed run left, and the log (appended to, after a header line). In the order a run meets them:

        run = Run(args, RESUMABLE, folder, **run_files(folder, stem))  # refuses another run's files
        state = run.resumed               # the checkpoint's state with --resume (None without)
        run.log('...')
        run.save(state)                   # the checkpoint, atomically, with the run's fingerprint (rank 0 writes)
        run.close()                       # the log and the lock

    The fingerprint is the arguments that determine the result (all but RESUMABLE, the flags a resumed run may
    change) plus `identity` (e.g. the method); --resume refuses a checkpoint whose fingerprint differs, naming the
    flags. `key`/`needs`: where a checkpoint keeps the arguments it was made with and the keys it must hold
    (DiM's GAN checkpoints keep them all under 'args'). `results`: files of this run that a run on other data
    must not replace. `missing_ok`: --resume without a checkpoint starts afresh (CL) instead of failing. `names`:
    the names the fingerprint records some arguments under (a renamed flag keeps its first name, so that the runs
    made before the renaming still resume)."""

    def __init__(self, args, resumable, folder, *, checkpoint, log, lock, lock_what, stale=(), results=(),
                 advice='pass another --save_path', key='fingerprint', needs=('fingerprint',), missing_ok=False,
                 names=None, **identity):
        self.args, self.folder, self.ckpt_path, self.lock_path = args, folder, checkpoint, lock
        recorded = {(names or {}).get(k, k): v for k, v in fingerprint(args, resumable).items()}
        self.fingerprint = dict(sorted(recorded.items()), **identity)
        hold_lock(lock, lock_what, advice)
        try:
            resume = getattr(args, 'resume', False) and (os.path.isfile(checkpoint) or not missing_ok)
            self.resumed = resume_state(checkpoint, self.fingerprint, resumable, key, needs) if resume else None
            check_same_data(args, tuple(results) + (checkpoint,), f'{advice} or move those files away')
        except UserError:
            release_lock(lock)  # a refused run leaves nothing behind, its lock file included
            raise
        remove_stale_temps(folder, *stale)
        # The log opens (and is appended to) only now that the inputs are checked.
        self.log = Log(log)

    def warn_fresh_start(self):
        """After the log's opening lines: a run without --resume where an earlier run left its checkpoint starts
        afresh and replaces it; say so at once, while the user can still stop it and add --resume instead."""
        if not self.args.resume and os.path.isfile(self.ckpt_path):
            self.log(f'warning: {self.ckpt_path} holds the checkpoint of an earlier run; this run starts afresh and '
                     f'replaces it (stop it and add --resume to continue that run instead)')

    def save(self, state):
        atomic_save(dict(state, fingerprint=self.fingerprint), self.ckpt_path)

    def close(self):
        self.log.close()
        release_lock(self.lock_path)


# ----------------------------------------------------------------------------------------------------------------
# Condensation experiments (main.py, main_DM.py; CL's DSA and DM memories use SyntheticSet)

def init_synset(data, ipc, init, generator):
    """K·ipc images with class-major labels: N(0, 1) noise; for init real each class block is then overwritten by
    ipc distinct random real images of the class."""
    images = torch.randn(data.num_classes * ipc, data.channel, *data.im_size, generator=generator).to(data.device)
    if init == 'real':
        for c in range(data.num_classes):
            images[c * ipc:(c + 1) * ipc] = data.get_images(c, ipc, generator)
    labels = torch.arange(data.num_classes).repeat_interleave(ipc)
    return images, labels


class SyntheticSet:
    """A synthetic set being learned and the step bookkeeping of every condensation loop: K·ipc images (init_synset
    from `generator`, or a checkpoint's `state`), their SGD (momentum 0.5 in every method), and `progress`."""

    def __init__(self, data, ipc, init, lr_img, generator, state=None, diverged='the synthetic images diverged'):
        if state is None:
            self.images, self.labels = init_synset(data, ipc, init, generator)
        else:  # resumed: the checkpoint's images, with init_synset's class-major labels
            self.images = state['image_syn'].to(data.device)
            self.labels = torch.arange(data.num_classes).repeat_interleave(ipc)
        self.images.requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.images], lr=lr_img, momentum=0.5)
        if state is not None:
            load_optimizer_state(self.optimizer, state['optimizer'])
        self.num_classes, self.lr_img, self.diverged = data.num_classes, lr_img, diverged
        self.limit = value_limit(data.mean, data.std)

    def state_dict(self):
        return dict(image_syn=self.images.detach().cpu(), optimizer=self.optimizer.state_dict())

    def progress(self, log, total, where, **kw):
        """The bookkeeping (Progress) of a loop that learns this set, with its divergence message; at every read
        of the loss the images are checked too: values beyond any the data can produce (data.value_limit) are a
        divergence that stays finite."""
        def check(place, advice):
            check_within(self.images, self.limit, f'{place}: the synthetic images', advice)
        return Progress(log, total, where=f'{where} iteration {{it}}', diverged=self.diverged,
                        advice=f'lower --lr_img (now {self.lr_img})', check=check, **kw)


def eval_iterations(args, reference_every):
    """Iterations at which the set is evaluated: every `eval_every` (default: the original's `reference_every`)
    for eval modes S and SS, otherwise only the last one; always the last one."""
    last = args.Iteration
    if args.eval_final_only or args.eval_mode not in ('S', 'SS'):
        return [last]
    every = args.eval_every or reference_every
    return sorted(set(range(0, last + 1, every)) | {last})


class CondensationRun(Run):
    """num_exp experiments of one method. Every file shares a prefix under --save_path: results, pictures,
    summary, log and checkpoint. Every random draw of an iteration must come from generators named by
    (args.seed, exp, it): then a run resumed from its checkpoint repeats the uninterrupted run exactly.

    recipes: {architecture: EvalRecipe}, the evaluation pool; notes: extra lines for the log's header."""

    def __init__(self, args, resumable, method, data, reference_every, recipes, notes=()):
        smallest = min(len(i) for i in data.indices_class)
        if args.init == 'real' and args.ipc > smallest:
            raise UserError(f'--ipc {args.ipc} exceeds the smallest class of {data.name} ({smallest} images); '
                            f'lower --ipc or use --init noise')
        per_class = '' if method != 'DM' or args.per_class or 'BN' in args.model else ', pass --per_class'
        check_fits(condensation_bytes(args, data, method), args.device,
                   f'{method} with --ipc {args.ipc} ({data.num_classes * args.ipc} images)',
                   f'lower --ipc{per_class} or use a smaller --model')
        self.method, self.data, self.recipes = method, data, recipes
        self.name = name = f'{method}_{file_label(args.dataset, args.im_size)}_{args.model}_{args.ipc}ipc'
        path = functools.partial(os.path.join, args.save_path)
        self.results_path, self.summary_path = path(f'res_{name}.pt'), path(f'{name}.json')
        super().__init__(args, resumable, args.save_path, **run_files(args.save_path, name),
                         results=(self.results_path, self.summary_path),
                         stale=(f'res_{name}.', f'{name}.', f'vis_{name}_'), method=method)
        self.eval_its = eval_iterations(args, reference_every)
        epochs = sorted({r.epoch_eval_train for r in recipes.values()})
        self.log(f'plan: {args.num_exp} experiment(s) x {args.Iteration} iterations on '
                 f'{args.device}{parallel.processes()}; at each of '
                 f'{len(self.eval_its)} evaluation point(s), {args.num_eval} network(s) x {len(recipes)} '
                 f'architecture(s) trained {"/".join(map(str, epochs))} epochs; precision: {precision_text(args)}')
        self.log(f'{method} {self.name}: {data}; device {args.device}; seed {args.seed}; evaluation at iterations '
                 f'{self.eval_its}')
        self.log(f'hyper-parameters: {self.fingerprint}')
        for line in notes:
            self.log(line)
        self.warn_fresh_start()
        self.state = self.resumed or dict(exp=0, it=0, data=[], accs_all_exps={}, accs_iters={}, times=[])

    def experiments(self):
        """The experiments still to run; each ends with experiment_done."""
        return range(self.state['exp'], self.args.num_exp)

    def synthetic_set(self, exp):
        """The experiment's set (a SyntheticSet): initialised from the stream (seed, 'init', exp) as noise or random
        real images (--init), or as checkpointed."""
        if 'image_syn' not in self.state:
            self.state.update(t_syn=0.0, t_eval=0.0)
        return SyntheticSet(self.data, self.args.ipc, self.args.init, self.args.lr_img,
                            make_generator(self.args.seed, 'init', exp),
                            self.state if 'image_syn' in self.state else None)

    def iterations(self, exp, syn):
        """The iterations still to run. Before iteration `it` (and after the last one) the set is evaluated when
        `it` is an evaluation point; the set saved at the end is the one evaluated last."""
        args = self.args
        self._progress = syn.progress(self.log, args.Iteration + 1, f'exp {exp}', start=self.state['it'],
                                      desc=f'{self.method} exp {exp}', bar=not args.no_progress,
                                      checkpoint_every=args.checkpoint_every)
        self._t0 = None
        for it in self._progress:
            if it in self.eval_its and f'{exp}/{it}' not in self.state['accs_iters']:
                self.evaluate(exp, it, syn.images.detach(), syn.labels)
            if it == args.Iteration:
                break
            self._t0 = time.time()
            yield it

    def evaluate(self, exp, it, images, labels):
        t0 = time.time()
        args, data, state = self.args, self.data, self.state
        # Progress lines while each network trains, on a CPU (on a GPU the networks train together, in seconds).
        progress = None if torch.device(args.device).type != 'cpu' else epoch_lines(
            self.log, max(r.epoch_eval_train for r in self.recipes.values()))
        accs = evaluate_pool(self.recipes, args.num_eval, data, images, labels, args.seed, (exp, it), self.log,
                             label=f'exp {exp} iter {it}', on_epoch=progress)
        keep = (torch.arange(len(labels)) % args.ipc < 50).nonzero()[:, 0]  # ≤ 50 per class in a picture
        save_image_grid(os.path.join(args.save_path, f'vis_{self.name}_exp{exp}_iter{it}.png'), images[keep],
                        data.mean, data.std, nrow=grid_columns(min(args.ipc, 50), data.num_classes))
        state['accs_iters'][f'{exp}/{it}'] = accs
        state['t_eval'] += time.time() - t0
        if it == args.Iteration:
            for arch, a in accs.items():
                state['accs_all_exps'].setdefault(arch, []).extend(a)

    def step_done(self, exp, it, loss, syn):
        """Progress, a log line every 10 iterations, a checkpoint every --checkpoint_every and before evaluations."""
        save = self._progress.checkpoint_due(it) or it + 1 in self.eval_its
        self.state['t_syn'] += time.time() - self._t0
        loss = self._progress.read(it, loss, save)
        if loss is not None and it % 10 == 0:
            # Logged per class as the original does; the optimised loss is the sum over classes.
            self.log(f'exp {exp} iter {it:05d}: loss {loss:.4f} (per class {loss / syn.num_classes:.4f})')
        if save:
            self.save(dict(self.state, it=it + 1, syn_cls=syn.labels, **syn.state_dict()))

    def experiment_done(self, exp, syn):
        """Append the experiment's set to the results file, which is rewritten after every experiment."""
        state = self.state
        state['data'].append([syn.images.detach().cpu(), syn.labels.clone()])
        state['times'].append(dict(synthesis_s=state['t_syn'], evaluation_s=state['t_eval']))
        self.log(f'exp {exp} done: synthesis {state["t_syn"]:.1f} s, evaluation {state["t_eval"]:.1f} s')
        save_results(self.results_path, state['data'], state['accs_all_exps'], self.meta(dict(times=state['times'])),
                     state['accs_iters'])
        self.state = {k: v for k, v in state.items() if k not in ('image_syn', 'syn_cls', 'optimizer')}
        self.state.update(exp=exp + 1, it=0)
        self.save(self.state)

    def finish(self):
        """The JSON summary and the closing lines of the log, in the original's words."""
        args, state = self.args, self.state
        acc = {arch: dict(zip(('mean', 'std'), mean_std(a)), std_ddof1=sample_std(a), all=a)
               for arch, a in state['accs_all_exps'].items()}
        summary = dict(run=self.name, dataset=self.data.name, accuracy=acc, accs_iters=state['accs_iters'],
                       times=state['times'], args=self.fingerprint, versions=versions(),
                       precision=precision_text(args))
        write_json(self.summary_path, summary)
        for arch, s in acc.items():
            self.log(f'Run {args.num_exp} experiments, train on {args.model}, evaluate {len(s["all"])} random '
                     f'{arch}, mean = {s["mean"]:.2f}%  std = {s["std"]:.2f}%')
        self.log(f'results: {self.results_path}, {self.summary_path}')
        self.close()
        return summary

    def meta(self, extra=None):
        args = self.args
        meta = results_meta(self.data, args, self.method, args.model, self.fingerprint,
                            dict(epoch_eval_train=args.epoch_eval_train, eval_mode=args.eval_mode, dsa=args.dsa,
                                 dsa_strategy=args.dsa_strategy))
        return dict(meta, **(extra or {}))

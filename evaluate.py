"""Evaluate condensed sets under one stated protocol, next to random real images of the same size.

Fresh networks are trained on each set and tested on the real test set; the random real images are trained by the
same networks (the same initial weights and batch orders), so the gain is a paired comparison.

    python evaluate.py --set result/res_DM_CIFAR10_ConvNet_10ipc.pt --dataset CIFAR10 --data_path data

A set (--set, repeatable) is
  - a results file of this project (res_<method>_<dataset>_<model>_<ipc>ipc.pt: every experiment, or --exp N),
  - the original repository's results file (the same name; `data` = [[images, labels], ...], standardised),
  - a tensor file with `images` and `labels` (uint8 pixels, or float standardised with the dataset's mean and std;
    --normalized no: float pixels in [0, 1]),
  - an image folder with one sub-folder per class (class names of the dataset, class indices, or any K names,
    taken in sorted order).
The protocol is evaluate_synset's (DSA or DC augmentation, epochs, lr, batch); the DC/DSA/DM papers' defaults.
"""
import env  # first: the environment PyTorch reads when it starts (env.py)

import os

import contextlib
import hashlib
import sys

import numpy as np
import torch

from augment import get_daparam
from cli import ArgumentParser, Config, add_flags, check_args, check_network, unused_flags
from data import IMAGE_EXTENSIONS, _read_image, canonical_dataset, get_dataset
from dc import recommended_dsa_strategy
from evaluation import EvalRecipe, evaluate_pool, get_eval_pool, progress_lines
from runner import Run, run_files
from utils import UserError, atomic_write_text, make_generator, mean_std, precision_text, run_cli, sample_std, \
    versions, write_json

# Flags that may change between a run and its --resume.
RESUMABLE = ('resume', 'device', 'no_progress', 'save_path', 'data_path', 'cuda_graphs', 'precision')


def parse_args(argv=None, notes=None):
    """evaluate.py's flags, validated; notes collects lines for the run log."""
    notes = [] if notes is None else notes
    p = ArgumentParser(description=__doc__.split('\n')[0])
    g = p.add_argument_group('sets')
    g.add_argument('--set', dest='sets', action='append', required=True, metavar='PATH',
                   help='a results file, a tensor file with images and labels, or a folder of class folders; repeat '
                        'the flag for more sets')
    g.add_argument('--exp', default='all',
                   help="results files: the experiment to evaluate (0, 1, ...), or 'all' (each experiment's set, "
                        "the accuracies pooled, as the papers report)")
    g.add_argument('--normalized', choices=['yes', 'no'], default=None,
                   help="float images: standardised with the dataset's mean and std (yes) or pixels in [0, 1] (no); "
                        "None: yes, as the original and this project save sets, unless a results file of this project "
                        "says otherwise (uint8 images are always pixels 0..255)")
    add_flags(p.add_argument_group('dataset'), ('dataset', 'data_path', 'im_size'))
    g = p.add_argument_group('protocol', "a default of None below means: --models ConvNet; --dsa_strategy the papers' "
                                         "strategy for the dataset (no flip on MNIST and SVHN); --epoch_eval_train "
                                         "1000 (with --dc_aug: 300 without augmentation, 1000 with)")
    g.add_argument('--models', nargs='+', default=None, metavar='NAME',
                   help='architectures to train (networks.NETWORKS); with --eval_mode, added to its pool')
    add_flags(g, ('eval_mode',), eval_mode=None)
    add_flags(g, ('num_eval', 'epoch_eval_train', 'lr_net', 'batch_train', 'dsa_strategy', 'seed'),
              epoch_eval_train=None, dsa_strategy=None)
    g.add_argument('--dc_aug', action='store_true',
                   help="DC's evaluation augmentation (get_daparam: crop/scale/rotate on MNIST, crop/noise for "
                        "ConvNetBN, none otherwise; 300 epochs without augmentation, 1000 with) instead of DSA")
    g.add_argument('--baseline', choices=['random', 'none'], default='random',
                   help='random: also evaluate the same number of random real images per class (drawn from --seed) '
                        'with the same networks, and report the gain')
    g = p.add_argument_group('run')
    add_flags(g, ('device', 'save_path', 'resume', 'align_corners', 'no_progress', 'amp', 'eval_one_by_one',
                  'cuda_graphs', 'precision'))
    args = p.parse_args(argv)
    notes += unused_flags(p, args, 'evaluate')
    # Defaults that depend on other flags: DSA with the strategy the papers use for the dataset, 1000 epochs.
    if args.dc_aug:
        args.dsa_strategy = 'None'  # DC's augmentation replaces DSA (unused_flags reports a strategy given)
    elif args.dsa_strategy is None:
        args.dsa_strategy = recommended_dsa_strategy(canonical_dataset(args.dataset))
    args.explicit_epochs = args.epoch_eval_train is not None
    if not args.explicit_epochs:
        args.epoch_eval_train = 1000
    check_args(args)
    if args.exp != 'all' and not args.exp.isdigit():
        raise UserError(f"--exp must be an experiment index (0, 1, ...) or 'all', got {args.exp}")
    if args.eval_mode in ('S', 'SS'):
        raise UserError(f'--eval_mode {args.eval_mode} evaluates the model a set was made with; name it with --models')
    archs = (args.models or []) + (get_eval_pool(args.eval_mode, None) if args.eval_mode else [])
    args.models = list(dict.fromkeys(archs or ['ConvNet']))
    return Config(args)


# ----------------------------------------------------------------------------------------------------------------
# Reading a set: every format becomes (experiment, standardised images, labels) triples, checked against the dataset

class SetError(UserError):
    """What is wrong with one set file (one line); all bad files are reported before anything runs."""


def _numpy_scalars():
    """The original saves numpy float64 accuracies; let a weights-only load read them (and nothing else)."""
    safe = getattr(torch.serialization, 'safe_globals', None)
    if safe is None:
        return contextlib.nullcontext()
    scalar = (np._core if hasattr(np, '_core') else np.core).multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32')]
    return safe([(scalar, 'numpy.core.multiarray.scalar'), (scalar, 'numpy._core.multiarray.scalar'), np.dtype,
                 *dtypes])


WHAT_A_SET_IS = ('a results file (data = [[images, labels], ...]), a tensor file with images and labels, or a folder '
                 'with one sub-folder of images per class')


def read_set(path, args, data):
    """{name, path, kind, note, iteration, exps: [(exp, images, labels)]} with standardised float images."""
    if os.path.isdir(path):
        images, labels, note = read_folder(path, data)
        return dict(kind='image folder', note=note, iteration=0, exps=[(0, *standardised(images, labels, 'pixels',
                                                                                        None, data, path))])
    if not os.path.isfile(path):
        raise SetError(f'{path}: no such file or folder')
    try:
        with _numpy_scalars():
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise SetError(f'{path}: not a readable PyTorch file ({type(e).__name__}); a set is {WHAT_A_SET_IS}') from None
    if isinstance(obj, dict) and 'data' in obj:
        return read_results(path, obj, args, data)
    if isinstance(obj, dict) and 'images' in obj and 'labels' in obj:
        form, note = float_form(obj['images'], args.normalized)
        images, labels = standardised(obj['images'], obj['labels'], form, None, data, path)
        return dict(kind='tensor file', note=note, iteration=0, exps=[(0, images, labels)])
    keys = f' (keys: {", ".join(map(str, obj))})' if isinstance(obj, dict) else f' (a {type(obj).__name__})'
    raise SetError(f'{path}: not a set{keys}; a set is {WHAT_A_SET_IS}')


def read_results(path, obj, args, data):
    """A results file: this project's (with `meta`: its dataset, constants and normalisation are checked and used)
    or the original's (standardised with the dataset's constants, unless --normalized no)."""
    meta = obj.get('meta') if isinstance(obj.get('meta'), dict) else None
    sets = obj['data']
    if not isinstance(sets, (list, tuple)) or not sets or not all(isinstance(s, (list, tuple)) and len(s) == 2
                                                                     for s in sets):
        raise SetError(f'{path}: data must be a non-empty list of [images, labels] pairs, one per experiment')
    if meta is not None and meta.get('dataset') not in (None, data.name):
        raise SetError(f'{path} was made for {meta["dataset"]}; pass --dataset {meta["dataset"]}')
    chosen = range(len(sets)) if args.exp == 'all' else [int(args.exp)]
    if chosen[-1] >= len(sets):
        raise SetError(f'{path} holds {len(sets)} experiment(s) (0..{len(sets) - 1}); --exp {args.exp} is not one')
    if meta is not None and 'normalised' in meta:
        form = 'standardised' if meta['normalised'] else 'pixels'
        note = 'float, standardised (results file)' if meta['normalised'] else 'pixels (results file)'
        stats = (list(meta['mean']), list(meta['std'])) if meta['normalised'] and 'mean' in meta else None
        if stats == (data.mean, data.std):
            stats = None  # the dataset's own constants: the images are used as they are, to the bit
    else:
        form, note = float_form(sets[chosen[0]][0], args.normalized)
        stats = None
    # A set from this project's DC/DSA/DM run is evaluated by the networks its run used for the final evaluation:
    # with the same --seed and protocol the accuracies are the recorded ones.
    iteration = int((meta or {}).get('args', {}).get('Iteration', 0) or 0)
    exps = []
    for exp in chosen:
        where = f'{path} (experiment {exp})' if len(sets) > 1 else path
        exps.append((exp, *standardised(*sets[exp], form, stats, data, where)))
    kind = 'results file' if meta is not None else 'original results file'
    return dict(kind=kind, note=note, iteration=iteration, exps=exps)


def float_form(images, normalized):
    """How the pixels of a file without metadata are read: uint8 are pixels 0..255; floats are standardised
    unless --normalized no says [0, 1] pixels. Returns (form, note for the report)."""
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        return 'pixels', 'uint8 pixels 0..255'
    if normalized == 'no':
        return 'pixels', 'float pixels in [0, 1] (--normalized no)'
    assumed = '' if normalized == 'yes' else ' (assumed; --normalized no for [0, 1] pixels)'
    return 'standardised', f"float, standardised with the dataset's mean and std{assumed}"


def standardised(images, labels, form, stats, data, where):
    """Check a set against the dataset (shape, labels, every class present, finite pixels) and return (images
    standardised with the dataset's constants as float32 on the CPU, int64 labels). form: 'pixels' (uint8 0..255 or
    float in [0, 1]) or 'standardised' (with stats = (mean, std), or the dataset's own when None)."""
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise SetError(f'{where}: images and labels must be tensors, got {type(images).__name__} and '
                       f'{type(labels).__name__}')
    images, labels = images.detach().cpu(), labels.detach().cpu()
    shape, k = (data.channel, *data.im_size), data.num_classes
    if images.dim() == 3 and data.channel == 1:
        images = images[:, None]
    if images.dim() != 4 or tuple(images.shape[1:]) != shape or not len(images):
        raise SetError(f'{where}: images are {"x".join(map(str, images.shape))}, {data.name} needs '
                       f'Nx{shape[0]}x{shape[1]}x{shape[2]}')
    if labels.dim() != 1 or len(labels) != len(images):
        raise SetError(f'{where}: labels must be {len(images)} class indices (one per image), got shape '
                       f'{tuple(labels.shape)}')
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise SetError(f'{where}: labels must be class indices, got fractional values')
    elif labels.dtype == torch.bool:
        raise SetError(f'{where}: labels must be class indices, got booleans')
    labels = labels.long()
    if labels.min() < 0 or labels.max() >= k:
        raise SetError(f'{where}: labels out of range: {int(labels.min())}..{int(labels.max())}, {data.name} has '
                       f'classes 0..{k - 1}')
    present = int((torch.bincount(labels, minlength=k) > 0).sum())
    if present != k:
        raise SetError(f'{where}: holds images of {present} classes, {data.name} has {k}')
    if images.is_floating_point():
        if not torch.isfinite(images).all():
            raise SetError(f'{where}: {int((~torch.isfinite(images)).sum())} pixel values are NaN or infinite')
        if form == 'pixels' and (images.min() < 0 or images.max() > 1):
            raise SetError(f'{where}: float pixels must lie in [0, 1] (found {float(images.min()):.3g}..'
                           f'{float(images.max()):.3g}); pass uint8 images for 0..255, or drop --normalized no if '
                           f'they are standardised')
    elif images.dtype != torch.uint8:
        raise SetError(f'{where}: images must be uint8 or float, got {images.dtype}')
    elif form == 'standardised':
        raise SetError(f'{where}: uint8 images are pixels 0..255, not standardised; drop --normalized yes')
    x = images.float().clone() if images.dtype != torch.uint8 else images
    if form == 'standardised':
        if stats is None:
            return x, labels
        # standardised with other constants (e.g. a folder dataset's own): back to [0, 1] pixels first
        shape4 = (1, -1, 1, 1)
        x = x * torch.tensor(stats[1]).view(shape4) + torch.tensor(stats[0]).view(shape4)
    return data.standardise(x).cpu(), labels


def read_folder(path, data):
    """uint8 images and labels from PATH/<class>/*.png: class folders named after the dataset's classes, or by
    class index, or any K names taken in sorted order. Greyscale saved as RGB (equal channels) reads as one channel."""
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith('.'))
    k = data.num_classes
    if len(classes) != k:
        raise SetError(f'{path}: holds {len(classes)} class folders, {data.name} has {k} classes')
    if set(classes) == set(data.class_names):
        label_of, note = {c: data.class_names.index(c) for c in classes}, 'class folders by name'
    elif all(c.isdigit() for c in classes) and sorted(map(int, classes)) == list(range(k)):
        label_of, note = {c: int(c) for c in classes}, 'class folders by index'
    else:
        label_of = {c: i for i, c in enumerate(classes)}
        note = f'class folders in sorted order ({classes[0]} = class 0, ...)'
    images, labels = [], []
    for c in classes:
        files = sorted(e.path for e in os.scandir(os.path.join(path, c)) if e.is_file() and not e.name.startswith('.')
                       and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
        if not files:
            raise SetError(f'{os.path.join(path, c)}: no images ({" ".join(IMAGE_EXTENSIONS)})')
        for f in files:
            try:
                a = _read_image(f, None)
            except UserError as e:
                raise SetError(str(e)) from None
            if data.channel == 1 and a.shape[2] == 3 and (a == a[:, :, :1]).all():
                a = a[:, :, :1]
            if a.shape != (*data.im_size, data.channel):
                raise SetError(f'{f}: {a.shape[1]}x{a.shape[0]} with {a.shape[2]} channel(s), {data.name} images are '
                               f'{data.im_size[1]}x{data.im_size[0]} with {data.channel}')
            images.append(torch.from_numpy(a).permute(2, 0, 1))
            labels.append(label_of[c])
    return torch.stack(images), torch.tensor(labels), f'uint8 pixels 0..255, {note}'


def read_sets(args, data):
    """Every --set, read and checked; UserError with one line per bad file, before any work is done."""
    sets, bad = [], []
    for path in args.sets:
        try:
            s = read_set(path, args, data)
        except SetError as e:
            bad.append(str(e))
            continue
        s.update(name=path, path=os.path.abspath(path))
        s['digest'] = hashlib.sha1(b''.join(t.numpy().tobytes() for _, x, y in s['exps'] for t in (x, y))).hexdigest()
        sets.append(s)
    if bad:
        raise UserError(f'\n{os.path.basename(sys.argv[0])}: error: '.join(bad))
    return sets


# ----------------------------------------------------------------------------------------------------------------
# The protocol

def eval_recipes(args, data):
    """{architecture: EvalRecipe}: DSA (--dsa_strategy) or, with --dc_aug, DC's augmentation by architecture and
    the DC paper's epochs (300 without augmentation, 1000 with) unless --epoch_eval_train is given."""
    recipes = {}
    for arch in args.models:
        check_network(arch, data)
        over = {}
        if args.dc_aug:
            dc = get_daparam(data.name, arch, arch, None)
            over = dict(dc_aug_param=dc, epoch_eval_train=args.epoch_eval_train if args.explicit_epochs else
                        300 if dc['strategy'] == 'none' else 1000)
        recipes[arch] = EvalRecipe.from_args(args, **over)
    return recipes


def protocol_text(arch, r):
    dc = (r.dc_aug_param or {}).get('strategy', 'none')
    aug = f'DSA {r.dsa_strategy}' if r.dsa else f'DC {dc}' if dc != 'none' else 'no augmentation'
    decay = r.epoch_eval_train // 2 + 1
    return (f'{arch}: {r.epoch_eval_train} epochs (+1), SGD lr {r.lr_net} (x0.1 after epoch {decay}), '
            f'momentum 0.9, weight decay 5e-4, batch {r.batch_train}, {aug}')


def random_real(data, counts, generator):
    """counts[c] random real images of class c (all of a smaller class; standardised) and their labels."""
    picks = [data.get_images(c, int(n), generator).cpu() for c, n in enumerate(counts)]
    return torch.cat(picks), torch.cat([torch.full((len(x),), c) for c, x in enumerate(picks)])


def per_class(counts):
    return str(counts[0]) if min(counts) == max(counts) else f'{min(counts)}-{max(counts)}'


def pct(accs):
    m, s = mean_std(accs)
    return f'{m:.2f} ± {s:.2f}'


def markdown(args, data, sets, recipes, rows):
    lines = [f'Evaluation on {data.name} ({len(data.x_test)} test images), seed {args.seed}, device {args.device}, '
             f'{args.num_eval} network(s) per architecture and experiment:', '']
    lines += [f'- {protocol_text(arch, r)}' for arch, r in recipes.items()]
    lines += [f'- {s["name"]}: {s["kind"]}, {s["note"]}, {len(s["exps"])} experiment(s)' for s in sets]
    lines += ['', '| set | images/class | architecture | accuracy (%) | n | random real (%) | gain (points) |',
              '|---|---|---|---|---|---|---|']
    for r in rows:
        base = pct(r['random']['all']) if r['random'] else '-'
        gain = f'{r["gain"]:+.2f}' if r['random'] else '-'
        lines.append(f'| {r["set"]} | {r["images_per_class"]} | {r["architecture"]} | {pct(r["accuracy"]["all"])} | '
                     f'{r["n"]} | {base} | {gain} |')
    return '\n'.join(lines) + '\n'


def summary(accs):
    m, s = mean_std(accs)
    return dict(mean=m, std=s, std_ddof1=sample_std(accs), all=accs)


# ----------------------------------------------------------------------------------------------------------------

def main(argv=None):
    notes = []
    args = parse_args(argv, notes)
    data = get_dataset(args.dataset, args.data_path, device=args.device, im_size=args.im_size)
    recipes = eval_recipes(args, data)
    sets = read_sets(args, data)

    stem = f'eval_{data.name}_{os.path.splitext(os.path.basename(os.path.normpath(args.sets[0])))[0]}' + (
        f'_and_{len(sets) - 1}_more' if len(sets) > 1 else '')
    paths = {ext: os.path.join(args.save_path, f'{stem}.{ext}') for ext in ('md', 'json')}
    run = Run(args, RESUMABLE, args.save_path, **run_files(args.save_path, stem), stale=(stem,),
              digests=[s['digest'] for s in sets])
    done, log = run.resumed['done'] if run.resumed else {}, run.log
    log(f'evaluate {len(sets)} set(s) on {data}; device {args.device}; seed {args.seed}; {args.num_eval} network(s) '
        f'per architecture and experiment; baseline {args.baseline}; precision: {precision_text(args)}')
    for line in notes:
        log(line)
    for arch, r in recipes.items():
        log(f'protocol {protocol_text(arch, r)}')
    for s in sets:
        log(f'set {s["name"]}: {s["kind"]}, {s["note"]}, experiments {[e for e, _, _ in s["exps"]]}, '
            f'sha1 {s["digest"]}')
    progress = None if torch.device(args.device).type != 'cpu' else progress_lines(
        log, max(r.epoch_eval_train for r in recipes.values()))

    def accuracies(key, images, labels, keys, label, arch):
        """The accuracies of num_eval networks of arch on (images, labels), each checkpointed once trained."""
        if key not in done:
            done[key] = evaluate_pool({arch: recipes[arch]}, args.num_eval, data, images, labels, args.seed, keys, log,
                                      label=label, on_epoch=progress)[arch]
            run.save(dict(done=done))
        return done[key]

    rows = []
    for i, s in enumerate(sets):
        for arch in recipes:
            accs, base = [], []
            for exp, images, labels in s['exps']:
                # Network j of arch starts from the weights of the stream (seed, exp, iteration, arch, j), for the
                # set and for its random baseline alike.
                keys = (exp, s['iteration'])
                accs += accuracies(f'set {i}/{exp}/{arch}', images, labels, keys, f'{s["name"]} exp {exp}', arch)
                if args.baseline == 'random':
                    counts = torch.bincount(labels, minlength=data.num_classes).tolist()
                    x, y = random_real(data, counts, make_generator(args.seed, 'random_real', exp))
                    base += accuracies(f'random {counts}/{exp}/{s["iteration"]}/{arch}', x, y, keys,
                                       f'random real ({per_class(counts)}/class) exp {exp}', arch)
            counts = torch.bincount(s['exps'][0][2], minlength=data.num_classes).tolist()
            rows.append(dict(set=s['name'], images_per_class=per_class(counts), architecture=arch, n=len(accs),
                             accuracy=summary(accs), random=summary(base) if base else None,
                             gain=mean_std(accs)[0] - mean_std(base)[0] if base else None))

    table = markdown(args, data, sets, recipes, rows)
    atomic_write_text(paths['md'], table)
    write_json(paths['json'], dict(
        dataset=data.name, seed=args.seed, device=args.device, num_eval=args.num_eval, baseline=args.baseline,
        protocol={arch: protocol_text(arch, r) for arch, r in recipes.items()},
        sets=[{k: s[k] for k in ('name', 'path', 'kind', 'note', 'iteration', 'digest')} | dict(
            experiments=[e for e, _, _ in s['exps']]) for s in sets],
        results=rows, args=run.fingerprint, versions=versions(), precision=precision_text(args)))
    log(table, echo=False)
    log(f'results: {paths["md"]}, {paths["json"]}')
    run.close()
    print(table)
    return rows


if __name__ == '__main__':
    run_cli(main)

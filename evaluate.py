"""Evaluate condensed sets under one stated protocol, next to random real images of the same size and the full
training set.

Fresh networks are trained on each set and tested on the real test set. Next to each set: one random real subset of
its size (per dataset, size, architecture, protocol and seed: every set of that size is measured against the same
baseline, in this run and the next), the full training set under the same protocol, the share of the full-data
accuracy the set recovers, and DD-Ranking's label-robust score; with --no_aug also the accuracies without the
evaluation augmentation and DD-Ranking's augmentation-robust score (formulas: docs/design.md, section 1.5).
The baseline's and the full data's accuracies are cached in --cache_dir (trained once).

    python evaluate.py --set result/res_DM_CIFAR10_ConvNet_10ipc.pt --dataset CIFAR10 --data_path data

A set (--set, repeatable) is
  - a results file of this project (res_<method>_<dataset>_<model>_<ipc>ipc.pt: every experiment, or --exp N),
  - the original repository's results file (the same name; `data` = [[images, labels], ...], standardised),
  - a tensor file with `images` and `labels` (uint8 pixels, or float standardised with the dataset's mean and std;
    --normalized no: float pixels in [0, 1]),
  - a bare [images, labels] list (float images need --normalized yes or no: such a file does not say),
  - an image folder with one sub-folder per class (class names of the dataset, class indices, or any K names,
    taken in sorted order).
The protocol is evaluate_synset's (DSA or DC augmentation, epochs, lr, batch); the DC/DSA/DM papers' defaults.
"""
from condensation import env  # first: the environment PyTorch reads when it starts (env.py)

import os

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import sys

import numpy as np
import torch

from condensation.augment import get_daparam
from condensation.common import (UserError, atomic_write_text, make_generator, mean_pm, mean_std, precision_text,
                                 run_cli, sample_std, versions, write_json)
from condensation.data import IMAGE_EXTENSIONS, _read_image, canonical_dataset, get_dataset
from condensation.evaluation import EvalRecipe, evaluate_pool, get_eval_pool
from condensation.methods.dc import recommended_dsa_strategy
from condensation.run.progress import epoch_lines
from condensation.run.cli import ArgumentParser, Config, add_flags, check_args, check_network, unused_flags
from condensation.run.runner import Run, run_files

# Flags that may change between a run and its --resume.
RESUMABLE = ('resume', 'device', 'no_progress', 'save_path', 'data_path', 'cuda_graphs', 'precision', 'cache_dir',
             'full_data', 'full_epochs', 'full_num_eval', 'no_aug')
SCORE_WEIGHT = 0.5  # DD-Ranking's default weight of the two terms of its scores (docs/design.md, section 1.5)


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
                   help='random: also evaluate the same number of random real images per class, one subset per '
                        'size drawn from --seed and shared by every set of that size (cached), and report the gain')
    g = p.add_argument_group('scores', 'the full training set under the same protocol (trained once per dataset, '
                                       'architecture, protocol and seed, and cached) and DD-Ranking\'s scores')
    g.add_argument('--full_data', choices=['auto', 'train', 'none'], default='auto',
                   help="the full-data accuracy: auto: from the cache when it holds it, else left out with a note "
                        "(on a CPU a full MNIST network takes hours); train: from the cache, trained and cached when "
                        "missing; none: left out")
    g.add_argument('--full_epochs', type=int, default=None,
                   help="epochs of the full-data networks (default: the protocol's; another value is part of the "
                        "cache key and stated in the table)")
    g.add_argument('--full_num_eval', type=int, default=1, help='full-data networks per architecture')
    g.add_argument('--no_aug', action='store_true',
                   help='also train every set and its baseline without the evaluation augmentation: the '
                        'augmentation-robust view (accuracies without augmentation and the ARS)')
    g.add_argument('--cache_dir', default=None,
                   help='where the random baselines and full-data accuracies are cached, one JSON file each '
                        '(default: <data_path>/evaluate_cache)')
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
    if args.cache_dir is None:
        args.cache_dir = os.path.join(args.data_path, 'evaluate_cache')
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


WHAT_A_SET_IS = ('a results file (data = [[images, labels], ...]), a tensor file with images and labels, a bare '
                 '[images, labels] list, or a folder with one sub-folder of images per class')


def read_set(path, args, data):
    """{name, path, kind, note, keys, exps: [(exp, images, labels)]} with standardised float images; keys[exp]: the
    keys of the networks that evaluate experiment exp (evaluation.evaluate_pool)."""
    if os.path.isdir(path):
        images, labels, note = read_folder(path, data)
        return dict(kind='image folder', note=note, keys={0: (0, 0)}, exps=[(0, *standardised(images, labels, 'pixels',
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
        return tensor_set(path, obj['images'], obj['labels'], 'tensor file', args, data)
    if isinstance(obj, (list, tuple)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        if obj[0].is_floating_point() and args.normalized is None:
            raise SetError(f"{path}: a bare [images, labels] list does not say how its float images are scaled; pass "
                           f"--normalized yes (standardised with {data.name}'s mean and std) or --normalized no "
                           f"(pixels in [0, 1])")
        return tensor_set(path, *obj, '[images, labels] list', args, data)
    if isinstance(obj, dict) and 'latents' in obj:
        raise SetError(f'{path}: an IT-GAN result (latents and a generator, no images); evaluate the images '
                       f'main_ITGAN.py wrote beside it, {os.path.basename(path)[:-3]}_images.pt')
    keys = f' (keys: {", ".join(map(str, obj))})' if isinstance(obj, dict) else f' (a {type(obj).__name__})'
    raise SetError(f'{path}: not a set{keys}; a set is {WHAT_A_SET_IS}')


def tensor_set(path, images, labels, kind, args, data):
    form, note = float_form(images, args.normalized)
    return dict(kind=kind, note=note, keys={0: (0, 0)}, exps=[(0, *standardised(images, labels, form, None, data,
                                                                                  path))])


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
    # A set from this project's runs is evaluated by the networks its run used for the final evaluation: with the
    # same --seed and protocol the accuracies are the recorded ones. DC/DSA/DM key them by (experiment, Iteration);
    # a run that keys them otherwise (IT-GAN) records the keys of each experiment.
    iteration = int((meta or {}).get('args', {}).get('Iteration', 0) or 0)
    recorded = (meta or {}).get('eval_keys')
    keys = {exp: tuple(recorded[exp]) if recorded and exp < len(recorded) else (exp, iteration) for exp in chosen}
    exps = []
    for exp in chosen:
        where = f'{path} (experiment {exp})' if len(sets) > 1 else path
        exps.append((exp, *standardised(*sets[exp], form, stats, data, where)))
    kind = 'results file' if meta is not None else 'original results file'
    return dict(kind=kind, note=note, keys=keys, exps=exps)


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


def without_augmentation(recipe):
    """The same protocol with no augmentation of the training batches (the augmentation-robust view)."""
    return dataclasses.replace(recipe, dsa=False, dc_aug_param=None)


def random_real(data, counts, generator):
    """counts[c] random real images of class c (all of a smaller class; standardised) and their labels."""
    picks = [data.get_images(c, int(n), generator).cpu() for c, n in enumerate(counts)]
    return torch.cat(picks), torch.cat([torch.full((len(x),), c) for c, x in enumerate(picks)])


def baseline_draw(data, counts, seed):
    """The random real subset of a set with counts[c] images of class c, and the keys of its networks: named by
    the seed and the counts alone, so every set of that size, in any run, is measured against the same one."""
    keys = ('random_real', *map(int, counts))
    return (*random_real(data, counts, make_generator(seed, *keys)), keys)


def per_class(counts):
    return str(counts[0]) if min(counts) == max(counts) else f'{min(counts)}-{max(counts)}'


# ----------------------------------------------------------------------------------------------------------------
# The accuracies trained once: the random baselines and the full data, cached per dataset, architecture, protocol,
# device type and seed (one JSON file each; delete one to train it again)

def data_digest(data):
    """sha1 of the dataset's tensors: a cached accuracy belongs to exactly these images."""
    h = hashlib.sha1()
    for t in (data.x_train, data.labels_train, data.x_test, data.labels_test):
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(what, data, digest, arch, recipe, args, networks, **extra):
    return dict(what=what, dataset=data.name, data_sha1=digest, architecture=arch, protocol=protocol_text(arch, recipe),
                amp=recipe.amp, align_corners=args.align_corners, device=torch.device(recipe.device).type,
                seed=args.seed, networks=networks, **extra)


def cache_path(folder, key):
    tag = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = ''.join(c if c.isalnum() or c in '-.' else '_' for c in f'{key["what"]}_{key["dataset"]}_'
                   f'{key["architecture"]}')
    return os.path.join(folder, f'{name}_{tag}.json')


def cache_read(folder, key):
    """The accuracies cached under key, or None."""
    try:
        with open(cache_path(folder, key)) as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    return entry['accuracies'] if isinstance(entry, dict) and entry.get('key') == key else None


def cache_write(folder, key, accs, log):
    try:
        os.makedirs(folder, exist_ok=True)
        write_json(cache_path(folder, key), dict(key=key, accuracies=accs, versions=versions()))
    except OSError as e:  # the run needs no cache; the next one trains again
        log(f'warning: {folder}: {e.strerror or e}; the accuracies were not cached')


def cached(folder, key, train, log):
    """The accuracies cached under key; when none are, train()'s, cached (train None: nothing is trained, None)."""
    accs = cache_read(folder, key)
    if accs is not None:
        log(f'{key["what"]} {key["architecture"]}: {mean_pm(accs, "%")} from {cache_path(folder, key)}')
    elif train is not None:
        accs = train()
        cache_write(folder, key, accs, log)
    return accs


# ----------------------------------------------------------------------------------------------------------------
# Scores (docs/design.md, section 1.5)

def dd_ranking_score(first, second, weight=SCORE_WEIGHT):
    """DD-Ranking's normalisation of weight·first + (1 − weight)·second, two accuracy differences as fractions of
    1 (so in [−1, 1]), to [0, 100] %: 100 (e^x − e^−1) / (e − e^−1)."""
    x = weight * first + (1 - weight) * second
    return 100 * (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def mean(accs):
    return float(sum(accs)) / len(accs)


def scores(accs, base, full):
    """gain (points), recovered (% of the full-data accuracy) and the label-robust score of one row; None where an
    accuracy is missing. LRS: weight·IOR − (1 − weight)·HLR with IOR = set − random, HLR = full − set."""
    syn = mean(accs)
    return dict(gain=100 * (syn - mean(base)) if base else None,
                recovered=100 * syn / mean(full) if full else None,
                lrs=dd_ranking_score(syn - mean(base), syn - mean(full)) if base and full else None)


def summary(accs):
    if not accs:
        return None
    m, s = mean_std(accs)
    return dict(mean=m, std=s, std_ddof1=sample_std(accs), all=accs)


def markdown(args, data, sets, recipes, rows, notes):
    lines = [f'Evaluation on {data.name} ({len(data.x_test)} test images), seed {args.seed}, device {args.device}, '
             f'{args.num_eval} network(s) per architecture and experiment:', '']
    lines += [f'- {protocol_text(arch, r)}' for arch, r in recipes.items()]
    lines += [f'- {s["name"]}: {s["kind"]}, {s["note"]}, {len(s["exps"])} experiment(s)' for s in sets]
    lines += [f'- {n}' for n in notes]

    def cell(v, fmt='{:.2f}'):
        return '-' if v is None else fmt.format(v)

    def acc(v):
        return '-' if v is None else mean_pm(v['all'])

    lines += ['', '| set | images/class | architecture | accuracy (%) | n | random real (%) | gain (points) | '
                  'full data (%) | recovered (%) | LRS (%) |', '|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r["set"]} | {r["images_per_class"]} | {r["architecture"]} | {acc(r["accuracy"])} | '
                     f'{r["n"]} | {acc(r["random"])} | {cell(r["gain"], "{:+.2f}")} | {acc(r["full"])} | '
                     f'{cell(r["recovered"], "{:.1f}")} | {cell(r["lrs"])} |')
    if args.no_aug:
        lines += ['', 'The same sets without the evaluation augmentation (the augmentation-robust view):', '',
                  '| set | architecture | with (%) | without (%) | random real with (%) | random real without (%) | '
                  'ARS (%) |', '|---|---|---|---|---|---|---|']
        for r in rows:
            na = r['no_aug']
            lines.append(f'| {r["set"]} | {r["architecture"]} | {acc(r["accuracy"])} | {acc(na["accuracy"])} | '
                         f'{acc(r["random"])} | {acc(na["random"])} | {cell(na["ars"])} |')
    return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------------------------------------------

class Pools:
    """The networks a run trains: a set's pools (checkpointed in the run once trained), the random real baselines
    and the full data (cached across runs), with progress lines on a CPU."""

    def __init__(self, args, data, run):
        self.args, self.data, self.run, self.log = args, data, run, run.log
        self.done = run.resumed['done'] if run.resumed else {}
        self.on_cpu = torch.device(args.device).type == 'cpu'

    @functools.cached_property
    def digest(self):
        # hashed when a cache key first needs it: a run with no baseline and no full data reads no dataset bytes
        return data_digest(self.data)

    def pool(self, recipe, arch, images, labels, keys, label, n=None):
        """The accuracies of n (default --num_eval) networks of arch on (images, labels)."""
        args = self.args
        progress = epoch_lines(self.log, recipe.epoch_eval_train) if self.on_cpu else None
        return evaluate_pool({arch: recipe}, n or args.num_eval, self.data, images, labels, args.seed, keys, self.log,
                             label=label, on_epoch=progress)[arch]

    def accuracies(self, key, recipe, arch, images, labels, keys, label):
        """A set's accuracies, each pool checkpointed once trained."""
        if key not in self.done:
            self.done[key] = self.pool(recipe, arch, images, labels, keys, label)
            self.run.save(dict(done=self.done))
        return self.done[key]

    def baseline(self, counts, arch, recipe, view=''):
        """The random real subset of that size, evaluated once per protocol and cached."""
        args, data = self.args, self.data
        key = cache_key('random_real', data, self.digest, arch, recipe, args, args.num_eval, counts=counts)
        x, y, keys = baseline_draw(data, counts, args.seed)
        return cached(args.cache_dir, key, lambda: self.pool(recipe, arch, x, y, keys, f'random real '
                                                             f'({per_class(counts)}/class){view}'), self.log)

    def full_data(self, recipes):
        """{arch: accuracies} of the full training set (from the cache; trained with --full_data train) and the
        table's notes on the baseline, the full data and the scores."""
        args, data = self.args, self.data
        notes, full = [], {}
        cache_words = f'cached in {os.path.abspath(args.cache_dir)}'
        if args.baseline == 'random':
            notes.append(f'random real: one subset per size and seed, shared by every set of that size; {cache_words}')
        for arch, r in recipes.items():
            if args.full_data == 'none':
                break
            r = dataclasses.replace(r, epoch_eval_train=args.full_epochs or r.epoch_eval_train)
            key = cache_key('full_data', data, self.digest, arch, r, args, args.full_num_eval)
            what = (f'{arch}: {args.full_num_eval} network(s) of {r.epoch_eval_train} epochs on the '
                    f'{len(data.x_train)} training images')
            train = None if args.full_data == 'auto' else lambda: self.pool(
                r, arch, data.images_train, data.labels_train, ('full_data',), 'full data', args.full_num_eval)
            accs = cached(args.cache_dir, key, train, self.log)
            if accs is None:
                notes.append(f'full data {what}: not in the cache; --full_data train trains them once ({cache_words})')
                continue
            full[arch] = accs
            notes.append(f'full data {what}: {mean_pm(full[arch], "%")}; {cache_words}')
        notes.append(f'recovered: the share of the full-data accuracy; LRS, ARS: DD-Ranking\'s label- and '
                     f'augmentation-robust scores, weight {SCORE_WEIGHT} (docs/design.md, section 1.5)')
        return full, notes

    def row(self, i, s, arch, recipe, full):
        """The table row of set i on arch: its accuracies, the baseline's, the full data's and the scores."""
        args, data = self.args, self.data
        views = {'': recipe, ' without augmentation': without_augmentation(recipe)} if args.no_aug else {'': recipe}
        accs, base = {v: [] for v in views}, {v: [] for v in views}
        for exp, images, labels in s['exps']:
            for view, r in views.items():
                # Network j of arch on experiment exp starts from the weights of the stream (seed, *keys, arch, j),
                # with keys the ones its own run used.
                accs[view] += self.accuracies(f'set {i}/{exp}/{arch}{view}', r, arch, images, labels,
                                              s['keys'][exp], f'{s["name"]} exp {exp}{view}')
        distinct = {tuple(torch.bincount(y, minlength=data.num_classes).tolist()) for _, _, y in s['exps']}
        if args.baseline == 'random':
            for counts in sorted(distinct):
                for view, r in views.items():
                    base[view] += self.baseline(list(counts), arch, r, view)
        counts = torch.bincount(s['exps'][0][2], minlength=data.num_classes).tolist()
        row = dict(set=s['name'], images_per_class=per_class(counts), architecture=arch, n=len(accs['']),
                   accuracy=summary(accs['']), random=summary(base['']), full=summary(full.get(arch)),
                   **scores(accs[''], base[''], full.get(arch)))
        if args.no_aug:
            plain = ' without augmentation'
            ars = dd_ranking_score(mean(accs['']) - mean(base['']), mean(accs[plain]) - mean(base[plain])) \
                if base[''] else None
            row['no_aug'] = dict(accuracy=summary(accs[plain]), random=summary(base[plain]), ars=ars)
        return row


def open_run(args, data, sets, recipes, notes):
    """The run (its files named after the first set: eval_<dataset>_<set>[_and_<n>_more].{md,json,log,ckpt.pt})
    and its opening lines; returns the run and the paths of the table and the JSON."""
    stem = f'eval_{data.name}_{os.path.splitext(os.path.basename(os.path.normpath(args.sets[0])))[0]}' + (
        f'_and_{len(sets) - 1}_more' if len(sets) > 1 else '')
    paths = {ext: os.path.join(args.save_path, f'{stem}.{ext}') for ext in ('md', 'json')}
    run = Run(args, RESUMABLE, args.save_path, **run_files(args.save_path, stem), stale=(stem,),
              digests=[s['digest'] for s in sets])
    log = run.log
    log(f'evaluate {len(sets)} set(s) on {data}; device {args.device}; seed {args.seed}; {args.num_eval} network(s) '
        f'per architecture and experiment; baseline {args.baseline}; full data {args.full_data}; cache '
        f'{os.path.abspath(args.cache_dir)}; precision: {precision_text(args)}')
    for line in notes:
        log(line)
    for arch, r in recipes.items():
        log(f'protocol {protocol_text(arch, r)}')
    for s in sets:
        log(f'set {s["name"]}: {s["kind"]}, {s["note"]}, experiments {[e for e, _, _ in s["exps"]]}, '
            f'sha1 {s["digest"]}')
    return run, paths


def main(argv=None):
    notes = []
    args = parse_args(argv, notes)
    data = get_dataset(args.dataset, args.data_path, device=args.device, im_size=args.im_size)
    recipes = eval_recipes(args, data)
    sets = read_sets(args, data)
    run, paths = open_run(args, data, sets, recipes, notes)
    pools = Pools(args, data, run)
    full, notes = pools.full_data(recipes)
    rows = [pools.row(i, s, arch, recipe, full) for i, s in enumerate(sets) for arch, recipe in recipes.items()]

    table = markdown(args, data, sets, recipes, rows, notes)
    atomic_write_text(paths['md'], table)
    write_json(paths['json'], dict(
        dataset=data.name, seed=args.seed, device=args.device, num_eval=args.num_eval, baseline=args.baseline,
        cache=os.path.abspath(args.cache_dir), score_weight=SCORE_WEIGHT,
        protocol={arch: protocol_text(arch, r) for arch, r in recipes.items()},
        sets=[{k: s[k] for k in ('name', 'path', 'kind', 'note', 'digest')} | dict(
            experiments=[e for e, _, _ in s['exps']], network_keys=[list(s['keys'][e]) for e, _, _ in s['exps']])
            for s in sets],
        results=rows, args=run.fingerprint, versions=versions(), precision=precision_text(args)))
    run.log(table, echo=False)
    run.log(f'results: {paths["md"]}, {paths["json"]}')
    run.close()
    print(table)
    return rows

if __name__ == '__main__':
    run_cli(main)

"""reproduce.py's machinery: the command line of a registry stage (cells.py), its estimated time, running it (in this
process through the entry script's `main(argv)`, or as a subprocess), reading a cell's accuracies from the files
its stage wrote, the verdict, and the report (markdown, its JSON twin and a plot of paper against measured).

A stage runs in its own folder under --out with a marker file, reproduce_stage.json (the command, running or
done, the wall time). With --resume a stage marked done with the same command is not rerun, and an interrupted one
continues from its entry script's checkpoint (the scripts' own --resume, which repeats the uninterrupted run) or,
where the script has none, starts again in an emptied folder.
"""
import contextlib
import glob
import importlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback

from condensation.repro import cells
from condensation.data import canonical_dataset, dataset_available
from condensation.methods.dc import get_loops
from condensation.evaluation import get_eval_pool
from condensation.plots import plot_agreement
from condensation.run.progress import duration
from condensation.common import (SCRIPTS_DIR, Terminated, UserError, atomic_write_text, mean_std, refuse_if_held,
                                 run_cli, write_json)

ROOT = SCRIPTS_DIR  # the entry scripts' folder: the stages run from there

MARKER = 'reproduce_stage.json'
# Each entry script's data, output and device flags; DiM's stages write into <out>/run/ and log into <out>/logs/.
IO_FLAGS = {
    'project': ('--data_path {data}', '--save_path {out}', '--device {device}'),
    'dim': ('--data-dir {data}', '--output-dir {out}', '--logs-dir {out}/logs', '--tag run', '--device {device}'),
}
SCRIPT_KIND = {'main_DM.py': 'project', 'main.py': 'project', 'CL_DM.py': 'project', 'main_ITGAN.py': 'project',
               'gen_condense.py': 'dim', 'pool_match.py': 'dim', 'validate.py': 'dim'}
# What an interrupted run of each script leaves to continue from (--resume); validate.py has no checkpoint.
CHECKPOINT = {'main_DM.py': '*.ckpt.pt', 'main.py': '*.ckpt.pt', 'main_ITGAN.py': '*.ckpt.pt', 'CL_DM.py': 'cl_*',
              'gen_condense.py': 'run/last.pth', 'pool_match.py': 'run/last.pth', 'validate.py': None}


# ----------------------------------------------------------------------------------------------------------------
# Flags and commands

def parse_flags(text):
    """'--a 1 --b x y --c' -> {'--a': ['1'], '--b': ['x', 'y'], '--c': []}; a later flag replaces an earlier one
    (a tier's value overrides the stage's base) and keeps the earlier one's place."""
    out, name = {}, None
    for tok in shlex.split(text):
        if tok.startswith('--'):
            name = tok
            out[name] = []
        elif name is None:
            raise ValueError(f'a value before any flag: {text}')
        else:
            out[name].append(tok)
    return out


def flag(flags, name, default=None, kind=str):
    """One flag's value (None: absent, so the script's default)."""
    values = flags.get(name)
    return default if values is None else kind(values[0])


def flags_list(flags, name, default, kind=str):
    """A flag that takes several values, as a list."""
    return [kind(v) for v in flags[name]] if name in flags else list(default)


def stage_dir(out, stage_id):
    return os.path.join(out, stage_id)


def stage_argv(stage, tier, data_path, out, device):
    """The entry script's argument list: the stage's flags at this tier, then data, output and device."""
    text = stage.flags[tier]
    for other in cells.STAGES:  # {id}: the folder of stage id
        text = text.replace('{' + other + '}', stage_dir(out, other))
    io = ' '.join(IO_FLAGS[SCRIPT_KIND[stage.script]]).format(data=shlex.quote(data_path),
                                                               out=shlex.quote(stage_dir(out, stage.id)),
                                                               device=device)
    flags = parse_flags(f'{text} {io}')
    return [tok for name, values in flags.items() for tok in [name] + values]


def command_line(script, argv):
    """What a user types from the project root to run the same stage by hand."""
    return ' '.join(['python', script] + [shlex.quote(a) for a in argv])


# ----------------------------------------------------------------------------------------------------------------
# Estimated time

def _image_scale(dataset):
    return {'MNIST': 28 * 28 / 1024}.get(dataset, 1.0)


def _classes(dataset):
    return {'CIFAR100': 100}.get(dataset, 10)


def _count(units, **amounts):
    for k, v in amounts.items():
        units[k] = units.get(k, 0.0) + v


def _count_training(units, networks, epochs, images, px, arch='ConvNet', batch=256):
    """`networks` networks trained `epochs` epochs on `images` images, then tested on 10,000."""
    cost = cells.ARCH_COST.get(arch, 1.0)
    _count(units, train_step=networks * epochs * max(1, math.ceil(images / batch)),
           train_img=networks * epochs * images * px * cost, test_img=networks * 10000 * px * cost)


def _condense(f, units, dm):
    ds, ipc, it, exps = flag(f, '--dataset'), flag(f, '--ipc', 1, int), flag(f, '--Iteration', 0, int), flag(
        f, '--num_exp', 5, int)
    K, px, br, model = _classes(ds), _image_scale(ds), flag(f, '--batch_real', 256, int), flag(f, '--model', 'ConvNet')
    cost = cells.ARCH_COST.get(model, 1.0)
    if dm:
        _count(units, dm_step=exps * it, dm_img=exps * it * K * (br + ipc) * px * cost)
    else:
        outer, inner = get_loops(ipc, flag(f, '--outer_loop', None, int), flag(f, '--inner_loop', None, int))
        _count(units, match_step=exps * it * outer * K, match_img=exps * it * outer * K * (br + ipc) * px * cost)
        _count_training(units, exps * it * (outer - 1), inner, K * ipc, px, model)
    mode = flag(f, '--eval_mode', 'SS' if dm else 'S')
    every = flag(f, '--eval_every', None, int) or (2000 if dm else 500)
    points = 1 if '--eval_final_only' in f or mode not in ('S', 'SS') else len(set(range(0, it + 1, every)) | {it})
    for arch in get_eval_pool(mode, model):
        _count_training(units, exps * points * flag(f, '--num_eval', 20, int), flag(f, '--epoch_eval_train', 300, int),
               K * ipc, px, arch)


def _gan(f, units, stage):
    ds = canonical_dataset(flag(f, '--data', 'cifar10'))
    K, px, width = _classes(ds), _image_scale(ds), flag(f, '--gan_width', 196, int)
    bs, ipc = flag(f, '--batch-size', 128 if stage == 1 else 64, int), flag(f, '--ipc', 50, int)
    epochs = flag(f, '--epochs', 150 if stage == 1 else 100, int)
    per_epoch = (cells.TRAIN_IMAGES[ds] - K * flag(f, '--val_split', 0, int)) // bs
    its = epochs * min(per_epoch, flag(f, '--iters-per-epoch', per_epoch, int))
    _count(units, gan_step=its, gan_img=its * bs * (width / 32) ** 2 * (px / _image_scale('MNIST')))
    if stage == 2:  # --epochs-match-train pool steps per generator step, on ResNets as often as not
        _count_training(units, its * flag(f, '--epochs-match-train', 16, int), 1, bs, px, 'resnet10')
    validations = epochs // flag(f, '--eval-interval', 10, int)
    for model in flags_list(f, '--eval-model', ['convnet']):
        steps = K * ipc // bs + 1
        _count_training(units, validations, flag(f, '--epochs-eval', 1000, int), steps * bs, px, model, batch=bs)


def _validate(f, units):
    ds = canonical_dataset(flag(f, '--data', 'cifar10'))
    K, px, ipc, bs = _classes(ds), _image_scale(ds), flag(f, '--ipc', 50, int), flag(f, '--batch-size', 128, int)
    models = flags_list(f, '--eval-model', ['convnet'])
    modes = {'both': ('onthefly', 'fixed')}.get(flag(f, '--dim_eval', 'onthefly'), (flag(f, '--dim_eval'),))
    nets, epochs = flag(f, '--num_eval', 5, int), flag(f, '--epochs-eval', 1000, int)
    for model in models:
        if 'onthefly' in modes:
            _count_training(units, nets, epochs, (K * ipc // bs) * bs, px, model, batch=bs)
        if 'fixed' in modes:
            _count_training(units, nets * flag(f, '--num_exp', 1, int), epochs, K * ipc, px, model)


def _cl(f, units):
    ds, steps, ipc = flag(f, '--dataset'), flag(f, '--steps', 5, int), flag(f, '--ipc', 20, int)
    K, px, method = _classes(ds), _image_scale(ds), flag(f, '--method').lower()
    seeds = flags_list(f, '--seeds', [0, 1, 2, 3, 4], int)
    new, br = K // steps, flag(f, '--batch_real', 256, int)
    for step in range(steps):
        for _ in seeds:
            if method == 'dm':
                it = flag(f, '--Iteration', 20000, int)
                _count(units, dm_step=it * new, dm_img=it * new * (br + ipc) * px)
            elif method == 'dsa':
                it = flag(f, '--Iteration', 1000, int)
                outer, inner = get_loops(ipc, flag(f, '--outer_loop', None, int), flag(f, '--inner_loop', None, int))
                _count(units, match_step=it * outer * new, match_img=it * outer * new * (br + ipc) * px)
                _count_training(units, it * (outer - 1), inner, new * ipc, px)
            elif method in ('herding', 'kcenter'):
                _count_training(units, 1, flag(f, '--feature_epochs', 20, int), cells.TRAIN_IMAGES[ds] // steps, px)
            elif method == 'dim':
                its, bs, width = flag(f, '--gan_iters', 5000, int), flag(f, '--gan_batch', 128, int), flag(
                    f, '--gan_width', 196, int)
                _count(units, gan_step=its, gan_img=its * bs * (width / 32) ** 2 * px / _image_scale('MNIST'))
            _count_training(units, flag(f, '--num_eval', 3, int), flag(f, '--epoch_eval_train', 1000, int),
                   new * (step + 1) * ipc, px, flag(f, '--model', 'ConvNet'))


def _itgan(f, units):
    ds, ipc = flag(f, '--dataset'), flag(f, '--ipc', None, int)
    K, px = _classes(ds), _image_scale(ds)
    n = K * ipc if ipc else cells.TRAIN_IMAGES[ds]
    inv = flag(f, '--invert_iters', 1000, int)
    _count(units, gan_step=inv * math.ceil(n / flag(f, '--invert_batch', 1000, int)), gan_img=inv * n)
    it, br = flag(f, '--Iteration', 1000, int), flag(f, '--batch_real', 256, int)
    cost = cells.ARCH_COST.get(flag(f, '--model', 'ConvNet'), 1.0)
    _count(units, dm_step=it, dm_img=it * K * (br + min(flag(f, '--batch_syn', 256, int), n // K)) * px * cost,
           gan_step=it, gan_img=it * n)
    for model in flags_list(f, '--eval_model', ['ResNet18BN']):
        _count_training(units, 4 * flag(f, '--num_eval', 3, int), flag(f, '--epoch_eval_train', 200, int) + 1, n, px,
                        model)


WORKLOAD = {'main_DM.py': lambda f, u: _condense(f, u, True), 'main.py': lambda f, u: _condense(f, u, False),
            'gen_condense.py': lambda f, u: _gan(f, u, 1), 'pool_match.py': lambda f, u: _gan(f, u, 2),
            'validate.py': _validate, 'CL_DM.py': _cl, 'main_ITGAN.py': _itgan}


def workload(stage, tier):
    """The units of work (cells.RATES' keys) of one stage at one tier, counted from its flags."""
    units = {'stage': 1.0}
    WORKLOAD[stage.script](parse_flags(stage.flags[tier]), units)
    return units


def estimate(stage_ids, tier, device_kind):
    """Seconds the stages would take on a device kind of cells.RATES ('H200', 'cpu')."""
    rates = cells.RATES[device_kind]
    return sum(amount * rates[k] for sid in stage_ids for k, amount in workload(cells.STAGES[sid], tier).items())


def device_kind(device):
    return 'cpu' if str(device).startswith('cpu') else 'H200'


# ----------------------------------------------------------------------------------------------------------------
# Running a stage

def read_marker(folder):
    try:
        with open(os.path.join(folder, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def stage_state(folder, script, argv, resume, inputs_at=0.0):
    """How a stage will run in `folder`: 'done' (with --resume: finished earlier with the same command, after the
    stages it reads, inputs_at, so not rerun), 'resume' (interrupted, with --resume: continue from the script's
    checkpoint) or 'fresh'."""
    marker = read_marker(folder)
    if not resume or marker is None or marker.get('argv') != argv:
        return 'fresh'
    if marker.get('status') == 'done':
        return 'done' if marker.get('finished_at', 0.0) >= inputs_at else 'fresh'
    pattern = CHECKPOINT[script]
    return 'resume' if pattern and glob.glob(os.path.join(glob.escape(folder), pattern)) else 'fresh'


def plan(stage_ids, out, argvs, resume, ran):
    """stage_state of each stage of a cell, in order: a stage that reads an earlier one (a DiM generator) runs
    again whenever that one runs or finished after it. `ran`: the stages run by this invocation (done)."""
    states, inputs_at = {}, 0.0
    for s in stage_ids:
        folder = stage_dir(out, s)
        states[s] = 'done' if s in ran else stage_state(folder, cells.STAGES[s].script, argvs[s], resume, inputs_at)
        marker = read_marker(folder) or {}
        inputs_at = max(inputs_at, marker.get('finished_at', 0.0)) if states[s] == 'done' else math.inf
    return states


def clear(folder):
    """Empty a stage folder before a fresh run; only a folder reproduce.py wrote (it holds a marker), and never
    while another process writes there."""
    if os.path.isdir(folder) and os.listdir(folder):
        if read_marker(folder) is None:
            raise UserError(f'{folder} holds files reproduce.py did not write; move them or pass another --out')
        refuse_if_held(folder, folder, 'pass another --out')
        shutil.rmtree(folder)


def _last_error(log_path, script):
    """The one-line error an entry script printed (its last line naming the script), for the report."""
    try:
        with open(log_path, errors='replace') as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return 'failed (no log)'
    for line in reversed(lines):
        if line.startswith(f'{script}: '):
            return line
    return lines[-1] if lines else 'failed'


def _stop_on_interrupt(code):
    """A stage stopped by Ctrl-C (exit code 130) or SIGTERM (143) stops reproduce.py too, in the same way."""
    if code == 130:
        raise KeyboardInterrupt
    if code == 143:
        raise Terminated


def run_in_process(script, argv, log_path):
    """The entry script's main(argv) with its output in log_path and its own error handling (utils.run_cli, under
    the script's name). None on success, else the error line. Ctrl-C and SIGTERM stop reproduce.py too."""
    module = importlib.import_module(script[:-3])
    saved, code, crash = sys.argv, 0, None
    sys.argv = [script] + argv  # argparse and run_cli name the script in their messages
    try:
        with open(log_path, 'a') as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            try:
                run_cli(lambda: module.main(argv))
            except SystemExit as e:
                code = e.code
            except Exception as e:  # a crash: the traceback goes to the stage log, one line to the report
                traceback.print_exc()
                crash = f'{script} crashed: {type(e).__name__}: {e} (traceback in {log_path})'
    finally:
        sys.argv = saved
    _stop_on_interrupt(code)
    return crash or (_last_error(log_path, script) if code else None)


def run_subprocess(script, argv, log_path):
    """The printed command itself, as a child process from the project root."""
    with open(log_path, 'a') as f:
        rc = subprocess.run([sys.executable, script] + argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    _stop_on_interrupt(rc)
    return None if rc == 0 else _last_error(log_path, script)


def run_stage(stage, argv, folder, how, isolate):
    """Run one stage (stage_state() said `how`), its wall time recorded in its marker; returns the error line or
    None."""
    os.makedirs(folder, exist_ok=True)
    log_path = os.path.join(folder, 'reproduce_console.log')
    marker = dict(script=stage.script, argv=argv, status='running', resumed=how == 'resume',
                  started=time.strftime('%Y-%m-%d %H:%M:%S'))
    previous = read_marker(folder) if how == 'resume' else None
    write_json(os.path.join(folder, MARKER), marker)
    t0 = time.time()
    run = run_subprocess if isolate else run_in_process
    error = run(stage.script, argv + (['--resume'] if how == 'resume' else []), log_path)
    wall = time.time() - t0 + ((previous or {}).get('wall_s') or 0.0)
    if error is None:
        write_json(os.path.join(folder, MARKER), dict(marker, status='done', wall_s=wall, finished_at=time.time(),
                                                      finished=time.strftime('%Y-%m-%d %H:%M:%S')))
    else:
        write_json(os.path.join(folder, MARKER), dict(marker, status='failed', wall_s=wall, error=error))
    return error


# ----------------------------------------------------------------------------------------------------------------
# Reading a cell's accuracies

def _json(folder, pattern, key):
    """The one JSON file in folder matching pattern that holds `key`."""
    found = []
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), pattern))):
        if os.path.basename(path) == MARKER:
            continue
        with open(path) as f:
            obj = json.load(f)
        if isinstance(obj, dict) and key in obj:
            found.append(obj)
    if len(found) != 1:
        raise ValueError(f'expected one result file {pattern} in {folder}, found {len(found)}')
    return found[0]


def _only(table, key, what):
    if key is None:
        if len(table) != 1:
            raise ValueError(f'{what}: several architectures ({", ".join(table)}); the registry must name one')
        return next(iter(table.values()))
    return table[key]


def read_accuracies(read, out):
    """The accuracies (in %) a cell reports, one per evaluated network, from its stage's result files."""
    folder = stage_dir(out, read.stage)
    if read.kind == 'condense':
        values = _only(_json(folder, '*.json', 'accuracy')['accuracy'], read.key, folder)['all']
    elif read.kind == 'dim':
        mode, model, which = read.key
        with open(os.path.join(folder, 'run', 'results.json')) as f:
            values = json.load(f)[mode]['models'][model][which]['all']
    elif read.kind == 'itgan':
        which, arch = read.key
        values = _only(_json(folder, 'ITGAN_*.json', 'accuracy')['accuracy'][which], arch, folder)['all']
    else:  # cl: every seed's networks after the last step
        s = _json(folder, 'cl_*.json', 'table')
        values = [a for seed in s['seeds'] for a in s['accs'][str(seed)][-1]]
        if len(s['table']) != s['steps']:
            raise ValueError(f'{folder}: {len(s["table"])} of {s["steps"]} steps finished')
    return [100.0 * v for v in values]


def missing_dataset(cell, data_path):
    return None if dataset_available(cell.dataset, data_path) else f'{cell.dataset} not found in {data_path}'


# ----------------------------------------------------------------------------------------------------------------
# Verdicts

def expected(cell, tier, kind):
    """The value a measurement is judged against: the paper at the paper tier, else this tier's reference measured
    on this kind of device (CPU or GPU) if there is one, else its first reference; None: none yet."""
    if tier == 'paper':
        return cell.published
    refs = cell.references.get(tier, [])
    same = [r for r in refs if (r.source.startswith('CPU')) == (kind == 'cpu')]
    return (same or refs or [None])[0]


# What a verdict compared with, in its words (agreeing, not agreeing): the paper at the paper tier; at the cut
# budgets of the other tiers only this project's reference for the same command, the paper being out of reach.
VERDICT_WORDS = {True: ('agrees with the paper', 'disagrees with the paper'),
                 False: ("matches this tier's reference", "differs from this tier's reference")}


def verdict(measured_mean, measured_std, target, tier):
    """Whether |measured − expected| <= max(1 point, 3 x the larger std), in words that name what was compared
    (expected(): the paper at the paper tier, this tier's reference elsewhere)."""
    if target is None:
        return 'no published value' if tier == 'paper' else 'not comparable: cut budget, and no reference for ' \
                                                             'this tier yet'
    tol = max(1.0, 3 * max(target.std or 0.0, measured_std))
    diff = measured_mean - target.mean
    word = VERDICT_WORDS[tier == 'paper'][abs(diff) > tol]
    note = '; informative only: the expected value is unconfirmed' if target.informative else ''
    return f'{word} ({diff:+.2f} points, tolerance {tol:.2f}{note})'


def value_text(v):
    if v is None:
        return 'none yet'
    std = '' if v.std is None else f' ± {v.std:.2f}'
    n = '' if v.n is None else f' (n {v.n})'
    return f'{v.mean:.2f}{std}{n}'


# ----------------------------------------------------------------------------------------------------------------
# The report

def row(cell, tier, out, data_path, device):
    """A report row with everything but the outcome (status, measured, verdict, wall)."""
    commands = [command_line(cells.STAGES[s].script, stage_argv(cells.STAGES[s], tier, data_path, out, device))
                for s in cell.stages]
    refs = cell.references.get(tier, [])
    return dict(id=cell.id, method=cell.method, dataset=cell.dataset, size=cell.size,
                published=None if cell.published is None else cell.published._asdict(),
                references=[r._asdict() for r in refs], expected=None, measured=None, verdict='', status='pending',
                wall_s=None, commands=commands, cut=cell.cuts.get(tier, ''), note=cell.note,
                folders=[stage_dir(out, s) for s in cell.stages])


def cite(v, sources):
    """A value with its source as a numbered reference into `sources` (text -> number, filled in order)."""
    key = sources.setdefault(v['source'], len(sources) + 1)
    return f'{value_text(as_value(v))} [{key}]'


def report_markdown(meta, rows):
    sources = {}

    lines = [f'# Reproduction report: tier {meta["tier"]}, {meta["device_name"]}', '',
             f'`{meta["command"]}`', '',
             f'{meta["started"]}; commit {meta["commit"]}; torch {meta["torch"]}; {meta["threads"]} torch thread(s). '
             f'Tier {meta["tier"]}: {cells.TIERS[meta["tier"]]}.', '',
             'Accuracies in %, mean ± population std over n networks (x experiments or seeds). A measurement '
             'agrees when |measured − expected| ≤ max(1 point, 3 × the larger std), where expected is the paper '
             'at the paper tier ("agrees with the paper") and this project\'s reference for the same command at the '
             'other tiers, whose cut budgets the paper does not compare with ("matches this tier\'s reference"; '
             'none yet: "not comparable: cut budget"). The wall time '
             'of a cell counts every run it reads, also one it shares with an earlier cell.', '',
             '| cell | paper | reference (this tier) | measured | verdict | wall | command |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        refs = '; '.join(cite(v, sources) for v in r['references']) or 'none yet'
        measured = r['measured']
        shown = value_text(as_value(measured)) if measured else r['status']
        command = ' && '.join(r['commands'])
        paper = cite(r['published'], sources) if r['published'] else 'none'
        lines.append(f'| {r["id"]} | {paper} | {refs} | {shown} | '
                     f'{r["verdict"]} | {duration(r["wall_s"])} | `{command}` |')
    lines += ['', 'Sources:', ''] + [f'{k}. {s}' for s, k in sources.items()]
    lines += ['', 'Cuts of this tier and notes:', '']
    lines += [f'- {r["id"]}: {r["cut"]}' + (f' ({r["note"]})' if r['note'] else '') for r in rows]
    lines += ['', f'Wall time: {duration(meta["runs_wall_s"])} for the runs of these cells (a shared run once), '
                  f'{duration(meta["wall_s"])} in the invocation that wrote this report.', '']
    return '\n'.join(lines)


def runs_wall(rows):
    """Seconds of every run the rows read, each run once, from the runs' markers."""
    folders = {f for r in rows for f in r['folders']}
    return sum((read_marker(f) or {}).get('wall_s') or 0.0 for f in folders)


def as_value(d):
    """A report's value dict (published, reference or measured) as a cells.Value."""
    return cells.Value(**{k: d.get(k) for k in cells.Value._fields})


def write_report(out, meta, rows):
    """reproduce.md, reproduce.json and reproduce.png in --out (rewritten after every cell)."""
    meta['runs_wall_s'] = runs_wall(rows)
    write_json(os.path.join(out, 'reproduce.json'), dict(meta=meta, rows=rows))
    atomic_write_text(os.path.join(out, 'reproduce.md'), report_markdown(meta, rows))
    points = [(r['id'], r['published']['mean'], r['published'].get('std') or 0.0, r['measured']['mean'],
               r['measured']['std']) for r in rows if r['published'] and r['measured']]
    plot_agreement(os.path.join(out, 'reproduce.png'), points,
                   f'tier {meta["tier"]} on {meta["device_name"]}: paper (x) against measured (y), %')


def measured_value(accs):
    m, s = mean_std([a / 100 for a in accs])
    return dict(mean=m, std=s, n=len(accs), source='', informative=False, all=accs)

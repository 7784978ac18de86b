"""Reproduce the papers' tables cell by cell on this machine, and say for each cell whether it agrees.

Every cell of the registry (cells.py: DM, DC, DSA, DiM, IT-GAN and continual learning, with the published number and
its source) runs our own entry script with the command the report prints, at a budget the tier sets: smoke (toy
size), cpu (minutes per MNIST cell on 2 CPU cores), quick (the reduced protocols of docs/results.md: MNIST and
CIFAR-10 in about 10 minutes on an H200) or paper (the published protocol). The report, reproduce.md (with a JSON
twin and a plot of paper against measured), gives per cell the published value, this project's reference for the
tier, the measurement, the verdict, the wall time and the command.

    python reproduce.py --list --tier quick
    python reproduce.py --tier quick --all --data_path ../shared/data
    python reproduce.py --tier paper --cells dm-cifar10-10 --resume
"""
from condensation import env  # first: the environment PyTorch reads when it starts (env.py)

import os
import platform
import subprocess
import sys
import time

import torch

from condensation.common import UserError, check_output_folder, hold_lock, release_lock, run_cli
from condensation.repro import cells
from condensation.repro import driver as rp
from condensation.run.cli import ArgumentParser, Config, add_flags, resolve_device


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--list', action='store_true', help='print the registry (with time estimates) and exit')
    p.add_argument('--tier', choices=list(cells.TIERS), default='quick',
                   help='; '.join(f'{k}: {v}' for k, v in cells.TIERS.items()))
    p.add_argument('--cells', nargs='+', default=None, metavar='ID', help='cells by id (see --list)')
    p.add_argument('--methods', nargs='+', default=None, metavar='METHOD',
                   help='cells of these methods: DM DC DSA DiM IT-GAN CL (any capitalisation)')
    p.add_argument('--datasets', nargs='+', default=None, metavar='DATASET', help='only cells on these datasets')
    p.add_argument('--all', action='store_true', help='every cell')
    add_flags(p, ('device', 'data_path'), helps=dict(data_path='dataset folder, passed to every entry script'))
    p.add_argument('--out', default=None,
                   help='output folder: a folder per run and the report (None: runs/reproduce/<tier>)')
    add_flags(p, ('resume',), helps=dict(
        resume='do not rerun the cells that an earlier run into --out finished with the same commands; an '
               'interrupted one continues from its checkpoint (or restarts cleanly where its script has none)'))
    p.add_argument('--max_minutes', type=float, default=None,
                   help='stop before a cell whose estimated time would not fit in this many minutes in all')
    p.add_argument('--isolate', action='store_true',
                   help='run every stage as a child process (the printed command itself) instead of calling its '
                        "script's main() in this process; slower to start, but a crash cannot touch later cells")
    args = p.parse_args(argv)
    args.device = resolve_device(args.device)
    args.out = args.out or os.path.join('runs', 'reproduce', args.tier)
    return Config(args)


def chosen_cells(args):
    """The cells to run or list, in registry order."""
    chosen = list(cells.CELLS)
    if args.cells:
        known = {c.id for c in chosen}
        unknown = [c for c in args.cells if c not in known]
        if unknown:
            raise UserError(f'unknown cell {unknown[0]}; python reproduce.py --list shows the cells')
        chosen = [c for c in chosen if c.id in args.cells]
    if args.methods:
        wanted = {m.lower() for m in args.methods}
        methods = {c.method.split()[0].lower() for c in cells.CELLS}
        if wanted - methods:
            raise UserError(f'unknown method {sorted(wanted - methods)[0]}; choose from '
                            f'{", ".join(sorted({c.method.split()[0] for c in cells.CELLS}))}')
        chosen = [c for c in chosen if c.method.split()[0].lower() in wanted]
    if args.datasets:
        wanted = {d.lower() for d in args.datasets}
        chosen = [c for c in chosen if c.dataset.lower() in wanted]
    if not (args.cells or args.methods or args.all or args.datasets or args.list):
        raise UserError('choose cells with --cells ID..., --methods ..., --datasets ... or --all (python reproduce.py '
                        '--list shows them)')
    if not chosen:
        raise UserError('no cell matches the selection; python reproduce.py --list shows the cells')
    return chosen


def list_cells(args, chosen):
    here = rp.device_kind(args.device)
    sources = {}
    rows = []
    for c in chosen:
        refs = '; '.join(rp.cite(r._asdict(), sources) for r in c.references.get(args.tier, [])) or 'none yet'
        paper = 'none' if c.published is None else rp.cite(c.published._asdict(), sources)
        rows.append((c.id, c.method, c.dataset, c.size, paper, refs,
                     rp.duration(rp.estimate(c.stages, args.tier, here)),
                     rp.duration(rp.estimate(c.stages, args.tier, 'H200'))))
    head = ('cell', 'method', 'dataset', 'size', 'paper', f'reference ({args.tier})', 'est. here', 'est. H200')
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    print(f'Tier {args.tier}: {cells.TIERS[args.tier]}.\n')
    for r in [head, tuple('-' * w for w in widths)] + rows:
        print('  '.join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    stages = sorted({s for c in chosen for s in c.stages})
    print(f'\nAll {len(chosen)} cells ({len(stages)} runs, a shared run counted once): '
          f'{rp.duration(rp.estimate(stages, args.tier, here))} here ({args.device}), '
          f'{rp.duration(rp.estimate(stages, args.tier, "H200"))} on an H200.')
    print('\nSources:')
    for text, key in sources.items():
        print(f'  [{key}] {text}')
    print('\nTime estimates: ' + '; '.join(f'{k}: {v}' for k, v in cells.RATE_BASIS.items()) + '.')
    print(f'\nCuts of tier {args.tier} against the published protocol:')
    for c in chosen:
        print(f'  {c.id}: {c.cuts.get(args.tier, "")}' + (f' ({c.note})' if c.note else ''))


def portable(path):
    """A path the printed commands can use from the project root: as given when this runs from the root."""
    return path if not os.path.isabs(path) and os.path.abspath(os.getcwd()) == rp.ROOT else os.path.abspath(path)


def cpu_name():
    """'CPU (<model name>, N cores)' from /proc/cpuinfo where there is one."""
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            model = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), model)
    except OSError:
        pass
    return f'CPU ({model}, {os.cpu_count()} cores)'


def commit():
    try:
        return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=rp.ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def main(argv=None):
    args = parse_args(argv)
    chosen = chosen_cells(args)
    if args.list:
        list_cells(args, chosen)
        return None
    if not os.path.isdir(args.data_path):
        raise UserError(f'--data_path {args.data_path}: no such folder; pass the folder that holds the datasets')
    check_output_folder(args.out, '--out')
    # One reproduce.py per --out: a second would clear the stage folder the first is running in.
    lock = os.path.join(args.out, 'reproduce.lock')
    hold_lock(lock, args.out, 'pass another --out')
    try:
        return run_cells(args, chosen, argv)
    finally:
        release_lock(lock)


def run_cells(args, chosen, argv):
    """Run the chosen cells into --out (held by this process), writing the report after each."""
    data_path, out, kind = portable(args.data_path), portable(args.out), rp.device_kind(args.device)
    device_name = torch.cuda.get_device_name(torch.device(args.device)) if kind != 'cpu' else cpu_name()
    meta = dict(tier=args.tier, device=args.device, device_name=device_name, data_path=data_path, out=out,
                command=' '.join(['python', 'reproduce.py'] + (argv if argv is not None else sys.argv[1:])),
                started=time.strftime('%Y-%m-%d %H:%M'), commit=commit(), torch=torch.__version__,
                threads=torch.get_num_threads(), wall_s=0.0)
    rows = [rp.row(c, args.tier, out, data_path, args.device) for c in chosen]
    t0, ran, failed = time.time(), set(), {}
    stages = sorted({s for c in chosen for s in c.stages})
    print(f'reproduce.py: {len(chosen)} cell(s) of tier {args.tier} on {args.device}, estimated total '
          f'{rp.duration(rp.estimate(stages, args.tier, kind))} ({len(stages)} runs, less what --resume finds done); '
          f'report in {os.path.join(out, "reproduce.md")}')
    try:
        for i, (cell, r) in enumerate(zip(chosen, rows)):
            missing = rp.missing_dataset(cell, args.data_path)
            if missing:
                r.update(status='skipped', verdict=f'skipped: {missing}')
                print(f'[{i + 1}/{len(chosen)}] {cell.id}: skipped: {missing}')
                continue
            argvs = {s: rp.stage_argv(cells.STAGES[s], args.tier, data_path, out, args.device) for s in cell.stages}
            states = rp.plan(cell.stages, out, argvs, args.resume, ran)
            todo = [s for s in cell.stages if states[s] != 'done']
            need = rp.estimate(todo, args.tier, kind) if todo else 0.0
            if args.max_minutes is not None and time.time() - t0 + need > 60 * args.max_minutes:
                print(f'reproduce.py: stopping before {cell.id}: its estimate ({rp.duration(need)}) would not fit in '
                      f'--max_minutes {args.max_minutes:g} ({rp.duration(time.time() - t0)} used)')
                for later in rows[i:]:
                    later.update(status='not run',
                                 verdict=f'not run: would not fit in --max_minutes {args.max_minutes:g}')
                break
            r['status'] = 'running'
            error = next((f'error: stage {s} failed ({failed[s]})' for s in cell.stages if s in failed), None)
            for s in todo if error is None else []:
                folder = rp.stage_dir(out, s)
                print(f'[{i + 1}/{len(chosen)}] {cell.id}: {"continuing" if states[s] == "resume" else "running"} '
                      f'{cells.STAGES[s].script} (estimate {rp.duration(rp.estimate([s], args.tier, kind))}; log '
                      f'{os.path.join(folder, "reproduce_console.log")})')
                if states[s] == 'fresh':
                    rp.clear(folder)
                stage_error = rp.run_stage(cells.STAGES[s], argvs[s], folder, states[s], args.isolate)
                if stage_error:
                    failed[s] = stage_error
                    error = f'error: {stage_error}'
                    break
                ran.add(s)
            r['wall_s'] = rp.runs_wall([r])
            if error is None:
                try:
                    accs = rp.read_accuracies(cell.read, out)
                except (OSError, ValueError, KeyError, IndexError) as e:
                    error = f'error: no result to read ({type(e).__name__}: {e})'
            if error:
                r.update(status='error', verdict=error)
            else:
                r['measured'] = rp.measured_value(accs)
                target = rp.expected(cell, args.tier, kind)
                r.update(status='done', expected=None if target is None else target._asdict(),
                         verdict=rp.verdict(r['measured']['mean'], r['measured']['std'], target, args.tier))
            shown = rp.value_text(rp.as_value(r['measured'])) if r['measured'] else ''
            left = sorted({s for c in chosen[i + 1:] for s in c.stages} - ran - set(failed))
            print(f'[{i + 1}/{len(chosen)}] {cell.id}: {shown} {r["verdict"]} ({rp.duration(r["wall_s"])}; elapsed '
                  f'{rp.duration(time.time() - t0)}, about {rp.duration(rp.estimate(left, args.tier, kind))} left)')
            meta['wall_s'] = time.time() - t0
            rp.write_report(args.out, meta, rows)
    except KeyboardInterrupt:
        for r in rows:
            if r['status'] in ('pending', 'running'):
                r.update(status='interrupted', verdict='interrupted: rerun with --resume')
        raise
    finally:
        meta['wall_s'] = time.time() - t0
        rp.write_report(args.out, meta, rows)
    print(f'reproduce.py: {sum(r["status"] == "done" for r in rows)} of {len(rows)} cell(s) done in '
          f'{rp.duration(meta["wall_s"])}; report: {os.path.join(args.out, "reproduce.md")}')
    return dict(meta=meta, rows=rows)


if __name__ == '__main__':
    run_cli(main)

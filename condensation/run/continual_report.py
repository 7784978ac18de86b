"""The outputs of a CL run (CL_DM.py): the summary JSON, the CSV table, the console table, the LaTeX row and the
accuracy plot of every method's result in the folder."""
import csv
import io
import json
import os

from condensation.device import parallel
from condensation.methods.continual import class_order
from condensation.data import file_label
from condensation.plots import plot_curves
from condensation.common import atomic_write_text, mean_std, precision_text, sample_std, versions, write_json


def summarise(args, state, data, recorded):
    """The run's summary (cl_<run>.json); recorded: the arguments that determine the result."""
    rows = []
    for step in range(args.steps):
        accs = []
        for seed in args.seeds:
            per_step = state['accs'].get(str(seed), [])
            accs += per_step[step] if step < len(per_step) else []
        if not accs:
            continue
        m, s = mean_std(accs)
        images, nbytes = state['budget'].get(str(step), [None, None])
        rows.append(dict(step=step, classes=(step + 1) * data.num_classes // args.steps, mean=m, std=s,
                         std_ddof1=sample_std(accs),
                         n=len(accs), memory_images=images, memory_bytes=nbytes))
    latex = ' '.join(f'& {r["mean"]:.1f}±{r["std"]:.1f}' for r in rows)
    label = args.method + ('' if args.train_mode == 'scratch' else '-finetune')
    return dict(method=label, dataset=data.name, classes=data.class_names, mean=data.mean, std=data.std,
                model=args.model, ipc=args.ipc, steps=args.steps,
                classes_per_step=data.num_classes // args.steps, train_mode=args.train_mode,
                memory_unit='generator float32 bytes' if args.method == 'DiM' else 'uint8 image bytes',
                table=rows, latex=latex, seeds=[s for s in args.seeds if str(s) in state['accs']],
                class_orders={str(s): class_order(s, data.num_classes) for s in args.seeds},
                accs=state['accs'], memory_source=state['sources'], times=state['times'],
                protocol=dict(epoch_eval_train=args.epoch_eval_train, lr_net=args.lr_net,
                              batch_train=args.batch_train, dsa_strategy=args.dsa_strategy, num_eval=args.num_eval,
                              head=f'{data.num_classes}-way'),
                args=recorded, versions=versions(), precision=precision_text(args), world_size=parallel.world_size())


def table_lines(summary):
    lines = [f'{summary["method"]} on {summary["dataset"]} ({summary["model"]}, {summary["ipc"]} ipc, '
             f'{summary["steps"]} steps): mean ± std over seeds × networks',
             f'{"step":>4} {"classes":>7} {"memory":>34} {"accuracy (%)":>16} {"n":>3}']
    for r in summary['table']:
        mem = '' if r['memory_images'] is None else f'{r["memory_images"]} images'
        if r['memory_bytes'] is not None:
            unit = 'generator' if summary['memory_unit'].startswith('generator') else 'as uint8'
            mem += f', {human_bytes(r["memory_bytes"])} {unit}'
        lines.append(f'{r["step"]:>4} {r["classes"]:>7} {mem:>34} {r["mean"]:>8.2f} ± {r["std"]:5.2f} {r["n"]:>3}')
    return lines


def human_bytes(n):
    for unit, size in (('MiB', 2 ** 20), ('KiB', 2 ** 10)):
        if n >= size:
            return f'{n / size:.1f} {unit}'
    return f'{n} B'


def write_outputs(args, state, data, paths, recorded):
    """cl_<run>.json, .csv and the plot of every result in the folder for this setting; the summary."""
    summary = summarise(args, state, data, recorded)
    label = file_label(args.dataset, args.im_size)
    plot = os.path.join(args.save_path, f'cl_{label}_{args.model}_{args.ipc}ipc_{args.steps}steps.png')
    summary['plot'] = plot
    write_json(paths['json'], summary)
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = ['step', 'classes', 'mean', 'std', 'std_ddof1', 'n', 'memory_images', 'memory_bytes']
    w.writerow(['method', 'dataset', 'model', 'ipc', 'steps'] + cols)
    for r in summary['table']:
        w.writerow([summary['method'], data.name, args.model, args.ipc, args.steps] + [r[c] for c in cols])
    atomic_write_text(paths['csv'], buf.getvalue())
    curves = collect_curves(args.save_path, data.name, args.model, args.ipc, args.steps, args.im_size)
    plot_curves(plot, curves, f'{data.name}, {args.model}, {args.ipc} ipc, {args.steps} steps')
    return summary


def collect_curves(folder, dataset, model, ipc, steps, im_size=None):
    """Every CL result in folder for this setting (and --im_size): [(method, [classes], [mean], [std])], sorted by
    method."""
    curves = []
    for f in sorted(os.listdir(folder)):
        if not (f.startswith('cl_') and f.endswith('.json')):
            continue
        try:
            with open(os.path.join(folder, f)) as fh:
                s = json.load(fh)
            if ((s['dataset'], s['model'], s['ipc'], s['steps']) != (dataset, model, ipc, steps) or not s['table']
                    or s.get('args', {}).get('im_size') != im_size):
                continue
            t = s['table']
            curves.append((s['method'], [r['classes'] for r in t], [r['mean'] for r in t], [r['std'] for r in t]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(curves)

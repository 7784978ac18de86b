"""Class-incremental continual learning with condensed and generative memories (the DM paper's CL protocol).

For each seed (a class order), step s adds K/steps new classes; a memory of --ipc images per new class is built
from that step's training images only (random, herding, kcenter, DSA, DM) or, for DiM, a conditional GAN learns the
new classes while replaying its own samples of the old ones. At every step a fresh --model with a K-way head is
trained on all memories so far (evaluate_synset, DSA) and tested on the test images of the classes seen so far.

    python CL_DM.py --dataset CIFAR100 --model ConvNet --steps 5 --method DM
    python CL_DM.py --dataset CIFAR10 --data_path ../shared/data --steps 5 --method herding --seeds 0 \
        --epoch_eval_train 50 --num_eval 1 --feature_epochs 2
"""
from condensation import env  # first: the environment PyTorch reads when it starts (env.py)

import argparse
import os
import time

from condensation.methods import continual
from condensation.run import continual_report
from condensation.device import parallel
from condensation.run.cli import ArgumentParser, Config, add_flags, check_args, check_network, unused_flags
from condensation.data import dataset_info, get_dataset
from condensation.methods.dc import get_loops
from condensation.methods.dm import default_real_chunk
from condensation.evaluation import EvalRecipe, evaluate_networks
from condensation.networks import get_network
from condensation.run.progress import Progress
from condensation.run.runner import Run, run_files
from condensation.common import (UserError, cpu_state, derive_seed, make_generator, mean_std, precision_text,
                                 remove_stale_temps, run_cli)

# Arguments that may differ between a run and its resumption.
RESUMABLE = ('resume', 'device', 'no_progress', 'save_path', 'data_path', 'seeds', 'checkpoint_every', 'dsa_param',
             'eval_one_by_one', 'per_class', 'real_chunk', 'cuda_graphs',
             'precision')
# The GAN flags' first CL spellings, still accepted (and named in their error messages).
OLD_SPELLING = {name: (f'--{first}',) for name, first in continual.CACHE_NAMES.items()}


def method_name(value):
    """--method, any capitalisation, as one of continual.METHODS."""
    by_lower = {m.lower(): m for m in continual.METHODS}
    if value.lower() not in by_lower:
        raise argparse.ArgumentTypeError(f"unknown method '{value}'; choose one of {', '.join(continual.METHODS)}")
    return by_lower[value.lower()]


def parse_args(argv=None, notes=None):
    """CL's flags, validated; notes collects lines for the run log."""
    notes = [] if notes is None else notes
    p = ArgumentParser(description=__doc__.split('\n')[0])
    g = p.add_argument_group('original flags')
    g.add_argument('--method', type=method_name, default='random', help=', '.join(continual.METHODS))
    add_flags(g, ('dataset', 'model', 'ipc'), dataset='CIFAR100', ipc=20,
              helps=dict(model='network trained on the memories at every step; also the feature network of herding '
                               'and k-center and the matching network of DSA and DM memories (see networks.NETWORKS)',
                         ipc='memory images per class'))
    g.add_argument('--steps', type=int, default=5, help='number of steps; each adds K/steps classes (K divisible)')
    add_flags(g, ('num_eval', 'epoch_eval_train', 'lr_net', 'batch_train', 'data_path'), num_eval=3,
              epoch_eval_train=1000)
    g = p.add_argument_group('project additions')
    g.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4], help='class-order seeds')
    add_flags(g, ('save_path', 'im_size'))
    g.add_argument('--train_mode', choices=['scratch', 'finetune'], default='scratch',
                   help="scratch: a fresh network per step (the protocol); finetune: continue the previous step's")
    add_flags(g, ('device', 'resume', 'no_progress', 'dsa_strategy', 'align_corners', 'checkpoint_every',
                  'eval_one_by_one', 'cuda_graphs', 'precision'),
              dsa_strategy='color_crop_cutout_flip_scale_rotate', checkpoint_every=200,
              helps=dict(checkpoint_every='DSA and DM memories: synthesis iterations between checkpoints of the memory '
                                          'being built (the run itself is checkpointed after every step)'))
    g = p.add_argument_group('herding / kcenter')
    g.add_argument('--feature_net', default=None,
                   help="checkpoint of a fixed --model network for the features (default: one trained per step on the "
                        "step's real images)")
    g.add_argument('--feature_epochs', type=int, default=20,
                   help='epochs (+1, as evaluate_synset) of the per-step feature network, no augmentation; '
                        '0 = untrained')
    g = p.add_argument_group('DSA / DM condensation (default Iteration and lr_img: DSA 1000 and 0.1, DM 20000 and 1)')
    add_flags(g, ('Iteration', 'lr_img', 'batch_real', 'outer_loop', 'inner_loop', 'dis_metric', 'compat',
                  'per_class', 'real_chunk'), Iteration=None, lr_img=None,
              helps=dict(Iteration='synthesis iterations (default: DSA 1000, DM 20000)',
                         lr_img='learning rate of the images (default: DSA 0.1, DM 1)'))
    # DiM's memory has no published CL numbers to keep: the label path, critic, averaging, mode-seeking term and
    # penalty schedule default to the best variant measured (DiM's own GAN, --cond overwrite --critic ac --g_ema 0
    # --mode_seeking 0 --gp_every 1, ended far below random memories; docs/results.md); the budget flags keep
    # DiM's values. The GAN flags are named as in gen_condense.py; CL's first spellings (OLD_SPELLING) still work.
    g = p.add_argument_group('DiM (generative memory)')
    g.add_argument('--gan_iters', type=int, default=5000, help='GAN iterations (one G and one D step) per CL step')
    g.add_argument('--gan_batch', type=int, default=128, help='GAN batch: new-class real images plus old-class replay')
    g.add_argument('--gan_lr', type=float, default=1e-4, help='Adam learning rate of G and D (betas 0, 0.9)')
    add_flags(g, ('dim_noise', 'gan_width', 'cond', 'critic', 'n_critic', 'gp_every', 'mode_seeking', 'g_ema'),
              aliases=OLD_SPELLING,
              dim_noise=None, cond='embed', critic='projection', gp_every=4, mode_seeking=1.0, g_ema=0.999,
              helps=dict(dim_noise='generator input width (default 100, or K + 28 if K >= 100)'))
    g.add_argument('--dim_replay', choices=['fresh', 'stored'], default='fresh',
                   help="how the evaluation networks use the generator: 'fresh' draws a new set of --ipc images per "
                        "seen class from the step's generator after every epoch (the same images per epoch as a "
                        "stored memory; DiM's own on-the-fly evaluation), 'stored' trains on the set drawn once "
                        "(the memory cache's images)")
    args = p.parse_args(argv)
    notes += unused_flags(p, args, 'CL_DM')
    return validate(args)


def validate(args):
    """check_args for the shared flags; then the CL protocol's own rules and per-method defaults."""
    check_args(args)
    info = dataset_info(args.dataset, args.data_path, args.im_size)
    check_network(args.model, info)
    num_classes = info.num_classes
    if num_classes % args.steps:
        divisors = [d for d in range(2, num_classes + 1) if num_classes % d == 0][:6]
        raise UserError(f'--steps {args.steps} does not divide the {num_classes} classes of {info.name}; choose '
                        f'one of {", ".join(map(str, divisors))}, ...')
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f'--seeds must be distinct, got {" ".join(map(str, args.seeds))}')
    if args.feature_net is not None and args.method in ('herding', 'kcenter'):
        if not os.path.isfile(args.feature_net):
            raise UserError(f'--feature_net {args.feature_net}: no such file')
        args.feature_net = os.path.abspath(args.feature_net)
    if args.method in ('herding', 'kcenter', 'DM') and not hasattr(
            get_network(args.model, 1, 2, (32, 32), device='meta'), 'embed'):
        raise UserError(f'--method {args.method} needs a model with embed(); {args.model} has none')

    # Condensation settings only where they matter, so that they never make another method's run look foreign.
    if args.method in ('DSA', 'DM'):
        args.Iteration = args.Iteration if args.Iteration is not None else (1000 if args.method == 'DSA' else 20000)
        args.lr_img = args.lr_img if args.lr_img is not None else (0.1 if args.method == 'DSA' else 1.0)
    if args.method == 'DSA':
        args.outer_loop, args.inner_loop = get_loops(args.ipc, args.outer_loop, args.inner_loop)
        args.bn_stats = 'exact' if args.compat == 'clean' else 'momentum'
        args.match_1d = args.compat == 'clean'
    bn = 'BN' in args.model
    if args.method == 'DM':
        if args.per_class is None:
            args.per_class = not bn  # one class's graph at a time: less memory, the same gradient
        if bn and (args.per_class or args.real_chunk):
            raise UserError(f'--per_class and --real_chunk change the batch statistics of {args.model}; use '
                            f'--no-per_class or a model without BN')
        if args.real_chunk is None:
            args.real_chunk = default_real_chunk(args.model, args.device)
    if args.method == 'DiM' and args.cond == 'overwrite':
        k = num_classes
        noise = continual.dim_noise(args, k)
        if noise <= k:
            raise UserError(f'--dim_noise {noise} must exceed the {k} classes of {info.name} (the one-hot label '
                            f'overwrites the first K noise entries); raise it or pass --cond embed')
    return Config(args)




# ----------------------------------------------------------------------------------------------------------------
# A step's evaluation: networks trained on the memories so far, tested on the seen classes

def fresh_replay(args, data, memories, order, step, seed, images):
    """--dim_replay fresh: (buffer, on_epoch) for evaluate_step. The networks start on the stored memory `images`;
    after every epoch the buffer is refilled with a new draw of the same size (--ipc per seen class, the same
    labels) from the generator of this step, and after the last epoch with the stored memory again, so that each
    network starts alike. In-place refills work because the evaluation loop indexes its image tensor afresh every
    epoch; the buffer lives on the evaluation device so that the loop uses it without a copy."""
    if len(memories.samplers) <= step:
        raise UserError(f'{memories.path} holds no generator per step (written before they were stored); delete it '
                        f'or pass --dim_replay stored')
    G = continual.memory_gan(args, data, derive_seed(seed, 'cl', 'DiM'))[0]
    G.load_state_dict(memories.samplers[step])
    buffer = images.to(args.device).clone()
    n_seen = len(images) // args.ipc  # the memory holds --ipc images of every class seen

    def on_epoch(i, ep, net):
        if ep == args.epoch_eval_train:
            buffer.copy_(images)
            return
        drawn, _ = continual.sample_memory(G, data, order, n_seen, args.ipc,
                                           make_generator(seed, 'cl_replay', step, i, ep))
        buffer.copy_(drawn)
    return buffer, on_epoch


def evaluate_step(args, data, images, labels, seen, seed, step, nets, log, on_epoch=None):
    """num_eval networks (K-way heads) trained on the memory and tested on the seen classes' test images. nets: the
    previous step's networks, continued in finetune mode. on_epoch(i, ep, net) after every epoch of network i.
    Returns (accuracies, networks); under torchrun each process trains its share of the networks and holds None
    for the others' ones."""
    loader = continual.test_loader(data, seen)

    def build(i):
        if args.train_mode == 'finetune' and nets:
            net = nets[i]
        else:
            net = get_network(args.model, data.channel, data.num_classes, data.im_size, device=args.device,
                              generator=make_generator(seed, 'cl_eval_net', step, i))
        return net, make_generator(seed, 'cl_eval', step, i)

    def report(i, result):
        acc_train, acc, took = result
        log(f'  net #{i}: train acc {100 * acc_train:.2f}%, test acc {100 * acc:.2f}% on {len(loader.images)} test '
            f'images ({took})')

    results, trained = evaluate_networks(args.num_eval, build, images, labels, loader, EvalRecipe.from_args(args),
                                         report, on_epoch)
    return [acc for _, acc, _ in results], [trained.get(i) for i in range(args.num_eval)]


def net_states(nets):
    """Every network's weights (CPU), gathered from the processes that trained them."""
    states = {i: cpu_state(n.state_dict()) for i, n in enumerate(nets) if n is not None}
    for part in parallel.gather(states):
        states.update(part)
    return [states[i] for i in range(len(nets))]


def restore_nets(args, data, state, seed):
    """The previous step's networks of this seed from the checkpoint (finetune mode after an interruption)."""
    if state.get('nets_seed') != seed or not state.get('nets'):
        raise UserError('cannot resume a finetune run: the checkpoint lacks the networks of the last finished step; '
                        'delete it to start afresh')
    nets = []
    for sd in state['nets']:
        net = get_network(args.model, data.channel, data.num_classes, data.im_size, device=args.device)
        net.load_state_dict(sd)
        nets.append(net)
    return nets


def main(argv=None):
    notes = []
    args = parse_args(argv, notes)
    data = get_dataset(args.dataset, args.data_path, device=args.device, im_size=args.im_size)
    continual.check_budget(args, data)
    name = continual.run_name(args)
    paths = {ext: os.path.join(args.save_path, f'cl_{name}.{ext}') for ext in ('json', 'csv')}
    run = Run(args, RESUMABLE, args.save_path, **run_files(args.save_path, f'cl_{name}'), results=(paths['json'],),
              stale=(f'cl_{name}.', f'cl_{data.name}_'), missing_ok=True, names=continual.CACHE_NAMES)
    remove_stale_temps(os.path.join(args.save_path, 'cl_data'), f'cl_{continual.KIND[args.method]}_{data.name}_')
    log = run.log
    builder = {'DSA': f', {args.Iteration} DSA iterations', 'DM': f', {args.Iteration} DM iterations',
               'DiM': f', {args.gan_iters} GAN iterations'}.get(args.method, '')
    log(f'plan: {len(args.seeds)} seed(s) x {args.steps} steps on {args.device}{parallel.processes()}; per step a '
        f'memory{builder}, then {args.num_eval} network(s) trained {args.epoch_eval_train} epochs; precision: '
        f'{precision_text(args)}')
    log(f'CL {name}: {data}; {args.steps} steps of {data.num_classes // args.steps} classes, ipc {args.ipc}, seeds '
        f'{args.seeds}, train mode {args.train_mode}, device {args.device}')
    log(f'evaluation: {args.num_eval} x {args.model} ({data.num_classes}-way), {args.epoch_eval_train} epochs, lr '
        f'{args.lr_net}, batch {args.batch_train}, DSA {args.dsa_strategy}')
    log(f'hyper-parameters: {run.fingerprint}')
    for line in notes:
        log(line)
    run.warn_fresh_start()
    if args.resume and run.resumed is None:
        log(f'--resume: no finished step recorded in {run.ckpt_path}; starting from step 0 (cached memories are '
            f'reused)')
    state = run.resumed or dict(accs={}, budget={}, times={}, sources={}, nets=None, nets_seed=None)

    # For each seed (a class order), step by step: the memory of the step's new classes (built, or read from the
    # cache), then --num_eval networks trained on every memory so far and tested on the classes seen so far.
    progress = Progress(log, len(args.seeds) * args.steps, desc=f'CL {args.method}', unit='steps',
                        bar=not args.no_progress,
                        start=sum(min(len(state['accs'].get(str(s), [])), args.steps) for s in args.seeds))
    progress.begin()
    for seed in args.seeds:
        order = continual.class_order(seed, data.num_classes)
        log(f'seed {seed}: class order {order}')
        done = state['accs'].setdefault(str(seed), [])
        memories, nets = None, None
        for step in range(len(done), args.steps):  # the steps a resumed run has not finished
            memories = memories or continual.Memories(args, data, seed, order, log)
            seen = continual.seen_classes(order, args.steps, step)
            t0 = time.time()
            images, labels = memories.training_set(step)
            t_mem = time.time() - t0
            if args.train_mode == 'finetune' and step > 0 and nets is None:
                nets = restore_nets(args, data, state, seed)
            hook, drawn = None, ''
            if args.method == 'DiM' and args.dim_replay == 'fresh':
                images, hook = fresh_replay(args, data, memories, order, step, seed, images)
                drawn = ', drawn afresh from the generator after every epoch'
            log(f'seed {seed} step {step}: {len(seen)} classes seen, training on {len(images)} memory images{drawn}')
            t0 = time.time()
            accs, nets = evaluate_step(args, data, images, labels, seen, seed, step, nets, log, hook)
            m, s = mean_std(accs)
            log(f'seed {seed} step {step}: test acc {m:.2f} ± {s:.2f} over {len(accs)} networks ({len(seen)} classes)')
            done.append(accs)
            state['budget'][f'{step}'] = list(memories.budget(step))
            state['times'].setdefault(str(seed), []).append(dict(memory_s=t_mem, evaluation_s=time.time() - t0))
            state['sources'][str(seed)] = memories.source
            if args.train_mode == 'finetune':
                state['nets'], state['nets_seed'] = net_states(nets), seed
            run.save(state)
            continual_report.write_outputs(args, state, data, paths, run.fingerprint)
            progress.advance()  # the bar; redirected, a line with the rate and the time left
    progress.close()
    summary = continual_report.write_outputs(args, state, data, paths, run.fingerprint)
    for line in continual_report.table_lines(summary):
        log(line)
    log(f'LaTeX row ({args.method}): {summary["latex"]}')
    log(f'results: {paths["json"]}, {paths["csv"]}, {summary["plot"]}')
    run.close()
    return summary


if __name__ == '__main__':
    run_cli(main)

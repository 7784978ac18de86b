"""IT-GAN: informative latent vectors for a frozen class-conditional generator (Zhao & Bilen, arXiv 2204.07513).

Inverts real images into latents of a trained generator, then moves the latents so that the generated images
match the real data's class-mean embeddings under random networks (DM's loss, with DSA), while each stays close
in feature space to the image it was inverted from. Evaluates classifiers trained from scratch on (a) the real
images, (b) random-latent samples, (c) the inverted latents and (d) the IT-GAN latents, the same images each.
The method is itgan.py; docs/results.md has measured numbers.

    python main_ITGAN.py --dataset MNIST --data_path ../shared/data --generator results/mnist_gan/best.pth --ipc 10
"""
from condensation import env  # first: the environment PyTorch reads when it starts (env.py)

import functools
import math
import os
import time

import torch

from condensation.methods import itgan
from condensation.device import parallel
from condensation.run.cli import ArgumentParser, Config, add_flags, check_args, check_network
from condensation.data import canonical_dataset, file_label, get_dataset, value_limit
from condensation.methods.dc import recommended_dsa_strategy
from condensation.methods.dm import default_real_chunk
from condensation.evaluation import EvalRecipe, evaluate_pool, test_accuracy
from condensation.run.progress import Progress
from condensation.run.runner import Run, fingerprint, results_meta, run_files, save_image_grid
from condensation.common import (UserError, atomic_save, check_within, load_optimizer_state, make_generator,
                                 mean_pm, mean_std, precision_text, run_cli, write_json)

SETS = ('real', 'random', 'inverted', 'itgan')  # (a) to (d), evaluated in this order
TITLES = {'real': '(a) real', 'random': '(b) random latents', 'inverted': '(c) inverted latents', 'itgan': '(d) IT-GAN'}
# Flags that may change between a run and its --resume.
RESUMABLE = ('resume', 'device', 'no_progress', 'save_path', 'data_path', 'checkpoint_every', 'generator',
             'cuda_graphs', 'precision', 'real_chunk')
# Flags of the evaluation only: a --resume with other values keeps the latents and evaluates them anew.
EVAL_FLAGS = ('num_eval', 'epoch_eval_train', 'eval_model', 'curve_at', 'lr_net', 'batch_train')


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split('\n')[0])
    g = p.add_argument_group('project flags')
    add_flags(g, ('dataset', 'im_size', 'model', 'ipc', 'num_eval', 'epoch_eval_train', 'Iteration', 'lr_net',
                  'batch_real', 'batch_train', 'dsa_strategy', 'data_path', 'save_path', 'seed', 'device', 'resume',
                  'checkpoint_every', 'align_corners', 'no_progress', 'real_chunk', 'cuda_graphs',
                  'precision'),
              aliases={'epoch_eval_train': ('--epochs-eval',), 'num_eval': ('--num-eval',)},  # DiM's spellings
              ipc=None, num_eval=3, epoch_eval_train=200, Iteration=1000, dsa_strategy=None, checkpoint_every=100,
              helps=dict(ipc='real images per class to invert and condense (default: every training image, the '
                             "paper's setting)",
                         im_size="folder: datasets: resize every image to this square size (default: the size "
                                 "recorded in the generator checkpoint, else the images' own)",
                         dsa_strategy="DSA ops joined by '_' (color, crop, cutout, flip, scale, rotate); None "
                                      "disables DSA (default: color_crop_cutout_flip_scale_rotate, without flip for "
                                      "MNIST and SVHN)"))
    own = p.add_argument_group('IT-GAN')
    own.add_argument('--generator', '--pretrain-weight', '--weight', dest='generator', required=True,
                     help='generator checkpoint of gen_condense.py / pool_match.py (or the file --generator_factory '
                          'reads)')
    own.add_argument('--generator_factory', default=None,
                     help='MODULE:FUNCTION returning any generator, FUNCTION(path, data, device) -> module with '
                          'forward(z, y) in [-1, 1] and dim_noise (or dim_z); e.g. a pretrained BigGAN (default: '
                          '--generator is a gen_condense.py / pool_match.py checkpoint)')
    add_flags(own, ('dim_noise', 'cond', 'gan_width', 'eval_model'), hyphens=True, dim_noise=None, cond=None,
              gan_width=None, eval_model=['ResNet18BN'],
              helps=dict(dim_noise="the generator's input width (default: as recorded in the checkpoint)",
                         cond="the generator's label conditioning (default: as recorded in the checkpoint)",
                         gan_width="the generator's width (default: as recorded in the checkpoint)",
                         eval_model='evaluation architectures (networks.py names)'))
    own.add_argument('--curve_at', type=int, nargs='*', default=[1, 5, 10, 25, 50, 100],
                     help='epochs after which every evaluation network is also tested (the learning curve)')
    own.add_argument('--invert_iters', type=int, default=1000, help='Adam steps of the inversion')
    own.add_argument('--lr_invert', type=float, default=0.1, help='Adam lr of the inversion (the paper: 0.1)')
    own.add_argument('--feat_weight', type=float, default=1.0,
                     help='weight of the feature term of the inversion (mean squared error of random-network '
                          'features, next to the mean squared pixel error)')
    own.add_argument('--invert_batch', type=int, default=1000, help='latents inverted together')
    own.add_argument('--lr_latent', type=float, default=0.001, help='Adam lr of the IT-GAN latents (the paper: 0.001)')
    own.add_argument('--batch_syn', type=int, default=256, help='latents of every class per IT-GAN step')
    own.add_argument('--reg', type=float, default=0.1,
                     help='weight of the regulariser keeping each sample near its real image in feature space')
    args = p.parse_args(argv)
    if args.dsa_strategy is None:  # no flipped digits, as the DSA papers recommend
        args.dsa_strategy = recommended_dsa_strategy(canonical_dataset(args.dataset))
    check_args(args)
    if args.real_chunk is None:
        args.real_chunk = default_real_chunk(args.model, args.device)
    for name in args.eval_model:
        check_network(name)
    args.curve_at = sorted({e for e in args.curve_at if 0 < e < args.epoch_eval_train + 1})
    return Config(args)


def main(argv=None):
    args = parse_args(argv)
    # --im_size defaults to the size the generator's data was resized to, which its checkpoint records
    im_size, ck = itgan.recorded_im_size(args)  # ck: the --generator checkpoint, when read for its size
    args = Config(args, im_size=im_size)
    data = get_dataset(args.dataset, args.data_path, device=args.device, im_size=args.im_size)
    smallest = min(len(i) for i in data.indices_class)
    if args.ipc is not None and args.ipc > smallest:
        raise UserError(f'--ipc {args.ipc} exceeds the smallest class of {data.name} ({smallest} images); lower it')
    G, gen = itgan.load_generator(args, data, ck)  # frozen, in eval mode
    run, state, name = open_run(args, data, gen)
    real_idx, labels = itgan.choose_subset(data, args.ipc, make_generator(args.seed, 'subset'))
    size = itgan.latent_storage(gen['bytes'], len(labels), gen['dim_noise'], data)
    log_start(run, args, data, gen, name, labels, size, state)

    z_inv = invert_phase(args, data, G, real_idx, labels, state, run)  # 1. one latent per real image
    index_class = itgan.class_positions(labels, data.num_classes)
    z_itgan = condense_phase(args, data, G, z_inv, real_idx, labels, index_class, state, run)  # 2. IT-GAN

    # The four sets, the same images each: real, random latents, inverted latents, IT-GAN latents.
    z_rand = torch.randn(len(labels), gen['dim_noise'], generator=make_generator(args.seed, 'random_latents'))
    latents = dict(random=z_rand, inverted=z_inv, itgan=z_itgan)
    y = labels.to(args.device)
    sets = {s: (itgan.render_set(G, z.to(args.device), y, data.mean, data.std), labels) for s, z in latents.items()}
    for s, (images, _) in sets.items():  # a generator's images in [-1, 1] stay far within; another's may not
        check_within(images, value_limit(data.mean, data.std), f'the {s} set rendered by the generator',
                     'its generator does not give images in [-1, 1]; check --generator (or --generator_factory)')
    sets['real'] = (data.images(real_idx).cpu(), labels)
    n = min(args.ipc or 10, 10)  # the picture: one titled block per set (left to right), a row per class
    keep = torch.cat([p[:n] for p in index_class])
    save_image_grid(os.path.join(args.save_path, f'vis_{name}.png'), torch.cat([sets[s][0][keep] for s in SETS]),
                    data.mean, data.std, nrow=n, titles=[(TITLES[s], len(keep)) for s in SETS])

    evaluate_phase(args, data, sets, state, run)  # 3. networks trained on every set, with learning curves
    summary = write_results(args, data, run, state, name, dict(latents=latents, labels=labels, real_index=real_idx,
                                                               generator=gen, storage=size), sets['itgan'][0])
    run.close()
    return summary


def open_run(args, data, gen):
    """The run's files and its state (resumed, or new): <save_path>/ITGAN_<dataset>_<model>_<ipc>ipc.{json,log,
    ckpt.pt}, res_….pt and vis_….png. The checkpoint is written after every inverted chunk, every
    --checkpoint_every iterations and every evaluated set; every draw is named by (seed, phase, ...), so a resumed
    run repeats the uninterrupted one."""
    name = f'ITGAN_{file_label(args.dataset, args.im_size)}_{args.model}_{args.ipc or "all"}ipc'
    path = functools.partial(os.path.join, args.save_path)
    run = Run(args, RESUMABLE + EVAL_FLAGS, args.save_path, **run_files(args.save_path, name),
              results=(path(f'res_{name}.pt'), path(f'res_{name}_images.pt'), path(f'{name}.json')),
              stale=(f'res_{name}.', f'res_{name}_images.', f'{name}.', f'vis_{name}.'),
              generator_sha256=gen['sha256'])
    run.warn_fresh_start()
    state = run.resumed or dict(chunks=[], mse=[], it=0, losses=[], times={})
    # A --resume with other evaluation flags keeps the latents and evaluates them anew.
    eval_fingerprint = fingerprint(args, set(vars(args)) - set(EVAL_FLAGS))
    if state.get('eval_fingerprint', eval_fingerprint) != eval_fingerprint:
        run.log(f'evaluation flags changed ({state["eval_fingerprint"]} -> {eval_fingerprint}): the stored latents '
                f'are evaluated anew')
        state.update(accs={}, curves={})
    state.update(eval_fingerprint=eval_fingerprint)
    state.setdefault('accs', {})
    state.setdefault('curves', {})
    return run, state, name


def log_start(run, args, data, gen, name, labels, size, state):
    run.log(f'IT-GAN {name}: {data}; {len(labels)} latents of width {gen["dim_noise"]}; generator {gen["path"]} '
            f'(sha256 {gen["sha256"][:12]}); device {args.device}{parallel.processes()}; seed {args.seed}; '
            f'precision: {precision_text(args)}')
    run.log(f'storage: generator {size["generator_bytes"] / 2 ** 10:.1f} KiB + latents '
            f'{size["latent_bytes"] / 2 ** 10:.1f} KiB against {size["image_bytes"] / 2 ** 10:.1f} KiB of uint8 '
            f'images (x{size["ratio"]:.2f})')
    run.log(f'arguments: {dict(run.fingerprint, **state["eval_fingerprint"])}')


def invert_phase(args, data, G, real_idx, labels, state, run):
    """1. Inversion: one latent per real image, chunk by chunk (--invert_batch); resumable after every chunk."""
    t0 = time.time()
    chunks = list(zip(real_idx.split(args.invert_batch), labels.split(args.invert_batch)))
    for k in range(len(state['chunks']), len(chunks)):
        z, mse = itgan.invert(args, data, G, *chunks[k], args.seed, k)
        advice = f'the latents diverged (reconstruction error {mse[1]}); lower --lr_invert (now {args.lr_invert})'
        if not math.isfinite(mse[1]):
            raise UserError(f'inversion chunk {k + 1}: {advice}')
        check_within(z, itgan.LATENT_LIMIT, f'inversion chunk {k + 1}: the latents', advice)
        state['chunks'].append(z)
        state['mse'].append(mse)
        state['times']['inversion_s'] = state['times'].get('inversion_s', 0.0) + time.time() - t0
        t0 = time.time()
        run.log(f'inversion chunk {k + 1}/{len(chunks)}: {len(z)} latents, reconstruction MSE {mse[0]:.4f} -> '
                f'{mse[1]:.4f} (standardised pixels)')
        run.save(state)
    return torch.cat(state['chunks'])


def condense_phase(args, data, G, z_inv, real_idx, labels, index_class, state, run):
    """2. IT-GAN: --Iteration Adam steps on the latents, from the inverted ones (DM's loss plus the regulariser)."""
    z = state.get('z_itgan', z_inv).clone().to(args.device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=args.lr_latent)
    if 'opt' in state:
        load_optimizer_state(opt, state['opt'])

    def check(where, advice):  # the step's latents, before they are logged as a result or saved
        check_within(z, itgan.LATENT_LIMIT, f'{where}: the latents', advice)
    progress = Progress(run.log, args.Iteration, start=state['it'], desc='IT-GAN', bar=not args.no_progress,
                        checkpoint_every=args.checkpoint_every, where='IT-GAN iteration {it}',
                        diverged='the latents diverged', advice=f'lower --lr_latent (now {args.lr_latent})',
                        check=check)
    t0 = time.time()
    for it in progress:
        losses = itgan.itgan_step(args, data, G, z, labels, real_idx, opt, args.seed, (it,), index_class)
        save = progress.checkpoint_due(it) or it + 1 == args.Iteration
        parts = progress.read(it, dict(zip(('', 'condensation', 'regulariser'), losses)), save)
        if parts is not None and (it % 10 == 0 or it + 1 == args.Iteration):
            loss, cond, reg = parts.values()
            run.log(f'iter {it:05d}: loss {loss:.4f} (condensation {cond:.4f}, regulariser {reg:.4f})',
                    echo=it % 100 == 0)
            state['losses'].append([it, loss, cond, reg])
        if save:
            state['times']['itgan_s'] = state['times'].get('itgan_s', 0.0) + time.time() - t0
            t0 = time.time()
            state.update(it=it + 1, z_itgan=z.detach().cpu(), opt=opt.state_dict())
            run.save(state)
    return z.detach().cpu()


def evaluate_phase(args, data, sets, state, run):
    """3. Evaluation: --num_eval networks per --eval_model trained from scratch on every set, tested after the
    --curve_at epochs too (the learning curve); resumable after every set."""
    recipes = {arch: EvalRecipe.from_args(args) for arch in args.eval_model}
    testloader = data.testloader()
    for s in SETS:
        if s in state['accs']:
            continue
        curve = {arch: [[] for _ in range(args.num_eval)] for arch in args.eval_model}

        def on_epoch(arch, i, ep, net):
            if ep + 1 in args.curve_at:
                curve[arch][i].append(test_accuracy(net, testloader, args.device))

        t0 = time.time()
        accs = evaluate_pool(recipes, args.num_eval, data, *sets[s], args.seed, (s,), run.log, label=f'({s})',
                             on_epoch=on_epoch)
        for part in parallel.gather(curve):  # under torchrun each process drew the curves of its own networks
            for arch, nets in part.items():
                for i, points in enumerate(nets):
                    curve[arch][i] = curve[arch][i] or points
        state['accs'][s] = accs
        state['curves'][s] = {arch: [c + [a] for c, a in zip(curve[arch], accs[arch])] for arch in curve}
        state['times'][f'eval_{s}_s'] = time.time() - t0
        run.save(state)


def write_results(args, data, run, state, name, result, itgan_images):
    """res_<name>.pt (`result`: latents, labels, real_index, generator, storage; plus the accuracies, curves and
    meta), res_<name>_images.pt (the IT-GAN set as images) and <name>.json; the summary {set: {arch: mean, std,
    all}}."""
    accs, curves = state['accs'], state['curves']
    summary = {s: {arch: dict(zip(('mean', 'std'), mean_std(a)), all=a) for arch, a in accs[s].items()} for s in SETS}
    curve_means = {s: {arch: [mean_std([c[j] for c in cs])[0] for j in range(len(cs[0]))]
                       for arch, cs in curves[s].items()} for s in SETS}
    meta = results_meta(data, args, 'ITGAN', args.model, dict(run.fingerprint, **state['eval_fingerprint']),
                        dict(epoch_eval_train=args.epoch_eval_train, dsa_strategy=args.dsa_strategy,
                             eval_model=args.eval_model, curve_epochs=args.curve_at + [args.epoch_eval_train + 1]),
                        images=False, render='standardise((G(z, y) + 1) / 2), G in eval mode, chunks of 500')
    path = functools.partial(os.path.join, args.save_path)
    gen, size = result['generator'], result['storage']
    atomic_save(dict(latents=result['latents'], labels=result['labels'], real_index=result['real_index'],
                     generator=gen, accs=accs, curves=curves, summary=summary, storage=size,
                     inversion_mse=state['mse'], losses=state['losses'], meta=meta), path(f'res_{name}.pt'))
    # The IT-GAN set as images in the original results layout (data = [[images, labels]], standardised floats, the
    # ones evaluated above): readable without the generator, by evaluate.py or any code of the field. eval_keys
    # names the networks that evaluated it, so evaluate.py with this run's protocol and seed gives accs['itgan'].
    atomic_save(dict(data=[[itgan_images, result['labels']]], accs_all_exps=accs['itgan'],
                     meta=dict(meta, normalised=True, eval_keys=[['itgan']])), path(f'res_{name}_images.pt'))
    write_json(path(f'{name}.json'), dict(run=name, accuracy=summary, curve_epochs=meta['protocol']['curve_epochs'],
                                      curve_mean=curve_means, storage=size, generator=gen,
                                      inversion_mse=state['mse'], times=state['times'], args=meta['args'],
                                      versions=meta['versions'], precision=meta['precision']))
    for s in SETS:
        for arch, r in summary[s].items():
            run.log(f'({s}) {len(result["labels"])} images, {arch}: {mean_pm(r["all"], "%")} over '
                    f'{args.num_eval} networks; learning curve at epochs {meta["protocol"]["curve_epochs"]}: '
                    + ', '.join(f'{a:.2f}' for a in curve_means[s][arch]))
    run.log(f'results: {path(f"res_{name}.pt")}; the IT-GAN images: {path(f"res_{name}_images.pt")}')
    return summary


if __name__ == '__main__':
    run_cli(main)

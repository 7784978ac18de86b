"""DiM stage 3: train classifiers from scratch on a generator's samples and report test accuracy.

Two labelled modes (--dim_eval): 'onthefly' (the reference: fresh samples at every step, ipc a per-epoch budget
of ⌊K·ipc/bs⌋ steps) and 'fixed' (exactly ipc images per class generated once and evaluated like a DC/DSA/DM set,
saved as res_DiM_<dataset>_GAN_<ipc>ipc.pt). The generator's size is reported next to the image budget it stands
for. Final accuracy in eval mode, mean ± std over --num_eval networks; --compat reference restores the
reference's protocol.

    python validate.py --tag test --pretrain-weight results/match/best.pth
"""
from condensation import env  # first: the environment PyTorch reads when it starts (env.py)

import torch

from condensation.methods import dim
from condensation.run import dim_stages
from condensation.device import footprint
from condensation.methods import gan
from condensation.device import parallel
from condensation.run import runner
from condensation import common
from condensation.augment import ParamDiffAug
from condensation.data import file_label
from condensation.methods.dc import recommended_dsa_strategy
from condensation.methods.dim import build_model, fixed_set, iterations_per_epoch, train_onthefly
from condensation.evaluation import EvalRecipe, evaluate_networks, train_shared
from condensation.common import make_generator, mean_std


def evaluate_onthefly(G, args, data, log):
    """On-the-fly mode: --num_eval fresh networks per --eval-model, each trained --epochs-eval epochs of
    ⌊K·ipc/bs⌋ steps on fresh samples. Sound protocol: final test accuracy in eval mode. Reference protocol:
    final accuracy with train-mode tests and the reference's test normalisation, plus the best over test points
    (the reference's number), labelled as such."""
    ref = args.protocol == 'reference'
    n_it = iterations_per_epoch(data.num_classes, args.ipc, args.batch_size, 3)
    loader = data.test_loader(args.batch_size, reference_norm=ref)
    label = f'on-the-fly (ipc {args.ipc} = {n_it} x {args.batch_size} fresh samples per epoch), ' + (
        'reference protocol' if ref else 'sound protocol')
    out = dict(mode='onthefly', label=label, steps_per_epoch=n_it, epochs=args.epochs_eval, models={})
    networks = args.num_eval * len(args.eval_model)
    log(f'plan: {networks} network(s), each {args.epochs_eval} epochs of {n_it:,} steps on {args.batch_size} fresh '
        f'samples ({networks * args.epochs_eval * n_it:,} steps in all; --ipc sets the steps per epoch); precision: '
        f'{common.precision_text(args)}')
    for name in args.eval_model:
        def train_one(i, name=name):
            rng = make_generator(args.seed, 'onthefly', name, i)
            net = build_model(name, data, args.stem, args.device, rng)
            r = train_onthefly(G, net, args, data, n_it, rng, loader, args.test_interval if ref else None, ref,
                               desc=f'{name} #{i}')
            return r['final'][0], r['final'][1], r['best'][0]

        def report(i, r, name=name):
            log(f'  {name} #{i}: final test accuracy {100 * r[0]:.2f}% (top-5 {100 * r[1]:.2f}%)')

        # under torchrun the networks are spread over the processes
        finals, top5, bests = zip(*train_shared(args.num_eval, train_one, report))
        finals, top5, bests = list(finals), list(top5), list(bests)
        m, s = mean_std(finals)
        entry = dict(final=dict(mean=m, std=s, all=finals), final_top5=dict(zip(('mean', 'std'), mean_std(top5))))
        log(f'[{label}] {name}: final test accuracy {m:.2f} ± {s:.2f}% over {args.num_eval} models')
        if ref:
            mb, sb = mean_std(bests)
            entry['best_over_test_points'] = dict(mean=mb, std=sb, all=bests)
            log(f'[{label}] {name}: best over test points (the reference\'s number) {mb:.2f} ± {sb:.2f}%')
        out['models'][name] = entry
    return out


def evaluate_fixed(G, args, data, run):
    """Fixed mode: --num_exp sets of exactly ipc samples per class, each evaluated like a DC/DSA/DM set
    (evaluation.evaluate_synset: DSA, --epochs-eval epochs, lr x0.1 halfway, batch --batch_train) by --num_eval
    networks per --eval-model; written in the project's results layout (runner.save_results)."""
    strategy = args.dsa_strategy or recommended_dsa_strategy(args.dataset)
    recipe = EvalRecipe(epoch_eval_train=args.epochs_eval, lr_net=args.eval_lr,
                                   batch_train=args.batch_train, device=args.device, dsa=True, dsa_strategy=strategy,
                                   dsa_param=ParamDiffAug(), dc_aug_param=None)
    label = f'fixed set ({args.ipc} images per class generated once, evaluate_synset, DSA {strategy})'
    real = data.real
    sets, accs = [], {}
    testloader = real.testloader()
    stem = f'DiM_{file_label(args.dataset, args.im_size)}'
    for exp in range(args.num_exp):
        images, labels = fixed_set(G, data, args.ipc, make_generator(args.seed, 'fixed_set', exp))
        sets.append([images, labels])
        for name in args.eval_model:
            def build(i, name=name):
                return (build_model(name, data, args.stem, args.device,
                                    make_generator(args.seed, 'fixed_net', exp, name, i)),
                        make_generator(args.seed, 'fixed_eval', exp, name, i))

            def report(i, result, name=name):
                run.log(f'  fixed set {exp}: {name} #{i}: test accuracy {100 * result[1]:.2f}% ({result[2]})')

            results, _ = evaluate_networks(args.num_eval, build, images, labels, testloader, recipe, report)
            accs.setdefault(name, []).extend(acc for _, acc, _ in results)
        keep = (torch.arange(len(labels)) % args.ipc < 50).nonzero()[:, 0]  # at most 50 per class in a picture
        run.write_config()
        runner.save_image_grid(run.path(f'vis_{stem}_{args.ipc}ipc_exp{exp}.png'), images[keep], real.mean, real.std,
                               nrow=runner.grid_columns(min(args.ipc, 50), data.num_classes))
    path = run.path(f'res_{stem}_GAN_{args.ipc}ipc.pt')
    meta = runner.results_meta(data, args, 'DiM', 'GAN', dim_stages.config(args),
                               dict(mode='fixed', label=label, epoch_eval_train=args.epochs_eval, dsa=True,
                                    dsa_strategy=strategy, generator=args.pretrain_weight), stats=real)
    runner.save_results(path, sets, accs, meta)
    out = dict(mode='fixed', label=label, results_file=path, models={})
    for name, a in accs.items():
        m, s = mean_std(a)
        out['models'][name] = dict(final=dict(mean=m, std=s, all=a))
        run.log(f'[{label}] {name}: test accuracy {m:.2f} ± {s:.2f}% over {args.num_exp} x {args.num_eval} models')
    return out


def main(argv=None):
    args = dim_stages.parse_dim_args(3, __doc__.split('\n')[0], argv)  # also fits --batch-size to K*ipc (--auto_bs)
    data = dim_stages.load_data(args, val_split=False)
    if args.dim_eval != 'onthefly':  # a fixed set is generated whole, and held as drawn, standardised and on the device
        footprint.check_fits(3 * footprint.set_bytes(data.num_classes * args.ipc, (data.channel, *data.im_size)),
                             args.device, f'a fixed set of --ipc {args.ipc} per class', 'lower --ipc')
    for name in args.eval_model:
        dim.build_model(name, data, args.stem, device='meta')
    G, ck = dim_stages.load_sampler(args.pretrain_weight, args, data)
    run = dim_stages.StageRun(args)
    size = dim_stages.storage(G, data, args.ipc)
    run.log(f'DiM validation {args.tag}: generator {args.pretrain_weight} (epoch {ck.get("epoch")}, its '
            f'{gan.sampling_weights(ck)[1]} weights), {data.name}, device {args.device}{parallel.processes()}, '
            f'seed {args.seed}')
    run.log(f'protocol: {dim_stages.protocol_label(args)}')
    run.log(dim_stages.storage_line(size))
    modes = ['onthefly', 'fixed'] if args.dim_eval == 'both' else [args.dim_eval]
    results = dict(generator=args.pretrain_weight, dataset=data.name, classes=data.real.class_names, ipc=args.ipc,
                   protocol=args.protocol, storage=size, args=dim_stages.config(args), versions=common.versions(),
                   precision=common.precision_text(args),
                   world_size=parallel.world_size())
    for mode in modes:
        if mode == 'onthefly':
            results['onthefly'] = evaluate_onthefly(G, args, data, run.log)
        else:
            results['fixed'] = evaluate_fixed(G, args, data, run)
    run.write_config()
    common.write_json(run.path('results.json'), results)
    run.log(f'results: {run.path("results.json")}')
    run.close()
    return results


if __name__ == '__main__':
    common.run_cli(main, resumable=False)  # no --resume: a stage-3 run is started again

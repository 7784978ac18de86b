"""DiM stage 3: train classifiers from scratch on a generator's samples and report test accuracy.

Two labelled modes (--dim_eval): 'onthefly' (the reference: fresh samples at every step, ipc a per-epoch budget
of ⌊K·ipc/bs⌋ steps) and 'fixed' (exactly ipc images per class generated once and evaluated like a DC/DSA/DM set,
saved as res_DiM_<dataset>_GAN_<ipc>ipc.pt). The generator's size is reported next to the image budget it stands
for. Final accuracy in eval mode, mean ± std over --num_eval networks; --compat reference restores the
reference's protocol.

    python validate.py --tag test --pretrain-weight results/match/best.pth
"""
import os

# PyTorch's transparent-huge-page allocator removes most of the page-fault cost of large activations on CPU
# (docs/benchmarks.md, as main_DM.py). Read when torch allocates, so set before the first import of torch.
os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')

import dim  # noqa: E402
import dim_run  # noqa: E402
import footprint  # noqa: E402
import parallel  # noqa: E402
import utils  # noqa: E402


def main(argv=None):
    args = dim_run.parse_args(3, __doc__.split('\n')[0], argv)  # also fits --batch-size to K*ipc (--auto_bs)
    data = dim_run.load_data(args, val_split=False)
    if args.dim_eval != 'onthefly':  # a fixed set is generated whole, and held as drawn, standardised and on the device
        footprint.check_fits(3 * footprint.set_bytes(data.num_classes * args.ipc, (data.channel, *data.im_size)),
                             args.device, f'a fixed set of --ipc {args.ipc} per class', 'lower --ipc')
    for name in args.eval_model:
        dim.build_model(name, data, args.stem, device='meta')
    run = dim_run.Run(args)
    G, ck = dim_run.load_generator(args.pretrain_weight, args, data)
    run.open()
    size = dim_run.storage(G, data, args.ipc)
    run.log(f'DiM validation {args.tag}: generator {args.pretrain_weight} (epoch {ck.get("epoch")}, its '
            f'{dim_run.sampling_weights(ck)[1]} weights), {data.name}, device {args.device}{parallel.processes()}, '
            f'seed {args.seed}')
    run.log(f'protocol: {dim_run.protocol_label(args)}')
    run.log(dim_run.storage_line(size))
    modes = ['onthefly', 'fixed'] if args.dim_eval == 'both' else [args.dim_eval]
    results = dict(generator=args.pretrain_weight, dataset=data.name, classes=data.real.class_names, ipc=args.ipc,
                   protocol=args.protocol, storage=size, args=dim_run.config(args), versions=utils.versions(),
                   world_size=parallel.world_size())
    for mode in modes:
        if mode == 'onthefly':
            results['onthefly'] = dim_run.evaluate_onthefly(G, args, data, run.log)
        else:
            results['fixed'] = dim_run.evaluate_fixed(G, args, data, run)
    run.write_config()
    utils.write_json(run.path('results.json'), results)
    run.log(f'results: {run.path("results.json")}')
    run.close()
    return results


if __name__ == '__main__':
    utils.run_cli(main, resumable=False)  # no --resume: a stage-3 run is started again

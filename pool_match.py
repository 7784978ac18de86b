"""DiM stage 2: fine-tune the stage-1 GAN with model-pool logit matching (SPEC §7.4).

Starting from --weight (G, D and both Adam states; lr set to --lr), every epoch draws a fresh pool model
(convnet, resnet10, resnet18, resnet10_ap, resnet18_ap) that keeps training on real data, --epochs-match-train SGD
steps per generator step. The generator loss gains --match-coeff · mean (log softmax f(x) − log softmax f(G(z(y))))²
over pairs of a real and a generated image of the same class; the critic step is stage 1's. The best checkpoint
(validation split of the training set) is <output-dir><tag>/best.pth, the input of validate.py.

    python pool_match.py --tag match --match logit --match-aug --weight results/gan/best.pth
"""
import os

# PyTorch's transparent-huge-page allocator removes most of the page-fault cost of large activations on CPU
# (docs/benchmarks.md, as main_DM.py). Read when torch allocates, so set before the first import of torch.
os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')

import dim  # noqa: E402
import utils  # noqa: E402


def main(argv=None):
    args = dim.parse_args(2, __doc__.split('\n')[0], argv)
    data, run, G, D, opt_g, opt_d = dim.start(args)
    matcher = dim.PoolMatcher(args, data)
    if args.resume:
        state = dim.resume_state(args, run, G, D, opt_g, opt_d, matcher)
    else:
        state = None
        ck = dim.load_checkpoint(args.weight, '--weight', dim.GAN_KEYS)
        dim.check_foreign(ck, args, '--weight', args.weight)
        for model, key in ((G, 'generator'), (D, 'discriminator'), (opt_g, 'optim_g'), (opt_d, 'optim_d')):
            dim.load_into(model, ck[key], '--weight', args.weight, key)
    for opt in (opt_g, opt_d):  # the loaded optimiser states carry stage 1's lr
        for group in opt.param_groups:
            group['lr'] = args.lr
    run.open(append=args.resume)
    dim.header(args, run, data, G, 2)
    run.log(f'pool: {", ".join(matcher.pool)} ({args.stem} stem); match {args.match} x {args.match_coeff}, '
            f'match-aug {args.match_aug}, {args.epochs_match_train} pool steps per generator step')
    if state:
        run.log(f'resumed from {run.path("last.pth")} at epoch {state["epoch"]}')
    else:
        run.log(f'loaded {args.weight}; Adam lr set to {args.lr}')
    state = dim.train_gan(args, run, data, G, D, opt_g, opt_d, state, matcher)
    for name, best in state['best'].items():
        run.log(f'best {name}: epoch {best["epoch"]}, accuracy {100 * best["score"]:.2f}% -> '
                f'{run.path(f"best_{name}.pth")}')
    run.log(f'stage 3: python validate.py --data {args.data} --pretrain-weight {run.path("best.pth")} --tag test')
    run.close()
    return state


if __name__ == '__main__':
    utils.run_cli(main)

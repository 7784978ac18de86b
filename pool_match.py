"""DiM stage 2: fine-tune the stage-1 GAN with model-pool logit matching.

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
import dim_run  # noqa: E402
import utils  # noqa: E402


def main(argv=None):
    args = dim_run.parse_args(2, __doc__.split('\n')[0], argv)
    data, run, G, D, opt_g, opt_d = dim_run.prepare_gan_run(args)
    matcher = dim.PoolMatcher(args, data)
    ema = dim_run.new_ema(args, G)
    if args.resume:
        state = dim_run.resume_state(args, run, G, D, opt_g, opt_d, matcher, ema)
    else:
        state = None
        dim_run.load_weight(args, G, D, opt_g, opt_d, ema)
    dim_run.set_lr(args.lr, opt_g, opt_d)  # the loaded optimiser states carry stage 1's lr
    run.open()
    dim_run.log_header(args, run, data, G)
    run.log(f'pool: {", ".join(matcher.pool)} ({args.stem} stem); match {args.match} x {args.match_coeff}, '
            f'match-aug {args.match_aug}, {args.epochs_match_train} pool steps per generator step')
    if state:
        run.log(f'resumed from {run.path("last.pth")} at epoch {state["epoch"]}')
    else:
        run.log(f'loaded {args.weight}; Adam lr set to {args.lr}')
    state = dim_run.train_gan(args, run, data, G, D, opt_g, opt_d, state, matcher, ema)
    for name, best in state['best'].items():
        run.log(f'best {name}: epoch {best["epoch"]}, accuracy {100 * best["score"]:.2f}% -> '
                f'{run.path(f"best_{name}.pth")}')
    run.log(f'stage 3: {dim_run.next_command(args, 3, run.path("best.pth"), data.num_classes)}')
    run.close()
    return state


if __name__ == '__main__':
    utils.run_cli(main)

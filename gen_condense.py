"""DiM stage 1: train a class-conditional AC-WGAN-GP on the real training set.

Each iteration: one Adam step on G with L_G = −mean s(G(z(y))) + CE(c(G(z(y))), y), then one on the critic with
L_D = mean s(x̃) − mean s(x) + CE(c(x̃), ỹ) + CE(c(x), y) + 10·mean(‖∇s(x̂)‖ − 1)² (--critic projection: a score
s(x, y) under the label and no CE terms; --g_ema: sample from a weight average of G). Every --eval-interval epochs the
generator is validated by training a fresh classifier on its samples; the best checkpoint (chosen on a validation
split held out from the training set) is <output-dir><tag>/best.pth, the input of pool_match.py.

    python gen_condense.py --tag gan
    python gen_condense.py --data mnist --data-dir ../shared/data --tag gan --epochs 2 --iters-per-epoch 20 \
        --batch-size 64 --epochs-eval 5 --ipc 10 --eval-interval 1
"""
import os

# PyTorch's transparent-huge-page allocator removes most of the page-fault cost of large activations on CPU
# (docs/benchmarks.md, as main_DM.py). Read when torch allocates, so set before the first import of torch.
os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')

import dim_run  # noqa: E402
import utils  # noqa: E402


def main(argv=None):
    args = dim_run.parse_args(1, __doc__.split('\n')[0], argv)
    data, run, G, D, opt_g, opt_d = dim_run.prepare_gan_run(args)
    ema = dim_run.new_ema(args, G)
    state = dim_run.resume_state(args, run, G, D, opt_g, opt_d, ema=ema) if args.resume else None
    run.open()
    dim_run.log_header(args, run, data, G)
    if state:
        run.log(f'resumed from {run.path("last.pth")} at epoch {state["epoch"]}')
    state = dim_run.train_gan(args, run, data, G, D, opt_g, opt_d, state, ema=ema)
    for name, best in state['best'].items():
        run.log(f'best {name}: epoch {best["epoch"]}, accuracy {100 * best["score"]:.2f}% -> '
                f'{run.path(f"best_{name}.pth")}')
    best = run.path('best.pth')
    run.log(f'stage 2: {dim_run.next_command(args, 2, best, data.num_classes)}')
    run.log(f'or stage 3 on this generator: {dim_run.next_command(args, 3, best, data.num_classes)}')
    run.close()
    return state


if __name__ == '__main__':
    utils.run_cli(main)

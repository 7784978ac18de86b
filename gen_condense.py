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
from condensation import env  # first: the environment PyTorch reads when it starts (env.py)

from condensation.methods import dim
from condensation.run import dim_stages
from condensation.methods import gan
from condensation import common
from condensation.device.graphs import graphs_enabled


def main(argv=None):
    args = dim_stages.parse_dim_args(1, __doc__.split('\n')[0], argv)
    data = dim_stages.load_data(args)
    G, D, opt_g, opt_d = dim_stages.new_gan(args, data)
    ema = gan.new_ema(G, args.g_ema)  # --g_ema: the averaged generator is the one previewed, validated and sampled
    run = dim_stages.StageRun(args, dim_stages.RESUMABLE, G, D, opt_g, opt_d, ema)  # --resume: the GAN as in last.pth
    run.header(data, G)
    state = run.resumed['state'] if run.resumed else dict(epoch=0, best={}, best_all=None, history=[])
    if run.resumed:
        run.log(f'resumed from {run.ckpt_path} at epoch {state["epoch"]}')
        dim_stages.write_pending(run, state)  # the best checkpoints a stopped run had chosen but not written
    run.start_training(data, state)  # checks the batch size; with --cas the classifier the CAS is scored by
    step = gan.GANStep(G, D, opt_g, opt_d, data.num_classes, args.n_critic, args.gp_every, args.mode_seeking, ema,
                       graphs=graphs_enabled(args.device, args.cuda_graphs))  # on CUDA: replayed as CUDA graphs

    for epoch in range(state['epoch'], args.epochs):
        for it, x, y in run.batches(epoch, step):  # a shuffled pass over the training images (this process's share)
            run.iteration_done(epoch, it, step(it, x, y))  # every --print-freq: the losses logged, divergence checked
        run.epoch_done(epoch)  # rank 0's BN statistics on every process, the preview, with --cas the score
        # Every --eval-interval epochs: a classifier trained on samples scores the generator; the best is kept.
        if (epoch + 1) % args.eval_interval == 0 or epoch + 1 == args.epochs:
            run.save_gan(f'model_dict_{epoch}.pth', epoch)
            dim_stages.keep_best(run, state, dim.validate_generator(run.sampler, args, data, 1, epoch), epoch)
        state['epoch'] = epoch + 1
        run.save_gan('last.pth', epoch, state=dict(state, matcher=None))
        dim_stages.write_pending(run, state)  # the best checkpoints after last.pth: a resume point always exists

    return run.finish(state, data, {2: 'stage 2', 3: 'or stage 3 on this generator'})  # the next commands


if __name__ == '__main__':
    common.run_cli(main)

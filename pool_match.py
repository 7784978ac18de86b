"""DiM stage 2: fine-tune the stage-1 GAN with model-pool logit matching.

Starting from --weight (G, D and both Adam states; lr set to --lr), every epoch draws a fresh pool model
(convnet, resnet10, resnet18, resnet10_ap, resnet18_ap) that keeps training on real data, --epochs-match-train SGD
steps per generator step. The generator loss gains --match-coeff · mean (log softmax f(x) − log softmax f(G(z(y))))²
over pairs of a real and a generated image of the same class; the critic step is stage 1's. The best checkpoint
(validation split of the training set) is <output-dir><tag>/best.pth, the input of validate.py.

    python pool_match.py --tag match --match logit --match-aug --weight results/gan/best.pth
"""
from condensation import env  # first: the environment PyTorch reads when it starts (env.py)

from condensation.methods import dim
from condensation.run import dim_stages
from condensation.methods import gan
from condensation import common


def main(argv=None):
    args = dim_stages.parse_dim_args(2, __doc__.split('\n')[0], argv)
    data = dim_stages.load_data(args)
    G, D, opt_g, opt_d = dim_stages.new_gan(args, data)
    matcher = dim.PoolMatcher(args, data)
    ema = gan.new_ema(G, args.g_ema)  # --g_ema: continues stage 1's average (or starts one from its weights)
    if not args.resume:
        ck = gan.read_checkpoint(args.weight, '--weight', gan.GAN_KEYS)
        gan.check_foreign(ck, args, '--weight', args.weight)
        gan.load_gan_state(ck, G, D, opt_g, opt_d, ema, '--weight', args.weight)
    run = dim_stages.StageRun(args, dim_stages.RESUMABLE, G, D, opt_g, opt_d, ema)  # --resume: the GAN as in last.pth
    if run.resumed:
        matcher.load_state_dict(run.resumed['state']['matcher'])
    for opt in (opt_g, opt_d):
        for group in opt.param_groups:
            group['lr'] = args.lr  # the loaded optimiser states carry stage 1's lr
    run.header(data, G)
    run.log(f'pool: {", ".join(matcher.pool)} ({args.stem} stem); match {args.match} x {args.match_coeff}, '
            f'match-aug {args.match_aug}, {args.epochs_match_train} pool steps per generator step')
    state = run.resumed['state'] if run.resumed else dict(epoch=0, best={}, best_all=None, history=[])
    run.log(f'resumed from {run.ckpt_path} at epoch {state["epoch"]}' if run.resumed else
            f'loaded {args.weight}; Adam lr set to {args.lr}')
    dim_stages.write_pending(run, state)  # resumed: the best checkpoints a stopped run had chosen but not written
    run.start_training(data, state)  # checks the batch size; with --cas the classifier the CAS is scored by
    # Stage 1's GAN iteration, the generator's loss plus the pool model's matching loss (eager: the pool model and
    # its augmentation are chosen on the host).
    step = gan.GANStep(G, D, opt_g, opt_d, data.num_classes, args.n_critic, args.gp_every, args.mode_seeking, ema,
                       matcher.loss)

    for epoch in range(state['epoch'], args.epochs):
        run.log(f'epoch {epoch}: pool model {matcher.start_epoch(epoch)}')  # a fresh member, trained on the fly
        for it, x, y in run.batches(epoch, step):
            run.iteration_done(epoch, it, step(it, x, y))
        run.epoch_done(epoch)
        if (epoch + 1) % args.eval_interval == 0 or epoch + 1 == args.epochs:  # best_<model>.pth, best.pth
            dim_stages.keep_best(run, state, dim.validate_generator(run.sampler, args, data, 2, epoch), epoch)
        state['epoch'] = epoch + 1
        run.save_gan('last.pth', epoch, state=dict(state, matcher=matcher.state_dict()))
        dim_stages.write_pending(run, state)  # the best checkpoints after last.pth: a resume point always exists

    return run.finish(state, data, {3: 'stage 3'})  # the best checkpoints and the command of stage 3


if __name__ == '__main__':
    common.run_cli(main)

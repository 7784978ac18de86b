"""DM: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023).

Each iteration samples a freshly initialised, never trained network ψ and moves the synthetic images so that,
class by class, the mean embedding of augmented synthetic images equals that of augmented real images:

    L = Σ_c ‖ mean_i ψ.embed(A_c(R_c))_i − mean_j ψ.embed(A_c(S_c))_j ‖²

with one Siamese DSA transform A_c per class, shared by its real batch R_c and its synthetic images S_c.

    python main_DM.py --dataset CIFAR10 --model ConvNet --ipc 10 \
        --dsa_strategy color_crop_cutout_flip_scale_rotate --init real --lr_img 1 --num_exp 5 --num_eval 5
"""
from condensation import env  # first: the environment PyTorch reads when it starts (env.py)

from condensation.device import parallel
from condensation.run.cli import Config, add_flags, check_condense_args, condense_parser, unused_flags
from condensation.data import get_dataset
from condensation.methods.dm import DMStep, default_real_chunk
from condensation.evaluation import EvalRecipe, get_eval_pool
from condensation.run.runner import CondensationRun
from condensation.common import UserError, run_cli

# Flags that may change between a run and its --resume.
RESUMABLE = ('resume', 'device', 'no_progress', 'save_path', 'data_path', 'checkpoint_every', 'num_exp', 'cuda_graphs',
             'compile', 'precision', 'real_chunk')


def parse_args(argv=None, notes=None):
    """The original main_DM.py's flags and defaults plus the project's; notes collects lines for the run log."""
    notes = [] if notes is None else notes
    p = condense_parser(__doc__.split('\n')[0], ipc=50, eval_mode='SS', epoch_eval_train=1000, Iteration=20000,
                        lr_img=1.0, init='real', dsa_strategy='color_crop_cutout_flip_scale_rotate')
    g = p.add_argument_group('DM')
    add_flags(g, ('per_class', 'real_chunk', 'compile'))
    g.add_argument('--preset', choices=['readme'], default=None,
                   help="'readme': lr_img from the reference README's table for this dataset and ipc (default: none, "
                        "--lr_img as given)")
    args = p.parse_args(argv)
    notes += unused_flags(p, args, 'main_DM')
    args = check_condense_args(args)
    if args.preset == 'readme':
        args.lr_img = 10.0 if args.dataset == 'CIFAR10' and args.ipc >= 100 else 1.0
    args.per_class = bool(args.per_class)
    bn = 'BN' in args.model
    if bn and (args.per_class or args.real_chunk):
        raise UserError(f'--per_class and --real_chunk change the batch statistics of {args.model}; they need a '
                        f'model without BN')
    if bn and parallel.world_size() > 1:
        raise UserError(f"{args.model}'s BatchNorm normalises over all classes at once, so its classes cannot be "
                        f"split across torchrun processes; run it in one process or use a model without BN")
    if args.real_chunk is None:
        args.real_chunk = default_real_chunk(args.model, args.device)
    return Config(args)


def main(argv=None):
    notes = []
    args = parse_args(argv, notes)
    data = get_dataset(args.dataset, args.data_path, device=args.device, im_size=args.im_size)
    recipes = {arch: EvalRecipe.from_args(args) for arch in get_eval_pool(args.eval_mode, args.model,
                                                                         strict=args.s_mode_strict)}
    run = CondensationRun(args, RESUMABLE, 'DM', data, reference_every=2000, recipes=recipes, notes=notes)
    for exp in run.experiments():
        syn = run.synthetic_set(exp)  # random real images (--init real) or noise, or as checkpointed
        step = DMStep(args, data, syn.images, syn.labels, syn.optimizer)  # on CUDA: replayed as one CUDA graph
        for it in run.iterations(exp, syn):  # evaluates the set every 2000 iterations and at the end
            loss = step(args.seed, (exp, it))
            run.step_done(exp, it, loss, syn)  # log, progress, checkpoint
        run.experiment_done(exp, syn)  # the final set joins the results file
    return run.finish()


if __name__ == '__main__':
    run_cli(main)

"""DM: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023).

Each iteration samples a freshly initialised, never trained network ψ and moves the synthetic images so that,
class by class, the mean embedding of augmented synthetic images equals that of augmented real images:

    L = Σ_c ‖ mean_i ψ.embed(A_c(R_c))_i − mean_j ψ.embed(A_c(S_c))_j ‖²

with one Siamese DSA transform A_c per class, shared by its real batch R_c and its synthetic images S_c.

    python main_DM.py --dataset CIFAR10 --model ConvNet --ipc 10 \
        --dsa_strategy color_crop_cutout_flip_scale_rotate --init real --lr_img 1 --num_exp 5 --num_eval 5
"""
import os

# PyTorch reads this at its first CPU allocation, so it must precede `import torch`: huge pages for large
# activations remove most of the page-fault time of a CPU run (docs/benchmarks.md).
os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')

import torch  # noqa: E402

import utils  # noqa: E402
from augment import apply_dsa, sample_dsa_params, select_params  # noqa: E402
from utils import UserError, make_generator  # noqa: E402


def on_cpu(args):
    return torch.device(args.device).type == 'cpu'


def parse_args(argv=None):
    p = utils.condense_parser(__doc__.split('\n')[0], ipc=50, eval_mode='SS', epoch_eval_train=1000,
                              Iteration=20000, lr_img=1.0, init='real',
                              dsa_strategy='color_crop_cutout_flip_scale_rotate')
    g = p.add_argument_group('DM')
    g.add_argument('--per_class', action='store_true',
                   help="one class's graph at a time (the README's out-of-memory trick; same result, non-BN models)")
    g.add_argument('--real_chunk', type=int, default=None,
                   help='embed the real images in chunks of this many (exact for non-BN models; saves memory; '
                        'default: 256 on CPU, where it is also faster, all at once on CUDA)')
    g.add_argument('--preset', choices=['readme'], default=None,
                   help="'readme': lr_img from the reference README's table for this dataset and ipc")
    args = utils.check_condense_args(p.parse_args(argv))
    if args.preset == 'readme':
        args.lr_img = 10.0 if args.dataset == 'CIFAR10' and args.ipc >= 100 else 1.0
    args.bn = 'BN' in args.model
    if args.bn and (args.per_class or args.real_chunk):
        raise UserError(f'--per_class and --real_chunk change the batch statistics of {args.model}; they need a '
                        f'model without BN')
    if args.real_chunk is not None:
        utils.check_positive('real_chunk', args.real_chunk)
    elif not args.bn and on_cpu(args):
        # One forward of K·batch_real images makes activations of gigabytes that spill every cache; 256 at a
        # time is 1.5x faster on CPU (docs/benchmarks.md) and exact, every row being independent without BN.
        args.real_chunk = 256
    return args


def sample_real(data, batch_real, generator):
    """batch_real random images of every class in one gather, with each image's class."""
    picks = [idx[torch.randperm(len(idx), generator=generator)[:batch_real]] for idx in data.indices_class]
    cls = torch.cat([torch.full((len(p),), c) for c, p in enumerate(picks)])
    return data.images(torch.cat(picks)), cls


def embed_real(net, images, chunk=None):
    """Real features are constants of the loss: no graph, optionally in chunks (exact: each row is independent)."""
    with torch.no_grad():
        if not chunk:
            return net.embed(images)
        return torch.cat([net.embed(x) for x in images.split(chunk)])


def dm_loss(net, real, real_cls, syn, syn_cls, num_classes, params=None, param=None, real_chunk=None):
    """Σ_c ‖mean embed(real_c) − mean embed(syn_c)‖² over the classes present, all classes in one forward each.

    params: one DSA parameter set per class (None: no augmentation), applied Siamese to both sides; param: the
    ParamDiffAug. For BN models this is the reference's joint branch: batch statistics over all classes per side.
    """
    if params is not None:
        real = apply_dsa(real, select_params(params, real_cls), param)
        syn = apply_dsa(syn, select_params(params, syn_cls), param)
    mean_real = utils.class_means(embed_real(net, real, real_chunk), real_cls, num_classes)
    mean_syn = utils.class_means(net.embed(syn), syn_cls, num_classes)
    return ((mean_real - mean_syn) ** 2).sum()


def dm_backward(net, real, real_cls, image_syn, syn_cls, num_classes, params=None, param=None, real_chunk=None,
                per_class=False):
    """Accumulate ∂L/∂image_syn and return L. per_class keeps one class's graph alive at a time; since L_c
    depends only on class c's images, the gradient is the same as the joint one."""
    if not per_class:
        loss = dm_loss(net, real, real_cls, image_syn, syn_cls, num_classes, params, param, real_chunk)
        loss.backward()
        return loss.item()
    total = 0.0
    for c in range(num_classes):
        rows_r, rows_s = (real_cls == c).nonzero()[:, 0], (syn_cls == c).nonzero()[:, 0]
        sub = None if params is None else select_params(params, torch.tensor([c]))
        loss = dm_loss(net, real[rows_r.to(real.device)], torch.zeros_like(rows_r), image_syn[rows_s.to(real.device)],
                       torch.zeros_like(rows_s), 1, sub, param, real_chunk)
        loss.backward()
        total += loss.item()
    return total


def dm_iteration(args, data, image_syn, syn_cls, optimizer, exp, it):
    """One DM step: fresh frozen network, real batch, per-class Siamese augmentation, one SGD step on the images.
    All randomness comes from generators named by (seed, exp, it), so a resumed run repeats it exactly."""
    net = utils.get_network(args.model, data.channel, data.num_classes, data.im_size, device=args.device,
                            generator=make_generator(args.seed, 'dm_net', exp, it))
    net.train()
    for p in net.parameters():
        p.requires_grad_(False)
    if on_cpu(args):
        # oneDNN's convolutions run faster on channels-last weights (the inputs follow); same math, float rounding.
        net = net.to(memory_format=torch.channels_last)
    g = make_generator(args.seed, 'dm_batch', exp, it)
    real, real_cls = sample_real(data, args.batch_real, g)
    params = sample_dsa_params(args.dsa_strategy, data.num_classes, g, args.dsa_param) if args.dsa else None
    optimizer.zero_grad(set_to_none=True)
    loss = dm_backward(net, real, real_cls, image_syn, syn_cls, data.num_classes, params, args.dsa_param,
                       args.real_chunk, args.per_class)
    optimizer.step()
    return loss


def main(argv=None):
    args = parse_args(argv)
    utils.synthesize(args, 'DM', dm_iteration, reference_every=2000)


if __name__ == '__main__':
    utils.run_cli(main)

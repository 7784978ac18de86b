"""The host's share of a step, measured without a GPU: aten ops dispatched per step and host microseconds per step
at tiny shapes, for the DM step, an evaluation epoch (one network, and four trained together), a GAN iteration and
a DC/DSA matching pass and inner epoch.

    python bench/host_overhead.py                          # this checkout
    python bench/host_overhead.py --code ../old-checkout   # another checkout of the project, for a before/after

Each aten op is at least one kernel launch on a GPU, where a step of tiny shapes costs what the host spends
dispatching it: fewer ops per step is what the card will see. On CUDA the steps marked "replayed" are recorded once
as a CUDA graph and then cost one launch per step (graphs.Graphed). With --gpu_path the steps run the code a GPU
runs (draws from generators on the step's device, DSA token by token), on the CPU.
"""
import argparse
import importlib
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], allow_abbrev=False)
    p.add_argument('--code', default=ROOT, help='the checkout whose steps are measured')
    p.add_argument('--reps', type=int, default=20, help='timed steps (median)')
    p.add_argument('--gpu_path', action='store_true', help="run the GPU's code path on the CPU (this checkout's "
                                                           "steps only)")
    p.add_argument('--threads', type=int, default=1)
    a = p.parse_args()
    sys.path.insert(0, os.path.abspath(a.code))
    os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')
    import torch
    torch.set_num_threads(a.threads)
    rows = measure(a, torch)
    print(f'\n{os.path.abspath(a.code)}; torch {torch.__version__}; {a.threads} thread(s); '
          f'{"GPU path" if a.gpu_path else "CPU path"}; median of {a.reps}\n')
    print('| step (tiny shapes) | aten ops per step | host µs per step |')
    print('|---|---|---|')
    for name, (ops, us) in rows.items():
        print(f'| {name} | {ops} | {us:.0f} |')


# Where the modules live: in the library package, or flat at the top in a --code checkout from before it.
PACKAGED = {'augment': 'condensation.augment', 'dc': 'condensation.methods.dc', 'dim': 'condensation.methods.dim',
            'dm': 'condensation.methods.dm', 'evaluation': 'condensation.evaluation', 'gan': 'condensation.methods.gan',
            'networks': 'condensation.networks', 'data': 'condensation.data', 'runner': 'condensation.run.runner'}


def _module(name):
    try:
        return importlib.import_module(PACKAGED[name])
    except ImportError:
        return importlib.import_module(name)


STRATEGY = 'color_crop_cutout_flip_scale_rotate'


def measure(a, torch):
    from torch.utils._python_dispatch import TorchDispatchMode

    augment, dm, evaluation, networks, data, runner = (
        _module(n) for n in ('augment', 'dm', 'evaluation', 'networks', 'data', 'runner'))
    import main_DM
    Data, init_synset = data.Data, runner.init_synset

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    def ops_and_us(step, warmup=2):
        for _ in range(warmup):
            step()
        with Count() as c:
            step()
        times = []
        for _ in range(a.reps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        return c.n, 1e6 * statistics.median(times)

    new = hasattr(dm, 'DMStep')
    if a.gpu_path:
        if not new:
            sys.exit('--gpu_path needs a checkout with dm.DMStep')
        augment._group_on_host = lambda choice: False
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(8)
    x = torch.randint(0, 256, (80, 3, 8, 8), generator=g, dtype=torch.uint8)
    data = Data('CIFAR10', [str(i) for i in range(10)], x, labels, x[:20], labels[:20])
    strategy = STRATEGY
    rows = {}

    # DM step: ConvNetW32, ipc 1, 4 real images per class, DSA
    args = main_DM.parse_args(['--dataset', 'CIFAR10', '--model', 'ConvNetW32', '--ipc', '1', '--device', 'cpu',
                               '--batch_real', '2', '--dsa_strategy', strategy])
    image_syn, syn_cls = init_synset(data, 1, 'noise', g)
    image_syn.requires_grad_(True)
    opt = torch.optim.SGD([image_syn], lr=1.0, momentum=0.5)
    it = iter(range(10 ** 6))
    if new:
        step = dm.DMStep(args, data, image_syn, syn_cls, opt, resident=a.gpu_path)
        rows['DM step (replayed)'] = ops_and_us(lambda: step(0, (0, next(it))))
    else:
        args.resident = False
        rows['DM step (replayed)'] = ops_and_us(
            lambda: dm.dm_step(args, data, image_syn, syn_cls, opt, 0, (0, next(it))))

    # evaluation epoch: 10 images, batch 256, DSA; one network, and four trained together
    images, ys = init_synset(data, 1, 'noise', g)
    recipe = evaluation.EvalRecipe(epoch_eval_train=0, batch_train=256, dsa=True, dsa_strategy=strategy,
                                   dsa_param=augment.ParamDiffAug())

    def gens(m):
        return [torch.Generator().manual_seed(i) for i in range(m)]

    net = networks.get_network('ConvNetW32', 3, 10, (8, 8), generator=g)
    rows['evaluation epoch, 1 network (replayed)'] = ops_and_us(
        lambda: evaluation._train(list(net.parameters()), lambda b: net(b[0])[None], images, ys, recipe, gens(1)))
    nets = [networks.get_network('ConvNetW32', 3, 10, (8, 8), generator=g) for _ in range(4)]
    params, buffers = torch.func.stack_module_state(nets)
    base = networks.get_network('ConvNetW32', 3, 10, (8, 8), device='meta')
    forward = torch.func.vmap(lambda p, b, xb: torch.func.functional_call(base, (p, b), (xb,)))
    rows['evaluation epoch, 4 networks together (replayed)'] = ops_and_us(
        lambda: evaluation._train(list(params.values()), lambda b: forward(params, buffers, b), images, ys, recipe,
                                  gens(4)))

    gan_and_dc_rows(a, torch, rows, ops_and_us, data, g, images, ys, it)
    return rows


def gan_and_dc_rows(a, torch, rows, ops_and_us, data, g, images, ys, it):
    """The GAN iteration and the DC/DSA rows (the same data, evaluation images and step keys `it` as measure's)."""
    dc, dim, networks, runner = (_module(n) for n in ('dc', 'dim', 'networks', 'runner'))
    import main as main_dc
    try:
        gan = _module('gan')  # the GAN's losses and steps (in dim.py in an older --code)
    except ImportError:
        gan = dim
    init_synset, strategy, new = runner.init_synset, STRATEGY, hasattr(dc, 'DCStep')

    # GAN iteration: width 8, batch 8, MNIST shapes, gradient penalty
    G, D = networks.define_gan(1, 10, 28, 100, 'embed', 8, generator=g)
    opt_g, opt_d = gan.adam(G, 2e-4), gan.adam(D, 2e-4)
    xg, yg = torch.rand(8, 1, 28, 28, generator=g) * 2 - 1, torch.arange(8)

    def gan_iteration():
        gan.generator_step(G, D, opt_g, yg, g)
        gan.critic_step(G, D, opt_d, xg, yg, 10, g)
    rows['GAN iteration, G and D step (replayed)'] = ops_and_us(gan_iteration)

    # DC/DSA: one matching pass (outer_loop 1) and one inner epoch
    dsa = main_dc.parse_args(['--dataset', 'CIFAR10', '--model', 'ConvNetW32', '--ipc', '1', '--device', 'cpu',
                              '--method', 'DSA', '--dsa_strategy', strategy, '--batch_real', '2', '--outer_loop', '1'])
    image_dc, cls_dc = init_synset(data, 1, 'noise', g)
    image_dc.requires_grad_(True)
    opt_dc = torch.optim.SGD([image_dc], lr=0.1, momentum=0.5)
    if new:
        dstep = dc.DCStep(dsa, data, image_dc, cls_dc, opt_dc, resident=a.gpu_path)
        rows['DSA matching pass, 10 classes (replayed)'] = ops_and_us(lambda: dstep(0, (0, next(it))))
    else:
        rows['DSA matching pass, 10 classes (replayed)'] = ops_and_us(
            lambda: dc.dc_step(dsa, data, image_dc, cls_dc, opt_dc, 0, (0, next(it))))
    net_dc = networks.get_network('ConvNetW32', 3, 10, (8, 8), generator=g)
    opt_net = torch.optim.SGD(net_dc.parameters(), lr=0.01)
    rows['DSA inner epoch (replayed)'] = ops_and_us(
        lambda: dc.train_epochs(net_dc, opt_net, images, ys, 1, 256, g, strategy, dsa.dsa_param))


if __name__ == '__main__':
    main()

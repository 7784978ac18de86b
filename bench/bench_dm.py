"""Time DM synthesis iterations and evaluation epochs (CIFAR-10-shaped data, ConvNet), evaluation excluded.

    python bench/bench_dm.py                      # CPU, and CUDA when present
    python bench/bench_dm.py --devices cpu --ipc 10 --iters 5
    THP_MEM_ALLOC_ENABLE=0 python bench/bench_dm.py --per_class   # the original's structure: one class at a time,
                                                                 # 4 KiB pages

Reports seconds per DM iteration, images embedded per second, achieved GFLOP/s (FLOPs of one iteration counted
once with torch.utils.flop_counter) next to the device's measured float32 matmul GFLOP/s, and seconds per
evaluate_synset epoch. The data are random uint8 images: the cost of an iteration does not depend on them.
"""
import os
import sys

os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import main_DM  # noqa: E402
from dm import dm_step  # noqa: E402
from augment import ParamDiffAug  # noqa: E402
from data import Data, TensorLoader  # noqa: E402
from evaluation import evaluate_synset, test_accuracy  # noqa: E402
from networks import get_network  # noqa: E402
from runner import init_synset  # noqa: E402

STRATEGY = 'color_crop_cutout_flip_scale_rotate'


def sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def matmul_gflops(device, n=4096, reps=5):
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def fake_cifar10(device, n_per_class=500):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    x = torch.randint(0, 256, (len(labels), 3, 32, 32), generator=g, dtype=torch.uint8)
    return Data('CIFAR10', [str(i) for i in range(10)], x, labels, x[:1000], labels[:1000], device)


def bench_dm(device, ipc, batch_real, iters, model, per_class=False):
    data = fake_cifar10(device)
    args = main_DM.parse_args(['--dataset', 'CIFAR10', '--model', model, '--ipc', str(ipc), '--device', device,
                               '--batch_real', str(batch_real), '--dsa_strategy', STRATEGY]
                              + (['--per_class'] if per_class else []))
    image_syn, syn_cls = init_synset(data, ipc, 'real', torch.Generator().manual_seed(0))
    image_syn.requires_grad_(True)
    opt = torch.optim.SGD([image_syn], lr=1.0, momentum=0.5)
    with FlopCounterMode(display=False) as counter:
        dm_step(args, data, image_syn, syn_cls, opt, args.seed, (0, 0))
    flops = counter.get_total_flops()
    dm_step(args, data, image_syn, syn_cls, opt, args.seed, (0, 1))  # warm-up
    times = []
    for it in range(iters):
        sync(device)
        t = time.perf_counter()
        dm_step(args, data, image_syn, syn_cls, opt, args.seed, (0, 2 + it))
        sync(device)
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    return dict(s_per_it=s, img_per_s=10 * (batch_real + ipc) / s, gflops=flops / s / 1e9, gflop_per_it=flops / 1e9)


def bench_eval(device, ipc, epochs):
    data = fake_cifar10(device)
    images, labels = init_synset(data, ipc, 'real', torch.Generator().manual_seed(0))
    args = types.SimpleNamespace(lr_net=0.01, epoch_eval_train=epochs, batch_train=256, device=device, dsa=True,
                                 dsa_strategy=STRATEGY, dsa_param=ParamDiffAug(), dc_aug_param=None)
    net = get_network('ConvNet', 3, 10, (32, 32), device=device, generator=torch.Generator().manual_seed(0))
    empty = TensorLoader(data.x_test[:0], data.labels_test[:0])
    sync(device)
    t = time.perf_counter()
    evaluate_synset(0, net, images, labels, empty, args, generator=torch.Generator().manual_seed(0))
    sync(device)
    train_s = (time.perf_counter() - t) / (epochs + 1)
    t = time.perf_counter()
    test_accuracy(net, fake_cifar10(device, 1000).testloader(), device)  # 10,000 test images
    sync(device)
    return train_s, time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--devices', nargs='+', default=['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    p.add_argument('--ipc', type=int, nargs='+', default=[1, 10, 50])
    p.add_argument('--batch_real', type=int, default=256)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--model', default='ConvNet')
    p.add_argument('--eval_ipc', type=int, nargs='+', default=[10, 50])
    p.add_argument('--eval_epochs', type=int, default=10)
    p.add_argument('--per_class', action='store_true', help="one class's forward at a time, as the original")
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'THP_MEM_ALLOC_ENABLE={os.environ.get("THP_MEM_ALLOC_ENABLE")}, per_class={args.per_class}')
    for device in args.devices:
        name = torch.cuda.get_device_name() if device.startswith('cuda') else f'CPU, {torch.get_num_threads()} threads'
        peak = matmul_gflops(device)
        print(f'\n## {name}; torch {torch.__version__}; fp32 matmul 4096²: {peak:.0f} GFLOP/s\n')
        print(f'| DM {args.model}, batch_real {args.batch_real} | s/iteration | images embedded/s | GFLOP/iteration '
              f'| achieved GFLOP/s | % of matmul |')
        print('|---|---|---|---|---|---|')
        for ipc in args.ipc:
            r = bench_dm(device, ipc, args.batch_real, args.iters, args.model, args.per_class)
            print(f'| CIFAR10 ipc {ipc} | {r["s_per_it"]:.3f} | {r["img_per_s"]:.0f} | {r["gflop_per_it"]:.1f} | '
                  f'{r["gflops"]:.0f} | {100 * r["gflops"] / peak:.0f} % |', flush=True)
        print('\n| evaluate_synset (ConvNet, DSA) | s/epoch | test pass, 10,000 images (s) |')
        print('|---|---|---|')
        for ipc in args.eval_ipc:
            train_s, test_s = bench_eval(device, ipc, args.eval_epochs)
            print(f'| CIFAR10 ipc {ipc} | {train_s:.3f} | {test_s:.2f} |', flush=True)


if __name__ == '__main__':
    main()

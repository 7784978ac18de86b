"""The GPU-throughput paths checked on the CPU: networks trained together equal networks trained one by one,
the device-resident DM step computes today's loss and gradient, --amp bf16 runs."""

import functools
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from condensation import augment
from condensation.methods import dm
import main_DM
from condensation.augment import ParamDiffAug, apply_dsa, sample_dsa_params
from conftest import cl_args, condense_toy, dim_flags, dm_args, toy_data
from condensation.data import TensorLoader
from condensation.evaluation import EvalRecipe, evaluate_synset, train_together
from condensation.networks import get_network

STRATEGY = 'color_crop_cutout_flip_scale_rotate'
DC_PARAM = dict(crop=4, scale=0.2, rotate=45, noise=0.001, strategy='crop_scale_rotate')


def _toy_set(n=2, size=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(10 * n, 3, size, size, generator=g), torch.arange(10).repeat(n)


@pytest.mark.parametrize('aug', ['dsa', 'dc'])
def test_networks_trained_together_equal_one_by_one(aug):
    x, y = _toy_set()
    recipe = EvalRecipe(epoch_eval_train=3, batch_train=8, dsa=aug == 'dsa', dsa_strategy=STRATEGY,
                        dsa_param=ParamDiffAug(), dc_aug_param=DC_PARAM if aug == 'dc' else None)

    def nets():
        return [get_network('ConvNetW32', 3, 10, (16, 16), generator=torch.Generator().manual_seed(10 + i))
                for i in range(3)]

    def gens():
        return [torch.Generator().manual_seed(i) for i in range(3)]

    loader = TensorLoader(x, y, 7)
    start = [parameters_to_vector(net.parameters()) for net in nets()]
    alone = [evaluate_synset(i, net, x, y, loader, recipe, generator=g) for i, (net, g) in
             enumerate(zip(nets(), gens()))]
    together_nets = nets()
    together = train_together(together_nets, x, y, loader, recipe, gens())
    # Same draws, same updates: the weights agree up to the float rounding of the vectorised convolutions, which sum
    # in another order. Rounding alone leaves them about 1e-6 of the way training moved them apart; when it tips an
    # activation over a ReLU's or a crop's edge at one of the 12 steps, up to 3e-3 (seen over 48 networks and three
    # CPU instruction sets); a network trained on other draws ends a whole training's way off (about 1). So: 2 %.
    # An accuracy may then differ by one example, a near-tie tipped the other way.
    for (net, acc_train, acc), net_t, (acc_train_t, acc_t), p0 in zip(alone, together_nets, together, start):
        p, q = parameters_to_vector(net.parameters()), parameters_to_vector(net_t.parameters())
        assert (p - q).norm() <= 0.02 * (p - p0).norm(), ((p - q).norm() / (p - p0).norm()).item()
        assert abs(acc_train - acc_train_t) <= 1 / len(x) and abs(acc - acc_t) <= 1 / len(x)
    assert len({tuple(p.flatten()[:5].tolist()) for p in (n.features[0].weight for n in together_nets)}) == 3


def test_token_choice_on_the_gpu_path_equals_grouping_images_by_token():
    x = torch.randn(12, 3, 16, 16, requires_grad=True)
    p = sample_dsa_params(STRATEGY, 12, torch.Generator().manual_seed(3), ParamDiffAug())
    assert len(p['choice'].unique()) > 2 and not torch.equal(p['choice'].sort().values, p['choice'])  # interleaved
    grouped = apply_dsa(x, p)
    (ga,) = torch.autograd.grad(grouped.square().sum(), x)
    chosen = augment._by_choice(x, p, p['tokens'], ParamDiffAug())
    (gb,) = torch.autograd.grad(chosen.square().sum(), x)
    assert torch.equal(grouped, chosen)
    assert torch.equal(ga, gb)


def test_device_resident_loss_and_gradient_equal_todays(monkeypatch):
    """Same network, real batch and DSA parameters: the GPU path's augmentation gives today's loss and gradient."""
    data = toy_data(classes=4)
    net = get_network('ConvNetW32', 1, 4, (28, 28), generator=torch.Generator().manual_seed(0))
    real, real_cls = dm.sample_real(data, 6, torch.Generator().manual_seed(1))
    syn = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    syn_cls = torch.arange(4).repeat_interleave(2)
    params = sample_dsa_params(STRATEGY, 4, torch.Generator().manual_seed(3), ParamDiffAug())

    def loss_and_grad():
        s = syn.clone().requires_grad_(True)
        loss = dm.dm_loss(net, real, real_cls, s, syn_cls, 4, params, ParamDiffAug())
        loss.backward()
        return loss.detach(), s.grad

    today = loss_and_grad()
    monkeypatch.setattr(dm, 'apply_dsa', lambda x, p, param: augment._by_choice(x, p, p['tokens'], param))
    resident = loss_and_grad()
    assert torch.equal(today[0], resident[0]) and torch.equal(today[1], resident[1])


def test_real_indices_drawn_in_one_call_are_a_uniform_sample_of_each_class():
    data = toy_data(n=12, classes=4)
    data.indices_class[3] = data.indices_class[3][:5]  # a class smaller than batch_real: all of it
    counts = torch.zeros(48)
    for k in range(300):
        g = torch.Generator().manual_seed(k)
        table, *_ = dm._class_table(data, 8, g.device)
        keys = torch.rand(table.shape, generator=g)
        images, cls = dm.sample_real_resident(data, 8, torch.Generator().manual_seed(k))
        assert cls.tolist() == [0] * 8 + [1] * 8 + [2] * 8 + [3] * 5
        picks = torch.cat([data.indices_class[c][keys[c, :len(data.indices_class[c])].argsort()[:8]]
                           for c in range(4)])
        assert torch.equal(images.sort(0).values, data.images(picks).sort(0).values)
        counts[picks] += 1
    assert len(set(picks.tolist())) == 29
    assert counts[:36].min() > 0.5 * 200 and counts[:36].max() < 1.5 * 200  # 8 of 12 per draw: 200 each


def test_device_resident_step_same_seed_same_set_and_it_learns():
    data = toy_data()
    args = dm_args(lr_img=5.0)
    resident = functools.partial(dm.dm_step, resident=True)  # pick_real_resident's draws, here on the CPU
    first = condense_toy(resident, args, data, 4)
    second = condense_toy(resident, args, data, 4)
    assert torch.equal(first[1], second[1]) and not torch.equal(first[0], first[1])


def test_bf16_runs_and_stays_close_to_float32():
    data = toy_data()
    fp32 = condense_toy(dm.dm_step, dm_args(lr_img=5.0), data, 3)[1]
    bf16 = condense_toy(dm.dm_step, dm_args(lr_img=5.0, amp='bf16'), data, 3)[1]
    assert torch.isfinite(bf16).all() and not torch.equal(fp32, bf16)
    assert (bf16 - fp32).abs().mean() < 0.1 * fp32.abs().mean()
    x, y = _toy_set()
    recipe = EvalRecipe(epoch_eval_train=2, batch_train=8, amp='bf16')
    net = get_network('ConvNetW32', 3, 10, (16, 16), generator=torch.Generator().manual_seed(0))
    _, acc_train, acc = evaluate_synset(0, net, x, y, TensorLoader(x, y), recipe, generator=torch.Generator())
    assert 0 <= acc <= 1 and net.features[0].weight.dtype == torch.float32


def test_amp_flag_reaches_the_step_and_the_evaluation(prepared_mnist):
    args = main_DM.parse_args(['--dataset', 'MNIST', '--data_path', str(prepared_mnist), '--amp', 'bf16',
                               '--eval_one_by_one', '--device', 'cpu'])
    assert args.amp == 'bf16'
    recipe = EvalRecipe.from_args(args)
    assert recipe.amp == 'bf16' and recipe.eval_one_by_one


def test_cl_and_dim_fixed_set_evaluations_train_together_where_a_gpu_would(tmp_path, monkeypatch):
    """CL's step evaluation and DiM's fixed-set evaluation go through evaluation.evaluate_networks: where networks
    train together (a GPU; forced here on the CPU) they do, with the accuracies of one-by-one training."""
    import CL_DM
    from condensation import evaluation
    import gen_condense
    import validate
    from conftest import write_prepared

    write_prepared(str(tmp_path), 'MNIST', n_train=10, n_test=3, channel=1, size=28)
    args = cl_args(tmp_path, '--num_eval', '3', '--epoch_eval_train', '2')
    data = toy_data(6, 10, n_test=3)
    images, labels = data.images(torch.arange(0, 60, 3)), data.labels_train[0:60:3]
    groups = []
    real = evaluation.train_together
    monkeypatch.setattr(evaluation, 'train_together', lambda nets, *a: groups.append(len(nets)) or real(nets, *a))

    def cl_accs():
        return CL_DM.evaluate_step(args, data, images, labels, list(range(10)), 0, 0, None, lambda *a, **k: None)[0]

    gen_condense.main(dim_flags(tmp_path, 1, '--tag', 'gan', '--epochs', '1', '--iters-per-epoch', '1'))
    stage3 = dim_flags(tmp_path, 3, '--pretrain-weight', str(tmp_path / 'results/gan/best.pth'), '--dim_eval', 'fixed',
                    '--num_eval', '3', '--epochs-eval', '2', '--batch_train', '8')

    def dim_accs(tag):
        return validate.main(stage3 + ['--tag', tag])['fixed']['models']['convnet']['final']['all']

    alone = cl_accs() + dim_accs('alone')
    assert groups == []
    monkeypatch.setattr(evaluation, 'trains_together', lambda recipe, on_epoch=None: on_epoch is None)
    together = cl_accs() + dim_accs('together')
    # Both test on 30 images; float rounding (test_networks_trained_together_equal_one_by_one) may tip a near-tie.
    assert groups == [3, 3] and all(abs(a - b) <= 1 / 30 + 1e-9 for a, b in zip(alone, together)), (alone, together)


def test_bench_dm_alternates_its_cases_and_reports_the_ipc_ratio():
    # the ratio docs/benchmarks.md quotes, at toy sizes (a one-block network, 8 real images per class)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join('bench', 'bench_dm.py'), '--devices', 'cpu', '--ipc', '10', '50',
                        '--iters', '1', '--rounds', '2', '--eval_ipc', '--batch_real', '8', '--model', 'ConvNetD1'],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith('| CIFAR10 ipc')]
    assert len(rows) == 2 and 'median of 2 rounds' in r.stdout
    line = r.stdout.split('ipc-50 step / ipc-10 step = ')[1].splitlines()[0]
    ratio = float(line.split()[0])
    assert ratio == pytest.approx(float(rows[1].split('|')[2]) / float(rows[0].split('|')[2]), abs=0.01)
    # and the ratio within each round: its median lies between the two rounds' ratios
    median, spread = line.split('within a round: median ')[1].split(', ')
    low, high = (float(v) for v in spread.split(';')[0].split('–'))
    assert low <= float(median) <= high
    # and the FLOP ratio, from the rows' GFLOP/iteration: more synthetic images, more work
    flops = float(line.split('FLOPs: ')[1].split()[0])
    g10, g50 = (float(row.split('|')[4]) for row in rows)  # printed to 0.1 GFLOP
    assert (g50 - 0.05) / (g10 + 0.05) - 0.01 <= flops <= (g50 + 0.05) / (g10 - 0.05) + 0.01 and flops > 1


def _bench_rows(*flags):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join('bench', 'eval_layout.py'), '--rounds', '2', *flags],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'median of 2 alternating rounds' in r.stdout
    rows = [[cell.strip() for cell in line.split('|')[1:-1]] for line in r.stdout.splitlines()
            if line.startswith('| ') and not line.startswith('| case')]
    for _, nchw, cl, ratios in rows:  # two medians, and the range of the rounds' ratios
        low, high = (float(v) for v in ratios.split('–'))
        assert float(nchw) > 0 and float(cl) > 0 and 0 < low <= high
    return rows


def test_bench_eval_layout_times_both_layouts_of_the_evaluation():
    rows = _bench_rows('--ipc', '1', '2', '--epochs', '1', '--test_images', '20', '--model', 'ConvNetD1',
                       '--shape', '1', '28', '28')
    assert [r[0] for r in rows] == ['ConvNetD1, ipc 1, s per epoch', 'ConvNetD1, ipc 2, s per epoch',
                                    'ConvNetD1, test pass of 20 images, s']
    rows = _bench_rows('--steps', '--models', 'ConvNetD1', 'LeNet', '--shape', '1', '28', '28')
    assert [r[0] for r in rows] == ['ConvNetD1 (channels-last in evaluation: yes), training step, ms',
                                    'ConvNetD1, test batch, ms',
                                    'LeNet (channels-last in evaluation: no), training step, ms',
                                    'LeNet, test batch, ms']


def test_bench_dm_times_together_only_where_the_evaluation_trains_together():
    # on a CPU evaluate_pool trains one by one whatever the recipe asks, so a 'together' row would be mislabelled
    from bench.bench_dm import eval_modes
    modes = ['one by one', 'together', 'together bf16']
    assert eval_modes('cpu', modes) == (['one by one'], ['together', 'together bf16'])
    assert eval_modes('cuda', modes) == (modes, [])  # decided from the recipe's device; no GPU needed

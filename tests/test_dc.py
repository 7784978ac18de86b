import math
import os
import subprocess
import sys

import pytest
import torch

from condensation.methods import dc
import main
from condensation import common
from condensation.evaluation import EvalRecipe
from condensation.networks import get_network
from condensation.run.runner import init_synset
from condensation.augment import sample_dsa_params
from conftest import ROOT, condense_toy, interrupt_at, toy_data
from condensation.common import UserError

STRATEGY = 'color_crop_cutout_flip_scale_rotate'


def _args(*extra):
    return main.parse_args(['--dataset', 'MNIST', '--model', 'ConvNetW32', '--ipc', '2', '--outer_loop', '2',
                            '--inner_loop', '1', '--batch_real', '12', '--device', 'cpu', *extra])


# ---------------------------------------------------------------------------------------------- match_loss

def _cosdist(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return 1 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) + 1e-6)


def _grads():
    """(syn, real) gradient lists: a conv weight 2×1×1×2, a LayerNorm-style 2×1×2 weight, a linear 2×2, a bias 2."""
    syn = [torch.tensor([[1., 0.], [0., 1.]]).view(2, 1, 1, 2), torch.tensor([[[1., 2.]], [[3., 0.]]]),
           torch.tensor([[2., 0.], [1., 1.]]), torch.tensor([1., 0.])]
    real = [torch.tensor([[1., 0.], [1., 1.]]).view(2, 1, 1, 2), torch.tensor([[[2., 1.]], [[0., 1.]]]),
            torch.tensor([[0., 3.], [1., 1.]]), torch.tensor([0., 2.])]
    return syn, real


def test_match_loss_ours_is_a_sum_of_per_row_cosine_distances():
    syn, real = _grads()
    rows = [([1, 0], [1, 0]), ([0, 1], [1, 1]),        # conv: out × (in·h·w)
            ([1, 2], [2, 1]), ([3, 0], [0, 1]),        # 3-D (LayerNorm weight): C × (h·w)
            ([2, 0], [0, 3]), ([1, 1], [1, 1])]        # linear, as is
    expected = sum(_cosdist(a, b) for a, b in rows)
    assert dc.match_loss(syn, real, 'ours').item() == pytest.approx(expected, rel=1e-6)
    # The bias counts 0 (the reference's 'ours'), or one cosine distance over the whole vector with match_1d.
    with_bias = expected + _cosdist([1, 0], [0, 2])
    assert dc.match_loss(syn, real, 'ours', match_1d=True).item() == pytest.approx(with_bias, rel=1e-6)
    # Only 1-D parameters: 0 without match_1d.
    assert dc.match_loss(syn[3:], real[3:], 'ours').item() == 0.0


def test_match_loss_mse_and_cos_use_every_parameter():
    syn, real = _grads()
    s = [v for g in syn for v in g.reshape(-1).tolist()]
    r = [v for g in real for v in g.reshape(-1).tolist()]
    mse = sum((a - b) ** 2 for a, b in zip(s, r))
    assert dc.match_loss(syn, real, 'mse').item() == pytest.approx(mse, rel=1e-6)
    assert dc.match_loss(syn, real, 'cos').item() == pytest.approx(_cosdist(s, r), rel=1e-6)
    for metric in ('mse', 'cos'):  # match_1d changes only 'ours'
        assert dc.match_loss(syn, real, metric, True).item() == dc.match_loss(syn, real, metric).item()
    with pytest.raises(ValueError, match="'ours', 'mse' or 'cos'"):
        dc.match_loss(syn, real, 'l1')


@pytest.mark.parametrize('metric, strategy', [('ours', None), ('mse', None), ('cos', 'color_crop_scale')])
def test_gradient_reaches_the_images_through_second_order_terms(metric, strategy):
    """d/dS D(∇θ CE(S), g_R) by autograd equals a central finite difference (double precision, tiny net)."""
    g = torch.Generator().manual_seed(0)
    net = get_network('ConvNetW32', 2, 3, (16, 16), generator=g).double()
    real = torch.randn(6, 2, 16, 16, generator=g, dtype=torch.float64)
    syn = torch.randn(2, 2, 16, 16, generator=g, dtype=torch.float64, requires_grad=True)
    params = sample_dsa_params(strategy, 1, g) if strategy else None

    def loss(s):
        return dc.class_match_loss(net, real, s, 1, metric, True, params)

    grad, = torch.autograd.grad(loss(syn), syn)
    assert grad.abs().sum() > 0
    h = 1e-6
    for idx in [(0, 0, 3, 4), (1, 1, 8, 8), (0, 1, 15, 0)]:
        plus, minus = syn.detach().clone(), syn.detach().clone()
        plus[idx] += h
        minus[idx] -= h
        fd = (loss(plus) - loss(minus)).item() / (2 * h)
        assert grad[idx].item() == pytest.approx(fd, rel=1e-4, abs=1e-9)


def test_class_match_loss_treats_the_real_gradient_as_a_constant():
    g = torch.Generator().manual_seed(1)
    net = get_network('ConvNetW32', 1, 3, (16, 16), generator=g)
    real = torch.randn(4, 1, 16, 16, generator=g, requires_grad=True)
    syn = torch.randn(2, 1, 16, 16, generator=g, requires_grad=True)
    dc.class_match_loss(net, real, syn, 0).backward()
    assert real.grad is None and syn.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- loops

def test_loops_table_and_out_of_table_rules(capsys):
    table = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
    for ipc, loops in table.items():
        assert dc.get_loops(ipc) == loops
    assert dc.get_loops(10, outer_loop=3) == (3, 50)  # flags win
    assert dc.get_loops(10, 3, 0) == (3, 0)
    assert capsys.readouterr().err == ''
    notes = []
    assert dc.get_loops(100, notes=notes) == (50, 10)
    err = capsys.readouterr().err
    assert 'warning' in err and '--outer_loop 20 --inner_loop 25' in err and notes
    assert dc.get_loops(100, 100, 2) == (100, 2)  # the authors' (100, 2) at ipc 100: no warning
    assert capsys.readouterr().err == ''
    for bad in (dict(), dict(outer_loop=5)):
        with pytest.raises(UserError, match='pass --outer_loop and --inner_loop'):
            dc.get_loops(5, **bad)
    assert dc.get_loops(5, 5, 10) == (5, 10)
    with pytest.raises(UserError, match='--outer_loop must be >= 1'):
        dc.get_loops(10, 0)


# ---------------------------------------------------------------------------------------------- BN refresh

def _bn_inputs(net, x):
    """The input each BN layer sees in one train-mode forward of x."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].detach())) for m in dc.batchnorms(net)]
    net.train()
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize('mode', ['momentum', 'exact'])
def test_bn_refresh(mode):
    g = torch.Generator().manual_seed(3)
    net = get_network('ConvNetBN', 1, 4, (16, 16), generator=g, net_width=8)
    x = torch.randn(12, 1, 16, 16, generator=g) * 2 + 1
    bns = dc.batchnorms(net)
    for m in bns:  # not the fresh 0 / 1, so that the momentum rule is visible
        m.running_mean.fill_(0.5)
        m.running_var.fill_(3.0)
    inputs = _bn_inputs(net, x)  # the same forward as the refresh: a train-mode pass ...
    for m in bns:  # ... whose side effect on the stats is undone
        m.running_mean.fill_(0.5)
        m.running_var.fill_(3.0)
    dc.refresh_bn(net, x, mode)
    for m, inp in zip(bns, inputs):
        mean, var = inp.mean(dim=(0, 2, 3)), inp.var(dim=(0, 2, 3), unbiased=True)
        w = 1.0 if mode == 'exact' else 0.1
        assert torch.allclose(m.running_mean, (1 - w) * 0.5 + w * mean, atol=1e-5)
        assert torch.allclose(m.running_var, (1 - w) * 3.0 + w * var, rtol=1e-4)
        assert not m.training and m.momentum == 0.1
    assert net.training  # only the BN modules are frozen; the inner loop puts them back to train mode


def test_bn_model_refreshes_once_per_outer_loop_step(monkeypatch):
    data = toy_data()
    args = _args('--model', 'ConvNetBN', '--outer_loop', '3')
    calls = []
    real_refresh, real_get_network = dc.refresh_bn, get_network
    monkeypatch.setattr(dc, 'refresh_bn', lambda net, x, mode: calls.append((len(x), mode)) or
                        real_refresh(net, x, mode))
    monkeypatch.setattr(dc, 'get_network', lambda *a, **k: real_get_network(*a, net_width=8, **k))
    image_syn, syn_cls = init_synset(data, 2, 'noise', torch.Generator().manual_seed(0))
    image_syn.requires_grad_(True)
    opt = torch.optim.SGD([image_syn], lr=0.1, momentum=0.5)
    loss = dc.dc_step(args, data, image_syn, syn_cls, opt, args.seed, (0, 0))
    # 16 real images per class, all 12 here (a class gives what it has)
    assert calls == [(12 * data.num_classes, 'momentum')] * 3 and math.isfinite(loss) and loss > 0


# ---------------------------------------------------------------------------------------------- the iteration

def _fixed_loss(data, image_syn, syn_cls, nets=4):
    """The DC objective over a fixed set of random networks and fixed real batches."""
    total = 0.0
    for k in range(nets):
        net = get_network('ConvNetW32', 1, data.num_classes, data.im_size,
                                generator=torch.Generator().manual_seed(100 + k))
        g = torch.Generator().manual_seed(k)
        for c in range(data.num_classes):
            total += dc.class_match_loss(net, data.get_images(c, 12, g), image_syn[syn_cls == c], c).item()
    return total / nets


@pytest.mark.parametrize('method', ['DC', 'DSA'])
def test_matching_loss_decreases_on_a_toy_problem(method):
    data = toy_data()
    args = _args('--method', method, '--lr_img', '1')
    initial, final, syn_cls = condense_toy(dc.dc_step, args, data, 8)
    assert _fixed_loss(data, final, syn_cls) < 0.75 * _fixed_loss(data, initial, syn_cls)


# ---------------------------------------------------------------------------------------------- flags

def test_defaults_are_the_originals():
    a = main.parse_args(['--device', 'cpu'])
    assert (a.method, a.dataset, a.model, a.ipc, a.eval_mode, a.num_exp, a.num_eval) == \
        ('DC', 'CIFAR10', 'ConvNet', 1, 'S', 5, 20)
    assert (a.Iteration, a.lr_img, a.lr_net, a.batch_real, a.batch_train, a.init, a.dis_metric) == \
        (1000, 0.1, 0.01, 256, 256, 'noise', 'ours')
    assert not a.dsa and (a.outer_loop, a.inner_loop) == (1, 1)
    assert (a.bn_stats, a.match_1d, a.compat) == ('momentum', False, 'reference')
    # DC on CIFAR10 evaluated on ConvNet: no augmentation, 300 epochs.
    assert a.eval_settings == {'ConvNet': dict(dc_aug_param=a.dc_aug_param, epoch_eval_train=300)}
    assert a.dc_aug_param['strategy'] == 'none' and a.epoch_eval_train == 300
    c = main.parse_args(['--device', 'cpu', '--compat', 'clean'])
    assert (c.bn_stats, c.match_1d) == ('exact', True)
    c = main.parse_args(['--device', 'cpu', '--compat', 'clean', '--no-match_1d', '--bn_stats', 'momentum'])
    assert (c.bn_stats, c.match_1d) == ('momentum', False)


def test_readme_cross_architecture_command_parses():
    cmd = ('--dataset CIFAR10 --model ConvNetBN --ipc 50 --init real --method DSA --dsa_strategy '
           'color_crop_cutout_flip_scale_rotate --lr_img 0.1 --eval_mode B --num_exp 5 --num_eval 5 --device cpu')
    a = main.parse_args(cmd.split())
    assert a.dsa and a.dsa_strategy == STRATEGY and (a.outer_loop, a.inner_loop) == (50, 10)
    assert list(a.eval_settings) == ['ConvNetBN', 'ConvNetASwishBN', 'AlexNetBN', 'VGG11BN', 'ResNet18BN']
    assert all(s == dict(dc_aug_param=None, epoch_eval_train=1000) for s in a.eval_settings.values())


def test_dsa_strategy_defaults_per_dataset_and_dc_ignores_it(capsys):
    notes = []
    a = main.parse_args(['--method', 'DSA', '--dataset', 'MNIST', '--device', 'cpu'], notes)
    assert a.dsa and a.dsa_strategy == 'color_crop_cutout_scale_rotate' and 'recommended' in notes[0]
    assert main.parse_args(['--method', 'dsa', '--dataset', 'SVHN', '--device', 'cpu']).dsa_strategy == \
        'color_crop_cutout_scale_rotate'
    assert main.parse_args(['--method', 'DSA', '--device', 'cpu']).dsa_strategy == STRATEGY
    notes = []
    a = main.parse_args(['--method', 'DC', '--dsa_strategy', STRATEGY, '--device', 'cpu'], notes)
    assert not a.dsa and a.dsa_strategy == 'None'
    assert f'warning: --dsa_strategy {STRATEGY} is ignored without --method DSA' in notes[0]
    with pytest.raises(UserError, match='--method DSA needs an augmentation'):
        main.parse_args(['--method', 'DSA', '--dsa_strategy', 'none', '--device', 'cpu'])


def test_evaluation_epochs_and_dc_augmentation_per_architecture():
    # DC: 300 epochs without DC augmentation, 1000 with it (MNIST, or a ConvNetBN evaluation network).
    a = main.parse_args(['--eval_mode', 'N', '--device', 'cpu'])
    s = a.eval_settings
    assert s['ConvNetBN']['epoch_eval_train'] == 1000 and s['ConvNetBN']['dc_aug_param']['strategy'] == 'crop_noise'
    assert s['ConvNetLN']['epoch_eval_train'] == 300 and s['ConvNetLN']['dc_aug_param']['strategy'] == 'none'
    a = main.parse_args(['--dataset', 'MNIST', '--device', 'cpu', '--dc_rotate', 'gpu'])
    assert a.epoch_eval_train == 1000 and a.dc_aug_param['strategy'] == 'crop_scale_rotate'
    assert a.dc_aug_param['rotate_mode'] == 'bilinear'
    # An explicit value is honoured everywhere (docs/design.md, D-A8).
    a = main.parse_args(['--eval_mode', 'N', '--epoch_eval_train', '7', '--device', 'cpu'])
    assert {v['epoch_eval_train'] for v in a.eval_settings.values()} == {7}
    # main.py turns them into one EvalRecipe per architecture; the other fields come from the flags.
    over = EvalRecipe.from_args(a, **a.eval_settings['ConvNetBN'])
    assert over.dc_aug_param['strategy'] == 'crop_noise' and over.epoch_eval_train == 7 and over.lr_net == a.lr_net


# ---------------------------------------------------------------------------------------------- end to end

def _run(tmp, *extra):
    argv = ['--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'out'), '--model', 'ConvNetW32',
            '--ipc', '2', '--outer_loop', '2', '--inner_loop', '1', '--Iteration', '3', '--batch_real', '4',
            '--num_exp', '1', '--num_eval', '1', '--epoch_eval_train', '1', '--eval_every', '3',
            '--checkpoint_every', '2', '--device', 'cpu', '--no_progress', '--seed', '7', *extra]
    main.main(argv)
    method = 'DSA' if 'DSA' in extra else 'DC'
    return torch.load(tmp / 'out' / f'res_{method}_MNIST_ConvNetW32_2ipc.pt', weights_only=False)


@pytest.mark.parametrize('method', ['DC', 'DSA'])
def test_same_seed_same_set(prepared_mnist, method):
    a = _run(prepared_mnist, '--method', method)
    b = _run(prepared_mnist, '--method', method)
    assert torch.equal(a['data'][0][0], b['data'][0][0]) and a['accs_all_exps'] == b['accs_all_exps']
    assert a['data'][0][1].tolist() == [c for c in range(10) for _ in range(2)]
    assert set(a['accs_iters']) == {'0/0', '0/3'}
    log = (prepared_mnist / 'out' / f'{method}_MNIST_ConvNetW32_2ipc.log').read_text()
    assert "the paper's K" in log and "the paper's T" in log and 'evaluation on ConvNetW32: 1 epochs' in log
    if method == 'DSA':
        assert 'color_crop_cutout_scale_rotate' in log  # the recommended MNIST strategy, logged
        c = _run(prepared_mnist, '--method', method, '--seed', '8')
        assert not torch.equal(a['data'][0][0], c['data'][0][0])


def test_resume_after_interruption_gives_the_same_set(prepared_mnist, monkeypatch):
    full = _run(prepared_mnist, '--method', 'DSA')
    real_step = main.DCStep
    monkeypatch.setattr(main, 'DCStep', interrupt_at(real_step, 2))  # after the checkpoint of iteration 2
    with pytest.raises(KeyboardInterrupt):
        _run(prepared_mnist, '--method', 'DSA')
    monkeypatch.setattr(main, 'DCStep', real_step)
    resumed = _run(prepared_mnist, '--method', 'DSA', '--resume')
    assert torch.equal(full['data'][0][0], resumed['data'][0][0])
    assert full['accs_all_exps'] == resumed['accs_all_exps']


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize('extra, message', [
    (['--method', 'KIP'], "invalid choice: 'KIP'"),
    (['--ipc', '5'], 'pass --outer_loop and --inner_loop'),
    (['--ipc', '10', '--outer_loop', '0'], '--outer_loop must be >= 1'),
    (['--method', 'DSA', '--dsa_strategy', 'None'], '--method DSA needs an augmentation'),
    (['--dsa_strategy', 'color_warp', '--method', 'DSA'], 'warp'),
    (['--bn_stats', 'running'], "invalid choice: 'running'"),
    (['--dataset', 'ImageNet21k'], 'unknown dataset'),
])
def test_bad_input_is_one_line_and_exit_2(prepared_mnist, capsys, extra, message):
    argv = ['--dataset', 'MNIST', '--data_path', str(prepared_mnist), '--save_path', str(prepared_mnist / 'out'),
            '--device', 'cpu', *extra]
    with pytest.raises(SystemExit) as e:
        common.run_cli(lambda: main.main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not (prepared_mnist / 'out').exists()


def test_command_line_error(prepared_mnist):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), '--dataset', 'MNIST', '--data_path',
                        str(prepared_mnist), '--ipc', '3', '--device', 'cpu'], capture_output=True, text=True,
                       cwd=prepared_mnist)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        'main.py: error: --ipc 3 has no loop setting in the original (1, 10, 20, 30, 40, 50 or > 50); pass '
        '--outer_loop and --inner_loop']

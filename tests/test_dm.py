import os
import subprocess
import sys

import pytest
import torch

from condensation.methods import dm
from condensation.common import UserError, run_cli
import main_DM
from condensation.augment import ParamDiffAug
from condensation.networks import get_network
from condensation.run.runner import init_synset
from condensation.augment import sample_dsa_params, select_params
from conftest import ROOT, condense_toy, dm_args, interrupt_at, toy_data

STRATEGY = 'color_crop_cutout_flip_scale_rotate'


def _fixed_loss(data, image_syn, syn_cls, model='ConvNetW32', nets=4):
    """The DM objective averaged over a fixed set of random networks and fixed real batches (no augmentation)."""
    total = 0.0
    for k in range(nets):
        net = get_network(model, data.channel, data.num_classes, data.im_size,
                                generator=torch.Generator().manual_seed(100 + k))
        real, real_cls = dm.sample_real(data, 12, torch.Generator().manual_seed(k))
        with torch.no_grad():
            total += dm.dm_loss(net, real, real_cls, image_syn, syn_cls, data.num_classes).item()
    return total / nets


_args = dm_args


def test_dm_loss_decreases_on_a_toy_problem():
    data = toy_data()
    args = _args(lr_img=5.0)
    initial, final, syn_cls = condense_toy(dm.dm_step, args, data, 30)
    before = _fixed_loss(data, initial, syn_cls)
    after = _fixed_loss(data, final, syn_cls)
    assert after < 0.5 * before


@pytest.mark.parametrize('model', ['ConvNetW32', 'ConvNetLN'])
def test_batched_and_per_class_give_the_same_loss_and_gradient(model):
    data = toy_data()
    g = torch.Generator().manual_seed(1)
    net = get_network(model, 1, data.num_classes, data.im_size, generator=g)
    real, real_cls = dm.sample_real(data, 6, g)
    syn0, syn_cls = init_synset(data, 3, 'real', g)
    param = ParamDiffAug()
    params = sample_dsa_params(STRATEGY, data.num_classes, g, param)

    grads, losses = [], []
    rows = dm.class_rows(real_cls, syn_cls, range(data.num_classes))
    for per_class, chunk in ((False, None), (True, None), (False, 5)):
        syn = syn0.clone().requires_grad_(True)
        losses.append(float(dm.dm_backward(net, real, real_cls, syn, syn_cls, data.num_classes, params, param, chunk,
                                           rows if per_class else None)))  # a detached tensor: no host sync

        grads.append(syn.grad)
    # The per-class reference: one forward per class with its own Siamese parameters, as the original loops.
    ref = 0.0
    for c in range(data.num_classes):
        sub = select_params(params, torch.tensor([c]))
        r, s = real[real_cls == c], syn0[syn_cls == c]
        ref += dm.dm_loss(net, r, torch.zeros(len(r), dtype=torch.long), s, torch.zeros(len(s), dtype=torch.long),
                               1, sub, param).item()
    assert losses[0] == pytest.approx(ref, rel=1e-4)
    for loss, grad in zip(losses[1:], grads[1:]):
        assert loss == pytest.approx(losses[0], rel=1e-4)
        assert torch.allclose(grad, grads[0], rtol=1e-3, atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_bn_branch_uses_batch_statistics_over_all_classes():
    data = toy_data()
    g = torch.Generator().manual_seed(2)
    net = get_network('ConvNetBN', 1, data.num_classes, data.im_size, generator=g).train()
    real, real_cls = dm.sample_real(data, 6, g)
    syn, syn_cls = init_synset(data, 3, 'real', g)
    joint = dm.dm_loss(net, real, real_cls, syn, syn_cls, data.num_classes).item()
    per_class = sum(dm.dm_loss(net, real[real_cls == c], torch.zeros(6, dtype=torch.long), syn[syn_cls == c],
                                    torch.zeros(3, dtype=torch.long), 1).item() for c in range(data.num_classes))
    assert joint != pytest.approx(per_class, rel=1e-3)  # coupled through BN, as in the reference's BN branch


def _run(tmp, *extra):
    argv = ['--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'out'), '--model', 'ConvNetW32',
            '--ipc', '2', '--Iteration', '6', '--batch_real', '4', '--num_exp', '1', '--num_eval', '1',
            '--epoch_eval_train', '2', '--eval_every', '3', '--checkpoint_every', '2', '--device', 'cpu',
            '--no_progress', '--seed', '7', *extra]
    main_DM.main(argv)
    return torch.load(tmp / 'out' / 'res_DM_MNIST_ConvNetW32_2ipc.pt', weights_only=False)


def test_same_seed_same_set_and_outputs(prepared_mnist):
    a = _run(prepared_mnist)
    b = _run(prepared_mnist)
    assert torch.equal(a['data'][0][0], b['data'][0][0])
    assert a['accs_all_exps'] == b['accs_all_exps']
    assert a['data'][0][1].tolist() == [c for c in range(10) for _ in range(2)]
    assert a['meta']['args']['seed'] == 7 and a['meta']['normalised'] is True
    out = prepared_mnist / 'out'
    names = set(os.listdir(out))
    assert {'DM_MNIST_ConvNetW32_2ipc.json', 'DM_MNIST_ConvNetW32_2ipc.log',
            'vis_DM_MNIST_ConvNetW32_2ipc_exp0_iter0.png', 'vis_DM_MNIST_ConvNetW32_2ipc_exp0_iter6.png'} <= names
    assert set(a['accs_iters']) == {'0/0', '0/3', '0/6'}
    c = _run(prepared_mnist, '--seed', '8')
    assert not torch.equal(a['data'][0][0], c['data'][0][0])


def test_resume_after_interruption_gives_the_same_set(prepared_mnist, monkeypatch):
    full = _run(prepared_mnist)
    real_step = main_DM.DMStep
    monkeypatch.setattr(main_DM, 'DMStep', interrupt_at(real_step, 5))
    with pytest.raises(KeyboardInterrupt):
        _run(prepared_mnist)
    monkeypatch.setattr(main_DM, 'DMStep', real_step)
    resumed = _run(prepared_mnist, '--resume')
    assert torch.equal(full['data'][0][0], resumed['data'][0][0])
    assert full['accs_all_exps'] == resumed['accs_all_exps']


def test_a_run_resumes_under_another_real_chunk(prepared_mnist, monkeypatch):
    """The default --real_chunk follows the thread count, so a run resumed with other threads (or on another
    machine) meets another chunk: it resumes, and since every real image's embedding is its own the set is the
    uninterrupted run's (to float rounding: a convolution library may pick other kernels for other batch sizes)."""
    full = _run(prepared_mnist, '--real_chunk', '40')
    real_step = main_DM.DMStep
    monkeypatch.setattr(main_DM, 'DMStep', interrupt_at(real_step, 3))
    with pytest.raises(KeyboardInterrupt):
        _run(prepared_mnist, '--real_chunk', '40')
    monkeypatch.setattr(main_DM, 'DMStep', real_step)
    resumed = _run(prepared_mnist, '--resume', '--real_chunk', '3')
    torch.testing.assert_close(full['data'][0][0], resumed['data'][0][0], rtol=1e-4, atol=1e-4)


def test_the_default_real_chunk_is_sixteen_images_per_cpu_thread():
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            assert dm.default_real_chunk('ConvNet', 'cpu') == 16 * n
    finally:
        torch.set_num_threads(threads)
    assert dm.default_real_chunk('ConvNetBN', 'cpu') is None and dm.default_real_chunk('ConvNet', 'cuda') is None


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'main_DM.py'), *args], capture_output=True, text=True,
                          cwd=cwd)


def _refused(capsys, *args):
    """The script's bad-input path in this process (run_cli, as `python main_DM.py` runs it): (exit code, stderr)."""
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main_DM.main(list(args)))
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize('extra, message', [
    (['--ipc', '0'], '--ipc must be >= 1'),
    (['--ipc', '11'], 'exceeds the smallest class'),
    (['--dataset', 'ImageNet21k'], 'unknown dataset'),
    (['--model', 'ConvNetXL'], 'unknown model'),
    (['--dsa_strategy', 'color_warp'], 'warp'),
    (['--lr_img', '-1'], '--lr_img must be positive'),
    (['--resume'], 'no checkpoint'),
])
def test_bad_input_is_one_line_and_exit_2(prepared_mnist, extra, message, capsys):
    out = prepared_mnist / 'out'
    code, err = _refused(capsys, '--dataset', 'MNIST', '--data_path', str(prepared_mnist), '--save_path', str(out),
                         '--device', 'cpu', '--ipc', '2', *extra)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0] and 'Traceback' not in err, err
    assert not out.exists() or not any(f.endswith(('.pt', '.json')) for f in os.listdir(out))


def test_the_script_itself_answers_bad_input_with_one_line(prepared_mnist):
    r = _cli('--dataset', 'MNIST', '--data_path', str(prepared_mnist), '--device', 'cpu', '--ipc', '0')
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and '--ipc must be >= 1' in r.stderr, r.stderr


def test_foreign_or_corrupt_checkpoint_is_rejected(prepared_mnist, capsys):
    _run(prepared_mnist)
    ckpt = prepared_mnist / 'out' / 'DM_MNIST_ConvNetW32_2ipc.ckpt.pt'
    log = (prepared_mnist / 'out' / 'DM_MNIST_ConvNetW32_2ipc.log').read_text()
    common = ['--dataset', 'MNIST', '--data_path', str(prepared_mnist), '--save_path', str(prepared_mnist / 'out'),
              '--model', 'ConvNetW32', '--ipc', '2', '--Iteration', '6', '--batch_real', '4', '--device', 'cpu',
              '--resume', '--seed', '7']
    code, err = _refused(capsys, *common, '--lr_img', '3')
    assert code == 2 and 'belongs to another run' in err and 'lr_img' in err
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    code, err = _refused(capsys, *common)
    assert code == 2 and 'corrupt' in err and len(err.strip().splitlines()) == 1
    assert (prepared_mnist / 'out' / 'DM_MNIST_ConvNetW32_2ipc.log').read_text() == log  # nothing overwritten


@pytest.mark.parametrize('value', ['nan', 'inf'])
def test_non_finite_learning_rate_is_refused(value, capsys):
    code, err = _refused(capsys, '--lr_img', value, '--device', 'cpu')
    assert code == 2 and '--lr_img must be a finite number' in err and 'Traceback' not in err


def test_a_diverging_run_stops_before_writing_results(prepared_mnist):
    with pytest.raises(UserError, match='the synthetic images diverged; lower --lr_img'):
        _run(prepared_mnist, '--lr_img', '1e30')
    assert not (prepared_mnist / 'out' / 'res_DM_MNIST_ConvNetW32_2ipc.pt').exists()


def test_results_open_with_a_plain_torch_load(prepared_mnist):
    _run(prepared_mnist)
    res = torch.load(prepared_mnist / 'out' / 'res_DM_MNIST_ConvNetW32_2ipc.pt')  # weights_only=True by default
    assert isinstance(res['meta']['versions']['torch'], str) and len(res['data'][0][0]) == 20


_KEPT_MEMORY_STEP = """
from condensation import env  # first: glibc told to keep freed memory (unless ENV_MALLOC=default)
import sys, torch
from networks import get_network
g = torch.Generator().manual_seed(0)
net = get_network('ConvNet', 3, 10, (32, 32), generator=g).requires_grad_(False)
x = torch.randn(96, 3, 32, 32, generator=g, requires_grad=True)  # 50 MB activations: above glibc's mmap threshold
for _ in range(2):  # the second step runs in memory the first one freed
    x.grad = None
    (net.embed(x) ** 2).sum().backward()
sys.stdout.buffer.write(x.grad.numpy().tobytes())
"""


def test_kept_freed_memory_changes_no_result():
    # env.py makes glibc keep freed blocks for reuse (docs/design.md, section 11); what a step computes must not move
    outs = [subprocess.run([sys.executable, '-c', _KEPT_MEMORY_STEP], cwd=ROOT, capture_output=True, check=True,
                           env={**os.environ, 'ENV_MALLOC': mode}).stdout for mode in ('default', 'keep')]
    assert len(outs[0]) == 96 * 3 * 32 * 32 * 4 and outs[0] == outs[1]

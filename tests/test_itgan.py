"""IT-GAN (itgan.py, main_ITGAN.py): inversion, the objective's gradient, exact regeneration, bad inputs.

Generators here are 8 channels wide so that a whole run takes seconds on a CPU."""
import os
import subprocess
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from condensation.methods import itgan
from condensation.common import UserError, non_finite, run_cli
import evaluate
import main_ITGAN
from condensation import networks
from condensation.augment import ParamDiffAug
from condensation.data import Data
from conftest import ROOT, toy_data

W = 8


def _gan(num_classes=4, seed=0, cond='embed', size=28, channel=1):
    G, _ = networks.define_gan(channel, num_classes, size, dim_noise=16, cond=cond, width=W,
                               generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # BN running statistics of its own samples, as a trained G has (fresh ones kill G in eval)
        for m in G.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # a cumulative average
        for _ in range(5):
            G(torch.randn(64, 16, generator=g), torch.randint(num_classes, (64,), generator=g))
    return itgan.freeze(G)


def _args(**over):
    a = dict(model='ConvNetW32', device='cpu', lr_invert=0.1, invert_iters=30, feat_weight=1.0, batch_real=8,
             batch_syn=4, dsa=True, dsa_strategy='color_crop_cutout_scale_rotate', dsa_param=ParamDiffAug(),
             real_chunk=None, reg=1.0)
    a.update(over)
    return SimpleNamespace(**a)


def test_inversion_reduces_the_reconstruction_error():
    """Real images that G can make (its own samples, stored as uint8): inversion must get close to them."""
    G = _gan()
    y = torch.arange(4).repeat_interleave(3)
    with torch.no_grad():
        x = ((G(torch.randn(len(y), 16, generator=torch.Generator().manual_seed(5)), y) + 1) * 127.5).round()
    data = Data('MNIST', [str(i) for i in range(10)], x.to(torch.uint8), y, x[:4].to(torch.uint8), y[:4])
    data.num_classes, data.indices_class = 4, data.indices_class[:4]
    idx, labels = itgan.choose_subset(data, 2, torch.Generator().manual_seed(0))
    real = data.images(idx)
    before = ((itgan.render_set(G, torch.randn(len(idx), 16, generator=itgan.make_generator(0, 'invert_init', 0)),
                                labels, data.mean, data.std) - real) ** 2).mean().item()
    z, (start, after) = itgan.invert(_args(), data, G, idx, labels, seed=0, key=0)
    assert start == pytest.approx(before)
    assert z.shape == (len(idx), 16)
    assert after < 0.7 * before
    again, _ = itgan.invert(_args(), data, G, idx, labels, seed=0, key=0)
    assert torch.equal(z, again)  # one seed, one result


def test_condensation_loss_is_zero_for_identical_features_and_reaches_only_the_latents():
    data, G = toy_data(n=6), _gan()
    net = itgan.random_network(_args(), data, torch.Generator().manual_seed(1))
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    y = torch.arange(4).repeat_interleave(2)
    syn = itgan.render(G, z, y, data.mean, data.std)
    assert itgan.paired_loss(net, syn, syn.detach(), y, 4).item() == 0
    from condensation.methods.dm import dm_loss
    assert dm_loss(net, syn.detach(), y, syn, y, 4).item() == 0
    # the full objective on a batch: a gradient on the latents, none on G or the random network
    idx, labels = itgan.choose_subset(data, 2, torch.Generator().manual_seed(0))
    z = torch.randn(len(idx), 16).requires_grad_(True)
    loss, cond, reg = itgan.itgan_loss(_args(), data, G, z, labels, idx, net, torch.Generator().manual_seed(3),
                                       itgan.class_positions(labels, 4))
    loss.backward()
    assert cond > 0 and reg > 0
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in list(G.parameters()) + list(net.parameters()))


def test_itgan_steps_lower_the_condensation_loss():
    data, G = toy_data(n=8), _gan()
    idx, labels = itgan.choose_subset(data, 3, torch.Generator().manual_seed(0))
    args = _args(reg=0.0, dsa=False, batch_real=8)
    z = torch.randn(len(idx), 16).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    positions = itgan.class_positions(labels, 4)

    def loss_now():  # one fixed network and batch, to compare before and after
        net = itgan.random_network(args, data, torch.Generator().manual_seed(9))
        return itgan.itgan_loss(args, data, G, z, labels, idx, net, torch.Generator().manual_seed(9), positions)[1]

    before = loss_now()
    for it in range(30):
        itgan.itgan_step(args, data, G, z, labels, idx, opt, 0, (it,), positions)
    assert loss_now() < 0.9 * before


def _write_generator(folder, dataset='MNIST', num_classes=10, size=28, channel=1, name='gan.pth'):
    G = _gan(num_classes, size=size, channel=channel)
    path = os.path.join(folder, name)
    torch.save(dict(generator=G.state_dict(), epoch=0,
                    args=dict(dataset=dataset, dim_noise=16, cond='embed', gan_width=W)), path)
    return path


def _cli(tmp, *extra):
    return ['--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'out'), '--device', 'cpu',
            '--no_progress', '--ipc', '2', '--Iteration', '4', '--invert_iters', '3', '--batch_real', '4',
            '--num_eval', '1', '--epoch_eval_train', '2', '--model', 'ConvNetW32', '--eval_model', 'ConvNetW32',
            '--curve_at', '1', '--checkpoint_every', '2'] + list(extra)


def test_a_run_stores_latents_that_regenerate_the_evaluated_images(prepared_mnist, monkeypatch):
    tmp = prepared_mnist
    gen = _write_generator(str(tmp))
    seen = {}
    real_pool = main_ITGAN.evaluate_pool

    def spy(recipes, num_eval, data, images, labels, seed, keys, log, label='', on_epoch=None):
        seen[keys[0]] = images.clone()
        return real_pool(recipes, num_eval, data, images, labels, seed, keys, log, label, on_epoch)

    monkeypatch.setattr(main_ITGAN, 'evaluate_pool', spy)
    summary = main_ITGAN.main(_cli(tmp, '--generator', gen))
    assert set(summary) == set(main_ITGAN.SETS)
    name = 'ITGAN_MNIST_ConvNetW32_2ipc'
    res = torch.load(tmp / 'out' / f'res_{name}.pt')  # plain torch.load: tensors and plain types only
    for f in (f'{name}.json', f'{name}.log', f'vis_{name}.png'):
        assert (tmp / 'out' / f).is_file()
    G, _ = itgan.load_generator(SimpleNamespace(generator=gen, generator_factory=None, dim_noise=None,
                                                     cond=None, gan_width=None, device='cpu', seed=0,
                                                     dataset='MNIST', im_size=None),
                                     main_ITGAN.get_dataset('MNIST', str(tmp)))
    assert res['generator']['sha256'] == itgan.file_hash(gen)
    for s in ('random', 'inverted', 'itgan'):
        images = itgan.render_set(G, res['latents'][s], res['labels'], res['meta']['mean'], res['meta']['std'])
        assert torch.equal(images, seen[s])
    assert not torch.equal(res['latents']['inverted'], res['latents']['itgan'])
    curves = res['curves']['itgan']['ConvNetW32'][0]
    assert len(curves) == 2 and curves[-1] == res['accs']['itgan']['ConvNetW32'][0]
    # --resume of a finished run repeats its numbers
    again = main_ITGAN.main(_cli(tmp, '--generator', gen, '--resume'))
    assert again == summary
    # --resume with other evaluation flags keeps the latents and evaluates them anew
    more = main_ITGAN.main(_cli(tmp, '--generator', gen, '--resume', '--num_eval', '2'))
    assert more['itgan']['ConvNetW32']['all'][0] == summary['itgan']['ConvNetW32']['all'][0]
    assert len(more['itgan']['ConvNetW32']['all']) == 2
    assert torch.equal(torch.load(tmp / 'out' / f'res_{name}.pt')['latents']['itgan'], res['latents']['itgan'])
    with pytest.raises(UserError, match='differs in Iteration'):  # but not with other latents
        main_ITGAN.main(_cli(tmp, '--generator', gen, '--resume', '--Iteration', '5'))


def test_the_exported_images_evaluate_to_the_accuracy_the_run_recorded(prepared_mnist):
    """res_<run>_images.pt: the IT-GAN set as images in the original layout, beside the latents; evaluate.py with
    the run's protocol and seed trains the networks the run trained on it, and gets its accuracies."""
    tmp = prepared_mnist
    main_ITGAN.main(_cli(tmp, '--generator', _write_generator(str(tmp)), '--num_eval', '2'))
    name = 'ITGAN_MNIST_ConvNetW32_2ipc'
    res = torch.load(tmp / 'out' / f'res_{name}.pt')
    exported = torch.load(tmp / 'out' / f'res_{name}_images.pt')  # plain torch.load
    [[images, labels]] = exported['data']
    assert images.shape == (20, 1, 28, 28) and torch.equal(labels, res['labels'])
    assert exported['meta']['normalised'] and exported['accs_all_exps'] == res['accs']['itgan']
    [row] = evaluate.main(['--set', str(tmp / 'out' / f'res_{name}_images.pt'), '--dataset', 'MNIST', '--data_path',
                           str(tmp), '--save_path', str(tmp / 'ev'), '--models', 'ConvNetW32', '--num_eval', '2',
                           '--epoch_eval_train', '2', '--device', 'cpu', '--no_progress', '--baseline', 'none'])
    assert row['accuracy']['all'] == res['accs']['itgan']['ConvNetW32']
    # the result file itself holds no images: evaluate.py names the file that does
    with pytest.raises(UserError, match=f'{name}_images.pt'):
        evaluate.main(['--set', str(tmp / 'out' / f'res_{name}.pt'), '--dataset', 'MNIST', '--data_path', str(tmp),
                       '--save_path', str(tmp / 'ev2'), '--device', 'cpu'])


@pytest.mark.parametrize('resume_flags', [[], ['--real_chunk', '3']])
def test_an_interrupted_run_resumes_to_the_same_latents(prepared_mnist, monkeypatch, resume_flags):
    """Also under another --real_chunk (its default follows the thread count): the same latents to float rounding,
    as every real image's embedding is its own."""
    tmp = prepared_mnist
    gen = _write_generator(str(tmp))
    full = main_ITGAN.main(_cli(tmp, '--generator', gen, '--save_path', str(tmp / 'a')))
    step = itgan.itgan_step

    def interrupted(*a, **kw):
        if a[8] == (3,):
            raise KeyboardInterrupt
        return step(*a, **kw)

    monkeypatch.setattr(itgan, 'itgan_step', interrupted)
    with pytest.raises(KeyboardInterrupt):
        main_ITGAN.main(_cli(tmp, '--generator', gen, '--save_path', str(tmp / 'b')))
    monkeypatch.setattr(itgan, 'itgan_step', step)
    resumed = main_ITGAN.main(_cli(tmp, '--generator', gen, '--save_path', str(tmp / 'b'), '--resume', *resume_flags))
    a, b = (torch.load(tmp / d / 'res_ITGAN_MNIST_ConvNetW32_2ipc.pt') for d in 'ab')
    if resume_flags:
        torch.testing.assert_close(a['latents']['itgan'], b['latents']['itgan'], rtol=1e-4, atol=1e-4)
        return
    assert resumed == full
    assert torch.equal(a['latents']['itgan'], b['latents']['itgan'])


def test_bad_inputs_exit_2_with_one_line(prepared_mnist, monkeypatch):
    tmp = prepared_mnist
    torch.save(dict(weights=1), tmp / 'foreign.pth')
    nan = _write_generator(str(tmp), name='nan.pth')
    ck = torch.load(nan)
    ck['generator']['label_embedding.weight'][0, 0] = float('nan')
    torch.save(ck, nan)
    module = types.ModuleType('not_a_gan')
    module.load = lambda path, data, device: 'a path'
    monkeypatch.setitem(sys.modules, 'not_a_gan', module)
    cases = {
        'not a function of \\(path, data, device\\)': ['--generator', nan, '--generator_factory', 'os:path'],
        'returned a str, not a torch.nn.Module': ['--generator', nan, '--generator_factory', 'not_a_gan:load'],
        'holds non-finite values': ['--generator', nan],
        'beyond the float32 range': ['--generator', nan, '--lr_latent', '1e300'],
        'no such file': ['--generator', str(tmp / 'missing.pth')],
        'not a DiM checkpoint': ['--generator', str(tmp / 'foreign.pth')],
        'trained on CIFAR10': ['--generator', _write_generator(str(tmp), 'CIFAR10', 10, 32, 3, 'cifar.pth')],
        'does not fit': ['--generator', _write_generator(str(tmp), 'MNIST', 10, 32, 3, 'shape.pth')],
        'exceeds the smallest class': ['--generator', _write_generator(str(tmp)), '--ipc', '50'],
        'cannot import': ['--generator', _write_generator(str(tmp)), '--generator_factory', 'no_such_module:make'],
    }
    for words, extra in cases.items():
        with pytest.raises(UserError, match=words):
            main_ITGAN.main(_cli(tmp, *extra))
    assert not (tmp / 'out').exists()  # nothing written for a rejected command
    with pytest.raises(UserError, match='the latents diverged'):
        main_ITGAN.main(_cli(tmp, '--generator', _write_generator(str(tmp)), '--lr_invert', '1e37',
                                 '--invert_iters', '40'))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'main_ITGAN.py')] + _cli(tmp, *cases['no such file']),
                       capture_output=True, text=True, env=env, cwd=str(tmp))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'no such file' in r.stderr, r.stderr


def test_a_generator_factory_plugs_in_any_module(prepared_mnist, monkeypatch):
    """The adapter: a user's function returning a module with forward(z, y) and dim_noise."""
    tmp = prepared_mnist
    weights = _write_generator(str(tmp))
    module = types.ModuleType('my_biggan')
    module.load = lambda path, data, device: _gan(data.num_classes)
    monkeypatch.setitem(sys.modules, 'my_biggan', module)
    summary = main_ITGAN.main(_cli(tmp, '--generator', weights, '--generator_factory', 'my_biggan:load'))
    assert set(summary) == set(main_ITGAN.SETS)


def test_a_generator_with_too_few_classes_is_refused():
    data = toy_data(n=2)
    data.num_classes = 10
    with pytest.raises(itgan.UserError, match='does not take the 10 classes'):
        itgan.check_generator(_gan(num_classes=4), data, 'cpu')


@pytest.mark.parametrize('lr', ['1e10', '3e38'])
def test_diverging_latents_stop_the_run_and_the_last_checkpoint_stays_good(prepared_mnist, lr, capsys):
    """Latents far beyond any standard normal draw, finite or not, stop IT-GAN at the step they appear, naming
    --lr_latent; the checkpoint the inversion wrote stays as it was."""
    tmp = prepared_mnist
    argv = _cli(tmp, '--generator', _write_generator(str(tmp)), '--lr_latent', lr)
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main_ITGAN.main(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1, err
    assert 'lower --lr_latent' in err or 'lower the learning rates' in err, err
    ckpt = next((tmp / 'out').glob('*.ckpt.pt'))
    state = torch.load(ckpt)
    assert state['it'] == 0 and 'z_itgan' not in state and non_finite(state) is None
    assert not list((tmp / 'out').glob('res_*.pt'))

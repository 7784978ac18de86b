"""evaluate.py: any set format under one protocol, the random baseline, and bad set files."""
import json
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
from condensation.run.cli import Config
import main_DM
from conftest import toy_images
from condensation.data import get_dataset
from condensation.common import UserError, run_cli

PROTOCOL = ['--models', 'ConvNetW32', '--num_eval', '2', '--epoch_eval_train', '4', '--device', 'cpu',
            '--no_progress']


def _evaluate(tmp, *sets, extra=()):
    argv = ['--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'ev'), *PROTOCOL, *extra]
    for s in sets:
        argv += ['--set', str(s)]
    return evaluate.main(argv)


def test_a_main_dm_set_evaluates_to_the_accuracy_its_run_recorded(prepared_mnist):
    tmp = prepared_mnist
    main_DM.main(['--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'out'), '--model',
                  'ConvNetW32', '--ipc', '2', '--Iteration', '2', '--batch_real', '4', '--num_exp', '2', '--num_eval',
                  '2', '--epoch_eval_train', '4', '--eval_final_only', '--device', 'cpu', '--no_progress'])
    res = tmp / 'out' / 'res_DM_MNIST_ConvNetW32_2ipc.pt'
    recorded = torch.load(res)['accs_all_exps']['ConvNetW32']
    # main_DM.py's DSA strategy (MNIST's own default here would leave out flip)
    same = ('--dsa_strategy', 'color_crop_cutout_flip_scale_rotate')
    [row] = _evaluate(tmp, res, extra=same)
    assert row['accuracy']['all'] == recorded and row['n'] == 4  # same seeds, same device: the same numbers
    [one] = _evaluate(tmp, res, extra=same + ('--exp', '1', '--baseline', 'none'))
    assert one['accuracy']['all'] == recorded[2:] and one['random'] is None
    # the outputs: a markdown table, its JSON twin, the log
    stem = tmp / 'ev' / 'eval_MNIST_res_DM_MNIST_ConvNetW32_2ipc'
    table = (stem.parent / (stem.name + '.md')).read_text()
    assert ('| set | images/class | architecture | accuracy (%) | n | random real (%) | gain (points) | full data (%) '
            '| recovered (%) | LRS (%) |') in table
    summary = json.loads((stem.parent / (stem.name + '.json')).read_text())
    assert summary['results'][0]['accuracy']['all'] == recorded[2:] and summary['sets'][0]['kind'] == 'results file'
    assert 'sha1' in (stem.parent / (stem.name + '.log')).read_text()


def test_one_random_baseline_per_size_is_shared_by_every_set_of_that_size_and_cached(prepared_mnist, monkeypatch):
    tmp = prepared_mnist
    data = get_dataset('MNIST', str(tmp))
    for name, seed, n in (('a.pt', 5, 3), ('b.pt', 6, 3), ('small.pt', 7, 2)):
        x, y = toy_images(n, 10, 1, 28, seed=seed)
        torch.save(dict(images=x, labels=y), tmp / name)
    a, b, small = _evaluate(tmp, tmp / 'a.pt', tmp / 'b.pt', tmp / 'small.pt')
    # two sets of one size, one baseline: their rows compare (the third set, of another size, has its own)
    assert a['random'] == b['random'] and a['images_per_class'] == b['images_per_class'] == '3'
    assert small['images_per_class'] == '2' and len(small['random']['all']) == 2
    # the baseline is the subset baseline_draw names, trained by the networks of its own keys
    x, y, keys = evaluate.baseline_draw(data, [3] * 10, 0)
    assert torch.equal(torch.bincount(y), torch.full((10,), 3))
    recipe = evaluate.eval_recipes(evaluate.parse_args(['--set', 'x', '--dataset', 'MNIST', '--data_path', str(tmp),
                                                        *PROTOCOL]), data)
    direct = evaluate.evaluate_pool(recipe, 2, data, x, y, 0, keys, lambda *a, **k: None)['ConvNetW32']
    assert a['random']['all'] == direct
    assert a['gain'] == pytest.approx(100 * (np.mean(a['accuracy']['all']) - np.mean(direct)))
    # a later run, alone and elsewhere, measures b against the cached baseline: nothing is trained for it again
    trained = []
    real_pool = evaluate.evaluate_pool
    monkeypatch.setattr(evaluate, 'evaluate_pool', lambda *a, **k: trained.append(a[6]) or real_pool(*a, **k))
    [again] = _evaluate(tmp, tmp / 'b.pt', extra=('--save_path', str(tmp / 'elsewhere')))
    assert again == b and trained == [(0, 0)]  # the set's own networks only
    assert len(list((tmp / 'evaluate_cache').glob('random_real_MNIST_ConvNetW32_*.json'))) == 2
    # --resume reads every finished pool from the checkpoint instead of training it again
    monkeypatch.setattr(evaluate, 'evaluate_pool', None)
    assert _evaluate(tmp, tmp / 'a.pt', tmp / 'b.pt', tmp / 'small.pt', extra=('--resume',)) == [a, b, small]
    with pytest.raises(UserError, match='differs in num_eval'):
        _evaluate(tmp, tmp / 'a.pt', tmp / 'b.pt', tmp / 'small.pt', extra=('--resume', '--num_eval', '3'))


def test_full_data_recovered_share_and_dd_ranking_scores(prepared_mnist, capsys):
    tmp = prepared_mnist
    x, y = toy_images(2, 10, 1, 28, seed=5)
    torch.save(dict(images=x, labels=y), tmp / 'set.pt')
    [auto] = _evaluate(tmp, tmp / 'set.pt')  # nothing cached: the full data is left out, and the table says so
    assert auto['full'] is None and auto['recovered'] is None and auto['lrs'] is None
    assert '--full_data train trains them once' in capsys.readouterr().out
    [row] = _evaluate(tmp, tmp / 'set.pt', extra=('--full_data', 'train', '--full_epochs', '2', '--no_aug'))
    assert row['accuracy'] == auto['accuracy'] and row['random'] == auto['random']
    full = row['full']['all']
    assert len(full) == 1 and (tmp / 'evaluate_cache').is_dir()
    syn, rdm, real = (np.mean(row[k]['all']) for k in ('accuracy', 'random', 'full'))
    assert row['recovered'] == pytest.approx(100 * syn / real)
    e = np.exp(1)
    # DD-Ranking's LRS with weight 1/2: alpha = IOR/2 - HLR/2, mapped by (e^alpha - 1/e) / (e - 1/e)
    alpha = 0.5 * (syn - rdm) - 0.5 * (real - syn)
    assert row['lrs'] == pytest.approx(100 * (np.exp(alpha) - 1 / e) / (e - 1 / e))
    # the augmentation-robust view: the same networks without augmentation, as --dsa_strategy None trains them
    [plain] = _evaluate(tmp, tmp / 'set.pt', extra=('--dsa_strategy', 'None', '--save_path', str(tmp / 'plain')))
    na = row['no_aug']
    assert na['accuracy'] == plain['accuracy'] and na['random'] == plain['random']
    beta = 0.5 * (syn - rdm) + 0.5 * (np.mean(na['accuracy']['all']) - np.mean(na['random']['all']))
    assert na['ars'] == pytest.approx(100 * (np.exp(beta) - 1 / e) / (e - 1 / e))
    out = capsys.readouterr().out
    assert 'ARS (%)' in out and 'full data (%)' in out and 'evaluate_cache' in out
    # cached: a later run without --full_data train finds it
    [later] = _evaluate(tmp, tmp / 'set.pt', extra=('--full_epochs', '2', '--save_path', str(tmp / 'later')))
    assert later['full']['all'] == full and later['lrs'] == row['lrs']


def test_one_network_prints_no_spread(prepared_mnist, capsys):
    tmp = prepared_mnist
    x, y = toy_images(2, 10, 1, 28, seed=5)
    torch.save(dict(images=x, labels=y), tmp / 'set.pt')
    _evaluate(tmp, tmp / 'set.pt', extra=('--num_eval', '1'))
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(f'| {tmp / "set.pt"} |'))
    assert '±' not in row and '±' not in (tmp / 'ev' / 'eval_MNIST_set.log').read_text()


def test_a_bare_images_labels_list_states_its_scale(prepared_mnist, capsys):
    tmp = prepared_mnist
    data = get_dataset('MNIST', str(tmp))
    x, y = toy_images(2, 10, 1, 28, seed=3)
    torch.save([x, y], tmp / 'uint8.pt')
    torch.save([(x.float() / 255 - 0.1307) / 0.3081, y], tmp / 'float.pt')
    args = evaluate.parse_args(['--set', 'x', '--dataset', 'MNIST', '--data_path', str(tmp), '--device', 'cpu'])
    [(_, images, labels)] = evaluate.read_set(str(tmp / 'uint8.pt'), args, data)['exps']
    [(_, same, _)] = evaluate.read_set(str(tmp / 'float.pt'), Config(args, normalized='yes'), data)['exps']
    assert torch.equal(labels, y) and torch.allclose(images, same, atol=1e-6)
    # float images without --normalized: one line naming the flag, nothing run
    argv = ['--set', str(tmp / 'float.pt'), '--dataset', 'MNIST', '--data_path', str(tmp), '--save_path',
            str(tmp / 'ev'), '--device', 'cpu']
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: evaluate.main(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and '--normalized yes' in err and '--normalized no' in err
    assert not (tmp / 'ev').exists()


def test_protocol_flags_name_the_recipes(tmp_path):
    mnist = types.SimpleNamespace(name='MNIST', channel=1, im_size=(28, 28), num_classes=10)  # what they read
    cifar = types.SimpleNamespace(name='CIFAR10', channel=3, im_size=(32, 32), num_classes=10)
    base = ['--set', 'x', '--data_path', str(tmp_path), '--device', 'cpu']
    recipes = evaluate.eval_recipes(evaluate.parse_args(base + ['--dataset', 'MNIST', '--dc_aug', '--eval_mode', 'N']),
                                    mnist)
    assert list(recipes) == ['ConvNetNN', 'ConvNetBN', 'ConvNetLN', 'ConvNetIN', 'ConvNetGN']
    assert recipes['ConvNetBN'].dc_aug_param['strategy'] == 'crop_noise' and not recipes['ConvNetBN'].dsa
    assert recipes['ConvNetIN'].dc_aug_param['strategy'] == 'crop_scale_rotate'
    assert {r.epoch_eval_train for r in recipes.values()} == {1000}
    args = evaluate.parse_args(base + ['--dataset', 'CIFAR10', '--dc_aug', '--models', 'ConvNet', 'ConvNetBN'])
    recipes = evaluate.eval_recipes(args, cifar)
    assert (recipes['ConvNet'].epoch_eval_train, recipes['ConvNetBN'].epoch_eval_train) == (300, 1000)
    dsa = evaluate.eval_recipes(evaluate.parse_args(base + ['--dataset', 'MNIST']), mnist)['ConvNet']
    assert dsa.dsa and dsa.dsa_strategy == 'color_crop_cutout_scale_rotate' and dsa.epoch_eval_train == 1000
    notes = []
    args = evaluate.parse_args(base + ['--dataset', 'MNIST', '--dc_aug', '--dsa_strategy', 'crop'], notes)
    assert args.dsa_strategy == 'None' and notes == ['warning: --dsa_strategy crop is ignored without DSA '
                                                     'evaluation (it is off with --dc_aug)']


def _png(path, a):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(a).save(path)


def test_original_layout_file_tensor_files_and_a_folder_load_the_same_tensors(prepared_mnist):
    tmp = prepared_mnist
    data = get_dataset('MNIST', str(tmp))
    x, y = toy_images(2, 10, 1, 28, seed=3)
    expected = (x.float() / 255 - 0.1307) / 0.3081
    # the original's layout: standardised float images, its accuracies saved as numpy floats
    torch.save({'data': [[expected.clone(), y.clone()]], 'accs_all_exps': {'ConvNet': [np.float64(0.5)]}},
               tmp / 'res_DM_MNIST_ConvNet_2ipc.pt')
    torch.save(dict(images=x, labels=y), tmp / 'uint8.pt')
    torch.save(dict(images=x.float() / 255, labels=y), tmp / 'unit.pt')
    for i, (image, label) in enumerate(zip(x, y)):
        a = image[0].numpy()
        # one image saved as RGB with equal channels, as torchvision's save_image writes greyscale
        _png(str(tmp / 'folder' / str(int(label)) / f'{i:03d}.png'), np.stack([a] * 3, 2) if i == 0 else a)
    args = evaluate.parse_args(['--set', 'x', '--dataset', 'MNIST', '--data_path', str(tmp), '--device', 'cpu'])
    loaded = {name: evaluate.read_set(str(tmp / name), args, data)
              for name in ('res_DM_MNIST_ConvNet_2ipc.pt', 'uint8.pt', 'folder')}
    args = Config(args, normalized='no')
    loaded['unit.pt'] = evaluate.read_set(str(tmp / 'unit.pt'), args, data)
    for name, s in loaded.items():
        [(exp, images, labels)] = s['exps']
        assert torch.equal(labels, y), name
        assert torch.allclose(images, expected, atol=1e-6), name
    assert loaded['res_DM_MNIST_ConvNet_2ipc.pt']['kind'] == 'original results file'
    assert 'by index' in loaded['folder']['note']


def _bad_files(tmp):
    """name -> (how to make it, a phrase of its error line)."""
    x, y = toy_images(2, 10, 1, 28)
    f = x.float() / 255
    nan = f.clone()
    nan[3, 0, 5, 5] = float('nan')
    return {
        'nan.pt': (lambda p: torch.save(dict(images=nan, labels=y), p), 'NaN'),
        'range.pt': (lambda p: torch.save(dict(images=x, labels=y + 1), p), 'labels out of range'),
        'classes.pt': (lambda p: torch.save(dict(images=x[:18], labels=y[:18]), p), 'holds images of 9 classes'),
        'shape.pt': (lambda p: torch.save(dict(images=torch.zeros(20, 3, 32, 32), labels=y), p), 'needs Nx1x28x28'),
        'notaset.pt': (lambda p: torch.save(dict(weights=torch.zeros(3)), p), 'not a set (keys: weights)'),
        'garbage.pt': (lambda p: p.write_bytes(b'hello'), 'not a readable PyTorch file'),
        'other.pt': (lambda p: torch.save(dict(data=[[f, y]], meta=dict(dataset='CIFAR10')), p),
                     'made for CIFAR10; pass --dataset CIFAR10'),
        'folder': (lambda p: [_png(str(p / str(c) / '0.png'), x[c * 2, 0].numpy()) for c in range(9)],
                   'holds 9 class folders, MNIST has 10'),
    }


@pytest.mark.parametrize('name', list(_bad_files(None)))
def test_each_bad_set_file_is_one_line_and_exit_2(prepared_mnist, capsys, name):
    tmp = prepared_mnist
    make, phrase = _bad_files(tmp)[name]
    make(tmp / name)
    argv = ['--set', str(tmp / name), '--dataset', 'MNIST', '--data_path', str(tmp), '--save_path', str(tmp / 'ev'),
            '--device', 'cpu']
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: evaluate.main(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and 'Traceback' not in err, err
    assert phrase in err and str(tmp / name) in err, err
    assert not (tmp / 'ev').exists()  # nothing written


def test_every_bad_set_gets_its_own_line(prepared_mnist, capsys):
    tmp = prepared_mnist
    files = _bad_files(tmp)
    for name in ('nan.pt', 'range.pt'):
        files[name][0](tmp / name)
    x, y = toy_images(2, 10, 1, 28)
    torch.save(dict(images=x, labels=y), tmp / 'good.pt')
    argv = ['--dataset', 'MNIST', '--data_path', str(tmp), '--device', 'cpu', '--set', str(tmp / 'nan.pt'),
            '--set', str(tmp / 'good.pt'), '--set', str(tmp / 'range.pt'), '--exp', '3']
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: evaluate.main(argv))
    lines = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and len(lines) == 2 and all(': error: ' in line for line in lines)
    assert 'NaN' in lines[0] and 'out of range' in lines[1]

"""The user's own data: an image folder (`folder:PATH`) and a prepared tensor file (`file:PATH.pt`) through the
loader, the scripts and the results' meta."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from condensation import data as data_mod
import main
import main_DM
from conftest import FOLDER_CLASSES, ROOT, toy_images, write_folder
from condensation.data import channel_stats, dataset_info, get_dataset
from condensation.common import UserError

CLASSES = FOLDER_CLASSES


def write_file(path, num_classes=5, channel=2, size=16, stats=None):
    xtr, ytr = toy_images(6, num_classes, channel, size, 0)
    xte, yte = toy_images(2, num_classes, channel, size, 1)
    raw = dict(classes=[f'kind{i}' for i in range(num_classes)], images_train=xtr, labels_train=ytr, images_val=xte,
               labels_val=yte)
    if stats:
        raw['mean'], raw['std'] = stats
    torch.save(raw, path)
    return path


def _dm(tmp, dataset, *extra, ipc=2):
    main_DM.main(['--dataset', dataset, '--save_path', str(tmp / 'out'), '--model', 'ConvNetW32', '--ipc', str(ipc),
                  '--Iteration', '2', '--batch_real', '3', '--num_exp', '1', '--num_eval', '1', '--epoch_eval_train',
                  '2', '--eval_every', '2', '--device', 'cpu', '--no_progress', *extra])


def _dc(tmp, dataset, *extra):
    main.main(['--dataset', dataset, '--save_path', str(tmp / 'out_dc'), '--model', 'ConvNetW32', '--ipc', '1',
               '--Iteration', '1', '--batch_real', '3', '--num_exp', '1', '--num_eval', '1', '--epoch_eval_train', '1',
               '--device', 'cpu', '--no_progress', '--method', 'DSA', *extra])


@pytest.mark.parametrize('channel', [1, 3])
def test_folder_runs_dm_and_dc_end_to_end_with_its_classes_and_statistics(tmp_path, channel):
    root = write_folder(tmp_path / 'fruit', channel)
    _dm(tmp_path, f'folder:{root}', '--im_size', '28')
    res = torch.load(tmp_path / 'out' / 'res_DM_fruit_28px_ConvNetW32_2ipc.pt')  # a plain load: plain types only
    meta = res['meta']
    assert meta['classes'] == ['apple', 'bird', 'cat'] and meta['dataset'] == 'fruit'
    assert meta['channel'] == channel and meta['im_size'] == [28, 28]
    assert res['data'][0][0].shape == (6, channel, 28, 28)
    # The statistics are the training split's, computed directly here from the prepared images.
    prepared = torch.load(root / 'prepared-28.pt')
    x = prepared['images_train'].double() / 255
    assert prepared['images_train'].shape == (12, channel, 28, 28) and prepared['images_val'].shape[0] == 6
    assert meta['mean'] == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=1e-9)
    assert meta['std'] == pytest.approx(x.transpose(0, 1).flatten(1).std(1, unbiased=False).tolist(), abs=1e-9)
    assert meta['mean'] != pytest.approx(data_mod.DATASETS['CIFAR10'][3][:channel], abs=1e-3)
    _dc(tmp_path, f'folder:{root}', '--im_size', '28')
    res = torch.load(tmp_path / 'out_dc' / 'res_DSA_fruit_28px_ConvNetW32_1ipc.pt')
    assert res['meta']['classes'] == ['apple', 'bird', 'cat'] and res['meta']['mean'] == meta['mean']


def test_tensor_file_with_five_classes_runs_dm_and_dc_end_to_end(tmp_path):
    path = write_file(tmp_path / 'kinds.pt', num_classes=5, channel=2, size=16)
    _dm(tmp_path, f'file:{path}')
    res = torch.load(tmp_path / 'out' / 'res_DM_kinds_ConvNetW32_2ipc.pt')
    meta = res['meta']
    assert meta['classes'] == [f'kind{i}' for i in range(5)] and meta['channel'] == 2 and meta['im_size'] == [16, 16]
    assert res['data'][0][1].tolist() == [c for c in range(5) for _ in range(2)]
    mean, std = channel_stats(torch.load(path)['images_train'])
    assert meta['mean'] == pytest.approx(mean) and meta['std'] == pytest.approx(std)
    assert os.path.isfile(tmp_path / 'out' / 'vis_DM_kinds_ConvNetW32_2ipc_exp0_iter2.png')  # 2 channels shown as 1
    _dc(tmp_path, f'file:{path}')
    assert torch.load(tmp_path / 'out_dc' / 'res_DSA_kinds_ConvNetW32_1ipc.pt')['meta']['classes'] == meta['classes']


def test_statistics_given_in_the_file_are_used(tmp_path):
    path = write_file(tmp_path / 'given.pt', channel=2, stats=([0.25, 0.5], [0.125, 0.25]))
    d = get_dataset(f'file:{path}', 'unused')
    assert (d.mean, d.std) == ([0.25, 0.5], [0.125, 0.25])
    assert d.standardise(torch.full((1, 2, 1, 1), 255, dtype=torch.uint8)).flatten().tolist() == [6.0, 2.0]


def test_channel_stats_equal_the_direct_computation_in_chunks():
    x = torch.randint(0, 256, (37, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_stats(x, chunk=8)
    f = x.double().div(255).transpose(0, 1).flatten(1)
    assert mean == pytest.approx(f.mean(1).tolist(), abs=1e-12)
    assert std == pytest.approx(f.std(1, unbiased=False).tolist(), abs=1e-12)


def test_folder_is_decoded_once_and_rebuilt_when_its_files_change(tmp_path, monkeypatch):
    root = write_folder(tmp_path / 'fruit', sizes=[(20, 20)])
    first = get_dataset(f'folder:{root}', 'unused')  # every image 20x20: no --im_size needed
    assert first.im_size == (20, 20) and os.path.isfile(root / 'prepared.pt')
    assert first.class_names == ['apple', 'bird', 'cat'] and first.num_classes == 3
    real_build = data_mod._build_folder

    def no_decoding(*a):
        raise AssertionError('decoded again')
    monkeypatch.setattr(data_mod, '_build_folder', no_decoding)
    again = get_dataset(f'folder:{root}', 'unused')
    assert torch.equal(first.x_train, again.x_train) and first.mean == again.mean
    assert dataset_info(f'folder:{root}', 'unused') == ('fruit', 3, (20, 20), 3, ['apple', 'bird', 'cat'])
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / 'train' / 'apple' / 'new.png')
    monkeypatch.setattr(data_mod, '_build_folder', real_build)
    assert len(get_dataset(f'folder:{root}', 'unused').x_train) == len(first.x_train) + 1


def test_val_folder_is_the_test_split(tmp_path):
    root = write_folder(tmp_path / 'v', sizes=[(24, 24)], test='val')
    d = get_dataset(f'folder:{root}', 'unused')
    assert len(d.x_test) == 6 and d.labels_test.tolist() == [0, 0, 1, 1, 2, 2]


def _break(root, case):
    """Damage a good folder in one way."""
    if case == 'empty class':
        for f in (root / 'train' / 'bird').iterdir():
            f.unlink()
    elif case == 'mixed channels':
        Image.fromarray(np.zeros((30, 30), np.uint8)).save(root / 'train' / 'cat' / 'grey.png')
    elif case == 'unreadable':
        (root / 'test' / 'apple' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
    elif case == 'other classes in test':
        (root / 'test' / 'dog').mkdir()
        Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / 'test' / 'dog' / 'd.png')
    elif case == 'sizes differ':
        pass  # the fixture's odd sizes, without --im_size
    elif case == 'one class':
        for c in ('bird', 'cat'):
            for split in ('train', 'test'):
                for f in (root / split / c).iterdir():
                    f.unlink()
                (root / split / c).rmdir()
    elif case == 'no test split':
        os.rename(root / 'test', root / 'holdout')
    elif case == 'test and val':
        (root / 'val').mkdir()


@pytest.mark.parametrize('case, message', [
    ('empty class', 'train/bird: class bird holds no images'),
    ('mixed channels', 'grey.png has 1 channel(s)'),
    ('unreadable', 'broken.png: not a readable image'),
    ('other classes in test', 'test: its class folders differ from train/ (dog)'),
    ('sizes differ', 'pass --im_size N'),
    ('one class', 'at least 2 class folders'),
    ('no test split', 'expected train/<class>/ and test/<class>/'),
    ('test and val', 'both test/ and val/'),
])
def test_a_broken_folder_fails_in_one_line_naming_the_file(tmp_path, case, message):
    root = write_folder(tmp_path / 'fruit')
    _break(root, case)
    extra = [] if case == 'sizes differ' else ['--im_size', '28']
    with pytest.raises(UserError) as e:
        main_DM.parse_args(['--dataset', f'folder:{root}', '--device', 'cpu', *extra])
    assert message in str(e.value) and '\n' not in str(e.value)


def test_a_broken_folder_exits_2_before_writing_anything(tmp_path):
    root = write_folder(tmp_path / 'fruit')
    _break(root, 'mixed channels')
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'main_DM.py'), '--dataset', f'folder:{root}',
                        '--save_path', str(tmp_path / 'out'), '--device', 'cpu', '--im_size', '28'],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'grey.png' in r.stderr, r.stderr
    assert not (tmp_path / 'out').exists() and not (root / 'prepared-28.pt').exists()


@pytest.mark.parametrize('mutate, message', [
    (lambda raw: raw.update(classes=raw['classes'][:4]), 'labels_train must lie in 0..3'),
    (lambda raw: raw.update(images_val=raw['images_val'][:, :1]), 'images_val must be uint8 N×2×16×16'),
    (lambda raw: raw.update(labels_train=raw['labels_train'] % 4), 'class kind4 has no training images'),
    (lambda raw: raw.update(mean=[0.5]), 'mean must hold one finite value per channel (2)'),
])
def test_an_inconsistent_tensor_file_is_refused(tmp_path, mutate, message):
    path = write_file(tmp_path / 'k.pt')
    raw = torch.load(path)
    mutate(raw)
    torch.save(raw, path)
    with pytest.raises(UserError, match=message.replace('(', r'\(').replace(')', r'\)')):
        get_dataset(f'file:{path}', 'unused')


def test_specs_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        main_DM.parse_args(['--dataset', f'folder:{tmp_path / "nowhere"}', '--device', 'cpu'])
    with pytest.raises(UserError, match='resizing is for folder: datasets'):
        main_DM.parse_args(['--dataset', 'CIFAR10', '--im_size', '64', '--device', 'cpu'])
    root = write_folder(tmp_path / 'fruit')
    with pytest.raises(UserError, match='ConvNet on fruit \\(4x4\\)'):
        main_DM.parse_args(['--dataset', f'folder:{root}', '--im_size', '4', '--device', 'cpu'])
    # relative paths are made absolute, so a resumed run finds the data from any directory
    assert data_mod.canonical_dataset(f'folder:{root}') == f'folder:{root}'
    assert data_mod.dataset_label(f'file:{tmp_path}/my.data.pt') == 'my.data'


def test_cl_and_dim_read_the_class_count_and_shape_of_own_data(tmp_path):
    import CL_DM
    from condensation.run import dim_stages
    path = write_file(tmp_path / 'six.pt', num_classes=6, channel=3, size=32)
    args = CL_DM.parse_args(['--dataset', f'file:{path}', '--steps', '3', '--device', 'cpu'])
    assert args.dataset == f'file:{path}'
    with pytest.raises(UserError, match='--steps 4 does not divide the 6 classes of six; choose one of 2, 3, 6'):
        CL_DM.parse_args(['--dataset', f'file:{path}', '--steps', '4', '--device', 'cpu'])
    stage3 = ['--data', f'file:{path}', '--pretrain-weight', 'g.pth', '--ipc', '2', '--device', 'cpu']
    args = dim_stages.parse_dim_args(3, 'validate', stage3 + ['--batch-size', '12'])
    with pytest.raises(UserError, match='exceeds K\\*ipc = 12'):
        dim_stages.parse_dim_args(3, 'validate', stage3 + ['--batch-size', '13'])
    assert args.dataset == f'file:{path}'


def test_dim_stages_run_on_a_folder(tmp_path):
    import gen_condense
    import validate
    root = write_folder(tmp_path / 'fruit', channel=1, n_train=8)
    common = ['--data', f'folder:{root}', '--im_size', '28', '--output-dir', f'{tmp_path}/results/', '--logs-dir',
              f'{tmp_path}/logs/', '--device', 'cpu', '--no_progress', '--gan_width', '8', '--batch-size', '6',
              '--epochs-eval', '1', '--ipc', '2']
    gen_condense.main(common + ['--tag', 'gan', '--epochs', '1', '--iters-per-epoch', '2', '--eval-interval', '1',
                                '--val_split', '2'])
    res = validate.main(common + ['--tag', 'test', '--pretrain-weight', str(tmp_path / 'results/gan/best.pth'),
                                  '--dim_eval', 'fixed', '--num_eval', '1', '--batch_train', '6'])
    saved = torch.load(res['fixed']['results_file'])
    assert saved['data'][0][0].shape == (6, 1, 28, 28) and res['classes'] == ['apple', 'bird', 'cat']
    assert saved['meta']['classes'] == ['apple', 'bird', 'cat'] and saved['meta']['dataset'] == 'fruit'
    assert saved['meta']['mean'] == get_dataset(f'folder:{root}', 'unused', im_size=28).mean


def test_a_read_only_folder_is_decoded_once_per_process(tmp_path, monkeypatch):
    root = write_folder(tmp_path / 'ro', sizes=[(20, 20)])
    (root / 'train' / 'cat' / '._000.png').write_bytes(b'macOS metadata, not an image')  # hidden: skipped
    builds = []
    real_build = data_mod._build_folder
    monkeypatch.setattr(data_mod, '_cache_prepared', lambda *a, **k: False)
    monkeypatch.setattr(data_mod, '_build_folder', lambda *a: builds.append(1) or real_build(*a))
    info = dataset_info(f'folder:{root}', 'unused')
    d = get_dataset(f'folder:{root}', 'unused')
    assert len(builds) == 1 and info.num_classes == d.num_classes == 3 and len(d.x_train) == 12
    assert not os.path.exists(root / 'prepared.pt')

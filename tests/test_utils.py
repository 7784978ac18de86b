import os
import types

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from condensation import common
from condensation.augment import ParamDiffAug
from condensation.data import TensorLoader, build_tinyimagenet, get_dataset, standardise
from condensation import evaluation
from condensation.evaluation import evaluate_synset, get_eval_pool
from condensation.networks import NETWORKS, cpu_channels_last, get_network
from condensation.run.runner import save_image_grid, save_results
from conftest import over_seeds, toy_images, write_idx, write_prepared
from condensation.common import UserError


# ---------------------------------------------------------------------------------------------- datasets

def test_mnist_idx_through_torchvision_then_prepared_cache(mnist_idx, capsys):
    root, xtr, ytr = mnist_idx
    data = get_dataset('MNIST', str(root), download=False)
    size = os.path.getsize(root / 'MNIST.pt') / 2 ** 20
    assert capsys.readouterr().out == (f'wrote {root / "MNIST.pt"} ({size:.1f} MiB): the decoded data, read by later '
                                       f'runs instead of the original files (delete it to decode them again)\n')
    assert data.images_train.shape == (60, 1, 28, 28) and data.images_test.shape == (20, 1, 28, 28)
    assert data.class_names == [str(i) for i in range(10)]
    expected = (xtr.float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(data.images_train, expected, atol=1e-6)
    assert torch.equal(data.labels_train, ytr)
    # The first load wrote the prepared file; it is used from then on, even without the raw files.
    assert os.path.isfile(root / 'MNIST.pt')
    for f in os.listdir(root / 'MNIST' / 'raw'):
        os.unlink(root / 'MNIST' / 'raw' / f)
    again = get_dataset('mnist', str(root), download=False)
    assert torch.equal(again.images_train, data.images_train) and capsys.readouterr().out == ''  # read, not written


def test_fashion_mnist_idx(tmp_path):
    x, y = toy_images(3, 10, 1, 28)
    write_idx(str(tmp_path / 'FashionMNIST' / 'raw'), 'train', x, y)
    write_idx(str(tmp_path / 'FashionMNIST' / 'raw'), 't10k', x, y)
    data = get_dataset('fashion', str(tmp_path), download=False)
    assert data.name == 'FashionMNIST' and len(data.images_train) == 30
    assert abs(data.mean[0] - 0.2861) < 1e-9 and data.class_names[0].startswith('T-shirt')


def test_prepared_file_for_any_dataset(tmp_path):
    write_prepared(str(tmp_path), 'CIFAR10', n_train=5, n_test=2)
    data = get_dataset('CIFAR10', str(tmp_path), download=False)
    assert data.images_train.dtype == torch.float32 and data.images_train.shape == (50, 3, 32, 32)
    assert [len(i) for i in data.indices_class] == [5] * 10
    x = data.get_images(3, 4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 32, 32)
    assert len(data.get_images(3, 100)) == 5  # a small class gives all it has
    # Standardised with the original's normalisation constants.
    raw = torch.load(tmp_path / 'CIFAR10.pt')
    m = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    s = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    assert torch.allclose(data.images_test, (raw['images_val'].float() / 255 - m) / s, atol=1e-5)
    batches = list(data.testloader(batch_size=8))
    assert [len(b[0]) for b in batches] == [8, 8, 4]


def test_corrupt_or_wrong_prepared_file_is_a_one_line_error(tmp_path):
    (tmp_path / 'CIFAR10.pt').write_bytes(b'not a tensor file')
    with pytest.raises(UserError, match='CIFAR10.pt is not a readable tensor file'):
        get_dataset('CIFAR10', str(tmp_path), download=False)
    write_prepared(str(tmp_path), 'CIFAR10', channel=1, size=28)
    with pytest.raises(UserError, match=r'images_train must be uint8 N×3×32×32') as e:
        get_dataset('CIFAR10', str(tmp_path), download=False)
    assert '\n' not in str(e.value)


@pytest.mark.parametrize('name', ['MNIST', 'SVHN', 'CIFAR10', 'CIFAR100', 'TinyImageNet'])
def test_missing_dataset_names_dataset_folder_and_files(tmp_path, name):
    with pytest.raises(UserError) as e:
        get_dataset(name, str(tmp_path), download=False)
    msg = str(e.value)
    assert name in msg and str(tmp_path) in msg and '.pt' in msg and '\n' not in msg


def test_failed_download_leaves_no_folder(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(self):
        os.makedirs(os.path.join(self.root, 'partial'), exist_ok=True)
        raise OSError('no network')
    monkeypatch.setattr(tvd.CIFAR10, 'download', offline)
    missing = tmp_path / 'nowhere'
    with pytest.raises(UserError, match='download failed'):
        get_dataset('CIFAR10', str(missing), download=True)
    assert not missing.exists()


def test_unknown_dataset():
    with pytest.raises(UserError, match='unknown dataset'):
        get_dataset('ImageNet21k', '.')


def _write_tiny_imagenet(root, wnids, n_train, val_per_class, gray_first=True):
    from PIL import Image
    folder = root / 'tiny-imagenet-200'
    (folder / 'val' / 'images').mkdir(parents=True)
    (folder / 'wnids.txt').write_text('\n'.join(wnids) + '\n')
    lines = []
    for c, w in enumerate(wnids):
        d = folder / 'train' / w / 'images'
        d.mkdir(parents=True)
        for i in reversed(range(n_train)):  # written out of order: the builder must sort
            mode = 'L' if (gray_first and c == 0 and i == 0) else 'RGB'
            value = 10 * c + i if mode == 'L' else (10 * c + i, 0, 0)
            Image.new(mode, (64, 64), value).save(d / f'{w}_{i}.JPEG', quality=100)
        for i in range(val_per_class):
            name = f'val_{len(wnids) * i + c}.JPEG'
            Image.new('RGB', (64, 64), (0, 100 + c, 0)).save(folder / 'val' / 'images' / name, quality=100)
            lines.append(f'{name}\t{w}\t0\t0\t63\t63')
    (folder / 'val' / 'val_annotations.txt').write_text('\n'.join(lines) + '\n')
    return folder


def test_tinyimagenet_builder_from_folder_layout(tmp_path):
    folder = _write_tiny_imagenet(tmp_path, ['n02', 'n01'], n_train=3, val_per_class=2)
    raw = build_tinyimagenet(str(folder), train_per_class=3, val_per_class=2)
    assert raw['classes'] == ['n02', 'n01']  # wnids.txt order, not sorted
    assert raw['images_train'].shape == (6, 3, 64, 64) and raw['images_train'].dtype == torch.uint8
    assert raw['labels_train'].tolist() == [0, 0, 0, 1, 1, 1]
    # Sorted by file name within a class; the grayscale image became RGB with equal channels.
    firsts = raw['images_train'][:3, 0, 32, 32].tolist()
    assert abs(firsts[0] - 0) <= 2 and abs(firsts[1] - 1) <= 2 and abs(firsts[2] - 2) <= 2
    assert torch.equal(raw['images_train'][0, 0], raw['images_train'][0, 1])
    # Validation labels from val_annotations.txt, images sorted by file name.
    assert raw['labels_val'].tolist() == [0, 1, 0, 1]
    assert abs(int(raw['images_val'][1, 1, 5, 5]) - 101) <= 2


def test_tinyimagenet_folder_with_wrong_counts_is_rejected(tmp_path):
    _write_tiny_imagenet(tmp_path, ['n01'], n_train=2, val_per_class=1)
    with pytest.raises(UserError, match='expected 500'):
        get_dataset('TinyImageNet', str(tmp_path), download=False)


# ---------------------------------------------------------------------------------------------- seeds

def test_derived_seeds_are_stable_and_distinct():
    assert common.derive_seed(0, 'net', 1, 2) == common.derive_seed(0, 'net', 1, 2)
    assert common.derive_seed(0, 'net', 1, 2) != common.derive_seed(0, 'net', 2, 1)
    assert common.derive_seed(0, 'net') != common.derive_seed(1, 'net')
    a = torch.rand(3, generator=common.make_generator(5, 'x'))
    b = torch.rand(3, generator=common.make_generator(5, 'x'))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------- evaluation

def test_eval_pools():
    assert get_eval_pool('S', 'ConvNetBN', 'ConvNetBN') == ['ConvNet']
    assert get_eval_pool('S', 'ResNet18BN_AP', 'x') == ['ResNet18']
    assert get_eval_pool('S', 'ResNet18BN_AP', 'x', strict=True) == ['ResNet18_AP']
    assert get_eval_pool('S', 'ConvNetASwishBN', 'x') == ['ConvNetASwish']
    assert get_eval_pool('SS', 'ConvNetBN', 'x') == ['ConvNetBN']
    assert get_eval_pool('M', 'ConvNet', 'x') == ['MLP', 'ConvNet', 'LeNet', 'AlexNet', 'VGG11', 'ResNet18']
    assert get_eval_pool('B', 'ConvNet', 'x')[0] == 'ConvNetBN'
    assert get_eval_pool('N', 'ConvNet', 'x') == ['ConvNetNN', 'ConvNetBN', 'ConvNetLN', 'ConvNetIN', 'ConvNetGN']
    assert get_eval_pool('other', 'ConvNet', 'VGG11') == ['VGG11']
    for mode in 'MBWDAPN':
        assert all(a in NETWORKS for a in get_eval_pool(mode, 'ConvNet', 'ConvNet'))


def _eval_args(**kw):
    args = types.SimpleNamespace(lr_net=0.01, epoch_eval_train=20, batch_train=256, device='cpu', dsa=True,
                                 dsa_strategy='color_crop_cutout_flip_scale_rotate', dsa_param=ParamDiffAug(),
                                 dc_aug_param=None)
    vars(args).update(kw)
    return args


def _toy_eval(seed, **kw):
    write = toy_images(5, 10, 1, 28, seed=3)
    test = toy_images(10, 10, 1, 28, seed=4)
    mean, std = [0.1307], [0.3081]
    x = standardise(write[0], mean, std)
    xt = standardise(test[0], mean, std)
    net = get_network('ConvNetW32', 1, 10, (28, 28), generator=torch.Generator().manual_seed(seed))
    return evaluate_synset(0, net, x, write[1], TensorLoader(xt, test[1]), _eval_args(**kw),
                                 generator=torch.Generator().manual_seed(seed))


def test_evaluate_synset_learns_and_is_repeatable():
    # (train accuracy, test accuracy) of seeds 0, 1, ...: the median of 5 seeds tests above 60%; chance is 10%
    ok, accs = over_seeds(lambda seed: _toy_eval(seed)[1:], lambda acc: acc[1] > 0.6)
    assert ok, accs
    assert _toy_eval(0)[1:] == accs[0]


def test_evaluate_synset_schedule_and_eval_mode(monkeypatch):
    """SGD (momentum 0.9, weight decay 5e-4); lr ×0.1 after epoch index E//2+1, with the momentum started again as
    the original's fresh optimiser does; testing in eval mode without gradients."""
    steps = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **kw):
        group = self.param_groups[0]
        restarted = bool(self.state) and all(not s['momentum_buffer'].any() for s in self.state.values())
        steps.append((group['lr'], group['momentum'], group['weight_decay'], restarted))
        return real_step(self, *a, **kw)
    monkeypatch.setattr(torch.optim.SGD, 'step', spy)
    seen = {}
    real_test = evaluation.test_accuracy

    def spy_test(net, loader, device):
        def batches():
            for b in loader:
                seen.update(grad=torch.is_grad_enabled(), training=net.training)
                yield b
        return real_test(net, batches(), device)
    monkeypatch.setattr(evaluation, 'test_accuracy', spy_test)
    _toy_eval(0, epoch_eval_train=4, dsa=False)  # 50 images, batch 256: one step per epoch, 5 epochs
    assert [round(lr, 6) for lr, *_ in steps] == [0.01] * 4 + [0.001]
    assert all(s[1:3] == (0.9, 5e-4) for s in steps)
    assert [s[3] for s in steps] == [False] * 4 + [True]
    assert seen == dict(grad=False, training=False)


@pytest.mark.parametrize('name,fast', [('ConvNetW32', True), ('ConvNetBN', True), ('ConvNetNN', True),
                                       ('ConvNetMP', True), ('ConvNetLN', False), ('ConvNetGN', False),
                                       ('ConvNetNP', False), ('LeNet', False), ('ResNet18', False)])
def test_cpu_channels_last_takes_the_convnets_measured_faster(name, fast):
    assert cpu_channels_last(get_network(name, 1, 10, (28, 28), device='meta')) == fast


def test_evaluate_synset_trains_a_convnet_channels_last_on_the_cpu_as_it_would_nchw(monkeypatch):
    # the same draws and updates in either layout, so the weights agree to float rounding: about 1e-4 of the way
    # training moved them, 3e-3 at most over 8 seeds and up to 21 epochs (rounding may tip a ReLU or a crop's edge);
    # other draws would end a whole training's way off. The net comes back in the layout it came in.
    layouts = []
    real_train = evaluation._train

    def spy(params, *a, **kw):
        w = next(p for p in params if p.dim() == 4 and p.shape[1] > 1)
        layouts.append('channels-last' if not w.is_contiguous() else 'NCHW')
        return real_train(params, *a, **kw)
    monkeypatch.setattr(evaluation, '_train', spy)
    fast = _toy_eval(0, epoch_eval_train=6)
    _toy_eval(0, epoch_eval_train=1, amp='bf16')  # measured in float32 only: bfloat16 autocast keeps NCHW
    monkeypatch.setattr(evaluation, 'cpu_channels_last', lambda net: False)
    plain = _toy_eval(0, epoch_eval_train=6)
    assert layouts == ['channels-last', 'NCHW', 'NCHW']
    start = get_network('ConvNetW32', 1, 10, (28, 28), generator=torch.Generator().manual_seed(0))
    p0, p, q = (parameters_to_vector(net.parameters()) for net in (start, fast[0], plain[0]))
    assert (p - q).norm() <= 0.02 * (p - p0).norm(), ((p - q).norm() / (p - p0).norm()).item()
    assert abs(fast[1] - plain[1]) <= 1 / 50 and abs(fast[2] - plain[2]) <= 1 / 100
    assert all(t.is_contiguous() for t in fast[0].parameters())


def test_mean_std_is_population_std_in_percent():
    m, s = common.mean_std([0.5, 0.7])
    assert abs(m - 60.0) < 1e-9 and abs(s - 10.0) < 1e-9


# ---------------------------------------------------------------------------------------------- saving

def test_results_file_layout_and_atomic_write(tmp_path):
    path = str(tmp_path / 'res_DM_X_ConvNet_1ipc.pt')
    data = [[torch.randn(10, 3, 32, 32), torch.arange(10)]]
    save_results(path, data, {'ConvNet': [0.5, 0.7]}, meta={'args': {'ipc': 1}})
    res = torch.load(path)
    assert set(res) >= {'data', 'accs_all_exps', 'meta', 'summary'}
    assert torch.equal(res['data'][0][0], data[0][0])
    assert res['summary']['ConvNet'] == {'mean': pytest.approx(60.0), 'std': pytest.approx(10.0)}

    class Boom:
        def __reduce__(self):
            raise RuntimeError('disk full')
    with pytest.raises(RuntimeError):
        save_results(path, data, {'ConvNet': [0.1]}, meta={'broken': Boom()})
    assert torch.load(path)['accs_all_exps'] == {'ConvNet': [0.5, 0.7]}  # the old file is intact
    assert os.listdir(tmp_path) == ['res_DM_X_ConvNet_1ipc.pt']  # and no temporary file is left


def test_png_grid_is_denormalised(tmp_path):
    from PIL import Image
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    x = torch.zeros(6, 3, 8, 8)  # standardised 0 is the mean: grey 0.5 after de-normalising
    save_image_grid(str(tmp_path / 'g.png'), x, mean, std, nrow=3)
    im = Image.open(tmp_path / 'g.png')
    k = 8  # enlarged by a whole factor to at least 256 pixels across
    assert im.size == (k * (3 * 8 + 4 * 2), k * (2 * 8 + 3 * 2))  # save_image's 2-pixel padding
    assert abs(im.getpixel((k * 5, k * 5))[0] - 128) <= 1
    assert im.getpixel((k * 1, k * 1))[0] == 0  # the padding


def test_precision_is_chosen_on_cuda_and_stated_as_it_runs():
    """--precision sets PyTorch's float32 switches on a CUDA device only, and precision_text reads back what they
    are (the switches are flags: set and read without a GPU)."""
    cpu, cuda = types.SimpleNamespace(device='cpu'), types.SimpleNamespace(device='cuda', amp='off')
    assert common.precision_text(cpu) == 'IEEE fp32 (CPU)'
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if not hasattr(cudnn, 'conv'):
        pytest.skip('torch before 2.9: the legacy allow_tf32 switches')
    saved = cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision, torch.get_float32_matmul_precision()
    try:
        common.set_precision('ieee', 'cpu')
        assert common.precision_text(cuda) == 'convolutions TF32, matmuls IEEE fp32'  # as PyTorch starts
        common.set_precision('default', 'cuda')  # the CPU and 'default': nothing chosen
        assert common.precision_text(cuda) == 'convolutions TF32, matmuls IEEE fp32'
        assert cudnn.allow_tf32 and not matmul.allow_tf32  # PyTorch's own switches still readable
        common.set_precision('ieee', 'cuda')
        assert common.precision_text(cuda) == 'convolutions IEEE fp32, matmuls IEEE fp32'
        common.set_precision('tf32', 'cuda:1')
        assert common.precision_text(cuda) == 'convolutions TF32, matmuls TF32'
        assert cudnn.allow_tf32 and matmul.allow_tf32 and torch.get_float32_matmul_precision() == 'high'
        assert common.precision_text(types.SimpleNamespace(device='cuda', amp='bf16')).startswith('bf16 autocast')
    finally:
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def test_the_footprint_counts_the_cuda_graphs_memory_pools(monkeypatch):
    """With CUDA graphs the estimate adds each recorded step's pool (its activations and the set's gradient) and
    the check's two copies of the set and its momentum; without them (the CPU, --cuda_graphs off) it is unchanged."""
    from condensation.device import footprint
    data = types.SimpleNamespace(channel=1, im_size=(28, 28), num_classes=10)
    args = types.SimpleNamespace(model='ConvNetW32', ipc=5, per_class=False, batch_real=8, batch_train=16,
                                 device='cpu', cuda_graphs='on')
    images = footprint.set_bytes(50, (1, 28, 28))
    plain = {m: footprint.condensation_bytes(args, data, m) for m in ('DM', 'DC')}
    monkeypatch.setattr(footprint, 'graphs_enabled', lambda device, mode: mode == 'on')
    for method, steps in (('DM', 1), ('DC', 2)):
        activations = plain[method] - 5 * images
        assert footprint.condensation_bytes(args, data, method) == plain[method] + steps * (activations + images) \
            + 4 * images
    args.cuda_graphs = 'off'
    assert footprint.condensation_bytes(args, data, 'DM') == plain['DM']


def test_a_set_picture_is_a_grid_about_as_wide_as_high():
    from condensation.run.runner import grid_columns
    assert grid_columns(1, 10) == 5  # ipc 1 of 10 classes: 2 rows of 5, not a strip of 10
    assert grid_columns(10, 10) == 10 and grid_columns(50, 10) == 50  # a row per class
    assert grid_columns(2, 10) == 10 and grid_columns(1, 100) == 10 and grid_columns(1, 7) == 7


def test_titled_blocks_stand_side_by_side_under_their_titles(tmp_path):
    from PIL import Image
    x = torch.zeros(8, 1, 28, 28)
    save_image_grid(str(tmp_path / 'b.png'), x, [0.5], [0.5], nrow=2, titles=[('(a) real', 4), ('(b) IT-GAN', 4)])
    im = Image.open(tmp_path / 'b.png').convert('L')
    side = 2 * 28 + 3 * 2  # each block: 4 images, 2 a row
    k = 3  # enlarged so that a block is as wide as its title needs (140 pixels)
    assert im.size == (2 * k * side + 12, 22 + k * side)
    assert min(im.getpixel((x_, y_)) for x_ in range(k * side) for y_ in range(22)) < 128  # a title drawn above


def test_the_agreement_chart_gives_each_label_its_own_line():
    from condensation.plots import _spread
    ys = [40.0, 38.5, 41.0, 39.0, 300.0, 587.0, 589.0]  # cells at 97-99 % crowd the top, two the bottom edge
    out = _spread(ys, 36, 590, 13)
    placed = sorted(zip(ys, out))
    assert [o for _, o in placed] == sorted(out)  # the order of the points is kept
    assert all(b - a >= 13 - 1e-9 for (_, a), (_, b) in zip(placed, placed[1:]))
    assert 36 <= min(out) and max(out) <= 590 and out[4] == 300.0  # a point alone keeps its height
    many = _spread([100.0] * 60, 36, 590, 13)  # more than fit: evenly spaced over the height
    assert min(many) >= 36 and max(many) <= 590 and len(set(many)) == 60

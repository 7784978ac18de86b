"""The original DC repository's utils API (`from utils import get_dataset, ...`): each name against its original
contract, and a script in the original's style running on a fixture."""
import inspect
import math
import re
import runpy
import subprocess
import sys
import types

import pytest
import torch
import torch.nn as nn

import utils
from condensation.common import default_device
from conftest import ROOT, write_prepared

# name -> the original's positional parameters, in order
SIGNATURES = {
    'get_loops': ['ipc'],
    'get_dataset': ['dataset', 'data_path'],
    'get_network': ['model', 'channel', 'num_classes', 'im_size'],
    'get_eval_pool': ['eval_mode', 'model', 'model_eval'],
    'evaluate_synset': ['it_eval', 'net', 'images_train', 'labels_train', 'testloader', 'args'],
    'get_daparam': ['dataset', 'model', 'model_eval', 'ipc'],
    'match_loss': ['gw_syn', 'gw_real', 'args'],
    'get_time': [],
    'epoch': ['mode', 'dataloader', 'net', 'optimizer', 'criterion', 'args', 'aug'],
    'DiffAugment': ['x', 'strategy', 'seed', 'param'],
    'TensorDataset': ['images', 'labels'],
    'ParamDiffAug': [],
}
# The original's normalisation constants: (channel, im_size, classes, mean, std).
CONSTANTS = {
    'MNIST': (1, 28, 10, [0.1307], [0.3081]),
    'FashionMNIST': (1, 28, 10, [0.2861], [0.3530]),
    'SVHN': (3, 32, 10, [0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
    'CIFAR10': (3, 32, 10, [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    'CIFAR100': (3, 32, 100, [0.5071, 0.4866, 0.4409], [0.2673, 0.2564, 0.2762]),
    'TinyImageNet': (3, 64, 200, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}


def _exits(fn, capsys):
    """fn() exits as the original's exit() did, here with one line and code 2; returns the line."""
    with pytest.raises(SystemExit) as e:
        fn()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and 'Traceback' not in err, err
    return err


def _args(**kw):
    base = dict(device='cpu', lr_net=0.01, epoch_eval_train=20, batch_train=256, dsa=False,
                dsa_strategy='None', dsa_param=utils.ParamDiffAug(), dc_aug_param=None, dis_metric='ours')
    return types.SimpleNamespace(**{**base, **kw})


def test_the_twelve_names_import_without_a_cycle_and_keep_the_original_argument_order():
    # a fresh interpreter, utils imported first as the original scripts do
    code = 'from utils import ' + ', '.join(utils.ORIGINAL_API)
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(utils.ORIGINAL_API) == sorted(SIGNATURES)
    for name, params in SIGNATURES.items():
        positional = [p for p in inspect.signature(getattr(utils, name)).parameters.values()
                      if p.kind == p.POSITIONAL_OR_KEYWORD]
        # the original's parameters in its order; anything the native function adds is optional
        assert [p.name for p in positional[:len(params)]] == params, name
        assert all(p.default is not p.empty for p in positional[len(params):]), name
    with pytest.raises(AttributeError):
        utils.no_such_name


@pytest.mark.parametrize('name', list(CONSTANTS))
def test_get_dataset_returns_the_nine_tuple_with_the_original_constants(tmp_path, name):
    channel, size, k, mean, std = CONSTANTS[name]
    write_prepared(str(tmp_path), name, n_train=2, n_test=3, num_classes=k, channel=channel, size=size)
    ch, im_size, num_classes, class_names, m, s, dst_train, dst_test, testloader = utils.get_dataset(name, str(tmp_path))
    assert (ch, im_size, num_classes, m, s) == (channel, (size, size), k, mean, std)
    assert class_names == [f'c{i}' for i in range(k)] and len(dst_train) == 2 * k and len(dst_test) == 3 * k
    raw = torch.load(tmp_path / f'{name}.pt')
    image, label = dst_train[k + 1]  # the second image of class 1
    assert isinstance(label, int) and label == int(raw['labels_train'][k + 1])
    expected = (raw['images_train'][k + 1].float() / 255 - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    assert image.shape == (channel, size, size) and torch.allclose(image, expected, atol=1e-5)
    x, y = next(iter(testloader))  # batches of 256 in order
    n = min(256, 3 * k)
    assert x.shape == (n, channel, size, size) and torch.equal(y, raw['labels_val'][:n])


def test_get_dataset_of_an_unknown_name_exits_with_one_line(tmp_path, capsys):
    assert 'unknown dataset' in _exits(lambda: utils.get_dataset('CIFAR11', str(tmp_path)), capsys)


def test_get_network_gives_a_fresh_network_on_the_default_device(capsys):
    net = utils.get_network('ConvNet', 1, 10, (28, 28))
    assert isinstance(net, nn.Module) and net(torch.zeros(2, 1, 28, 28).to(default_device())).shape == (2, 10)
    again = utils.get_network('ConvNet', 1, 10, (28, 28))
    assert not torch.equal(next(net.parameters()), next(again.parameters()))  # a new random init each call
    a, b = (utils.get_network('MLP', 3, 4, generator=torch.Generator().manual_seed(1)) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert 'unknown model: ConvNot' in _exits(lambda: utils.get_network('ConvNot', 1, 10), capsys)


def test_get_eval_pool_and_get_daparam():
    pool = utils.get_eval_pool
    assert pool('M', 'ConvNet', 'ConvNet') == ['MLP', 'ConvNet', 'LeNet', 'AlexNet', 'VGG11', 'ResNet18']
    assert pool('B', 'ConvNetBN', 'ConvNetBN') == ['ConvNetBN', 'ConvNetASwishBN', 'AlexNetBN', 'VGG11BN', 'ResNet18BN']
    assert pool('W', 'x', 'x') == ['ConvNetW32', 'ConvNetW64', 'ConvNetW128', 'ConvNetW256']
    assert pool('D', 'x', 'x') == ['ConvNetD1', 'ConvNetD2', 'ConvNetD3', 'ConvNetD4']
    assert pool('A', 'x', 'x') == ['ConvNetAS', 'ConvNetAR', 'ConvNetAL', 'ConvNetASwish']
    assert pool('P', 'x', 'x') == ['ConvNetNP', 'ConvNetMP', 'ConvNetAP']
    assert pool('N', 'x', 'x') == ['ConvNetNN', 'ConvNetBN', 'ConvNetLN', 'ConvNetIN', 'ConvNetGN']
    assert pool('S', 'ConvNetBN', 'ConvNetBN') == ['ConvNet'] and pool('SS', 'ConvNetBN', 'x') == ['ConvNetBN']
    assert pool('X', 'ConvNet', 'AlexNet') == ['AlexNet']
    base = dict(crop=4, scale=0.2, rotate=45, noise=0.001)
    assert utils.get_daparam('CIFAR10', 'ConvNet', 'ConvNet', 10) == dict(base, strategy='none')
    assert utils.get_daparam('MNIST', 'ConvNet', 'ConvNet', 1) == dict(base, strategy='crop_scale_rotate')
    assert utils.get_daparam('MNIST', 'ConvNet', 'ConvNetBN', 1) == dict(base, strategy='crop_noise')


def test_get_loops_table_and_get_time(capsys):
    table = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
    assert {ipc: utils.get_loops(ipc) for ipc in table} == table
    assert 'no loop setting' in _exits(lambda: utils.get_loops(7), capsys)
    assert re.fullmatch(r'\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]', utils.get_time())


def test_match_loss_three_metrics_on_known_values(capsys):
    # a conv gradient (2 filters of 1x1x2), a linear one (2x2) and a bias
    real = [torch.tensor([[[[1., 0.]]], [[[0., 2.]]]]), torch.tensor([[1., 0.], [0., 1.]]), torch.tensor([1., 2.])]
    syn = [torch.tensor([[[[2., 0.]]], [[[1., 0.]]]]), torch.tensor([[1., 0.], [1., 0.]]), torch.tensor([3., 4.])]
    # ours: per output row 1 - cos; conv rows (0, 1), linear rows (0, 1); the bias counts 0
    ours = utils.match_loss(syn, real, _args(dis_metric='ours'))
    assert ours.dim() == 0 and ours.item() == pytest.approx(2.0, abs=1e-5)
    r, s = torch.cat([t.flatten() for t in real]), torch.cat([t.flatten() for t in syn])
    mse = utils.match_loss(syn, real, _args(dis_metric='mse'))
    assert mse.item() == pytest.approx(1 + 1 + 4 + 0 + 0 + 1 + 1 + 4 + 4)
    cos = utils.match_loss(syn, real, _args(dis_metric='cos'))
    assert cos.item() == pytest.approx(1 - float(r @ s) / math.sqrt(float(r @ r) * float(s @ s)), abs=1e-6)
    assert 'unknown distance function: l1' in _exits(lambda: utils.match_loss(syn, real, _args(dis_metric='l1')), capsys)


def test_tensor_dataset_and_epoch():
    x, y = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)).double(), torch.arange(12) % 3
    dst = utils.TensorDataset(x.requires_grad_(), y)
    assert len(dst) == 12 and dst.images.dtype == torch.float32 and not dst.images.requires_grad
    image, label = dst[4]
    assert image.shape == (1, 8, 8) and label == 1
    loader = torch.utils.data.DataLoader(dst, batch_size=5, shuffle=False)
    net = utils.get_network('MLP', 1, 3, (8, 8), generator=torch.Generator().manual_seed(0)).cpu()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.clone() for p in net.parameters()]
    loss, acc = utils.epoch('test', loader, net, opt, nn.CrossEntropyLoss(), _args(), aug=False)
    assert all(torch.equal(p, q) for p, q in zip(before, net.parameters()))  # testing changes nothing
    assert isinstance(loss, float) and acc in [i / 12 for i in range(13)]
    args = _args(dsa=True, dsa_strategy='crop_flip')
    losses = [utils.epoch('train', loader, net, opt, nn.CrossEntropyLoss(), args, aug=True)[0] for _ in range(15)]
    assert losses[-1] < losses[0]


def test_diff_augment_seed_semantics():
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    strategy, param = 'color_crop_cutout_flip_scale_rotate', utils.ParamDiffAug()
    state = torch.get_rng_state()
    same = utils.DiffAugment(x, strategy, 7, param)
    assert torch.equal(torch.get_rng_state(), state)  # a seed leaves the global generator alone
    assert torch.equal(same, utils.DiffAugment(x, strategy, seed=7, param=param))
    # Siamese: one transform for the whole batch, whatever the batch (a real and a synthetic batch of other sizes)
    assert torch.equal(utils.DiffAugment(x[:2], strategy, 7, param), same[:2])
    twins = utils.DiffAugment(torch.stack([x[0], x[0]]), strategy, 7, param)
    assert torch.equal(twins[0], twins[1])
    # other seeds, other transforms (a seed may draw the identity, so most, not all)
    assert sum(not torch.equal(utils.DiffAugment(x, strategy, s, param), same) for s in range(8, 13)) >= 4
    # seed -1: per-image parameters; two copies of an image mostly differ
    differ = [not torch.equal(*utils.DiffAugment(torch.stack([x[0], x[0]]), strategy, -1, param,
                                                  generator=torch.Generator().manual_seed(s))) for s in range(5)]
    assert sum(differ) >= 4
    assert utils.DiffAugment(x, 'None', 3, param) is x and utils.DiffAugment(x, '', -1, None) is x


def test_param_diff_aug_has_the_original_values():
    p = utils.ParamDiffAug()
    assert (p.aug_mode, p.prob_flip, p.ratio_scale, p.ratio_rotate, p.ratio_crop_pad, p.ratio_cutout, p.brightness,
            p.saturation, p.contrast) == ('S', 0.5, 1.2, 15.0, 0.125, 0.5, 1.0, 2.0, 0.5)


ORIGINAL_STYLE_SCRIPT = '''
import argparse
import numpy as np
import torch
from utils import get_loops, get_dataset, get_network, get_eval_pool, evaluate_synset, get_daparam, match_loss, get_time, TensorDataset, epoch, DiffAugment, ParamDiffAug

parser = argparse.ArgumentParser()
parser.add_argument('--dataset', type=str, default='MNIST')
parser.add_argument('--model', type=str, default='ConvNetW32')
parser.add_argument('--ipc', type=int, default=2)
parser.add_argument('--data_path', type=str, default='data')
parser.add_argument('--out', type=str, default='res.pt')
args = parser.parse_args()
args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
args.dsa_param = ParamDiffAug()
args.dsa_strategy = 'color_crop_cutout_scale_rotate'
args.dsa = True
args.lr_net, args.epoch_eval_train, args.batch_train = 0.01, 30, 256

channel, im_size, num_classes, class_names, mean, std, dst_train, dst_test, testloader = get_dataset(args.dataset, args.data_path)
images_all = torch.cat([torch.unsqueeze(dst_train[i][0], dim=0) for i in range(len(dst_train))]).to(args.device)
labels_all = [dst_train[i][1] for i in range(len(dst_train))]
indices_class = [[] for c in range(num_classes)]
for i, lab in enumerate(labels_all):
    indices_class[lab].append(i)

def get_images(c, n):
    return images_all[np.random.permutation(indices_class[c])[:n]]

image_syn = torch.cat([get_images(c, args.ipc) for c in range(num_classes)]).detach().requires_grad_(True)
label_syn = torch.arange(num_classes).repeat_interleave(args.ipc).to(args.device)
optimizer_img = torch.optim.SGD([image_syn], lr=1.0, momentum=0.5)
print('%s training begins' % get_time())
for it in range(3):
    net = get_network(args.model, channel, num_classes, im_size)
    net.train()
    for p in net.parameters():
        p.requires_grad = False
    loss = torch.tensor(0.0).to(args.device)
    for c in range(num_classes):
        seed = 1000 * it + c
        img_real = DiffAugment(get_images(c, 8), args.dsa_strategy, seed=seed, param=args.dsa_param)
        img_syn = DiffAugment(image_syn[c * args.ipc:(c + 1) * args.ipc], args.dsa_strategy, seed=seed, param=args.dsa_param)
        loss += torch.sum((net.embed(img_real).mean(0) - net.embed(img_syn).mean(0)) ** 2)
    optimizer_img.zero_grad()
    loss.backward()
    optimizer_img.step()

accs = []
for model_eval in get_eval_pool('S', args.model, args.model):
    for it_eval in range(2):
        net_eval = get_network(model_eval, channel, num_classes, im_size)
        _, acc_train, acc_test = evaluate_synset(it_eval, net_eval, image_syn.detach().clone(), label_syn.clone(), testloader, args)
        accs.append(acc_test)
torch.save({'data': [[image_syn.detach().cpu(), label_syn.cpu()]], 'accs_all_exps': {args.model: accs}}, args.out)
'''


def test_an_original_style_script_runs_on_a_fixture(prepared_mnist, monkeypatch, capsys):
    script = prepared_mnist / 'condense.py'
    script.write_text(ORIGINAL_STYLE_SCRIPT)
    out = prepared_mnist / 'res.pt'
    monkeypatch.setattr(sys, 'argv', ['condense.py', '--data_path', str(prepared_mnist), '--out', str(out)])
    torch.manual_seed(0)  # the script's only source of randomness besides its own seeds, as in the original
    runpy.run_path(str(script), run_name='__main__')
    printed = capsys.readouterr().out
    assert 'training begins' in printed and printed.count('Evaluate_0') == 2
    res = torch.load(out)
    images, labels = res['data'][0]
    assert images.shape == (20, 1, 28, 28) and torch.isfinite(images).all()
    assert min(res['accs_all_exps']['ConvNetW32']) > 0.3  # ten learnable classes, chance is 0.1

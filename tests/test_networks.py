"""networks.py: shapes at 28x28x1 / 32x32x3 / 64x64x3, the reference's parameter counts and embed dims, seeded init that
never touches the global RNG, PyTorch-default init distributions, DiM stems, BN really being BN."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from condensation import networks
from condensation.networks import DIM_NETWORKS, NETWORKS, define_model, get_network, init_weights

K = 10
SIZES = [(1, 28), (3, 32), (3, 64)]  # (channel, pixels): MNIST-like, CIFAR-like, TinyImageNet-like


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def head(model):
    """The final linear layer (registered last in every model)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def check_forward_embed_grad(model, channel, size):
    x = torch.randn(2, channel, size, size, generator=gen(1)).requires_grad_()
    logits, emb = model(x), model.embed(x)
    assert logits.shape == (2, K)
    assert emb.dim() == 2 and emb.shape == (2, head(model).in_features)
    # embed really is the head's input (train-mode BN uses batch stats, so both passes agree)
    torch.testing.assert_close(head(model)(emb), logits, rtol=1e-4, atol=1e-5)
    logits.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize('channel,size', SIZES, ids=['28x1', '32x3', '64x3'])
@pytest.mark.parametrize('name', NETWORKS)
def test_every_network_runs_at_every_size(name, channel, size):
    model = get_network(name, channel, K, (size, size), generator=gen())
    check_forward_embed_grad(model, channel, size)


# ResNet10 / ResNet10_AP with the cifar stem are covered above; here the rest of the DiM pool, and both stems
DIM_CASES = ([('resnet18', 'cifar', c, s) for c, s in SIZES] + [('resnet18_ap', 'cifar', c, s) for c, s in SIZES]
             + [('resnet10', 'imagenet', c, s) for c, s in SIZES]
             + [('resnet10_ap', 'imagenet', c, s) for c, s in SIZES[1:]]  # 28x28 collapses, see below
             + [('resnet18', 'imagenet', 3, 32), ('resnet18_ap', 'imagenet', 3, 64)])


@pytest.mark.parametrize('name,stem,channel,size', DIM_CASES)
def test_dim_resnets_run_with_both_stems(name, stem, channel, size):
    check_forward_embed_grad(define_model(name, channel, K, size, stem=stem, generator=gen()), channel, size)


@pytest.mark.parametrize('name', ['resnet10_ap', 'resnet18_ap'])
def test_ap_imagenet_stem_at_28_is_a_clear_error(name):
    with pytest.raises(ValueError, match='cifar'):
        define_model(name, 1, K, 28, stem='imagenet')
    with pytest.raises(ValueError, match='cifar'):
        get_network('ResNet10_AP', 1, K, 28, stem='imagenet')


def test_convnet_parameter_counts():
    assert n_params(get_network('ConvNet', 3, K, (32, 32))) == 320_010
    assert n_params(get_network('ConvNet', 1, K, (28, 28))) == 317_706
    assert n_params(define_model('convnet', 3, K, (32, 32))) == 320_010
    for alias in ('ConvNetAR', 'ConvNetIN', 'ConvNetAP', 'ConvNetW128', 'ConvNetD3'):
        assert n_params(get_network(alias, 3, K, 32, device='meta')) == 320_010


def test_dim_parameter_counts():
    def millions(name, **kw):
        return round(n_params(define_model(name, 3, K, 32, device='meta', **kw)) / 1e6, 2)

    for ap in ('', '_ap'):  # the _ap nets have the same counts (pooling replaces strides)
        assert millions('resnet10' + ap, stem='cifar') == 1.23
        assert millions('resnet18' + ap, stem='cifar') == 2.80
        assert millions('resnet10' + ap, stem='imagenet') == 4.91
        assert millions('resnet18' + ap, stem='imagenet') == 11.18
    assert millions('densenet') == 1.00
    # DiM's resnet18 is not DC's ResNet18, and the names do not clash
    assert n_params(get_network('ResNet18BN', 3, K, 32, device='meta')) == 11_173_962
    assert 'resnet18' not in NETWORKS and 'ResNet18' not in DIM_NETWORKS


# embed dims (flattened last ConvNet block) at (28/32, 64) pixels; 28 px is padded to 32
CONVNET_EMBED = {
    'ConvNet': (2048, 8192), 'ConvNetD1': (32768, 131072), 'ConvNetD2': (8192, 32768), 'ConvNetD3': (2048, 8192),
    'ConvNetD4': (512, 2048), 'ConvNetW32': (512, 2048), 'ConvNetW64': (1024, 4096), 'ConvNetW128': (2048, 8192),
    'ConvNetW256': (4096, 16384), 'ConvNetAS': (2048, 8192), 'ConvNetAR': (2048, 8192), 'ConvNetAL': (2048, 8192),
    'ConvNetASwish': (2048, 8192), 'ConvNetASwishBN': (2048, 8192), 'ConvNetNN': (2048, 8192),
    'ConvNetBN': (2048, 8192), 'ConvNetLN': (2048, 8192), 'ConvNetIN': (2048, 8192), 'ConvNetGN': (2048, 8192),
    'ConvNetNP': (131072, 524288), 'ConvNetMP': (2048, 8192), 'ConvNetAP': (2048, 8192),
}
# head input sizes (28x28x1, 32x32x3, 64x64x3), computed from im_size, never hard-coded
OTHER_HEAD = {
    'AlexNet': (3072, 3072, 12288), 'AlexNetBN': (3072, 3072, 12288),
    'VGG11': (512, 512, 2048), 'VGG11BN': (512, 512, 2048), 'ResNet18': (512, 512, 512),
    'ResNet18BN': (512, 512, 512), 'ResNet18_AP': (4608, 8192, 32768), 'ResNet18BN_AP': (4608, 8192, 32768),
}


def test_convnet_embed_dims_match_the_reference_table():
    assert set(CONVNET_EMBED) == {n for n in NETWORKS if n.startswith('ConvNet')}
    for name, (small, large) in CONVNET_EMBED.items():
        assert head(get_network(name, 1, K, 28, device='meta')).in_features == small, name
        assert head(get_network(name, 3, K, 32, device='meta')).in_features == small, name
        assert head(get_network(name, 3, K, 64, device='meta')).in_features == large, name
    # and the actual embed, for a few variants
    for name in ('ConvNet', 'ConvNetD4', 'ConvNetW32', 'ConvNetNP'):
        for (c, s), dim in zip(SIZES, (CONVNET_EMBED[name][0],) * 2 + (CONVNET_EMBED[name][1],)):
            assert get_network(name, c, K, s).embed(torch.zeros(1, c, s, s)).shape == (1, dim)


def test_other_heads_match_the_reference_table():
    for name, dims in OTHER_HEAD.items():
        for (c, s), dim in zip(SIZES, dims):
            assert head(get_network(name, c, K, s, device='meta')).in_features == dim, (name, s)
    for (c, s), dim in zip(SIZES, (784, 3072, 12288)):
        mlp = get_network('MLP', c, K, s, device='meta')
        assert mlp.fc_1.in_features == dim and head(mlp).in_features == 128
    for (c, s), dim in zip(SIZES, (400, 400, 2704)):  # LeNet's flattened conv features; its embed is 84-d
        lenet = get_network('LeNet', c, K, s, device='meta')
        assert lenet.fc_1.in_features == dim and head(lenet).in_features == 84


def test_resnet18_global_pool_equals_reference_4x4_pool_at_28_and_32():
    for c, s in SIZES[:2]:
        m = get_network('ResNet18', c, K, s, generator=gen())
        x = torch.randn(2, c, s, s, generator=gen(1))
        out = F.relu(m.bn1(m.conv1(x)))
        out = m.layer4(m.layer3(m.layer2(m.layer1(out))))
        torch.testing.assert_close(m.embed(x), F.avg_pool2d(out, 4).flatten(1))


def test_im_size_as_int_or_tuple():
    a = get_network('ConvNet', 3, K, 64, generator=gen())
    b = get_network('ConvNet', 3, K, (64, 64), generator=gen())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize('build', [
    lambda g: get_network('ConvNetBN', 3, K, 32, generator=g),
    lambda g: get_network('ResNet10', 3, K, 32, generator=g),  # DiM init rule
    lambda g: get_network('DenseNet', 1, K, 28, generator=g),
], ids=['ConvNetBN', 'ResNet10', 'DenseNet'])
def test_seeded_init_is_deterministic_and_leaves_global_rng_alone(build):
    state = torch.get_rng_state()
    a, b, c = build(gen(7)), build(gen(7)), build(gen(8))
    assert torch.equal(torch.get_rng_state(), state)
    assert same_state(a, b)
    assert not same_state(a, c)
    # the global RNG's position does not matter either
    with torch.random.fork_rng():
        torch.rand(1000)
        assert same_state(a, build(gen(7)))


def test_no_parameter_left_uninitialised():
    # to_empty leaves garbage; every tensor must be finite and each norm layer exactly 1/0 with fresh stats
    for name in ('AlexNetBN', 'ResNet10_AP', 'ConvNetLN'):
        m = get_network(name, 3, K, 32, generator=gen())
        assert all(torch.isfinite(t).all() for t in m.state_dict().values())
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                assert (mod.weight == 1).all() and (mod.bias == 0).all()
            if isinstance(mod, nn.BatchNorm2d):
                assert (mod.running_mean == 0).all() and (mod.running_var == 1).all()
                assert mod.num_batches_tracked.item() == 0


def test_init_weights_reproduces_pytorch_default_init_exactly():
    def layers():
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(20, 7), nn.ConvTranspose2d(4, 6, 3),
                             nn.GroupNorm(2, 8), nn.LayerNorm([8, 4]), nn.Conv1d(2, 5, 4, bias=False))
    with torch.random.fork_rng():
        torch.manual_seed(123)
        ref = layers()  # PyTorch's own reset_parameters, drawing from the global generator
    with torch.device('meta'):
        ours = layers()
    ours.to_empty(device='cpu')
    init_weights(ours, gen(123))
    assert same_state(ref, ours)


def test_dim_resnet_init_rule():
    m = define_model('resnet10', 3, K, 32, generator=gen())
    conv = m.layer4[0].conv2  # 256x256x3x3
    std = math.sqrt(2.0 / (3 * 3 * 256))
    assert abs(conv.weight.std().item() / std - 1) < 0.02 and abs(conv.weight.mean().item()) < 0.01 * std
    bound = 1 / math.sqrt(256)  # the classifier keeps PyTorch's default
    assert m.classifier.weight.abs().max() <= bound and m.classifier.weight.abs().max() > 0.9 * bound
    assert all((b.weight == 1).all() and (b.bias == 0).all() for b in m.modules() if isinstance(b, nn.BatchNorm2d))


def test_init_weights_refuses_unknown_parameters():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.empty(3))
            self.fc = nn.Linear(3, 2)

    with pytest.raises(ValueError, match='Odd'):
        init_weights(Odd(), gen())

    class OwnRule(Odd):
        def _init_weights(self, g):
            self.scale.data.fill_(2.0)

    m = init_weights(nn.Sequential(OwnRule(), nn.Linear(2, 2)), gen())
    assert (m[0].scale == 2).all()


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_network('convnet', 3, K)
    msg = str(err.value)
    assert '\n' not in msg and all(n in msg for n in NETWORKS)
    with pytest.raises(ValueError) as err:
        define_model('ConvNet', 3, K)
    assert all(n in str(err.value) for n in DIM_NETWORKS)


def test_resolve_stem():
    assert networks.resolve_stem('auto', 'CIFAR10') == 'cifar'
    assert networks.resolve_stem('auto', 'cifar100') == 'cifar'
    assert networks.resolve_stem('auto', 'TinyImageNet') == 'imagenet'
    assert networks.resolve_stem('auto', 'mnist') == 'imagenet'
    assert networks.resolve_stem('imagenet', 'cifar10') == 'imagenet'
    with pytest.raises(ValueError):
        networks.resolve_stem('tiny', 'cifar10')


def test_instance_norm_is_per_channel_and_matches_functional_instance_norm():
    m = get_network('ConvNet', 3, K, 32, generator=gen())
    norm = m.features[1]
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=gen(2))
        norm.bias.normal_(generator=gen(3))
        x = torch.randn(4, 128, 8, 8, generator=gen(4)) * 3 + 1
        ref = F.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=1e-5)
        torch.testing.assert_close(norm(x), ref, rtol=1e-5, atol=1e-5)


BN_NETS = ['ConvNetBN', 'ConvNetASwishBN', 'AlexNetBN', 'VGG11BN', 'ResNet18BN', 'ResNet18BN_AP', 'ResNet10',
           'ResNet10_AP', 'DenseNet']


@pytest.mark.parametrize('name', BN_NETS)
def test_bn_models_differ_between_train_and_eval(name):
    m = get_network(name, 3, K, 32, generator=gen())
    x = torch.randn(4, 3, 32, 32, generator=gen(1)) * 2 + 0.5
    with torch.no_grad():
        train_out = m.train()(x)
        eval_out = m.eval()(x)
    assert not torch.allclose(train_out, eval_out, atol=1e-4)
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert bns and all(b.num_batches_tracked.item() == 1 for b in bns)
    assert bns[0].running_mean.abs().sum() > 0


def test_instance_norm_models_ignore_train_eval():
    for name in ('ConvNet', 'VGG11', 'ResNet18_AP'):
        m = get_network(name, 3, K, 32, generator=gen())
        x = torch.randn(2, 3, 32, 32, generator=gen(1))
        with torch.no_grad():
            torch.testing.assert_close(m.train()(x), m.eval()(x))

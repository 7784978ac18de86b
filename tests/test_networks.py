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


# ----------------------------------------------------------------------------------------------------------------
# the channels-last CPU paths (the DM step's network on a CPU): instance norm and the fused ReLU + 2x2 average pool

CL = torch.channels_last


@pytest.mark.parametrize('aten_from_hw', [10 ** 9, 1])  # our statistics (small maps), ATen's (large maps)
def test_channels_last_instance_norm_gradients_are_exact(monkeypatch, aten_from_hw):
    # gradcheck in float64 against finite differences: x, weight and bias, both forward kernels
    monkeypatch.setattr(networks, '_ATEN_FROM_HW', aten_from_hw)
    x = (torch.randn(2, 3, 4, 5, generator=gen(1), dtype=torch.float64) * 2 + 1).contiguous(memory_format=CL)
    w = torch.rand(3, generator=gen(2), dtype=torch.float64) + 0.5
    b = torch.randn(3, generator=gen(3), dtype=torch.float64)
    inputs = tuple(t.requires_grad_(True) for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda *a: networks.channels_last_instance_norm(*a, 1e-5), inputs)


@pytest.mark.parametrize('hw', [32, 16, 7])  # 32 x 32 = 1024 pixels: ATen's forward kernel; fewer: ours
def test_instance_norm_on_channels_last_maps_matches_group_norm(hw):
    # the module's fast path against GroupNorm's own kernel in float64: values and all three gradients
    norm = networks.InstanceNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=gen(2))
        norm.bias.normal_(generator=gen(3))
    x = (torch.randn(5, 6, hw, hw, generator=gen(4)) * 3 + 1).contiguous(memory_format=CL)
    grad = torch.randn(5, 6, hw, hw, generator=gen(5))

    def run(module, inp):
        inp = inp.detach().requires_grad_(True)
        module.zero_grad()
        out = module(inp)
        out.backward(grad.to(out.dtype))
        return [out.detach(), inp.grad, module.weight.grad, module.bias.grad], out

    got, out = run(norm, x)
    reference = nn.GroupNorm(6, 6).double()
    reference.load_state_dict(norm.state_dict())
    ref, _ = run(reference, x.double())
    assert out.is_contiguous(memory_format=CL) and got[1].is_contiguous(memory_format=CL)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5 * float(r.abs().max()))


def test_instance_norm_takes_group_norms_kernel_off_the_channels_last_cpu_path():
    # NCHW maps (evaluation, DC, DiM) and float64 go through GroupNorm itself: bit for bit its numbers
    norm = networks.InstanceNorm(4)
    with torch.no_grad():
        norm.bias.normal_(generator=gen(1))
    for x in (torch.randn(3, 4, 8, 8, generator=gen(2)),
              torch.randn(3, 4, 8, 8, generator=gen(3), dtype=torch.float64).contiguous(memory_format=CL)):
        assert torch.equal(norm.to(x.dtype)(x), F.group_norm(x, 4, norm.weight, norm.bias, 1e-5))


def _convnet_pair():
    """The same ConvNet twice, channels-last (fast paths) and NCHW (the layers' own kernels)."""
    fast = get_network('ConvNet', 3, K, 32, generator=gen()).to(memory_format=CL)
    plain = get_network('ConvNet', 3, K, 32, generator=gen())
    return fast, plain


def test_channels_last_convnet_matches_the_plain_one_forward_and_backward():
    fast, plain = _convnet_pair()
    x0 = torch.randn(6, 3, 32, 32, generator=gen(1))
    outs = []
    for net in (fast, plain):
        x = x0.clone().requires_grad_(True)
        out = net(x)
        out.square().sum().backward()
        conv_biases = {f'features.{i}.bias' for i, m in enumerate(net.features) if isinstance(m, nn.Conv2d)}
        outs.append([out.detach(), x.grad] + [p.grad for n, p in net.named_parameters() if n not in conv_biases])
    for a, b in zip(*outs):  # a conv bias before a norm has no gradient (0 ± rounding): left out
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))


def _relu_pool_layers():
    return nn.Sequential(nn.ReLU(inplace=True), nn.AvgPool2d(2, 2))


@pytest.mark.parametrize('hw', [32, 8])
def test_fused_relu_avg_pool_is_bit_for_bit_the_two_layers(hw):
    z0 = torch.randn(4, 5, hw, hw, generator=gen(1)).contiguous(memory_format=CL)
    grad = torch.randn(4, 5, hw // 2, hw // 2, generator=gen(2))
    results = []
    for fuse in (True, False):
        z = z0.clone().requires_grad_(True)
        pre = z * 1.0  # a non-leaf map, as a norm's output, so that the ReLU may work in place
        out = networks.run_layers(_relu_pool_layers(), pre) if fuse else _relu_pool_layers()(pre)
        assert (out.grad_fn.name() == '_ReLUAvgPoolBackward') == fuse
        out.backward(grad)
        results.append((out.detach(), z.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize('case', ['no grad', 'NCHW', 'odd size', 'max pool', 'stride 1', 'ReLU not in place'])
def test_relu_avg_pool_fuses_only_where_it_is_exact(case):
    layers = _relu_pool_layers()
    x = torch.randn(2, 3, 8, 8, generator=gen(1), requires_grad=True).contiguous(memory_format=CL) * 1.0
    if case == 'NCHW':
        x = x.contiguous()
    elif case == 'odd size':
        x = x[:, :, :7, :7].contiguous(memory_format=CL)
    elif case == 'max pool':
        layers[1] = nn.MaxPool2d(2, 2)
    elif case == 'stride 1':
        layers[1] = nn.AvgPool2d(2, 1)
    elif case == 'ReLU not in place':
        layers[0] = nn.ReLU()
    if case == 'no grad':
        with torch.no_grad():
            assert not networks._fusable(layers, 0, x)
    else:
        assert not networks._fusable(layers, 0, x)
    assert networks._fusable(_relu_pool_layers(), 0, torch.randn(2, 3, 8, 8, requires_grad=True).contiguous(
        memory_format=CL) * 1.0)


def test_channels_last_is_read_from_strides_even_under_vmap():
    x = torch.randn(2, 3, 4, 4)
    assert networks._channels_last(x.contiguous(memory_format=CL)) and not networks._channels_last(x)
    assert not networks._channels_last(torch.randn(2, 1, 4, 4).contiguous(memory_format=CL))  # NCHW as well
    # networks trained together (torch.func.vmap) take the layers' own kernels, without asking is_contiguous
    net = get_network('ConvNet', 3, K, 32, generator=gen())
    params = {k: torch.stack([v, v]) for k, v in net.named_parameters()}
    xb = torch.randn(4, 3, 32, 32, generator=gen(1))
    out = torch.func.vmap(lambda p, x: torch.func.functional_call(net, p, (x,)))(params, torch.stack([xb, xb]))
    torch.testing.assert_close(out, torch.stack([net(xb), net(xb)]).detach())


# the frozen first block (conv -> instance norm -> ReLU -> 2x2 average pool) of the DM step's network on a CPU

def _frozen_block(channel, padding, bias=True, norm_seed=None):
    """A frozen conv(channel -> 8, 3x3) -> InstanceNorm -> ReLU -> 2x2 average pool, channels-last weights;
    norm_seed: random γ (some exactly 0, some negative) and β instead of the default 1 and 0."""
    block = nn.Sequential(nn.Conv2d(channel, 8, 3, padding=padding, bias=bias), networks.InstanceNorm(8),
                          nn.ReLU(inplace=True), nn.AvgPool2d(2, 2))
    init_weights(block, gen(1))
    if norm_seed is not None:
        with torch.no_grad():
            block[1].weight.normal_(generator=gen(norm_seed))[::3] = 0
            block[1].bias.normal_(generator=gen(norm_seed + 1))
    return block.to(memory_format=CL).requires_grad_(False)


def _run_block(block, s0, grad, fuse):
    s = s0.detach().clone().requires_grad_(True)
    out = networks.run_layers(block, s) if fuse else block(s)
    assert (out.grad_fn.name() == '_ConvNormReLUPoolBackward') == fuse
    out.backward(grad.to(out.dtype))
    return out.detach(), s.grad


BLOCK_CASES = [(3, 1, 32, True), (1, 3, 28, True), (3, 1, 16, False)]  # RGB, grey padded to 32, no conv bias


@pytest.mark.parametrize('channel,padding,size,bias', BLOCK_CASES, ids=['rgb', 'grey', 'no-bias'])
@pytest.mark.parametrize('norm_seed', [None, 5])
@pytest.mark.parametrize('chunk', [32, 4])  # the block's chunks of images: one, or 4 + 2
def test_frozen_first_block_forward_is_the_layers_and_its_gradient_is_exact(monkeypatch, channel, padding, size,
                                                                            bias, norm_seed, chunk):
    # forward: bit for bit the four layers on each chunk of images; the input gradient: a different formula,
    # checked against float64
    monkeypatch.setattr(networks, '_BLOCK_CHUNK', chunk)
    block = _frozen_block(channel, padding, bias, norm_seed)
    s0 = torch.randn(6, channel, size, size, generator=gen(2)) * 2 + 0.5
    out_size = size + 2 * padding - 2
    grad = torch.randn(6, 8, out_size // 2, out_size // 2, generator=gen(3))
    fused, layers = _run_block(block, s0, grad, True), _run_block(block, s0, grad, False)
    ref = _run_block(_frozen_block(channel, padding, bias, norm_seed).double(), s0.double(), grad, False)
    assert torch.equal(fused[0], torch.cat([block(part) for part in s0.split(chunk)]))
    torch.testing.assert_close(fused[0], layers[0])  # a convolution's rounding may depend on the batch size
    scale = float(ref[1].abs().max())
    for got in (fused, layers):
        torch.testing.assert_close(got[1].double(), ref[1], rtol=1e-4, atol=1e-5 * scale)


def test_frozen_first_block_gradcheck():
    # finite differences in float64 on a small map (our statistics), γ with a zero and a negative entry
    block = _frozen_block(2, 1, norm_seed=7).double()
    s = (torch.randn(2, 2, 6, 6, generator=gen(4), dtype=torch.float64) * 2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: networks.conv_norm_relu_pool(x, block[0], block[1]), (s,))


@pytest.mark.parametrize('case', ['no grad', 'trained weights', 'NCHW weights', 'stride 2', 'batch norm',
                                  'wide patches', 'odd size', 'max pool', 'autocast'])
def test_first_block_fuses_only_where_it_applies(case):
    channel, size = (8 if case == 'wide patches' else 3), (9 if case == 'odd size' else 8)
    block = _frozen_block(channel, 1)
    s = torch.randn(2, channel, size, size, generator=gen(1), requires_grad=True)
    assert case == 'odd size' or networks._block_fusable(_frozen_block(channel, 1), 0, s) == (case != 'wide patches')
    if case == 'trained weights':
        block[0].weight.requires_grad_(True)
    elif case == 'NCHW weights':
        block = block.to(memory_format=torch.contiguous_format)
    elif case == 'stride 2':
        block[0].stride = (2, 2)
    elif case == 'batch norm':
        block[1] = nn.BatchNorm2d(8).requires_grad_(False)
    elif case == 'max pool':
        block[3] = nn.MaxPool2d(2, 2)
    if case == 'no grad':
        with torch.no_grad():
            assert not networks._block_fusable(block, 0, s)
    elif case == 'autocast':
        with torch.autocast('cpu', torch.bfloat16):
            assert not networks._block_fusable(block, 0, s)
    else:
        assert not networks._block_fusable(block, 0, s)


def test_frozen_convnet_embeds_an_empty_batch():
    # the layers' own path (the fused block's matrices have no shape without images): an empty gradient
    net = _convnet_pair()[0].requires_grad_(False)
    x = torch.zeros(0, 3, 32, 32, requires_grad=True)
    emb = net.embed(x)
    emb.sum().backward()
    assert emb.shape == (0, 2048) and x.grad.shape == x.shape


def test_frozen_convnet_takes_the_fused_first_block_with_the_same_embedding():
    # the DM step's network on a CPU: channels-last, frozen; embed runs the first block fused, then the rest
    fast, plain = _convnet_pair()
    for net in (fast, plain):
        net.requires_grad_(False)
    x0 = torch.randn(4, 3, 32, 32, generator=gen(1))
    got, ref = [], []
    for net, out in ((fast, got), (plain, ref)):
        x = x0.clone().requires_grad_(True)
        emb = net.embed(x)
        emb.square().sum().backward()
        out += [emb.detach(), x.grad]
    seen, stack = set(), [fast.embed(x0.clone().requires_grad_(True)).grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack += [f for f, _ in node.next_functions]
    names = [node.name() for node in seen]
    assert names.count('_ConvNormReLUPoolBackward') == 1 and names.count('_ReLUAvgPoolBackward') == 2
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))

"""Every network: the classifiers and their factories, and the GAN's generator and critic (`define_gan`;
trained by gan.py). Conventions: docs/design.md, Networks.

DC family (DC / DSA / DM / CL): `get_network(name, ...)` with the names in NETWORKS.
DiM family: `define_model(name, ...)` with DiM's lower-case names in DIM_NETWORKS; the DiM ResNet-10s and
DenseNet are also reachable from get_network as ResNet10, ResNet10_AP and DenseNet.

Every model has forward(x) -> logits and embed(x) -> the flattened input of its final linear layer (what DM
matches). Models are built on the meta device and initialised by init_weights from an explicit torch.Generator,
so building a network never touches the global RNG (unlike the original factory, which reseeded it from
the clock) and a seed fixes every initial weight.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------------------
# shape bookkeeping and layer helpers

def _pair(im_size):
    if isinstance(im_size, int):
        return (im_size, im_size)
    h, w = im_size
    return (int(h), int(w))


def _conv_out(s, k, stride=1, pad=0):
    return (s + 2 * pad - k) // stride + 1


def _check_map(net, h, w, im_size):
    if h < 1 or w < 1:
        raise ValueError(f'{net}: input {im_size[0]}x{im_size[1]} shrinks to a {h}x{w} feature map; '
                         f'use a larger im_size or a shallower network')


def instance_norm(c):
    return InstanceNorm(c)


class InstanceNorm(nn.GroupNorm):
    """GroupNorm with one group per channel: instance norm (biased variance, eps 1e-5), with GroupNorm's parameters
    and state-dict keys, as the reference builds it. On CPU GroupNorm measured faster than nn.InstanceNorm2d and
    F.instance_norm (which reshape to a batch-norm call), with the same numbers.

    A channels-last float32 CPU map (the DM step's network on a CPU) goes through channels_last_instance_norm:
    ATen's channels-last group-norm kernels vectorise along the channels of a group, one channel here, so they
    run one float at a time. Every other map, NCHW ones included, takes GroupNorm's own kernel.
    """

    def __init__(self, c):
        super().__init__(c, c, affine=True)

    def forward(self, x):
        if x.device.type == 'cpu' and x.dtype == torch.float32 and _channels_last(x):
            return channels_last_instance_norm(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def _channels_last(x):
    """A 4-d map in channels-last memory (N, H, W, C) and not also NCHW, read from its strides: under
    torch.func.vmap (networks trained together) a tensor cannot be asked whether it is contiguous in another
    memory format."""
    return x.dim() == 4 and x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1 and _dense_channels_last(x)


def _dense_channels_last(x):
    """The strides of a dense channels-last 4-d tensor, on every dimension of size > 1."""
    n, c, h, w = x.shape
    dense = (h * w * c, 1, w * c, c)
    return all(s == d for s, d, size in zip(x.stride(), dense, x.shape) if size > 1)


def channels_last_instance_norm(x, weight, bias, eps=1e-5):
    """Instance norm of a channels-last N x C x H x W CPU tensor, differentiable in x, weight and bias: the numbers
    of F.group_norm(x, C, weight, bias, eps) to float rounding, several times faster there (docs/benchmarks.md)."""
    return _ChannelsLastInstanceNorm.apply(x, weight, bias, eps)


def _rows(x):
    """Channels-last N x C x H x W memory seen as N x HW x C (a view): a reduction over dim 1 runs vectorised
    along the channels."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w, c)


# From this many pixels per map on, ATen's channels-last forward parallelises over the pixels and is fast
_ATEN_FROM_HW = 1024


def _instance_norm_forward(x, weight, bias, eps):
    """(y, μ, rstd) of instance norm on a channels-last map, μ and rstd N x C."""
    n, c, h, w = x.shape
    if h * w >= _ATEN_FROM_HW:
        return torch.native_group_norm(x, weight, bias, n, c, h * w, c, eps)
    rows, y = _rows(x), torch.empty_like(x)  # y a tensor of its own, not a view: ReLU works in place on it
    mean = rows.mean(1)
    d = torch.sub(rows, mean[:, None], out=_rows(y))
    rstd = torch.linalg.vecdot(d, d, dim=1).div_(h * w).add_(eps).rsqrt_()
    d.mul_((rstd * weight)[:, None]).add_(bias)
    return y, mean, rstd


class _ChannelsLastInstanceNorm(torch.autograd.Function):
    """y = (x − μ) · rstd · γ + β per image and channel, μ and rstd over H×W.

    Backward, with g = ∂L/∂y, s1 = Σ g and s2 = Σ g (x − μ) over H×W, a = rstd · γ:
        ∂L/∂x = a g − a rstd² s2 / HW · (x − μ) − a s1 / HW,   ∂L/∂γ = Σ_n rstd s2,   ∂L/∂β = Σ_n s1.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = _instance_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, mean, rstd, weight)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, mean, rstd, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        g, rows, hw = _rows(grad.contiguous(memory_format=torch.channels_last)), _rows(x), h * w
        s1 = g.sum(1)
        s2 = torch.linalg.vecdot(g, rows, dim=1) - mean * s1
        a = rstd * weight
        coef_x = -a * rstd.square() * s2 / hw
        grad_x = torch.addcmul((-a * s1 / hw - coef_x * mean)[:, None], g, a[:, None])
        grad_x.addcmul_(rows, coef_x[:, None])
        grad_w = (rstd * s2).sum(0) if ctx.needs_input_grad[1] else None
        grad_b = s1.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x.view(n, h, w, c).permute(0, 3, 1, 2), grad_w, grad_b, None


def _relu_pool_at(layers, i):
    """Whether layers[i], layers[i + 1] are an in-place ReLU and a 2x2 average pool (stride 2, no padding)."""
    if (i + 1 >= len(layers) or type(layers[i]) is not nn.ReLU or not layers[i].inplace
            or type(layers[i + 1]) is not nn.AvgPool2d):
        return False
    pool = layers[i + 1]
    return (_pair(pool.kernel_size) == (2, 2) and _pair(pool.stride) == (2, 2)
            and _pair(pool.padding) == (0, 0) and not pool.ceil_mode and pool.divisor_override is None)


def _cpu_map_needing_grad(x):
    """A float32 CPU tensor that needs a gradient here (without one there is no backward to save), outside
    torch.func's transforms (a custom autograd function there needs rules of its own)."""
    return (torch.is_grad_enabled() and x.requires_grad and x.device.type == 'cpu' and x.dtype == torch.float32
            and not torch._C._functorch.is_functorch_wrapped_tensor(x))


def _fusable(layers, i, x):
    """Whether layers[i], layers[i + 1] are an in-place ReLU and a 2x2 average pool that relu_avg_pool can run on
    x: a channels-last float32 CPU map of even size that needs a gradient."""
    return (_relu_pool_at(layers, i) and _cpu_map_needing_grad(x) and _channels_last(x)
            and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0)


# conv_norm_relu_pool handles a convolution with at most this many inputs per output (in channels x kernel area):
# its backward multiplies matrices of this width per image (a network's first convolution: 27 for RGB, 9 for grey)
_BLOCK_MAX_PATCH = 64


def _block_fusable(layers, i, x):
    """Whether layers[i : i + 4] are conv -> InstanceNorm -> in-place ReLU -> 2x2 average pool that
    conv_norm_relu_pool can run on x: no parameter needs a gradient (a frozen network, as the DM step's), a
    stride-1 zero-padded convolution with few inputs per output and channels-last weights (so that its output is
    channels-last, as the unfused layers' would be), a non-empty batch that needs a gradient, an even-sized
    output, and no autocast (which would run the convolution in bfloat16)."""
    if (i + 3 >= len(layers) or type(layers[i]) is not nn.Conv2d or type(layers[i + 1]) is not InstanceNorm
            or not _relu_pool_at(layers, i + 2)):
        return False
    conv, norm = layers[i], layers[i + 1]
    (kh, kw), weight = conv.kernel_size, conv.weight
    if (conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != 'zeros'
            or isinstance(conv.padding, str) or conv.in_channels * kh * kw > _BLOCK_MAX_PATCH
            or any(p.requires_grad for p in (*conv.parameters(), *norm.parameters()))):
        return False
    if not (_cpu_map_needing_grad(x) and x.dim() == 4 and len(x) and weight.dtype == torch.float32
            and weight.stride(1) == 1 and _dense_channels_last(weight) and not torch.is_autocast_enabled('cpu')):
        return False
    h, w = (_conv_out(s, k, 1, p) for s, k, p in zip(x.shape[2:], conv.kernel_size, conv.padding))
    return h % 2 == 0 and w % 2 == 0 and h * w > 1


def run_layers(layers, x):
    """x through layers in turn; where the pattern and the map allow it, a frozen conv -> instance norm -> ReLU ->
    2x2 average pool runs as conv_norm_relu_pool and a ReLU followed by a 2x2 average pool as relu_avg_pool."""
    i = 0
    while i < len(layers):
        if _block_fusable(layers, i, x):
            x, i = conv_norm_relu_pool(x, layers[i], layers[i + 1]), i + 4
        elif _fusable(layers, i, x):
            x, i = relu_avg_pool(x), i + 2
        else:
            x, i = layers[i](x), i + 1
    return x


def relu_avg_pool(z):
    """avg_pool2d(relu(z), 2), the ReLU in place on z as nn.ReLU(inplace=True) does, for a channels-last CPU map z.
    The same numbers forward and backward as the two layers; the backward is one pass over the map instead of
    three (the pool's zero-filled gradient, its scatter, the ReLU's mask), docs/benchmarks.md."""
    return _ReLUAvgPool.apply(z)[1]


class _ReLUAvgPool(torch.autograd.Function):
    """r = relu(z) in place, p = 2x2 average of r. Windows do not overlap, so ∂L/∂z at a position is [r > 0] times
    a quarter of ∂L/∂p at its window: a quarter is exact in floating point, as the pool's own backward divides by 4.
    r is returned because autograd requires a tensor modified in place to be an output; nothing reads it."""

    @staticmethod
    def forward(ctx, z):
        ctx.set_materialize_grads(False)
        ctx.mark_dirty(z)
        r = z.relu_()
        ctx.save_for_backward(r)
        return r, F.avg_pool2d(r, 2, 2)

    @staticmethod
    def backward(ctx, grad_r, grad_p):
        r, = ctx.saved_tensors
        grad = _relu_avg_pool_grad(grad_p, r)
        if grad_r is not None:
            grad = grad + torch.ops.aten.threshold_backward(grad_r, r, 0)
        return grad


def _relu_avg_pool_grad(grad_p, r):
    """∂L/∂z for p = avg_pool2d(relu(z), 2) from ∂L/∂p and r = relu(z), a channels-last map: [r > 0] times a
    quarter of ∂L/∂p at its window, in one pass (threshold_backward on r seen as windows, ∂L/∂p broadcast)."""
    n, c, h, w = r.shape
    quarter = (grad_p * 0.25).contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    windows = (n, h // 2, 2, w // 2, 2, c)  # channels-last memory of r, each 2x2 window on dims 2 and 4
    grad = torch.ops.aten.threshold_backward(quarter.view(n, h // 2, 1, w // 2, 1, c).expand(windows),
                                             r.permute(0, 2, 3, 1).view(windows), 0)
    return grad.view(n, h, w, c).permute(0, 3, 1, 2)


def conv_norm_relu_pool(s, conv, norm):
    """avg_pool2d(relu(norm(conv(s))), 2) for a frozen conv with few inputs per output and an InstanceNorm (the
    DM step's network on a CPU, its first block), differentiable in s alone: the layers' own forward on chunks of
    images, the same numbers, and a backward that works on each image's patches instead of ATen's convolution
    backward and instance norm's (docs/benchmarks.md). The convolution's output, as large as the block's saved
    ReLU output, lives for one chunk at a time, never for the whole batch."""
    return _ConvNormReLUPool.apply(s, conv.weight, conv.bias, norm.weight, norm.bias, norm.eps, conv.padding)


class _ConvNormReLUPool(torch.autograd.Function):
    """p = avg_pool2d(r, 2), r = relu(y), y = (x − μ) · rstd · γ + β per channel of each image (instance norm),
    x = conv(s): x = P Wᵀ + b over the map, P the image's patches (HW x K, K = in channels x kernel area), W the
    C x K weight matrix. Only s needs a gradient.

    Backward, with g = ∂L/∂y (relu_avg_pool's, from r), a = rstd · γ, and per image and channel s1 = Σ g and
    t = Σ ∂L/∂p · p − β s1 (= γ rstd Σ g (x − μ): y = r wherever g ≠ 0, and Σ g r = Σ ∂L/∂p · p over the pooled
    map; 0 where γ = 0):
        ∂L/∂x = a g − c (x − μ) − a s1 / HW,   c = rstd² t / HW   (instance norm's backward),
    and ∂L/∂s is the transposed convolution of ∂L/∂x, the fold of ∂L/∂x · W, where x − μ = P Wᵀ + b − μ gives
        ∂L/∂x · W = g diag(a) W − P (Wᵀ diag(c) W) − (c (b − μ) + a s1 / HW) W
    per image: one product with a C x K matrix over the map, the rest K x K. The fold is a transposed convolution
    with a one-hot kernel.
    """

    @staticmethod
    def forward(ctx, s, conv_w, conv_b, gamma, beta, eps, padding):
        # every image is its own, forward and backward: in chunks, a chunk's maps stay in the cache from one pass
        # to the next (measured faster than all images at once) and no temporary is the size of the batch's maps
        chunks = [_conv_norm_relu_pool_forward(part, conv_w, conv_b, gamma, beta, eps, padding)
                  for part in s.split(_BLOCK_CHUNK)]
        rs, ps, means, rstds = zip(*chunks)
        p, mean, rstd = torch.cat(ps), torch.cat(means), torch.cat(rstds)
        ctx.padding = padding
        ctx.save_for_backward(s, p, mean, rstd, conv_w, conv_b, gamma, beta, *rs)
        return p

    @staticmethod
    def backward(ctx, grad_p):
        s, p, mean, rstd, conv_w, conv_b, gamma, beta, *rs = ctx.saved_tensors
        c, cin, kh, kw = conv_w.shape
        wm = conv_w.permute(0, 2, 3, 1).reshape(c, -1)  # C x K, K ordered (kernel row, kernel column, channel)
        bias = torch.zeros_like(beta) if conv_b is None else conv_b
        one_hot = torch.eye(kh * kw * cin, dtype=wm.dtype).view(-1, kh, kw, cin).permute(0, 3, 1, 2)  # the fold
        grad_s = [_conv_norm_relu_pool_grad(*parts, r, wm, bias, gamma, beta, one_hot, ctx.padding)
                  for *parts, r in zip(*(t.split(_BLOCK_CHUNK) for t in (grad_p, s, p, mean, rstd)), rs)]
        return torch.cat(grad_s), None, None, None, None, None, None


_BLOCK_CHUNK = 32  # images per chunk of _ConvNormReLUPool's forward and backward


def _conv_norm_relu_pool_forward(s, conv_w, conv_b, gamma, beta, eps, padding):
    """The four layers on a chunk of images: (r, p, μ, rstd), r the ReLU's output and p the pooled map."""
    x = F.conv2d(s, conv_w, conv_b, padding=padding)
    # channels-last already (the weights are, _block_fusable); _instance_norm_forward relies on it
    y, mean, rstd = _instance_norm_forward(x.contiguous(memory_format=torch.channels_last), gamma, beta, eps)
    r = y.relu_()
    return r, F.avg_pool2d(r, 2, 2), mean, rstd


def _conv_norm_relu_pool_grad(grad_p, s, p, mean, rstd, r, wm, bias, gamma, beta, one_hot, padding):
    """∂L/∂s of _ConvNormReLUPool for a chunk of images (formula in its docstring); wm: the weight as a C x K
    matrix, one_hot: the transposed convolution's kernel that folds K-wide columns back into images."""
    n, c, h, w = r.shape
    g = _rows(_relu_avg_pool_grad(grad_p, r))  # N x HW x C
    s1 = g.sum(1)
    t = torch.linalg.vecdot(_rows(grad_p.contiguous(memory_format=torch.channels_last)), _rows(p), dim=1)
    t -= beta * s1
    a = rstd * gamma
    coef = torch.where(gamma != 0, rstd.square() * t / (h * w), 0)
    const = ((bias - mean) * coef + a * s1 / (h * w)) @ wm  # N x K
    cols = torch.baddbmm(-const[:, None], _patches(s, one_hot.shape[2:], padding),
                         (wm.t() * coef[:, None, :]) @ wm, alpha=-1)
    cols = torch.baddbmm(cols, g, a[:, :, None] * wm)  # N x HW x K
    return F.conv_transpose2d(cols.view(n, h, w, -1).permute(0, 3, 1, 2), one_hot, padding=padding)


def _patches(s, kernel_size, padding):
    """The kh x kw patches of each image of s (N x C x H x W) at every position of a stride-1 convolution with
    this zero padding: N x positions x (kh · kw · C), ordered (kernel row, kernel column, channel). A strided view
    of the padded channels-last images, copied once (F.unfold's channel-first order measured slower here)."""
    (kh, kw), (ph, pw) = kernel_size, padding
    padded = F.pad(s, (pw, pw, ph, ph)).permute(0, 2, 3, 1).contiguous()
    n, hp, wp, c = padded.shape
    ho, wo = hp - kh + 1, wp - kw + 1
    view = padded.as_strided((n, ho, wo, kh, kw, c), (hp * wp * c, wp * c, c, wp * c, c, 1))
    return view.reshape(n, ho * wo, kh * kw * c)


def _norm2d(kind, c, hw=None):
    if kind == 'instancenorm':
        return instance_norm(c)
    if kind == 'batchnorm':
        return nn.BatchNorm2d(c)
    if kind == 'layernorm':  # over (C, h, w) of the map it normalises, as the reference
        return nn.LayerNorm([c, *hw], elementwise_affine=True)
    if kind == 'groupnorm':
        return nn.GroupNorm(4, c, affine=True)
    if kind == 'none':
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use one of instancenorm, batchnorm, layernorm, groupnorm, none")


def _act(kind):
    if kind == 'relu':
        return nn.ReLU(inplace=True)
    if kind == 'sigmoid':
        return nn.Sigmoid()
    if kind == 'leakyrelu':
        return nn.LeakyReLU(0.01)
    if kind == 'swish':
        return nn.SiLU()  # x * sigmoid(x)
    raise ValueError(f"unknown activation {kind!r}; use one of relu, sigmoid, leakyrelu, swish")


# ----------------------------------------------------------------------------------------------------------------
# DC family. Attribute names follow the reference so its checkpoints load.

class ConvNet(nn.Module):
    """depth x [conv 3x3 -> norm -> act -> pool] -> linear. Also the DiM `convnet`."""

    def __init__(self, channel, num_classes, im_size=(32, 32), net_width=128, net_depth=3, net_act='relu',
                 net_norm='instancenorm', net_pooling='avgpooling'):
        super().__init__()
        if net_pooling not in ('avgpooling', 'maxpooling', 'none'):
            raise ValueError(f"unknown pooling {net_pooling!r}; use one of avgpooling, maxpooling, none")
        if net_depth < 1:
            raise ValueError(f'net_depth must be >= 1, got {net_depth}')
        layers, self.block_ends = [], []
        h, w = im_size
        c = channel
        for d in range(net_depth):
            pad = 3 if channel == 1 and d == 0 else 1  # 28x28 grey -> 32x32 maps, so shapes match CIFAR
            layers.append(nn.Conv2d(c, net_width, 3, padding=pad))
            h, w, c = _conv_out(h, 3, 1, pad), _conv_out(w, 3, 1, pad), net_width
            if net_norm != 'none':
                layers.append(_norm2d(net_norm, c, (h, w)))
            layers.append(_act(net_act))
            if net_pooling != 'none':
                layers.append(nn.AvgPool2d(2, 2) if net_pooling == 'avgpooling' else nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            self.block_ends.append(len(layers))
        _check_map('ConvNet', h, w, im_size)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * h * w, num_classes)

    def block_features(self, x):
        """Output of every block (DiM's per-block features)."""
        outs, start = [], 0
        for end in self.block_ends:
            x = run_layers(self.features[start:end], x)
            outs.append(x)
            start = end
        return outs

    def embed(self, x):
        return run_layers(self.features, x).flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))


def cpu_channels_last(net):
    """Whether `net` trains and tests faster with channels-last weights on a CPU: a ConvNet with pooling whose
    normalisation is instance norm, batch norm or none (up to ~25 % faster, bench/eval_layout.py: oneDNN's
    channels-last convolutions, and InstanceNorm's and relu_avg_pool's channels-last paths). Layer norm and the
    ResNets measured slower; group norm, the unpooled ConvNet and the other architectures not reliably faster."""
    return (isinstance(net, ConvNet) and any(isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)) for m in net.features)
            and not any(type(m) in (nn.LayerNorm, nn.GroupNorm) for m in net.features))


class MLP(nn.Module):
    def __init__(self, channel, num_classes, im_size=(32, 32)):
        super().__init__()
        self.fc_1 = nn.Linear(channel * im_size[0] * im_size[1], 128)
        self.fc_2 = nn.Linear(128, 128)
        self.fc_3 = nn.Linear(128, num_classes)

    def embed(self, x):
        return F.relu(self.fc_2(F.relu(self.fc_1(x.flatten(1)))))

    def forward(self, x):
        return self.fc_3(self.embed(x))


class LeNet(nn.Module):
    def __init__(self, channel, num_classes, im_size=(32, 32)):
        super().__init__()
        pad = 2 if channel == 1 else 0
        self.features = nn.Sequential(
            nn.Conv2d(channel, 6, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2))
        h, w = (_conv_out(_conv_out(s, 5, 1, pad) // 2, 5) // 2 for s in im_size)
        _check_map('LeNet', h, w, im_size)
        self.fc_1 = nn.Linear(16 * h * w, 120)
        self.fc_2 = nn.Linear(120, 84)
        self.fc_3 = nn.Linear(84, num_classes)

    def embed(self, x):
        x = self.features(x).flatten(1)
        return F.relu(self.fc_2(F.relu(self.fc_1(x))))

    def forward(self, x):
        return self.fc_3(self.embed(x))


class AlexNet(nn.Module):
    """AlexNet (norm 'none') and AlexNetBN (norm 'batchnorm': BN between every conv and its ReLU)."""

    def __init__(self, channel, num_classes, im_size=(32, 32), norm='none'):
        super().__init__()
        if norm not in ('none', 'batchnorm'):
            raise ValueError(f"AlexNet norm must be 'none' or 'batchnorm', got {norm!r}")
        pad = 4 if channel == 1 else 2
        # (out channels, kernel, padding, pool after)
        cfg = [(128, 5, pad, True), (192, 5, 2, True), (256, 3, 1, False), (192, 3, 1, False), (192, 3, 1, True)]
        layers, c = [], channel
        h, w = im_size
        for out, k, p, pool in cfg:
            layers.append(nn.Conv2d(c, out, k, padding=p))
            if norm == 'batchnorm':
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            h, w, c = _conv_out(h, k, 1, p), _conv_out(w, k, 1, p), out
            if pool:
                layers.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
        _check_map('AlexNet', h, w, im_size)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c * h * w, num_classes)

    def embed(self, x):
        return self.features(x).flatten(1)

    def forward(self, x):
        return self.fc(self.embed(x))


class VGG11(nn.Module):
    """VGG11 (per-channel instance norm) and VGG11BN (norm 'batchnorm')."""
    cfg = [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M']

    def __init__(self, channel, num_classes, im_size=(32, 32), norm='instancenorm'):
        super().__init__()
        if norm not in ('instancenorm', 'batchnorm'):
            raise ValueError(f"VGG11 norm must be 'instancenorm' or 'batchnorm', got {norm!r}")
        layers, c = [], channel
        h, w = im_size
        for v in self.cfg:
            if v == 'M':
                layers.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            else:
                pad = 3 if channel == 1 and not layers else 1  # first conv: 28 -> 32
                layers += [nn.Conv2d(c, v, 3, padding=pad), _norm2d(norm, v), nn.ReLU(inplace=True)]
                h, w, c = _conv_out(h, 3, 1, pad), _conv_out(w, 3, 1, pad), v
        layers.append(nn.AvgPool2d(1, 1))  # the reference's no-op pool, kept so layer indices match
        _check_map('VGG11', h, w, im_size)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * h * w, num_classes)

    def embed(self, x):
        return self.features(x).flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))


class BasicBlock(nn.Module):
    """ResNet basic block, shared by the DC ResNet18 family and the DiM ResNets.

    ap=True is the '_AP' variant: convs never stride; a stride-2 block average-pools (2x2) the first conv's
    ReLU output, and its shortcut is conv 1x1 -> avgpool 2x2 -> norm.
    """

    def __init__(self, in_planes, planes, stride=1, norm='instancenorm', ap=False, bias=False):
        super().__init__()
        self.stride, self.ap = stride, ap
        conv_stride = 1 if ap else stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=conv_stride, padding=1, bias=bias)
        self.bn1 = _norm2d(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=bias)
        self.bn2 = _norm2d(norm, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            down = [nn.Conv2d(in_planes, planes, 1, stride=conv_stride, bias=bias)]
            if ap and stride != 1:
                down.append(nn.AvgPool2d(2, 2))
            self.shortcut = nn.Sequential(*down, _norm2d(norm, planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        if self.ap and self.stride != 1:
            out = F.avg_pool2d(out, 2, 2)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _block_out(s, stride, ap):
    # spatial size after a BasicBlock: 3x3 conv with padding 1 at `stride`, or 2x2 avg pooling for _AP
    return s // stride if ap else _conv_out(s, 3, stride, 1)


class ResNet18(nn.Module):
    """DC ResNet18 / ResNet18BN (CIFAR style, widths 64..512) and, with ap=True, ResNet18_AP / ResNet18BN_AP."""

    def __init__(self, channel, num_classes, im_size=(32, 32), norm='instancenorm', ap=False):
        super().__init__()
        if norm not in ('instancenorm', 'batchnorm'):
            raise ValueError(f"ResNet18 norm must be 'instancenorm' or 'batchnorm', got {norm!r}")
        self.ap = ap
        self.conv1 = nn.Conv2d(channel, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = _norm2d(norm, 64)
        h, w = im_size
        in_planes, stages = 64, []
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks = []
            for s in (stride, 1):
                blocks.append(BasicBlock(in_planes, planes, s, norm, ap))
                in_planes = planes
                h, w = _block_out(h, s, ap), _block_out(w, s, ap)
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        _check_map('ResNet18', h, w, im_size)
        # _AP flattens the whole final map; the plain net pools globally (= the reference's 4x4 pool at 28/32)
        self.classifier = nn.Linear(512 * h * w if ap else 512, num_classes)

    def embed(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if not self.ap:
            out = F.adaptive_avg_pool2d(out, 1)
        return out.flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))


# ----------------------------------------------------------------------------------------------------------------
# DiM family

class DiMResNet(nn.Module):
    """DiM's resnet10 / resnet18 and (ap=True) resnet10_ap / resnet18_ap.

    stem 'cifar': conv 3x3 (C->32) -> BN -> ReLU, n=(depth-2)//6 blocks per stage, widths 32..256.
    stem 'imagenet': conv 7x7 stride 2 -> BN -> ReLU -> maxpool 3x3/2 ([1,1,1,1] or [2,2,2,2] blocks, widths
    64..512); with ap=True: conv 7x7 stride 1 -> BN -> ReLU -> avgpool 4x4. Both end with global average pooling.
    The reference picks the stem from the dataset name (see resolve_stem); here it is an explicit argument.
    """
    _NORMS = {'batch': 'batchnorm', 'instance': 'instancenorm', 'none': 'none'}

    def __init__(self, channel, num_classes, im_size=(32, 32), depth=10, stem='cifar', ap=False, norm='batch'):
        super().__init__()
        if depth not in (10, 18):
            raise ValueError(f'DiMResNet depth must be 10 or 18 (no bottleneck depths), got {depth}')
        if stem not in ('cifar', 'imagenet'):
            raise ValueError(f"stem must be 'cifar' or 'imagenet' (resolve 'auto' with resolve_stem), got {stem!r}")
        if norm not in self._NORMS:
            raise ValueError(f"DiM ResNet norm must be one of batch, instance, none (spectral is not supported), "
                             f"got {norm!r}")
        kind, bias = self._NORMS[norm], norm == 'none'  # convs get a bias only without a norm
        h, w = im_size
        if stem == 'cifar':
            widths, counts = [32, 64, 128, 256], [(depth - 2) // 6] * 4
            self.conv1 = nn.Conv2d(channel, 32, 3, stride=1, padding=1, bias=bias)
            self.pool = nn.Identity()
        else:
            widths, counts = [64, 128, 256, 512], [{10: 1, 18: 2}[depth]] * 4
            if ap:
                self.conv1 = nn.Conv2d(channel, 64, 7, stride=1, padding=3, bias=bias)
                self.pool = nn.AvgPool2d(4, 4)
                h, w = h // 4, w // 4
            else:
                self.conv1 = nn.Conv2d(channel, 64, 7, stride=2, padding=3, bias=bias)
                self.pool = nn.MaxPool2d(3, 2, 1)
                h, w = (_conv_out(_conv_out(s, 7, 2, 3), 3, 2, 1) for s in (h, w))
        self.bn1 = _norm2d(kind, widths[0])
        in_planes, stages = widths[0], []
        for i, (planes, n) in enumerate(zip(widths, counts)):
            blocks = []
            for j in range(n):
                s = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, s, kind, ap, bias))
                in_planes = planes
                h, w = _block_out(h, s, ap), _block_out(w, s, ap)
                if h < 1 or w < 1:  # the _ap imagenet stem collapses 28x28 to 0x0
                    raise ValueError(f'DiM resnet{depth}{"_ap" if ap else ""} with the {stem} stem shrinks '
                                     f'{im_size[0]}x{im_size[1]} input to an empty map; use stem="cifar"')
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.classifier = nn.Linear(in_planes, num_classes)

    def _init_weights(self, g):
        """DiM's rule: conv weight N(0, 2/(k*k*out_channels)), BN 1/0; everything else PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                std = math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels))
                _fill(m.weight, g, lambda t: t.normal_(0.0, std, generator=g))
                if m.bias is not None:
                    _default_bias(m, g)
            else:
                _init_module(m, g)

    def block_features(self, x):
        """Stem output, then the output of each stage."""
        outs = [self.pool(F.relu(self.bn1(self.conv1(x))))]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            outs.append(layer(outs[-1]))
        return outs

    def embed(self, x):
        return F.adaptive_avg_pool2d(self.block_features(x)[-1], 1).flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))


class DenseLayer(nn.Module):
    """BN -> ReLU -> conv 1x1 (4g) -> BN -> ReLU -> conv 3x3 (g), concatenated with the input."""

    def __init__(self, in_planes, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    def __init__(self, in_planes, out_planes):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """DiM's `densenet` (CIFAR DenseNet, growth 12, blocks 6/12/24/16, reduction 0.5, ~1.0 M parameters).

    Changes from the reference: input channels from the argument, and global average pooling at the end
    (identical to its 4x4 pool at 32x32), so it runs at 28x28x1 and 64x64x3 too.
    """

    def __init__(self, channel, num_classes, im_size=(32, 32), growth=12, blocks=(6, 12, 24, 16), reduction=0.5):
        super().__init__()
        planes = 2 * growth
        self.conv1 = nn.Conv2d(channel, planes, 3, padding=1, bias=False)
        stages = []
        for i, n in enumerate(blocks):
            stages.append(nn.Sequential(*[DenseLayer(planes + j * growth, growth) for j in range(n)]))
            planes += n * growth
            if i < len(blocks) - 1:
                out = int(math.floor(planes * reduction))
                stages.append(Transition(planes, out))
                planes = out
        self.dense1, self.trans1, self.dense2, self.trans2, self.dense3, self.trans3, self.dense4 = stages
        h, w = (s // 2 ** (len(blocks) - 1) for s in im_size)
        _check_map('DenseNet', h, w, im_size)
        self.bn = nn.BatchNorm2d(planes)
        self.classifier = nn.Linear(planes, num_classes)

    def block_features(self, x):
        """Stem output, then the output of each dense block (transitions included)."""
        outs = [self.conv1(x)]
        for stage in ((self.dense1, self.trans1), (self.dense2, self.trans2), (self.dense3, self.trans3),
                      (self.dense4,)):
            out = outs[-1]
            for m in stage:
                out = m(out)
            outs.append(out)
        return outs

    def embed(self, x):
        out = F.relu(self.bn(self.block_features(x)[-1]))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return self.classifier(self.embed(x))


# ----------------------------------------------------------------------------------------------------------------
# initialisation: PyTorch's default distributions, drawn from an explicit generator

_CONV_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                nn.ConvTranspose3d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)  # _NormBase: BatchNorm* and InstanceNorm*


def _fill(t, g, draw):
    if t.is_meta:  # device='meta' builds shapes only (parameter counts, head sizes): nothing to draw
        return
    # draw on the generator's device (CPU by default) and copy, so a seed gives the same weights on any device
    tmp = torch.empty(t.shape, dtype=t.dtype, device=g.device if g is not None else 'cpu')
    draw(tmp)
    t.copy_(tmp)


def _default_bias(m, g):
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    _fill(m.bias, g, lambda t: t.uniform_(-bound, bound, generator=g))


def _init_module(m, g):
    """PyTorch's default init for the parameters and buffers owned directly by m."""
    if isinstance(m, _CONV_LINEAR):
        _fill(m.weight, g, lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=g))
        if m.bias is not None:
            _default_bias(m, g)
    elif isinstance(m, _NORMS):
        if getattr(m, 'weight', None) is not None:
            m.weight.fill_(1.0)
        if getattr(m, 'bias', None) is not None:
            m.bias.zero_()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            m.reset_running_stats()  # mean 0, var 1, num_batches_tracked 0
    elif isinstance(m, nn.Embedding):
        _fill(m.weight, g, lambda t: t.normal_(0.0, 1.0, generator=g))
        if m.padding_idx is not None:
            m.weight[m.padding_idx].zero_()
    elif next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None:
        # after to_empty() its tensors hold garbage; refuse rather than train from uninitialised memory
        raise ValueError(f'init_weights has no rule for {type(m).__name__}; add it to networks._init_module '
                         f'or give the model an _init_weights(generator) method')


def init_weights(model, generator=None):
    """(Re)initialise every parameter and buffer of model in place, drawing only from generator.

    Reproduces PyTorch's default initialisation (kaiming_uniform(a=sqrt(5)) weights, U(+-1/sqrt(fan_in)) biases,
    norm layers 1/0 with running stats reset). A module with an `_init_weights(generator)` method initialises its
    own subtree instead (DiM ResNets). generator=None draws from torch's global CPU generator.
    """
    def visit(m):
        if hasattr(m, '_init_weights'):
            m._init_weights(generator)
            return
        _init_module(m, generator)
        for child in m.children():
            visit(child)

    with torch.no_grad():
        visit(model)
    return model


# ----------------------------------------------------------------------------------------------------------------
# factory

_CONVNET_VARIANTS = {
    'ConvNet': {},
    'ConvNetD1': dict(net_depth=1), 'ConvNetD2': dict(net_depth=2), 'ConvNetD3': dict(net_depth=3),
    'ConvNetD4': dict(net_depth=4),
    'ConvNetW32': dict(net_width=32), 'ConvNetW64': dict(net_width=64), 'ConvNetW128': dict(net_width=128),
    'ConvNetW256': dict(net_width=256),
    'ConvNetAS': dict(net_act='sigmoid'), 'ConvNetAR': dict(net_act='relu'), 'ConvNetAL': dict(net_act='leakyrelu'),
    'ConvNetASwish': dict(net_act='swish'), 'ConvNetASwishBN': dict(net_act='swish', net_norm='batchnorm'),
    'ConvNetNN': dict(net_norm='none'), 'ConvNetBN': dict(net_norm='batchnorm'),
    'ConvNetLN': dict(net_norm='layernorm'), 'ConvNetIN': dict(net_norm='instancenorm'),
    'ConvNetGN': dict(net_norm='groupnorm'),
    'ConvNetNP': dict(net_pooling='none'), 'ConvNetMP': dict(net_pooling='maxpooling'),
    'ConvNetAP': dict(net_pooling='avgpooling'),
}

# name -> (constructor, preset keyword arguments); caller kwargs override the preset
_REGISTRY = {name: (ConvNet, kw) for name, kw in _CONVNET_VARIANTS.items()}
_REGISTRY.update({
    'MLP': (MLP, {}),
    'LeNet': (LeNet, {}),
    'AlexNet': (AlexNet, dict(norm='none')),
    'AlexNetBN': (AlexNet, dict(norm='batchnorm')),
    'VGG11': (VGG11, dict(norm='instancenorm')),
    'VGG11BN': (VGG11, dict(norm='batchnorm')),
    'ResNet18': (ResNet18, dict(norm='instancenorm')),
    'ResNet18BN': (ResNet18, dict(norm='batchnorm')),
    'ResNet18_AP': (ResNet18, dict(norm='instancenorm', ap=True)),
    'ResNet18BN_AP': (ResNet18, dict(norm='batchnorm', ap=True)),
    # DiM networks under project names (BatchNorm, DiM's init, stem='cifar' unless told otherwise)
    'ResNet10': (DiMResNet, dict(depth=10)),
    'ResNet10_AP': (DiMResNet, dict(depth=10, ap=True)),
    'DenseNet': (DenseNet, {}),
})
NETWORKS = list(_REGISTRY)

# DiM's define_model names. 'resnet18' here is DiM's (widths 32..256 with the cifar stem), not DC's ResNet18.
DIM_NETWORKS = {
    'convnet': (ConvNet, {}),
    'resnet10': (DiMResNet, dict(depth=10)),
    'resnet18': (DiMResNet, dict(depth=18)),
    'resnet10_ap': (DiMResNet, dict(depth=10, ap=True)),
    'resnet18_ap': (DiMResNet, dict(depth=18, ap=True)),
    'densenet': (DenseNet, {}),
}


def _build(cls, preset, channel, num_classes, im_size, device, generator, kwargs):
    im_size = _pair(im_size)
    with torch.device('meta'):  # no storage, no draws from the global RNG
        model = cls(channel, num_classes, im_size, **{**preset, **kwargs})
    model.to_empty(device=device)
    return init_weights(model, generator)


def get_network(name, channel, num_classes, im_size=(32, 32), device='cpu', generator=None, **kwargs):
    """A freshly initialised network by (case-sensitive) name; every initial weight comes from generator.

    kwargs go to the constructor, e.g. net_width=64 for the ConvNets or stem='imagenet' for ResNet10(_AP).
    device='meta' gives a storage-less model (shapes and parameter counts only) without drawing anything.
    """
    if name not in _REGISTRY:
        raise ValueError(f'unknown network {name!r}; valid names: {", ".join(NETWORKS)}')
    cls, preset = _REGISTRY[name]
    return _build(cls, preset, channel, num_classes, im_size, device, generator, kwargs)


def define_model(name, channel, num_classes, im_size=(32, 32), device='cpu', generator=None, stem='cifar',
                 **kwargs):
    """DiM's model factory by DiM name (DIM_NETWORKS). stem ('cifar' | 'imagenet') applies to the ResNets only."""
    if name not in DIM_NETWORKS:
        raise ValueError(f'unknown DiM model {name!r}; valid names: {", ".join(DIM_NETWORKS)}')
    cls, preset = DIM_NETWORKS[name]
    if cls is DiMResNet:
        kwargs = dict(kwargs, stem=stem)
    return _build(cls, preset, channel, num_classes, im_size, device, generator, kwargs)


def resolve_stem(resnet_stem, dataset):
    """--resnet_stem {auto,cifar,imagenet} -> 'cifar' | 'imagenet'. 'auto' is the reference rule (docs/design.md, D-B7):
    the CIFAR stem iff the dataset name starts with 'cifar' (so TinyImageNet, SVHN and MNIST get 'imagenet')."""
    if resnet_stem == 'auto':
        return 'cifar' if dataset.lower().startswith('cifar') else 'imagenet'
    if resnet_stem not in ('cifar', 'imagenet'):
        raise ValueError(f"--resnet_stem must be auto, cifar or imagenet, got {resnet_stem!r}")
    return resnet_stem


# ----------------------------------------------------------------------------------------------------------------
# DiM conditional GAN: an AC-WGAN-GP generator and critic. The defaults (K 10, dim_noise 100, width 196,
# 'overwrite' conditioning) give the reference's layers exactly; K, dim_noise, 64x64 and 'embed' are generalisations.

GAN_SIZES = (28, 32, 64)
DIM_CRITIC_HEADS = ('ac', 'projection')
DIM_CONDITIONINGS = ('overwrite', 'embed', 'cbn')


def _gan_size(im_size):
    h, w = _pair(im_size)
    if h != w or h not in GAN_SIZES:
        raise ValueError(f'the DiM GAN makes square 28, 32 or 64 pixel images, got {h}x{w}')
    return h


def _batch_norm(channels, dim, affine=True):
    """BatchNorm1d (dim 1: N x C inputs) or BatchNorm2d (dim 2: N x C x H x W)."""
    return (nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d)(channels, affine=affine)


class ClassBatchNorm(nn.Module):
    """Batch norm without its own affine, then a gain and a bias looked up by class: gain[y] * BN(x) + bias[y]
    (init 1 and 0, so it starts as plain BN). dim 1 for N x C inputs, 2 for N x C x H x W."""

    def __init__(self, channels, num_classes, dim):
        super().__init__()
        self.bn = _batch_norm(channels, dim, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)

    def _init_weights(self, generator):  # init_weights' hook: no draws, so G's other weights stay as before
        self.bn.reset_running_stats()
        self.gain.weight.fill_(1.0)
        self.bias.weight.zero_()

    def forward(self, x, y):
        shape = (len(y), -1) + (1,) * (x.dim() - 2)
        return self.gain(y).view(shape) * self.bn(x) + self.bias(y).view(shape)


class DiMGenerator(nn.Module):
    """(z, y) -> image in [-1, 1]: fc -> BN -> ReLU -> 4x4 map, upsampled by transposed convs with 3x3 convs in
    between (BN + ReLU after each), then conv 3x3 -> tanh.

    28 px: 4 -> 7 -> 14 -> 28 (first transposed conv has kernel 3); 32 px: 4 -> 8 -> 16 -> 32; 64 px adds one more
    transposed conv + conv 3x3 stage. cond 'overwrite' replaces the first K noise entries by the one-hot label (the
    reference, so dim_noise must exceed K); 'embed' adds a learned class embedding (N(0, 1) at init, as large as the
    noise) to the noise instead.

    Why added, not multiplied: z * e(y) is zero-mean for every class, so the linear fc1 sees the class only through
    the variance pattern of its inputs and G barely learns the label (MNIST, width 32: 12-17% of its samples are
    recognised as their class after 400-800 iterations, against 85% at 450 with z + e(y); docs/results.md). The
    embedding is stored as `label_embedding`, so a checkpoint of the old multiplicative form is refused, not
    silently reinterpreted.

    cond 'cbn' is 'embed' plus class-conditional batch norm (de Vries et al. 2017; the generator of Miyato & Koyama's
    projection cGAN): every BN normalises without its own affine and applies a per-class gain and bias (init 1, 0),
    so the label reaches every layer instead of only the input, where the BN layers can wash it out.
    """

    def __init__(self, channel, num_classes, im_size=(32, 32), dim_noise=100, cond='overwrite', width=196):
        super().__init__()
        size = _gan_size(im_size)
        if cond not in DIM_CONDITIONINGS:
            raise ValueError(f"unknown conditioning {cond!r}; use {', '.join(map(repr, DIM_CONDITIONINGS))}")
        if cond == 'overwrite' and dim_noise <= num_classes:
            raise ValueError(f"dim_noise {dim_noise} must exceed the class count {num_classes}: the one-hot label "
                             f"overwrites the first {num_classes} noise entries; raise dim_noise or use cond='embed'")
        self.num_classes, self.dim_noise, self.cond, self.width = num_classes, dim_noise, cond, width
        self.label_embedding = nn.Embedding(num_classes, dim_noise) if cond != 'overwrite' else None
        norm = (lambda c, dim: ClassBatchNorm(c, num_classes, dim)) if cond == 'cbn' else _batch_norm
        self.fc1 = nn.Linear(dim_noise, width * 4 * 4)
        self.bn0 = norm(width * 4 * 4, 1)
        up = ['up', 'same', 'same', 'same', 'up', 'same', 'up'] + (['up', 'same'] if size == 64 else [])
        self.body = [f'conv{i}' for i in range(1, 8)] + (['conv_up64', 'conv_64'] if size == 64 else [])
        for i, (name, kind) in enumerate(zip(self.body, up)):
            if kind == 'same':
                conv = nn.Conv2d(width, width, 3, stride=1, padding=1)
            else:  # kernel 3 once at 28 px turns 4x4 into 7x7; kernel 4 doubles
                conv = nn.ConvTranspose2d(width, width, 3 if (size == 28 and i == 0) else 4, stride=2, padding=1)
            setattr(self, name, conv)
            setattr(self, 'bn' + name[4:], norm(width, 2))
        self.conv8 = nn.Conv2d(width, channel, 3, stride=1, padding=1)

    def condition(self, z, y):
        if self.cond != 'overwrite':
            return z + self.label_embedding(y)
        return torch.cat([F.one_hot(y, self.num_classes).to(z.dtype), z[:, self.num_classes:]], 1)

    def forward(self, z, y=None):
        """z: N x dim_noise Gaussian noise; y: N labels (None: z already carries them)."""
        if y is not None:
            z = self.condition(z, y)
        elif self.cond == 'cbn':
            raise ValueError("a generator with class-conditional batch norm needs the labels y")
        norm = (lambda bn, x: bn(x, y)) if self.cond == 'cbn' else (lambda bn, x: bn(x))
        x = F.relu(norm(self.bn0, self.fc1(z))).view(-1, self.width, 4, 4)
        for name in self.body:
            x = F.relu(norm(getattr(self, 'bn' + name[4:]), getattr(self, name)(x)))
        return torch.tanh(self.conv8(x))


class DiMDiscriminator(nn.Module):
    """The critic: conv 3x3 -> LayerNorm(C, H, W) -> LeakyReLU(0.01) eight times (strides 1,2,1,2,1,1,1,2; one more
    stride-2 conv at 64 px) down to 4x4, max-pool 4x4 to features h, then its heads. No batch norm, so a per-sample
    gradient penalty is well defined.

    head 'ac' (the reference, AC-GAN): fc1 the critic score s(x) (N,) and fc10 the class logits c(x) (N x K; named
    after the reference's K = 10). head 'projection' (Miyato & Koyama 2018, cGANs with a projection discriminator):
    one class-dependent score s(x, y) = fc1(h) + <v_y, h>, with v_y the y-th column of `projection`, and no class
    logits, so no classification loss pushes the generator toward easy class prototypes."""

    def __init__(self, channel, num_classes, im_size=(32, 32), width=196, head='ac'):
        super().__init__()
        size = _gan_size(im_size)
        if head not in DIM_CRITIC_HEADS:
            raise ValueError(f"unknown critic head {head!r}; use {' or '.join(map(repr, DIM_CRITIC_HEADS))}")
        self.head = head
        strides = [1, 2, 1, 2, 1, 1, 1, 2] + ([2] if size == 64 else [])
        self.depth = len(strides)
        s, c = size, channel
        for i, stride in enumerate(strides, 1):
            setattr(self, f'conv{i}', nn.Conv2d(c, width, 3, stride=stride, padding=1))
            s, c = _conv_out(s, 3, stride, 1), width
            setattr(self, f'ln{i}', nn.LayerNorm([width, s, s]))
        self.pool = nn.MaxPool2d(4, 4)
        self.fc1 = nn.Linear(width, 1)
        if head == 'ac':
            self.fc10 = nn.Linear(width, num_classes)
        else:  # a linear map of the one-hot label, so it starts as small as fc1 (U(±1/sqrt(K)))
            self.projection = nn.Linear(num_classes, width, bias=False)

    def embed(self, x):
        for i in range(1, self.depth + 1):
            x = F.leaky_relu(getattr(self, f'ln{i}')(getattr(self, f'conv{i}')(x)), 0.01)
        return self.pool(x).flatten(1)

    def forward(self, x, y=None):
        """(score (N,), class logits (N x K) or None). y: the labels, which the projection head needs (the AC head
        ignores them)."""
        h = self.embed(x)
        score = self.fc1(h).squeeze(1)
        if self.head == 'ac':
            return score, self.fc10(h)
        if y is None:
            raise ValueError("the projection critic scores an image under a label: pass y")
        return score + (self.projection.weight.t()[y] * h).sum(1), None


def define_gan(channel, num_classes, im_size=(32, 32), dim_noise=100, cond='overwrite', width=196, device='cpu',
               generator=None, critic='ac'):
    """(generator, critic), freshly initialised (PyTorch's default distributions) from `generator`: G first, then D.
    critic: the critic's head, 'ac' (the reference) or 'projection' (DiMDiscriminator)."""
    G = _build(DiMGenerator, {}, channel, num_classes, im_size, device, generator,
               dict(dim_noise=dim_noise, cond=cond, width=width))
    D = _build(DiMDiscriminator, {}, channel, num_classes, im_size, device, generator, dict(width=width, head=critic))
    return G, D

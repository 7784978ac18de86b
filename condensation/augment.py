"""
Augmentation for dataset condensation (ranges and semantics: docs/design.md, Augmentation).

Three families live here:
- DSA, differentiable Siamese augmentation: sample_dsa_params / apply_dsa / DiffAugment.
- DC augmentation, not differentiable, used only when evaluating DC: get_daparam / augment_dc.
- DiM's DiffAug variant: DiMDiffAug, built from the same op functions as DSA.

Sampling is separate from application. A parameter dict holds n independent parameter sets as small CPU
tensors; apply_dsa applies them to a batch with n == N (one set per image) or n == 1 (one set shared by every
image, which is what "Siamese" means). That makes the Siamese pair trivial (sample once, apply twice) and lets
DM augment all classes in one call (sample K sets, expand them with select_params(params, labels)).

All randomness comes from an explicit torch.Generator; nothing here touches the global RNG unless the caller
passes generator=None. Every sampling call draws the same amount of randomness whatever token comes out,
so a generator's stream does not drift with the token draws.
"""
import math
import operator

import torch
import torch.nn.functional as F

from condensation.common import draw_device

DSA_TOKENS = ('color', 'crop', 'cutout', 'flip', 'scale', 'rotate')
DIM_TOKENS = DSA_TOKENS + ('translate',)
DIM_SINGLE_TOKENS = ('crop', 'scale', 'rotate', 'translate')  # DiM applies one of these per call
DC_TOKENS = ('crop', 'scale', 'rotate', 'noise')
DC_ROTATE_MODES = ('spline', 'bilinear')


class ParamDiffAug:
    """DSA hyper-parameters (defaults: the original DSA code's ranges). align_corners is passed explicitly to every
    grid call, because the original ran on torch 1.2, whose default differs from today's (docs/design.md, D-A10)."""

    def __init__(self, aug_mode='S', prob_flip=0.5, ratio_scale=1.2, ratio_rotate=15.0, ratio_crop_pad=0.125,
                 ratio_cutout=0.5, brightness=1.0, saturation=2.0, contrast=0.5, align_corners=False):
        if aug_mode not in ('S', 'M'):
            raise ValueError(f"aug_mode must be 'S' (one token per call) or 'M' (every token), got {aug_mode!r}")
        self.aug_mode = aug_mode
        self.prob_flip = prob_flip
        self.ratio_scale = ratio_scale
        self.ratio_rotate = ratio_rotate
        self.ratio_crop_pad = ratio_crop_pad
        self.ratio_cutout = ratio_cutout
        self.brightness = brightness
        self.saturation = saturation
        self.contrast = contrast
        self.align_corners = align_corners

    def __repr__(self):
        return 'ParamDiffAug(' + ', '.join(f'{k}={v!r}' for k, v in vars(self).items()) + ')'


def parse_strategy(strategy, valid=DSA_TOKENS):
    """'color_crop_flip' -> ['color', 'crop', 'flip']; None / 'None' / 'none' / '' -> [] (identity)."""
    if strategy is None:
        return []
    if not isinstance(strategy, str):
        raise ValueError(f'augmentation strategy must be a string like "color_crop_cutout", got {strategy!r}')
    s = strategy.strip().lower()
    if s in ('', 'none'):
        return []
    tokens = s.split('_')
    bad = [t for t in tokens if t not in valid]
    if bad:
        raise ValueError(f'unknown augmentation token(s) {bad} in strategy {strategy!r}; valid tokens: '
                         f'{", ".join(valid)} joined by "_" (or "none")')
    return tokens


# ---------------------------------------------------------------------------------------------------------
# randomness helpers

def _rand(shape, generator):
    # Draw on the generator's own device: a CPU generator (normal use) gives CPU parameters; a CUDA generator keeps
    # them on the GPU, so a device-resident step never copies them across (apply_dsa then needs no host sync).
    device = draw_device(generator)
    return torch.rand(shape, generator=generator, device=device)


def _randn(shape, generator, device):
    gdev = draw_device(generator)
    return torch.randn(shape, generator=generator, device=gdev).to(device)


def _draw_params(n, generator, param):
    """n independent parameter sets for every op, from ONE draw of n x 12 uniforms.

    Returns (u_choice, params): u_choice is the raw uniform for the token choice (callers turn it into an index
    over their own token list). crop and cutout stay as raw uniforms because their integer ranges depend on the
    image size, which is only known at application time.
    """
    try:
        ok = operator.index(n) >= 1
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f'number of parameter sets must be a positive int (batch size, 1 or K), got {n!r}')
    n = operator.index(n)
    u = _rand((n, 12), generator)
    r = param.ratio_scale
    params = {
        'scale': u[:, 1:3] * (r - 1.0 / r) + 1.0 / r,                                   # sx, sy in [1/r, r)
        'theta': (u[:, 3] - 0.5) * 2.0 * param.ratio_rotate / 180.0 * math.pi,         # radians
        'flip': u[:, 4] < param.prob_flip,
        'brightness': (u[:, 5] - 0.5) * param.brightness,                              # additive shift
        'saturation': u[:, 6] * param.saturation,                                      # factor
        'contrast': u[:, 7] + param.contrast,                                          # factor
        'crop': u[:, 8:10],                                                            # uniforms (row, col)
        'cutout': u[:, 10:12],                                                         # uniforms (row, col)
    }
    return u[:, 0], params


def sample_dsa_params(strategy, n, generator=None, param=None, one_token=False):
    """n independent DSA parameter sets (plain CPU tensors with leading dim n).

    n = batch size for per-image parameters, 1 for a Siamese pair, K for one set per class.
    Mode 'S': each set carries one token drawn uniformly from the strategy list ('choice', an index into
    'tokens'); one_token=True gives every set the same token, which is what the reference does for a
    non-Siamese call (one token per call, per-image parameters). Mode 'M': every token is applied in order.
    """
    param = param if param is not None else ParamDiffAug()
    tokens = parse_strategy(strategy)
    if param.aug_mode not in ('S', 'M'):
        raise ValueError(f"param.aug_mode must be 'S' or 'M', got {param.aug_mode!r}")
    if param.aug_mode == 'M' and len(set(tokens)) != len(tokens):
        raise ValueError(f"aug_mode 'M' applies each token once; remove the repeated tokens from {strategy!r}")
    u_choice, params = _draw_params(n, generator, param)
    k = max(len(tokens), 1)
    choice = (u_choice * k).long().clamp(max=k - 1)
    if one_token:
        choice = choice[:1].expand(n).clone()
    params.update(tokens=tuple(tokens), mode=param.aug_mode, choice=choice)
    return params


def select_params(params, index):
    """Rows `index` of every tensor in a parameter dict (e.g. index = class id of each image)."""
    device = next((v.device for v in params.values() if torch.is_tensor(v)), 'cpu')
    index = index.to(device, torch.long) if torch.is_tensor(index) else torch.as_tensor(index, device=device)
    return {k: (v[index] if torch.is_tensor(v) else v) for k, v in params.items()}


# ---------------------------------------------------------------------------------------------------------
# op functions: x is N x C x H x W, p holds per-image parameters (leading dim N, CPU); differentiable in x

def _col(v, x):
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _gather2d(x, rows, cols, out=None):
    """out[n, c, i, j] = x[n, c, rows[n, i, j], cols[n, i, j]] (rows/cols broadcast to N x H' x W')."""
    N, C, H, W = x.shape
    idx = (rows * W + cols).expand(N, -1, -1)
    h2, w2 = idx.shape[1:]
    idx = idx.reshape(N, 1, h2 * w2).expand(N, C, h2 * w2)
    if out is None:
        return x.reshape(N, C, H * W).gather(2, idx).view(N, C, h2, w2)
    return torch.gather(x.reshape(N, C, H * W), 2, idx, out=out.view(N, C, h2 * w2)).view(N, C, h2, w2)


def _shift(x, dy, dx, fill=0.0):
    """Integer translation: out[i, j] = x[i + dy, j + dx] inside the image, `fill` where the source is outside."""
    N, C, H, W = x.shape
    rows = torch.arange(H, device=x.device).view(1, H) + dy.to(x.device).view(N, 1)
    cols = torch.arange(W, device=x.device).view(1, W) + dx.to(x.device).view(N, 1)
    inside = (((rows >= 0) & (rows < H)).view(N, 1, H, 1) & ((cols >= 0) & (cols < W)).view(N, 1, 1, W))
    out = _gather2d(x, rows.clamp(0, H - 1).view(N, H, 1), cols.clamp(0, W - 1).view(N, 1, W))
    # a Python fill stays a kernel argument (a tensor made of it would be copied from the host at every call)
    return torch.where(inside, out, fill if torch.is_tensor(fill) else float(fill))


def _warp(x, theta, param):
    grid = F.affine_grid(theta, list(x.shape), align_corners=param.align_corners)
    return F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=param.align_corners)


def _scale(x, p, param):
    s = p['scale'].to(device=x.device, dtype=x.dtype)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = s[:, 0]
    theta[:, 1, 1] = s[:, 1]
    return _warp(x, theta, param)


def _rotate(x, p, param):
    t = p['theta'].to(device=x.device, dtype=x.dtype)
    cos, sin = torch.cos(t), torch.sin(t)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    return _warp(x, theta, param)


def _flip(x, p, param):
    return torch.where(p['flip'].to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def _brightness(x, p, param):
    return x + _col(p['brightness'], x)


def _saturation(x, p, param):
    m = x.mean(dim=1, keepdim=True)  # per-pixel channel mean: a no-op on 1-channel images, as in the reference
    return m + (x - m) * _col(p['saturation'], x)


def _contrast(x, p, param):
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return m + (x - m) * _col(p['contrast'], x)


def _crop_shifts(u, size, ratio):
    # uniform integer on {-k..k}, k = floor(ratio * size + 0.5): 4 at 28 and 32, 8 at 64
    k = int(size * ratio + 0.5)
    return (u * (2 * k + 1)).long().clamp(max=2 * k) - k


def _crop(x, p, param):
    # zero fill for pixels entering from outside (the reference pads 1 zero pixel and clamps indices)
    u = p['crop']
    dy = _crop_shifts(u[:, 0], x.shape[2], param.ratio_crop_pad)
    dx = _crop_shifts(u[:, 1], x.shape[3], param.ratio_crop_pad)
    return _shift(x, dy, dx)


def _translate(x, p, param):
    # DiM's translate: crop along the width only
    dx = _crop_shifts(p['crop'][:, 1], x.shape[3], param.ratio_crop_pad)
    return _shift(x, torch.zeros_like(dx), dx)


def _cutout(x, p, param):
    N, C, H, W = x.shape
    u = p['cutout']
    lh, lw = int(H * param.ratio_cutout + 0.5), int(W * param.ratio_cutout + 0.5)
    # centre uniform on [0, size + 1 - (L mod 2)); the square [centre - L//2, centre - L//2 + L) is clipped
    top = ((u[:, 0] * (H + 1 - lh % 2)).long() - lh // 2).to(x.device).view(N, 1)
    left = ((u[:, 1] * (W + 1 - lw % 2)).long() - lw // 2).to(x.device).view(N, 1)
    rows = torch.arange(H, device=x.device).view(1, H)
    cols = torch.arange(W, device=x.device).view(1, W)
    in_r = (rows >= top) & (rows < top + lh)
    in_c = (cols >= left) & (cols < left + lw)
    keep = ~(in_r.view(N, 1, H, 1) & in_c.view(N, 1, 1, W))
    return x * keep.to(x.dtype)


TOKEN_OPS = {
    'color': (_brightness, _saturation, _contrast),
    'crop': (_crop,),
    'cutout': (_cutout,),
    'flip': (_flip,),
    'scale': (_scale,),
    'rotate': (_rotate,),
    'translate': (_translate,),
}


def _apply_token(x, token, p, param):
    for f in TOKEN_OPS[token]:
        x = f(x, p, param)
    return x


def _grouped(x, p, group, fn):
    """Apply fn(g, x_g, p_g) to each group of images (group: CPU long tensor, N) and reassemble in order: one
    gather puts the groups side by side and one puts the images back (in the backward two index_adds, not one
    index_put per group)."""
    ids, counts = group.unique(return_counts=True)
    if len(ids) == 1:
        return fn(ids.item(), x, p)
    order = torch.argsort(group, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    sizes = counts.tolist()
    parts = zip(ids.tolist(), x.index_select(0, order.to(x.device)).split(sizes), order.split(sizes))
    outs = [fn(g, part, select_params(p, idx)) for g, part, idx in parts]
    return torch.cat(outs).index_select(0, inverse.to(x.device))


def _expand_to_batch(params, N, what):
    n = params['choice'].shape[0] if 'choice' in params else params['flip'].shape[0]
    if n == N:
        return params
    if n == 1:  # one shared (Siamese) set, expanded where the parameters live
        device = (params['choice'] if 'choice' in params else params['flip']).device
        return select_params(params, torch.zeros(N, dtype=torch.long, device=device))
    raise ValueError(f'{what}: parameters hold {n} sets but the batch has {N} images; sample 1 or {N} sets, '
                     f'or expand per-class sets with select_params(params, labels)')


def apply_dsa(x, params, param=None):
    """Apply sampled DSA parameters to x (N x C x H x W, any device). Out of place, differentiable in x.

    params: from sample_dsa_params (or select_params), with leading dim N or 1 (shared by every image).
    param: supplies align_corners and the crop / cutout ratios; the other ratios were fixed at sampling time.
    """
    param = param if param is not None else ParamDiffAug()
    if x.dim() != 4:
        raise ValueError(f'apply_dsa expects an N x C x H x W tensor, got shape {tuple(x.shape)}')
    tokens = params['tokens']
    if not tokens or x.shape[0] == 0:
        return x
    p = _expand_to_batch(params, x.shape[0], 'apply_dsa')
    if params['mode'] == 'M':
        for t in tokens:
            x = _apply_token(x, t, p, param)
        return x
    if not _group_on_host(p['choice']):
        return _by_choice(x, p, tokens, param)
    # mode 'S': each image gets its own token; group images by token family (at most 6 groups)
    family = torch.tensor([DIM_TOKENS.index(t) for t in tokens])[p['choice']]
    return _grouped(x, p, family, lambda g, xs, ps: _apply_token(xs, DIM_TOKENS[g], ps, param))


def _group_on_host(choice):
    # grouping reads the choices: cheap on the host, a wait (and no CUDA graph) for choices drawn on a device
    return choice.device.type == 'cpu'


def _by_choice(x, p, tokens, param):
    """Mode 'S' for parameters on a GPU: grouping images by token would read the choices back to the host (a
    sync), so every image goes through every token and keeps its own token's output. Each op acts image by image,
    so the kept values are those of the grouped path, and unkept branches get zero gradient."""
    out = x
    for i, t in enumerate(tokens):
        out = torch.where((p['choice'] == i).view(-1, 1, 1, 1), _apply_token(x, t, p, param), out)
    return out


def DiffAugment(x, strategy='color_crop_cutout_flip_scale_rotate', param=None, generator=None, siamese=False):
    """DSA augmentation in one call. siamese=False: one token per call (mode 'S') and per-image parameters
    (the reference's seed = -1). siamese=True: one parameter set for the whole batch. For a real/synthetic
    pair, sample once with sample_dsa_params(strategy, 1, ...) and call apply_dsa on both batches."""
    param = param if param is not None else ParamDiffAug()
    if not parse_strategy(strategy) or x.shape[0] == 0:
        return x
    params = sample_dsa_params(strategy, 1 if siamese else x.shape[0], generator, param, one_token=not siamese)
    return apply_dsa(x, params, param)


# ---------------------------------------------------------------------------------------------------------
# DiM DiffAug: DSA's ops, DiM's composition (several families per call)

class DiMDiffAug:
    """DiM's DiffAug: [normalise] -> flip -> colour -> ONE of crop/scale/rotate/translate -> cutout.

    batch=True: one parameter set shared by the whole batch (DiM concatenates real and generated images and
    augments them once). batch=False: per-image parameters; the op choice is still one per call.
    mean/std: optional per-channel normalisation applied first (the reference's aug_batch / aug_rand).
    The op choice uses the explicit generator, where the reference used numpy's global RNG.
    """

    def __init__(self, strategy='color_crop_cutout', batch=False, param=None, mean=None, std=None):
        tokens = parse_strategy(strategy, valid=DIM_TOKENS)
        if (mean is None) != (std is None):
            raise ValueError('DiMDiffAug: give both mean and std (per-channel lists) or neither')
        self.strategy = strategy
        self.batch = batch
        self.param = param if param is not None else ParamDiffAug()
        self.flip = 'flip' in tokens
        self.color = 'color' in tokens
        self.cutout = 'cutout' in tokens
        self.choices = [t for t in tokens if t in DIM_SINGLE_TOKENS]  # repeats weight the choice, as in the reference
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x, generator=None):
        if self.mean is not None:
            x = (x - self.mean.to(x)) / self.std.to(x)
        if x.shape[0] == 0 or not (self.flip or self.color or self.cutout or self.choices):
            return x
        u_choice, p = _draw_params(1 if self.batch else x.shape[0], generator, self.param)
        p = _expand_to_batch(p, x.shape[0], 'DiMDiffAug')
        if self.flip:
            x = _apply_token(x, 'flip', p, self.param)
        if self.color:
            x = _apply_token(x, 'color', p, self.param)
        if self.choices:
            k = min(int(u_choice[0] * len(self.choices)), len(self.choices) - 1)
            x = _apply_token(x, self.choices[k], p, self.param)
        if self.cutout:
            x = _apply_token(x, 'cutout', p, self.param)
        return x

    def __repr__(self):
        return f'DiMDiffAug(strategy={self.strategy!r}, batch={self.batch})'


def make_dim_augs(aug_type='color_crop_cutout', mixup_net='cut', mean=None, std=None, param=None):
    """DiM's two instances: aug_batch (shared transform, for match-aug) and aug_rand (per image, for
    pool-model training and evaluation). With mixup_net == 'cut' the reference drops cutout from aug_rand even
    though CutMix itself is off (kept: docs/design.md, D-B14); neither instance adds a flip (kept: D-B15)."""
    tokens = parse_strategy(aug_type, valid=DIM_TOKENS)
    rand_tokens = [t for t in tokens if t != 'cutout'] if mixup_net == 'cut' else tokens
    aug_batch = DiMDiffAug(aug_type, batch=True, param=param, mean=mean, std=std)
    aug_rand = DiMDiffAug('_'.join(rand_tokens) or 'none', batch=False, param=param, mean=mean, std=std)
    return aug_batch, aug_rand


# ---------------------------------------------------------------------------------------------------------
# DC augmentation: not differentiable, evaluation of DC only

def get_daparam(dataset, model, model_eval, ipc):
    """DC evaluation augmentation. model and ipc are ignored, as in the reference."""
    dc_aug_param = dict(crop=4, scale=0.2, rotate=45, noise=0.001, strategy='none')
    if dataset == 'MNIST':
        dc_aug_param['strategy'] = 'crop_scale_rotate'
    if model_eval in ['ConvNetBN']:  # checked last, so it overrides MNIST
        dc_aug_param['strategy'] = 'crop_noise'
    return dc_aug_param


def _dc_crop(x, u, mean, crop):
    # pad `crop` pixels with the per-channel batch mean, take an H x W window at offsets {0..2*crop-1}:
    # a shift of -crop..crop-1 (the reference never reaches +crop)
    off = (u * (2 * crop)).long().clamp(max=2 * crop - 1) - crop
    return _shift(x, off[:, 0], off[:, 1], fill=mean.view(1, -1, 1, 1))


def _nearest_src(n_out, n_in, out_index):
    # torch's 'nearest' interpolate: src = min(floor(dst * (in / out)), in - 1), in float32 arithmetic
    scale = torch.tensor(float(n_in), dtype=torch.float32) / n_out.to(torch.float32)
    return torch.minimum((out_index.to(torch.float32) * scale.view(-1, 1)).floor().long(), torch.tensor(n_in - 1))


def _dc_scale(x, u, scale):
    """Exact per-image emulation of: nearest resize to (h, w), paste centred on a zero canvas of side
    max(h, w, H, W), centre-crop H x W. Done as one gather over the batch."""
    N, C, H, W = x.shape
    # h, w = floor(U(1 - scale, 1 + scale) * H); the reference uses H for both sides (moot for square images)
    hw = ((1.0 - scale + 2.0 * scale * u.double()) * H).floor().long()
    h, w = hw[:, 0], hw[:, 1]
    m = torch.maximum(torch.maximum(h, w), torch.tensor(max(H, W)))
    k_r = torch.arange(H).view(1, H) + ((m - H) // 2 - (m - h) // 2).view(N, 1)  # row in the resized image
    k_c = torch.arange(W).view(1, W) + ((m - W) // 2 - (m - w) // 2).view(N, 1)
    ok_r = (k_r >= 0) & (k_r < h.view(N, 1))
    ok_c = (k_c >= 0) & (k_c < w.view(N, 1))
    src_r = _nearest_src(h, H, k_r.clamp(min=0))
    src_c = _nearest_src(w, W, k_c.clamp(min=0))
    dev = x.device
    out = _gather2d(x, src_r.to(dev).view(N, H, 1), src_c.to(dev).view(N, 1, W))
    keep = (ok_r.view(N, 1, H, 1) & ok_c.view(N, 1, 1, W)).to(dev)
    return out * keep.to(x.dtype)


def _spline_prefilter(n, device, dtype):
    # Cubic B-spline coefficients c solve A c = x with A = tridiag(1, 4, 1) / 6 and mirror boundaries
    # (c[-1] = c[1]); that is what scipy's prefilter does for mode='constant'. Exact inverse, tiny matrix.
    a = torch.zeros(n, n, dtype=torch.float64)
    i = torch.arange(n)
    a[i, i] = 4.0 / 6.0
    a[i[:-1], i[:-1] + 1] = 1.0 / 6.0
    a[i[1:], i[1:] - 1] = 1.0 / 6.0
    a[0, 1] = a[-1, -2] = 2.0 / 6.0
    return torch.linalg.inv(a).to(device=device, dtype=dtype)


def _bspline_weights(t):
    t2, t3 = t * t, t * t * t
    return ((1 - t) ** 3 / 6, (4 - 6 * t2 + 3 * t3) / 6, (1 + 3 * t + 3 * t2 - 3 * t3) / 6, t3 / 6)


def _mirror(k, n):
    k = k.abs()
    return torch.where(k > n - 1, 2 * (n - 1) - k, k).clamp(0, n - 1)


def _rotate_coords(angle_deg, H, W):
    """Input (row, col) coordinates, float64 on the CPU, that scipy.ndimage.rotate(reshape=True) followed by
    the reference's centre crop int((out - H) / 2) samples for every output pixel. N x H x W each."""
    N = angle_deg.shape[0]
    a = angle_deg.double() * math.pi / 180.0
    c, s = torch.cos(a), torch.sin(a)
    # enlarged canvas, as scipy computes it: ptp of the rotated corners, + 0.5, truncated
    ys = torch.stack([torch.zeros_like(c), s * W, c * H, c * H + s * W], 1)
    xs = torch.stack([torch.zeros_like(c), c * W, -s * H, -s * H + c * W], 1)
    oh = (ys.max(1).values - ys.min(1).values + 0.5).long()
    ow = (xs.max(1).values - xs.min(1).values + 0.5).long()
    r0 = torch.div(oh - H, 2, rounding_mode='trunc')
    c0 = torch.div(ow - W, 2, rounding_mode='trunc')
    oy = (torch.arange(H).view(1, H) + r0.view(N, 1)).double() - (oh.view(N, 1) - 1) / 2.0  # N x H
    ox = (torch.arange(W).view(1, W) + c0.view(N, 1)).double() - (ow.view(N, 1) - 1) / 2.0  # N x W
    c, s = c.view(N, 1, 1), s.view(N, 1, 1)
    iy = c * oy.view(N, H, 1) + s * ox.view(N, 1, W) + (H - 1) / 2.0
    ix = -s * oy.view(N, H, 1) + c * ox.view(N, 1, W) + (W - 1) / 2.0
    return iy, ix


@torch.no_grad()
def _dc_rotate(x, angle_deg, fill, mode='spline'):
    """Batched equivalent of the reference's per-image scipy.ndimage.rotate(img, angle, axes=(-2, -1),
    cval=fill) (order 3, mode 'constant', reshape=True) followed by a centre crop back to H x W.

    mode 'spline': exact cubic B-spline interpolation (prefilter + 4 x 4 taps), matching scipy to float32
    rounding. mode 'bilinear': grid_sample approximation (main.py's fast `--dc_rotate gpu` option)."""
    N, C, H, W = x.shape
    dev = x.device
    iy, ix = _rotate_coords(angle_deg, H, W)
    inside = ((iy >= 0) & (iy <= H - 1) & (ix >= 0) & (ix <= W - 1)).to(dev).view(N, 1, H, W)
    fill = torch.as_tensor(fill, dtype=x.dtype, device=dev)
    if mode == 'bilinear':
        # subtract the fill, rotate with zero padding, add it back: the outside becomes the fill value
        grid = torch.stack([ix / (W - 1) * 2 - 1, iy / (H - 1) * 2 - 1], dim=-1).to(device=dev, dtype=x.dtype)
        out = F.grid_sample(x - fill, grid, mode='bilinear', padding_mode='zeros', align_corners=True) + fill
        return out
    coef = _spline_prefilter(H, dev, x.dtype) @ x @ _spline_prefilter(W, dev, x.dtype).T
    fy, fx = iy.floor(), ix.floor()
    wy = _bspline_weights((iy - fy).to(device=dev, dtype=x.dtype))
    wx = _bspline_weights((ix - fx).to(device=dev, dtype=x.dtype))
    fy, fx = fy.long().to(dev), fx.long().to(dev)
    # 16 taps accumulated in place: not differentiable (DC augmentation never needs it), and it saves
    # dozens of batch-sized allocations
    rows = [_mirror(fy + (a - 1), H) for a in range(4)]
    cols = [_mirror(fx + (b - 1), W) for b in range(4)]
    out, tap = torch.zeros_like(x), torch.empty_like(x)
    for a in range(4):
        for b in range(4):
            _gather2d(coef, rows[a], cols[b], out=tap)
            out.addcmul_(tap, (wy[a] * wx[b]).view(N, 1, H, W))
    return torch.where(inside, out, fill)


def augment_dc(images, dc_aug_param, generator=None):
    """DC augmentation of an evaluation training batch (out of place, vectorised, not differentiable).

    Each image gets ONE op drawn uniformly from dc_aug_param['strategy'] (tokens crop, scale, rotate, noise).
    Optional key 'rotate_mode': 'spline' (default; matches scipy.ndimage.rotate) or 'bilinear' (fast
    approximation, main.py's --dc_rotate gpu).
    """
    if not dc_aug_param:
        return images
    strategy = dc_aug_param.get('strategy', 'none')
    if strategy is None or strategy.strip().lower() in ('', 'none'):
        return images
    tokens = strategy.strip().lower().split('_')
    bad = [t for t in tokens if t not in DC_TOKENS]
    if bad:
        raise ValueError(f'unknown DC augmentation token(s) {bad} in {strategy!r}; valid: {", ".join(DC_TOKENS)} '
                         f'joined by "_" (or "none")')
    rotate_mode = dc_aug_param.get('rotate_mode', 'spline')
    if rotate_mode not in DC_ROTATE_MODES:
        raise ValueError(f'dc_aug_param["rotate_mode"] must be one of {DC_ROTATE_MODES}, got {rotate_mode!r}')
    N = images.shape[0]
    if N == 0:
        return images
    with torch.no_grad():
        x = images.detach()
        mean = x.mean(dim=(0, 2, 3))  # per-channel mean of the whole un-augmented batch
        u = _rand((N, 6), generator)
        noise = _randn(tuple(x.shape), generator, x.device) if 'noise' in tokens else None
        p = {'u': u, 'i': torch.arange(N)}
        choice = (u[:, 0] * len(tokens)).long().clamp(max=len(tokens) - 1)

        def op(g, xs, ps):
            t = tokens[g]
            if t == 'crop':
                return _dc_crop(xs, ps['u'][:, 1:3], mean, int(dc_aug_param.get('crop', 4)))
            if t == 'scale':
                return _dc_scale(xs, ps['u'][:, 3:5], float(dc_aug_param.get('scale', 0.2)))
            if t == 'rotate':
                r = int(dc_aug_param.get('rotate', 45))  # integer angle on {-r .. r-1}
                angle = (ps['u'][:, 5] * (2 * r)).long().clamp(max=2 * r - 1) - r
                return _dc_rotate(xs, angle, mean.mean(), rotate_mode)
            return xs + float(dc_aug_param.get('noise', 0.001)) * noise[ps['i'].to(x.device)]

        # repeated tokens (e.g. 'crop_crop_noise') weight the draw; group by token position
        return _grouped(x, p, choice, op).contiguous()

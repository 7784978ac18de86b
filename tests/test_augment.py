import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from condensation import augment as A

FULL = 'color_crop_cutout_flip_scale_rotate'


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rand_images(n=8, c=3, h=32, w=None, seed=0):
    return torch.randn(n, c, h, w or h, generator=gen(seed))


def asym_image(c=3, h=32):
    # an image that differs from its own horizontal flip
    ramp = torch.linspace(-1, 1, h).view(1, 1, h)
    return (ramp + 0.1 * torch.arange(c).view(c, 1, 1)).expand(c, h, h).clone()


# ---------------------------------------------------------------------------------------------------------
# strategy parsing and identity

def test_parse_strategy():
    assert A.parse_strategy(None) == []
    for s in ('None', 'none', ''):
        assert A.parse_strategy(s) == []
    assert A.parse_strategy(FULL) == ['color', 'crop', 'cutout', 'flip', 'scale', 'rotate']
    with pytest.raises(ValueError, match='rotate'):  # the message lists the valid tokens
        A.parse_strategy('color_blur')
    with pytest.raises(ValueError):
        A.parse_strategy('translate')  # DiM only
    assert A.parse_strategy('crop_translate', valid=A.DIM_TOKENS) == ['crop', 'translate']


def test_identity_and_unknown_token():
    x = rand_images()
    for s in ('none', 'None', '', None):
        assert A.DiffAugment(x, s, generator=gen()) is x
    with pytest.raises(ValueError):
        A.DiffAugment(x, 'crop_jitter', generator=gen())


def test_bad_shapes_and_modes():
    x = rand_images(4)
    p = A.sample_dsa_params('crop', 3, gen())
    with pytest.raises(ValueError):
        A.apply_dsa(x, p)  # 3 sets for 4 images
    with pytest.raises(ValueError):
        A.sample_dsa_params('crop_crop', 1, gen(), A.ParamDiffAug(aug_mode='M'))
    with pytest.raises(ValueError):
        A.ParamDiffAug(aug_mode='X')


# ---------------------------------------------------------------------------------------------------------
# differentiability

@pytest.mark.parametrize('strategy,mode,siamese', [(t, 'S', False) for t in A.DSA_TOKENS] +
                         [(t, 'S', True) for t in A.DSA_TOKENS] +
                         [(FULL, 'S', False), (FULL, 'S', True), (FULL, 'M', False), (FULL, 'M', True)])
def test_gradient_reaches_input(strategy, mode, siamese):
    x = rand_images(6, seed=1).requires_grad_(True)
    w = torch.randn(6, 3, 32, 32, generator=gen(2))
    out = A.DiffAugment(x, strategy, A.ParamDiffAug(aug_mode=mode), gen(3), siamese=siamese)
    assert out.shape == x.shape
    (out * w).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_gradient_dim_translate_and_composition():
    x = rand_images(4, seed=1).requires_grad_(True)
    aug = A.DiMDiffAug('flip_color_crop_scale_rotate_translate_cutout', mean=[0.5] * 3, std=[0.25] * 3)
    aug(x, gen(0)).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------
# Siamese semantics

@pytest.mark.parametrize('strategy', list(A.DSA_TOKENS) + [FULL])
def test_siamese_broadcast_equals_concatenation(strategy):
    a, b = rand_images(5, seed=1), rand_images(7, seed=2)
    p = A.sample_dsa_params(strategy, 1, gen(4))
    both = A.apply_dsa(torch.cat([a, b]), p)
    torch.testing.assert_close(both, torch.cat([A.apply_dsa(a, p), A.apply_dsa(b, p)]))


@pytest.mark.parametrize('strategy', list(A.DSA_TOKENS))
def test_siamese_shares_one_transform(strategy):
    img = rand_images(1, seed=5)
    x = img.expand(6, -1, -1, -1).clone()
    p = A.sample_dsa_params(strategy, 1, gen(6))
    out = A.apply_dsa(x, p)
    torch.testing.assert_close(out, out[:1].expand_as(out))
    # the geometric ops are linear in x: the real and the synthetic batch see the same transform
    if strategy != 'color':
        y = rand_images(6, seed=7)
        torch.testing.assert_close(A.apply_dsa(2 * y, p), 2 * A.apply_dsa(y, p))
    # DiffAugment(siamese=True) does the same
    out2 = A.DiffAugment(x, strategy, generator=gen(6), siamese=True)
    torch.testing.assert_close(out2, out2[:1].expand_as(out2))


@pytest.mark.parametrize('mode', ['S', 'M'])
def test_select_params_per_class_equals_per_class_calls(mode):
    param = A.ParamDiffAug(aug_mode=mode)
    K = 4
    p = A.sample_dsa_params(FULL, K, gen(8), param)
    labels = torch.arange(20) % K
    x = rand_images(20, seed=9)
    out = A.apply_dsa(x, A.select_params(p, labels), param)
    for k in range(K):
        m = labels == k
        torch.testing.assert_close(out[m], A.apply_dsa(x[m], A.select_params(p, [k]), param))


def test_siamese_pair_via_seed_replay():
    # the same generator seed reproduces the same parameters: the reference's seed replay
    a, b = rand_images(4, seed=1), rand_images(4, seed=2)
    pa = A.sample_dsa_params(FULL, 1, gen(11))
    pb = A.sample_dsa_params(FULL, 1, gen(11))
    torch.testing.assert_close(A.apply_dsa(torch.cat([a, b]), pa), torch.cat([A.apply_dsa(a, pa), A.apply_dsa(b, pb)]))


# ---------------------------------------------------------------------------------------------------------
# per-image parameters

def test_per_image_flip_differs():
    img = asym_image()
    x = img.expand(64, -1, -1, -1).clone()
    out = A.DiffAugment(x, 'flip', generator=gen(12))
    flipped = torch.tensor([torch.equal(o, img.flip(2)) for o in out])
    kept = torch.tensor([torch.equal(o, img) for o in out])
    assert (flipped | kept).all() and flipped.any() and kept.any()


@pytest.mark.parametrize('strategy', ['scale', 'rotate', 'crop', 'cutout', 'color'])
def test_per_image_params_differ(strategy):
    x = rand_images(1, seed=13).expand(16, -1, -1, -1).clone()
    out = A.DiffAugment(x, strategy, generator=gen(14))
    n_distinct = len({tuple(o.flatten()[:2000].tolist()) for o in out})
    assert n_distinct > 8


def test_one_token_per_call_in_S_mode():
    p = A.sample_dsa_params(FULL, 100, gen(15), one_token=True)
    assert (p['choice'] == p['choice'][0]).all()
    p = A.sample_dsa_params(FULL, 100, gen(15))
    assert len(p['choice'].unique()) > 1


# ---------------------------------------------------------------------------------------------------------
# parameter ranges

def test_parameter_ranges():
    n = 20000
    p = A.sample_dsa_params(FULL, n, gen(16))
    rate = p['flip'].float().mean().item()
    assert abs(rate - 0.5) < 5 * math.sqrt(0.25 / n)
    deg = p['theta'] * 180 / math.pi
    assert deg.min() >= -15 and deg.max() < 15 and deg.min() < -14.9 and deg.max() > 14.9
    s = p['scale']
    assert s.min() >= 1 / 1.2 - 1e-7 and s.max() < 1.2 and s.min() < 1 / 1.2 + 1e-3 and s.max() > 1.2 - 1e-3
    assert (s[:, 0] != s[:, 1]).all()  # anisotropic: sx and sy drawn independently
    assert p['brightness'].min() >= -0.5 and p['brightness'].max() < 0.5
    assert p['saturation'].min() >= 0 and p['saturation'].max() < 2
    assert p['contrast'].min() >= 0.5 and p['contrast'].max() < 1.5
    counts = torch.bincount(p['choice'], minlength=6).float()
    expected, std = n / 6, math.sqrt(n * (1 / 6) * (5 / 6))
    assert ((counts - expected).abs() < 5 * std).all()


@pytest.mark.parametrize('size,k', [(28, 4), (32, 4), (64, 8)])
def test_crop_shift_range(size, k):
    n = 600
    x = torch.zeros(n, 1, size, size)
    c = size // 2
    x[:, :, c, c] = 1.0  # one bright pixel; its displacement is the shift
    p = A.sample_dsa_params('crop', n, gen(17))
    out = A.apply_dsa(x, p)
    pos = out.view(n, -1).argmax(1)
    dy, dx = c - pos // size, c - pos % size  # out[i] = x[i + shift]
    assert out.view(n, -1).sum(1).eq(1).all()  # integer shift: the pixel survives intact
    assert set(dy.tolist()) == set(range(-k, k + 1)) and set(dx.tolist()) == set(range(-k, k + 1))


def test_crop_zero_fill():
    x = torch.ones(200, 1, 32, 32)
    out = A.DiffAugment(x, 'crop', generator=gen(18))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    zero_rows = (out == 0).all(3).sum(2).flatten()  # fully zeroed rows = |vertical shift|
    assert zero_rows.max() == 4


@pytest.mark.parametrize('size,side', [(28, 14), (32, 16), (64, 32)])
def test_cutout_side(size, side):
    n = 400
    out = A.DiffAugment(torch.ones(n, 1, size, size), 'cutout', generator=gen(19))
    hole = out[:, 0] == 0
    rows, cols = hole.any(2).sum(1), hole.any(1).sum(1)
    assert rows.max() == side and cols.max() == side
    assert (hole.sum((1, 2)) == rows * cols).all()  # the hole is a clipped rectangle
    assert rows.min() >= side // 2 and cols.min() >= side // 2


def test_saturation_noop_on_grayscale_and_contrast_keeps_mean():
    x = rand_images(8, c=1, seed=20)
    p = A.sample_dsa_params('color', 8, gen(21))
    out = A._saturation(x, p, A.ParamDiffAug())
    torch.testing.assert_close(out, x)
    y = rand_images(8, seed=22)
    out = A._contrast(y, p, A.ParamDiffAug())
    torch.testing.assert_close(out.mean((1, 2, 3)), y.mean((1, 2, 3)))


def test_align_corners_is_passed():
    x = rand_images(2)
    p = A.sample_dsa_params('scale', 2, gen(23))
    a = A.apply_dsa(x, p, A.ParamDiffAug(align_corners=False))
    b = A.apply_dsa(x, p, A.ParamDiffAug(align_corners=True))
    assert not torch.allclose(a, b)


def test_rotate_direction_and_flip_exact():
    # rotation by a tiny angle is near identity; flip is an exact mirror
    x = rand_images(2)
    p = A.sample_dsa_params('rotate', 2, gen(24))
    p['theta'] = torch.zeros(2)
    torch.testing.assert_close(A.apply_dsa(x, p), x, atol=1e-5, rtol=0)
    p = A.sample_dsa_params('flip', 2, gen(24))
    p['flip'] = torch.tensor([True, False])
    out = A.apply_dsa(x, p)
    assert torch.equal(out[0], x[0].flip(2)) and torch.equal(out[1], x[1])


# ---------------------------------------------------------------------------------------------------------
# reproducibility

def test_same_seed_same_output_and_global_rng_untouched():
    x = rand_images(16)
    state = torch.get_rng_state()
    a = A.DiffAugment(x, FULL, generator=gen(25))
    b = A.DiffAugment(x, FULL, generator=gen(25))
    A.DiMDiffAug('flip_color_crop_cutout')(x, gen(25))
    A.augment_dc(x, A.get_daparam('MNIST', 'ConvNet', 'ConvNet', 10), gen(25))
    A.augment_dc(x, A.get_daparam('CIFAR10', 'ConvNet', 'ConvNetBN', 10), gen(25))
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, A.DiffAugment(x, FULL, generator=gen(26)))


def test_fixed_rng_consumption():
    # the token drawn does not change how much randomness a call uses
    g1, g2 = gen(27), gen(27)
    A.sample_dsa_params('crop', 5, g1)
    A.sample_dsa_params(FULL, 5, g2, A.ParamDiffAug(aug_mode='M'))
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_out_of_place():
    x = rand_images(8)
    x0 = x.clone()
    for s in A.DSA_TOKENS:
        A.DiffAugment(x, s, generator=gen(28))
    A.augment_dc(x, dict(crop=4, scale=0.2, rotate=45, noise=0.001, strategy='crop_scale_rotate_noise'), gen(28))
    assert torch.equal(x, x0)


# ---------------------------------------------------------------------------------------------------------
# DC augmentation

def test_get_daparam_rule():
    base = dict(crop=4, scale=0.2, rotate=45, noise=0.001)
    assert A.get_daparam('CIFAR10', 'ConvNet', 'ConvNet', 10) == dict(base, strategy='none')
    assert A.get_daparam('MNIST', 'ConvNet', 'ConvNet', 1) == dict(base, strategy='crop_scale_rotate')
    assert A.get_daparam('CIFAR10', 'ConvNet', 'ConvNetBN', 50)['strategy'] == 'crop_noise'
    assert A.get_daparam('MNIST', 'ConvNet', 'ConvNetBN', 50)['strategy'] == 'crop_noise'  # BN overrides MNIST


def test_dc_none_and_bad_token():
    x = rand_images(4)
    assert A.augment_dc(x, dict(crop=4, strategy='none'), gen()) is x
    assert A.augment_dc(x, {}, gen()) is x
    assert A.augment_dc(x, None, gen()) is x
    with pytest.raises(ValueError):
        A.augment_dc(x, dict(crop=4, scale=0.2, rotate=45, noise=0.001, strategy='crop_flip'), gen())


def test_dc_noise_magnitude():
    x = rand_images(64)
    out = A.augment_dc(x, dict(noise=0.001, strategy='noise'), gen(29))
    d = out - x
    assert out.shape == x.shape
    assert abs(d.std().item() - 0.001) < 5e-5 and abs(d.mean().item()) < 5e-5


def test_dc_crop_is_mean_filled_shift():
    n, size = 256, 16
    x = rand_images(n, h=size, seed=30)
    out = A.augment_dc(x, dict(crop=4, strategy='crop'), gen(31))
    mean = x.mean((0, 2, 3)).view(1, 3, 1, 1)
    canvas = (mean.expand(n, 3, size + 8, size + 8)).clone()
    canvas[:, :, 4:4 + size, 4:4 + size] = x
    found = []
    for i in range(n):
        hits = [(r, c) for r in range(8) for c in range(8)
                if torch.allclose(canvas[i, :, r:r + size, c:c + size], out[i])]
        assert hits, 'every output must be a window of the mean-padded image'
        found.append(hits[0])
    rs = {r for r, _ in found}
    assert rs == set(range(8))  # offsets 0..7: shifts -4..+3


def test_dc_scale_matches_reference_loop():
    # per-image reference: nearest resize to (h, w), paste centred on a zero canvas, centre crop
    n, size, scale = 40, 32, 0.2
    x = rand_images(n, h=size, seed=32)
    u = torch.rand(n, 2, generator=gen(33))
    out = A._dc_scale(x, u, scale)
    for i in range(n):
        h = int((1 - scale + 2 * scale * u[i, 0].double().item()) * size)
        w = int((1 - scale + 2 * scale * u[i, 1].double().item()) * size)
        tmp = F.interpolate(x[i:i + 1], [h, w])[0]
        m = max(h, w, size, size)
        canvas = torch.zeros(3, m, m)
        r, c = int((m - h) / 2), int((m - w) / 2)
        canvas[:, r:r + h, c:c + w] = tmp
        r, c = int((m - size) / 2), int((m - size) / 2)
        assert torch.equal(out[i], canvas[:, r:r + size, c:c + size]), (i, h, w)


def _ref_rotate(img, angle, fill):
    # the reference's per-image scipy call: reshape=True, then centre crop
    from scipy.ndimage import rotate
    im = rotate(img.numpy(), angle=angle, axes=(-2, -1), cval=fill)
    H, W = img.shape[-2:]
    r, c = int((im.shape[-2] - H) / 2), int((im.shape[-1] - W) / 2)
    return torch.from_numpy(np.ascontiguousarray(im[:, r:r + H, c:c + W]))


@pytest.mark.parametrize('size', [28, 32])
def test_dc_rotate_matches_scipy_all_angles(size):
    # every angle the DC rotate can draw (-45..44), noise image, whole image including borders and fill.
    # Tolerance 1e-5: float32 rounding (scipy filters in float64, we in float32).
    x = rand_images(90, c=1, h=size, seed=34)
    angles = torch.arange(-45, 45)
    fill = 0.3
    out = A._dc_rotate(x, angles, fill)
    for i, a in enumerate(angles.tolist()):
        torch.testing.assert_close(out[i], _ref_rotate(x[i], a, fill), atol=1e-5, rtol=0)


def test_dc_rotate_vs_scipy_reshape_false_smooth_interior():
    # scipy.ndimage.rotate(reshape=False) keeps the canvas centre; the reference's reshape=True + int crop is
    # half a pixel off it when (enlarged side - H) is odd. On a smooth image (period 32 px, amplitude 1, so the
    # gradient is at most 2*pi/32 ~ 0.2 / px) the interior therefore agrees within 0.5 * 0.2 * sqrt(2) ~ 0.15;
    # we assert 0.15 on the central 16 x 16, and 1e-5 for the angles where there is no half-pixel offset.
    from scipy.ndimage import rotate
    size, fill = 32, -0.2
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing='ij')
    img = (torch.sin(2 * math.pi * yy / 32) * torch.cos(2 * math.pi * xx / 32)).view(1, 1, size, size)
    angles = torch.tensor([-45, -30, -17, -5, 0, 3, 12, 29, 44])
    out = A._dc_rotate(img.expand(len(angles), -1, -1, -1), angles, fill)
    iy, _ = A._rotate_coords(angles, size, size)
    for i, a in enumerate(angles.tolist()):
        ref = torch.from_numpy(rotate(img[0].numpy(), angle=a, axes=(-2, -1), reshape=False, cval=fill))
        d = (out[i] - ref).abs()
        assert d[:, 8:24, 8:24].max() < 0.15
        c, s = math.cos(math.radians(a)), abs(math.sin(math.radians(a)))
        if int(c * size + s * size + 0.5 - size) % 2 == 0:
            assert d.max() < 1e-5


def test_dc_rotate_bilinear_mode_close_to_spline():
    x = F.avg_pool2d(rand_images(16, seed=35), 5, 1, 2)  # smooth-ish
    angles = torch.randint(-45, 45, (16,), generator=gen(36))
    a = A._dc_rotate(x, angles, 0.1, 'spline')
    b = A._dc_rotate(x, angles, 0.1, 'bilinear')
    assert (a - b)[:, :, 8:24, 8:24].abs().mean() < 0.05


def test_dc_is_vectorised(monkeypatch):
    # the number of gathers does not grow with the batch: no per-image python loop
    calls = []
    real = A._gather2d
    monkeypatch.setattr(A, '_gather2d', lambda *a, **k: calls.append(1) or real(*a, **k))
    param = dict(crop=4, scale=0.2, rotate=45, noise=0.001, strategy='crop_scale_rotate_noise')
    counts = []
    for n in (16, 256):
        calls.clear()
        A.augment_dc(rand_images(n, seed=37), param, gen(38))
        counts.append(len(calls))
    assert counts[0] == counts[1] == 1 + 1 + 16  # crop, scale, 16 spline taps


def test_dc_strategy_gives_finite_images_of_the_input_shape():
    x = rand_images(256, seed=37)
    param = dict(crop=4, scale=0.2, rotate=45, noise=0.001, strategy='crop_scale_rotate')
    out = A.augment_dc(x, param, gen(38))
    assert out.shape == x.shape and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------------
# DiM DiffAug

def test_dim_batch_mode_shares_transform():
    img = rand_images(1, seed=40)
    x = img.expand(8, -1, -1, -1).clone()
    out = A.DiMDiffAug('flip_color_crop_scale_cutout', batch=True)(x, gen(41))
    torch.testing.assert_close(out, out[:1].expand_as(out))
    out = A.DiMDiffAug('flip_color_crop_scale_cutout', batch=False)(x, gen(41))
    assert not torch.allclose(out[0], out[1])


def test_dim_composition_order():
    x = rand_images(6, seed=42)
    aug = A.DiMDiffAug('cutout_crop_color_flip_rotate', batch=False)  # token order in the string is irrelevant
    out = aug(x, gen(43))
    u_choice, p = A._draw_params(6, gen(43), aug.param)
    y = A._apply_token(x, 'flip', p, aug.param)
    y = A._apply_token(y, 'color', p, aug.param)
    y = A._apply_token(y, ['crop', 'rotate'][int(u_choice[0] * 2)], p, aug.param)
    y = A._apply_token(y, 'cutout', p, aug.param)
    torch.testing.assert_close(out, y)
    # cutout comes last, so the hole is exactly zero although colour ran
    assert ((out == 0).sum((1, 2, 3)) >= 3 * 8 * 8).all()


def test_dim_one_op_per_call():
    x = rand_images(4, seed=44)
    aug = A.DiMDiffAug('scale_rotate', batch=True)
    seen = set()
    for seed in range(20):
        out = aug(x, gen(seed))
        u_choice, p = A._draw_params(1, gen(seed), aug.param)
        p = A.select_params(p, torch.zeros(4, dtype=torch.long))
        cands = {t: A._apply_token(x, t, p, aug.param) for t in ('scale', 'rotate')}
        match = [t for t, y in cands.items() if torch.allclose(out, y)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {'scale', 'rotate'}


def test_dim_translate_is_width_only():
    rows = torch.linspace(1, 2, 32).view(1, 1, 32, 1).expand(64, 3, 32, 32).clone()  # constant along width
    out = A.DiMDiffAug('translate')(rows, gen(45))
    moved = out != 0
    assert torch.equal(out[moved], rows[moved])  # no vertical motion
    assert (~moved).any()  # some columns shifted in as zeros


def test_dim_normalisation_and_identity():
    x = torch.rand(4, 3, 8, 8, generator=gen(46))
    mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
    out = A.DiMDiffAug('none', mean=mean, std=std)(x)
    ref = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref)
    # brightness acts in standardised units: normalise first, then augment
    aug = A.DiMDiffAug('color', batch=True, mean=mean, std=std)
    u_choice, p = A._draw_params(1, gen(47), aug.param)
    p = A.select_params(p, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(aug(x, gen(47)), A._apply_token(ref, 'color', p, aug.param))
    assert A.DiMDiffAug('none')(x) is x
    with pytest.raises(ValueError):
        A.DiMDiffAug('color_noise')
    with pytest.raises(ValueError):
        A.DiMDiffAug('color', mean=mean)


def test_make_dim_augs_reference_rules():
    aug_batch, aug_rand = A.make_dim_augs('color_crop_cutout', 'cut', mean=[0.5] * 3, std=[0.5] * 3)
    assert aug_batch.batch and aug_batch.cutout and aug_batch.color and aug_batch.choices == ['crop']
    # as the reference: cutout removed from aug_rand under --mixup-net cut, and no flip by default (docs/design.md,
    # D-B14, D-B15)
    assert not aug_rand.batch and not aug_rand.cutout and not aug_rand.flip and aug_rand.color
    assert aug_rand.choices == ['crop']
    _, aug_rand = A.make_dim_augs('color_crop_cutout', 'vanilla')
    assert aug_rand.cutout
    _, aug_rand = A.make_dim_augs('cutout', 'cut')
    x = torch.rand(2, 3, 8, 8)
    assert aug_rand(x, gen()) is x


def test_empty_batches():
    x = torch.zeros(0, 3, 8, 8)
    assert A.DiffAugment(x, FULL, generator=gen()).shape == x.shape
    assert A.apply_dsa(x, A.sample_dsa_params(FULL, 1, gen())).shape == x.shape
    assert A.augment_dc(x, A.get_daparam('MNIST', 'ConvNet', 'ConvNet', 1), gen()).shape == x.shape
    assert A.DiMDiffAug('color_crop_cutout')(x, gen()).shape == x.shape

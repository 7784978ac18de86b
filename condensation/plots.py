"""Pictures drawn with PIL alone (no matplotlib dependency): the continual-learning accuracy curves, the
reproduction report's paper-against-measured chart, and grids of images in titled blocks."""
import io
import math

import torch

from condensation.common import atomic_write_bytes

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _canvas(size):
    """A white PIL image, its drawing context and a text function that works with any Pillow."""
    from PIL import Image, ImageDraw
    img = Image.new('RGB', size, 'white')
    d = ImageDraw.Draw(img)

    def text(xy, s, anchor=None, fill='black'):
        try:
            d.text(xy, s, fill=fill, anchor=anchor)
        except ValueError:  # a Pillow without FreeType has only a bitmap font, which takes no anchor
            d.text(xy, s, fill=fill)
    return img, d, text


def _save(img, path):
    buf = io.BytesIO()
    img.save(buf, format='png')
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(path, curves, title, size=(760, 460)):
    """Accuracy vs number of classes seen, one line (with ±std bars) per method, drawn with PIL."""
    W, H = size
    left, right, top, bottom = 60, 170, 36, 50
    img, d, text = _canvas(size)
    xs = sorted({x for c in curves for x in c[1]}) or [0, 1]
    lo = min([m - s for c in curves for m, s in zip(c[2], c[3])] or [0])
    hi = max([m + s for c in curves for m, s in zip(c[2], c[3])] or [100])
    y0, y1 = max(0, 10 * math.floor(lo / 10)), min(100, 10 * math.ceil(hi / 10))
    y1 = y1 if y1 > y0 else y0 + 10
    x0, x1 = (xs[0], xs[-1]) if xs[-1] > xs[0] else (xs[0] - 1, xs[0] + 1)

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (W - left - right),
                H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom))

    for y in range(int(y0), int(y1) + 1, 10):
        d.line([px(x0, y), px(x1, y)], fill=(225, 225, 225))
        text((left - 8, px(x0, y)[1]), f'{y}', 'rm')
    for x in xs:
        text((px(x, y0)[0], H - bottom + 8), f'{x}', 'mt')
    d.rectangle([px(x0, y1), px(x1, y0)], outline='black')
    text(((left + W - right) / 2, H - 14), 'number of classes', 'mm')
    text((8, top - 22), 'test accuracy (%)')
    text(((left + W - right) / 2, 12), title, 'mm')
    for i, (method, cx, cm, cs) in enumerate(curves):
        colour = COLOURS[i % len(COLOURS)]
        points = [px(x, m) for x, m in zip(cx, cm)]
        for (x, m, s) in zip(cx, cm, cs):
            d.line([px(x, max(y0, m - s)), px(x, min(y1, m + s))], fill=colour)
        if len(points) > 1:
            d.line(points, fill=colour, width=2)
        for p in points:
            d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=colour)
        ly = top + 10 + 18 * i
        d.line([(W - right + 12, ly), (W - right + 36, ly)], fill=colour, width=3)
        text((W - right + 42, ly), f'{method} ({cm[-1]:.1f})', 'lm')
    _save(img, path)


def plot_agreement(path, points, title, size=(900, 640)):
    """Published accuracy (x) against measured accuracy (y) with ±std bars, one labelled point per cell, the
    diagonal and the band of agreement (max(1 point, 3 std) either side, drawn at 1 point) in grey."""
    W, H = size
    left, right, top, bottom = 60, 170, 36, 50  # the labels stand in the right margin
    img, d, text = _canvas(size)
    values = [v for _, x, sx, y, sy in points for v in (x - sx, x + sx, y - sy, y + sy)] or [0, 100]
    lo, hi = max(0, 10 * math.floor(min(values) / 10)), min(100, 10 * math.ceil(max(values) / 10))
    hi = hi if hi > lo else lo + 10

    def px(x, y):
        return (left + (x - lo) / (hi - lo) * (W - left - right),
                H - bottom - (y - lo) / (hi - lo) * (H - top - bottom))

    for v in range(int(lo), int(hi) + 1, 10):
        d.line([px(lo, v), px(hi, v)], fill=(225, 225, 225))
        d.line([px(v, lo), px(v, hi)], fill=(225, 225, 225))
        text((left - 8, px(lo, v)[1]), f'{v}', 'rm')
        text((px(v, lo)[0], H - bottom + 8), f'{v}', 'mt')
    d.polygon([px(lo, lo + 1), px(hi - 1, hi), px(hi, hi), px(hi, hi - 1), px(lo + 1, lo), px(lo, lo)],
              fill=(235, 235, 235))
    d.line([px(lo, lo), px(hi, hi)], fill=(150, 150, 150))
    d.rectangle([px(lo, hi), px(hi, lo)], outline='black')
    text(((left + W - right) / 2, H - 14), 'published (%)', 'mm')
    text((8, top - 22), 'measured (%)')
    text(((left + W - right) / 2, 12), title, 'mm')
    # Labels in the right margin at their point's height, pushed apart to one line each (cells near 97-99 % would
    # print over each other beside their points), each tied to its point by a thin line of its colour.
    centres = [px(x, y) for _, x, _, y, _ in points]
    heights = _spread([cy for _, cy in centres], top, H - bottom, 13)
    for i, ((label, x, sx, y, sy), (cx, cy), ly) in enumerate(zip(points, centres, heights)):
        colour = COLOURS[i % len(COLOURS)]
        d.line([px(x, y - sy), px(x, y + sy)], fill=colour)
        d.line([px(x - sx, y), px(x + sx, y)], fill=colour)
        d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
        d.line([(cx + 4, cy), (W - right + 4, ly), (W - right + 8, ly)], fill=tuple((c + 2 * 255) // 3 for c in colour))
        text((W - right + 10, ly), label, 'lm', fill=colour)
    _save(img, path)


def _spread(ys, lo, hi, gap):
    """Heights near ys, in the same order, at least gap apart (less when too many to fit) within [lo, hi]."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    gap = min(gap, (hi - lo) / max(len(ys) - 1, 1))
    out, last = list(ys), lo - gap
    for i in order:  # downwards: each at least gap below the one above
        out[i] = last = max(ys[i], last + gap)
    last = hi + gap
    for i in reversed(order):  # then upwards from the bottom edge, for those pushed past it
        out[i] = last = min(out[i], last - gap)
    return out


def save_grids(path, blocks, nrow, min_width=256, title_width=140):
    """Image grids ([0, 1] images, nrow a row, torchvision's 2-pixel padding) side by side, each with its title
    above it when titled; enlarged (nearest neighbour) by a whole factor to min_width pixels across, and every
    titled grid to title_width, so that 28-pixel digits and the titles can be read. blocks: [(title or None,
    N x C x H x W)]."""
    from PIL import Image
    from torchvision.utils import make_grid
    grids = [make_grid(x, nrow=nrow) for _, x in blocks]
    titled = any(title for title, _ in blocks)
    gap, top = (12 if len(grids) > 1 else 0), (22 if titled else 0)
    k = max(1, math.ceil(min_width / sum(g.shape[2] for g in grids)),
            math.ceil(title_width / min(g.shape[2] for g in grids)) if titled else 1)
    img, _, text = _canvas((sum(k * g.shape[2] for g in grids) + gap * (len(grids) - 1),
                            top + k * max(g.shape[1] for g in grids)))
    x = 0
    for (title, _), g in zip(blocks, grids):
        pixels = g.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # as save_image
        h, w = pixels.shape[:2]
        img.paste(Image.fromarray(pixels).resize((k * w, k * h), Image.NEAREST), (x, top))
        if title:
            text((x + k * w / 2, top / 2), title, 'mm')
        x += k * w + gap
    _save(img, path)

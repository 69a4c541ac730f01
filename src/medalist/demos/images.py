"""The built-in `demo-images` competition: small drawn pictures, generated deterministically.

Writes train.csv (id,label), test.csv (id), sample_submission.csv (id,label) and the images in
train/ and test/ into the folder it is given; an id is the image's file name (`tr00042.png`), as in
Kaggle competitions whose files come in several formats. `make download COMP=demo-images` calls it.

Six imbalanced classes of shapes and textures, drawn with random colour, scale, rotation,
background, clutter and noise, mostly 48×48 PNG. Planted for the checks and folds to find: a few
images of other sizes, modes (grey, palette, RGBA, CMYK JPEG) and formats (JPEG, WebP); exact copies
(some with another label) and near copies (re-encoded, brightened, resized) within train and of
train images in test; exactly one unreadable (truncated) file, in test; ~5% flipped train labels,
so even a perfect model stays clearly below 1.0.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.core.io import write_csv

N_TRAIN, N_TEST, SEED, SIZE = 1500, 500, 20261126, 48
LABELS = ("circle", "square", "triangle", "cross", "stripes", "dots")
SHARES = [0.30, 0.24, 0.18, 0.13, 0.10, 0.05]  # class → share of rows
LABEL_NOISE = 0.05
OTHER_SIZES = [(64, 64), (40, 56), (72, 48), (32, 32)]
ODD_KINDS = ("grey", "palette", "rgba", "cmyk", "jpeg", "webp")


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float64)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Solid, a gradient or a soft noise texture: (h, w, 3) float."""
    kind = rng.choice(3, p=[0.45, 0.4, 0.15])
    a = _colour(rng)
    if kind == 0:
        return np.broadcast_to(a, (h, w, 3)).copy()
    if kind == 1:
        b = _colour(rng)
        t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
        ramp = t[None, :, None] if len(t) == w else t[:, None, None]
        return np.broadcast_to(a + (b - a) * ramp, (h, w, 3)).copy()
    coarse = rng.normal(0, 20, (h // 8 + 2, w // 8 + 2, 1))
    up = np.kron(coarse, np.ones((8, 8, 1)))[:h, :w]
    return np.clip(a + up, 0, 255)


def _contrasting(rng: np.random.Generator, bg: np.ndarray) -> np.ndarray:
    """A colour at least somewhat away from the background's mean (low contrast happens, too)."""
    mean = bg.reshape(-1, 3).mean(axis=0)
    for _ in range(20):
        c = _colour(rng)
        if np.abs(c - mean).sum() > rng.uniform(120, 300):
            return c
    return 255 - mean


def _polygon(cx: float, cy: float, points: list[tuple[float, float]], angle: float) -> list[tuple[float, float]]:
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]


def _shape_mask(rng: np.random.Generator, label: int, w: int, h: int):
    """The class's figure as a PIL "L" mask of size (w, h)."""
    from PIL import Image, ImageDraw

    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    s = min(w, h)
    r = rng.uniform(0.25, 0.42) * s
    cx, cy = w / 2 + rng.uniform(-0.15, 0.15) * s, h / 2 + rng.uniform(-0.15, 0.15) * s
    angle = rng.uniform(0, 2 * math.pi)
    if label == 0:  # circle (a slight ellipse)
        ry = r * rng.uniform(0.8, 1.2)
        d.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=255)
    elif label == 1:  # square (a slight rectangle)
        a, b = r * 0.8, r * 0.8 * rng.uniform(0.75, 1.3)
        d.polygon(_polygon(cx, cy, [(-a, -b), (a, -b), (a, b), (-a, b)], angle), fill=255)
    elif label == 2:  # triangle, a little irregular
        pts = [(r * math.cos(t + rng.uniform(-0.2, 0.2)), r * math.sin(t + rng.uniform(-0.2, 0.2)))
               for t in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
        d.polygon(_polygon(cx, cy, pts, angle), fill=255)
    elif label == 3:  # cross
        t = r * rng.uniform(0.25, 0.4)
        for pts in ([(-r, -t), (r, -t), (r, t), (-r, t)], [(-t, -r), (t, -r), (t, r), (-t, r)]):
            d.polygon(_polygon(cx, cy, pts, angle), fill=255)
    elif label == 4:  # stripes over a large patch
        period, width = rng.uniform(4, 9), rng.uniform(0.3, 0.6)
        yy, xx = np.mgrid[0:h, 0:w]
        u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        stripes = (u / period) % 1 < width
        patch = np.hypot(xx - cx, yy - cy) < r * 1.4
        return Image.fromarray((stripes & patch).astype(np.uint8) * 255, "L")
    else:  # dots on a jittered grid
        period = rng.uniform(6, 11)
        dot = period * rng.uniform(0.18, 0.3)
        for gy in np.arange(period / 2, h, period):
            for gx in np.arange(period / 2, w, period):
                x, y = gx + rng.uniform(-1, 1), gy + rng.uniform(-1, 1)
                if math.hypot(x - cx, y - cy) < r * 1.4:
                    d.ellipse([x - dot, y - dot, x + dot, y + dot], fill=255)
    return m


def draw(rng: np.random.Generator, label: int, w: int = SIZE, h: int = SIZE) -> np.ndarray:
    """One picture of class `label` as (h, w, 3) uint8."""
    from PIL import Image, ImageDraw

    bg = _background(rng, w, h)
    fg = _contrasting(rng, bg)
    mask = np.asarray(_shape_mask(rng, label, w, h), dtype=np.float64)[..., None] / 255
    img = bg * (1 - mask) + fg * mask
    if rng.random() < 0.3:  # clutter: a few thin strokes that belong to no class
        pil = Image.fromarray(img.astype(np.uint8))
        d = ImageDraw.Draw(pil)
        for _ in range(rng.integers(1, 3)):
            x0, y0, x1, y1 = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, h)
            d.line([x0, y0, x1, y1], fill=tuple(int(c) for c in _colour(rng)), width=1)
        img = np.asarray(pil, dtype=np.float64)
    img = img + rng.normal(0, rng.uniform(0, 10), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray, kind: str) -> tuple[bytes, str]:
    """(file bytes, extension) of an image in one of the formats and modes a download holds."""
    from PIL import Image

    im = Image.fromarray(pixels)
    buf = io.BytesIO()
    if kind == "grey":
        im.convert("L").save(buf, "PNG")
    elif kind == "palette":
        im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(buf, "PNG")
    elif kind == "rgba":  # transparent corners, as cut-out product photos have
        alpha = np.full(pixels.shape[:2], 255, np.uint8)
        k = pixels.shape[0] // 6
        alpha[:k, :k] = alpha[-k:, -k:] = 0
        rgba = np.dstack([pixels, alpha])
        Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    elif kind == "cmyk":
        im.convert("CMYK").save(buf, "JPEG", quality=90)
        return buf.getvalue(), ".jpg"
    elif kind == "jpeg":
        im.save(buf, "JPEG", quality=85)
        return buf.getvalue(), ".jpg"
    elif kind == "webp":
        im.save(buf, "WEBP", quality=85)
        return buf.getvalue(), ".webp"
    else:
        im.save(buf, "PNG")
    return buf.getvalue(), ".png"


def _near_copy(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """The same picture, a little changed: brighter, noisier, or resized to another size."""
    from PIL import Image

    how = rng.integers(3)
    if how == 0:
        return np.clip(pixels.astype(np.int16) + int(rng.integers(3, 7)), 0, 255).astype(np.uint8)
    if how == 1:
        return np.clip(pixels + rng.normal(0, 3, pixels.shape), 0, 255).astype(np.uint8)
    h, w = pixels.shape[:2]
    side = int(rng.integers(40, 57))
    return np.asarray(Image.fromarray(pixels).resize((round(w * side / SIZE), round(h * side / SIZE)),
                                                     Image.Resampling.BILINEAR))


def _kind(rng: np.random.Generator, i: int) -> str:
    """How picture i is stored: the first ones one of each odd kind (so a small fixture has them
    all), then mostly PNG."""
    if i < len(ODD_KINDS):
        return ODD_KINDS[i]
    r = rng.random()
    for kind, upto in (("grey", 0.02), ("palette", 0.03), ("rgba", 0.04), ("cmyk", 0.05),
                       ("jpeg", 0.07), ("webp", 0.09)):
        if r < upto:
            return kind
    return "png"


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    counts = [round(s * n) for s in SHARES]
    counts[0] += n - sum(counts)
    y = np.repeat(np.arange(len(SHARES)), counts)
    rng.shuffle(y)
    return y


def write_demo(out_dir: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> None:
    """The competition's files into `out_dir`; smaller n_train / n_test make a test fixture with
    every planted oddity still in it."""
    rng = np.random.default_rng(SEED)
    n_special = max(2, n_train // 75)  # 20 of each kind of planted duplicate at full size

    def picture(i: int, label: int) -> np.ndarray:
        """Picture i: the first ones one of each other size, then 3% of them."""
        other = i < len(OTHER_SIZES) or rng.random() < 0.03
        w, h = OTHER_SIZES[i % len(OTHER_SIZES)] if other else (SIZE, SIZE)
        return draw(rng, int(label), w, h)

    y = _labels(rng, n_train - 2 * n_special)
    train = [(picture(i, c), int(c), _kind(rng, i)) for i, c in enumerate(y)]
    originals = rng.choice(len(train), 2 * n_special, replace=False)
    for k, i in enumerate(originals):  # exact copies, a few with another label; then near copies
        px, label, kind = train[i]
        if k < n_special:
            conflict = k < max(1, n_special // 6)
            train.append((px, (label + 1) % len(LABELS) if conflict else label, kind))
        else:
            train.append((_near_copy(rng, px), label, "jpeg" if k % 2 else "png"))
    noisy = rng.random(len(train)) < LABEL_NOISE
    train = [(px, int((label + rng.integers(1, len(LABELS))) % len(LABELS)) if flip else label, kind)
             for (px, label, kind), flip in zip(train, noisy)]
    order = rng.permutation(len(train))
    train = [train[i] for i in order]

    test = [(picture(i, c), _kind(rng, i)) for i, c in enumerate(_labels(rng, n_test - n_special))]
    copied = rng.choice(len(train), n_special, replace=False)
    for k, i in enumerate(copied):  # train pictures that reappear in test, exactly or nearly
        px, _, kind = train[i]
        test.append((px, kind) if k % 2 else (_near_copy(rng, px), "png"))
    order = rng.permutation(len(test))
    test = [test[i] for i in order]
    unreadable = int(np.flatnonzero(order == 0)[0])  # a drawn picture, not a planted copy

    out_dir = Path(out_dir)
    (out_dir / "train").mkdir(parents=True, exist_ok=True)
    (out_dir / "test").mkdir(parents=True, exist_ok=True)
    train_ids = []
    for i, (px, _, kind) in enumerate(train):
        data, ext = _encode(px, kind)
        train_ids.append(f"tr{i:05d}{ext}")
        (out_dir / "train" / train_ids[-1]).write_bytes(data)
    test_ids = []
    for i, (px, kind) in enumerate(test):
        data, ext = _encode(px, "png" if i == unreadable else kind)
        test_ids.append(f"te{i:05d}{ext}")
        if i == unreadable:  # cut short, as an interrupted download leaves it
            data = data[: len(data) // 3]
        (out_dir / "test" / test_ids[-1]).write_bytes(data)
    write_csv(out_dir / "train.csv", pd.DataFrame({"id": train_ids, "label": [label for _, label, _ in train]}))
    write_csv(out_dir / "test.csv", pd.DataFrame({"id": test_ids}))
    write_csv(out_dir / "sample_submission.csv", pd.DataFrame({"id": test_ids, "label": 0}))

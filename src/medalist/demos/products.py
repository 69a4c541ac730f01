"""The built-in `demo-products` competition: marketplace listings (title, description, attributes,
photo), generated deterministically, where text and photo each tell only half of the category.

Writes train.csv (id, title, description, attributes, image, label), test.csv (the same without
label), sample_submission.csv (id, label) and the photos in images/ into the folder it is given;
`make download COMP=demo-products` calls it.

Eight categories: four product kinds (mug, plate, cushion, rug) × two designs (striped, dotted).
- The text names the kind (many wordings) but, in most rows, not the design: text alone confuses
  the two designs of a kind (mug_striped vs mug_dotted).
- The photo shows the silhouette and the design, but a mug and a plate are both round and a
  cushion and a rug both square: the picture alone confuses mug_striped vs plate_striped.
So each modality alone tops out near half of the rows, and only both together tell all eight
apart: fusion has something to win, and blanking the photos shows where the gain comes from.

Planted for the checks and folds: ~10% of rows without a photo (an empty `image` cell), one photo
that does not decode, the same product listed twice with another photo (a near copy) and the same
photo under another title, a few photos of other sizes and formats, and ~4% flipped train labels.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.core.io import write_csv
from medalist.demos.images import _background, _colour, _contrasting, _near_copy, _shape_mask

N_TRAIN, N_TEST, SEED, SIZE = 2400, 800, 20261203, 48
KINDS = ("mug", "plate", "cushion", "rug")
DESIGNS = ("striped", "dotted")
LABELS = tuple(f"{k}_{d}" for k in KINDS for d in DESIGNS)
SHARES = [0.17, 0.15, 0.14, 0.13, 0.12, 0.11, 0.10, 0.08]  # category → share of rows
NO_PHOTO, LABEL_NOISE, DESIGN_IN_TEXT = 0.10, 0.04, 0.15

_NOUNS = {
    "mug": ["mug", "coffee mug", "tea cup", "stoneware mug", "travel mug", "espresso cup"],
    "plate": ["plate", "dinner plate", "side plate", "serving platter", "dessert plate", "charger plate"],
    "cushion": ["cushion", "throw pillow", "sofa cushion", "floor cushion", "pillow cover", "seat pad"],
    "rug": ["rug", "area rug", "runner", "doormat", "bath mat", "hallway rug"],
}
_USES = {
    "mug": ["holds 350 ml of coffee or tea", "keeps drinks warm on the desk", "for the morning brew",
            "dishwasher and microwave safe handle"],
    "plate": ["for dinners and parties", "serves mains and salads", "dishwasher safe glaze",
              "stacks neatly in the cupboard"],
    "cushion": ["soft filling for the sofa", "adds comfort to any armchair", "zip cover, washable",
                "plump feather insert"],
    "rug": ["anti-slip backing for the floor", "soft pile underfoot", "brightens the hallway",
            "low pile, easy to vacuum"],
}
_MATERIAL = {"mug": ["ceramic", "stoneware", "porcelain"], "plate": ["porcelain", "stoneware", "melamine"],
             "cushion": ["cotton", "linen", "velvet"], "rug": ["wool", "jute", "cotton"]}
_ADJ = ["handmade", "modern", "classic", "scandi", "vintage", "premium", "everyday", "bright", "cosy", "minimal"]
_COLOURS = ["red", "blue", "green", "yellow", "grey", "black", "white", "teal", "orange", "pink"]
_FILLER = ["Ships in two days.", "Gift ready.", "Part of our new home collection.", "Limited stock.",
           "Designed in Lisbon.", "Made to last.", ""]
_DESIGN_WORDS = {"striped": ["striped", "with stripes", "pinstripe"], "dotted": ["polka dot", "dotted", "spotty"]}


def _pick(rng: np.random.Generator, xs: list[str]) -> str:
    return xs[int(rng.integers(len(xs)))]


def listing(rng: np.random.Generator, label: int) -> tuple[str, str, str]:
    """(title, description, attributes) of a product of category `label`: the kind always shows,
    the design only in DESIGN_IN_TEXT of listings (and then right 9 times in 10)."""
    kind, design = KINDS[label // 2], DESIGNS[label % 2]
    noun = _pick(rng, _NOUNS[kind])
    title = f"{_pick(rng, _ADJ).title()} {noun}"
    if rng.random() < 0.4:
        title += f" - set of {int(rng.integers(2, 5))}"
    desc = f"{_pick(rng, _USES[kind]).capitalize()}. {_pick(rng, _FILLER)}".strip()
    if rng.random() < DESIGN_IN_TEXT:
        shown = design if rng.random() < 0.9 else DESIGNS[1 - label % 2]
        desc = f"A {_pick(rng, _DESIGN_WORDS[shown])} design. " + desc
    attrs = f"material: {_pick(rng, _MATERIAL[kind])}; colour: {_pick(rng, _COLOURS)}; " \
            f"size: {_pick(rng, ['S', 'M', 'L'])}"
    return title, desc, attrs


def photo(rng: np.random.Generator, label: int, w: int = SIZE, h: int = SIZE) -> np.ndarray:
    """(h, w, 3) uint8: a round (mug, plate) or square (cushion, rug) silhouette filled with
    stripes or dots in a second colour, on a random background, with noise."""
    kind, design = label // 2, label % 2
    bg = _background(rng, w, h)
    body = _contrasting(rng, bg)
    ink = _contrasting(rng, np.broadcast_to(body, bg.shape))
    silhouette = np.asarray(_shape_mask(rng, 0 if kind < 2 else 1, w, h), np.float64)[..., None] / 255
    pattern = np.asarray(_shape_mask(rng, 4 if design == 0 else 5, w, h), np.float64)[..., None] / 255
    fill = body * (1 - pattern) + ink * pattern
    img = bg * (1 - silhouette) + fill * silhouette
    img = img + rng.normal(0, rng.uniform(0, 8), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray, fmt: str) -> tuple[bytes, str]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({} if fmt == "PNG" else {"quality": 88}))
    return buf.getvalue(), {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[fmt]


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    counts = [round(s * n) for s in SHARES]
    counts[0] += n - sum(counts)
    y = np.repeat(np.arange(len(SHARES)), counts)
    rng.shuffle(y)
    return y


def _rows(rng: np.random.Generator, n: int) -> list[dict]:
    rows = []
    for i, c in enumerate(_labels(rng, n)):
        title, desc, attrs = listing(rng, int(c))
        other = i < 2 or rng.random() < 0.03  # a few photos of another size or format
        w, h = ((64, 64), (40, 56))[i % 2] if other else (SIZE, SIZE)
        px = photo(rng, int(c), w, h) if (i < 3 or rng.random() >= NO_PHOTO) else None
        fmt = ("JPEG", "WEBP")[i % 2] if other else "PNG"
        rows.append({"title": title, "description": desc, "attributes": attrs, "px": px, "fmt": fmt, "label": int(c)})
    return rows


def write_demo(out_dir: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> None:
    """The competition's files into `out_dir`; smaller n_train / n_test make a test fixture with
    every planted oddity still in it."""
    rng = np.random.default_rng(SEED)
    n_dup = max(2, n_train // 120)
    train = _rows(rng, n_train - 2 * n_dup)
    with_photo = [r for r in train if r["px"] is not None]
    for k, i in enumerate(rng.choice(len(with_photo), 2 * n_dup, replace=False)):
        r = dict(with_photo[i])
        if k < n_dup:  # the same product listed again with another photo of it (a near copy)
            r["px"] = _near_copy(rng, r["px"])
        else:  # the same photo under another listing of the same category
            r["title"], r["description"], r["attributes"] = listing(rng, r["label"])
        train.append(r)
    noisy = rng.random(len(train)) < LABEL_NOISE
    for r, flip in zip(train, noisy):
        if flip:
            r["label"] = int((r["label"] + rng.integers(1, len(LABELS))) % len(LABELS))
    train = [train[i] for i in rng.permutation(len(train))]
    test = _rows(rng, n_test)
    unreadable = next(i for i, r in enumerate(test) if r["px"] is not None)

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)

    def table(rows: list[dict], prefix: str, broken: int = -1) -> pd.DataFrame:
        names = []
        for i, r in enumerate(rows):
            if r["px"] is None:
                names.append("")
                continue
            data, ext = _encode(r["px"], r["fmt"])
            if i == broken:  # cut short, as an interrupted upload leaves it
                data = data[: len(data) // 3]
            names.append(f"{prefix}{i:05d}{ext}")
            (out_dir / "images" / names[-1]).write_bytes(data)
        return pd.DataFrame({"id": [f"{prefix}{i:05d}" for i in range(len(rows))],
                             "title": [r["title"] for r in rows], "description": [r["description"] for r in rows],
                             "attributes": [r["attributes"] for r in rows], "image": names})

    tr = table(train, "p")
    tr["label"] = [LABELS[r["label"]] for r in train]
    te = table(test, "q", unreadable)
    write_csv(out_dir / "train.csv", tr)
    write_csv(out_dir / "test.csv", te)
    write_csv(out_dir / "sample_submission.csv", pd.DataFrame({"id": te["id"], "label": LABELS[0]}))

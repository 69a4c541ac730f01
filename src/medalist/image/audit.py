"""What `make check` measures on an image competition: files that do not decode, formats and
modes, sizes, exact and near duplicates (`image.dedup`) within train and between train and test,
simple image statistics and an adversarial train-vs-test classifier on them, and the pictures
(size histograms, a contact sheet of samples per class). `stages.checks` writes it up.

Everything is measured on the raw files (before `make folds`), so nothing here reads
data/processed/; pixels come from `image.cache.images` at dedup's HASH_SIZE, decoded once for
the duplicates, the statistics and the adversarial classifier together.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.core import config as C
from medalist.core.plots import pyplot, save_figure
from medalist.image.cache import images
from medalist.image.decode import header
from medalist.image.dedup import HASH_SIZE, Duplicates, find_duplicates, grey

SHEET_PER_CLASS, SHEET_SIZE = 8, 64  # the contact sheet: this many samples a class, at this size


def file_info(image_paths: Sequence[str]) -> pd.DataFrame:
    """format, mode, width, height, bytes of each file from its header ("?"/NaN where it is
    unreadable there: no file, not an image, over the pixel limit)."""
    root, rows = C.root(), []
    for p in image_paths:
        row = {"format": "?", "mode": "?", "width": np.nan, "height": np.nan, "bytes": np.nan}
        if p and (root / p).is_file():  # no path: a URL that did not download
            row["bytes"] = (root / p).stat().st_size
            head = header(root / p)  # no pixels are decoded here
            if head is not None:
                row.update(zip(("format", "mode", "width", "height"), head))
        rows.append(row)
    return pd.DataFrame(rows)


def pixel_stats(pixels: np.ndarray, readable: np.ndarray) -> pd.DataFrame:
    """Simple statistics of each decoded image (NaN where it did not decode)."""
    x = pixels.astype(np.float32)
    g = grey(pixels)
    sat = x.max(axis=3) - x.min(axis=3)
    out = pd.DataFrame({
        "mean red": x[..., 0].mean(axis=(1, 2)),
        "mean green": x[..., 1].mean(axis=(1, 2)),
        "mean blue": x[..., 2].mean(axis=(1, 2)),
        "grey std": g.std(axis=(1, 2)),
        "grey p5": np.percentile(g.reshape(len(g), -1), 5, axis=1),
        "grey p95": np.percentile(g.reshape(len(g), -1), 95, axis=1),
        "saturation": sat.mean(axis=(1, 2)),
        "edge energy": np.abs(np.diff(g, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(g, axis=2)).mean(axis=(1, 2)),
        "share near white": (g > 245).mean(axis=(1, 2)),
        "share near black": (g < 10).mean(axis=(1, 2)),
    })
    out.loc[~readable] = np.nan
    return out


def adversarial(train_feats: pd.DataFrame, test_feats: pd.DataFrame, seed: int = 0) -> tuple[float, list[tuple[str, float, float, float]]]:
    """Gradient boosting telling train from test on the statistics: CV AUC, and the statistics
    that tell them apart best on their own as (name, AUC, train median, test median)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    X = pd.concat([train_feats, test_feats], ignore_index=True)
    y = np.r_[np.zeros(len(train_feats)), np.ones(len(test_feats))]
    clf = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, class_weight="balanced", random_state=seed)
    # one thread: a few thousand rows of 15 statistics need no more, and OpenMP threads on cores
    # that other processes hold spin-wait (35 s instead of 2 on a busy 2-core machine)
    with threadpool_limits(1):
        p = cross_val_predict(clf, X.to_numpy(np.float64), y, cv=StratifiedKFold(5, shuffle=True, random_state=seed),
                              method="predict_proba")[:, 1]
    telling = []
    for col in X.columns:
        v = X[col].to_numpy(np.float64)
        ok = ~np.isnan(v)
        if len(np.unique(y[ok])) < 2 or np.nanstd(v) == 0:
            continue
        auc = roc_auc_score(y[ok], v[ok])
        telling.append((col, max(auc, 1 - auc), float(train_feats[col].median()), float(test_feats[col].median())))
    telling.sort(key=lambda t: -t[1])
    return float(roc_auc_score(y, p)), telling[:5]


@dataclasses.dataclass
class DuplicateCounts:
    rows: dict[str, int]  # check → rows, in the text checks' wording
    largest: list[int]  # indices (into train + test) of the largest group
    conflicts: list[list[int]]  # train groups whose members carry different labels (indices)


def count_duplicates(dup: Duplicates, labels: np.ndarray) -> DuplicateCounts:
    """`dup` found on train + test (train first, `len(labels)` rows): what the checks report."""
    n = len(labels)
    ex_tr, ex_te = pd.Series(dup.exact[:n]), pd.Series(dup.exact[n:])
    gr_tr, gr_te = pd.Series(dup.group[:n]), pd.Series(dup.group[n:])
    exact_in_train = int(ex_te.isin(set(ex_tr)).sum())
    per_group = pd.DataFrame({"g": gr_tr, "y": labels})
    n_labels = per_group.groupby("g")["y"].nunique()
    conflicts = [np.flatnonzero(dup.group[:n] == g).tolist() for g in n_labels.index[n_labels > 1]]
    sizes = np.bincount(dup.group)
    largest = np.flatnonzero(dup.group == int(sizes.argmax())).tolist()
    return DuplicateCounts(rows={
        "train exact duplicates (same bytes or pixels)": int(ex_tr.duplicated().sum()),
        "train near duplicates (beyond exact)": int(gr_tr.duplicated().sum() - ex_tr.duplicated().sum()),
        "duplicate groups with conflicting labels": len(conflicts),
        "test exact duplicates": int(ex_te.duplicated().sum()),
        "test images exactly in train": exact_in_train,
        "test images near a train image (beyond exact)": int(gr_te.isin(set(gr_tr)).sum()) - exact_in_train,
        "near pairs confirmed (train + test)": len(dup.near_pairs),
    }, largest=largest, conflicts=conflicts)


def plot_sizes(train_info: pd.DataFrame, test_info: pd.DataFrame, out: Path) -> Path:
    """Width, height and aspect ratio (width / height) histograms, train against test."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.2))
    for ax, col in zip(axes, ("width", "height", "aspect")):
        a, b = (df["width"] / df["height"] if col == "aspect" else df[col] for df in (train_info, test_info))
        a, b = a.dropna().to_numpy(), b.dropna().to_numpy()
        both = np.r_[a, b]
        lo, hi = (both.min(), both.max()) if len(both) else (0, 1)
        bins = np.linspace(lo - 0.5 if hi == lo else lo, hi + 0.5 if hi == lo else hi, 30)
        for v, name in ((a, "train"), (b, "test")):  # shares, so a small test set compares with train
            ax.hist(v, bins=bins, alpha=0.6, weights=np.full(len(v), 1 / max(len(v), 1)), label=name)
        ax.set_ylabel("share of images")
        ax.set_title(f"{col}{' (px)' if col != 'aspect' else ' (width / height)'}")
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, out)


def contact_sheet(image_paths: Sequence[str], labels: np.ndarray, readable: np.ndarray, names: Sequence[str],
                  out: Path, seed: int = 0) -> Path:
    """One row per class: up to SHEET_PER_CLASS readable train images drawn at random."""
    rng = np.random.default_rng(seed)
    picks = []
    for k in range(len(names)):
        idx = np.flatnonzero((labels == k) & readable)
        picks.append(rng.choice(idx, min(SHEET_PER_CLASS, len(idx)), replace=False) if len(idx) else idx)
    chosen = np.concatenate(picks).astype(int)
    pixels, _ = images([image_paths[i] for i in chosen], SHEET_SIZE)
    cell = SHEET_SIZE + 4
    sheet = np.full((len(names) * cell, SHEET_PER_CLASS * cell, 3), 255, np.uint8)
    at = 0
    for k, idx in enumerate(picks):
        for c in range(len(idx)):
            sheet[k * cell + 2:k * cell + 2 + SHEET_SIZE, c * cell + 2:c * cell + 2 + SHEET_SIZE] = pixels[at]
            at += 1
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.0 * SHEET_PER_CLASS + 2, 1.0 * len(names) + 0.6))
    ax.imshow(sheet, interpolation="nearest")
    ax.set_yticks([k * cell + cell / 2 for k in range(len(names))],
                  [f"{k} {n} ({int((labels == k).sum())})" for k, n in enumerate(names)])
    ax.set_xticks([])
    ax.set_title("train samples per class (rows in train)")
    fig.tight_layout()
    return save_figure(fig, out)


@dataclasses.dataclass
class ImageAudit:
    """Everything the image checks report; indices run over train then test."""

    train_info: pd.DataFrame
    test_info: pd.DataFrame
    readable: np.ndarray
    duplicates: DuplicateCounts
    adversarial_auc: float
    telling: list[tuple[str, float, float, float]]
    plots: list[Path]


def audit(train_paths: Sequence[str], test_paths: Sequence[str], labels: np.ndarray, names: Sequence[str],
          images_dir: Path, seed: int = 0) -> ImageAudit:
    """Measure; draw the sizes, and the samples per class, into images_dir (checks_*.png)."""
    paths = [*train_paths, *test_paths]
    n = len(train_paths)
    decoded = images(paths, HASH_SIZE)
    dup = find_duplicates(paths, decoded=decoded)
    info = file_info(paths)
    info["aspect"] = info["width"] / info["height"]
    stats = pd.concat([info[["width", "height", "aspect"]], np.log1p(info[["bytes"]]).rename(columns={"bytes": "log bytes"}),
                       pixel_stats(*decoded)], axis=1)
    auc, telling = adversarial(stats.iloc[:n], stats.iloc[n:], seed)
    plots = [plot_sizes(info.iloc[:n], info.iloc[n:], images_dir / "checks_sizes.png"),
             contact_sheet(train_paths, labels, dup.readable[:n], names, images_dir / "checks_samples.png", seed)]
    return ImageAudit(train_info=info.iloc[:n].reset_index(drop=True), test_info=info.iloc[n:].reset_index(drop=True),
                      readable=dup.readable, duplicates=count_duplicates(dup, labels), adversarial_auc=auc,
                      telling=telling, plots=plots)

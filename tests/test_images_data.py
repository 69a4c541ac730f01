"""Image data before any model: the built-in `demo-images` download, duplicate-aware folds and the
image checks; near duplicates are grouped without chaining (fashion-products, where it matters)."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from medalist.core import config as C
from medalist.core.competition import load_competition, read_raw
from medalist.core.config import Paths
from medalist.core.io import read_processed
from medalist.demos.images import write_demo
from medalist.image.cache import images
from medalist.image import decode
from medalist.image.decode import header, open_rgb, why_unreadable
from medalist.image.dedup import (
    MAX_PHASH_DISTANCE,
    candidate_pairs,
    find_duplicates,
    grey,
    phash,
)
from medalist.stages import checks as checks_stage
from medalist.stages import download
from medalist.stages import folds as folds_stage
from tiny_images import SHAPES, bomb_png, make_images, truncated_jpeg

FASHION = Path(__file__).resolve().parents[2] / "shared" / "competitions" / "fashion-products"


def _unreadable(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if open_rgb(p) is None)


def test_demo_images_download_is_kaggle_shaped(project):
    comp = load_competition("demo-images")
    raw = download.run(comp)
    train, test, sample = (pd.read_csv(raw / f, dtype=str) for f in ("train.csv", "test.csv", "sample_submission.csv"))
    assert list(train.columns) == ["id", "label"] and 1450 <= len(train) <= 1550
    assert list(test.columns) == ["id"] and 450 <= len(test) <= 550
    assert sample["id"].tolist() == test["id"].tolist()
    assert sorted(p.name for p in (raw / "train").iterdir()) == sorted(train["id"])
    assert sorted(p.name for p in (raw / "test").iterdir()) == sorted(test["id"])
    counts = train["label"].value_counts()
    assert len(counts) == 6 and counts.max() / counts.min() > 3  # six imbalanced classes
    # exactly one file that does not decode, in test; read_raw accepts the whole download
    assert _unreadable(raw / "train") == [] and len(_unreadable(raw / "test")) == 1
    tr, te, _ = read_raw(comp, raw)
    assert len(tr) == len(train) and len(te) == len(test)


def test_demo_images_is_deterministic_and_holds_every_oddity(tmp_path):
    write_demo(tmp_path / "a", n_train=150, n_test=50)
    write_demo(tmp_path / "b", n_train=150, n_test=50)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    kinds, sizes = set(), set()
    for f in files:
        if f.suffix in (".png", ".jpg", ".webp") and open_rgb(tmp_path / "a" / f) is not None:
            with Image.open(tmp_path / "a" / f) as im:
                kinds.add((im.format, im.mode))
                sizes.add(im.size)
    assert {("PNG", "L"), ("PNG", "P"), ("PNG", "RGBA"), ("JPEG", "CMYK"), ("JPEG", "RGB"), ("WEBP", "RGB"),
            ("PNG", "RGB")} <= kinds
    assert len(sizes) >= 4 and (48, 48) in sizes


def _plant(raw: Path, train: pd.DataFrame, rng: np.random.Generator) -> list[list[str]]:
    """Add exact and near copies of some train images under new ids; the id groups planted."""
    planted, rows = [], []
    for k, i in enumerate(rng.choice(len(train), 12, replace=False)):
        src = raw / "train" / train["id"].iloc[i]
        new = f"copy{k:02d}" + (".png" if k % 2 else ".jpg")
        if k % 2:  # the same bytes
            shutil.copyfile(src, raw / "train" / new)
        else:  # re-encoded as JPEG, a little brighter
            a = np.asarray(open_rgb(src), dtype=np.int16) + 4
            buf = io.BytesIO()
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
            (raw / "train" / new).write_bytes(buf.getvalue())
        rows.append({"id": new, "label": train["label"].iloc[i]})
        planted.append([train["id"].iloc[i], new])
    pd.concat([train, pd.DataFrame(rows)], ignore_index=True).to_csv(raw / "train.csv", index=False)
    return planted


def test_folds_keep_duplicates_together_and_classes_stratified(project, capsys):
    comp = load_competition("demo-images")
    raw = download.run(comp)
    train = pd.read_csv(raw / "train.csv", dtype=str)
    planted = _plant(raw, train, np.random.default_rng(0))
    broken = train["id"].iloc[5]
    (raw / "train" / broken).write_bytes(b"not an image at all")
    bomb_png(raw / "train" / train["id"].iloc[6])  # 30,000 × 30,000 pixels: refused from its header
    truncated_jpeg(raw / "train" / train["id"].iloc[7])
    (bad_test,) = _unreadable(raw / "test")

    folds_stage.run(comp)
    tr, te = read_processed(Paths("demo-images"))
    assert "3 train image(s) do not decode and are left out" in capsys.readouterr().out
    assert not set(train["id"].iloc[5:8]) & set(tr["id"]) and len(tr) == len(train) + len(planted) - 3
    assert bad_test in set(te["id"]) and len(te) == 500  # an unreadable test image keeps its row
    fold = dict(zip(tr["id"], tr["fold"]))
    assert all(fold[a] == fold[b] for a, b in planted)
    # the demo's own duplicates, as the checks find them, never straddle folds either
    dup = find_duplicates(tr["image"].tolist())
    assert (tr.groupby(dup.group)["fold"].nunique() == 1).all()
    counts = tr.groupby(["fold", "label"]).size().unstack()
    expected = tr["label"].value_counts() / comp.folds.n
    assert ((counts - expected).abs() <= np.maximum(0.1 * expected, 1)).all().all()


def test_checks_name_the_unreadable_file_and_count_duplicates(project):
    comp = load_competition("demo-images")
    raw = Paths("demo-images").raw
    write_demo(raw, n_train=300, n_test=60)  # 4 of each planted duplicate
    (raw / ".complete").touch()
    (bad,) = _unreadable(raw / "test")
    checks_stage.run(comp)
    md = (Paths("demo-images").results / "checks.md").read_text()
    assert f"`data/raw/demo-images/test/{bad}`: test, kept" in md
    assert "| test | 60 | 0 (0.0%) | 1 |" in md
    for line in ("| train exact duplicates (same bytes or pixels) | 4 |", "| train near duplicates (beyond exact) | 4 |",
                 "| test images exactly in train | 2 |", "| test images near a train image (beyond exact) | 2 |",
                 "| JPEG | CMYK |", "| WEBP | RGB |"):
        assert line in md
    assert "Duplicate groups with conflicting labels:" in md and "## Adversarial validation" in md
    for name in ("checks_classes.png", "checks_sizes.png", "checks_samples.png"):
        assert (Paths("demo-images").images / name).stat().st_size > 1000
        assert f"![{name[:-4]}](../../images/demo-images/{name})" in md


def test_a_decompression_bomb_is_unreadable_from_its_header(project):
    bomb = bomb_png(project / "bomb.png")
    assert bomb.stat().st_size < 1 << 20
    assert open_rgb(bomb) is None and header(bomb) is None  # no traceback, and no 900 M pixels decoded
    assert "a decompression bomb?" in why_unreadable(bomb)
    cut = truncated_jpeg(project / "cut.jpg")
    assert header(cut) == ("JPEG", "RGB", 32, 32) and open_rgb(cut) is None
    assert why_unreadable(cut).startswith("does not decode (OSError: image file is truncated")
    assert why_unreadable(project / "gone.png") == "no such file"

    # the configured limit: over it and under twice it (PIL only warns there), or far over it
    decode.limit_pixels(1000)
    for side in (40, 100):
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(project / f"{side}.png")
        assert open_rgb(project / f"{side}.png") is None and header(project / f"{side}.png") is None
    assert why_unreadable(project / "40.png") == ("40 × 40 pixels, more than inputs.image.max_pixels (1,000): "
                                                  "a decompression bomb?")
    # a limit raised past PIL's own lets such an image through (its header: nothing decoded here)
    decode.limit_pixels(10**9)
    assert header(bomb) == ("PNG", "1", 30_000, 30_000)


def test_unreadable_images_are_named_left_out_of_train_and_get_the_fallback(project, capsys):
    """From a COMP_DIR to a model's test predictions, with inputs.image.max_pixels lowered so small
    files stand for bombs: each unreadable image is a note, never a traceback."""
    from medalist.models import FoldData
    from medalist.models.families import image_embed

    src = project / "given"
    train, y = make_images(src / "train", 30, 1, "tr")
    test, _ = make_images(src / "test", 9, 2, "te")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(src / "train" / "big.png")  # over twice the limit
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(src / "test" / "wide.png")  # over it, under twice it
    truncated_jpeg(src / "train" / "cut.jpg", size=20)
    truncated_jpeg(src / "test" / "cut.jpg", size=20)
    names = lambda df: [Path(p).name for p in df["image"]]  # noqa: E731
    pd.DataFrame({"id": [*train["id"], "big", "cut"], "image": [*names(train), "big.png", "cut.jpg"],
                  "label": [*y, 0, 1]}).to_csv(src / "train.csv", index=False)
    test_ids = [*test["id"], "wide", "cut"]
    pd.DataFrame({"id": test_ids, "image": [*names(test), "wide.png", "cut.jpg"]}).to_csv(src / "test.csv", index=False)
    pd.DataFrame({"id": test_ids, "label": 0}).to_csv(src / "sample_submission.csv", index=False)
    cfg = {"name": "tinybomb", "source": "local", "labels": SHAPES, "metric": "accuracy", "folds": {"n": 3, "seed": 0},
           "inputs": {"image": {"column": "image", "train_dir": "train", "test_dir": "test", "max_pixels": 1000}}}
    (project / "configs" / "competitions" / "tinybomb.yaml").write_text(yaml.safe_dump(cfg))
    comp = load_competition("tinybomb")
    download.run(comp, comp_dir=src)

    checks_stage.run(comp)
    md = (Paths("tinybomb").results / "checks.md").read_text()
    over = "more than inputs.image.max_pixels (1,000): a decompression bomb?"
    for line in ("- `data/raw/tinybomb/train/big.png`: train, left out by `make folds` in an image-only competition "
                 "— more pixels than inputs.image.max_pixels (1,000): a decompression bomb?",
                 "- `data/raw/tinybomb/train/cut.jpg`: train, left out",
                 f"- `data/raw/tinybomb/test/wide.png`: test, kept: its row gets the fallback prediction — 40 × 40 pixels, {over}",
                 "- `data/raw/tinybomb/test/cut.jpg`: test, kept: its row gets the fallback prediction — does not decode"):
        assert line in md, md
    assert "| train | 32 | 0 (0.0%) | 2 |" in md and "| test | 11 | 0 (0.0%) | 2 |" in md

    folds_stage.run(comp)
    assert "2 train image(s) do not decode and are left out: big (data/raw/tinybomb/train/big.png), cut" in capsys.readouterr().out
    tr, te = read_processed(Paths("tinybomb"))
    assert set(tr["id"]) == set(train["id"]) and te["id"].tolist() == test_ids

    val, fit = tr[tr["fold"] == 0], tr[tr["fold"] != 0]
    fold = FoldData(fold=0, n_classes=len(SHAPES), train=fit[["id", "image"]], train_labels=fit["label"].to_numpy(),
                    val=val[["id", "image"]], val_labels=val["label"].to_numpy(), test=te[["id", "image"]],
                    metric="accuracy", data_dir=Paths("tinybomb").processed)
    cfg = C.from_dict(image_embed.Config, {"family": "image_embed", "backbone": "test_efficientnet", "weights": "none",
                                           "image_size": 20, "batch_size": 32, "C": 1.0}, "image-embed.yaml")
    res = image_embed.fit_fold(cfg, fold, Paths("tinybomb").run("image-embed") / "fold0")
    assert res.info["rows_without_image"]["test"] == 2
    prior = np.bincount(fold.train_labels, minlength=len(SHAPES)) / len(fold.train_labels)
    np.testing.assert_allclose(res.test_proba[-2:], [prior, prior])  # the two unreadable test images: the fallback
    assert np.abs(res.test_proba[:-2] - prior).max() > 0.05


def _save(project: Path, name: str, a: np.ndarray) -> str:
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(project / name)
    return name


def test_near_duplicates_are_not_chained(project):
    """A ~ B and B ~ C but A and C too far apart: B joins one of them, never both."""
    rng = np.random.default_rng(1)
    base = np.kron(rng.uniform(30, 220, (8, 8, 1)), np.ones((4, 4, 3)))  # 32x32, strong structure
    step = np.kron(rng.choice([-1.0, 1.0], (8, 8, 1)), np.ones((4, 4, 3))) * 4.0
    paths = [_save(project, f"{n}.png", base + k * step) for k, n in enumerate("abc")]
    paths.append(_save(project, "a_copy.png", base))
    paths.append(_save(project, "other.png", rng.uniform(0, 255, (32, 32, 3))))
    dup = find_duplicates(paths)
    pairs = {tuple(p) for p in dup.near_pairs.tolist()}
    assert (0, 1) in pairs and (1, 2) in pairs and (0, 2) not in pairs  # the chain is there
    g = dup.group
    assert g[0] == g[3] and g[0] != g[2] and g[1] in (g[0], g[2]) and g[4] not in g[:4]


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs ../shared/competitions/fashion-products")
def test_fashion_products_groups_stay_small():
    ids = pd.read_csv(FASHION / "train.csv", dtype=str)["id"]
    paths = [str(FASHION / "train" / f"{i}.png") for i in ids]
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    # chaining pHash neighbours would put most of train in one group …
    i, j, _ = candidate_pairs(phash(grey(images(paths, 32)[0])), MAX_PHASH_DISTANCE)
    _, comp = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(len(paths),) * 2), directed=False)
    assert np.bincount(comp).max() > 0.5 * len(paths)
    # … the confirmed, unchained groups stay small
    assert find_duplicates(paths).sizes().max() <= 5

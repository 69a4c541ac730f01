"""Text+image competitions on the built-in `demo-products`: rows without a photo stay and are
counted, duplicate listings (same product, other photo; same photo, other title) share a fold, and
the cheap fusion beats each modality alone — because of the pictures (blank them and it falls to
the text-only level). Uses the packaged MiniLM and EfficientNet-Lite0 on a scaled-down demo."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from medalist.core import config as C
from medalist.core.competition import load_competition, read_raw
from medalist.core.config import Paths
from medalist.core.groups import CHAINING, row_groups, summary
from medalist.core.io import read_processed
from medalist.core.metrics import score
from medalist.demos.products import LABELS, write_demo
from medalist.models import FoldData
from medalist.models.families import embed_lr, fusion_embed, image_embed
from medalist.stages import checks as checks_stage
from medalist.stages import folds as folds_stage


def _small_demo(n_train: int, n_test: int) -> tuple:
    comp = load_competition("demo-products")
    raw = Paths(comp.name).raw
    write_demo(raw, n_train=n_train, n_test=n_test)
    (raw / ".complete").touch()
    return comp, raw


def test_rows_without_a_photo_stay_are_counted_and_duplicates_share_a_fold(project):
    comp, raw = _small_demo(480, 120)
    sheet = pd.read_csv(raw / "train.csv", dtype=str)
    no_photo = int(sheet["image"].isna().sum())
    assert 0.05 * len(sheet) < no_photo < 0.15 * len(sheet)
    train, test, _ = read_raw(comp, raw)
    assert len(train) == len(sheet) and (train["image"] == "").sum() == no_photo  # nothing left out
    assert (test["image"] == "").sum() > 0

    folds_stage.run(comp)
    tr, te = read_processed(Paths(comp.name))
    assert len(tr) == len(sheet) and len(te) == 120 and set(tr.columns) >= {"text", "image", "fold"}
    # the same listing (another photo) and the same photo (another listing) never straddle folds
    assert (tr.groupby("text")["fold"].nunique() == 1).all()
    digest = [hashlib.sha256((C.root() / p).read_bytes()).hexdigest() if p else None for p in tr["image"].fillna("")]
    shared = tr.assign(digest=digest).dropna(subset=["digest"])
    assert shared["digest"].duplicated().any()
    assert (shared.groupby("digest")["fold"].nunique() == 1).all()

    checks_stage.run(comp)
    md = (Paths(comp.name).results / "checks.md").read_text()
    assert f"| train | {len(sheet)} | {no_photo} ({no_photo / len(sheet):.1%}) | 0 |" in md
    assert "| test | 120 |" in md and "## Unreadable images" in md and "without an image" in md
    # checks.md describes the folds' own grouping, chaining across modalities, and says so
    g = row_groups(tr["text"].tolist(), tr["image"].fillna("").tolist(), comp.folds.near_dup_threshold).group
    assert (pd.Series(tr["fold"].to_numpy()).groupby(g).nunique() == 1).all()
    assert CHAINING in md
    assert all(f"| {k} | {v} |" in md for k, v in summary(g).items())


def test_a_named_photo_that_is_not_there_is_read_as_no_photo_unless_none_is(project, capsys):
    comp, raw = _small_demo(120, 40)
    sheet = pd.read_csv(raw / "train.csv", dtype=str)
    gone = sheet["image"].dropna().iloc[0]
    (raw / "images" / gone).unlink()
    train, _, _ = read_raw(comp, raw)
    assert train.loc[sheet["image"] == gone, "image"].tolist() == [""]
    assert "1 of" in capsys.readouterr().out
    for p in (raw / "images").iterdir():  # every photo gone: the config is wrong, not the data
        p.unlink()
    with pytest.raises(C.UserError, match="images not found"):
        read_raw(comp, raw)


def _cv(family, cfg, rows: pd.DataFrame, y: np.ndarray, tmp, data_dir, k: int = 3) -> float:
    fold_of = np.arange(len(rows)) % k
    oof = np.zeros((len(rows), len(LABELS)))
    for f in range(k):
        tr, va = fold_of != f, fold_of == f
        fold = FoldData(fold=f, n_classes=len(LABELS), train=rows[tr].reset_index(drop=True), train_labels=y[tr],
                        val=rows[va].reset_index(drop=True), val_labels=y[va], test=rows[va].iloc[:2],
                        metric="accuracy", data_dir=data_dir)
        oof[va] = family.fit_fold(cfg, fold, tmp / f"{family.__name__}{f}").val_proba
    return score("accuracy", y, oof)


def test_fusion_beats_each_modality_and_its_gain_comes_from_the_pictures(project, tmp_path):
    comp, _ = _small_demo(300, 20)
    folds_stage.run(comp)  # the processed tables: features are computed once per image, for every fold
    rows, _ = read_processed(Paths(comp.name))
    data_dir = Paths(comp.name).processed
    y = rows["label"].to_numpy()
    common = {"max_length": 64, "batch_size": 64, "seed": 0}
    text_cfg = C.from_dict(embed_lr.Config, {"family": "embed_lr", "backbone": "minilm", **common}, "embed.yaml")
    image_cfg = C.from_dict(image_embed.Config, {"family": "image_embed", "image_size": 64, "batch_size": 64},
                            "image-embed.yaml")
    fused_cfg = C.from_dict(fusion_embed.Config, {"family": "fusion_embed", "image_size": 64, **common},
                            "fusion-embed.yaml")
    text = _cv(embed_lr, text_cfg, rows, y, tmp_path, data_dir)
    image = _cv(image_embed, image_cfg, rows, y, tmp_path, data_dir)
    fused = _cv(fusion_embed, fused_cfg, rows, y, tmp_path, data_dir)
    assert fused > max(text, image) + 0.1, (text, image, fused)
    blank = _cv(fusion_embed, fused_cfg, rows.assign(image=""), y, tmp_path / "blank", data_dir)
    assert abs(blank - text) < 0.06 and blank < fused - 0.1, (text, blank, fused)


@pytest.fixture(scope="module")
def tiny_bert(tiny_models):
    return tiny_models["bert"]


def test_text_embeddings_are_computed_once_per_competition(tmp_path, tiny_bert):
    """embed and fusion-embed share one on-disk cache of text embeddings: a fresh process (here:
    emptied memory caches) reads them back without loading the encoder."""
    cfg = C.from_dict(embed_lr.Config, {"family": "embed_lr", "backbone": str(tiny_bert), "max_length": 16},
                      "embed.yaml")
    texts = ["a striped mug", "a dotted rug", "a plate"]
    first = embed_lr.embed(cfg, texts, tmp_path)
    (saved,) = (tmp_path / "features").glob("text-*.npz")
    embed_lr._CACHE.clear()
    embed_lr._ENCODERS.clear()
    again = embed_lr.embed(cfg, texts[::-1], tmp_path)
    np.testing.assert_allclose(again, first[::-1], atol=1e-6)
    assert not embed_lr._ENCODERS  # read back, the encoder never loaded
    embed_lr.embed(cfg, [*texts, "a new cushion"], tmp_path)
    assert len(embed_lr._ENCODERS) == 1  # only the new text needed it
    with np.load(saved) as z:
        assert len(z["keys"]) == 4

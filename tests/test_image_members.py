"""The frozen-feature image members and the image parts of the report, on a tiny image competition
as `make folds` leaves it: features computed once per image and reused by every fold, the
autoencoder trained once and reused, and a report whose mistake thumbnails are inline."""
from __future__ import annotations

import base64
import dataclasses
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import interrupted_after_step
from medalist.core import config as C
from medalist.core.config import Paths
from medalist.models import FoldData
from medalist.models.families import autoencoder, image_embed
from tiny_images import SHAPES, make_images

COMP = "tinyimg"
EMBED = {"family": "image_embed", "backbone": "test_efficientnet", "weights": "none", "image_size": 20,
         "batch_size": 32, "C": 1.0}
AE = {"family": "autoencoder", "image_size": 16, "channels": [4, 8], "code_dim": 8, "epochs": 2, "batch_size": 16,
      "eval_batch_size": 32, "lr": 0.01, "classifier": "logistic", "max_iter": 500, "seed": 0, "fused_adamw": False}


def tiny_competition(root: Path, n_train: int = 60, n_test: int = 15, noisy: int = 0) -> None:
    """configs/competitions/tinyimg.yaml, PNGs under data/raw/tinyimg/ (test row te0 unreadable) and
    the processed tables with paths relative to the project root, 3 folds; `noisy` train labels moved
    to the next class, so that OOF mistakes are certain."""
    raw = root / "data" / "raw" / COMP
    train, y = make_images(raw / "train", n_train, 1, "tr")
    test, _ = make_images(raw / "test", n_test, 2, "te")
    (raw / "test" / "te0.png").write_bytes(b"\x89PNG not really")
    for df in (train, test):
        df["image"] = [str(Path(p).relative_to(root)) for p in df["image"]]
    y = y.copy()
    y[:noisy] = (y[:noisy] + 1) % len(SHAPES)
    processed = Paths(COMP).processed
    processed.mkdir(parents=True)
    train.assign(label=y, fold=np.arange(n_train) // 3 % 3).to_csv(processed / "train.csv", index=False)
    test.to_csv(processed / "test.csv", index=False)
    cfg = {"name": COMP, "source": "demo", "id_column": "id", "inputs": {"image": {"column": "id"}},
           "label_column": "label", "label_encoding": "index", "labels": SHAPES, "metric": "accuracy",
           "submission": {"format": "label", "id_column": "id", "label_column": "label", "label_as": "index"},
           "folds": {"n": 3, "seed": 0}}
    (root / "configs" / "competitions" / f"{COMP}.yaml").write_text(yaml.safe_dump(cfg))


def fold_of(k: int) -> FoldData:
    paths = Paths(COMP)
    train = pd.read_csv(paths.processed / "train.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(paths.processed / "test.csv", dtype=str, keep_default_na=False)
    tr, va = train[train["fold"] != str(k)], train[train["fold"] == str(k)]
    cols = ["id", "image"]
    return FoldData(fold=k, n_classes=len(SHAPES), train=tr[cols].reset_index(drop=True),
                    train_labels=tr["label"].astype(int).to_numpy(), val=va[cols].reset_index(drop=True),
                    val_labels=va["label"].astype(int).to_numpy(), test=test[cols].reset_index(drop=True),
                    metric="accuracy", log_dir=paths.logs / "run" / f"fold{k}", data_dir=paths.processed)


def test_image_embed_computes_features_once_for_every_fold(project):
    tiny_competition(project)
    cfg = C.from_dict(image_embed.Config, EMBED, "image-embed.yaml")
    run = Paths(COMP).run("image-embed")
    image_embed.fit_fold(cfg, fold_of(0), run / "fold0")
    [npy] = (Paths(COMP).processed / "features").glob("*.npy")
    stamp = npy.stat().st_mtime_ns
    fold = fold_of(1)
    res = image_embed.fit_fold(cfg, fold, run / "fold1")
    assert npy.stat().st_mtime_ns == stamp, "the second fold recomputed the features"
    assert res.info["rows_without_image"] == {"train": 0, "val": 0, "test": 1}

    # the unreadable test image predicts the fold's class frequencies; the others are the head's
    prior = np.bincount(fold.train_labels, minlength=len(SHAPES)) / len(fold.train_labels)
    np.testing.assert_allclose(res.test_proba[0], prior)
    assert np.abs(res.test_proba[1:] - prior).max() > 0.05
    # features computed now from the pixels (new rows: no cache) give what the cached ones gave
    predict = image_embed.load_predictor(cfg, run / "fold1", len(SHAPES))
    np.testing.assert_allclose(predict(fold.val), res.val_proba, atol=1e-5)
    np.testing.assert_allclose(predict(fold.test), res.test_proba, atol=1e-5)
    assert (res.val_proba.argmax(1) == fold.val_labels).mean() > 0.6  # three shapes; chance is 1/3

    # a new folds run with other rows makes the cache stale: recomputed, same file
    test = pd.read_csv(Paths(COMP).processed / "test.csv", dtype=str)
    test.iloc[:-1].to_csv(Paths(COMP).processed / "test.csv", index=False)
    image_embed.fit_fold(cfg, fold_of(2), run / "fold2")
    assert npy.stat().st_mtime_ns != stamp and len(list(npy.parent.glob("*.npy"))) == 1


def test_an_image_replaced_under_its_name_is_decoded_embedded_and_trained_again(project, capsys):
    """Caches are keyed by content (core.cache): two test images that swap files, names kept, swap
    their rows in the run's test predictions on the next `make train` — no finished fold, decoded
    pixel or feature of the old files is reused."""
    from medalist.stages import train as train_stage

    tiny_competition(project)
    (project / "configs" / "models" / "tinyembed.yaml").write_text(yaml.safe_dump(EMBED))
    run = train_stage.run(COMP, "tinyembed")
    before = pd.read_csv(run / "test.csv", dtype={"id": str}).set_index("id")
    test_dir = project / "data" / "raw" / COMP / "test"
    a, b = (test_dir / "te1.png").read_bytes(), (test_dir / "te2.png").read_bytes()
    (test_dir / "te1.png").write_bytes(b)
    (test_dir / "te2.png").write_bytes(a)
    capsys.readouterr()
    train_stage.run(COMP, "tinyembed")
    assert "done, skipped" not in capsys.readouterr().out
    after = pd.read_csv(run / "test.csv", dtype={"id": str}).set_index("id")
    assert not np.allclose(before.loc["te1"], before.loc["te2"])
    np.testing.assert_allclose(after.loc["te1"], before.loc["te2"], atol=1e-6)
    np.testing.assert_allclose(after.loc["te2"], before.loc["te1"], atol=1e-6)
    others = [i for i in before.index if i not in ("te1", "te2")]
    np.testing.assert_allclose(after.loc[others], before.loc[others], atol=1e-6)


def test_image_embed_stops_with_one_line_on_a_wrong_backbone_or_weights(project):
    with pytest.raises(C.UserError, match="tf_efficientnet_lite0"):
        C.from_dict(image_embed.Config, {**EMBED, "weights": "packaged"}, "image-embed.yaml")
    tiny_competition(project)
    bad = C.from_dict(image_embed.Config, {**EMBED, "backbone": "no_such_net"}, "image-embed.yaml")
    with pytest.raises(C.UserError, match="no_such_net"):
        image_embed.fit_fold(bad, fold_of(0), project / "r" / "fold0")
    missing = C.from_dict(image_embed.Config, {**EMBED, "weights": str(project / "nope.pth")}, "image-embed.yaml")
    with pytest.raises(C.UserError, match="not found"):
        image_embed.fit_fold(missing, fold_of(0), project / "r" / "fold0")


def test_autoencoder_trains_once_and_every_fold_reuses_it(project):
    from PIL import Image

    tiny_competition(project)
    cfg = C.from_dict(autoencoder.Config, AE, "autoencoder.yaml")
    paths = Paths(COMP)
    run = paths.run("autoencoder")
    first = autoencoder.fit_fold(cfg, fold_of(0), run / "fold0")
    pre = first.info["pretrain"]
    assert pre["reused"] is False and pre["n_images"] == 60 + 15 - 1  # train and test, the unreadable one left out
    assert len(pre["losses"]) == 2 and pre["losses"][1] < pre["losses"][0]
    weights = run / "pretrain" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert any((paths.logs / "run" / "pretrain").glob("events.out.tfevents.*"))
    with Image.open(paths.images / "reconstructions_autoencoder.png") as im:
        assert im.width > 2 * im.height  # a row of originals over a row of reconstructions

    fold = fold_of(1)
    res = autoencoder.fit_fold(cfg, fold, run / "fold1")
    assert res.info["pretrain"]["reused"] is True and weights.stat().st_mtime_ns == stamp
    assert res.info["pretrain_key"] == first.info["pretrain_key"]
    predict = autoencoder.load_predictor(cfg, run / "fold1", len(SHAPES))
    np.testing.assert_allclose(predict(fold.val), res.val_proba, atol=1e-5)

    # the head's settings keep the autoencoder; its own retrain it (and its code cache)
    assert autoencoder.fit_fold(dataclasses.replace(cfg, C=0.3), fold, run / "fold1").info["pretrain"]["reused"]
    again = autoencoder.fit_fold(dataclasses.replace(cfg, code_dim=6), fold, run / "fold1")
    assert again.info["pretrain"]["reused"] is False and weights.stat().st_mtime_ns != stamp
    assert again.info["pretrain_key"] != first.info["pretrain_key"]


def test_an_interrupted_autoencoder_run_resumes_from_its_last_epoch(project):
    tiny_competition(project)
    cfg = C.from_dict(autoencoder.Config, {**AE, "epochs": 3}, "autoencoder.yaml")
    run, fold = Paths(COMP).run("autoencoder"), fold_of(0)
    with interrupted_after_step(8):  # the fold trains the autoencoder first: 74 images, 5 steps an epoch
        autoencoder.fit_fold(cfg, fold, run / "fold0")
    assert not (run / "pretrain" / "done.json").exists()
    res = autoencoder.fit_fold(cfg, fold, run / "fold0")
    assert res.info["pretrain"]["resumed_after_epoch"] == 1 and len(res.info["pretrain"]["losses"]) == 3


def test_autoencoder_config_checks_the_size_against_its_depth():
    with pytest.raises(C.UserError, match="divisible by 2\\^2"):
        C.from_dict(autoencoder.Config, {**AE, "image_size": 18}, "autoencoder.yaml")


def test_report_shows_the_worst_mistakes_as_inline_thumbnails(project):
    from PIL import Image

    from medalist.stages import report
    from medalist.stages import train as train_stage

    tiny_competition(project, noisy=6)
    (project / "configs" / "models" / "image-embed-tiny.yaml").write_text(yaml.safe_dump(EMBED))
    train_stage.run(COMP, "image-embed-tiny")
    paths = Paths(COMP)
    paths.images.mkdir(parents=True, exist_ok=True)
    shutil.copy(project / "data" / "raw" / COMP / "train" / "tr1.png", paths.images / "checks_samples.png")

    page = report.run(COMP, ["image-embed-tiny"]).read_text()
    mistakes = page.split("Most confident OOF mistakes", 1)[1].split("<h2>", 1)[0]
    thumbs = re.findall(r'<figure><img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', mistakes)
    assert thumbs
    with Image.open(io.BytesIO(base64.b64decode(thumbs[0]))) as im:
        assert im.size == (20, 20)  # small images stay as they are; the page scales them up
    assert re.search(r'<img alt="checks_samples" src="data:image/png;base64,', page)
    assert not re.search(r"""(?:src|href)\s*=\s*(?!["']?data:)""", page)  # nothing loaded from outside
    assert "http://" not in page and "https://" not in page
    md = (paths.results / "report.md").read_text()
    assert "](../../data/raw/tinyimg/train/tr" in md  # the Markdown twin links the originals

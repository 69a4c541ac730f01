"""The `fusion` family (text encoder + image backbone fine-tuned together): a tiny fold trains and
gives every row — photo-less ones too — a probability row; a row without a readable photo is
answered through the learned missing vector, whatever its image cell held; modality dropout never
takes a photo-less row's text; the shipped config's head-only stage matches exactly the new heads;
config mistakes are one line each."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medalist.core import config as C
from medalist.core.config import UserError
from medalist.models import training
from medalist.models.families import fusion
from test_families import tiny_text_image_fold
from tiny_text import LABELS

REPO = Path(__file__).resolve().parents[1]


def tiny(models: dict[str, Path], **extra) -> dict:
    return {"family": "fusion", "text_backbone": str(models["bert"]), "max_length": 32, "image_backbone":
            "test_efficientnet", "weights": "none", "image_size": 20, "dim": 16, "hidden": 16, "epochs": 2,
            "batch_size": 8, "eval_batch_size": 16, "lr": 3e-3, "seed": 0, "fused_adamw": False,
            "modality_dropout": 0.3, "aux_weight": 0.5, **extra}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models):
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    root = tmp_path_factory.mktemp("fusion")
    models = tiny_models
    cfg = C.from_dict(fusion.Config, tiny(models), "fusion.yaml")
    fold = tiny_text_image_fold(root / "rows")
    res = fusion.fit_fold(cfg, fold, root / "fold0")
    return cfg, fold, res, root / "fold0", models


def test_a_tiny_fold_trains_and_photo_less_rows_get_predictions(trained):
    cfg, fold, res, fold_dir, _ = trained
    no_photo = (fold.val["image"] == "").to_numpy()
    assert no_photo.any() and (~no_photo).any()
    for p in (res.val_proba, res.test_proba):
        assert np.isfinite(p).all() and np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.isfinite(res.val_proba[no_photo]).all()
    # every fourth row has no photo and one more does not decode
    assert res.info["val_rows_without_image"] == int(no_photo.sum()) + 1
    assert res.info["train_rows_without_image"] == 48 // 4 + 1
    assert (fold_dir / fusion.WEIGHTS_FILE).exists() and (fold_dir / fusion.TEXT_DIR / "config.json").exists()


def test_a_row_without_a_photo_is_answered_by_the_missing_vector(trained, tmp_path):
    cfg, fold, _, fold_dir, _ = trained
    adapter, (model,) = fusion.load_models(cfg, fold_dir, len(LABELS))
    predict = training.predictor(adapter, [model], cfg)
    photo = fold.val.loc[fold.val["image"] != ""].iloc[0]
    (tmp_path / "junk.png").write_bytes(b"\x89PNG broken")
    cells = ["", str(tmp_path / "no-such-file.png"), str(tmp_path / "junk.png"), photo["image"]]
    rows = pd.DataFrame({"id": [f"r{i}" for i in range(len(cells))], "text": photo["text"], "image": cells})
    p = predict(rows)
    # no photo, a missing file, a file that does not decode: one and the same answer
    np.testing.assert_allclose(p[1], p[0], atol=1e-6)
    np.testing.assert_allclose(p[2], p[0], atol=1e-6)
    assert not np.allclose(p[3], p[0], atol=1e-4)  # a real photo is looked at

    with torch.no_grad():  # that answer comes from the learned vector; the photo row's does not
        model.missing_image.add_(torch.randn_like(model.missing_image))
    q = predict(rows)
    assert not np.allclose(q[0], p[0], atol=1e-4)
    np.testing.assert_allclose(q[3], p[3], atol=1e-6)


def test_modality_dropout_never_takes_the_text_of_a_photo_less_row(trained):
    cfg, fold, _, fold_dir, _ = trained
    adapter, (model,) = fusion.load_models(cfg, fold_dir, len(LABELS))
    items = adapter.make_items(fold.val, training.Stage())
    batch = adapter.collate(items)
    ok = batch["ok"].numpy()
    model.eval()  # dropout and BatchNorm fixed: only the modality masks differ
    with torch.no_grad():
        plain = model(**batch)["logits"]
        torch.manual_seed(0)
        dropped = model(**batch, modality_dropout=0.999)["logits"]
    np.testing.assert_allclose(dropped[~ok].numpy(), plain[~ok].numpy(), atol=1e-6)
    assert not np.allclose(dropped[ok].numpy(), plain[ok].numpy(), atol=1e-4)
    assert adapter.lr_scale("text.encoder.layer.0.attention.self.query.weight") == cfg.text_lr_scale
    assert adapter.lr_scale("image.conv_stem.weight") == cfg.image_lr_scale
    assert adapter.lr_scale("head.1.weight") == 1.0


def test_the_shipped_config_loads_and_its_warm_up_trains_the_heads_only(trained):
    _, _, _, _, models = trained
    shipped = C.load(fusion.Config, REPO / "configs" / "models" / "fusion.yaml")
    assert shipped.inputs == ("text", "image") and shipped.backbone == "minilm"
    warm_up = shipped.stage_list()[0].trainable
    cfg = C.from_dict(fusion.Config, tiny(models), "fusion.yaml")
    net, _ = fusion.build_net(cfg, len(LABELS), models["bert"], pretrained=False)
    names = [n for n, _ in net.named_parameters()]
    heads = {n for n in names if any(re.search(r, n) for r in warm_up)}
    assert heads == {n for n in names if not n.startswith(("text.", "image."))}
    assert heads == {n for n in names if re.search(fusion.HEADS, n)}


@pytest.mark.parametrize("extra, message", [
    ({"modality_dropout": 1.5}, r"modality_dropout: 1.5 is out of range"),
    ({"modality_dropout": -0.1}, r"modality_dropout: -0.1 is out of range"),
    ({"aux_weight": -1}, r"aux_weight: -1(\.0)? is out of range"),
    ({"inputs": ["text"]}, r"reads both inputs"),
    ({"augment": {"mixup_alpha": 0.2, "mix_prob": 0.5}}, r"MixUp/CutMix would mix photos but not their texts"),
    ({"image_backbone": "resnet18", "weights": "packaged"}, r"weights 'packaged'"),
])
def test_config_mistakes_are_one_line(extra, message):
    models = {"bert": Path("unused")}
    with pytest.raises(UserError, match=message) as e:
        C.from_dict(fusion.Config, tiny(models, **extra), "fusion.yaml")
    assert "\n" not in str(e.value)

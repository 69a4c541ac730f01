"""Conformance: every registered family fits one fold of a tiny competition, saves its weights,
and a predictor loaded back from them gives the same probabilities for the same rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalist.core import config as C
from medalist.models import FoldData
from medalist.models.registry import FAMILIES, family_module
from tiny_images import SHAPES, make_images
from tiny_text import LABELS, make_texts


def tiny_config(family: str, models: dict[str, Path]) -> dict:
    neural = {"max_length": 32, "batch_size": 8, "eval_batch_size": 16, "epochs": 1, "seed": 0}
    return {
        "tfidf": {"min_df": 1},
        "embed_lr": {"backbone": str(models["bert"]), "max_length": 32, "batch_size": 16},
        "encoder": {**neural, "backbone": str(models["bert"]), "lr": 1e-3},
        "decoder_lora": {**neural, "backbone": str(models["qwen"]), "lr": 5e-3, "lora_r": 4, "lora_alpha": 8,
                         "lora_target_modules": ["q_proj", "v_proj"]},
        "image_embed": {"backbone": "test_efficientnet", "weights": "none", "image_size": 20, "batch_size": 16},
        "autoencoder": {"image_size": 16, "channels": [4, 8], "code_dim": 8, "epochs": 1, "batch_size": 16,
                        "classifier": "logistic", "fused_adamw": False, "seed": 0},
        "image": {"backbone": "test_efficientnet", "weights": "none", "image_size": 20, "epochs": 1, "batch_size": 8,
                  "lr": 3e-3, "fused_adamw": False, "seed": 0, "augment": {"mixup_alpha": 0.2, "mix_prob": 0.5}},
        "cnn": {"image_size": 20, "widths": [8, 16], "epochs": 1, "batch_size": 8, "lr": 1e-2, "fused_adamw": False,
                "seed": 0},
        "fusion_embed": {"text_backbone": str(models["bert"]), "max_length": 32, "image_backbone": "test_efficientnet",
                         "weights": "none", "image_size": 20, "batch_size": 16},
        "fusion": {**neural, "text_backbone": str(models["bert"]), "image_backbone": "test_efficientnet",
                   "weights": "none", "image_size": 20, "dim": 16, "hidden": 16, "lr": 3e-3, "fused_adamw": False},
    }[family] | {"family": family}


def tiny_fold() -> FoldData:
    def rows(n: int, seed: int, prefix: str) -> tuple[pd.DataFrame, np.ndarray]:
        texts, labels = make_texts(n, seed)
        return pd.DataFrame({"id": [f"{prefix}{i}" for i in range(n)], "text": texts}), np.array(labels)

    train, y = rows(48, 1, "tr")
    val, vy = rows(15, 2, "va")
    test, _ = rows(9, 3, "te")
    return FoldData(fold=0, n_classes=len(LABELS), train=train, train_labels=y, val=val, val_labels=vy, test=test,
                    metric="micro_f1")


def tiny_image_fold(root: Path) -> FoldData:
    """Three shape classes in small PNGs (absolute paths: no competition, no decode cache)."""
    train, y = make_images(root / "train", 48, 1, "tr")
    val, vy = make_images(root / "val", 15, 2, "va")
    test, _ = make_images(root / "test", 9, 3, "te")
    return FoldData(fold=0, n_classes=len(SHAPES), train=train, train_labels=y, val=val, val_labels=vy, test=test,
                    metric="micro_f1")


def tiny_text_image_fold(root: Path) -> FoldData:
    """Rows with both inputs, text topic and photo shape agreeing on the label; every fourth row
    has no photo (image "") and one row per part a file that does not decode."""
    def rows(n: int, seed: int, prefix: str) -> tuple[pd.DataFrame, np.ndarray]:
        df, y = make_images(root / prefix, n, seed, prefix)
        df["text"], _ = make_texts(n, seed)
        df.loc[df.index % 4 == 3, "image"] = ""
        (root / prefix / "broken.png").write_bytes(b"not an image")
        df.loc[1, "image"] = str(root / prefix / "broken.png")
        return df, y

    assert len(SHAPES) == len(LABELS)  # row i is class i % 3 in both fixtures
    train, y = rows(48, 1, "tr")
    val, vy = rows(15, 2, "va")
    test, _ = rows(9, 3, "te")
    return FoldData(fold=0, n_classes=len(LABELS), train=train, train_labels=y, val=val, val_labels=vy, test=test,
                    metric="micro_f1")


def pick_fold(inputs: tuple[str, ...], root: Path) -> FoldData:
    if {"text", "image"} <= set(inputs):
        return tiny_text_image_fold(root)
    return tiny_image_fold(root) if "image" in inputs else tiny_fold()


def test_the_table_names_every_shipped_family():
    assert {"tfidf", "embed_lr", "encoder", "decoder_lora"} <= set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_family_fits_saves_and_predicts_the_same_again(family, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mod = family_module(family)
    cfg = C.from_dict(mod.Config, tiny_config(family, tiny_models), f"{family}.yaml")
    fold = pick_fold(cfg.inputs, tmp_path / "images")
    res = mod.fit_fold(cfg, fold, tmp_path / "fold0")
    assert res.val_proba.shape == (len(fold.val), len(LABELS)) and res.test_proba.shape == (len(fold.test), len(LABELS))
    assert np.allclose(res.val_proba.sum(1), 1, atol=1e-5) and np.allclose(res.test_proba.sum(1), 1, atol=1e-5)

    predict = mod.load_predictor(cfg, tmp_path / "fold0", len(LABELS))
    # rows as a predictor gets them: any order, extra columns, a fresh index
    shuffled = fold.val.iloc[::-1].assign(label=fold.val_labels[::-1]).set_index(np.arange(100, 100 + len(fold.val)))
    np.testing.assert_allclose(predict(shuffled), res.val_proba[::-1], atol=1e-5)
    np.testing.assert_allclose(predict(fold.test), res.test_proba, atol=1e-5)

"""The fine-tuned image families (`image`, a timm backbone; `cnn`, a small network from scratch) and
image TTA: the packaged EfficientNet-Lite0 weights map completely onto timm's network; a tiny
randomly initialised timm model trains a fold in stages, resumes after an interruption to the same
predictions (its weight average too), and reloads to them; out-of-memory halving leaves the weight
average as it is; unreadable images get the training class prior and are never trained on; TTA
views keep the label."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import interrupted_after_step
from medalist.core import config as C
from medalist.core.config import Paths, UserError
from medalist.image import augment as A
from medalist.image import weights as W
from medalist.models import FoldData
from medalist.models.families import cnn, image
from tiny_images import SHAPES, make_images

TINY = {"family": "image", "backbone": "test_efficientnet", "weights": "none", "image_size": 20, "epochs": 3,
        "batch_size": 8, "eval_batch_size": 32, "lr": 3e-3, "seed": 0, "fused_adamw": False,
        "augment": {"hflip": 0.5, "rotate": 10, "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 0.5},
        # staged: the head alone at 16 px, then everything at 20 px (progressive resizing)
        "stages": [{"name": "head", "epochs": 1, "trainable": ["classifier"], "input_size": 16},
                   {"name": "all", "epochs": 2, "input_size": 20}]}


# ---------------------------------------------------------------- weights


def test_the_packaged_efficientnet_lite0_weights_load_completely():
    import timm

    raw = torch.load(W.packaged_file(), map_location="cpu", weights_only=True)
    full = timm.create_model(W.PACKAGED_ARCH, pretrained=False)  # the ImageNet network, head included
    state = W.packaged_state(full)
    assert len(state) == len(raw) == len(full.state_dict())  # one timm name per packaged tensor
    full.load_state_dict(state, strict=True)  # every tensor in place, every shape equal

    net = timm.create_model(W.PACKAGED_ARCH, pretrained=False, num_classes=len(SHAPES))
    loaded = W.load_into(net, state, "packaged")
    own = net.state_dict()
    assert set(loaded) == set(own) - {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(own[k], state[k]) for k in loaded)


def test_weights_that_do_not_fit_the_backbone_stop_with_one_line(tmp_path):
    import timm

    tiny = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    with pytest.raises(UserError, match="beyond the backbone|wrong architecture|backbone wants"):
        W.load_into(tiny, W.packaged_state(tiny), "packaged")
    other = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    torch.save(other.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(UserError, match="resnet.pth: tensor '.*' has no place"):
        W.load_into(tiny, W.read_file(tmp_path / "resnet.pth"), str(tmp_path / "resnet.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        W.read_file(tmp_path / "junk.pth")
    with pytest.raises(UserError, match="weights 'packaged'"):
        C.from_dict(image.Config, {"family": "image", "backbone": "resnet18"}, "image.yaml")
    with pytest.raises(UserError, match="reads images only"):
        C.from_dict(cnn.Config, {"family": "cnn", "inputs": ["text"]}, "cnn.yaml")


# ---------------------------------------------------------------- a fold: stages, resume, reload


def shapes_fold(root: Path) -> FoldData:
    """60 train / 15 val / 9 test tiny shape images; train row 0 and val row 0 have no file, test
    row 0 is not an image."""
    train, y = make_images(root / "train", 60, 1, "tr")
    val, vy = make_images(root / "val", 15, 2, "va")
    test, _ = make_images(root / "test", 9, 3, "te")
    Path(train.loc[0, "image"]).unlink()
    Path(val.loc[0, "image"]).unlink()
    Path(test.loc[0, "image"]).write_bytes(b"\x89PNG not really")
    return FoldData(fold=0, n_classes=len(SHAPES), train=train, train_labels=y, val=val, val_labels=vy, test=test,
                    metric="accuracy")


@pytest.mark.slow  # a kill-and-resume run (make test-all runs it)
def test_a_tiny_timm_model_trains_in_stages_resumes_after_an_interruption_and_reloads(tmp_path):
    cfg = C.from_dict(image.Config, TINY, "tiny")
    fold = shapes_fold(tmp_path / "whole" / "data")
    res = image.fit_fold(cfg, fold, tmp_path / "whole" / "fold0")
    assert [h["stage"] for h in res.info["history"]] == ["head", "all", "all"]
    assert res.info["train_rows_without_image"] == 1
    # the rows with no readable image answer with the prior of the 59 rows trained on
    prior = np.bincount(fold.train_labels[1:], minlength=len(SHAPES)) / 59
    np.testing.assert_allclose(res.val_proba[0], prior, atol=1e-6)
    np.testing.assert_allclose(res.test_proba[0], prior, atol=1e-6)
    assert not np.allclose(res.val_proba[1:], prior, atol=1e-3)

    # what this family adds to the engine's resume (test_engine.py): the weight average's buffers,
    # which the predictions come from. Stopped in stage "all" (8 steps an epoch: step 12 is in the
    # second epoch), then run again
    killed = tmp_path / "killed"
    fold = shapes_fold(killed / "data")
    with interrupted_after_step(12):
        image.fit_fold(cfg, fold, killed / "fold0")
    assert (killed / "fold0" / "ckpt" / "checkpoints").is_dir()
    again = image.fit_fold(cfg, fold, killed / "fold0")
    assert again.info["resumed_after_epoch"] == 1
    np.testing.assert_allclose(again.val_proba, res.val_proba, atol=1e-5)
    np.testing.assert_allclose(again.test_proba, res.test_proba, atol=1e-5)

    predict = image.load_predictor(cfg, killed / "fold0", len(SHAPES))
    np.testing.assert_allclose(predict(fold.val), res.val_proba, atol=1e-5)
    np.testing.assert_allclose(predict(fold.test), res.test_proba, atol=1e-5)


def test_a_head_only_stage_leaves_the_backbone_and_its_batchnorm_statistics_untouched(tmp_path):
    from accelerate.utils import set_seed
    from safetensors.torch import load_file

    cfg = C.from_dict(image.Config, {**TINY, "stages": [TINY["stages"][0]], "ema_decay": None}, "tiny")
    fold = shapes_fold(tmp_path / "data")
    image.fit_fold(cfg, fold, tmp_path / "fold0")
    set_seed(cfg.seed)  # what the engine does before building: the same initial weights
    start = image.ImageAdapter(cfg, len(SHAPES), image.timm_net).build_model(0).net.state_dict()
    saved = {k.removeprefix("net."): v for k, v in load_file(str(tmp_path / "fold0" / image.WEIGHTS_FILE)).items()}
    body = [k for k in start if not k.startswith("classifier.")]
    assert any(k.endswith("running_mean") for k in body)
    assert all(torch.equal(start[k], saved[k]) for k in body)
    assert not torch.equal(start["classifier.weight"], saved["classifier.weight"])


def _plain_net(cfg: image.ImageRecipe, n_classes: int, pretrained: bool):
    """A network whose gradient does not depend on how a batch is split: no BatchNorm, no dropout."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, n_classes))
    return net, (0.5,) * 3, (0.5,) * 3, 0


def test_out_of_memory_halving_gives_the_same_averaged_model(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    # no augmentation: its random draws, like BatchNorm statistics, would depend on the split
    cfg = C.from_dict(image.ImageRecipe, {"family": "plain", "image_size": 20, "epochs": 2, "batch_size": 8,
                                          "lr": 0.05, "seed": 0, "fused_adamw": False, "augment": {"hflip": 0.0},
                                          "ema_decay": 0.99, "cpu_bf16_inference": False}, "plain")
    fold = shapes_fold(tmp_path / "data")
    plain = image.fit(cfg, fold, tmp_path / "plain", _plain_net)
    monkeypatch.setenv("MEDALIST_INJECT_OOM", "1")
    halved = image.fit(cfg, fold, tmp_path / "halved", _plain_net)
    assert halved.info["oom_events"] == 1 and halved.info["grad_accum"] == 2
    assert halved.info["optimizer_steps"] == plain.info["optimizer_steps"]
    # half batches, twice the accumulation: the same optimizer steps, so the same average of them
    want, got = (load_file(str(tmp_path / d / image.WEIGHTS_FILE)) for d in ("plain", "halved"))
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(halved.val_proba, plain.val_proba, atol=1e-6)


# ---------------------------------------------------------------- augmentation and views


def test_train_augmentation_is_seeded_and_mixes_into_soft_targets():
    aug = A.BatchAugment(A.Augment(hflip=0.5, rotate=15, erasing=0.5, mixup_alpha=0.4, mix_prob=1.0), 3)
    x = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(5)
    a, ta = aug(x, y)
    torch.manual_seed(5)
    b, tb = aug(x, y)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert a.shape == x.shape and ta.shape == (6, 3)
    torch.testing.assert_close(ta.sum(1), torch.ones(6))
    assert (ta.max(1).values < 1).all()  # every row mixed with another
    with pytest.raises(UserError, match="mix_prob"):
        C.from_dict(A.Augment, {"mix_prob": 0.5}, "augment")


def test_views_are_fixed_and_keep_a_symmetric_image_in_its_class():
    from tiny_images import draw

    names = [v.name for v in A.views(("hflip", "crops", "scale"), 0.875, 1.15)]
    assert names == ["hflip", "crop_centre", "crop_tl", "crop_tr", "crop_bl", "crop_br", "scale"]
    x = np.stack([draw(s, 24, np.random.default_rng(0)) for s in SHAPES])
    for v in A.views(("hflip", "vflip", "crops"), 0.875, 1.15):
        out = v.apply(x)
        assert out.shape == x.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(A.View("hflip").apply(A.View("hflip").apply(x)), x)
    disc = x[:1].astype(int)  # a disc mirrored is (up to its noise) the same disc
    assert np.abs(A.View("hflip").apply(x[:1]).astype(int) - disc).mean() < 20
    assert A.View("scale", scale=1.25).size(20) == 25 and A.View("hflip").size(20) == 20


# ---------------------------------------------------------------- make train + make tta on an image run


CNN = {"family": "cnn", "image_size": 20, "widths": [8, 16], "epochs": 6, "batch_size": 8, "eval_batch_size": 64,
       "lr": 0.01, "seed": 0, "fused_adamw": False, "augment": {"hflip": 0.5, "translate": 0.1, "zoom": [0.9, 1.2]}}


def test_make_train_and_tta_on_an_image_run_keep_the_label(project):
    from medalist.stages import train, tta

    raw = project / "data" / "raw" / "shapes"
    tr, y = make_images(raw / "train", 120, 4, "tr")
    te, _ = make_images(raw / "test", 12, 5, "te")
    for df in (tr, te):
        df["image"] = [str(Path(p).relative_to(project)) for p in df["image"]]
    processed = Paths("shapes").processed
    processed.mkdir(parents=True)
    tr.assign(label=y, fold=np.arange(len(tr)) % 2).to_csv(processed / "train.csv", index=False)
    te.to_csv(processed / "test.csv", index=False)
    (project / "configs" / "competitions" / "shapes.yaml").write_text(yaml.safe_dump(
        {"name": "shapes", "source": "local", "labels": SHAPES, "metric": "accuracy", "folds": {"n": 2},
         "inputs": {"image": {"column": "id"}}}))
    (project / "configs" / "models" / "tinycnn.yaml").write_text(yaml.safe_dump(CNN))

    run_dir = train.run("shapes", "tinycnn")
    plain = json.loads((run_dir / "metrics.json").read_text())["oof_score"]
    assert plain >= 0.8
    assert (processed / "images" / "20.npy").exists()  # decoded once, reused by both folds

    m = json.loads((tta.run("shapes", "tinycnn") / "metrics.json").read_text())
    assert m["views"] == ["original", "hflip", "crop_centre", "crop_tl", "crop_tr", "crop_bl", "crop_br", "scale"]
    # every class is mirror-symmetric: a flip keeps the label; crops and scale stay far above chance
    assert m["view_scores"]["hflip"] >= plain - 0.05, m["view_scores"]
    assert all(s >= 0.7 for s in m["view_scores"].values()), m["view_scores"]
    assert m["use_tta"] == (m["gain"] >= 0.002)
    out = pd.read_csv(run_dir / "tta" / "test.csv")
    assert len(out) == len(te) and np.allclose(out.filter(like="p_").sum(axis=1), 1, atol=1e-4)

"""The neural text families (encoder, decoder_lora) through the train stage — the encoder under
`accelerate launch`, the rest in this process — on tiny randomly initialised models saved to disk (a
2-layer BERT with a WordPiece vocabulary, a 2-layer Qwen2 with a byte-level BPE), no network. The
engine's own machinery (resume, out-of-memory halving, stages, seeds, best epoch) is tested once in
test_engine.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import interrupted_after_step
from tiny_text import LABELS, make_texts

REPO = Path(__file__).resolve().parents[1]


def model_configs(models: dict[str, Path]) -> dict[str, dict]:
    bert = {"family": "encoder", "backbone": str(models["bert"]), "max_length": 32, "batch_size": 8,
            "eval_batch_size": 16, "lr": 1e-3, "warmup_ratio": 0.1, "epochs": 1, "seed": 0}
    return {
        "tinybert": bert,
        "tinybert2": {**bert, "epochs": 2},
        "tinyqwen": {"family": "decoder_lora", "backbone": str(models["qwen"]), "max_length": 32, "batch_size": 8,
                     "eval_batch_size": 16, "lr": 5e-3, "epochs": 1, "seed": 0, "lora_r": 4, "lora_alpha": 8,
                     "lora_target_modules": ["q_proj", "v_proj"], "load_in_4bit": True},
    }


def make_root(root: Path, models: dict[str, Path], n_train: int = 60, n_test: int = 12) -> Path:
    """A fixture competition `tiny` (2 folds) with processed data written directly."""
    cfgs = root / "configs"
    (cfgs / "competitions").mkdir(parents=True)
    (cfgs / "models").mkdir()
    (cfgs / "competitions" / "tiny.yaml").write_text(yaml.safe_dump(
        {"name": "tiny", "source": "local", "labels": LABELS, "metric": "micro_f1", "folds": {"n": 2}}))
    for name, c in model_configs(models).items():
        (cfgs / "models" / f"{name}.yaml").write_text(yaml.safe_dump(c))
    texts, labels = make_texts(n_train, 1)
    proc = root / "data" / "processed" / "tiny"
    proc.mkdir(parents=True)
    pd.DataFrame({"id": [f"train-{i}" for i in range(n_train)], "text": texts, "label": labels,
                  "fold": [i % 2 for i in range(n_train)]}).to_csv(proc / "train.csv", index=False)
    test_texts, _ = make_texts(n_test, 2)
    ids = [f"t{i}" for i in range(n_test)]
    pd.DataFrame({"id": ids, "text": test_texts}).to_csv(proc / "test.csv", index=False)
    raw = root / "data" / "raw" / "tiny"
    raw.mkdir(parents=True)
    pd.DataFrame({"id": ids, "label": 0}).to_csv(raw / "sample_submission.csv", index=False)
    return root


def in_process(root: Path, monkeypatch) -> None:
    """Stages run in this process read the fixture competition at `root`."""
    monkeypatch.setenv("MEDALIST_ROOT", str(root))
    monkeypatch.setenv("MEDALIST_CONFIGS", str(root / "configs"))


def env_for(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDALIST_", "ACCELERATE_"))}
    env.update(PYTHONPATH=str(REPO / "src"), MEDALIST_ROOT=str(root), MEDALIST_CONFIGS=str(root / "configs"),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def launch_cmd(model: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_config.yaml"),
            "-m", "medalist.stages.train", "--comp", "tiny", "--model", model, *args]


def launch(root: Path, model: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(launch_cmd(model, *args), env=env_for(root), cwd=root, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def rows_of(table: pd.DataFrame, ids) -> pd.DataFrame:
    """The processed rows with these ids, in this order (what a predictor takes)."""
    return table.set_index("id").loc[list(ids)].reset_index()


def fold_info(run_dir: Path, k: int) -> dict:
    return json.loads((run_dir / f"fold{k}" / "done.json").read_text())["info"]


def scalar_tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def pretrained_fingerprint(path: Path) -> str:
    from transformers import AutoModelForSequenceClassification

    from medalist.models.families.hf_text import backbone_fingerprint

    return backbone_fingerprint(AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(LABELS)))


def check_run_files(root: Path, run: str) -> Path:
    run_dir = root / "results" / "tiny" / run
    train = pd.read_csv(root / "data" / "processed" / "tiny" / "train.csv", dtype={"id": str})
    test = pd.read_csv(root / "data" / "processed" / "tiny" / "test.csv", dtype={"id": str})
    cols = [f"p_{i}" for i in range(len(LABELS))]
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    assert list(oof.columns) == ["id", "fold", *cols]
    assert sorted(oof["id"]) == sorted(train["id"])
    assert (oof.set_index("id").loc[train["id"], "fold"].to_numpy() == train["fold"].to_numpy()).all()
    assert np.allclose(oof[cols].sum(axis=1), 1, atol=1e-5)
    tp = pd.read_csv(run_dir / "test.csv", dtype={"id": str})
    assert list(tp["id"]) == list(test["id"]) and np.allclose(tp[cols].sum(axis=1), 1, atol=1e-5)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["oof_score"] <= 1 and len(metrics["fold_scores"]) == 2
    assert metrics["device"] == "cpu" and metrics["train_samples_per_s"] > 0 and metrics["optimistic"] is False
    for k in range(2):
        assert not (run_dir / f"fold{k}" / "ckpt").exists()  # checkpoints go once the fold is done
        log_dir = root / "logs" / "tiny" / run / f"fold{k}"
        assert list(log_dir.glob("events.out.tfevents.*"))
        assert {"train/loss", "train/lr", "train/samples_per_s", "val/micro_f1"} <= scalar_tags(log_dir)
        assert fold_info(run_dir, k)["epochs_run"] == 1
    return run_dir


# ---------------------------------------------------------------- encoder


@pytest.fixture(scope="module")
def encoder_run(tiny_models, tmp_path_factory):
    root = make_root(tmp_path_factory.mktemp("enc"), tiny_models)
    return root, launch(root, "tinybert")


def test_encoder_trains_every_fold_under_accelerate_launch(encoder_run, tiny_models):
    root, proc = encoder_run
    run_dir = check_run_files(root, "tinybert")
    out = proc.stdout + proc.stderr
    assert "fold 0 epoch 1/1" in out and "samples_s=" in out  # the per-epoch progress bar
    for k in range(2):
        fd = run_dir / f"fold{k}"
        assert {"model.safetensors", "config.json", "tokenizer_config.json"} <= {p.name for p in fd.iterdir()}


def test_each_fold_starts_from_the_pretrained_weights(encoder_run, tiny_models):
    from transformers import AutoModelForSequenceClassification

    from medalist.models.families.hf_text import backbone_fingerprint

    root, _ = encoder_run
    run_dir = root / "results" / "tiny" / "tinybert"
    pretrained = pretrained_fingerprint(tiny_models["bert"])
    trained0 = backbone_fingerprint(AutoModelForSequenceClassification.from_pretrained(run_dir / "fold0"))
    assert trained0 != pretrained  # training moved the backbone …
    assert fold_info(run_dir, 0)["init_fingerprint"] == pretrained
    assert fold_info(run_dir, 1)["init_fingerprint"] == pretrained  # … and fold 1 did not start from it


def test_load_predictor_reproduces_fold_probabilities(encoder_run):
    from medalist.models.registry import load_run_predictor

    root, _ = encoder_run
    run_dir = root / "results" / "tiny" / "tinybert"
    train = pd.read_csv(root / "data" / "processed" / "tiny" / "train.csv", dtype={"id": str}, keep_default_na=False)
    val = pd.read_csv(run_dir / "fold0" / "val.csv", dtype={"id": str})
    got = load_run_predictor(run_dir, 0, len(LABELS))(rows_of(train, val["id"]))
    cols = [f"p_{i}" for i in range(len(LABELS))]
    np.testing.assert_allclose(got, val[cols].to_numpy(), atol=1e-5)


def test_predict_writes_averaged_test_probabilities_and_a_valid_submission(encoder_run, monkeypatch):
    from medalist.stages import predict

    root, _ = encoder_run
    in_process(root, monkeypatch)
    run_dir = root / "results" / "tiny" / "tinybert"
    cols = [f"p_{i}" for i in range(len(LABELS))]
    sub_path = predict.run("tiny", "tinybert")
    got = pd.read_csv(run_dir / "predict_test.csv", dtype={"id": str})
    want = pd.read_csv(run_dir / "test.csv", dtype={"id": str})  # train's fold average
    assert list(got["id"]) == list(want["id"])
    np.testing.assert_allclose(got[cols].to_numpy(), want[cols].to_numpy(), atol=1e-5)
    sub = pd.read_csv(sub_path, dtype=str)
    assert sub_path == root / "submission" / "tiny" / "tinybert.csv"
    assert list(sub.columns) == ["id", "label"] and list(sub["label"].astype(int)) == list(want[cols].to_numpy().argmax(1))

    predict.main(["--comp", "tiny", "--run", "tinybert", "--ckpt", str(run_dir / "fold1")])
    one = pd.read_csv(run_dir / "predict_test.csv", dtype={"id": str})
    fold1 = pd.read_csv(run_dir / "fold1" / "test.csv", dtype={"id": str})
    np.testing.assert_allclose(one[cols].to_numpy(), fold1[cols].to_numpy(), atol=1e-5)

    with pytest.raises(SystemExit) as e:
        predict.main(["--comp", "tiny", "--run", "nosuchrun"])
    assert e.value.code == 2


# ---------------------------------------------------------------- decoder + LoRA


def test_decoder_lora_trains_only_the_adapter_and_the_head(tiny_models, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    from medalist.models.families import hf_text
    from medalist.models.registry import load_run_predictor
    from medalist.stages import train as train_stage

    root = make_root(tmp_path, tiny_models)
    in_process(root, monkeypatch)
    monkeypatch.setattr(hf_text, "_NOTED", set())  # the note is made once per process
    train_stage.run("tiny", "tinyqwen")
    assert "load_in_4bit ignored" in capsys.readouterr().out  # no CUDA here: one note, not a crash
    run_dir = check_run_files(root, "tinyqwen")
    pretrained = pretrained_fingerprint(tiny_models["qwen"])
    for k in range(2):
        info = fold_info(run_dir, k)
        assert info["init_fingerprint"] == pretrained  # fresh base every fold
        assert info["frozen_fingerprint_before"] == info["frozen_fingerprint_after"]  # base untouched
        saved = load_file(str(run_dir / f"fold{k}" / "adapter_model.safetensors"))
        assert all("lora_" in n or "score" in n for n in saved)
        assert any("score" in n for n in saved)
        lora_b = [v for n, v in saved.items() if "lora_B" in n]
        assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: training moved it
        assert info["trainable_params"] == sum(v.numel() for v in saved.values())
    val = pd.read_csv(run_dir / "fold0" / "val.csv", dtype={"id": str})
    train = pd.read_csv(root / "data" / "processed" / "tiny" / "train.csv", dtype={"id": str}, keep_default_na=False)
    got = load_run_predictor(run_dir, 0, len(LABELS))(rows_of(train, val["id"]))
    np.testing.assert_allclose(got, val[[f"p_{i}" for i in range(len(LABELS))]].to_numpy(), atol=1e-5)


# ---------------------------------------------------------------- resume (the engine's own: test_engine.py)


@pytest.mark.slow  # a kill-and-resume run (make test-all runs it)
def test_a_stopped_fold_predicts_from_its_checkpoint_and_train_resumes_it(tiny_models, tmp_path, monkeypatch):
    from medalist.core import config as C
    from medalist.models.families import hf_text
    from medalist.stages import train as train_stage

    root = make_root(tmp_path, tiny_models, n_train=1000)  # enough rows to learn from in two epochs
    in_process(root, monkeypatch)
    fold_dir = root / "results" / "tiny" / "tinybert2" / "fold0"
    with interrupted_after_step(80):  # 500 rows to train on, batch 8: 63 steps an epoch
        train_stage.run("tiny", "tinybert2", folds=[0])
    assert not (fold_dir / "done.json").exists()

    # `make predict CKPT=…/ckpt/checkpoints/checkpoint_1` works on the half-trained fold too
    cfg = C.from_dict(hf_text.Config, model_configs(tiny_models)["tinybert2"])
    first_ckpt = fold_dir / "ckpt" / "checkpoints" / "checkpoint_1"
    mid = hf_text.load_predictor(cfg, first_ckpt, len(LABELS))(pd.DataFrame({"text": make_texts(6, 5)[0]}))
    assert mid.shape == (6, len(LABELS)) and np.allclose(mid.sum(1), 1, atol=1e-5)

    train_stage.run("tiny", "tinybert2", folds=[0])
    info = fold_info(root / "results" / "tiny" / "tinybert2", 0)
    assert info["resumed_after_epoch"] == 1 and info["epochs_run"] == 2
    assert info["history"][-1]["micro_f1"] > 0.5  # it learns (chance is 1/3)
    assert not (fold_dir / "ckpt").exists()

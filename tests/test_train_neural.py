"""The neural families (encoder, decoder_lora) end to end under `accelerate launch`, on tiny
randomly initialised models saved to disk (a 2-layer BERT with a WordPiece vocabulary, a 2-layer
Qwen2 with a byte-level BPE): no network, a couple of minutes on 2 CPU cores."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LABELS = ["algebra", "geometry", "probability"]
WORDS = {
    "algebra": "solve equation polynomial root factor x y variable linear quadratic",
    "geometry": "triangle circle angle area radius side square perimeter polygon",
    "probability": "dice coin chance card probability random expected draw outcome",
}
COMMON = "find the of a value what is given if and compute"


def _texts(n: int, seed: int, label_of=None) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % len(LABELS) if label_of is None else label_of
        own = WORDS[LABELS[y]].split()
        k = int(rng.integers(3, 14))  # varied lengths, so batches are length-grouped for real
        words = list(rng.choice(own, size=k)) + list(rng.choice(COMMON.split(), size=k // 2)) + [str(rng.integers(0, 9))]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return texts, labels


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("models")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(" ".join([*WORDS.values(), COMMON]).split())),
             *map(str, range(10))]
    bert = root / "tiny-bert"
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizer(vocab=str(bert / "vocab.txt"))
    torch_seed()
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(bert)
    tok.save_pretrained(bert)

    qwen = root / "tiny-qwen"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(_texts(90, 0)[0], trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(bpe.to_str())["model"]
    # no pad token, like many decoder tokenizers: the family must fall back to eos
    qtok = transformers.Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], pad_token=None)
    qcfg = transformers.Qwen2Config(vocab_size=len(model["vocab"]), hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                    max_position_embeddings=64, eos_token_id=qtok.eos_token_id,
                                    tie_word_embeddings=False)
    transformers.Qwen2Model(qcfg).save_pretrained(qwen)
    qtok.save_pretrained(qwen)
    return {"bert": bert, "qwen": qwen}


def torch_seed() -> None:
    import torch

    torch.manual_seed(0)


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
    texts, labels = _texts(n_train, 1)
    proc = root / "data" / "processed" / "tiny"
    proc.mkdir(parents=True)
    pd.DataFrame({"id": [f"train-{i}" for i in range(n_train)], "text": texts, "label": labels,
                  "fold": [i % 2 for i in range(n_train)]}).to_csv(proc / "train.csv", index=False)
    test_texts, _ = _texts(n_test, 2)
    ids = [f"t{i}" for i in range(n_test)]
    pd.DataFrame({"id": ids, "text": test_texts}).to_csv(proc / "test.csv", index=False)
    raw = root / "data" / "raw" / "tiny"
    raw.mkdir(parents=True)
    pd.DataFrame({"id": ids, "label": 0}).to_csv(raw / "sample_submission.csv", index=False)
    return root


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
    texts = train.set_index("id").loc[val["id"], "text"].tolist()
    got = load_run_predictor(run_dir, 0, len(LABELS))(texts)
    cols = [f"p_{i}" for i in range(len(LABELS))]
    np.testing.assert_allclose(got, val[cols].to_numpy(), atol=1e-5)


def test_predict_writes_averaged_test_probabilities_and_a_valid_submission(encoder_run, monkeypatch):
    from medalist.stages import predict

    root, _ = encoder_run
    monkeypatch.setenv("MEDALIST_ROOT", str(root))
    monkeypatch.setenv("MEDALIST_CONFIGS", str(root / "configs"))
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


def test_decoder_lora_trains_only_the_adapter_and_the_head(tiny_models, tmp_path):
    from safetensors.torch import load_file

    from medalist.models.registry import load_run_predictor

    root = make_root(tmp_path, tiny_models)
    proc = launch(root, "tinyqwen")
    assert "load_in_4bit ignored" in proc.stdout  # no CUDA here: one note, not a crash
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
    got = load_run_predictor(run_dir, 0, len(LABELS))(train.set_index("id").loc[val["id"], "text"].tolist())
    np.testing.assert_allclose(got, val[[f"p_{i}" for i in range(len(LABELS))]].to_numpy(), atol=1e-5)


# ---------------------------------------------------------------- resume


def test_killed_fold_resumes_to_the_uninterrupted_predictions(tiny_models, tmp_path):
    # enough rows that the second epoch outlasts the poll (about a second here)
    whole = make_root(tmp_path / "whole", tiny_models, n_train=1000)
    killed = make_root(tmp_path / "killed", tiny_models, n_train=1000)
    launch(whole, "tinybert2", "--folds", "0")

    fold_dir = killed / "results" / "tiny" / "tinybert2" / "fold0"
    first_ckpt = fold_dir / "ckpt" / "epoch1" / "progress.json"
    proc = subprocess.Popen(launch_cmd("tinybert2", "--folds", "0"), env=env_for(killed), cwd=killed,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not first_ckpt.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)  # polling for the checkpoint, not waiting for time to pass
        assert first_ckpt.exists(), "no epoch checkpoint appeared"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (fold_dir / "done.json").exists(), "the run finished before it could be killed"
    from medalist.core import config as C
    from medalist.models import encoder

    # `make predict CKPT=…/ckpt/epoch1` works on the half-trained fold too
    cfg = C.from_dict(encoder.Config, model_configs(tiny_models)["tinybert2"])
    mid = encoder.load_predictor(cfg, fold_dir / "ckpt" / "epoch1", len(LABELS))(_texts(6, 5)[0])
    assert mid.shape == (6, len(LABELS)) and np.allclose(mid.sum(1), 1, atol=1e-5)

    out = launch(killed, "tinybert2", "--folds", "0")
    assert "resumed after epoch 1" in out.stdout
    info = fold_info(killed / "results" / "tiny" / "tinybert2", 0)
    assert info["resumed_after_epoch"] == 1 and info["epochs_run"] == 2
    assert info["history"][-1]["micro_f1"] > 0.5  # it learns (chance is 1/3)
    assert not (fold_dir / "ckpt").exists()
    for name in ("val.csv", "test.csv"):
        a = pd.read_csv(whole / "results" / "tiny" / "tinybert2" / "fold0" / name, dtype={"id": str})
        b = pd.read_csv(fold_dir / name, dtype={"id": str})
        assert list(a["id"]) == list(b["id"])
        np.testing.assert_allclose(b.filter(like="p_").to_numpy(), a.filter(like="p_").to_numpy(), atol=1e-5)


# ---------------------------------------------------------------- out of memory


def test_injected_oom_halves_the_batch_once_and_keeps_the_step_count(tiny_models, tmp_path, monkeypatch, capsys):
    from medalist.core import config as C
    from medalist.models import FoldData, encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = C.from_dict(encoder.Config, model_configs(tiny_models)["tinybert"])
    texts, labels = _texts(40, 3)
    fold = FoldData(fold=0, n_classes=len(LABELS), train_texts=texts[:32], train_labels=np.array(labels[:32]),
                    val_ids=[str(i) for i in range(8)], val_texts=texts[32:], val_labels=np.array(labels[32:]),
                    test_ids=["a", "b"], test_texts=texts[:2], metric="micro_f1", log_dir=None)
    plain = encoder.fit_fold(cfg, fold, tmp_path / "plain")
    monkeypatch.setenv("MEDALIST_INJECT_OOM", "1")
    capsys.readouterr()
    res = encoder.fit_fold(cfg, fold, tmp_path / "oom")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "out of memory" in ln]
    assert len(lines) == 1 and "batch 8" in lines[0] and "batch 4 x grad_accum 2" in lines[0]
    assert res.info["oom_events"] == 1 and res.info["batch_size"] == 4 and res.info["grad_accum"] == 2
    assert res.info["optimizer_steps"] == plain.info["optimizer_steps"] == 4
    assert res.val_proba.shape == (8, len(LABELS)) and np.allclose(res.val_proba.sum(1), 1, atol=1e-5)


# ---------------------------------------------------------------- epoch selection


def _small_fold(n: int = 48):
    from medalist.models import FoldData

    texts, labels = _texts(n, 4)
    v = n // 4
    return FoldData(fold=0, n_classes=len(LABELS), train_texts=texts[v:], train_labels=np.array(labels[v:]),
                    val_ids=[str(i) for i in range(v)], val_texts=texts[:v], val_labels=np.array(labels[:v]),
                    test_ids=["a", "b"], test_texts=texts[:2], metric="micro_f1", log_dir=None)


def test_best_epoch_and_early_stopping_are_marked_optimistic(tiny_models, tmp_path, monkeypatch):
    from medalist.core import config as C
    from medalist.models import encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = model_configs(tiny_models)["tinybert"]
    fold = _small_fold()
    best = C.from_dict(encoder.Config, {**base, "epochs": 3, "lr": 3e-3, "select_best_epoch": True})
    runs = {}
    for name, scripted in (("first", [0.9, 0.5, 0.4]), ("last", [0.1, 0.2, 0.3])):
        # validation scores scripted so the best epoch is known; the training itself is identical
        values = iter(scripted)
        monkeypatch.setattr(encoder, "score", lambda metric, y, p, values=values: next(values))
        runs[name] = encoder.fit_fold(best, fold, tmp_path / name)
        assert runs[name].info["optimistic"] is True
        # the saved weights are the chosen epoch's: they reproduce the reported probabilities
        again = encoder.load_predictor(best, tmp_path / name, len(LABELS))(fold.val_texts)
        np.testing.assert_allclose(again, runs[name].val_proba, atol=1e-5)
    assert runs["first"].info["best_epoch"] == 1 and runs["last"].info["best_epoch"] == 3
    assert np.abs(runs["first"].val_proba - runs["last"].val_proba).max() > 1e-4  # epoch 1's weights came back
    monkeypatch.undo()

    # a learning rate too small to change any prediction: no improvement, so patience 1 stops at epoch 2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    stop = C.from_dict(encoder.Config, {**base, "epochs": 4, "lr": 1e-12, "early_stopping_patience": 1})
    res = encoder.fit_fold(stop, fold, tmp_path / "stop")
    assert res.info["epochs_run"] == 2 and res.info["optimistic"] is True
    assert not (tmp_path / "stop" / "ckpt").exists()

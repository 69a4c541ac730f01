"""In-domain pretraining (`make pretrain`): masked-LM training of a tiny randomly initialised BERT
on a fixture competition's texts, resumed after an interruption; a run on
`backbone: pretrain:<name>` starts from it and retrains when it changes; the Makefile knows the
dependency."""
from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import interrupted_after_step, make_env
from tiny_text import LABELS, make_texts

MLM = {"max_length": 32, "batch_size": 8, "lr": 1e-3, "epochs": 2, "seed": 0}


@pytest.fixture
def root(tmp_path, tiny_models, monkeypatch) -> Path:
    """Competition `tiny` (2 folds, 400 train rows), the pretraining `tinymlm` of the tiny BERT, and a
    model config fine-tuning its result."""
    cfgs = tmp_path / "configs"
    for sub in ("competitions", "models", "pretrain"):
        (cfgs / sub).mkdir(parents=True)
    (cfgs / "competitions" / "tiny.yaml").write_text(yaml.safe_dump(
        {"name": "tiny", "source": "local", "labels": LABELS, "folds": {"n": 2}}))
    (cfgs / "pretrain" / "tinymlm.yaml").write_text(yaml.safe_dump({"backbone": str(tiny_models["bert"]), **MLM}))
    (cfgs / "models" / "tinydapt.yaml").write_text(yaml.safe_dump({
        "family": "encoder", "backbone": "pretrain:tinymlm", "max_length": 32, "batch_size": 8, "lr": 1e-3,
        "epochs": 1, "seed": 0, "max_train_rows": 60}))
    texts, labels = make_texts(400, 1)
    proc = tmp_path / "data" / "processed" / "tiny"
    proc.mkdir(parents=True)
    pd.DataFrame({"id": [f"train-{i}" for i in range(len(texts))], "text": texts, "label": labels,
                  "fold": [i % 2 for i in range(len(texts))]}).to_csv(proc / "train.csv", index=False)
    pd.DataFrame({"id": [f"t{i}" for i in range(12)], "text": make_texts(12, 2)[0]}).to_csv(proc / "test.csv", index=False)
    for k, v in {"MEDALIST_ROOT": str(tmp_path), "MEDALIST_CONFIGS": str(cfgs), "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(k, v)
    return tmp_path


def _fingerprint(path: Path) -> str:
    """The run's init_fingerprint of a backbone folder: seeded as the engine seeds a fold (seed 0),
    since the pooler, which a masked LM has not, starts random."""
    from accelerate.utils import set_seed
    from transformers import AutoModelForSequenceClassification

    from medalist.models.families.hf_text import backbone_fingerprint

    set_seed(0)
    return backbone_fingerprint(AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(LABELS)))


@pytest.mark.slow  # a kill-and-resume run (make test-all runs it)
def test_pretraining_resumes_after_an_interruption_and_a_run_trains_on_it(root, tiny_models, capsys):
    from medalist.stages import pretrain as pretrain_stage
    from medalist.stages import train as train_stage

    # what this family adds to the engine's resume (test_engine.py): its untied masked-LM weights
    # go into the checkpoint and come back. 400 texts, batch 8: 50 steps an epoch
    out = root / "results" / "tiny" / "pretrain" / "tinymlm"
    with interrupted_after_step(70):
        pretrain_stage.run("tiny", "tinymlm")
    assert (out / "ckpt" / "checkpoints" / "checkpoint_1" / "progress.json").exists()
    assert not (out / "done.json").exists()

    pretrain_stage.run("tiny", "tinymlm")
    done = json.loads((out / "done.json").read_text())
    assert done["info"]["resumed_after_epoch"] == 1 and done["info"]["epochs_run"] == 2
    assert done["n_texts"] == 400 and not done["pretrain_on_test"]  # train texts only, by default
    assert done["losses"][1] < done["losses"][0]  # it learns the corpus
    assert not (out / "ckpt").exists()
    pretrained = _fingerprint(out)
    assert pretrained != _fingerprint(tiny_models["bert"])  # the encoder moved

    # the same config and texts again: nothing trains, the weights stay
    weights = (out / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    pretrain_stage.run("tiny", "tinymlm")
    assert "up to date" in capsys.readouterr().out and (out / "model.safetensors").stat().st_mtime_ns == weights

    # a run on `backbone: pretrain:tinymlm` starts from it, and records which pretraining it was
    run_dir = train_stage.run("tiny", "tinydapt")
    info = json.loads((run_dir / "fold0" / "done.json").read_text())["info"]
    assert info["init_fingerprint"] == pretrained
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["pretrain_key"] == done["key"]
    assert (run_dir / "metrics.json").exists()

    # a new pretraining (another config) retrains the run's folds
    cfg = root / "configs" / "pretrain" / "tinymlm.yaml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "epochs": 1, "max_train_rows": 200}))
    pretrain_stage.run("tiny", "tinymlm")
    assert json.loads((out / "done.json").read_text())["n_texts"] == 200
    capsys.readouterr()
    train_stage.run("tiny", "tinydapt")
    assert "done, skipped" not in capsys.readouterr().out
    info = json.loads((run_dir / "fold0" / "done.json").read_text())["info"]
    assert info["init_fingerprint"] == _fingerprint(out) != pretrained


def test_corpus_switch_config_checks_and_missing_backbone(root):
    from medalist.core.competition import load_competition
    from medalist.core.config import UserError
    from medalist.core.io import read_processed
    from medalist.core.config import Paths
    from medalist.stages import pretrain as pretrain_stage
    from medalist.stages import train as train_stage

    comp = load_competition("tiny")
    cfg = pretrain_stage.load_config("tinymlm")
    train, test = read_processed(Paths("tiny"))
    assert pretrain_stage.corpus(comp, cfg, train, test) == train["text"].drop_duplicates().tolist()
    both = pretrain_stage.corpus(dataclasses.replace(comp, pretrain_on_test=True), cfg, train, test)
    assert set(both) == set(train["text"]) | set(test["text"])

    with pytest.raises(UserError, match="run `make pretrain COMP=tiny MODEL=tinymlm` first"):
        train_stage.run("tiny", "tinydapt")
    with pytest.raises(UserError, match=r"unknown pretraining config 'nope'.*known: tinymlm"):
        pretrain_stage.load_config("nope")
    path = root / "configs" / "pretrain" / "tinymlm.yaml"
    for bad, message in (({"n_seeds": 2}, "give one seed"), ({"select_best_epoch": True}, "validation rows"),
                         ({"mlm_probability": 1.5}, "out of range")):
        path.write_text(yaml.safe_dump({**MLM, "backbone": "x", **bad}))
        with pytest.raises(UserError, match=message):
            pretrain_stage.load_config("tinymlm")


def _make(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(root), "--no-print-directory", "COMP=demo", *args], env=make_env(),
                          capture_output=True, text=True, timeout=300)


def test_make_pretrains_before_a_run_on_the_pretrained_backbone(make_project):
    root = make_project
    p = _make(root, "-n", "train", "MODELS=minilm-dapt")
    assert p.returncode == 0, p.stderr
    stages = [ln.split("-m medalist.stages.")[1].split()[0] for ln in p.stdout.splitlines() if "-m medalist.stages." in ln]
    # the pretraining first, then the run's five fold jobs and its merge
    assert stages[stages.index("pretrain"):] == ["pretrain"] + ["train"] * 6
    assert "accelerate launch --config_file accelerate_config.yaml -m medalist.stages.pretrain --comp demo --model minilm" in p.stdout

    (root / "configs/models/dangling.yaml").write_text("family: encoder\nbackbone: pretrain:nope\n")
    p = _make(root, "-n", "train", "MODELS=dangling")
    assert p.returncode != 0 and "backbone 'pretrain:nope': no configs/pretrain/nope.yaml" in p.stderr
    for args, message in ((["pretrain"], "pretrain needs MODEL=<config>"),
                          (["pretrain", "MODEL=nope"], "unknown pretraining config 'nope'")):
        p = _make(root, *args)
        assert p.returncode != 0 and message in p.stderr, (args, p.stderr)


def test_head_scores_only_the_masked_positions_with_the_same_loss_and_gradients(tiny_models):
    """The pre-hook hands the LM head the masked positions alone: the loss and every gradient equal
    those of the full-vocabulary logits of every position."""
    import torch

    from medalist.models.families import mlm

    cfg = mlm.Config(backbone=str(tiny_models["bert"]), **MLM)
    adapter = mlm.MaskedLMAdapter(cfg, str(tiny_models["bert"]))
    hooked = adapter.build_model(0)
    plain = mlm.untie(__import__("transformers").AutoModelForMaskedLM.from_pretrained(str(tiny_models["bert"])))
    plain.load_state_dict(hooked.state_dict())  # the fresh LM head starts random: the same weights in both
    items = adapter.make_items(pd.DataFrame({"text": make_texts(8, 3)[0]}), mlm.training.Stage(name="all"))
    torch.manual_seed(0)
    batch = adapter.collate(items)
    assert (batch["labels"] != -100).sum() > 0

    seen = []
    mlm.lm_head(hooked).register_forward_hook(lambda m, a, out: seen.append(out.shape))
    got = adapter.loss(hooked, batch)["loss"]
    logits = plain(**{k: v for k, v in batch.items() if k != "labels"}).logits
    masked = batch["labels"] != -100
    want = torch.nn.functional.cross_entropy(logits[masked], batch["labels"][masked], reduction="sum") \
        / masked.sum() * masked.shape[0]
    assert seen == [torch.Size([int(masked.sum()), hooked.config.vocab_size])]  # masked rows only
    torch.testing.assert_close(got, want)
    got.backward(), want.backward()
    for (name, p), q in zip(hooked.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert adapter._masked is None  # a later call outside loss() sees every position

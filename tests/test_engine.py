"""The training engine, tested once, family-blind, with the tiny MLP adapter of tests/engine_toy.py:
resume after a real kill, out-of-memory halving, TensorBoard, stages, seeds, best epoch and early
stopping, the unsupervised mode, and two gloo processes on a CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_toy import REPO, ToyAdapter, load_saved, toy_config, toy_fold, toy_rows
from medalist.models import engine
from medalist.models.training import weight_dirs

TOY = Path(__file__).with_name("engine_toy.py")
# on CUDA the engine trains and predicts in bf16 and draws dropout masks per kernel call, so
# comparisons with an fp32 reference, or between differently split batches, are only close
EXACT = not torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in [k for k in os.environ if k.startswith(("MEDALIST_", "TOY_"))]:
        monkeypatch.delenv(k)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDALIST_", "ACCELERATE_", "TOY_"))}
    return {**env, "PYTHONPATH": str(REPO / "src"), **extra}


def _toy(out: Path, *launcher: str, args: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *launcher, str(TOY), str(out), *args], env=_env(**env),
                          capture_output=True, text=True, timeout=300, check=False)


def _tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


# the head alone for an epoch, then everything for two: a kill in the second stage must come back
# to that stage, its optimizer state and its place in it
STAGED = [{"name": "head", "epochs": 1, "trainable": [r"^head\."]}, {"name": "all", "epochs": 2}]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_predictions(tmp_path):
    whole = engine.fit_fold(ToyAdapter(), toy_config(stages=STAGED), toy_fold(), tmp_path / "whole")

    # 15 steps an epoch: step 35 is inside epoch 3, the second of stage "all", after epoch 2's checkpoint
    staged = ("--stages", json.dumps(STAGED))
    killed = _toy(tmp_path / "killed", args=staged, TOY_KILL_AT_STEP="35")
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpts = tmp_path / "killed" / "fold0" / "ckpt" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint_1", "checkpoint_2"]
    progress = json.loads((ckpts / "checkpoint_2" / "progress.json").read_text())
    assert (progress["epoch"], progress["stage"], progress["stage_epoch"]) == (2, 1, 1)

    again = _toy(tmp_path / "killed", args=staged)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed after epoch 2" in again.stdout + again.stderr
    info = json.loads((tmp_path / "killed" / "info.json").read_text())
    assert info["resumed_after_epoch"] == 2 and info["epochs_run"] == 3
    stages = [h["stage"] for h in info["history"]]
    assert stages == [h["stage"] for h in whole.info["history"]] == ["head", "all", "all"]
    assert info["optimizer_steps"] == whole.info["optimizer_steps"] == 45
    assert not ckpts.parent.exists()  # checkpoints go once the run is done
    got = np.load(tmp_path / "killed" / "result.npz")
    np.testing.assert_allclose(got["val"], whole.val_proba, atol=1e-5)
    np.testing.assert_allclose(got["test"], whole.test_proba, atol=1e-5)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """One fit of the plain toy config (seed 0) with TensorBoard logs in `logs/fold0` beside it,
    for the tests that compare against it or read its logs: (result, its folder)."""
    root = tmp_path_factory.mktemp("plain")
    return engine.fit_fold(ToyAdapter(), toy_config(), toy_fold(root / "logs" / "fold0"), root / "fold0"), root


def test_out_of_memory_halves_the_batch_once_and_keeps_the_step_count(plain, tmp_path, monkeypatch, capsys):
    plain, _ = plain
    monkeypatch.setenv("MEDALIST_INJECT_OOM", "1")
    capsys.readouterr()
    res = engine.fit_fold(ToyAdapter(), toy_config(), toy_fold(), tmp_path / "oom")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "out of memory" in ln]
    assert len(lines) == 1 and "at batch 8" in lines[0] and "batch 4 x grad_accum 2" in lines[0]
    assert res.info["oom_events"] == 1 and res.info["batch_size"] == 4 and res.info["grad_accum"] == 2
    assert res.info["optimizer_steps"] == plain.info["optimizer_steps"]
    # half batches, twice the accumulation: the same gradients, so the same model
    np.testing.assert_allclose(res.val_proba, plain.val_proba, atol=1e-5 if EXACT else 0.1)


def test_tensorboard_events_hold_losses_lr_and_the_validation_score(plain):
    log_dir = plain[1] / "logs" / "fold0"
    assert list(log_dir.glob("events.out.tfevents.*"))
    assert {"train/loss", "train/ce", "train/recon", "train/lr", "train/samples_per_s",
            "val/micro_f1"} <= _tags(log_dir)


def test_a_head_only_stage_leaves_the_body_untouched_and_the_adapter_sees_each_stage(tmp_path):
    torch.manual_seed(0)  # the engine seeds with cfg.seed = 0 before building
    fresh = ToyAdapter().build_model(0).state_dict()
    head_only = {"name": "head", "epochs": 1, "trainable": [r"^head\."], "input_size": 3}
    adapter = ToyAdapter()
    res = engine.fit_fold(adapter, toy_config(stages=[head_only]), toy_fold(), tmp_path / "head")
    trained = load_saved(tmp_path / "head").state_dict()
    for k, v in fresh.items():
        assert torch.equal(trained[k], v) == (not k.startswith("head.")), k
    assert res.info["trainable_params"] == sum(v.numel() for k, v in fresh.items() if k.startswith("head."))
    assert adapter.sizes == [3, 3, 3]  # train, val, test items made at the stage's input size

    adapter = ToyAdapter()
    two = engine.fit_fold(adapter, toy_config(stages=[head_only, {"name": "all", "input_size": 4}]), toy_fold(),
                          tmp_path / "two")
    assert [h["stage"] for h in two.info["history"]] == ["head", "all", "all"]
    assert adapter.sizes == [3, 3, 3, 4, 4, 4]
    assert not torch.equal(load_saved(tmp_path / "two").state_dict()["body.0.weight"], fresh["body.0.weight"])


def test_several_seeds_average_fresh_models(plain, tmp_path):
    fold = toy_fold()
    both = engine.fit_fold(ToyAdapter(), toy_config(n_seeds=2), fold, tmp_path / "both")
    one = [plain[0], engine.fit_fold(ToyAdapter(), toy_config(seed=1), fold, tmp_path / "s1")]  # seeds 0 and 1
    np.testing.assert_allclose(both.val_proba, (one[0].val_proba + one[1].val_proba) / 2, atol=1e-6)
    np.testing.assert_allclose(both.test_proba, (one[0].test_proba + one[1].test_proba) / 2, atol=1e-6)
    assert both.info["seeds"] == [0, 1] and len(both.info["seed_scores"]) == 2
    assert [p.name for p in weight_dirs(tmp_path / "both")] == ["seed0", "seed1"]
    assert np.abs(one[0].val_proba - one[1].val_proba).max() > 1e-3  # the seeds really differ


def test_best_epoch_is_the_one_reported_and_marked_optimistic(tmp_path):
    fold = toy_fold()
    cfg = toy_config(epochs=6, lr=0.3, select_best_epoch=True)
    res = engine.fit_fold(ToyAdapter(), cfg, fold, tmp_path / "best")
    scores = [h["micro_f1"] for h in res.info["history"]]
    assert res.info["optimistic"] is True and res.info["best_epoch"] == int(np.argmax(scores)) + 1
    assert res.info["best_epoch"] != 6, "pick a config whose best epoch is not the last"
    again = torch.softmax(load_saved(tmp_path / "best")(torch.tensor(
        fold.val[[f"x{i}" for i in range(4)]].to_numpy(np.float32)))[0], -1).detach().numpy()
    np.testing.assert_allclose(again, res.val_proba, atol=1e-6 if EXACT else 0.05)  # the best epoch's weights

    # a learning rate too small to change a prediction: no improvement, so patience 1 stops at epoch 2
    stop = engine.fit_fold(ToyAdapter(), toy_config(epochs=5, lr=1e-12, early_stopping_patience=1), fold,
                           tmp_path / "stop")
    assert stop.info["epochs_run"] == 2 and stop.info["optimistic"] is True
    assert not (tmp_path / "stop" / "ckpt").exists()


def test_the_unsupervised_mode_trains_one_run_without_labels(tmp_path):
    rows, _ = toy_rows(64, 5)
    info = engine.fit_unsupervised(ToyAdapter(), toy_config(epochs=3, lr=0.05), rows, tmp_path / "pre",
                                   tmp_path / "logs" / "pre")
    losses = [h["loss"] for h in info["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0] and "micro_f1" not in info["history"][0]
    assert (tmp_path / "pre" / "model.safetensors").exists() and not (tmp_path / "pre" / "ckpt").exists()
    assert {"train/loss", "train/lr"} <= _tags(tmp_path / "logs" / "pre")


def test_two_gloo_processes_return_every_row_once_and_score_like_one(tmp_path):
    # enough epochs that both runs converge: two processes take half the optimizer steps
    one = engine.fit_fold(ToyAdapter(), toy_config(epochs=8), toy_fold(), tmp_path / "one")
    # `--cpu` launches one process per machine (it expects MPI); torch's launcher with
    # ACCELERATE_USE_CPU gives two local gloo processes
    proc = _toy(tmp_path / "two", "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", args=("--epochs", "8"),
                ACCELERATE_USE_CPU="true")
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = np.load(tmp_path / "two" / "result.npz")
    info = json.loads((tmp_path / "two" / "info.json").read_text())
    assert info["device"] == "cpu x2"
    # the engine raises if a gathered row is missing or repeated; here: the right rows, each a distribution
    assert got["val"].shape == one.val_proba.shape and got["test"].shape == one.test_proba.shape
    assert np.allclose(got["val"].sum(1), 1, atol=1e-5) and np.allclose(got["test"].sum(1), 1, atol=1e-5)
    from medalist.core.metrics import score

    fold = toy_fold()
    assert abs(float(got["score"]) - score(fold.metric, fold.val_labels, one.val_proba)) <= 0.1

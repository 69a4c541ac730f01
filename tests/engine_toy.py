"""A tiny adapter for testing the training engine once, family-blind: an MLP over numeric rows
(columns x0…x3, a per-row cost column `n`), with a classification head and, for the unsupervised
mode, a reconstruction head (an autoencoder).

Run as a script (`python tests/engine_toy.py OUT [--epochs E] [--stages JSON]`, or under
`accelerate launch`) it trains fold 0 of `toy_fold()` and writes OUT/result.npz (val, test, score)
and OUT/info.json.
TOY_KILL_AT_STEP=N SIGKILLs the process inside optimizer step N: a real kill at a known point.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from medalist.core import config as C  # noqa: E402
from medalist.models import FoldData  # noqa: E402
from medalist.models.training import Adapter, Stage, TrainConfig  # noqa: E402

N_FEATURES, N_CLASSES = 4, 3


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(N_FEATURES, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1))
        self.head = torch.nn.Linear(16, N_CLASSES)
        self.decoder = torch.nn.Linear(16, N_FEATURES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # through forward, so a DistributedDataParallel wrapper syncs gradients
        return self.head(h), self.decoder(h)


class ToyAdapter(Adapter):
    n_classes = N_CLASSES

    def __init__(self) -> None:
        self.sizes: list[int | None] = []  # the input size of every make_items call
        self.steps = 0
        self.kill_at = int(os.environ.get("TOY_KILL_AT_STEP", "0"))

    def build_model(self, device_index: int) -> Toy:
        return Toy()

    def make_items(self, rows: pd.DataFrame, stage: Stage) -> list[dict]:
        self.sizes.append(stage.input_size)
        x = rows[[f"x{i}" for i in range(N_FEATURES)]].to_numpy(np.float32)
        return [{"x": x[i], "n": int(n)} for i, n in enumerate(rows["n"])]

    def cost(self, item: dict) -> float:
        return item["n"]

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor(np.stack([it["x"] for it in items]))}

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        self.steps += 1
        if self.steps == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        logits, decoded = model(batch["x"])
        recon = ((decoded.float() - batch["x"]) ** 2).sum()
        if "labels" not in batch:
            return {"loss": recon}
        ce = torch.nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="sum")
        return {"loss": ce + 0.1 * recon, "ce": ce, "recon": recon}  # an auxiliary loss, logged apart

    def proba(self, model, batch: dict) -> torch.Tensor:
        return torch.softmax(model(batch["x"])[0].float(), dim=-1)


def load_saved(path: Path) -> Toy:
    from safetensors.torch import load_file

    model = Toy()
    model.load_state_dict(load_file(str(Path(path) / "model.safetensors")))
    return model.eval()


def toy_rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows whose class is the argmax of the first three features (learnable in a few epochs)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    rows = pd.DataFrame({"id": [f"r{seed}-{i}" for i in range(n)], **{f"x{i}": x[:, i] for i in range(N_FEATURES)},
                         "n": rng.integers(1, 50, size=n)})
    return rows, x[:, :N_CLASSES].argmax(1)


def toy_fold(log_dir: Path | None = None, n_train: int = 120) -> FoldData:
    # odd sizes: the last evaluation batch is ragged, so multi-process gathering must drop its padding
    train, y = toy_rows(n_train, 0)
    val, vy = toy_rows(23, 1)
    test, _ = toy_rows(13, 2)
    return FoldData(fold=0, n_classes=N_CLASSES, train=train, train_labels=y, val=val, val_labels=vy, test=test,
                    metric="micro_f1", log_dir=log_dir)


def toy_config(**over) -> TrainConfig:
    base = {"family": "toy", "batch_size": 8, "eval_batch_size": 4, "lr": 0.02, "epochs": 2, "seed": 0,
            "warmup_ratio": 0.0, "fused_adamw": False}
    return C.from_dict(TrainConfig, {**base, **over})


def main() -> None:
    from medalist.core.metrics import score
    from medalist.models import engine

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--stages", type=json.loads, default=[], help="the config's stages, as JSON")
    a = ap.parse_args()
    out = Path(a.out)
    fold = toy_fold()
    res = engine.fit_fold(ToyAdapter(), toy_config(epochs=a.epochs, stages=a.stages), fold, out / "fold0")
    if int(os.environ.get("RANK", "0")) == 0:
        np.savez(out / "result.npz", val=res.val_proba, test=res.test_proba,
                 score=score(fold.metric, fold.val_labels, res.val_proba))
        (out / "info.json").write_text(json.dumps(res.info))


if __name__ == "__main__":
    main()

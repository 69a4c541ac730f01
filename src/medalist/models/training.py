"""What a neural family declares to the training engine (`medalist.models.engine`), and how its
saved weights predict again: the engine's config (`TrainConfig`, which a family's Config extends)
with its `Stage`s, the `Adapter` protocol, the pure pieces of the loop (batch order, lr schedule,
resume key, weight fingerprints), and inference from saved weights without accelerate.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Protocol

import numpy as np
import pandas as pd
import torch

from medalist.core import config as C
from medalist.core.config import AtLeastOne, NonNegative, Positive, Range
from medalist.models import RunConfig


@dataclasses.dataclass(frozen=True)
class Stage:
    """One phase of training, with its own optimizer and schedule (e.g. a head-only warm-up)."""

    name: str = "train"
    epochs: Annotated[int, AtLeastOne] | None = None  # null = the config's epochs
    lr: Annotated[float, Positive] | None = None  # null = the config's lr
    trainable: tuple[str, ...] = ()  # regexes (re.search) over parameter names; () = every one the model trains
    input_size: Annotated[int, AtLeastOne] | None = None  # told to the adapter (tokens for text, pixels a side for images); null = its default


@dataclasses.dataclass(frozen=True)
class TrainConfig(RunConfig):
    """The engine's knobs; a neural family's Config extends this."""

    batch_size: Annotated[int, AtLeastOne] = 32  # per process; an out-of-memory step halves it and doubles grad_accum
    eval_batch_size: Annotated[int, AtLeastOne] = 64  # no gradients kept, so twice the training batch fits
    grad_accum: Annotated[int, AtLeastOne] = 1
    lr: Annotated[float, Positive] = 1e-4  # small encoders like MiniLM want more than the 2e-5 of base-size models
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: Annotated[float, Range(ge=0, lt=1)] = 0.1  # share of a stage's optimizer steps spent warming up
    epochs: Annotated[int, AtLeastOne] = 2
    weight_decay: Annotated[float, NonNegative] = 0.01  # never applied to biases and norms
    max_grad_norm: Annotated[float, Positive] | None = 1.0  # clip; null = off
    select_best_epoch: bool = False  # OOF from the best validation epoch: optimistic, marked so
    early_stopping_patience: Annotated[int, AtLeastOne] | None = None  # epochs without improvement ends a stage; also optimistic
    fused_adamw: bool = True  # one kernel per step where the device supports it
    # train under bf16 autocast on a CPU that computes bf16 natively (AVX512-BF16, AMX); CUDA uses bf16 anyway
    cpu_bf16_training: bool = False
    n_seeds: Annotated[int, AtLeastOne] = 1  # fresh models per fold (seeds seed, seed+1, …); the fold's probabilities are their mean
    stages: tuple[Stage, ...] = ()  # () = one stage of `epochs` at `lr`

    def stage_list(self) -> list[Stage]:
        """The stages with every null filled from the config."""
        return [dataclasses.replace(s, epochs=s.epochs or self.epochs, lr=s.lr or self.lr)
                for s in (self.stages or (Stage(),))]


class Adapter(Protocol):
    """What a family tells the engine. An item is one row's data, unpadded; a batch is tensors.

    Optional: lr_scale(name) -> float (per-parameter lr factor, e.g. layer-wise decay),
    info(model, when: "init" | "end") -> dict (extra facts for FoldResult.info) and
    for_inference(model) -> module (a prediction-only form that `proba` accepts, built once a pass).
    """

    n_classes: int

    def build_model(self, device_index: int) -> torch.nn.Module: ...  # fresh; the engine seeds torch first
    def make_items(self, rows: pd.DataFrame, stage: Stage) -> list[dict]: ...
    def cost(self, item: dict) -> float: ...  # grouping key: token count, pixel count
    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]: ...
    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]: ...  # "loss" summed over rows; others logged
    def proba(self, model, batch: dict) -> torch.Tensor: ...  # (rows, n_classes)
    def save(self, acc, model, out_dir: Path) -> None: ...  # final weights (main process writes)


# ---------------------------------------------------------------- pure pieces of the loop


def epoch_batches(costs: np.ndarray, batch_size: int, seed: int, epoch: int, bucket: int = 50) -> list[np.ndarray]:
    """Cost-grouped batches for one epoch, a pure function of (seed, epoch): rows shuffled, cut into
    buckets of `bucket` batches, sorted by cost inside a bucket, batched, and the batches shuffled —
    little padding, yet a different mix each epoch."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(costs))
    span = batch_size * bucket
    batches = []
    for s in range(0, len(perm), span):
        chunk = perm[s:s + span]
        chunk = chunk[np.argsort(-costs[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def shard(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This process's rows of a global batch (every process gets at least one)."""
    return (np.resize(batch, world) if len(batch) < world else batch)[rank::world]


def fingerprint(named_params) -> str:
    """A cheap hash of weights (a strided sample of every tensor): equal weights, equal hash."""
    h = hashlib.sha256()
    for name, p in sorted(named_params, key=lambda t: t[0]):
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[::max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def schedule(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """lr factor per step: linear warm-up, then linear or half-cosine decay to 0, or constant
    (the schedules of transformers.get_scheduler)."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        done = (step - warmup) / max(1, total - warmup)
        if kind == "constant":
            return 1.0
        return max(0.0, 1 - done) if kind == "linear" else max(0.0, 0.5 * (1 + math.cos(math.pi * done)))

    return factor


def resume_key(cfg: TrainConfig, seed: int, part: Any, labels: np.ndarray | None, n_rows: int) -> str:
    """What a checkpoint must match to be resumed: the config, the seed and the training rows."""
    h = hashlib.sha256(repr((C.to_dict(cfg), seed, part, n_rows)).encode())
    if labels is not None:
        h.update(np.asarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- inference from saved weights


def inference_form(adapter: Adapter, model: torch.nn.Module) -> torch.nn.Module:
    """What predicts this pass: the adapter's prediction-only form of `model` where it has one."""
    form = getattr(adapter, "for_inference", None)
    return form(model) if form is not None else model


def weight_dirs(fold_dir: Path) -> list[Path]:
    """The folders holding a fold's final weights: one per seed, or the fold folder itself."""
    seeds = sorted(p for p in Path(fold_dir).glob("seed*") if p.is_dir())
    return seeds or [Path(fold_dir)]


def predictor(adapter: Adapter, models: list[torch.nn.Module], cfg: TrainConfig) -> Callable[[pd.DataFrame], np.ndarray]:
    """predict(rows) -> (n, K): the mean probabilities of `models` (one per seed), on one device,
    at the last stage's input size; no accelerate launch needed."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = [(m if getattr(m, "hf_device_map", None) else m.to(device)).eval() for m in models]
    models = [inference_form(adapter, m) for m in models]
    stage = cfg.stage_list()[-1]
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def predict(rows: pd.DataFrame) -> np.ndarray:
        items = adapter.make_items(rows, stage)
        order = np.argsort([-adapter.cost(it) for it in items], kind="stable")
        out = np.zeros((len(items), adapter.n_classes))
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            for s in range(0, len(order), cfg.eval_batch_size):
                idx = order[s:s + cfg.eval_batch_size]
                batch = {k: v.to(device) for k, v in adapter.collate([items[i] for i in idx]).items()}
                out[idx] = np.mean([adapter.proba(m, batch).float().cpu().numpy() for m in models], axis=0)
        return out

    return predict

"""What a neural family declares to the training engine (`medalist.models.engine`), and how its
saved weights predict again: the engine's config (`TrainConfig`, which a family's Config extends)
with its `Stage`s, the `Adapter` base class every neural family's adapter extends, the pure pieces
of the loop (batch order, lr schedule, resume key, weight fingerprints), and inference from saved
weights without accelerate.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

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


class Adapter(abc.ABC):
    """What a family tells the engine, and the hooks the engine calls on it; the engine calls the
    adapter, never the reverse. An item is one row's data, unpadded; a batch is tensors.

    `loss` and `proba` get the model as the engine runs it — inside its distributed wrapper, whose
    forward is what syncs gradients. Every other method gets the module itself
    (`accelerator.unwrap_model`), so no family unwraps. A method that is not abstract is an optional
    hook: its default is what a family without an opinion wants.
    """

    n_classes: int = 0  # 0: predicts no class (an unsupervised run)

    @abc.abstractmethod
    def build_model(self, device_index: int) -> torch.nn.Module:
        """A fresh model; the engine seeds torch first."""

    @abc.abstractmethod
    def make_items(self, rows: pd.DataFrame, stage: Stage) -> list[dict]:
        """One item per row, at the stage's input size."""

    @abc.abstractmethod
    def cost(self, item: dict) -> float:
        """The grouping key of length-grouped batches: token count, pixel count."""

    @abc.abstractmethod
    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        """A batch of items: what `loss` and `proba` take (the engine adds "labels" for training)."""

    @abc.abstractmethod
    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """{"loss": the loss summed over the batch's rows, …}: the engine divides by a step's rows,
        so splitting a batch keeps the gradient; the other entries are logged. Called once per
        micro-batch, so what must happen once per optimizer step belongs in `on_optimizer_step`."""

    def proba(self, model, batch: dict) -> torch.Tensor:
        """(rows, n_classes) probabilities."""
        raise NotImplementedError(f"{type(self).__name__} predicts no class")

    def save(self, model: torch.nn.Module, state: dict[str, torch.Tensor], out_dir: Path) -> None:
        """The final weights, on the main process only; `state` is the model's full state dict,
        gathered from every process (under DeepSpeed/FSDP no one process holds it all).
        Default: out_dir/model.safetensors."""
        from safetensors.torch import save_file

        from medalist.core.io import atomic_path

        with atomic_path(Path(out_dir) / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))

    def lr_scale(self, name: str) -> float:
        """The learning-rate factor of the parameter `name` (e.g. layer-wise decay)."""
        return 1.0

    def info(self, model: torch.nn.Module, when: Literal["init", "end"]) -> dict:
        """Facts for FoldResult.info, after building and after training."""
        return {}

    def on_train_mode(self, model: torch.nn.Module) -> None:
        """Called each time the engine puts the model in training mode (every epoch, as validation
        left it in eval mode): the parts a family keeps in eval mode while training. Eval mode
        has no exceptions, so it has no hook."""

    def on_optimizer_step(self, model: torch.nn.Module) -> None:
        """Called once after each optimizer step — after all of its gradient-accumulation and
        out-of-memory micro-batches — so what it does (a weight average) does not depend on
        how a step's batch was split."""

    def for_inference(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """A prediction-only form of `model` that `proba` then gets, built once a prediction pass;
        None: `proba` gets the model as trained."""
        return None


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


def inference_form(adapter: Adapter, module: torch.nn.Module,
                   running: torch.nn.Module | None = None) -> torch.nn.Module:
    """What predicts this pass: the adapter's prediction-only form of `module` where it has one,
    else `running` (the model as the engine runs it, in its distributed wrapper) or `module`."""
    form = adapter.for_inference(module)
    if form is not None:
        return form
    return module if running is None else running


def weight_dirs(fold_dir: Path) -> list[Path]:
    """The folders holding a fold's final weights: one per seed, or the fold folder itself."""
    seeds = sorted(p for p in Path(fold_dir).glob("seed*") if p.is_dir())
    return seeds or [Path(fold_dir)]


def predictor(adapter: Adapter, models: list[torch.nn.Module], cfg: TrainConfig) -> Callable[[pd.DataFrame], np.ndarray]:
    """predict(rows) -> (n, K): the mean probabilities of `models` (one per seed), on one device,
    at the last stage's input size, in batches of similar length; no accelerate launch needed.

    Precision: the one the run's training-time predictions (its oof.csv and test.csv) were made in,
    so saved weights give the fold's own probabilities back — a code competition's rerun compares
    them within 1e-4. That is bf16 autocast on CUDA where supported, and on a CPU that computes bf16
    natively (AVX512-BF16, AMX) for a config with `cpu_bf16_training` (the minilm configs: the
    demo's minilm OOF and test.csv bit for bit; MiniLM 1.3–2.9× fp32's texts/s on math-subjects
    test texts, 2 cores from heavily shared to quiet; `make bench`); fp32 otherwise (bf16 is emulated without those flags). A family with a
    prediction form of its own (`Adapter.for_inference`: images) picks its CPU precision there
    (`cpu_bf16_inference`).
    `MEDALIST_CPU_INFERENCE=fp32` keeps a CPU in fp32 whatever the config (its probabilities then
    differ from the training-time ones by bf16 rounding: up to 2e-3 on the demo's minilm); the
    default, `auto`, is the above. Training never goes through here.
    """
    import os

    from medalist.core.config import UserError
    from medalist.models import inference

    knob = os.environ.get("MEDALIST_CPU_INFERENCE", "auto")
    if knob not in ("auto", "fp32"):
        raise UserError(f"MEDALIST_CPU_INFERENCE={knob!r}: use auto (the run's training precision) or fp32")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = [(m if getattr(m, "hf_device_map", None) else m.to(device)).eval() for m in models]
    forms = [inference_form(adapter, m) for m in models]
    own_form = any(f is not m for f, m in zip(forms, models))
    use_bf16 = inference.bf16_enabled(device, cfg.cpu_bf16_training and knob == "auto" and not own_form)
    models = forms
    stage = cfg.stage_list()[-1]

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

    predict.precision = "bf16" if use_bf16 else "fp32"
    return predict

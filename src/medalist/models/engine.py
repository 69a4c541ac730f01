"""The one accelerate training engine every neural family uses, through an `Adapter` (the base
class, with the config and stages, in `medalist.models.training`): the engine calls the adapter's
hooks, with the model out of its distributed wrapper; an adapter never drives the loop.

Two modes: `fit_fold` (k-fold: for each of `n_seeds` seeds a fresh model trains on the fold's rows,
then predicts validation and test; the fold's probabilities are the mean over seeds) and
`fit_unsupervised` (one run over unlabelled rows — masked-LM pretraining, an autoencoder — with no
folds and no predictions). Training runs through `stages` (each its own trainable parameters,
learning rate, epochs and input size). The engine owns what is the same for every family:
length-grouped batches (by the adapter's per-item cost) in an order that is a pure function of
(seed, epoch), so a run killed mid-way resumes from its last epoch checkpoint and ends with the
predictions an uninterrupted run makes; out-of-memory halving (half batches, twice the accumulation,
the same optimizer steps and per-step hooks: the same model); TensorBoard; bf16 wherever CUDA
supports it, and on a CPU that computes bf16 natively where the config asks (`cpu_bf16_training`); gathering across processes; best-epoch selection and early stopping (marked optimistic).

Files under a run's out_dir: the adapter's final weights (one seed) or seed<s>/ per seed (+ result.npz);
epoch checkpoints in ckpt/ (`medalist.models.checkpoints`), removed once the seed is done. TensorBoard events in the log_dir it is given.
Test hook: MEDALIST_INJECT_OOM=1 raises one fake CUDA out-of-memory error on a run's first step.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate.logging import get_logger

from medalist.core.config import UserError
from medalist.core.io import atomic_path
from medalist.core.metrics import better, score
from medalist.models import FoldData, FoldResult
from medalist.models.checkpoints import Checkpoints, Progress
from medalist.models.training import (Adapter, Stage, TrainConfig, epoch_batches, fingerprint, inference_form,
                                      resume_key, schedule, shard)

log = get_logger(__name__)


# ---------------------------------------------------------------- helpers


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time, so progress lines go where print's would."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def mixed_precision(cpu_bf16: bool) -> str:
    """The run's accelerate mixed precision: the launch config's when it sets one; else bf16 wherever
    CUDA supports it, and on a CPU with native bf16 (AVX512-BF16, AMX) when `cpu_bf16` asks for it."""
    from medalist.models import inference

    mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if mp != "no":
        return mp
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_bf16 and inference.cpu_bf16_native() else "no"


def _accelerator(project_dir: Path, log_dir: Path | None, cpu_bf16: bool = False):
    """An Accelerator for one run, in `mixed_precision(cpu_bf16)`."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    mp = mixed_precision(cpu_bf16)
    # total_limit 2: accelerate deletes the oldest before writing the next, so a kill mid-save
    # still leaves the previous complete checkpoint
    project = ProjectConfiguration(project_dir=str(project_dir), automatic_checkpoint_naming=True, total_limit=2,
                                   logging_dir=str(log_dir.parent) if log_dir else None)
    acc = Accelerator(mixed_precision=mp, project_config=project, log_with="tensorboard" if log_dir else None)
    rotation = logging.getLogger("accelerate.accelerator")
    if not rotation.filters:  # total_limit's deletions are routine, not warnings
        rotation.addFilter(lambda r: "to make room for new checkpoint" not in r.getMessage())
    ours = logging.getLogger("medalist")
    if not ours.handlers:
        ours.addHandler(_Stdout())
        ours.setLevel(logging.INFO)
        ours.propagate = False
    return acc


def _device_name(acc) -> str:
    if acc.device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(acc.device)}) x{acc.num_processes}"
    return acc.device.type if acc.num_processes == 1 else f"{acc.device.type} x{acc.num_processes}"


# ---------------------------------------------------------------- one seed of one run


class _Run:
    """A fresh model trained through every stage, with epoch checkpoints; then val/test predictions."""

    def __init__(self, adapter: Adapter, cfg: TrainConfig, seed: int, out_dir: Path, log_dir: Path | None,
                 key: str, name: str, train: pd.DataFrame, labels: np.ndarray | None = None,
                 val: pd.DataFrame | None = None, val_labels: np.ndarray | None = None,
                 test: pd.DataFrame | None = None, metric: str | None = None):
        self.adapter, self.cfg, self.seed, self.out_dir, self.log_dir = adapter, cfg, seed, Path(out_dir), log_dir
        self.name, self.train, self.labels, self.val, self.val_labels, self.test, self.metric = (
            name, train, labels, val, val_labels, test, metric)
        self.stages = cfg.stage_list()
        self.acc = _accelerator(self.out_dir / "ckpt", log_dir, cfg.cpu_bf16_training)
        self.key = key
        self.progress = Progress(key=key)
        self.inject_oom = os.environ.get("MEDALIST_INJECT_OOM") == "1"
        self.model = None
        self._items: dict[Any, tuple] = {}

    # -- model and stages
    def build(self) -> None:
        from accelerate.utils import set_seed

        acc = self.acc
        if acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(acc.device)
        with acc.main_process_first():
            set_seed(self.seed)  # the new head's initialisation
            model = self.adapter.build_model(acc.local_process_index)
        if not getattr(model, "hf_device_map", None):  # a 4-bit model is placed by from_pretrained
            model = model.to(acc.device)  # fused AdamW wants its parameters on the device
        # frozen by the adapter (a LoRA base): never trained, so checkpoints leave them out
        self.frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        self.frozen_before = fingerprint((n, p) for n, p in model.named_parameters() if n in self.frozen)
        self.init_info = self.adapter.info(model, "init")
        self.model = model
        self.ckpts = Checkpoints(acc, self.frozen)

    @property
    def module(self) -> torch.nn.Module:
        """The model out of its distributed wrapper: what the adapter's hooks get."""
        return self.acc.unwrap_model(self.model)

    def _at(self, stage: Stage) -> str:
        return self.name if len(self.stages) == 1 else f"{self.name} stage {stage.name}"

    def items(self, stage: Stage) -> tuple:
        """(train items, their costs, val items, test items) at this stage's input size."""
        if stage.input_size not in self._items:
            make = self.adapter.make_items
            with self.acc.main_process_first():  # tokenisers and caches: one process writes first
                tr = make(self.train, stage)
                ev = [None if r is None else make(r, stage) for r in (self.val, self.test)]
            self._items[stage.input_size] = (tr, np.array([self.adapter.cost(it) for it in tr], float), *ev)
        return self._items[stage.input_size]

    def setup_stage(self, i: int) -> None:
        acc, cfg, stage = self.acc, self.cfg, self.stages[i]
        model = acc.unwrap_model(self.model, keep_fp32_wrapper=False)
        acc.free_memory()  # drop the previous stage's prepared objects before preparing anew
        n_on = 0
        for n, p in model.named_parameters():
            p.requires_grad = n not in self.frozen and (not stage.trainable or any(
                re.search(r, n) for r in stage.trainable))
            n_on += p.numel() if p.requires_grad else 0
        if not n_on:
            raise UserError(f"stage '{stage.name}': trainable {list(stage.trainable)} matches no parameter")
        self.trainable = n_on
        self.train_items, self.costs, val_items, test_items = self.items(stage)
        optimizer = self._optimizer(model, stage.lr)
        n_batches = math.ceil(len(self.train_items) / (cfg.batch_size * acc.num_processes))
        # accelerate steps a prepared scheduler once per process per optimizer step
        total = math.ceil(n_batches / cfg.grad_accum) * stage.epochs * acc.num_processes
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, schedule(cfg.scheduler, round(cfg.warmup_ratio * total), total))
        self.model, self.optimizer, self.scheduler, self.val_loader, self.test_loader = acc.prepare(
            model, optimizer, scheduler, self._eval_loader(val_items), self._eval_loader(test_items))

    def _optimizer(self, model, lr: float):
        """AdamW: no decay on biases and norms; the adapter may scale lr per parameter."""
        groups: dict[tuple[float, float], list] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                wd = 0.0 if p.ndim < 2 or "norm" in name.lower() else self.cfg.weight_decay
                groups.setdefault((wd, self.adapter.lr_scale(name)), []).append(p)
        params = [{"params": ps, "weight_decay": wd, "lr": lr * s} for (wd, s), ps in sorted(groups.items())]
        if self.cfg.fused_adamw:
            try:
                return torch.optim.AdamW(params, lr=lr, fused=True)
            except (RuntimeError, ValueError) as e:
                log.warning(f"fused AdamW unavailable here ({e}); using the default AdamW")
        return torch.optim.AdamW(params, lr=lr)

    def _eval_loader(self, items: list[dict] | None):
        if items is None:
            return None
        order = np.argsort([-self.adapter.cost(it) for it in items], kind="stable").tolist()  # an OOM shows at once

        def collate(idx: list[int]) -> dict:
            return {**self.adapter.collate([items[i] for i in idx]), "idx": torch.tensor(idx)}

        return torch.utils.data.DataLoader(order, batch_size=self.cfg.eval_batch_size, collate_fn=collate)

    # -- training
    def _batch(self, items: list[dict], rows: np.ndarray) -> dict[str, torch.Tensor]:
        batch = self.adapter.collate([items[j] for j in rows])
        if self.labels is not None:
            batch["labels"] = torch.as_tensor(np.asarray(self.labels)[rows], dtype=torch.long)
        return {k: v.to(self.acc.device) for k, v in batch.items()}

    def _step(self, window: list[np.ndarray]) -> dict[str, float]:
        """One optimizer step over a window of batches, each split into 2^halvings micro-batches;
        the adapter's per-step hook runs once, after it, however the window was split."""
        from accelerate.utils import DistributedType

        acc, model = self.acc, self.model
        micro = [m for b in window for m in np.array_split(b, min(2 ** self.progress.halvings, len(b)))]
        n_rows = sum(len(m) for m in micro)
        totals: dict[str, float] = {}
        for i, rows in enumerate(micro):
            last = i == len(micro) - 1
            acc.sync_gradients = last  # DeepSpeed reads this in backward
            skip_sync = not last and acc.distributed_type != DistributedType.DEEPSPEED
            with acc.no_sync(model) if skip_sync else contextlib.nullcontext():
                batch = self._batch(self.train_items, rows)
                if self.inject_oom:
                    self.inject_oom = False
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by MEDALIST_INJECT_OOM=1)")
                parts = self.adapter.loss(model, batch)
                acc.backward(parts["loss"] / n_rows)  # row-weighted: splitting a batch keeps the gradient
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / n_rows
        acc.sync_gradients = True
        if self.cfg.max_grad_norm:
            acc.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.adapter.on_optimizer_step(self.module)
        return totals

    def _on_oom(self, e: BaseException, batch_rows: int) -> None:
        acc, cfg, p = self.acc, self.cfg, self.progress
        self.optimizer.zero_grad(set_to_none=True)
        acc.sync_gradients = True
        if batch_rows <= 1:
            raise e
        p.halvings += 1
        p.oom_events += 1
        parts = 2 ** p.halvings
        log.warning(f"{self.name}: out of memory at batch {batch_rows}; retrying the step with batch "
                    f"{max(1, cfg.batch_size // parts)} x grad_accum {cfg.grad_accum * parts}",
                    main_process_only=False)
        _free()

    def train_epoch(self, stage: Stage) -> float:
        from accelerate.utils import set_seed
        from medalist.core.progress import progress

        acc, cfg, p = self.acc, self.cfg, self.progress
        set_seed(self.seed * 1000 + p.epoch, device_specific=True)  # dropout: a function of (seed, epoch) too
        glob = epoch_batches(self.costs, cfg.batch_size * acc.num_processes, self.seed, p.epoch)
        mine = [shard(b, acc.process_index, acc.num_processes) for b in glob]
        windows = [mine[i:i + cfg.grad_accum] for i in range(0, len(mine), cfg.grad_accum)]
        self.model.train()
        self.adapter.on_train_mode(self.module)
        bar = progress(total=len(windows), desc=f"{self._at(stage)} epoch {p.stage_epoch + 1}/{stage.epochs}",
                       disable=not acc.is_local_main_process, unit="step")
        t0, seen, losses = time.time(), 0, []
        for window in windows:
            while True:
                try:
                    parts = self._step(window)
                    break
                except Exception as e:  # only out-of-memory is handled; anything else re-raised
                    if not _is_oom(e):
                        raise
                    self._on_oom(e, max(1, len(window[0]) // 2 ** p.halvings))
            seen += sum(len(b) for b in window) * acc.num_processes
            losses.append(parts["loss"])
            p.step += 1
            bar.set_postfix(loss=f"{parts['loss']:.4f}", samples_s=f"{seen / max(time.time() - t0, 1e-9):.1f}")
            bar.update()
            acc.log({**{f"train/{k}": v for k, v in parts.items()}, "train/lr": self.scheduler.get_last_lr()[0]},
                    step=p.step)
        bar.close()
        seconds = time.time() - t0
        p.samples += seen
        p.train_seconds += seconds
        acc.log({"train/samples_per_s": seen / max(seconds, 1e-9), "train/epoch_loss": float(np.mean(losses))},
                step=p.step)
        return float(np.mean(losses))

    def predict(self, loader, n: int) -> np.ndarray:
        """Probabilities in the original row order, gathered from every process, each row exactly once."""
        out, seen = np.zeros((n, self.adapter.n_classes)), np.zeros(n, dtype=int)
        self.model.eval()
        model = inference_form(self.adapter, self.module, self.model)
        with torch.no_grad():
            for batch in loader:
                idx = batch.pop("idx")
                proba, idx = self.acc.gather_for_metrics((self.adapter.proba(model, batch).float(), idx))
                idx = idx.cpu().numpy()
                out[idx] = proba.cpu().numpy()
                np.add.at(seen, idx, 1)
        if (seen != 1).any():
            raise RuntimeError(f"{self.name}: gathered {np.sum(seen == 0)} rows never and {np.sum(seen > 1)} twice")
        return out

    def _epoch_done(self, stage: Stage, loss: float) -> np.ndarray | None:
        cfg, p, metric = self.cfg, self.progress, self.metric
        p.epoch += 1
        p.stage_epoch += 1
        row: dict[str, Any] = {"epoch": p.epoch, "stage": stage.name, "loss": loss}
        val_proba = None
        if self.val is not None:
            val_proba = self.predict(self.val_loader, len(self.val))
            row[metric] = s = score(metric, self.val_labels, val_proba)
            self.acc.log({f"val/{metric}": s}, step=p.step)  # x-axis: optimizer steps
            if p.best_score is None or better(metric, s, p.best_score):
                p.best_score, p.best_epoch, p.bad_epochs = s, p.epoch, 0
                if cfg.select_best_epoch:
                    self.ckpts.save_best(self.model)
            else:
                p.bad_epochs += 1
            p.stopped = bool(cfg.early_stopping_patience and p.bad_epochs >= cfg.early_stopping_patience)
        p.history.append(row)
        log.info(f"{self._at(stage)} epoch {p.stage_epoch}/{stage.epochs}: "
                 + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)))
        self.ckpts.save(p)
        if p.stopped:
            log.info(f"{self.name}: early stop after epoch {p.epoch} (best epoch {p.best_epoch})")
        return val_proba

    def run(self) -> tuple[np.ndarray | None, np.ndarray | None, dict]:
        acc, cfg = self.acc, self.cfg
        self.build()
        found = self.ckpts.latest(self.key)
        self.progress, start = found or (self.progress, None)
        p = self.progress
        resumed = p.epoch if start is not None else None
        if self.log_dir is not None:  # a resumed run drops the events the killed one wrote after its checkpoint
            acc.init_trackers(self.log_dir.name, init_kwargs={
                "tensorboard": {"purge_step": p.step + 1 if start is not None else None}})
        val_proba = None
        for i in range(p.stage, len(self.stages)):
            if i != p.stage:
                p.stage, p.stage_epoch, p.bad_epochs, p.stopped = i, 0, 0, False
            self.setup_stage(i)
            if start is not None:
                self.ckpts.load(start)
                log.info(f"{self.name}: resumed after epoch {p.epoch} from {start}")
                start = None
            while p.stage_epoch < self.stages[i].epochs and not p.stopped:
                loss = self.train_epoch(self.stages[i])
                val_proba = self._epoch_done(self.stages[i], loss)
        if self.val is not None and cfg.select_best_epoch and p.best_epoch != p.epoch:
            self.ckpts.load_best(self.model)
            val_proba = None
        if self.val is not None and val_proba is None:
            val_proba = self.predict(self.val_loader, len(self.val))
        t0 = time.time()
        test_proba = self.predict(self.test_loader, len(self.test)) if self.test is not None else None
        predict_s = time.time() - t0
        acc.wait_for_everyone()
        unwrapped = self.module
        state = acc.get_state_dict(self.model)  # every process takes part (gathered under DeepSpeed/FSDP)
        if acc.is_main_process:
            self.adapter.save(unwrapped, state, self.out_dir)
        acc.wait_for_everyone()
        info = {
            "seed": self.seed,
            "train_samples_per_s": p.samples / max(p.train_seconds, 1e-9),
            "predict_seconds": predict_s,
            "peak_gpu_mb": (round(torch.cuda.max_memory_allocated(acc.device) / 2**20, 1)
                            if acc.device.type == "cuda" else 0.0),
            "device": _device_name(acc),
            "mixed_precision": str(acc.mixed_precision),
            "stages": [s.name for s in self.stages],
            "epochs_run": p.epoch,
            "optimizer_steps": p.step,
            "best_epoch": p.best_epoch,
            "optimistic": bool(cfg.select_best_epoch or cfg.early_stopping_patience),
            "history": p.history,
            "resumed_after_epoch": resumed,
            "oom_events": p.oom_events,
            "batch_size": max(1, cfg.batch_size // 2 ** p.halvings),
            "grad_accum": cfg.grad_accum * 2 ** p.halvings,
            "trainable_params": self.trainable,
            "frozen_fingerprint_before": self.frozen_before,
            "frozen_fingerprint_after": fingerprint((n, q) for n, q in unwrapped.named_parameters()
                                                    if n in self.frozen),
            **self.init_info, **self.adapter.info(unwrapped, "end"),
        }
        for tracker in acc.trackers:  # not end_training(): that also ends the process group the next fold needs
            tracker.finish()
        self.ckpts.remove()
        acc.free_memory()
        self.model = self.optimizer = self.scheduler = self.val_loader = self.test_loader = None
        _free()
        return val_proba, test_proba, info


# ---------------------------------------------------------------- the two modes


def fit_fold(adapter: Adapter, cfg: TrainConfig, fold: FoldData, out_dir: Path) -> FoldResult:
    """Train `n_seeds` fresh models on fold.train; the fold's probabilities are their mean.
    One seed saves its weights in out_dir, several in out_dir/seed<s>/ (each kept once done, so a
    killed fold does not retrain finished seeds)."""
    from accelerate import PartialState

    out_dir = Path(out_dir)
    seeds = [cfg.seed + i for i in range(cfg.n_seeds)]
    runs = []
    for seed in seeds:
        where, log_dir = out_dir, fold.log_dir
        if len(seeds) > 1:
            where, log_dir = out_dir / f"seed{seed}", (fold.log_dir / f"seed{seed}" if fold.log_dir else None)
        key = resume_key(cfg, seed, fold.fold, fold.train_labels, len(fold.train))
        done = where / "result.npz"
        if len(seeds) > 1 and done.exists() and str(np.load(done)["key"]) == key:
            saved = np.load(done)
            runs.append((saved["val"], saved["test"], json.loads(str(saved["info"]))))
            continue
        runs.append(_Run(adapter, cfg, seed, where, log_dir, key, f"fold {fold.fold}" + (
            f" seed {seed}" if len(seeds) > 1 else ""), fold.train, fold.train_labels, fold.val, fold.val_labels,
            fold.test, fold.metric).run())
        if len(seeds) > 1 and PartialState().is_main_process:
            with atomic_path(done) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, val=runs[-1][0], test=runs[-1][1], key=key, info=json.dumps(runs[-1][2]))
    if len(runs) == 1:
        return FoldResult(*runs[0])
    scores = [score(fold.metric, fold.val_labels, v) for v, _, _ in runs]
    info = {**runs[-1][2], "seeds": seeds, "seed_scores": scores, "per_seed": [i for _, _, i in runs],
            "predict_seconds": sum(i["predict_seconds"] for _, _, i in runs),
            "train_samples_per_s": float(np.mean([i["train_samples_per_s"] for _, _, i in runs]))}
    return FoldResult(np.mean([v for v, _, _ in runs], axis=0), np.mean([t for _, t, _ in runs], axis=0), info)


def fit_unsupervised(adapter: Adapter, cfg: TrainConfig, rows: pd.DataFrame, out_dir: Path,
                     log_dir: Path | None = None) -> dict:
    """One run over unlabelled rows (the adapter's loss sees no "labels"); saves the adapter's
    weights in out_dir and returns the run's info (loss history, steps, resume, OOM)."""
    key = resume_key(cfg, cfg.seed, "unsupervised", None, len(rows))
    return _Run(adapter, cfg, cfg.seed, Path(out_dir), log_dir, key, "pretrain", rows).run()[2]

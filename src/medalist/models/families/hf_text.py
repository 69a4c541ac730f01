"""Fine-tuned transformers over the `text` input, as an adapter of the training engine: `encoder`
(a BERT-like backbone, every weight trained) and `decoder_lora` (a decoder LLM with a LoRA adapter
and a classification head).

Runs under `accelerate launch --config_file accelerate_config.yaml -m medalist.stages.train …`; the
fold loop, resume, out-of-memory halving, TensorBoard and bf16 are `medalist.models.engine`'s. Items
are token ids (tokenised without padding, at the stage's input size, default max_length), grouped
by token count and padded per batch.

Fold weights: fold<k>/ (fold<k>/seed<s>/ with n_seeds > 1) — save_pretrained of model + tokenizer
(encoder) or of the LoRA adapter with the head (decoder_lora) + tokenizer. A mid-fold checkpoint
folder (fold<k>/ckpt/checkpoints/checkpoint_<e>/) loads too.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch

from medalist.core.config import AtLeastOne, Range, UserError
from medalist.models import FoldData, FoldResult, texts
from medalist.models import checkpoints, engine, training
from medalist.models.backbones import pretrained_name, resolve


@dataclasses.dataclass(frozen=True)
class Config(training.TrainConfig):
    family: Literal["encoder", "decoder_lora"] = "encoder"
    backbone: str = "minilm"  # hub name, local folder, or a packaged alias (medalist.models.backbones)
    max_length: Annotated[int, AtLeastOne] = 128  # most math questions fit; attention cost grows with the square
    label_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.0
    class_weighting: Literal["none", "balanced"] = "none"  # balanced: loss weight n / (K · n_c)
    layerwise_lr_decay: Annotated[float, Range(gt=0, le=1)] | None = None  # lr · decay^depth-from-top; null = one lr
    gradient_checkpointing: bool = False  # trade ~30% time for activation memory
    lora_r: Annotated[int, AtLeastOne] = 16
    lora_alpha: Annotated[int, AtLeastOne] = 32
    lora_dropout: Annotated[float, Range(ge=0, lt=1)] = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    load_in_4bit: bool = False  # QLoRA; needs CUDA + bitsandbytes, otherwise ignored with a note

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.family == "encoder" and self.load_in_4bit:
            raise UserError(f"{where}: load_in_4bit is for family decoder_lora")
        if self.family == "decoder_lora" and not self.lora_target_modules:
            raise UserError(f"{where}: lora_target_modules is empty")


# ---------------------------------------------------------------- loading


def load_tokenizer(cfg: Config, path: str | Path | None = None):
    """The backbone's tokenizer; decoders without a pad token pad with their end-of-text token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path or resolve(cfg.backbone))
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UserError(f"backbone '{cfg.backbone}': tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


_NOTED: set[str] = set()


def _want_4bit(cfg: Config) -> bool:
    if not cfg.load_in_4bit:
        return False
    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
        return True
    msg = "load_in_4bit ignored: it needs CUDA and bitsandbytes; training the LoRA in full precision"
    if msg not in _NOTED:
        _NOTED.add(msg)
        print(f"note: {msg}", flush=True)
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
        return AutoModelForSequenceClassification.from_pretrained(resolve(cfg.backbone), **kwargs)
    except OSError as e:
        raise UserError(f"backbone '{cfg.backbone}' cannot be loaded ({str(e).splitlines()[0]}); "
                        f"a hub model needs the internet once, or give a local folder") from None


def build_model(cfg: Config, n_classes: int, pad_token_id: int, device_index: int | None = None):
    """The model a fold trains: the full encoder, or the decoder wrapped with a LoRA adapter."""
    model = _base_model(cfg, n_classes, device_index)
    model.config.pad_token_id = pad_token_id
    if cfg.family == "decoder_lora":
        from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

        model.config.use_cache = False
        if getattr(model, "is_loaded_in_4bit", False):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                          lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules),
                          modules_to_save=[n for n in ("score", "classifier") if hasattr(model, n)])
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


def backbone_fingerprint(model) -> str:
    """Fingerprint of the pretrained part of a (possibly LoRA-wrapped) classification model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return training.fingerprint((n.replace(".base_layer", ""), p) for n, p in inner.base_model.named_parameters()
                              if "lora_" not in n)


# ---------------------------------------------------------------- the adapter


def encode(tok, texts: list[str], max_length: int) -> list[dict[str, list[int]]]:
    """Tokenise without padding: each batch is padded to its own longest row later."""
    enc = tok(list(texts), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


class TextAdapter(training.Adapter):
    """Token ids in, AutoModelForSequenceClassification logits out; cross-entropy as the loss."""

    def __init__(self, cfg: Config, n_classes: int, train_labels: np.ndarray | None = None, tok=None):
        from transformers import DataCollatorWithPadding

        self.cfg, self.n_classes = cfg, n_classes
        self.tok = tok or load_tokenizer(cfg)
        multiple = 8 if torch.cuda.is_available() else None  # tensor cores like multiples of 8
        self._pad = DataCollatorWithPadding(self.tok, pad_to_multiple_of=multiple)
        weights = None
        if cfg.class_weighting == "balanced" and train_labels is not None:
            counts = np.bincount(np.asarray(train_labels, dtype=int), minlength=n_classes).astype(float)
            weights = torch.tensor(np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 1.0),
                                   dtype=torch.float32)
        self._ce = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing, reduction="sum")
        self._n_layers = 0

    def build_model(self, device_index: int):
        model = build_model(self.cfg, self.n_classes, self.tok.pad_token_id, device_index)
        self._n_layers = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0)
        return model

    def make_items(self, rows: pd.DataFrame, stage: training.Stage) -> list[dict]:
        return encode(self.tok, texts(rows), stage.input_size or self.cfg.max_length)

    def cost(self, item: dict) -> float:
        return len(item["input_ids"])

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return dict(self._pad(items))

    def logits(self, model, batch: dict) -> torch.Tensor:
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.logits(model, batch)
        return {"loss": self._ce.to(logits.device)(logits, batch["labels"])}

    def proba(self, model, batch: dict) -> torch.Tensor:
        return torch.softmax(self.logits(model, batch), dim=-1)

    def lr_scale(self, name: str) -> float:
        """Layer-wise lr decay: lr · decay^(layers above this one); 1 without it."""
        if not self.cfg.layerwise_lr_decay:
            return 1.0
        m = re.search(r"\.layers?\.(\d+)\.", name)  # 0 embeddings, 1…L layers, L+1 pooler/head
        depth = int(m.group(1)) + 1 if m else (0 if "embed" in name else self._n_layers + 1)
        return self.cfg.layerwise_lr_decay ** (self._n_layers + 1 - depth)

    def info(self, model, when: str) -> dict:
        return {"init_fingerprint": backbone_fingerprint(model)} if when == "init" else {}

    def save(self, model, state: dict[str, torch.Tensor], out_dir: Path) -> None:
        # LoRA saves its adapter and head; a full model saves the gathered state dict
        model.save_pretrained(out_dir, **({} if self.cfg.family == "decoder_lora" else {"state_dict": state}))
        self.tok.save_pretrained(out_dir)


def fit_fold(cfg: Config, fold: FoldData, out_dir: Path) -> FoldResult:
    """Train fresh models on fold.train (one per seed), save them in out_dir, return val/test probabilities."""
    if fold.data_dir is not None and pretrained_name(cfg.backbone) is not None:  # made for this competition
        cfg = dataclasses.replace(cfg, backbone=resolve(cfg.backbone, Path(fold.data_dir).name))
    return engine.fit_fold(TextAdapter(cfg, fold.n_classes, fold.train_labels), cfg, fold, Path(out_dir))


# ---------------------------------------------------------------- inference from saved weights


def _load_saved(cfg: Config, weights: Path, n_classes: int):
    """(model, tokenizer) from a saved folder, or from an epoch checkpoint (backbone + its weights)."""
    from transformers import AutoModelForSequenceClassification

    if checkpoints.is_checkpoint(weights):
        tok = load_tokenizer(cfg)
        return checkpoints.load_weights(build_model(cfg, n_classes, tok.pad_token_id), weights), tok
    tok = load_tokenizer(cfg, weights)
    if cfg.family == "decoder_lora":
        from peft import PeftModel

        base = _base_model(cfg, n_classes)
        base.config.pad_token_id = tok.pad_token_id
        return PeftModel.from_pretrained(base, str(weights)), tok
    return AutoModelForSequenceClassification.from_pretrained(str(weights)), tok


def load_predictor(cfg: Config, fold_dir: Path, n_classes: int):
    """predict(rows) -> (n, K) softmax probabilities (mean over seeds) from saved weights."""
    dirs = training.weight_dirs(Path(fold_dir))
    for d in dirs:
        if not ((d / "config.json").exists() or (d / "adapter_config.json").exists() or checkpoints.is_checkpoint(d)):
            raise UserError(f"no saved weights in {d}: train the run first")
    loaded = [_load_saved(cfg, d, n_classes) for d in dirs]
    return training.predictor(TextAdapter(cfg, n_classes, tok=loaded[0][1]), [m for m, _ in loaded], cfg)

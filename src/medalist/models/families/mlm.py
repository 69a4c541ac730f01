"""Continued masked-language-model training of a text backbone on unlabelled texts, as an
adapter of the training engine's unsupervised mode (`engine.fit_unsupervised`: resume after a
kill, out-of-memory halving, TensorBoard loss, bf16 on CUDA, `accelerate launch`).

Not a run family (it predicts no class): `make pretrain` (medalist.stages.pretrain) runs it with
a config from configs/pretrain/<name>.yaml, and a model config then trains on the result as
`backbone: pretrain:<name>` (medalist.models.backbones). Items are token ids without padding,
grouped by length; each batch is padded and masked BERT-style (mlm_probability of the tokens:
80% [MASK], 10% a random token, 10% kept), the mask drawn from torch's generator, which the
engine seeds per (seed, epoch) — so a resumed run masks as an uninterrupted one would.

The language-model head scores only the masked positions (a pre-hook hands it their hidden
states alone): a full-vocabulary projection of every token was most of a CPU step's time.

Saved (save_pretrained): the masked-LM model — its encoder loads into
AutoModelForSequenceClassification as any backbone does, and its head lets a later pretraining
continue — and the tokenizer.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
import torch

from medalist.core.config import AtLeastOne, Positive, Range, UserError
from medalist.models import texts
from medalist.models import engine, training


@dataclasses.dataclass(frozen=True)
class Config(training.TrainConfig):
    family: Literal["mlm"] = "mlm"
    backbone: str = "minilm"  # hub name, local folder, packaged alias or pretrain:<name> (medalist.models.backbones)
    max_length: Annotated[int, AtLeastOne] = 128  # as the fine-tuning: the positions it will read
    mlm_probability: Annotated[float, Range(gt=0, lt=1)] = 0.15  # BERT's share of masked tokens
    lr: Annotated[float, Positive] = 5e-5  # continued pretraining moves the weights less than a fine-tune
    epochs: Annotated[int, AtLeastOne] = 3  # a competition's texts are few: several passes

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.inputs != ("text",):
            raise UserError(f"{where}: masked-LM pretraining reads the text input only; remove inputs")
        if self.n_seeds != 1:
            raise UserError(f"{where}: n_seeds: a pretraining makes one backbone; give one seed")
        if self.select_best_epoch or self.early_stopping_patience:
            raise UserError(f"{where}: select_best_epoch / early_stopping_patience need validation rows, "
                            "which a pretraining has not")


def untie(model):
    """Every parameter its own copy: the engine's epoch checkpoints (safetensors) refuse tensors
    that share memory, and a masked LM ties its output layer to the input embeddings. The output
    layer starts as the embeddings' copy and trains on its own; the encoder, the part a
    fine-tuning loads, is the same either way."""
    seen: set[int] = set()
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.data_ptr() in seen:
                setattr(module, name, torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
            else:
                seen.add(p.data_ptr())
    model.config.tie_word_embeddings = False  # saved so: a later load keeps them apart too
    return model


def lm_head(model):
    """The language-model head of a transformers masked LM — its one child besides the encoder
    (BERT's `cls`, RoBERTa's `lm_head`) — or None where the head is spread over several modules
    (DistilBERT), which then scores every position."""
    base = model.base_model
    rest = [m for m in model.children() if m is not base]
    return rest[0] if len(rest) == 1 else None


class MaskedLMAdapter(training.Adapter):
    """Token ids in, the masked tokens' cross-entropy out (no class labels)."""

    def __init__(self, cfg: Config, backbone_path: str):
        from transformers import AutoTokenizer, DataCollatorForLanguageModeling

        self.cfg, self.path = cfg, backbone_path
        self.tok = AutoTokenizer.from_pretrained(backbone_path)
        if self.tok.mask_token is None:
            raise UserError(f"backbone '{cfg.backbone}': its tokenizer has no mask token, so it cannot be "
                            "trained as a masked LM (a decoder?)")
        multiple = 8 if torch.cuda.is_available() else None  # tensor cores like multiples of 8
        self._collate = DataCollatorForLanguageModeling(self.tok, mlm_probability=cfg.mlm_probability,
                                                        pad_to_multiple_of=multiple)
        self._masked: torch.Tensor | None = None  # the batch's masked positions, while loss() runs the model

    def build_model(self, device_index: int):
        from transformers import AutoModelForMaskedLM

        try:  # a plain encoder (e.g. the packaged MiniLM) gets a fresh LM head, tied to its embeddings
            model = AutoModelForMaskedLM.from_pretrained(self.path)
        except (OSError, ValueError) as e:
            raise UserError(f"backbone '{self.cfg.backbone}' cannot be loaded as a masked LM "
                            f"({str(e).splitlines()[0]})") from None
        head = lm_head(model)
        if head is not None:  # a hook, not a wrapper: parameter names (stages' `trainable`) and saving stay as they are
            head.register_forward_pre_hook(self._masked_only)
        return untie(model)

    def _masked_only(self, module, args):
        """The head's input cut to the masked positions: (rows, length, hidden) → (masked, hidden)."""
        hidden, mask = args[0], self._masked
        if mask is None or hidden.shape[:2] != mask.shape:
            return None  # called otherwise (no batch of ours): the head sees every position
        return (hidden[mask], *args[1:])

    def make_items(self, rows: pd.DataFrame, stage: training.Stage) -> list[dict]:
        enc = self.tok(texts(rows), truncation=True, max_length=stage.input_size or self.cfg.max_length,
                       return_special_tokens_mask=True)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask") if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(rows))]

    def cost(self, item: dict) -> float:
        return len(item["input_ids"])

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return dict(self._collate([dict(it) for it in items]))  # the collator pops special_tokens_mask

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        masked = labels != -100
        self._masked = masked
        try:
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        finally:
            self._masked = None
        if logits.dim() == 3:  # a model whose head the hook could not reach scored every position
            logits = logits[masked]
        # mean over the masked tokens, times the rows: the engine divides a step's loss by its rows;
        # a batch that drew no mask adds nothing (instead of a 0/0)
        ce = torch.nn.functional.cross_entropy(logits.float(), labels[masked], reduction="sum")
        return {"loss": ce / masked.sum().clamp(min=1) * labels.shape[0]}

    def save(self, model, state: dict[str, torch.Tensor], out_dir: Path) -> None:
        model.save_pretrained(out_dir, state_dict=state)
        self.tok.save_pretrained(out_dir)


def fit(cfg: Config, backbone_path: str, corpus: list[str], out_dir: Path, log_dir: Path | None = None) -> dict:
    """Masked-LM training of the backbone at backbone_path on `corpus`, saved in out_dir; the run's
    info (loss per epoch, steps, resume, out-of-memory events)."""
    return engine.fit_unsupervised(MaskedLMAdapter(cfg, backbone_path), cfg, pd.DataFrame({"text": corpus}),
                                   Path(out_dir), log_dir)

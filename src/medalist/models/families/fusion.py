"""Text and image fine-tuned together (family `fusion`): a transformer encoder over the `text`
input and a timm backbone over the `image` input, trained jointly through the shared engine
(`medalist.models.engine`, so `accelerate launch`, resume, out-of-memory halving, TensorBoard and
bf16 are its), their pooled features fused by a small MLP.

The network (`FusionNet`, parameter names in brackets):
  text   [text.*]        AutoModel of `text_backbone`, mean-pooled over the attention mask
  image  [image.*]       timm `image_backbone` without a classifier (num_classes=0): pooled features
  each projected to `dim` [text_proj.*, image_proj.*] (Linear + LayerNorm, so the two are on one scale)
  a row without a readable photo (image "" or a file that does not decode) takes the learned
  vector [missing_image] in place of its image projection; a dropped text takes [missing_text]
  [text, image, has-photo indicator] → MLP (`hidden`, GELU, `dropout`) [head.*] → logits

Training (the loss is summed over rows, as the engine wants):
  cross-entropy (label smoothing) of the fused logits
  + aux_weight × (cross-entropy of a linear head on each modality's own projection [aux_text.*,
    aux_image.*]; the image one over rows with a photo only), so that neither encoder leans on the other
  modality dropout: each training row loses, with probability `modality_dropout`, its text or its
    image (half each; the text only where the row has a photo) to the missing vector, so the head
    learns to answer from one modality — the case of every photo-less row at test time.
Per-image augmentation of `augment` (flips, affine, colour…; MixUp/CutMix would mix photos but not
their texts, so they are refused). The heads train at `lr`, the backbones at `lr · text_lr_scale`
and `lr · image_lr_scale`. `stages` work as for every engine family: a head-only warm-up is a
stage whose `trainable` matches the heads only (see configs/models/fusion.yaml); a stage's
`input_size` is the image side (the text always uses `max_length`). BatchNorm layers of a frozen
image backbone keep their statistics. The image backbone sees only the photo rows of a batch
(blank pixels would skew BatchNorm statistics).

Fold weights: fold<k>/weights.safetensors (every tensor of the network) + fold<k>/text/ (the
text encoder's config and tokenizer, so reloading needs no backbone download); fold<k>/seed<s>/
each with n_seeds > 1. A mid-fold checkpoint folder (fold<k>/ckpt/checkpoints/checkpoint_<e>/) loads too.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import torch

from medalist.core.config import AtLeastOne, NonNegative, Positive, Range, UserError
from medalist.image import augment as A
from medalist.image import weights as W
from medalist.image.cache import images
from medalist.models import FoldData, FoldResult, checkpoints, engine, texts, training
from medalist.models.backbones import pretrained_name, resolve

WEIGHTS_FILE = "weights.safetensors"
TEXT_DIR = "text"  # the text encoder's config.json and tokenizer, beside the weights
HEADS = r"^(text_proj|image_proj|missing_|head|aux_)"  # every parameter outside the two backbones


@dataclasses.dataclass(frozen=True)
class Config(training.TrainConfig):
    family: Literal["fusion"] = "fusion"
    inputs: tuple[str, ...] = ("text", "image")
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    lr: Annotated[float, Positive] = 1e-3  # the new heads' lr; the backbones' is scaled below
    text_backbone: str = "minilm"  # hub name, local folder, packaged alias or pretrain:<name> (models/backbones.py)
    max_length: Annotated[int, AtLeastOne] = 64  # product titles are short
    image_backbone: str = W.PACKAGED_ARCH  # any timm architecture name
    weights: str = W.PACKAGED  # the image backbone's: packaged | timm | none | a local file
    image_size: Annotated[int, AtLeastOne] = 224  # pixels a side, where a stage names no input_size
    augment: A.Augment = A.Augment()  # per-image only: mixup_alpha / cutmix_alpha must stay 0
    channels_last: bool = True
    dim: Annotated[int, AtLeastOne] = 256  # each modality's projection
    hidden: Annotated[int, AtLeastOne] = 512  # the fusion MLP's hidden layer
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.2  # in the fusion MLP
    aux_weight: Annotated[float, NonNegative] = 0.3  # weight of the per-modality heads' losses; 0 = none
    modality_dropout: Annotated[float, Range(ge=0, lt=1)] = 0.1  # share of training rows losing one modality
    label_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.1
    text_lr_scale: Annotated[float, Range(gt=0, le=10)] = 0.1  # text backbone lr = lr · this
    image_lr_scale: Annotated[float, Range(gt=0, le=10)] = 0.3  # image backbone lr = lr · this

    @property
    def backbone(self) -> str:
        """The text backbone, as `Tokenized` names it: checks and tta measure token lengths with
        it, and train retrains the folds when a `pretrain:<name>` backbone is pretrained anew."""
        return self.text_backbone

    def validate(self, where: str) -> None:
        super().validate(where)
        if sorted(self.inputs) != ["image", "text"]:
            raise UserError(f"{where}: family fusion reads both inputs: inputs: [text, image]")
        W.check_pair(self.image_backbone, self.weights, where)
        if self.augment.mixup_alpha or self.augment.cutmix_alpha:
            raise UserError(f"{where}.augment: MixUp/CutMix would mix photos but not their texts; "
                            "set mixup_alpha and cutmix_alpha to 0 for fusion")


# ---------------------------------------------------------------- the network


def _proj(d_in: int, d_out: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(d_in, d_out), torch.nn.LayerNorm(d_out))


class FusionNet(torch.nn.Module):
    """Tokens + pixels of a batch → {"logits", "text_logits", "image_logits"} (see the module docstring)."""

    def __init__(self, text: torch.nn.Module, image: torch.nn.Module, n_classes: int, cfg: Config, mean, std):
        super().__init__()
        self.text, self.image, self.channels_last = text, image, cfg.channels_last
        d = cfg.dim
        self.text_proj, self.image_proj = _proj(text.config.hidden_size, d), _proj(image.num_features, d)
        self.missing_text = torch.nn.Parameter(torch.randn(d) * 0.02)
        self.missing_image = torch.nn.Parameter(torch.randn(d) * 0.02)
        self.head = torch.nn.Sequential(torch.nn.Dropout(cfg.dropout), torch.nn.Linear(2 * d + 1, cfg.hidden),
                                        torch.nn.GELU(), torch.nn.Dropout(cfg.dropout),
                                        torch.nn.Linear(cfg.hidden, n_classes))
        self.aux_text, self.aux_image = torch.nn.Linear(d, n_classes), torch.nn.Linear(d, n_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)

    def text_features(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state.float()
        m = attention_mask[..., None].float()
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

    def image_features(self, pixels: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """Pooled features; photo-less rows are zeros (replaced later). The backbone runs on the
        photo rows only — on every row where a training batch has fewer than two (BatchNorm
        needs two), or on one row where no row has a photo, so that it is always in the graph."""
        n_ok = int(ok.sum())
        sel = ok if n_ok >= (2 if self.training else 1) else torch.ones_like(ok)
        if not self.training and n_ok == 0:
            sel = torch.arange(len(ok), device=ok.device) == 0
        x = (pixels[sel].float() - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        f = self.image(x).float()
        return f.new_zeros(len(ok), f.shape[1]).index_copy(0, sel.nonzero()[:, 0], f)

    def forward(self, input_ids, attention_mask, pixels, ok, token_type_ids=None,
                modality_dropout: float = 0.0) -> dict[str, torch.Tensor]:
        t = self.text_proj(self.text_features(input_ids, attention_mask, token_type_ids))
        i = self.image_proj(self.image_features(pixels, ok))
        ok = ok.bool()
        has_image, has_text = ok, torch.ones_like(ok)
        if modality_dropout > 0:  # training only: torch's generator, which the engine seeds per (seed, epoch)
            r = torch.rand(len(ok), device=ok.device)
            has_text = ~((r < modality_dropout / 2) & ok)  # a photo-less row keeps its text
            has_image = ok & ~((r >= modality_dropout / 2) & (r < modality_dropout))
        # torch.where keeps both missing vectors in the graph of every batch (DDP wants every parameter used)
        t_in = torch.where(has_text[:, None], t, self.missing_text.to(t.dtype).expand_as(t))
        i_in = torch.where(has_image[:, None], i, self.missing_image.to(i.dtype).expand_as(i))
        fused = torch.cat([t_in, i_in, has_image[:, None].to(t.dtype)], dim=1)
        return {"logits": self.head(fused), "text_logits": self.aux_text(t), "image_logits": self.aux_image(i)}

    def freeze_bn(self) -> None:
        """BatchNorm layers whose weights this stage does not train keep their statistics."""
        for m in self.image.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in m.parameters(recurse=False)):
                m.eval()


def build_net(cfg: Config, n_classes: int, text_source: str | Path, pretrained: bool) -> tuple[FusionNet, int]:
    """(network, image tensors loaded): the text encoder from `text_source` (its weights where
    `pretrained`, its config only otherwise: saved fold weights replace them anyway), the timm
    backbone with its `weights` where `pretrained`."""
    from timm.data import resolve_data_config
    from transformers import AutoConfig, AutoModel

    kwargs = {"add_pooling_layer": False}  # mean pooling: a pooler would be a parameter no loss reaches
    try:
        if pretrained:
            try:
                text = AutoModel.from_pretrained(str(text_source), **kwargs)
            except TypeError:  # an encoder without a pooler to leave out
                text = AutoModel.from_pretrained(str(text_source))
        else:
            config = AutoConfig.from_pretrained(str(text_source))
            try:
                text = AutoModel.from_config(config, **kwargs)
            except TypeError:
                text = AutoModel.from_config(config)
    except OSError as e:
        raise UserError(f"text backbone '{cfg.text_backbone}' cannot be loaded ({str(e).splitlines()[0]}); "
                        "a hub model needs the internet once, or give a local folder") from None
    image, loaded = W.create(cfg.image_backbone, cfg.weights, 0, load=pretrained)
    data = resolve_data_config({}, model=image)
    return FusionNet(text, image, n_classes, cfg, data["mean"], data["std"]), loaded


# ---------------------------------------------------------------- the adapter


class FusionAdapter(training.Adapter):
    """Rows (text + image path) in, fused class probabilities out."""

    def __init__(self, cfg: Config, n_classes: int, text_source: str | Path, tok=None, data_dir: Path | None = None):
        from transformers import AutoTokenizer, DataCollatorWithPadding

        self.cfg, self.n_classes, self.text_source, self.data_dir = cfg, n_classes, str(text_source), data_dir
        self.view: A.View | None = None  # a test-time view of the photos (make tta)
        try:
            self.tok = tok or AutoTokenizer.from_pretrained(self.text_source)
        except OSError as e:
            raise UserError(f"text backbone '{cfg.text_backbone}': no tokenizer ({str(e).splitlines()[0]})") from None
        if self.tok.pad_token is None:
            raise UserError(f"text backbone '{cfg.text_backbone}': its tokenizer has no pad token; "
                            "fusion wants an encoder (BERT-like)")
        self._pad = DataCollatorWithPadding(self.tok, pad_to_multiple_of=8 if torch.cuda.is_available() else None)
        self.augment = A.BatchAugment(cfg.augment, n_classes)  # per-image steps only (validated)
        self._loaded = 0

    def model(self, pretrained: bool) -> FusionNet:
        net, self._loaded = build_net(self.cfg, self.n_classes, self.text_source, pretrained)
        return net

    def build_model(self, device_index: int) -> FusionNet:
        return self.model(pretrained=True)

    def make_items(self, rows: pd.DataFrame, stage: training.Stage) -> list[dict]:
        from medalist.models.families.hf_text import encode

        tokens = encode(self.tok, texts(rows), self.cfg.max_length)
        size = stage.input_size or self.cfg.image_size
        pixels, ok = images(rows["image"].fillna("").astype(str).tolist(),
                            self.view.size(size) if self.view else size, self.data_dir)
        if self.view is not None:
            pixels = self.view.apply(pixels)
        return [{**tokens[i], "pixels": pixels[i], "ok": bool(ok[i])} for i in range(len(tokens))]

    def cost(self, item: dict) -> float:
        return len(item["input_ids"])  # the pixels are one size for all

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = dict(self._pad([{k: v for k, v in it.items() if k not in ("pixels", "ok")} for it in items]))
        # (N, H, W, 3) seen as (N, 3, H, W): channels-last in memory, no copy
        batch["pixels"] = torch.from_numpy(np.stack([it["pixels"] for it in items])).permute(0, 3, 1, 2)
        batch["ok"] = torch.tensor([it["ok"] for it in items])
        return batch

    @staticmethod
    def _inputs(batch: dict) -> dict[str, torch.Tensor]:
        return {k: v for k, v in batch.items() if k != "labels"}

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Only training calls this: augmentation and modality dropout live here."""
        pixels, target = self.augment(batch["pixels"], batch["labels"])
        eps = self.cfg.label_smoothing
        target = target * (1 - eps) + eps / self.n_classes
        out = model(**{**self._inputs(batch), "pixels": pixels}, modality_dropout=self.cfg.modality_dropout)

        def ce(logits: torch.Tensor) -> torch.Tensor:  # per row
            return -(target * torch.log_softmax(logits.float(), dim=-1)).sum(-1)

        fused, aux_text = ce(out["logits"]).sum(), ce(out["text_logits"]).sum()
        aux_image = (ce(out["image_logits"]) * batch["ok"].float()).sum()  # photo rows only
        total = fused + self.cfg.aux_weight * (aux_text + aux_image)
        return {"loss": total, "fused": fused.detach(), "aux_text": aux_text.detach(), "aux_image": aux_image.detach()}

    def proba(self, model, batch: dict) -> torch.Tensor:
        return torch.softmax(model(**self._inputs(batch))["logits"].float(), dim=-1)

    def on_train_mode(self, model: FusionNet) -> None:
        model.freeze_bn()

    def lr_scale(self, name: str) -> float:
        if name.startswith("text."):
            return self.cfg.text_lr_scale
        return self.cfg.image_lr_scale if name.startswith("image.") else 1.0

    def info(self, model, when: str) -> dict:
        return {"image_pretrained_tensors": self._loaded} if when == "init" else {}

    def save(self, model: FusionNet, state: dict[str, torch.Tensor], out_dir: Path) -> None:
        from safetensors.torch import save_file

        from medalist.core.io import atomic_path

        model.text.config.save_pretrained(Path(out_dir) / TEXT_DIR)
        self.tok.save_pretrained(Path(out_dir) / TEXT_DIR)
        with atomic_path(Path(out_dir) / WEIGHTS_FILE) as tmp:
            save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(tmp))


def fit_fold(cfg: Config, fold: FoldData, out_dir: Path) -> FoldResult:
    """Train fresh networks on every fold.train row (photo-less ones through the missing vector),
    save them in out_dir, return val/test probabilities."""
    comp = Path(fold.data_dir).name if fold.data_dir is not None and pretrained_name(cfg.text_backbone) else None
    adapter = FusionAdapter(cfg, fold.n_classes, resolve(cfg.text_backbone, comp), data_dir=fold.data_dir)
    res = engine.fit_fold(adapter, cfg, fold, Path(out_dir))
    size = cfg.stage_list()[-1].input_size or cfg.image_size  # the items' size last made: cached
    for part, rows in (("train", fold.train), ("val", fold.val), ("test", fold.test)):
        _, ok = images(rows["image"].fillna("").astype(str).tolist(), size, fold.data_dir)
        res.info[f"{part}_rows_without_image"] = int((~ok).sum())
    return res


# ---------------------------------------------------------------- inference from saved weights


def load_models(cfg: Config, fold_dir: Path, n_classes: int) -> tuple[FusionAdapter, list[FusionNet]]:
    """The adapter and one network per seed, from a fold's saved weights (or a checkpoint folder)."""
    from safetensors.torch import load_file

    dirs = training.weight_dirs(Path(fold_dir))
    adapter, models = None, []
    for d in dirs:
        if checkpoints.is_checkpoint(d):
            adapter = adapter or FusionAdapter(cfg, n_classes, resolve(cfg.text_backbone))
            models.append(checkpoints.load_weights(adapter.model(pretrained=False), d))
        elif (d / WEIGHTS_FILE).exists() and (d / TEXT_DIR / "config.json").exists():
            adapter = adapter or FusionAdapter(cfg, n_classes, d / TEXT_DIR)
            model = build_net(cfg, n_classes, d / TEXT_DIR, pretrained=False)[0]
            model.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
            models.append(model)
        else:
            raise UserError(f"no saved weights in {d}: train the run first")
    return adapter, models


def load_predictor(cfg: Config, fold_dir: Path, n_classes: int):
    """predict(rows, view=None, data_dir=None) -> (n, K) probabilities (mean over seeds) from
    saved weights; `view` a test-time view of the photos (`medalist.image.augment.View`; the
    texts stay as they are), `data_dir` the competition's processed folder, whose decode-once
    cache then serves the rows."""
    import copy

    base, models = load_models(cfg, fold_dir, n_classes)

    def predict(rows: pd.DataFrame, view: A.View | None = None, data_dir: Path | None = None) -> np.ndarray:
        adapter = copy.copy(base)
        adapter.view, adapter.data_dir = view, data_dir
        return training.predictor(adapter, models, cfg)(rows)

    return predict

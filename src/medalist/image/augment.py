"""Image augmentation from a model config (torchvision `transforms.v2`), and the fixed test-time
views of `make tta`.

Training: a random flip / affine (rotation, translation, zoom) / colour jitter / random erasing,
one draw per group of `group` images (a v2 call costs far more than the pixels it moves on a CPU:
per image it outweighs a small CNN's whole step); then per batch MixUp or CutMix (soft labels). Every draw
comes from torch's global generator, which the engine seeds per (seed, epoch) — a resumed run
sees the same augmented batches. Images stay uint8 (N, 3, H, W) until mixing.

Test time: deterministic views of uint8 (N, H, W, 3) arrays — flips, centre and corner crops
(resized back), and a larger scale (the adapter decodes those rows at the larger size).
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import numpy as np
import torch

from medalist.core.config import AtLeastOne, Fraction, NonNegative, Range, UserError


@dataclasses.dataclass(frozen=True)
class Augment:
    """Train-time augmentation; every probability 0 and both alphas 0 = none."""

    hflip: Annotated[float, Fraction] = 0.5  # probability of a horizontal flip
    vflip: Annotated[float, Fraction] = 0.0  # only where up and down carry no meaning (satellite, cells)
    rotate: Annotated[float, Range(ge=0, le=180)] = 0.0  # degrees either way
    translate: Annotated[float, Range(ge=0, lt=0.5)] = 0.0  # fraction of the side, either way
    zoom: tuple[float, float] = (1.0, 1.0)  # random scale range of the affine
    color_jitter: Annotated[float, Fraction] = 0.0  # brightness / contrast / saturation strength
    erasing: Annotated[float, Fraction] = 0.0  # probability of erasing a random rectangle
    mixup_alpha: Annotated[float, NonNegative] = 0.0  # Beta(α, α) mixing weight; 0 = off
    cutmix_alpha: Annotated[float, NonNegative] = 0.0
    mix_prob: Annotated[float, Fraction] = 0.0  # share of batches mixed (MixUp or CutMix, half each where both are on)
    group: Annotated[int, AtLeastOne] = 8  # images sharing one random draw of the per-image steps; 1 = each its own

    def validate(self, where: str) -> None:
        if len(self.zoom) != 2 or not 0 < self.zoom[0] <= self.zoom[1]:
            raise UserError(f"{where}.zoom: needs 0 < min <= max, got {list(self.zoom)}")
        if self.mix_prob > 0 and not (self.mixup_alpha or self.cutmix_alpha):
            raise UserError(f"{where}: mix_prob > 0 needs mixup_alpha or cutmix_alpha > 0")


def per_image(cfg: Augment):
    """The per-image v2 pipeline for uint8 (N, 3, H, W) tensors (one draw for all N), or None when it does nothing."""
    from torchvision.transforms import v2

    steps = []
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip(cfg.hflip))
    if cfg.vflip:
        steps.append(v2.RandomVerticalFlip(cfg.vflip))
    if cfg.rotate or cfg.translate or cfg.zoom != (1.0, 1.0):
        steps.append(v2.RandomAffine(degrees=cfg.rotate, translate=(cfg.translate,) * 2 if cfg.translate else None,
                                     scale=cfg.zoom if cfg.zoom != (1.0, 1.0) else None))
    if cfg.color_jitter:
        j = cfg.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    if cfg.erasing:
        steps.append(v2.RandomErasing(cfg.erasing, value=0))
    return v2.Compose(steps) if steps else None


class BatchAugment:
    """uint8 images (N, 3, H, W) + int labels → augmented images + soft targets (N, K)."""

    def __init__(self, cfg: Augment, n_classes: int):
        from torchvision.transforms import v2

        self.cfg, self.n_classes = cfg, n_classes
        self.each = per_image(cfg)
        mixers = ([v2.MixUp(alpha=cfg.mixup_alpha, num_classes=n_classes)] if cfg.mixup_alpha else []) + (
            [v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=n_classes)] if cfg.cutmix_alpha else [])
        self.mix = (v2.RandomChoice(mixers) if len(mixers) > 1 else mixers[0]) if mixers else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.each is not None:
            images = torch.cat([self.each(g) for g in images.split(self.cfg.group)])
        if self.mix is not None and len(images) > 1 and float(torch.rand(())) < self.cfg.mix_prob:
            return self.mix(images.float(), labels)
        return images, torch.nn.functional.one_hot(labels, self.n_classes).float()


# ---------------------------------------------------------------- test-time views

ViewSet = Literal["hflip", "vflip", "crops", "scale"]  # what configs/tta.yaml may list
CORNERS = ("centre", "tl", "tr", "bl", "br")


@dataclasses.dataclass(frozen=True)
class View:
    """One deterministic test-time view of an image."""

    name: str  # hflip | vflip | crop_<centre|tl|tr|bl|br> | scale
    crop: float = 0.875  # crops: the share of the side kept
    scale: float = 1.15  # scale: the factor on the input size

    def size(self, size: int) -> int:
        """The side the rows are decoded at for this view."""
        return max(1, round(size * self.scale)) if self.name == "scale" else size

    def apply(self, x: np.ndarray) -> np.ndarray:
        """This view of uint8 images (N, H, W, 3), same size out (crops are resized back)."""
        if self.name == "hflip":
            return np.ascontiguousarray(x[:, :, ::-1])
        if self.name == "vflip":
            return np.ascontiguousarray(x[:, ::-1])
        if not self.name.startswith("crop_"):
            return x
        n, h, w, _ = x.shape
        ch, cw = max(1, round(h * self.crop)), max(1, round(w * self.crop))
        where = self.name.removeprefix("crop_")
        top = {"centre": (h - ch) // 2, "tl": 0, "tr": 0, "bl": h - ch, "br": h - ch}[where]
        left = {"centre": (w - cw) // 2, "tl": 0, "bl": 0, "tr": w - cw, "br": w - cw}[where]
        part = torch.from_numpy(np.ascontiguousarray(x[:, top:top + ch, left:left + cw])).permute(0, 3, 1, 2)
        out = torch.nn.functional.interpolate(part.float(), size=(h, w), mode="bilinear", align_corners=False)
        return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def views(names: tuple[str, ...], crop: float, scale: float) -> list[View]:
    """The configured view sets as single views ("crops" = centre + four corners)."""
    out = []
    for n in names:
        if n == "crops":
            out += [View(f"crop_{c}", crop=crop) for c in CORNERS]
        else:
            out.append(View(n, crop=crop, scale=scale))
    return out

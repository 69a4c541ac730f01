"""A small convolutional network trained from scratch at the images' own resolution (family
`cnn`): 28-pixel images need no 224-pixel ImageNet backbone, and dense 3×3 convolutions run
several times faster on a CPU than EfficientNet's depthwise ones.

Blocks of two 3×3 conv-BN-ReLU layers, each block halving the side by max-pooling, then global
average pooling, dropout and a linear head (`head.*`). Everything else — items from the
decode-once cache, augmentation, MixUp/CutMix, EMA, label smoothing, the fallback for rows with no
readable image, saving and predicting — is the image family's adapter (`families/image.py`).

Runs under `accelerate launch … -m medalist.stages.train`, like every neural family.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal

import torch

from medalist.core.config import AtLeastOne, Range, UserError
from medalist.models import FoldData, FoldResult
from medalist.models.families.image import ImageRecipe, fit, predictor


@dataclasses.dataclass(frozen=True)
class Config(ImageRecipe):
    family: Literal["cnn"] = "cnn"
    image_size: Annotated[int, AtLeastOne] = 28  # native Fashion-MNIST size; set it to your images' size
    widths: tuple[int, ...] = (32, 64, 128)  # channels per block; each block halves the side
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.2

    def validate(self, where: str) -> None:
        super().validate(where)
        if not self.widths or min(self.widths) < 1:
            raise UserError(f"{where}.widths: a non-empty list of positive channel counts, got {list(self.widths)}")


class SmallCNN(torch.nn.Module):
    def __init__(self, widths: tuple[int, ...], n_classes: int, dropout: float):
        super().__init__()
        layers: list[torch.nn.Module] = []
        c = 3
        for w in widths:
            for i in range(2):
                layers += [torch.nn.Conv2d(c if i == 0 else w, w, 3, padding=1, bias=False),
                           torch.nn.BatchNorm2d(w), torch.nn.ReLU(inplace=True)]
            layers.append(torch.nn.MaxPool2d(2, ceil_mode=True))  # ceil: a 7-pixel side still pools to 4
            c = w
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                        torch.nn.Dropout(dropout), torch.nn.Linear(c, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def cnn_net(cfg: Config, n_classes: int, pretrained: bool):
    """(net, mean, std, tensors loaded): nothing pretrained; the BatchNorm after the first conv
    makes the exact normalisation unimportant, so 0.5 ± 0.5 maps pixels to [-1, 1]."""
    return SmallCNN(cfg.widths, n_classes, cfg.dropout), (0.5,) * 3, (0.5,) * 3, 0


def fit_fold(cfg: Config, fold: FoldData, out_dir: Path) -> FoldResult:
    return fit(cfg, fold, out_dir, cnn_net)


def load_predictor(cfg: Config, fold_dir: Path, n_classes: int):
    return predictor(cfg, fold_dir, n_classes, cnn_net)

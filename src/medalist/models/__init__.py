"""Model families behind one small interface: config in → fold probabilities out.

A family is a module under `medalist.models.families`, listed in `medalist.models.registry`,
exposing:
  Config                         frozen dataclass extending RunConfig; YAML in configs/models/<name>.yaml
  fit_fold(cfg, fold, out_dir)   train a fresh model on fold.train, save weights in out_dir,
                                 return FoldResult(val_proba, test_proba, info)
  load_predictor(cfg, fold_dir, n_classes)
                                 → predict(rows: DataFrame) -> (n, K) probabilities, from saved weights

Families see rows, not texts: a DataFrame of the processed columns (id, and the inputs the
competition declares: `text`, `image` …). `train`, `predict` and `tta` only ever talk to this
interface.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from medalist.core.config import AtLeastOne, NonNegative, UserError

INPUT_KINDS = ("text", "image")  # columns of the processed tables a model may read


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The fields every family's config has (a family's Config extends it)."""

    family: str
    seed: Annotated[int, NonNegative] = 42
    max_train_rows: Annotated[int, AtLeastOne] | None = None  # cap for quick looks (train applies it); null = all
    inputs: tuple[str, ...] = ("text",)  # processed columns the model reads
    # GPUs one fold job takes where there are GPUs (`core.slots`; >1: accelerate's multi-GPU in the
    # job); null: none for TF-IDF, one for the others
    gpus: Annotated[int, NonNegative] | None = None

    def validate(self, where: str) -> None:
        bad = [i for i in self.inputs if i not in INPUT_KINDS]
        if bad or not self.inputs:
            raise UserError(f"{where}: inputs must be a non-empty list of {list(INPUT_KINDS)}, got {list(self.inputs)}")


@runtime_checkable
class Tokenized(Protocol):
    """A config that reads text through a pretrained tokenizer: `checks` and `tta` measure
    lengths with it (`isinstance(cfg, Tokenized)`, never getattr on a config)."""

    backbone: str
    max_length: int


@dataclasses.dataclass
class FoldData:
    """One fold's rows: training (generated rows included), validation (original rows only), test."""

    fold: int
    n_classes: int
    train: pd.DataFrame
    train_labels: np.ndarray
    val: pd.DataFrame
    val_labels: np.ndarray
    test: pd.DataFrame
    metric: str
    log_dir: Path | None = None  # TensorBoard events for this fold
    data_dir: Path | None = None  # data/processed/<comp>/: the decode-once image cache lives there

    @property
    def val_ids(self) -> list[str]:
        return self.val["id"].astype(str).tolist()

    @property
    def test_ids(self) -> list[str]:
        return self.test["id"].astype(str).tolist()


@dataclasses.dataclass
class FoldResult:
    val_proba: np.ndarray
    test_proba: np.ndarray
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def texts(rows: pd.DataFrame) -> list[str]:
    """The `text` input of some rows (what every text family reads)."""
    return rows["text"].fillna("").astype(str).tolist()

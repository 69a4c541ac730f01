"""Generated rows shared by `augment` and `generate`: the generated_train.csv contract and its
rebuild from aug.csv / llm.csv. (Both filter duplicates with `text.clean.normalise` and
`text.dedup`.)

Reads:  data/generated/<comp>/aug.csv, llm.csv (whichever exist)
Writes: data/generated/<comp>/generated_train.csv (id, text, label, source, parent_id, folds)
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from medalist.core.config import Paths
from medalist.core.io import write_csv

COLUMNS = ["id", "text", "label", "source", "parent_id", "folds"]
PARTS = ("aug.csv", "llm.csv")


def folds_str(folds: Sequence[int]) -> str:
    return ";".join(str(int(k)) for k in sorted(folds))


def parse_folds(value: str) -> list[int]:
    return [int(k) for k in str(value).split(";") if k != ""]


def read_part(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str, "text": str, "source": str, "parent_id": str, "folds": str},
                       keep_default_na=False)


def rebuild(paths: Paths) -> Path:
    """generated_train.csv = the rows of whichever of aug.csv / llm.csv exist, in that order."""
    frames = [read_part(paths.generated / p)[COLUMNS] for p in PARTS if (paths.generated / p).exists()]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    out = out[out["folds"].astype(str) != ""]
    return write_csv(paths.generated / "generated_train.csv", out)

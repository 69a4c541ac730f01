"""Generated rows shared by `augment`, `generate` and `pseudo`: the generated_train.csv contract,
its rebuild from the parts (aug.csv, llm.csv, pseudo.csv), and the choice of sources a run trains
on. (Each stage filters near duplicates with `text.clean.normalise` and `text.dedup`.)

A row's source names its kind before the colon: `aug:<augmenters>`, `llm:<model>`,
`pseudo:<teacher>`; a run trains on all kinds (USE_GEN=1, run suffix +gen) or on the kinds GEN
lists (GEN=aug,pseudo, run suffix +aug+pseudo).

Reads:  data/generated/<comp>/aug.csv, llm.csv, pseudo.csv (whichever exist)
Writes: data/generated/<comp>/generated_train.csv (id, text, label, source, parent_id, folds)
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from medalist.core.config import Paths, UserError
from medalist.core.io import write_csv

COLUMNS = ["id", "text", "label", "source", "parent_id", "folds"]
SOURCES = ("aug", "llm", "pseudo")  # each kind's part is <kind>.csv, made by the stage named in MAKES
MAKES = {"aug": "make augment", "llm": "make generate", "pseudo": "make pseudo RUN=<run>"}
PARTS = tuple(f"{s}.csv" for s in SOURCES)


def folds_str(folds: Iterable[int]) -> str:
    return ";".join(str(int(k)) for k in sorted(folds))


def parse_folds(value: str) -> list[int]:
    return [int(k) for k in str(value).split(";") if k != ""]


def read_part(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str, "text": str, "source": str, "parent_id": str, "folds": str},
                       keep_default_na=False)


def rebuild(paths: Paths) -> Path:
    """generated_train.csv = the rows of whichever parts exist, in SOURCES order."""
    frames = [read_part(paths.generated / p)[COLUMNS] for p in PARTS if (paths.generated / p).exists()]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    out = out[out["folds"].astype(str) != ""]
    return write_csv(paths.generated / "generated_train.csv", out)


# ---------------------------------------------------------------- which sources a run trains on


def parse_sources(value: str | Sequence[str]) -> tuple[str, ...]:
    """GEN's value (`aug,pseudo`, or a list) → the kinds in SOURCES order; a typo is a UserError."""
    words = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    bad = [w for w in words if w not in SOURCES]
    if bad or not words:
        raise UserError(f"GEN={','.join(words)}: expected a comma-separated subset of {','.join(SOURCES)}")
    return tuple(s for s in SOURCES if s in words)


def suffix(use_gen: bool, sources: Sequence[str] = ()) -> str:
    """The run name's suffix: +gen for every source, +aug+pseudo for GEN=aug,pseudo, '' for none."""
    if use_gen and sources:
        raise UserError("give USE_GEN=1 (every generated source) or GEN=… (some of them), not both")
    return "+gen" if use_gen else "".join(f"+{s}" for s in sources)


def kind(source: pd.Series) -> pd.Series:
    return source.astype(str).str.split(":", n=1).str[0]


def read_train_rows(paths: Paths, sources: Sequence[str] = SOURCES) -> pd.DataFrame:
    """The rows of generated_train.csv a run trains on: every source, or those named. A chosen
    source without rows is a UserError naming the command that makes it."""
    path = paths.generated / "generated_train.csv"
    every = tuple(sources) == SOURCES
    if not path.exists():
        how = " or ".join(f"`{MAKES[s]} COMP={paths.comp}`" for s in sources)
        knob = "USE_GEN=1" if every else f"GEN={','.join(sources)}"
        raise UserError(f"{knob} but {path} does not exist: run {how} first")
    gen = read_part(path)
    if every:
        return gen
    kinds = kind(gen["source"])
    empty = [s for s in sources if not (kinds == s).any()]
    if empty:
        raise UserError(f"GEN={','.join(sources)} but {path} holds no {empty[0]} rows: "
                        f"run `{MAKES[empty[0]]} COMP={paths.comp}` first")
    return gen[kinds.isin(sources)].reset_index(drop=True)


def digest(gen: pd.DataFrame) -> str:
    """What a run's finished folds must have trained on to be reused: the chosen rows' content."""
    return hashlib.sha256(gen[COLUMNS].to_csv(index=False).encode()).hexdigest()[:16]

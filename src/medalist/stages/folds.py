"""`make folds`: the normalised tables every model reads, with grouped stratified folds.

Reads   data/raw/<comp>/ (train, test, sample submission as the competition config names them)
Writes  data/processed/<comp>/test.csv (id, text), then train.csv (id, text, label, fold) — the
        Make target, written last
Run     python -m medalist.stages.folds --comp demo

Cleaning the competition config turns on (byte-string literals decoded, HTML stripped, URLs and
emails replaced by markers) happens here, once, for every model. Folds are stratified by label
and grouped so exact and near-duplicate texts land in the same fold (correctness rule 2).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from medalist.core import config as C
from medalist.core.competition import Competition, load_competition, read_raw
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.io import write_csv
from medalist.text.clean import clean, near_duplicate_groups


def assign_folds(texts: list[str], labels: np.ndarray, n_folds: int, seed: int, threshold: float) -> np.ndarray:
    groups = near_duplicate_groups(texts, threshold=threshold, seed=seed)
    counts = np.bincount(labels)
    if counts[counts > 0].min() < n_folds:
        rare = int(np.flatnonzero((counts > 0) & (counts < n_folds))[0])
        print(f"note: class {rare} has {counts[rare]} rows, fewer than {n_folds} folds")
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(len(texts), -1, dtype=int)
    for k, (_, val_idx) in enumerate(skf.split(np.zeros(len(texts)), labels, groups)):
        fold[val_idx] = k
    return fold


def run(comp: Competition) -> Path:
    paths = Paths(comp.name)
    if not (paths.raw / ".complete").exists():
        raise UserError(f"no data for '{comp.name}': run `make download COMP={comp.name}` first")
    train, test, _ = read_raw(comp, paths.raw)
    if len(train) < comp.folds.n:
        raise UserError(f"{comp.files.train}: {len(train)} rows, fewer than {comp.folds.n} folds")
    train["text"] = [clean(t, comp.cleaning) for t in train["text"]]
    test["text"] = [clean(t, comp.cleaning) for t in test["text"]]
    train["fold"] = assign_folds(train["text"].tolist(), train["label"].to_numpy(), comp.folds.n,
                                 comp.folds.seed, comp.folds.near_dup_threshold)
    write_csv(paths.processed / "test.csv", test[["id", "text"]])
    out = write_csv(paths.processed / "train.csv", train[["id", "text", "label", "fold"]])
    sizes = train.groupby("fold").size().tolist()
    print(f"folds: {len(train)} train rows in {comp.folds.n} folds {sizes}; {len(test)} test rows → {paths.processed}")
    return out


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.folds", __doc__)
    a = ap.parse_args(argv)
    run(load_competition(a.comp))


if __name__ == "__main__":
    main()

"""`make folds`: the normalised tables every model reads, with grouped stratified folds.

Reads   data/raw/<comp>/ (train, test, sample submission as the competition config names them;
        the image files its `inputs.image` declares)
Writes  data/processed/<comp>/test.csv (id, [text], [image]), then train.csv (id, [text], [image],
        label, fold) — the Make target, written last. One column per declared input: `text` the
        cleaned join of the text columns, `image` the file's path relative to the project root
        (data/raw/<comp>/…), so any stage opens it as root / path.
Run     python -m medalist.stages.folds --comp demo

Cleaning the competition config turns on (byte-string literals decoded, HTML stripped, URLs and
emails replaced by markers) happens here, once, for every model. Folds are stratified by label
and grouped so exact and near-duplicate texts land in the same fold (correctness rule 2); rows
without text (image-only competitions) are grouped alone for now.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from medalist.core import config as C
from medalist.core.competition import Competition, load_competition, read_raw
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.io import write_csv
from medalist.text.clean import clean
from medalist.text.dedup import near_duplicate_groups


def assign_folds(texts: list[str] | None, labels: np.ndarray, n_folds: int, seed: int, threshold: float) -> np.ndarray:
    """Fold of each row; `texts` None (no text input) puts every row in a group of its own."""
    n = len(labels)
    groups = np.arange(n) if texts is None else near_duplicate_groups(texts, threshold=threshold, seed=seed)
    counts = np.bincount(labels)
    if counts[counts > 0].min() < n_folds:
        rare = int(np.flatnonzero((counts > 0) & (counts < n_folds))[0])
        print(f"note: class {rare} has {counts[rare]} rows, fewer than {n_folds} folds")
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(n, -1, dtype=int)
    for k, (_, val_idx) in enumerate(skf.split(np.zeros(n), labels, groups)):
        fold[val_idx] = k
    return fold


def run(comp: Competition) -> Path:
    paths = Paths(comp.name)
    if not (paths.raw / ".complete").exists():
        raise UserError(f"no data for '{comp.name}': run `make download COMP={comp.name}` first")
    train, test, _ = read_raw(comp, paths.raw)
    if len(train) < comp.folds.n:
        raise UserError(f"{comp.files.train}: {len(train)} rows, fewer than {comp.folds.n} folds")
    has_text = "text" in train.columns
    if has_text:
        train["text"] = [clean(t, comp.cleaning) for t in train["text"]]
        test["text"] = [clean(t, comp.cleaning) for t in test["text"]]
    if "image" in train.columns:
        for df in (train, test):
            df["image"] = [(paths.raw / p).relative_to(C.root()).as_posix() for p in df["image"]]
    train["fold"] = assign_folds(train["text"].tolist() if has_text else None, train["label"].to_numpy(),
                                 comp.folds.n, comp.folds.seed, comp.folds.near_dup_threshold)
    write_csv(paths.processed / "test.csv", test)
    out = write_csv(paths.processed / "train.csv", train)
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

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
and grouped (correctness rule 2, `core.groups`): every pair of texts at the near-duplicate
threshold, and exact and near-duplicate images, land in the same fold, chained across
modalities. In an image-only competition a train image that does not decode is left out, with a note (it has nothing to learn from); a test row
always stays, whatever its image: every id needs a prediction.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from medalist.core import config as C
from medalist.core.competition import Competition, load_competition, read_raw
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.groups import row_groups
from medalist.core.io import write_csv
from medalist.text.clean import clean


def assign_folds(groups: np.ndarray, labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each row: stratified by label, each group of rows whole in one fold."""
    n = len(labels)
    counts = np.bincount(labels)
    if counts[counts > 0].min() < n_folds:
        rare = int(np.flatnonzero((counts > 0) & (counts < n_folds))[0])
        print(f"note: class {rare} has {counts[rare]} rows, fewer than {n_folds} folds")
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(n, -1, dtype=int)
    for k, (_, val_idx) in enumerate(skf.split(np.zeros(n), labels, groups)):
        fold[val_idx] = k
    return fold


def _drop_unreadable(train, readable: np.ndarray):
    """An image-only row whose image does not decode cannot train: leave it out, with a note."""
    bad = [f"{i} ({p or 'no file'})" for i, p in zip(train.loc[~readable, "id"], train.loc[~readable, "image"])]
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    print(f"note: {len(bad)} train image(s) do not decode and are left out: {shown}")
    return train.loc[readable].reset_index(drop=True)


def prepare(df, comp: Competition, raw_dir: Path, images_from: Path | None) -> None:
    """The cleaning every model's rows get, in place: text cleaned as the config says, an image
    path made relative to `images_from` (the project root), or absolute when None. `make folds`
    and a code competition's notebook (`medalist.bundle.infer`) both call this."""
    if "text" in df.columns:
        df["text"] = [clean(t, comp.cleaning) for t in df["text"]]
    if "image" in df.columns:
        full = [Path(raw_dir) / p if p else None for p in df["image"]]
        df["image"] = ["" if f is None else (f.relative_to(images_from) if images_from else Path(os.path.abspath(f))).as_posix()
                       for f in full]


def run(comp: Competition) -> Path:
    paths = Paths(comp.name)
    if not (paths.raw / ".complete").exists():
        raise UserError(f"no data for '{comp.name}': run `make download COMP={comp.name}` first")
    train, test, _ = read_raw(comp, paths.raw)
    if len(train) < comp.folds.n:
        raise UserError(f"{comp.files.train}: {len(train)} rows, fewer than {comp.folds.n} folds")
    has_text = "text" in train.columns
    for df in (train, test):
        prepare(df, comp, paths.raw, C.root())
    # one grouping, shared with `check` (core.groups): near duplicates of either modality share a fold
    g = row_groups(train["text"].tolist() if has_text else None,
                   train["image"].tolist() if "image" in train.columns else None, comp.folds.near_dup_threshold)
    groups = g.group
    if "image" in train.columns:
        if not has_text and not g.readable.all():  # with text to read, the row still trains
            train, groups = _drop_unreadable(train, g.readable), g.group[g.readable]
        if len(train) < comp.folds.n:
            raise UserError(f"{comp.files.train}: {len(train)} readable images, fewer than {comp.folds.n} folds")
    train["fold"] = assign_folds(groups, train["label"].to_numpy(), comp.folds.n, comp.folds.seed)
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

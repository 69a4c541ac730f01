"""Stage `pseudo`: leak-safe pseudo-labels — the test rows a teacher predicts with high confidence,
written as generated training rows, fold by fold.

Reads:  configs/pseudo.yaml (threshold, per-class cap, a default teacher and its weights);
        configs/competitions/<comp>.yaml (folds.near_dup_threshold);
        data/processed/<comp>/train.csv, test.csv;
        results/<comp>/<run>/ of each teacher run: metrics.json (finished), oof.csv (its folds), fold<k>/test.csv
Writes: data/generated/<comp>/pseudo.csv (id, text, label, source, parent_id, folds, confidence),
        data/generated/<comp>/pseudo_stats.json, then rebuilds generated_train.csv
Run:    make pseudo COMP=demo RUN=tfidf        (RUN="tfidf minilm": the weighted mean of several)
        (= python -m medalist.stages.pseudo --comp demo --runs "tfidf")

Leakage (DESIGN.md rule 5): fold k's labels come only from the teacher's fold-k models — the
fold<k>/test.csv every run writes, predicted by models that never saw fold k's validation rows —
and such a row trains in fold k alone (`folds` = k). So a test row may appear once per fold, each
time with that fold's label: id pseudo-<k>-<test id>, parent_id the test id, source
pseudo:<teacher runs>. A teacher whose oof.csv folds are not train.csv's was trained on other folds
and is refused. A test text that near-duplicates one of fold k's validation rows is dropped for
fold k (the competition's near-duplicate threshold, as `folds` groups them); validation stays
original rows only. Runs train on these rows with GEN=pseudo (or USE_GEN=1: every source).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd

from medalist.core import config as C
from medalist.core import generated
from medalist.core.competition import Competition, load_competition
from medalist.core.config import AtLeastOne, NonNegative, Paths, Range, UserError, stage_parser
from medalist.core.io import align, read_processed, write_csv, write_json
from medalist.text.dedup import near_duplicates


@dataclasses.dataclass(frozen=True)
class PseudoConfig:
    teacher: tuple[str, ...] = ()  # runs in results/<comp>/ whose mean labels the test rows; RUN="a b" replaces it
    weights: tuple[Annotated[float, NonNegative], ...] = ()  # fixed weight per teacher run, in order; () = equal
    threshold: Annotated[float, Range(gt=0, le=1)] = 0.9  # the teacher's top class probability a row needs
    max_per_class: Annotated[int, AtLeastOne] = 1000  # per fold and class, the most confident rows first


def load_config() -> PseudoConfig:
    return C.load(PseudoConfig, C.configs_dir() / "pseudo.yaml")


def teacher_weights(cfg: PseudoConfig, runs: tuple[str, ...]) -> np.ndarray:
    if not runs:
        raise UserError("pseudo needs a teacher: make pseudo RUN=<run> (or RUN=\"a b\"), or teacher: [...] "
                        "in configs/pseudo.yaml")
    if len(set(runs)) != len(runs):
        raise UserError(f"the teacher lists a run twice: {' '.join(runs)}")
    if not cfg.weights:
        return np.full(len(runs), 1 / len(runs))
    if len(cfg.weights) != len(runs):
        raise UserError(f"pseudo.yaml: weights has {len(cfg.weights)} numbers but the teacher has {len(runs)} "
                        f"runs ({' '.join(runs)})")
    w = np.asarray(cfg.weights, dtype=float)
    if w.sum() <= 0:
        raise UserError("pseudo.yaml: weights are all zero")
    return w / w.sum()


def fold_probabilities(paths: Paths, comp: Competition, run: str, train: pd.DataFrame,
                       test: pd.DataFrame) -> list[np.ndarray]:
    """A teacher run's test probabilities per fold (fold<k>/test.csv), after checking that it was
    trained on exactly these folds — else its fold-k models may have seen fold k's rows."""
    run_dir = paths.run(run)
    if not (run_dir / "metrics.json").exists():
        raise UserError(f"teacher run '{run}' is not finished ({run_dir}): train it first, "
                        f"e.g. make train COMP={comp.name} MODELS={run.split('+')[0]}")
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    theirs = oof.set_index("id")["fold"].reindex(train["id"])
    if theirs.isna().any() or (theirs.to_numpy() != train["fold"].to_numpy()).any():
        raise UserError(f"teacher run '{run}' was trained on other folds than data/processed/{comp.name}/train.csv: "
                        f"retrain it (make train COMP={comp.name} …)")
    out = []
    for k in range(int(train["fold"].max()) + 1):
        path = run_dir / f"fold{k}" / "test.csv"
        if not path.exists():
            raise UserError(f"teacher run '{run}' has no {path}: retrain it")
        p = align(pd.read_csv(path, dtype={"id": str}), test["id"])
        if p.shape[1] != comp.n_classes:
            raise UserError(f"teacher run '{run}': {p.shape[1]} classes in {path}, the competition has {comp.n_classes}")
        out.append(p)
    return out


def label_fold(cfg: PseudoConfig, k: int, proba: np.ndarray, test: pd.DataFrame, near_val: np.ndarray,
               source: str) -> tuple[pd.DataFrame, dict]:
    """Fold k's pseudo rows: confident, not near a fold-k validation row, capped per class."""
    conf, label = proba.max(axis=1), proba.argmax(axis=1)
    confident = (conf >= cfg.threshold) & (test["text"].str.strip() != "").to_numpy()
    ok = confident & ~near_val
    rows = pd.DataFrame({"test_id": test["id"].to_numpy(), "text": test["text"].to_numpy(), "label": label,
                         "confidence": conf})[ok]
    rows = rows.sort_values("confidence", ascending=False, kind="stable")
    capped = rows[rows.groupby("label").cumcount() < cfg.max_per_class].sort_index()
    out = pd.DataFrame({
        "id": "pseudo-" + str(k) + "-" + capped["test_id"], "text": capped["text"], "label": capped["label"],
        "source": source, "parent_id": capped["test_id"], "folds": str(k), "confidence": capped["confidence"].round(6),
    })
    stats = {"confident": int(confident.sum()), "near_duplicate_validation": int((confident & near_val).sum()),
             "over_cap": int(len(rows) - len(capped)), "kept": int(len(out))}
    return out, stats


def run(comp_name: str, runs: tuple[str, ...] = ()) -> Path:
    comp = load_competition(comp_name)
    paths = Paths(comp.name)
    cfg = load_config()
    runs = tuple(runs) or cfg.teacher
    weights = teacher_weights(cfg, runs)
    if "text" not in comp.inputs.kinds:
        raise UserError(f"competition '{comp.name}' declares no text input: pseudo rows are text rows")
    train, test = read_processed(paths)
    n_folds = int(train["fold"].max()) + 1
    per_run = [fold_probabilities(paths, comp, r, train, test) for r in runs]
    source = "pseudo:" + ",".join(runs)
    parts, stats = [], {}
    for k in range(n_folds):
        proba = sum(w * p[k] for w, p in zip(weights, per_run))
        near_val = near_duplicates(test["text"].tolist(), train.loc[train["fold"] == k, "text"].tolist(),
                                   comp.folds.near_dup_threshold)
        rows, stats[str(k)] = label_fold(cfg, k, proba, test, near_val, source)
        parts.append(rows)
    out = pd.concat(parts, ignore_index=True)[generated.COLUMNS + ["confidence"]]
    labels_per_row = out.groupby("parent_id")["label"].nunique()
    write_csv(paths.generated / "pseudo.csv", out)
    write_json(paths.generated / "pseudo_stats.json", {
        "teacher": list(runs), "weights": weights.round(6).tolist(), "threshold": cfg.threshold,
        "max_per_class": cfg.max_per_class, "test_rows": len(test), "rows": len(out),
        "distinct_test_rows": int(out["parent_id"].nunique()),
        "test_rows_labelled_differently_by_two_folds": int((labels_per_row > 1).sum()),
        "by_class": {comp.labels[c]: int(n) for c, n in out["label"].value_counts().sort_index().items()},
        "folds": stats,
    })
    generated.rebuild(paths)
    print(f"pseudo: teacher {' + '.join(runs)}: {len(out)} rows ({out['parent_id'].nunique()} of {len(test)} test rows"
          f", per fold {[s['kept'] for s in stats.values()]}) → {paths.generated / 'pseudo.csv'}")
    if out.empty:
        print(f"pseudo: no test row reaches threshold {cfg.threshold}: lower it in configs/pseudo.yaml")
    return paths.generated / "pseudo.csv"


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.pseudo", __doc__)
    ap.add_argument("--runs", default="", help="the teacher: one run or several, space-separated "
                                               "(default: teacher in configs/pseudo.yaml)")
    a = ap.parse_args(argv)
    run(a.comp, tuple(a.runs.split()))


if __name__ == "__main__":
    main()

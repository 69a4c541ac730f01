"""`make score FILE=… ANSWERS=…`: score a submission against an answers CSV (a local holdout such
as math-subjects' test_labels.csv) with the competition's metric, plus macro-F1 and accuracy.

FILE first passes the same validator as `make submit` (against data/raw/<comp>/sample_submission.csv),
so a file that Kaggle would refuse is refused here too, with the same line.

Reads   FILE (shaped like sample_submission.csv), data/raw/<comp>/sample_submission.csv,
        ANSWERS (id + the label column, as indices or names)
Writes  nothing; prints the scores
Run     python -m medalist.stages.score --comp math-subjects --file submission/math-subjects/submission.csv \
            --answers ../shared/competitions/math-subjects/test_labels.csv
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medalist.core import config as C
from medalist.core.competition import Competition, load_competition, read_sample, validate_submission
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.io import read_csv
from medalist.core.metrics import score, score_labels


def _as_index(comp: Competition, values: pd.Series, what: str) -> np.ndarray:
    """Labels written as class indices or names → indices; anything else names its row."""
    names = {n: i for i, n in enumerate(comp.labels)}
    out = []
    for row, v in enumerate(values):
        v = "" if pd.isna(v) else str(v).strip()
        if v.lstrip("-").isdigit() and 0 <= int(v) < comp.n_classes:
            out.append(int(v))
        elif v in names:
            out.append(names[v])
        else:
            raise UserError(f"{what} row {row + 2}: label '{v}' is not in the label space")
    return np.array(out)


def run(comp: Competition, file: Path, answers: Path) -> dict[str, float]:
    s = comp.submission
    raw = Paths(comp.name).raw
    if not (raw / ".complete").exists():
        raise UserError(f"no data for '{comp.name}': run `make download COMP={comp.name}` first")
    sub = read_csv(file, "FILE", dtype={s.id_column: str})  # read as `make submit` reads it
    validate_submission(comp, read_sample(comp, raw), sub)

    ans = read_csv(answers, "ANSWERS", dtype=str)
    missing = [c for c in (s.id_column, s.label_column) if c not in ans.columns]
    if missing:
        raise UserError(f"ANSWERS: missing column(s) {missing}; has {list(ans.columns)}")
    dup = ans[s.id_column].duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise UserError(f"ANSWERS row {row + 2}: duplicate id '{ans[s.id_column].iloc[row]}'")
    y_all = pd.Series(_as_index(comp, ans[s.label_column], "ANSWERS"), index=ans[s.id_column].astype(str))
    ids = sub[s.id_column].astype(str)
    unknown = ids[~ids.isin(y_all.index)]
    if len(unknown):
        raise UserError(f"FILE: id '{unknown.iloc[0]}' has no answer in ANSWERS")
    if len(ids) != len(y_all):
        raise UserError(f"FILE has {len(ids)} rows, ANSWERS has {len(y_all)}: score against the answers of every test id")
    y = y_all.loc[ids].to_numpy()
    if s.format == "probs":
        proba = sub[list(comp.labels)].to_numpy(dtype=float)
        out = {comp.metric: score(comp.metric, y, proba)}
        pred = proba.argmax(axis=1)
    else:
        pred = _as_index(comp, sub[s.label_column], "FILE")
        out = {}
    for m in ("micro_f1", "macro_f1", "weighted_f1", "accuracy"):
        out.setdefault(m, score_labels(m, y, pred))
    return out


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.score", __doc__)
    ap.add_argument("--file", required=True, type=Path)
    ap.add_argument("--answers", required=True, type=Path)
    a = ap.parse_args(argv)
    comp = load_competition(a.comp)
    scores = run(comp, a.file, a.answers)
    print(f"{a.file}: " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()) + f"  (metric: {comp.metric})")


if __name__ == "__main__":
    main()

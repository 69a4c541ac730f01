"""`make score FILE=… ANSWERS=…`: score a submission against an answers CSV (a local holdout such
as math-subjects' test_labels.csv) with the competition's metric, plus macro-F1 and accuracy.

Reads   FILE (shaped like sample_submission.csv), ANSWERS (id + the label column, as indices or names)
Writes  nothing; prints the scores
Run     python -m medalist.stages.score --comp math-subjects --file submission/math-subjects/submission.csv \
            --answers ../shared/competitions/math-subjects/test_labels.csv
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medalist.core import config as C
from medalist.core.competition import Competition, load_competition
from medalist.core.config import UserError, stage_parser
from medalist.core.io import read_csv
from medalist.core.metrics import score, score_labels


def _as_index(comp: Competition, values, what: str) -> np.ndarray:
    names = {n: i for i, n in enumerate(comp.labels)}
    out = []
    for v in values.astype(str).str.strip():
        if v.lstrip("-").isdigit() and 0 <= int(v) < comp.n_classes:
            out.append(int(v))
        elif v in names:
            out.append(names[v])
        else:
            raise UserError(f"{what}: label '{v}' is not in the label space")
    return np.array(out)


def run(comp: Competition, file: Path, answers: Path) -> dict[str, float]:
    s = comp.submission
    sub = read_csv(file, "FILE", dtype=str)
    ans = read_csv(answers, "ANSWERS", dtype=str)
    for df, what, cols in ((sub, "FILE", [s.id_column]), (ans, "ANSWERS", [s.id_column, s.label_column])):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise UserError(f"{what}: missing column(s) {missing}")
    ans = ans.set_index(ans[s.id_column].astype(str))
    ids = sub[s.id_column].astype(str)
    unknown = ids[~ids.isin(ans.index)]
    if len(unknown):
        raise UserError(f"FILE: id '{unknown.iloc[0]}' has no answer in ANSWERS")
    if len(ids) != len(ans):
        raise UserError(f"FILE has {len(ids)} rows, ANSWERS has {len(ans)}: score a complete submission")
    y = _as_index(comp, ans.loc[ids, s.label_column], "ANSWERS")
    if s.format == "probs":
        proba = sub[list(comp.labels)].to_numpy(dtype=float)
        out = {comp.metric: score(comp.metric, y, proba)}
        pred = proba.argmax(axis=1)
    else:
        pred = _as_index(comp, sub[s.label_column], "FILE")
        out = {}
    for m in ("micro_f1", "macro_f1", "accuracy"):
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

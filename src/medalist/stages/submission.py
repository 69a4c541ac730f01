"""`make submission RUN=<run>`: one run's test predictions as a validated submission file.

Reads   results/<comp>/<run>/test.csv + metrics.json, data/raw/<comp>/sample_submission.csv
Writes  submission/<comp>/<run>.csv (or --out) and a sidecar .json {"run", "cv", "metric"}
Run     python -m medalist.stages.submission --comp demo --run tfidf [--out submission/demo/submission.csv]
        (`make all` uses --out submission/<comp>/submission.csv until there is an ensemble)
"""
from __future__ import annotations

from pathlib import Path

from medalist.core import config as C
from medalist.core.competition import load_competition, write_submission
from medalist.core.config import Paths, stage_parser
from medalist.core.io import probs_of, read_run


def run(comp_name: str, run: str, out: Path | None = None) -> Path:
    comp = load_competition(comp_name)
    paths = Paths(comp.name)
    _, test, metrics = read_run(paths.run(run))
    out = Path(out) if out else paths.submission / f"{run}.csv"
    write_submission(comp, paths.raw, test["id"], probs_of(test), out, run, metrics["oof_score"])
    print(f"[{run}] wrote {out} (CV {metrics['metric']} {metrics['oof_score']:.4f})")
    return out


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.submission", __doc__)
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", default=None, help="default: submission/<comp>/<run>.csv")
    a = ap.parse_args(argv)
    run(a.comp, a.run, a.out)


if __name__ == "__main__":
    main()

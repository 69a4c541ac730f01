"""`make predict RUN=<run> [CKPT=dir]`: test-set probabilities recomputed from saved weights.

Reads   results/<comp>/<run>/config.yaml and every fold<k>/ (a finished run), or the one weights
        folder CKPT (a fold<k>/ or a mid-fold checkpoint fold<k>/ckpt/epoch<e>/);
        data/processed/<comp>/test.csv, data/raw/<comp>/sample_submission.csv
Writes  results/<comp>/<run>/predict_test.csv (id, p_0…), submission/<comp>/<run>.csv (validated)
        and its sidecar .json (run, cv, metric) for `make submit`'s ledger
Run     python -m medalist.stages.predict --comp demo --run minilm [--ckpt results/demo/minilm/fold0]

Unlike `make submission`, which reuses the test.csv that training wrote, this runs inference: new
test data, a checkpoint from an unfinished run, or a check that saved weights reproduce training.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medalist.core import config as C
from medalist.core.competition import load_competition, write_submission
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.io import proba_frame, read_json, read_processed, write_csv
from medalist.core.progress import progress
from medalist.models.registry import load_run_predictor


def run(comp_name: str, run: str, ckpt: str | Path | None = None) -> Path:
    comp = load_competition(comp_name)
    paths = Paths(comp.name)
    run_dir = paths.run(run)
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"no run '{run}' in {paths.results}: train it first (make train MODELS={run})")
    _, test = read_processed(paths)
    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else None
    if ckpt is not None:
        ckpt = Path(ckpt)
        if not ckpt.is_dir():
            raise UserError(f"CKPT={ckpt}: not a folder")
        predictors = [load_run_predictor(run_dir, 0, comp.n_classes, weights_dir=ckpt)]
        source = str(ckpt)
    else:
        if metrics is None:
            raise UserError(f"run '{run}' is not finished (no metrics.json): finish `make train`, "
                            f"or give one fold's weights with CKPT=")
        folds = sorted(int(p.parent.name[4:]) for p in run_dir.glob("fold*/done.json"))
        predictors = [load_run_predictor(run_dir, k, comp.n_classes) for k in folds]
        source = f"{len(folds)} folds"
    print(f"[{run}] predicting {len(test)} test rows from {source}", flush=True)
    proba = np.mean([p(test) for p in progress(predictors, desc=f"[{run}] predicting", unit="fold",
                                               disable=len(predictors) < 2)], axis=0)
    write_csv(run_dir / "predict_test.csv", proba_frame(test["id"], proba))
    # the run's OOF score describes the fold average only; one checkpoint has no CV of its own
    cv = metrics["oof_score"] if metrics is not None and ckpt is None else None
    sub_path = write_submission(comp, paths.raw, test["id"], proba, paths.submission / f"{run}.csv", run, cv)
    print(f"[{run}] wrote {run_dir / 'predict_test.csv'} and {sub_path}")
    return sub_path


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.predict", __doc__)
    ap.add_argument("--run", required=True)
    ap.add_argument("--ckpt", default=None, help="one weights folder instead of every fold's")
    a = ap.parse_args(argv)
    run(a.comp, a.run, a.ckpt)


if __name__ == "__main__":
    main()

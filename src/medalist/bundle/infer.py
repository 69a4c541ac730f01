"""The one inference path of a code competition: a competition folder in Kaggle's layout and a
bundle's artifacts folder → a validated submission.csv. The kernel Kaggle reruns, `make rerun`
and `make bundle` (which checks it against the local submission) all call `predict`.

Reads   <input>/ — test.csv (or the test image folder), sample_submission.csv, the test images;
        <artifacts>/ — bundle.json (the competition config, each run's folds and TTA views, the
        ensemble's facts), runs/<run>/config.yaml + fold<k>/, ensemble/model.joblib
        (+ exact_match.csv where the ensemble applies exact matches)
Writes  <out> (submission.csv) and <out>.probs.csv (id, p_0…: the blended probabilities, so a
        rerun can be compared within 1e-4 even where the format holds labels)
Run     python -m medalist.bundle.infer --input /kaggle/input/<comp> --artifacts <dir> --out submission.csv

Per run: the same cleaning as `make folds` (stages.folds.prepare), every fold model's
probabilities averaged, then the run's chosen TTA views (stages.tta.test_tta). Then the
ensemble's fitted method and decision rule (stages.ensemble.predict_model) and its exact-match
rule. No step looks at another test row: each row's prediction is the same whatever else the
hidden test holds and in whatever order (ranks are taken against the fitted rows, TTA views are
seeded by the text).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from medalist.core import config as C
from medalist.core.config import UserError


class Clock:
    """Prints each step's time ("[infer] 12.3 s  tfidf: 5 folds on 500 rows")."""

    def __init__(self) -> None:
        self.t0 = self.last = time.time()

    def step(self, what: str) -> None:
        now = time.time()
        print(f"[infer] {now - self.last:7.1f} s  {what}", flush=True)
        self.last = now


def load_manifest(artifacts: Path) -> dict:
    from medalist.core.io import read_json

    path = Path(artifacts) / "bundle.json"
    if not path.exists():
        raise UserError(f"{artifacts}: no bundle.json — not a bundle's artifacts folder (make bundle writes one)")
    return read_json(path)


def competition(manifest: dict, where: str):
    from medalist.core.competition import Competition

    return C.from_dict(Competition, manifest["competition"], where)


def run_proba(run_dir: Path, info: dict, n_classes: int, test) -> np.ndarray:
    """One run's test probabilities: the mean of its fold models, then its chosen TTA views."""
    from medalist.models.registry import family_module, load_run_predictor
    from medalist.stages import tta

    predictors = [load_run_predictor(run_dir, k, n_classes) for k in info["folds"]]
    plain = np.mean([p(test) for p in predictors], axis=0)
    views = info.get("tta_views") or []
    if not views:
        return plain
    model_dict = C.load_yaml(run_dir / "config.yaml")["model"]
    model = C.from_dict(family_module(model_dict["family"]).Config, model_dict, f"{run_dir}/config.yaml")
    cfg = C.from_dict(tta.TTAConfig, info["tta_config"], f"{run_dir}: tta config")
    return tta.test_tta(run_dir, model, cfg, views, predictors, test, plain)


def blend(artifacts: Path, manifest: dict, comp, test, clock: Clock | None = None) -> np.ndarray:
    """The ensemble's probabilities for `test` (prepared rows), from the bundled runs."""
    import joblib
    import pandas as pd

    from medalist.stages.ensemble import apply_exact, predict_model

    ens = joblib.load(Path(artifacts) / "ensemble" / "model.joblib")
    K = comp.n_classes
    per_run = []
    for r in ens["runs"]:
        info = manifest["runs"].get(r)
        if info is None:  # weight 0 in the blend: left out of the bundle, its column is never read
            per_run.append(np.zeros((len(test), K)))
            continue
        per_run.append(run_proba(Path(artifacts) / "runs" / r, info, K, test))
        if clock:
            clock.step(f"{r}: {len(info['folds'])} folds"
                       f"{' + TTA ' + ','.join(info['tta_views']) if info.get('tta_views') else ''} on {len(test)} rows")
    proba = predict_model(ens["model"], np.stack(per_run))
    exact = Path(artifacts) / "ensemble" / "exact_match.csv"
    if exact.exists() and "text" in test.columns:
        from medalist.core.io import read_csv

        t = read_csv(exact, "exact_match.csv", dtype={"text": str})
        matched = apply_exact(pd.Series(t["label"].astype(int).to_numpy(), index=t["text"]), test, proba, K)
        if clock:
            clock.step(f"exact matches: {matched} test rows take their train text's label")
    return proba


def predict(input_dir: Path, artifacts: Path, out: Path) -> Path:
    from medalist.core.competition import make_submission, read_test, validate_submission
    from medalist.core.io import proba_frame, write_csv
    from medalist.stages.folds import prepare

    clock = Clock()
    input_dir, artifacts, out = Path(input_dir), Path(artifacts), Path(out)
    if not input_dir.is_dir():
        raise UserError(f"--input {input_dir}: not a folder")
    manifest = load_manifest(artifacts)
    comp = competition(manifest, f"{artifacts}/bundle.json")
    if comp.inputs.image is not None:
        from medalist.image.decode import limit_pixels

        limit_pixels(comp.inputs.image.max_pixels)
    test, sample = read_test(comp, input_dir)
    prepare(test, comp, input_dir, None)
    clock.step(f"read {len(test)} test rows from {input_dir}")
    proba = blend(artifacts, manifest, comp, test, clock)
    sub = make_submission(comp, sample, test["id"], proba)
    validate_submission(comp, sample, sub)
    write_csv(out.with_name(out.name + ".probs.csv"), proba_frame(test["id"], proba))
    write_csv(out, sub)
    clock.step(f"wrote {out} ({len(sub)} rows, validated against {comp.files.sample_submission})")
    print(f"[infer] total {time.time() - clock.t0:.1f} s for {len(test)} rows "
          f"({len(test) / max(time.time() - clock.t0, 1e-9):.1f} rows/s)", flush=True)
    return out


@C.cli
def main(argv: list[str] | None = None) -> None:
    from medalist.core.runtime import configure_threads

    configure_threads()
    ap = argparse.ArgumentParser(prog="python -m medalist.bundle.infer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="the competition's files in Kaggle's layout")
    ap.add_argument("--artifacts", required=True, help="a bundle's artifacts folder")
    ap.add_argument("--out", required=True, help="the submission file to write")
    a = ap.parse_args(argv)
    predict(Path(a.input), Path(a.artifacts), Path(a.out))


if __name__ == "__main__":
    main()

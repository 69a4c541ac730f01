"""`make bench`, part quality: test micro/macro-F1 of every finished run (plain, TTA, +gen) and of
the ensembles with and without TTA and USE_GEN, next to the references (majority class,
bench/tfidf_baseline.py, bench/trainer_baseline.py), scored against the competition's answers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.core import config as C
from medalist.core.io import probs_of, read_json, write_json
from medalist.core.metrics import score_labels
from processes import BENCH, REPO, child_env, digest, run_child

REFERENCE_TFIDF = 0.762  # SOURCE.md's figure for the plain TF-IDF reference on math-subjects


class Answers:
    """test_labels.csv as integer labels by id."""

    def __init__(self, comp, path: Path):
        self.path = path
        df = pd.read_csv(path, dtype=str)
        col = comp.submission.label_column
        index = {n: i for i, n in enumerate(comp.labels)}
        self.comp = comp
        self.y = pd.Series([int(v) if v.strip().isdigit() else index[v] for v in df[col]],
                           index=df[comp.submission.id_column].astype(str))

    def score_proba(self, csv: Path) -> dict[str, float]:
        """Argmax of a test.csv (id, p_0…) — what `make submission RUN=…` would submit."""
        df = pd.read_csv(csv, dtype={"id": str})
        return self.score_pred(df["id"], probs_of(df).argmax(axis=1))

    def score_pred(self, ids, pred) -> dict[str, float]:
        y = self.y.loc[pd.Index(ids).astype(str)].to_numpy()
        return {m: score_labels(m, y, pred) for m in ("micro_f1", "macro_f1")}

    def score_submission(self, csv: Path) -> dict[str, float]:
        from medalist.stages import score

        out = score.run(self.comp, csv, self.path)
        return {m: out[m] for m in ("micro_f1", "macro_f1")}


def run_entry(answers: Answers, d: Path) -> dict:
    m = read_json(d / "metrics.json")
    entry = {"test": answers.score_proba(d / "test.csv"), "oof_score": m.get("oof_score"),
             "train_seconds": m.get("train_seconds"), "predict_seconds": m.get("predict_seconds"),
             "peak_rss_mb": m.get("peak_rss_mb"), "peak_gpu_mb": m.get("peak_gpu_mb"),
             "train_samples_per_s": m.get("train_samples_per_s"), "device": m.get("device")}
    if "gain" in m:
        entry["oof_gain"], entry["used"] = m["gain"], m.get("use_tta")
    return entry


def ensemble_variant(comp, runs: list[str], tta: bool, work: Path) -> Path | None:
    """medalist.stages.ensemble over `runs` in a scratch root (symlinks to data/ and the runs): its submission."""
    res = C.root() / "results" / comp.name
    files = [res / r / ("tta" if tta else "") / "metrics.json" for r in runs]
    if not all(f.exists() for f in files):
        return None
    src = REPO / "src" / "medalist" / "stages" / "ensemble.py"
    key = digest(*files, src, C.configs_dir() / "ensemble.yaml", runs, tta)
    scratch = work / "ensembles" / f"{'+'.join(runs)}{'-tta' if tta else ''}-{key}"
    sub = scratch / "submission" / comp.name / "submission.csv"
    if not (scratch / "results" / comp.name / "ensemble" / "metrics.json").exists():
        (scratch / "results" / comp.name).mkdir(parents=True, exist_ok=True)
        for name, target in [(scratch / "data", C.root() / "data"),
                             *[(scratch / "results" / comp.name / r, res / r) for r in runs]]:
            if not name.is_symlink():
                name.symlink_to(target.resolve(), target_is_directory=True)
        cmd = [sys.executable, "-m", "medalist.stages.ensemble", "--comp", comp.name, "--runs", " ".join(runs)]
        proc = run_child(cmd + (["--tta"] if tta else []), scratch / "ensemble.log",
                         child_env(MEDALIST_ROOT=str(scratch), MEDALIST_CONFIGS=str(C.configs_dir())))
        write_json(scratch / "process.json", proc)
    return sub


def trainer_full(args, data: dict, work: Path) -> dict | None:
    """The plain Trainer trained on all of train.csv, cached by script, config and data."""
    script = BENCH / "trainer_baseline.py"
    out = work / f"trainer-full-{digest(script, args.model_config, data['train'], data['test'])}"
    if not (out / "metrics.json").exists():
        if args.skip_trainer_fit:
            print(f"note: --skip-trainer-fit and no cached run in {out}: trainer_test_micro_f1 stays empty")
            return None
        proc = run_child([sys.executable, str(script), "--train-csv", str(data["train"]), "--test-csv",
                          str(data["test"]), "--model-config", str(args.model_config), "--out", str(out),
                          *data["columns"]], out.with_suffix(".log"))
        write_json(out / "process.json", proc)
    return {**read_json(out / "metrics.json"), **read_json(out / "process.json"), "dir": str(out)}


def part_quality(args, comp, data: dict, work: Path) -> dict:
    answers = Answers(comp, data["answers"])
    res = C.root() / "results" / comp.name
    runs: dict[str, dict] = {}
    for name in args.runs + [r + "+gen" for r in args.runs]:
        d = res / name
        if (d / "metrics.json").exists():
            runs[name] = run_entry(answers, d)
            if (d / "tta" / "metrics.json").exists():
                runs[name]["tta"] = run_entry(answers, d / "tta")
        elif "+gen" not in name:
            print(f"note: no finished run {d} (make all COMP={comp.name} MODELS=…): left out")

    ensembles = {}
    for label, names in (("plain", args.runs), ("USE_GEN=1", [r + "+gen" for r in args.runs]),
                         ("plain + USE_GEN=1", args.runs + [r + "+gen" for r in args.runs])):
        for tta in (False, True):
            sub = ensemble_variant(comp, names, tta, work)
            if sub is not None:
                scratch = sub.parents[2]
                m = read_json(scratch / "results" / comp.name / "ensemble" / "metrics.json")
                proc = read_json(scratch / "process.json")
                ensembles[f"{label}{' + TTA' if tta else ''}"] = {
                    "runs": names, "tta": tta, "test": answers.score_submission(sub),
                    "oof_score": m["oof_score"], "method": m["method"], "seconds": proc["wall_seconds"],
                    "peak_rss_mb": proc["peak_rss_mb"]}

    train = pd.read_csv(data["train"])
    test = pd.read_csv(data["test"])
    majority = int(train[comp.label_column].value_counts().idxmax())
    refs = {"majority class": {"test": answers.score_pred(test[comp.id_column], np.full(len(test), majority))}}
    tf_out = work / f"tfidf-ref-{digest(BENCH / 'tfidf_baseline.py', data['train'], data['test'])}"
    if not (tf_out / "metrics.json").exists():
        proc = run_child([sys.executable, str(BENCH / "tfidf_baseline.py"), "--train-csv", str(data["train"]),
                          "--test-csv", str(data["test"]), "--out", str(tf_out), *data["columns"]],
                         tf_out.with_suffix(".log"))
        write_json(tf_out / "process.json", proc)
    refs["tfidf (bench/tfidf_baseline.py)"] = {"test": answers.score_proba(tf_out / "test.csv"),
                                               **read_json(tf_out / "metrics.json"), **read_json(tf_out / "process.json")}
    tr = trainer_full(args, data, work)
    if tr is not None:
        refs["HF Trainer (bench/trainer_baseline.py)"] = {"test": answers.score_proba(Path(tr["dir"]) / "test.csv"), **tr}

    singles = [(n, e["test"]["micro_f1"]) for n, e in runs.items()] + \
              [(n + " + TTA", e["tta"]["test"]["micro_f1"]) for n, e in runs.items() if "tta" in e]
    main_ens = ensembles.get("plain + TTA") or ensembles.get("plain")
    trainer = refs.get("HF Trainer (bench/trainer_baseline.py)")
    return {
        "runs": runs, "ensembles": ensembles, "references": refs,
        "ensemble_test_micro_f1": main_ens["test"]["micro_f1"] if main_ens else None,
        "ensemble_variant": next((k for k, v in ensembles.items() if v is main_ens), None),
        "best_single_test_micro_f1": max((s for _, s in singles), default=None),
        "best_single_run": max(singles, key=lambda t: t[1])[0] if singles else None,
        "tfidf_test_micro_f1": refs["tfidf (bench/tfidf_baseline.py)"]["test"]["micro_f1"],
        "trainer_test_micro_f1": trainer["test"]["micro_f1"] if trainer else None,
    }

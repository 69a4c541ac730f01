"""`make bench`, part quality: test micro/macro-F1 of every finished run (plain, TTA, +gen) and of
the ensembles with and without TTA and USE_GEN, next to the references (majority class,
bench/tfidf_baseline.py, bench/trainer_baseline.py), scored against the competition's answers.
Ablations: each technique of ABLATIONS alone (its run in results/<comp>/, finished on every fold
or on some folds only, `make train … FOLDS=0`) with its training seconds, and the ensemble of all
of them that finished on every fold.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from medalist.core import config as C
from medalist.core.io import probs_of, read_json, write_json
from medalist.core.metrics import score_labels
from processes import BENCH, REPO, child_env, digest, run_child

REFERENCE_TFIDF = 0.762  # SOURCE.md's figure for the plain TF-IDF reference on math-subjects
NEURAL = ("encoder", "decoder_lora")  # the fine-tuned transformer families (best_neural_test_micro_f1)
# Issue #12's techniques, each alone: (what, the run that measures it, how to make it). A run
# finished on every fold is read from its metrics.json; one trained on some folds only from
# those folds (the table says which, and any max_train_rows cap).
ABLATIONS = (
    ("TF-IDF + logistic regression", "tfidf", "make train MODELS=tfidf"),
    ("cheap member: TF-IDF + linear SVM", "tfidf-svm", "make train MODELS=tfidf-svm"),
    ("cheap member: NB-SVM", "tfidf-nbsvm", "make train MODELS=tfidf-nbsvm"),
    ("cheap member: TF-IDF + SGD", "tfidf-sgd", "make train MODELS=tfidf-sgd"),
    ("pseudo-labels", "tfidf-sgd+pseudo",
     "make pseudo RUN='tfidf minilm' && make train MODELS=tfidf-sgd GEN=pseudo"),
    ("pseudo-labels, MiniLM student", "minilm+pseudo",
     "make pseudo RUN='tfidf embed minilm-dapt' && make train MODELS=minilm+pseudo FOLDS=0"),
    ("MiniLM fine-tune (CPU defaults)", "minilm", "make train MODELS=minilm FOLDS=0"),
    ("seed averaging (minilm, 3 seeds)", "minilm-3seeds", "make train MODELS=minilm-3seeds FOLDS=0"),
    ("in-domain pretraining (minilm-dapt)", "minilm-dapt", "make pretrain MODEL=minilm && make train MODELS=minilm-dapt FOLDS=0"),
    ("pseudo-labels, in-domain MiniLM student", "minilm-dapt+pseudo",
     "make all MODELS='tfidf embed minilm-dapt minilm-dapt+pseudo'"),
)


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


def run_config(d: Path) -> dict:
    """The run's resolved config.yaml (written by every `make train`), {} when absent."""
    f = d / "config.yaml"
    return (yaml.safe_load(f.read_text()) or {}) if f.exists() else {}


def fold_entry(answers: Answers, d: Path, n_folds: int) -> dict | None:
    """A run trained on some folds only: the folds finished under its current config.yaml (the
    hash train.py stamps into done.json), their validation score (mean), their mean test
    probabilities scored, their seconds. None when no fold is finished."""
    resolved = run_config(d)
    key = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]
    dones = [read_json(f) for f in sorted(d.glob("fold*/done.json"))]
    dones = [m for m in dones if m.get("config_hash") == key and (d / f"fold{m['fold']}" / "test.csv").exists()]
    if not resolved or not dones:
        return None
    tests = [pd.read_csv(d / f"fold{m['fold']}" / "test.csv", dtype={"id": str}).set_index("id") for m in dones]
    ids = tests[0].index
    proba = np.mean([probs_of(t.loc[ids]) for t in tests], axis=0)
    folds = sorted(m["fold"] for m in dones)
    return {"test": answers.score_pred(ids, proba.argmax(axis=1)),
            "oof_score": float(np.mean([m["score"] for m in dones])),
            "train_seconds": float(sum(m["seconds"] for m in dones)),
            "predict_seconds": float(sum(m["info"].get("predict_seconds", 0.0) for m in dones)),
            "peak_rss_mb": max(m.get("peak_rss_mb") or 0.0 for m in dones),
            "folds": folds, "n_train": [m.get("n_train") for m in dones],
            "measured_on": (f"fold{'s' if len(folds) > 1 else ''} {','.join(map(str, folds))} of {n_folds}, "
                            f"{'/'.join(str(m.get('n_train')) for m in dones)} train rows"
                            f"{' (max_train_rows cap)' if (resolved.get('model') or {}).get('max_train_rows') else ''}")}


def teachers(d: Path) -> str:
    """' (teacher a + b)' for a run trained on pseudo rows (the source its metrics.json or its folds'
    done.json name: pseudo:<teacher runs>), '' for any other."""
    files = [d / "metrics.json"] if (d / "metrics.json").exists() else sorted(d.glob("fold*/done.json"))
    for f in files:
        gen = read_json(f).get("n_generated") or []
        for src in ([g for part in gen for g in part] if isinstance(gen, list) else list(gen)):
            if str(src).startswith("pseudo:"):
                return f" (teacher {' + '.join(src.split(':', 1)[1].split(','))})"
    return ""


def measured_on(entry: dict, resolved: dict, n_folds: int) -> str:
    if "measured_on" in entry:
        return entry["measured_on"]
    cap = (resolved.get("model") or {}).get("max_train_rows")
    return f"all {n_folds} folds" + (f", at most {cap} train rows a fold" if cap else "")


def carried(previous: dict | None, stamp: dict | None) -> str:
    """Where a figure kept from the last results.json was measured."""
    s = stamp or {}
    return f"measured at git {s.get('git_sha', '?')}, {s.get('date', '?')}; its run is not in results/ now"


def ablations(answers: Answers, comp, work: Path, previous: dict | None = None, stamp: dict | None = None) -> dict:
    """One row per technique of ABLATIONS, and the ensemble of those finished on every fold
    (medalist.stages.ensemble, no TTA). A technique whose run is not there now keeps the row the
    last results.json had for that run (saying where it was measured), or is "not measured" with
    the command that makes it: a bench on a fresh checkout never erases a measurement it cannot redo.
    A run trained on some folds only now does not replace a row measured on all of them either."""
    res = C.root() / "results" / comp.name
    n_folds = comp.folds.n
    before = {e["run"]: (what, e) for what, e in ((previous or {}).get("rows") or {}).items() if e.get("measured")}
    rows, full = {}, []
    for what, run, how in ABLATIONS:
        d = res / run
        entry = run_entry(answers, d) if (d / "metrics.json").exists() else fold_entry(answers, d, n_folds)
        # some folds of a run now never replace the last results.json's figures of all of them
        partial = entry is not None and "folds" in entry and run in before and "folds" not in before[run][1]
        if run in before and (entry is None or partial):
            old_what, old = before[run]
            note = old.get("carried") or carried(previous, stamp)
            if partial:
                note = note.replace("its run is not in results/ now",
                                    f"results/ now holds fold{'s' if len(entry['folds']) > 1 else ''} "
                                    f"{','.join(map(str, entry['folds']))} of it only")
            rows[old_what] = {**old, "carried": note, "measured_on": f"{old['measured_on'].split(' (measured at')[0]} ({note})"}
            continue
        if entry is None:
            rows[what] = {"run": run, "measured": False, "how": f"{how} COMP={comp.name}"}
            continue
        resolved = run_config(d)
        entry.update(run=run, measured=True, family=(resolved.get("model") or {}).get("family"),
                     measured_on=measured_on(entry, resolved, n_folds))
        rows[what + teachers(d)] = entry
        if "folds" not in entry:
            full.append(run)
    ens = None
    sub = ensemble_variant(comp, full, False, work) if len(full) > 1 else None
    if sub is not None and sub.exists():
        scratch = sub.parents[2]
        m = read_json(scratch / "results" / comp.name / "ensemble" / "metrics.json")
        ens = {"runs": full, "test": answers.score_submission(sub), "oof_score": m["oof_score"], "method": m["method"],
               "seconds": read_json(scratch / "process.json")["wall_seconds"],
               "train_seconds": sum(e["train_seconds"] or 0.0 for e in rows.values() if e.get("run") in full)}
    # the last ensemble of all of them stays beside a new one that lacks some of its runs
    kept = [e for e in [(previous or {}).get("ensemble"), *((previous or {}).get("ensembles_before") or [])] if e]
    before_ens = [{**e, "carried": e.get("carried") or carried(previous, stamp).replace("its run is", "some of its runs are")}
                  for e in kept if not (ens and set(e["runs"]) <= set(ens["runs"]))]
    return {"rows": rows, "ensemble": ens or (before_ens.pop(0) if before_ens else None), "ensembles_before": before_ens}


def neural_candidates(answers: Answers, runs: dict, ablation_rows: dict, res: Path, n_folds: int) -> list:
    """(run, entry) for every fine-tuned transformer the bench scored: the finished runs, the ablation
    rows, and fold 0's model alone of each finished run (one model, its own training seconds: the
    like-for-like rival of the plain Trainer's one model)."""
    cands = [(n, e) for n, e in runs.items() if (run_config(res / n).get("model") or {}).get("family") in NEURAL]
    cands += [(e["run"], e) for e in ablation_rows.values() if e.get("measured") and e.get("family") in NEURAL]
    for name, e in list(cands):
        done, test = res / name / "fold0" / "done.json", res / name / "fold0" / "test.csv"
        if "folds" in e or not (done.exists() and test.exists()):
            continue
        m = read_json(done)
        cands.append((name, {"test": answers.score_proba(test), "oof_score": m.get("score"),
                             "train_seconds": m.get("seconds"),
                             "measured_on": f"fold 0's model alone (of {n_folds}), {m.get('n_train')} train rows"}))
    return cands


def best_neural(cands: list, max_seconds: float | None = None) -> tuple[str | None, dict | None]:
    """The best by test micro-F1 among the candidates (those trained in at most max_seconds, if given)."""
    if max_seconds is not None:
        cands = [(n, e) for n, e in cands if (e.get("train_seconds") or float("inf")) <= max_seconds]
    if not cands:
        return None, None
    return max(cands, key=lambda t: t[1]["test"]["micro_f1"])


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


def scored_runs(answers: Answers, comp, names: list[str], previous: dict | None = None,
                stamp: dict | None = None) -> dict[str, dict]:
    """Each finished run of `names` (and its +gen twin, its TTA) scored. One gone from results/ that
    the last results.json scored keeps that figure, marked with where it was measured."""
    res = C.root() / "results" / comp.name
    runs: dict[str, dict] = {}
    for name in names + [r + "+gen" for r in names]:
        d = res / name
        if (d / "metrics.json").exists():
            runs[name] = run_entry(answers, d)
            if (d / "tta" / "metrics.json").exists():
                runs[name]["tta"] = run_entry(answers, d / "tta")
        elif name in ((previous or {}).get("runs") or {}):
            old = previous["runs"][name]
            runs[name] = {**old, "carried": old.get("carried") or carried(previous, stamp)}
        elif "+gen" not in name:
            print(f"note: no finished run {d} (make all COMP={comp.name} MODELS=…): left out")
    return runs


def scored_ensembles(answers: Answers, comp, names: list[str], runs: dict, work: Path, previous: dict | None = None,
                     stamp: dict | None = None) -> dict[str, dict]:
    """The ensembles of `names` (plain, +gen, both; with and without TTA) made and scored. One that
    cannot be made because a run of it is gone from results/ keeps the last results.json's figure
    for the same runs, marked."""
    ensembles = {}
    for label, members in (("plain", names), ("USE_GEN=1", [r + "+gen" for r in names]),
                           ("plain + USE_GEN=1", names + [r + "+gen" for r in names])):
        for tta in (False, True):
            key = f"{label}{' + TTA' if tta else ''}"
            sub = ensemble_variant(comp, members, tta, work)
            if sub is not None:
                scratch = sub.parents[2]
                m = read_json(scratch / "results" / comp.name / "ensemble" / "metrics.json")
                proc = read_json(scratch / "process.json")
                ensembles[key] = {
                    "runs": members, "tta": tta, "test": answers.score_submission(sub),
                    "oof_score": m["oof_score"], "method": m["method"], "seconds": proc["wall_seconds"],
                    "peak_rss_mb": proc["peak_rss_mb"]}
                continue
            old = ((previous or {}).get("ensembles") or {}).get(key)
            if (old and old["runs"] == members and all(n in runs for n in members)
                    and any(runs[n].get("carried") for n in members)):
                ensembles[key] = {**old, "carried": old.get("carried") or
                                  carried(previous, stamp).replace("its run is", "some of its runs are")}
    return ensembles


def made_ensemble(answers: Answers, comp, members: list[str], work: Path) -> dict:
    """The ensemble of these finished runs (with TTA where each has it), made in a scratch root, scored."""
    res = C.root() / "results" / comp.name
    tta = all((res / r / "tta" / "metrics.json").exists() for r in members)
    sub = ensemble_variant(comp, members, tta, work)
    scratch = sub.parents[2]
    m = read_json(scratch / "results" / comp.name / "ensemble" / "metrics.json")
    proc = read_json(scratch / "process.json")
    return {"runs": members, "tta": tta, "test": answers.score_submission(sub), "oof_score": m["oof_score"],
            "method": m["method"], "seconds": proc["wall_seconds"], "peak_rss_mb": proc["peak_rss_mb"],
            "train_seconds": sum(read_json(res / r / "metrics.json").get("train_seconds") or 0.0
                                 for r in members) or None}


def default_ensemble(answers: Answers, comp, ensembles: dict, work: Path, previous: dict | None = None,
                     stamp: dict | None = None) -> dict | None:
    """The ensemble of the competition's default MODELS (what a plain `make all` makes), with TTA
    where each of its runs has it, beside the bench's own runs: made when its runs are all finished
    in results/, else the last results.json's figure for the same runs (as the default or as the
    bench's main ensemble), marked; None when never measured."""
    members = list(comp.default_models)
    found = [e for e in ensembles.values() if e["runs"] == members and not e.get("carried")]
    if found:
        return next((e for e in found if e["tta"]), found[0])
    res = C.root() / "results" / comp.name
    if all((res / r / "metrics.json").exists() for r in members):
        return made_ensemble(answers, comp, members, work)
    prev = previous or {}
    olds = [prev.get("default_ensemble"), *[(prev.get("ensembles") or {}).get(k) for k in ("plain + TTA", "plain")]]
    old = next((e for e in olds if e and e["runs"] == members), None)
    if old is None:
        return None
    note = old.get("carried") or carried(previous, stamp).replace("its run is", "some of its runs are")
    train = old.get("train_seconds") or sum(((prev.get("runs") or {}).get(r) or {}).get("train_seconds") or 0.0
                                            for r in members) or None
    return {**old, "carried": note, "train_seconds": train}


def pretrain_seconds(comp, names: list[str], previous: dict | None = None) -> dict[str, float]:
    """The in-domain pretraining the runs of `names` stand on (a `backbone: pretrain:<name>`),
    each counted once: its done.json seconds, or the last results.json's when it is gone."""
    from medalist.models.backbones import PRETRAINED

    res = C.root() / "results" / comp.name
    out = {}
    for name in names:
        backbone = str((run_config(res / name).get("model") or {}).get("backbone") or "")
        if not backbone.startswith(PRETRAINED):
            continue
        cfg = backbone[len(PRETRAINED):]
        done = res / "pretrain" / cfg / "done.json"
        old = ((previous or {}).get("pretrain_seconds") or {}).get(cfg)
        if done.exists():
            out[cfg] = float(read_json(done)["seconds"])
        elif old is not None:
            out[cfg] = old
    return out


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


def part_quality(args, comp, data: dict, work: Path, previous: dict | None = None, stamp: dict | None = None) -> dict:
    """previous / stamp: the last results.json's quality part and where it was measured (figures
    whose inputs are gone from results/ are kept from it, marked)."""
    answers = Answers(comp, data["answers"])
    runs = scored_runs(answers, comp, args.runs, previous, stamp)
    ensembles = scored_ensembles(answers, comp, args.runs, runs, work, previous, stamp)
    default = default_ensemble(answers, comp, ensembles, work, previous, stamp)
    pretrain = pretrain_seconds(comp, list(runs), previous)

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
    trainer_key = "HF Trainer (bench/trainer_baseline.py)"
    if tr is not None:
        refs[trainer_key] = {"test": answers.score_proba(Path(tr["dir"]) / "test.csv"), **tr}
    elif trainer_key in ((previous or {}).get("references") or {}):
        old = previous["references"][trainer_key]
        refs[trainer_key] = {**old, "carried": old.get("carried") or carried(previous, stamp).replace("its run", "its cache")}

    singles = [(n, e["test"]["micro_f1"]) for n, e in runs.items()] + \
              [(n + " + TTA", e["tta"]["test"]["micro_f1"]) for n, e in runs.items() if "tta" in e]
    main_ens = ensembles.get("plain + TTA") or ensembles.get("plain")
    trainer = refs.get("HF Trainer (bench/trainer_baseline.py)")
    abl = ablations(answers, comp, work, (previous or {}).get("ablations"), stamp)
    cands = neural_candidates(answers, runs, abl["rows"], C.root() / "results" / comp.name, comp.folds.n)
    neural_run, neural = best_neural(cands)
    rival_run, rival = best_neural(cands, trainer["train_seconds"] if trainer else None)
    at_cost = ({"run": rival_run, "test_micro_f1": rival["test"]["micro_f1"], "train_seconds": rival["train_seconds"],
                "measured_on": rival.get("measured_on")} if rival and trainer else None)
    old_cost = (previous or {}).get("neural_at_trainer_cost")
    if trainer and trainer.get("carried") and old_cost:
        # the Trainer's seconds are from the bench that trained it: its rival is that bench's too
        at_cost = {**old_cost, "measured_on": f"{(old_cost.get('measured_on') or 'all folds').split(' (measured at')[0]} "
                                              f"({trainer['carried'].split(';')[0]}, as the Trainer)"}
    return {
        "runs": runs, "ensembles": ensembles, "references": refs, "ablations": abl, "default_ensemble": default,
        # the quality part's training: every run scored above (all folds), the pretraining they stand
        # on and the references the bench trains itself
        "pretrain_seconds": pretrain,
        "reference_train_seconds": sum(e.get("train_seconds") or 0.0 for e in refs.values()),
        "train_hours": (sum(e.get("train_seconds") or 0.0 for e in runs.values()) + sum(pretrain.values())
                        + sum(e.get("train_seconds") or 0.0 for e in refs.values())) / 3600,
        "ensemble_test_micro_f1": main_ens["test"]["micro_f1"] if main_ens else None,
        "ensemble_test_macro_f1": main_ens["test"]["macro_f1"] if main_ens else None,
        "best_neural_test_micro_f1": neural["test"]["micro_f1"] if neural else None,
        "best_neural_run": neural_run,
        "best_neural_train_seconds": neural["train_seconds"] if neural else None,
        "best_neural_measured_on": neural.get("measured_on") if neural else None,
        # the goal "≥ the plain Trainer at no more training time": the best within the Trainer's seconds
        "neural_at_trainer_cost": at_cost,
        "ensemble_variant": next((k for k, v in ensembles.items() if v is main_ens), None),
        "best_single_test_micro_f1": max((s for _, s in singles), default=None),
        "best_single_run": max(singles, key=lambda t: t[1])[0] if singles else None,
        "tfidf_test_micro_f1": refs["tfidf (bench/tfidf_baseline.py)"]["test"]["micro_f1"],
        "trainer_test_micro_f1": trainer["test"]["micro_f1"] if trainer else None,
    }

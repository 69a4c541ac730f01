"""`make bench`: medalist's score, speed, memory and cost growth against plain references.

Parts (--parts, default all):
  quality  test micro/macro-F1 of every finished run in results/<comp>/ (plain, TTA, +gen), of the
           ensemble with and without TTA and USE_GEN, next to the references: majority class,
           bench/tfidf_baseline.py (SOURCE.md's figure) and bench/trainer_baseline.py (a plain HF
           Trainer fine-tune of the same backbone and hyperparameters, trained on all of train.csv).
           The runs are make's own targets (the Makefile's `bench` recipe builds them first); the
           ensembles are medalist.stages.ensemble run in a scratch root beside them, so the committed
           results/<comp>/ensemble/ is left alone. Everything is cached under results/<comp>/bench/,
           keyed by its inputs: a rerun reuses it.
  speed    A/B, alternating medalist (bench/medalist_steps.py: encoder.fit_fold on steps × batch
           rows) and the Trainer script (--max-steps) on the same rows, each its own process;
           medians of --repeats; training samples/s, inference texts/s, tokenisation time, peak RSS
           (and peak GPU memory, bf16, on CUDA).
  growth   training and inference time against data size: TF-IDF measured at each size, the neural
           models' training extrapolated from the speed part's medians, medalist's inference
           measured at each size through load_predictor; a table and bench/growth.png.

Reads   results/<comp>/…, --comp-dir (train.csv, test.csv, test_labels.csv), configs/models/<model>.yaml
Writes  bench/results.json (merged: a part not run keeps its previous figures), BENCHMARKS.md,
        bench/growth.png, scratch and caches under results/<comp>/bench/
Run     python bench/run_bench.py --comp math-subjects --comp-dir ../shared/competitions/math-subjects \
            --runs "tfidf embed minilm" [--quick] [--parts speed,growth]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.core import config as C
from medalist.core.competition import load_competition
from medalist.core.config import UserError
from medalist.core.io import probs_of, read_json, write_json, write_text
from medalist.core.metrics import score_labels

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
REFERENCE_TFIDF = 0.762  # SOURCE.md's figure for the plain TF-IDF reference on math-subjects


# ---------------------------------------------------------------- processes


def run_child(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    """Run one process to the end: its wall time and the peak RSS of it and its children.

    RSS is sampled (psutil, every 50 ms) rather than read from getrusage: a child's ru_maxrss
    starts at the bench's own RSS when it forks, which would hide small stages.
    """
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + shlex.join(cmd), flush=True)
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env or child_env(), cwd=C.root())
        peak = 0
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)])
            except psutil.Error:  # a process ended between listing and reading
                rss = 0
            peak = max(peak, rss)
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}); last lines of {log}:\n{tail}")
    return {"wall_seconds": wall, "peak_rss_mb": round(peak / 2**20, 1)}


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env


def digest(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(Path(p).read_bytes() if isinstance(p, Path) else repr(p).encode())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------- scoring


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


# ---------------------------------------------------------------- quality


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
    src = REPO / "src" / "medalist" / "ensemble.py"
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


# ---------------------------------------------------------------- speed and growth


def part_speed(args, data: dict, work: Path, growth_sizes: list[int]) -> dict:
    import yaml

    cfg = yaml.safe_load(Path(args.model_config).read_text())
    rows = args.steps * cfg["batch_size"] * cfg.get("grad_accum", 1)
    d = work / "speed"
    d.mkdir(parents=True, exist_ok=True)
    train = pd.read_csv(data["train"])
    test = pd.read_csv(data["test"])
    train.sample(n=min(rows, len(train)), random_state=0).to_csv(d / "train.csv", index=False)
    test.sample(n=min(args.infer_rows, len(test)), random_state=0).to_csv(d / "test.csv", index=False)
    common = ["--train-csv", str(d / "train.csv"), "--test-csv", str(d / "test.csv"),
              "--model-config", str(args.model_config), *data["columns"]]
    scripts = {"medalist": BENCH / "medalist_steps.py", "trainer": BENCH / "trainer_baseline.py"}
    samples: dict[str, list[dict]] = {"medalist": [], "trainer": []}
    for rep in range(args.repeats):
        order = ["medalist", "trainer"] if rep % 2 == 0 else ["trainer", "medalist"]  # ABBA: drift cancels
        for side in order:
            out = d / f"{side}-{rep}"
            extra = []
            if side == "medalist" and rep == args.repeats - 1 and growth_sizes:
                extra = ["--infer-sizes", ",".join(map(str, growth_sizes)), "--growth-test-csv", str(data["test"])]
            cmd = [sys.executable, str(scripts[side]), *common, "--out", str(out), *extra]
            proc = run_child(cmd, d / f"{side}-{rep}.log")
            samples[side].append({**read_json(out / "metrics.json"), "process": proc})
            print(f"  {side} #{rep + 1}: {samples[side][-1]['train_samples_per_s']:.2f} samples/s, "
                  f"{samples[side][-1]['infer_texts_per_s']:.1f} texts/s", flush=True)

    def med(side: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[side])

    def pair(key: str) -> dict:
        m, t = med("medalist", key), med("trainer", key)
        return {"medalist": m, "trainer": t, "ratio": m / t if t else None}

    gpu = {side: max((s.get("peak_gpu_mb") or 0) for s in samples[side]) or None for side in samples}
    return {
        "steps": args.steps, "rows": rows, "infer_rows": min(args.infer_rows, len(test)), "repeats": args.repeats,
        "train_samples_per_s": pair("train_samples_per_s"),
        "infer_texts_per_s": pair("infer_texts_per_s"),
        "tokenize_seconds": {**pair("tokenize_seconds"), "texts": samples["medalist"][0]["n_tokenized"]},
        "peak_rss_mb": {side: max(s["process"]["peak_rss_mb"] for s in samples[side]) for side in samples},
        "peak_gpu_mb": gpu,
        "mixed_precision": {side: samples[side][0].get("mixed_precision") for side in samples},
        "device": samples["medalist"][0].get("device"),
        "samples": {side: [{k: s[k] for k in ("train_samples_per_s", "infer_texts_per_s", "tokenize_seconds")}
                           for s in samples[side]] for side in samples},
        "infer_growth": samples["medalist"][-1].get("infer_growth", []),
        "process_seconds": {side: statistics.median(s["process"]["wall_seconds"] for s in samples[side])
                            for side in samples},
        "wall_seconds": sum(s["process"]["wall_seconds"] for side in samples for s in samples[side]),
    }


def part_growth(args, comp, data: dict, work: Path, speed: dict | None, sizes: list[int]) -> dict:
    out = work / "growth-tfidf"
    run_child([sys.executable, str(BENCH / "tfidf_baseline.py"), "--train-csv", str(data["train"]),
               "--test-csv", str(data["test"]), "--out", str(out), "--sizes", ",".join(map(str, sizes)),
               *data["columns"]], work / "growth-tfidf.log")
    tf = read_json(out / "metrics.json")["growth"]
    model = read_json(C.root() / "results" / comp.name / args.model / "metrics.json") \
        if (C.root() / "results" / comp.name / args.model / "metrics.json").exists() else {}
    import yaml

    epochs = yaml.safe_load(Path(args.model_config).read_text())["epochs"]
    k = comp.folds.n
    rows = []
    inf = {g["n"]: g["seconds"] for g in (speed or {}).get("infer_growth", [])}
    for g in tf:
        n = g["n"]
        row = {"n": n, "tfidf_train_seconds": g["train_seconds"], "n_test": g["n_test"],
               "tfidf_predict_seconds": g["predict_seconds"]}
        if speed:
            for side in ("medalist", "trainer"):
                sps = speed["train_samples_per_s"][side]
                row[f"{side}_epoch_seconds"] = n / sps
                row[f"{side}_kfold_run_hours"] = k * epochs * n * (k - 1) / k / sps / 3600
            row["medalist_predict_seconds"] = inf.get(g["n_test"])
            row["trainer_predict_seconds"] = g["n_test"] / speed["infer_texts_per_s"]["trainer"]
        rows.append(row)
    note = ("TF-IDF: measured (fit on the first n train rows, predict on the first n test rows). Neural "
            "training: extrapolated, n / the speed part's median samples/s (per epoch; a k-fold run is "
            f"{k} folds x {epochs} epochs x {k - 1}/{k} of n). medalist inference: measured through "
            "load_predictor; Trainer inference: extrapolated from its median texts/s.")
    if model.get("train_samples_per_s"):
        note += f" The finished {args.model} run trained at {model['train_samples_per_s']:.2f} samples/s."
    return {"rows": rows, "note": note}


def plot_growth(growth: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = growth["rows"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    n = [r["n"] for r in rows]
    a.plot(n, [r["tfidf_train_seconds"] for r in rows], "o-", label="TF-IDF fit (measured)")
    for side, style in (("medalist", "s-"), ("trainer", "^--")):
        if rows and f"{side}_epoch_seconds" in rows[0]:
            a.plot(n, [r[f"{side}_epoch_seconds"] for r in rows], style, label=f"{side}: one epoch (extrapolated)")
    a.set(xlabel="train rows", ylabel="seconds", title="training time", xscale="log", yscale="log")
    a.legend(fontsize=8)
    nt = [r["n_test"] for r in rows]
    b.plot(nt, [r["tfidf_predict_seconds"] for r in rows], "o-", label="TF-IDF (measured)")
    if rows and rows[0].get("medalist_predict_seconds") is not None:
        b.plot(nt, [r["medalist_predict_seconds"] for r in rows], "s-", label="medalist (measured)")
    if rows and "trainer_predict_seconds" in rows[0]:
        b.plot(nt, [r["trainer_predict_seconds"] for r in rows], "^--", label="Trainer (extrapolated)")
    b.set(xlabel="test rows", ylabel="seconds", title="inference time", xscale="log", yscale="log")
    b.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- machine and report


def machine() -> dict:
    import psutil
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
           "os": platform.platform(), "gpu": None, "versions": C.versions()}
    if torch.cuda.is_available():
        out["gpu"] = f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    return out


def stage_table(res: dict) -> dict[str, dict]:
    """Every stage that ran as its own process: peak RSS and wall seconds (train + predict for runs)."""
    q, s = res.get("quality") or {}, res.get("speed") or {}
    out = {}

    def add(name, rss, *seconds):
        known = [x for x in seconds if x is not None]
        out[name] = {"peak_rss_mb": rss, "seconds": sum(known) if known else None}

    for name, e in (q.get("runs") or {}).items():
        add(f"train {name} (all folds)", e.get("peak_rss_mb"), e.get("train_seconds"), e.get("predict_seconds"))
        if "tta" in e:
            add(f"tta {name}", e["tta"].get("peak_rss_mb"), e["tta"].get("predict_seconds"))
    for name, e in (q.get("ensembles") or {}).items():
        add(f"ensemble {name}", e.get("peak_rss_mb"), e.get("seconds"))
    for name, e in (q.get("references") or {}).items():
        if e.get("peak_rss_mb") is not None:
            add(f"reference {name}", e["peak_rss_mb"], e.get("wall_seconds"))
    for side, v in (s.get("peak_rss_mb") or {}).items():
        add(f"speed run {side} (one)", v, (s.get("process_seconds") or {}).get(side))
    return out


def fmt(x, nd: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def goals(res: dict) -> list[str]:
    q, s = res.get("quality") or {}, res.get("speed") or {}
    out = []

    def line(ok, text):
        out.append(f"- {'met' if ok else ('not met' if ok is False else 'not measured')}: {text}")

    ens, tf, best = q.get("ensemble_test_micro_f1"), q.get("tfidf_test_micro_f1"), q.get("best_single_test_micro_f1")
    line(None if ens is None or tf is None else ens >= tf + 0.06,
         f"ensemble test micro-F1 ≥ TF-IDF + 0.06 ({fmt(ens)} vs {fmt(tf)} + 0.06; SOURCE.md: {REFERENCE_TFIDF})")
    line(None if ens is None or best is None else ens > best,
         f"ensemble above every single run ({fmt(ens)} vs best single {fmt(best)}, {q.get('best_single_run')})")
    tr, rr = s.get("train_samples_per_s") or {}, s.get("infer_texts_per_s") or {}
    mm = (q.get("runs") or {}).get(res.get("model", ""), {}).get("test", {}).get("micro_f1")
    tq = q.get("trainer_test_micro_f1")
    line(None if tr.get("ratio") is None else tr["ratio"] >= 1.5 and (mm is None or tq is None or mm >= tq),
         f"training throughput ≥ 1.5× the plain Trainer at equal or better score "
         f"({fmt(tr.get('ratio'), 2)}×; test micro-F1 {fmt(mm)} vs Trainer {fmt(tq)})")
    line(None if rr.get("ratio") is None else rr["ratio"] >= 2, f"inference ≥ 2× ({fmt(rr.get('ratio'), 2)}×)")
    line(None if not s.get("wall_seconds") else s["wall_seconds"] < 900,
         f"speed part under 15 minutes ({fmt(s.get('wall_seconds', 0) / 60 if s.get('wall_seconds') else None, 1)} min)")
    return out


def render(res: dict) -> str:
    m, q, s, g = res["machine"], res.get("quality") or {}, res.get("speed") or {}, res.get("growth") or {}
    gpu = bool(m.get("gpu"))
    L = ["# Benchmarks", "",
         f"`make bench` on **{res['comp']}** (answers: `{res['answers']}`), git `{res['git_sha']}`, {res['date']}.", "",
         "## Machine", "",
         f"- CPU: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; GPU: {m['gpu'] or 'none'}; {m['os']}",
         "- " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
         "## Commands", "", "```bash", *res["commands"], "```", "", "## Goals", "", *goals(res), ""]
    if q:
        L += ["## Quality (test set, scored against the answers)", "",
              "| what | test micro-F1 | test macro-F1 | OOF | train s | predict s |", "|---|---|---|---|---|---|"]
        for name, e in q["references"].items():
            L.append(f"| reference: {name} | {fmt(e['test']['micro_f1'])} | {fmt(e['test']['macro_f1'])} | — | "
                     f"{fmt(e.get('train_seconds'), 1)} | {fmt(e.get('predict_seconds'), 1)} |")
        for name, e in q["runs"].items():
            L.append(f"| run {name} | {fmt(e['test']['micro_f1'])} | {fmt(e['test']['macro_f1'])} | "
                     f"{fmt(e['oof_score'])} | {fmt(e['train_seconds'], 1)} | {fmt(e['predict_seconds'], 1)} |")
            if "tta" in e:
                t = e["tta"]
                L.append(f"| run {name} + TTA{'' if t.get('used') else ' (not used: no OOF gain)'} | "
                         f"{fmt(t['test']['micro_f1'])} | {fmt(t['test']['macro_f1'])} | {fmt(t['oof_score'])} | — | "
                         f"{fmt(t['predict_seconds'], 1)} |")
        for name, e in q["ensembles"].items():
            L.append(f"| **ensemble {name}** ({e['method']}) | {fmt(e['test']['micro_f1'])} | "
                     f"{fmt(e['test']['macro_f1'])} | {fmt(e['oof_score'])} | {fmt(e['seconds'], 1)} | — |")
        L += ["", (f"Train / predict seconds of a run are all its folds (metrics.json); the first `make bench` "
              f"trains them (on this CPU: {fmt(sum((e.get('train_seconds') or 0) for e in q['runs'].values()) / 3600, 2)} h "
              f"of training for the runs above), a rerun reuses them. The HF Trainer reference is one model "
              f"on all of train.csv (no folds), cached under results/{res['comp']}/bench/."), ""]
    if s:
        tr, inf, tok = s["train_samples_per_s"], s["infer_texts_per_s"], s["tokenize_seconds"]
        L += ["## Speed (A/B, same backbone, same rows)", "",
              (f"{s['repeats']} alternating repeats (ABBA order), median; each side its own process; "
              f"training: {s['steps']} optimizer steps on the same {s['rows']} train rows (medalist: "
              f"`encoder.fit_fold`, one epoch over them; Trainer: `--max-steps {s['steps']}`); inference: "
              f"the same {s['infer_rows']} test texts. Device: {s['device']}."), "",
              "| | medalist | plain Trainer | ratio |", "|---|---|---|---|",
              f"| training samples/s | {fmt(tr['medalist'], 2)} | {fmt(tr['trainer'], 2)} | {fmt(tr['ratio'], 2)}× |",
              f"| inference texts/s | {fmt(inf['medalist'], 1)} | {fmt(inf['trainer'], 1)} | {fmt(inf['ratio'], 2)}× |",
              (f"| tokenisation s ({tok['texts']} texts) | {fmt(tok['medalist'], 3)} | {fmt(tok['trainer'], 3)} | "
              f"{fmt(tok['ratio'], 2)}× |"),
              f"| peak RSS MB | {fmt(s['peak_rss_mb']['medalist'], 0)} | {fmt(s['peak_rss_mb']['trainer'], 0)} | |"]
        if gpu or any(s["peak_gpu_mb"].values()):
            L.append(f"| peak GPU MB ({s['mixed_precision']['medalist']} / {s['mixed_precision']['trainer']}) | "
                     f"{fmt(s['peak_gpu_mb']['medalist'], 0)} | {fmt(s['peak_gpu_mb']['trainer'], 0)} | |")
        L += ["", "Per repeat (samples/s, texts/s): " + "; ".join(
            f"{side} " + ", ".join(f"{r['train_samples_per_s']:.2f}/{r['infer_texts_per_s']:.1f}" for r in rs)
            for side, rs in s["samples"].items()) + f". Speed part wall time: {s['wall_seconds'] / 60:.1f} min.", ""]
    stages = res.get("stages") or {}
    if stages:
        L += ["## Memory and wall time per stage", "", ("Each stage is its own process; runs' figures come from "
              "their metrics.json (all folds), the others are sampled by the bench (RSS of the process tree)."), "",
              "| stage | peak RSS MB | wall s |", "|---|---|---|"]
        L += [f"| {k} | {fmt(v['peak_rss_mb'], 0)} | {fmt(v['seconds'], 1)} |" for k, v in stages.items()] + [""]
    if g:
        L += ["## Growth", "", g["note"], "", "![growth](bench/growth.png)", "",
              ("| train rows | TF-IDF fit s | medalist epoch s | Trainer epoch s | medalist k-fold run h | "
              "test rows | TF-IDF predict s | medalist predict s | Trainer predict s |"), "|---|---|---|---|---|---|---|---|---|"]
        for r in g["rows"]:
            L.append(f"| {r['n']} | {fmt(r['tfidf_train_seconds'], 2)} | {fmt(r.get('medalist_epoch_seconds'), 1)} | "
                     f"{fmt(r.get('trainer_epoch_seconds'), 1)} | {fmt(r.get('medalist_kfold_run_hours'), 2)} | "
                     f"{r['n_test']} | {fmt(r['tfidf_predict_seconds'], 2)} | {fmt(r.get('medalist_predict_seconds'), 1)} | "
                     f"{fmt(r.get('trainer_predict_seconds'), 1)} |")
        L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run_bench.py", description=__doc__.splitlines()[0])
    ap.add_argument("--comp", default="math-subjects")
    ap.add_argument("--comp-dir", type=Path, default=Path("../shared/competitions/math-subjects"),
                    help="the competition folder: train.csv, test.csv and the answers")
    ap.add_argument("--answers", type=Path, help="default: <comp-dir>/test_labels.csv")
    ap.add_argument("--runs", default="tfidf embed minilm", help="BENCH_MODELS: the runs `make all` built")
    ap.add_argument("--model", default="minilm", help="the neural model config of the A/B and the Trainer reference")
    ap.add_argument("--model-config", type=Path, help="default: configs/models/<model>.yaml")
    ap.add_argument("--parts", default="quality,speed,growth")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per speed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--infer-rows", type=int, default=512)
    ap.add_argument("--growth-sizes", default="1000,2000,4000,all")
    ap.add_argument("--quick", action="store_true", help="development: 2 steps, 64 texts, growth at 250,500")
    ap.add_argument("--skip-trainer-fit", action="store_true",
                    help="do not train the full Trainer reference (hours on a CPU) unless cached")
    ap.add_argument("--out-json", type=Path, default=BENCH / "results.json")
    ap.add_argument("--out-md", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--plot", type=Path, default=BENCH / "growth.png")
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.infer_rows, a.growth_sizes = 2, 64, "250,500"
    a.runs = a.runs.split()
    a.parts = set(a.parts.split(","))
    unknown = a.parts - {"quality", "speed", "growth"}
    if unknown:
        raise UserError(f"--parts: unknown part(s) {sorted(unknown)} (quality, speed, growth)")
    if a.repeats < 1 or a.steps < 1:
        raise UserError("--repeats and --steps must be at least 1")
    a.model_config = (a.model_config or C.configs_dir() / "models" / f"{a.model}.yaml").resolve()
    a.answers = a.answers or a.comp_dir / "test_labels.csv"
    return a


@C.cli
def main(argv: list[str] | None = None) -> None:
    t_start = time.time()
    a = parse(argv)
    comp = load_competition(a.comp)
    f = comp.files
    data = {"train": (a.comp_dir / f.train).resolve(), "test": (a.comp_dir / f.test).resolve(),
            "answers": a.answers.resolve(),
            "columns": ["--text-column", comp.text_columns[0], "--label-column", comp.label_column,
                        "--id-column", comp.id_column]}
    for k in ("train", "test", "answers"):
        if not data[k].exists():
            raise UserError(f"{data[k]} not found: pass --comp-dir (and --answers) of a Kaggle-shaped folder with answers")
    if not a.model_config.exists():
        raise UserError(f"no model config {a.model_config}")
    work = C.root() / "results" / comp.name / "bench"
    res = read_json(a.out_json) if a.out_json.exists() else {}
    res.update({"comp": comp.name, "answers": str(a.answers), "model": a.model, "git_sha": C.git_sha(),
                "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()})
    n_train, n_test = len(pd.read_csv(data["train"])), len(pd.read_csv(data["test"]))
    sizes = sorted({min(n_train if s == "all" else int(s), n_train) for s in a.growth_sizes.split(",")})
    test_sizes = sorted({min(n, n_test) for n in sizes})

    if "quality" in a.parts:
        res["quality"] = part_quality(a, comp, data, work)
    if "speed" in a.parts:
        res["speed"] = part_speed(a, data, work, test_sizes if "growth" in a.parts else [])
    if "growth" in a.parts:
        res["growth"] = part_growth(a, comp, data, work, res.get("speed"), sizes)
        plot_growth(res["growth"], a.plot)

    q, s = res.get("quality") or {}, res.get("speed") or {}
    for key in ("ensemble_test_micro_f1", "best_single_test_micro_f1", "tfidf_test_micro_f1", "trainer_test_micro_f1"):
        res[key] = q.get(key)
    for key in ("train_samples_per_s", "infer_texts_per_s"):
        res[key] = s.get(key)
    res["stages"] = stage_table(res)
    res["peak_rss_mb"] = {k: v["peak_rss_mb"] for k, v in res["stages"].items()}
    cmd = shlex.join(["python", "bench/run_bench.py", *(argv if argv is not None else sys.argv[1:])])
    res["commands"] = [
        f"make all COMP={comp.name} COMP_DIR={a.comp_dir} MODELS=\"{' '.join(a.runs)}\"",
        f"make augment COMP={comp.name} && make all COMP={comp.name} MODELS=\"{' '.join(a.runs)}\" USE_GEN=1",
        cmd]
    res.setdefault("seconds", {})
    res["seconds"]["+".join(sorted(a.parts))] = time.time() - t_start
    write_json(a.out_json, res)
    write_text(a.out_md, render(res))
    print(f"wrote {a.out_json}, {a.out_md}" + (f", {a.plot}" if "growth" in a.parts else ""))


if __name__ == "__main__":
    main()

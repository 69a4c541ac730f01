"""`make bench`, memory and growth: peak RSS and wall time of every stage that ran as its own
process, and training / inference time against data size (TF-IDF measured, neural training
extrapolated from the speed part, medalist's inference measured) with its plot.
"""
from __future__ import annotations

import sys
from pathlib import Path

from medalist.core import config as C
from medalist.core.io import read_json
from processes import BENCH, run_child


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

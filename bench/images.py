"""`make bench`, part images: an image competition (fashion-products: Fashion-MNIST, 8,000 train /
4,000 test) end to end, against SOURCE.md's references and the plain loop a competitor writes.

  images-quality  `make all COMP=<image comp> COMP_DIR=… MODELS=…` run stage by stage (download,
                  check, folds, each run's training and TTA, evaluate, ensemble, report: each one
                  make target, each its own process, timed, its peak RSS sampled); then test
                  accuracy and macro-F1 of every run (and its TTA) and of the ensemble's
                  submission against test_labels.csv, beside SOURCE.md's reference figures.
                  Resumable: a stage make finds up to date is not rerun (its earlier record is
                  kept while its target file is the one the record saw).
  images-speed    A/B, alternating (ABBA), each side its own process (bench/image_ab.py): the plain
                  PIL-Dataset + timm + AdamW loop against the image family's engine path, same
                  backbone, weights, image size and training batch, same rows; medians of the
                  repeats for training and inference images/s, peak RSS per side.

Reads   configs/competitions/<comp>.yaml, configs/models/<model>.yaml, <image dir>/test_labels.csv,
        results/<comp>/… and data/processed/<comp>/ (which the make stages build)
Writes  results/<comp>/bench/stages.json (the stage records), results/<comp>/bench/images-speed/…;
        run_bench.py puts the returned figures under results.json's "images" key
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd

from medalist.core import config as C
from medalist.core.config import UserError
from medalist.core.io import read_json, write_json
from processes import BENCH, run_child
from quality import Answers, run_entry

# SOURCE.md's figures: (label, accuracy, macro-F1)
REFERENCES = {"fashion-products": [
    ("logistic regression on raw pixels, C=0.1 (SOURCE.md, this split)", 0.841, 0.840),
    ("RBF SVC on raw pixels, C=10 (SOURCE.md, this split)", 0.880, 0.879),
    ("two conv layers + pooling, trained on all 60,000 images (Fashion-MNIST README)", 0.916, None),
]}
GOAL_ACCURACY = 0.92
GOAL_MAKE_ALL_MINUTES = 60


# ---------------------------------------------------------------- make, stage by stage


def stage_plan(comp: str, runs: list[str]) -> list[tuple[str, str]]:
    """(stage, make target) in the order `make all` builds them; each target is a file."""
    r = f"results/{comp}"
    return [("download", f"data/raw/{comp}/.complete"), ("check", f"{r}/checks.md"),
            ("folds", f"data/processed/{comp}/train.csv"),
            *[(f"train {run}", f"{r}/{run}/metrics.json") for run in runs],
            *[(f"tta {run}", f"{r}/{run}/tta/metrics.json") for run in runs],
            ("evaluate", f"{r}/leaderboard.md"), ("ensemble", f"{r}/ensemble/metrics.json"),
            ("report", f"{r}/report.html")]


def make_env() -> dict[str, str]:
    """The bench's environment without what an enclosing `make bench` passes down: its flags and
    command-line variables must not reach the competition's own make."""
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "FOLDS", "MODELS", "COMP", "COMP_DIR", "COMP_ZIP",
            "MEDALIST_MAKE_START", "BUDGET"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def make_cmd(target: str, args, question: bool = False) -> list[str]:
    make = shutil.which("make")
    if make is None:
        raise UserError("the images part runs the pipeline through make: install GNU make")
    cmd = [make, "--no-print-directory", *(["-q"] if question else []), target, f"COMP={args.image_comp}",
           f"MODELS={' '.join(args.image_runs)}"]
    # with COMP_DIR the download target is always remade (a no-op when the files agree): ask without it
    return cmd if question else cmd + [f"COMP_DIR={args.image_dir}"]


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def _children_cpu() -> float:
    """CPU seconds (user + system) of every finished, waited-for descendant of this process."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_stage(cmd: list[str], log: Path, env: dict[str, str]) -> dict:
    """run_child's wall time and peak RSS, plus the stage's CPU seconds and the machine's load
    average when it ended: on a shared machine wall time says as much about the neighbours as
    about the stage, CPU time much less."""
    cpu0 = _children_cpu()
    out = run_child(cmd, log, env)
    return {**out, "cpu_seconds": _children_cpu() - cpu0, "load_avg_15min": os.getloadavg()[2]}


def run_stages(args, work: Path, upto: str | None = None) -> dict[str, dict]:
    """Bring the competition's `make all` up to date one stage at a time (up to stage `upto`);
    the record of each stage that ran (wall seconds, peak RSS) is saved at once, so a killed bench
    resumes at the stage it was in."""
    root = C.root()
    path = work / "stages.json"
    records = read_json(path) if path.exists() else {}
    env = make_env()
    for stage, target in stage_plan(args.image_comp, args.image_runs):
        up_to_date = subprocess.run(make_cmd(target, args, question=True), cwd=root, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        rec = records.get(stage) or {}
        if not up_to_date:
            print(f"[images] stage {stage}: make {target}", flush=True)
            proc = timed_stage(make_cmd(target, args), work / "logs" / f"{stage.replace(' ', '-')}.log", env)
            records[stage] = {**proc, "target": target, "target_mtime": _mtime(root / target)}
            write_json(path, records)
        elif rec.get("target_mtime") != _mtime(root / target):  # up to date, but not built by the bench
            records[stage] = {"wall_seconds": None, "peak_rss_mb": None, "target": target,
                              "target_mtime": _mtime(root / target), "note": "built outside the bench"}
            write_json(path, records)
        if stage == upto:
            break
    return records


# ---------------------------------------------------------------- quality


def part_quality(args, comp, work: Path) -> dict:
    records = run_stages(args, work)
    res = C.root() / "results" / comp.name
    answers = Answers(comp, args.image_answers)
    runs = {}
    for name in args.image_runs:
        runs[name] = run_entry(answers, res / name)
        if (res / name / "tta" / "metrics.json").exists():
            runs[name]["tta"] = run_entry(answers, res / name / "tta")
    m = read_json(res / "ensemble" / "metrics.json")
    sub = C.root() / "submission" / comp.name / "submission.csv"
    ensemble = {"runs": list(args.image_runs), "test": answers.score_submission(sub), "oof_score": m.get("oof_score"),
                "method": m.get("method")}
    refs = [{"name": n, "accuracy": acc, "macro_f1": mf1} for n, acc, mf1 in REFERENCES.get(comp.name, [])]
    for name, e in runs.items():  # a run's train stage measured outside the bench: its own metrics.json's figures
        rec = records.get(f"train {name}") or {}
        if rec.get("wall_seconds") is None:
            rec.update({"wall_seconds": e.get("train_seconds"), "peak_rss_mb": e.get("peak_rss_mb"),
                        "from_metrics": True, "note": "built outside the bench: its folds' seconds from metrics.json"})
    walls = [r.get("wall_seconds") for r in records.values()]
    cpus = [r.get("cpu_seconds") for r in records.values()]
    return {"comp": comp.name, "runs": runs, "ensemble": ensemble, "references": refs, "stages": records,
            "make_all_seconds": sum(walls) if all(w is not None for w in walls) else None,
            "make_all_cpu_seconds": sum(cpus) if all(c is not None for c in cpus) else None,
            "make_all_partly_from_metrics": any(r.get("from_metrics") for r in records.values()),
            "ensemble_test_accuracy": ensemble["test"]["micro_f1"], "ensemble_test_macro_f1": ensemble["test"]["macro_f1"],
            "command": f"make all COMP={comp.name} COMP_DIR={args.image_dir} MODELS=\"{' '.join(args.image_runs)}\""}


# ---------------------------------------------------------------- speed


def part_speed(args, comp, work: Path) -> dict:
    import yaml

    run_stages(args, work, upto="folds")  # the processed rows and their image paths
    cfg = yaml.safe_load(Path(args.image_model_config).read_text())
    if cfg.get("family") != "image":
        raise UserError(f"--image-model {args.image_model}: the A/B needs a config of family image (a timm backbone)")
    d = work / "images-speed"
    d.mkdir(parents=True, exist_ok=True)
    processed = C.root() / "data" / "processed" / comp.name
    train = pd.read_csv(processed / "train.csv", dtype={"id": str}, keep_default_na=False)
    test = pd.read_csv(processed / "test.csv", dtype={"id": str}, keep_default_na=False)
    rows = args.image_steps * cfg["batch_size"]
    train.sample(n=min(rows, len(train)), random_state=0)[["id", "image", "label"]].to_csv(d / "train.csv", index=False)
    test.sample(n=min(args.image_infer_rows, len(test)), random_state=0)[["id", "image"]].to_csv(d / "test.csv", index=False)
    common = ["--train-csv", str(d / "train.csv"), "--test-csv", str(d / "test.csv"), "--model-config",
              str(args.image_model_config), "--data-dir", str(processed), "--n-classes", str(comp.n_classes),
              "--workers", str(args.image_workers)]
    samples: dict[str, list[dict]] = {"medalist": [], "plain": [], "medalist-fp32": []}
    for rep in range(args.image_repeats):
        # ABBA: drift cancels; then medalist with fp32 prediction (what the BatchNorm fold alone buys)
        for side in (["medalist", "plain"] if rep % 2 == 0 else ["plain", "medalist"]) + ["medalist-fp32"]:
            out = d / f"{side}-{rep}"
            proc = run_child([sys.executable, str(BENCH / "image_ab.py"), "--side", side, *common, "--out", str(out)],
                             d / f"{side}-{rep}.log")
            samples[side].append({**read_json(out / "metrics.json"), "process": proc})
            s = samples[side][-1]
            print(f"  {side} #{rep + 1}: train {s['train_images_per_s']:.1f} img/s, "
                  f"inference {s['infer_images_per_s']:.1f} img/s", flush=True)

    def pair(key: str) -> dict:
        """Medians, and the fastest repeat of each side: on a shared machine other work only ever
        slows a repeat down, so the best is the steadier figure there."""
        m, p = (statistics.median(s[key] for s in samples[side]) for side in ("medalist", "plain"))
        bm, bp = (max(s[key] for s in samples[side]) for side in ("medalist", "plain"))
        return {"medalist": m, "plain": p, "ratio": m / p if p else None,
                "best": {"medalist": bm, "plain": bp, "ratio": bm / bp if bp else None}}

    from medalist.models import inference

    first, fp32 = samples["medalist"][0], samples.pop("medalist-fp32")
    return {
        "bf16_native_cpu": inference.cpu_bf16_native(),
        "infer_images_per_s_fp32": statistics.median(s["infer_images_per_s"] for s in fp32),
        "model": args.image_model, "backbone": first["backbone"], "weights": first["weights"],
        "image_size": first["image_size"], "batch_size": first["batch_size"], "steps": args.image_steps,
        "rows": first["n_train"], "infer_rows": first["n_test"], "repeats": args.image_repeats,
        "infer_batch_size": {side: samples[side][0]["infer_batch_size"] for side in samples},
        "plain_dataloader_workers": args.image_workers, "threads": first["threads"],
        "train_images_per_s": pair("train_images_per_s"), "infer_images_per_s": pair("infer_images_per_s"),
        "medalist_items_seconds": statistics.median(s["items_seconds"] for s in samples["medalist"]),
        "peak_rss_mb": {side: max(s["process"]["peak_rss_mb"] for s in samples[side]) for side in samples},
        "process_seconds": {side: statistics.median(s["process"]["wall_seconds"] for s in samples[side])
                            for side in samples},
        "samples": {side: [{k: s[k] for k in ("train_images_per_s", "infer_images_per_s", "last_loss")}
                           for s in samples[side]] for side in samples},
        "wall_seconds": sum(s["process"]["wall_seconds"] for side in samples for s in samples[side])
                        + sum(s["process"]["wall_seconds"] for s in fp32),
    }


def part_images(args, previous: dict | None) -> dict:
    """The "images" block of results.json: the sub-parts run now replace theirs, the others stay."""
    from medalist.core.competition import load_competition

    comp = load_competition(args.image_comp)
    if not comp.inputs.image:
        raise UserError(f"--image-comp {comp.name}: its config declares no image input")
    if not args.image_answers.exists():
        raise UserError(f"{args.image_answers} not found: pass --image-dir (and --image-answers) of a Kaggle-shaped "
                        f"image folder with answers")
    work = C.root() / "results" / comp.name / "bench"
    out = dict(previous or {})
    if "images-speed" in args.parts:
        out["speed"] = part_speed(args, comp, work)
    if "images-quality" in args.parts:
        out["quality"] = part_quality(args, comp, work)
    return out


# ---------------------------------------------------------------- BENCHMARKS.md


def _f(x, nd: int = 4) -> str:
    return "—" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def goals(img: dict) -> list[str]:
    q, s = img.get("quality") or {}, img.get("speed") or {}
    out = []

    def line(ok, text):
        out.append(f"- {'met' if ok else ('not met' if ok is False else 'not measured')}: {text}")

    acc, secs = q.get("ensemble_test_accuracy"), q.get("make_all_seconds")
    line(None if acc is None else acc >= GOAL_ACCURACY,
         f"images: {q.get('comp', 'the image competition')} ensemble test accuracy ≥ {GOAL_ACCURACY} ({_f(acc)})")
    line(None if secs is None else secs < GOAL_MAKE_ALL_MINUTES * 60,
         f"images: `make all` with the default MODELS under {GOAL_MAKE_ALL_MINUTES} min "
         f"({_f(secs / 60 if secs is not None else None, 1)} min, the stages' wall times summed"
         f"{'; a run trained outside the bench counts the seconds of its folds' if q.get('make_all_partly_from_metrics') else ''}"
         f"; CPU {_f(q['make_all_cpu_seconds'] / 60 if q.get('make_all_cpu_seconds') else None, 1)} min)")
    tr, inf = s.get("train_images_per_s") or {}, s.get("infer_images_per_s") or {}
    for what, d, target in (("training", tr, 1.5), ("inference", inf, 2)):
        best = (d.get("best") or {}).get("ratio")
        line(None if d.get("ratio") is None else d["ratio"] >= target,
             f"images: {what} images/s ≥ {target}× the plain loop (median {_f(d.get('ratio'), 2)}×, "
             f"fastest repeats {_f(best, 2)}×)")
    return out


def render(img: dict) -> list[str]:
    q, s = img.get("quality") or {}, img.get("speed") or {}
    if not (q or s):
        return []
    L = ["## Images", ""]
    if q:
        L += [f"`{q['command']}`, stage by stage; scored against the competition's test_labels.csv.", "",
              "| what | test accuracy | test macro-F1 | OOF | train s | predict s |", "|---|---|---|---|---|---|"]
        L += [f"| reference: {r['name']} | {_f(r['accuracy'], 3)} | {_f(r['macro_f1'], 3)} | — | — | — |"
              for r in q["references"]]
        for name, e in q["runs"].items():
            L.append(f"| run {name} | {_f(e['test']['micro_f1'])} | {_f(e['test']['macro_f1'])} | {_f(e['oof_score'])} | "
                     f"{_f(e['train_seconds'], 1)} | {_f(e['predict_seconds'], 1)} |")
            if "tta" in e:
                t = e["tta"]
                L.append(f"| run {name} + TTA{'' if t.get('used') else ' (not used: no OOF gain)'} | "
                         f"{_f(t['test']['micro_f1'])} | {_f(t['test']['macro_f1'])} | {_f(t['oof_score'])} | — | "
                         f"{_f(t['predict_seconds'], 1)} |")
        e = q["ensemble"]
        L += [f"| **ensemble** ({e['method']}) | {_f(e['test']['micro_f1'])} | {_f(e['test']['macro_f1'])} | "
              f"{_f(e['oof_score'])} | — | — |", "",
              "| stage (make target) | wall s | CPU s | load (15-min avg) at its end | peak RSS MB |",
              "|---|---|---|---|---|"]
        L += [f"| {k}{' (' + v['note'] + ')' if v.get('note') else ''} | {_f(v.get('wall_seconds'), 1)} | "
              f"{_f(v.get('cpu_seconds'), 1)} | {_f(v.get('load_avg_15min'), 2)} | {_f(v.get('peak_rss_mb'), 0)} |"
              for k, v in q["stages"].items()]
        secs, cpu = q.get("make_all_seconds"), q.get("make_all_cpu_seconds")
        L += [f"| **make all** | {_f(secs, 1)} ({_f(secs / 60 if secs else None, 1)} min) | {_f(cpu, 1)} | | |", "",
              ("Wall times are of this machine as it was (2 cores shared with other work: the load column); "
               "CPU seconds are the stage's own work, whoever else ran. A stage make found up to date keeps "
               "the record of the bench run that built it."), ""]
    if s:
        tr, inf = s["train_images_per_s"], s["infer_images_per_s"]
        ib = s["infer_batch_size"]
        L += [(f"A/B on `{s['backbone']}` ({s['weights']} weights, config `{s['model']}`), {s['image_size']} px, "
               f"training batch {s['batch_size']}: {s['repeats']} alternating repeats (ABBA), median, each side "
               f"its own process, {s['threads']} torch threads. Training: {s['steps']} steps over the same "
               f"{s['rows']} train images (plain: a PIL Dataset decoding every PNG each time, torchvision "
               f"transforms, DataLoader with {s['plain_dataloader_workers']} workers, AdamW; medalist: "
               f"`engine.fit_fold` with the image family's adapter, decode-once cache, channels-last, its "
               f"augmentation and EMA). Inference: the same {s['infer_rows']} test images, batch "
               f"{ib['plain']} (plain) / {ib['medalist']} (medalist's eval_batch_size); plain in fp32, medalist "
               f"through its prediction form (BatchNorm folded into the convolutions; bf16 on a CPU with native "
               f"bf16 — this one: {'yes' if s.get('bf16_native_cpu') else 'no'}). The fp32 row is medalist with "
               f"cpu_bf16_inference off, one more process a repeat."), "",
              "| | medalist | plain loop | ratio |", "|---|---|---|---|",
              f"| training images/s, median | {_f(tr['medalist'], 1)} | {_f(tr['plain'], 1)} | {_f(tr['ratio'], 2)}× |",
              f"| inference images/s, median | {_f(inf['medalist'], 1)} | {_f(inf['plain'], 1)} | {_f(inf['ratio'], 2)}× |",
              *([f"| inference images/s, medalist in fp32 (fold only), median | "
                 f"{_f(s['infer_images_per_s_fp32'], 1)} | {_f(inf['plain'], 1)} | "
                 f"{_f(s['infer_images_per_s_fp32'] / inf['plain'] if inf['plain'] else None, 2)}× |"]
                if s.get("infer_images_per_s_fp32") else []),
              *[f"| {what} images/s, fastest repeat | {_f(b['medalist'], 1)} | {_f(b['plain'], 1)} | {_f(b['ratio'], 2)}× |"
                for what, b in (("training", tr.get("best")), ("inference", inf.get("best"))) if b],
              f"| peak RSS MB | {_f(s['peak_rss_mb']['medalist'], 0)} | {_f(s['peak_rss_mb']['plain'], 0)} | |", "",
              ("Per repeat (train/inference images/s): " + "; ".join(
                  f"{side} " + ", ".join(f"{r['train_images_per_s']:.1f}/{r['infer_images_per_s']:.1f}" for r in rs)
                  for side, rs in s["samples"].items())
               + f". medalist's one-off item preparation from the cache: {s['medalist_items_seconds']:.2f} s a process. "
               f"Speed part wall time: {s['wall_seconds'] / 60:.1f} min."), ""]
    return L

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
  speed    A/B, alternating medalist (bench/medalist_steps.py: hf_text.fit_fold on steps × batch
           rows) and the Trainer script (--max-steps) on the same rows, each its own process;
           medians of --repeats; training samples/s, inference texts/s, tokenisation time, peak RSS
           (and peak GPU memory, bf16, on CUDA). medalist's inference: load_predictor on the fold
           just trained, in the precision it picks for a run trained with cpu_bf16_training (bf16 on
           a CPU with native bf16) and in fp32, --infer-rounds passes each (bench/speed.py).
  growth   training and inference time against data size: TF-IDF measured at each size, the neural
           models' training extrapolated from the speed part's medians, medalist's inference
           measured at each size through load_predictor; a table and bench/growth.png.
  dedup    (bench/dedup.py) recall and time of the near-duplicate grouping of `make folds` against
           exact all-pairs, on the competition's train texts and a 20,000-row synthetic set.
  validation (bench/validation.py) each default run of the competition and of --image-comp and
           their ensemble: OOF against test, the gap and its two standard errors, rankings compared
           (after the images part, whose `make all` builds --image-comp's runs).
  scale    (bench/scale.py) make train -j1 against -j2 for 2 runs × 5 folds on the demo: wall-time
           ratio and byte-identical results.
  budget   (bench/budget.py) `make all BUDGET=…` from cold for each --budget-points entry: wall time
           against the budget, what it bought, the submission's test score; a table and bench/budget.png.
  images   (= images-speed + images-quality; bench/images.py) an image competition (--image-comp,
           fashion-products) end to end: `make all` stage by stage with wall time and peak RSS per
           stage, test accuracy / macro-F1 of each run and of the ensemble beside SOURCE.md's
           references; and an A/B of the image family's engine path against the plain PIL-Dataset
           + timm + AdamW loop (bench/image_ab.py), training and inference images/s.

Reads   results/<comp>/…, --comp-dir (train.csv, test.csv, test_labels.csv), configs/models/<model>.yaml;
        for images: --image-dir (test_labels.csv), results/<image comp>/…
Writes  bench/results.json (merged: a part not run keeps its previous figures; images under "images"), BENCHMARKS.md,
        bench/growth.png, scratch and caches under results/<comp>/bench/
Run     python bench/run_bench.py --comp math-subjects --comp-dir ../shared/competitions/math-subjects \
            --runs "tfidf embed minilm" [--quick] [--parts speed,growth]
        python bench/run_bench.py --parts images-speed   (then --parts images-quality: make all, ~30 min on 2 cores)

Modules beside it: quality.py, speed.py, memory_growth.py, images.py (the parts), image_ab.py (a
side of the images A/B), benchmarks_md.py (the report), processes.py (timed, memory-sampled child processes and cache keys).
"""
from __future__ import annotations

import argparse
import os
import platform
import json
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks_md import render
from medalist.core import config as C
from medalist.core.competition import load_competition
from medalist.core.config import UserError
from medalist.core.io import read_json, write_json, write_text
from dedup import part_dedup
from images import part_images
from memory_growth import part_growth, plot_growth, stage_table
from processes import BENCH, REPO
from quality import part_quality
from scale import part_scale
from budget import parse_points, part_budget
from speed import part_speed
from validation import part_validation


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


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run_bench.py", description=__doc__.splitlines()[0])
    ap.add_argument("--comp", default="math-subjects")
    ap.add_argument("--comp-dir", type=Path, default=Path("../shared/competitions/math-subjects"),
                    help="the competition folder: train.csv, test.csv and the answers")
    ap.add_argument("--answers", type=Path, help="default: <comp-dir>/test_labels.csv")
    ap.add_argument("--runs", default="tfidf embed minilm", help="BENCH_MODELS: the runs `make all` built")
    ap.add_argument("--model", default="minilm", help="the neural model config of the A/B and the Trainer reference")
    ap.add_argument("--model-config", type=Path, help="default: configs/models/<model>.yaml")
    ap.add_argument("--parts", default="quality,speed,growth,images,dedup,validation,scale,budget",
                    help="of quality, speed, growth, images (= images-speed,images-quality), dedup, validation, scale, budget")
    ap.add_argument("--budget-points", default="math-subjects=20m,60m,180m;fashion-products=20m",
                    help="the budget part's points: competition=budget,… ; … (each --comp or --image-comp)")
    ap.add_argument("--budget-redo", action="store_true", help="measure a point again at the same commit")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per speed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--infer-rows", type=int, default=512)
    ap.add_argument("--infer-rounds", type=int, default=3,
                    help="timed passes over the inference rows per precision and repeat, alternating")
    ap.add_argument("--growth-sizes", default="1000,2000,4000,all")
    ap.add_argument("--quick", action="store_true", help="development: 2 steps, 64 texts, growth at 250,500")
    ap.add_argument("--skip-trainer-fit", action="store_true",
                    help="do not train the full Trainer reference (hours on a CPU) unless cached")
    ap.add_argument("--image-comp", default="fashion-products", help="the images part's competition")
    ap.add_argument("--image-dir", type=Path, default=Path("../shared/competitions/fashion-products"),
                    help="its folder: train.csv, test.csv, the images and test_labels.csv")
    ap.add_argument("--image-answers", type=Path, help="default: <image-dir>/test_labels.csv")
    ap.add_argument("--image-runs", help="the runs its `make all` trains (default: the competition's default_models)")
    ap.add_argument("--image-model", default="efficientnet-lite0", help="the image A/B's model config (family image)")
    ap.add_argument("--image-steps", type=int, default=20, help="training steps per image A/B run")
    ap.add_argument("--image-infer-rows", type=int, default=1024)
    ap.add_argument("--image-repeats", type=int, default=3)
    ap.add_argument("--image-workers", type=int, default=0, help="DataLoader workers of the plain loop")
    ap.add_argument("--out-json", type=Path, default=BENCH / "results.json")
    ap.add_argument("--out-md", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--plot", type=Path, default=BENCH / "growth.png")
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.infer_rows, a.growth_sizes = 2, 64, "250,500"
        a.image_steps, a.image_infer_rows = 2, 64
    a.runs = a.runs.split()
    a.parts = set(a.parts.split(","))
    if "images" in a.parts:
        a.parts = (a.parts - {"images"}) | {"images-speed", "images-quality"}
    unknown = a.parts - {"quality", "speed", "growth", "images-speed", "images-quality", "dedup", "validation", "scale",
                         "budget"}
    if unknown:
        raise UserError(f"--parts: unknown part(s) {sorted(unknown)} (quality, speed, growth, images, "
                        f"images-speed, images-quality, dedup, validation, scale, budget)")
    if min(a.repeats, a.steps, a.infer_rounds, a.image_repeats, a.image_steps, a.image_infer_rows) < 1:
        raise UserError("--repeats, --steps, --infer-rounds and the --image-… counts must be at least 1")
    if a.image_workers < 0:
        raise UserError("--image-workers must be 0 or more")
    a.model_config = (a.model_config or C.configs_dir() / "models" / f"{a.model}.yaml").resolve()
    a.answers = a.answers or a.comp_dir / "test_labels.csv"
    a.image_answers = (a.image_answers or a.image_dir / "test_labels.csv").resolve()
    a.image_dir = a.image_dir.resolve()
    a.image_model_config = (C.configs_dir() / "models" / f"{a.image_model}.yaml").resolve()
    if a.parts & {"images-speed", "images-quality"}:
        if not a.image_model_config.exists():
            raise UserError(f"--image-model: no model config {a.image_model_config}")
        a.image_runs = (a.image_runs.split() if a.image_runs is not None
                        else list(load_competition(a.image_comp).default_models))
    return a


@C.cli
def main(argv: list[str] | None = None) -> None:
    t_start = time.time()
    a = parse(argv)
    text_parts = a.parts & {"quality", "speed", "growth"}
    comp = load_competition(a.comp)
    f = comp.files
    data = {"train": (a.comp_dir / f.train).resolve(), "test": (a.comp_dir / f.test).resolve(),
            "answers": a.answers.resolve(),
            "columns": ["--text-column", comp.inputs.text.columns[0], "--label-column", comp.label_column,
                        "--id-column", comp.id_column]}
    for k in ("train", "test", "answers") if text_parts else ():
        if not data[k].exists():
            raise UserError(f"{data[k]} not found: pass --comp-dir (and --answers) of a Kaggle-shaped folder with answers")
    if text_parts and not a.model_config.exists():
        raise UserError(f"no model config {a.model_config}")
    work = C.root() / "results" / comp.name / "bench"
    res = read_json(a.out_json) if a.out_json.exists() else {}
    # which stack and commit measured each part: a part not run keeps the figures (and stamp) it had
    stamps = res.setdefault("part_stamps", {})
    if res.get("machine") and not stamps:  # results.json from before parts were stamped
        stamps.update({part: {"git_sha": res.get("git_sha"), "date": res.get("date"), "machine": res["machine"]}
                       for part in ("quality", "speed", "growth") if res.get(part)})
    res.update({"git_sha": C.git_sha(), "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()})
    if text_parts:  # the text parts' keys stay as they were when only the images part runs
        res.update({"comp": comp.name, "answers": str(a.answers), "model": a.model})
    before = dict(stamps)
    stamps.update({part: {"git_sha": res["git_sha"], "date": res["date"], "machine": res["machine"]}
                   for part in a.parts})
    if "growth" in a.parts:
        n_train, n_test = len(pd.read_csv(data["train"])), len(pd.read_csv(data["test"]))
        sizes = sorted({min(n_train if s == "all" else int(s), n_train) for s in a.growth_sizes.split(",")})
        test_sizes = sorted({min(n, n_test) for n in sizes})

    if "quality" in a.parts:
        res["quality"] = part_quality(a, comp, data, work, res.get("quality"), before.get("quality"))
    if "speed" in a.parts:
        res["speed"] = part_speed(a, data, work, test_sizes if "growth" in a.parts else [])
    if "growth" in a.parts:
        res["growth"] = part_growth(a, comp, data, work, res.get("speed"), sizes)
        plot_growth(res["growth"], a.plot)
    if a.parts & {"images-speed", "images-quality"}:
        res["images"] = part_images(a, res.get("images"))
    if "dedup" in a.parts:
        res["dedup"] = part_dedup(a)
    if "validation" in a.parts:
        res["validation"] = part_validation(a, work / "validation", res.get("images"), stamps.get("images-quality"))
    if "scale" in a.parts:
        res["scale"] = part_scale(C.root() / "results" / "bench-scale")
    if "budget" in a.parts:
        dirs = {comp.name: a.comp_dir.resolve(), a.image_comp: a.image_dir}
        res["budget"] = part_budget(parse_points(a.budget_points, dirs), dirs, C.root() / "results" / "bench-budget",
                                    res.get("budget"), res["git_sha"], a.budget_redo)

    q, s = res.get("quality") or {}, res.get("speed") or {}
    for key in ("ensemble_test_micro_f1", "ensemble_test_macro_f1", "best_single_test_micro_f1", "tfidf_test_micro_f1",
                "trainer_test_micro_f1", "best_neural_test_micro_f1"):
        res[key] = q.get(key)
    for key in ("train_samples_per_s", "infer_texts_per_s"):
        res[key] = s.get(key)
    res["stages"] = stage_table(res)
    res["peak_rss_mb"] = {k: v["peak_rss_mb"] for k, v in res["stages"].items()}
    cmd = shlex.join(["python", "bench/run_bench.py", *(argv if argv is not None else sys.argv[1:])])
    if text_parts:
        # the USE_GEN=1 pass (make bench BENCH_GEN=1) only where its runs are among the scored ones
        gen = any(n.endswith("+gen") for n in ((res.get("quality") or {}).get("runs") or {}))
        res["commands"] = [
            f"make all COMP={comp.name} COMP_DIR={a.comp_dir} MODELS=\"{' '.join(a.runs)}\"",
            *([f"make augment COMP={comp.name} && make all COMP={comp.name} MODELS=\"{' '.join(a.runs)}\" USE_GEN=1"]
              if gen else []),
            cmd]
    if a.parts & {"images-speed", "images-quality"}:
        # each images part's own command: a part not rerun keeps the one that measured it
        cmds = res["images"].setdefault("bench_commands", {})
        cmds.update({part: cmd for part in sorted(a.parts & {"images-speed", "images-quality"})})
    res.setdefault("part_commands", {}).update({part: cmd for part in sorted(a.parts & {"dedup", "validation", "scale",
                                                                                          "budget"})})
    gpu_file = BENCH / "gpu_check.json"  # written on a GPU box by bench/gpu_check.py
    if gpu_file.exists():
        res["gpu_check"] = json.loads(gpu_file.read_text())
    res.setdefault("seconds", {})
    res["seconds"]["+".join(sorted(a.parts))] = time.time() - t_start
    write_json(a.out_json, res)
    write_text(a.out_md, render(res))
    print(f"wrote {a.out_json}, {a.out_md}" + (f", {a.plot}" if "growth" in a.parts else ""))


if __name__ == "__main__":
    main()

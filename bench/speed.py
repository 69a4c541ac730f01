"""`make bench`, part speed: an A/B of medalist's fold training (bench/medalist_steps.py) against
the plain Trainer script (bench/trainer_baseline.py --max-steps) on the same rows, alternating,
each side its own process; medians of the repeats.

Inference is timed on the fold medalist's side just saved, in a process of its own
(`python bench/speed.py --fold-dir …`, below) that alternates three predictions of the same texts
from the same weights, so the machine's load falls on them alike: medalist's `load_predictor` (what
`make predict`, TTA and a code competition's kernel use) in the precision it picks for a run trained
with `cpu_bf16_training` (the minilm configs: bf16 autocast on a CPU with native bf16), the same in
fp32 (`MEDALIST_CPU_INFERENCE=fp32`), and the plain Trainer's `predict` as
bench/trainer_baseline.py makes it. The Trainer script's own predict after its training steps is
kept beside them.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.core.io import read_json, write_json
from processes import BENCH, run_child


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
            if side == "medalist":  # its inference: load_predictor on the fold just saved, both precisions
                fit = samples[side][-1]
                proc = run_child([sys.executable, str(Path(__file__).resolve()), "--fold-dir", str(out / "fold0"),
                                  *common, "--rounds", str(args.infer_rounds), "--out", str(out / "inference.json")],
                                 d / f"{side}-{rep}-inference.log")
                timed = {**read_json(out / "inference.json"), "process": proc}
                fit.update(infer_texts_per_s_engine=fit["infer_texts_per_s"], infer_texts_per_s=timed["texts_per_s"],
                           infer_texts_per_s_fp32=timed["texts_per_s_fp32"],
                           infer_texts_per_s_trainer=timed["texts_per_s_trainer"], inference=timed)
            last = samples[side][-1]
            print(f"  {side} #{rep + 1}: {last['train_samples_per_s']:.2f} samples/s, {last['infer_texts_per_s']:.1f} texts/s"
                  + (f" (fp32 {last['infer_texts_per_s_fp32']:.1f}, Trainer.predict beside them "
                     f"{last['infer_texts_per_s_trainer']:.1f})" if side == "medalist" else ""), flush=True)

    def med(side: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[side])

    def pair(key: str) -> dict:
        m, t = med("medalist", key), med("trainer", key)
        return {"medalist": m, "trainer": t, "ratio": m / t if t else None}

    gpu = {side: max((s.get("peak_gpu_mb") or 0) for s in samples[side]) or None for side in samples}
    inf = [s["inference"] for s in samples["medalist"]]

    def beside_trainer(key: str, rounds: str) -> dict:
        """Inference, both sides timed in the one inference process: medians, and as the ratio the
        median of the per-round ratios (a round's passes run back to back, under the same load)."""
        return {"medalist": med("medalist", key), "trainer": med("medalist", "infer_texts_per_s_trainer"),
                "ratio": round_ratios(inf, rounds)["median"]}

    return {
        "steps": args.steps, "rows": rows, "infer_rows": min(args.infer_rows, len(test)), "repeats": args.repeats,
        "train_samples_per_s": pair("train_samples_per_s"),
        "infer_texts_per_s": beside_trainer("infer_texts_per_s", "rounds"),
        "infer_texts_per_s_fp32": beside_trainer("infer_texts_per_s_fp32", "rounds_fp32"),
        "infer_round_ratios": {"chosen": round_ratios(inf, "rounds"), "fp32": round_ratios(inf, "rounds_fp32")},
        "infer_texts_per_s_trainer_process": med("trainer", "infer_texts_per_s"),
        "infer_precision": inf[0]["precision"], "infer_rounds": args.infer_rounds,
        "infer_process_seconds": statistics.median(i["process"]["wall_seconds"] for i in inf),
        "bf16_native_cpu": inf[0]["bf16_native_cpu"],
        "infer_max_abs_diff_vs_fp32": max(i["max_abs_diff_vs_fp32"] for i in inf),
        "infer_rounds_texts_per_s": [{k: i[k] for k in ("rounds", "rounds_fp32", "rounds_trainer")} for i in inf],
        "tokenize_seconds": {**pair("tokenize_seconds"), "texts": samples["medalist"][0]["n_tokenized"]},
        "peak_rss_mb": {side: max(s["process"]["peak_rss_mb"] for s in samples[side]) for side in samples},
        "peak_gpu_mb": gpu,
        "mixed_precision": {side: samples[side][0].get("mixed_precision") for side in samples},
        "device": samples["medalist"][0].get("device"),
        "samples": {side: [{k: s[k] for k in ("train_samples_per_s", "infer_texts_per_s", "infer_texts_per_s_fp32",
                                              "infer_texts_per_s_trainer", "infer_texts_per_s_engine",
                                              "tokenize_seconds") if k in s}
                           for s in samples[side]] for side in samples},
        "infer_growth": samples["medalist"][-1].get("infer_growth", []),
        "process_seconds": {side: statistics.median(s["process"]["wall_seconds"] for s in samples[side])
                            for side in samples},
        "wall_seconds": (sum(s["process"]["wall_seconds"] for side in samples for s in samples[side])
                         + sum(i["process"]["wall_seconds"] for i in inf)),
    }


def round_ratios(inf: list[dict], rounds: str) -> dict:
    """medalist's texts/s over the Trainer's, pass by pass within each round of each inference
    process: their median, smallest and largest."""
    r = [m / t for i in inf for m, t in zip(i[rounds], i["rounds_trainer"])]
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "n": len(r)}


def time_inference(argv: list[str] | None = None) -> None:
    """The child process: --test-csv predicted from the weights in --fold-dir three ways, alternating
    --rounds times after a warm-up batch each, so load on the machine falls on all three alike:
    medalist's `load_predictor` in the precision it picks for a run trained with `cpu_bf16_training`
    (as the minilm configs are), the same in fp32 (MEDALIST_CPU_INFERENCE=fp32), and the plain
    Trainer's `predict` as bench/trainer_baseline.py makes it (texts padded to max_length beforehand,
    the default collator, fp32 on a CPU). Texts/s of each pass, medians, and the largest probability
    difference between medalist's two precisions."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from medalist.core import config as C
    from medalist.models import inference
    from medalist.models.registry import family_module

    ap = argparse.ArgumentParser(description=time_inference.__doc__.splitlines()[0])
    ap.add_argument("--fold-dir", required=True)
    ap.add_argument("--train-csv", required=True, help="for the class count, as bench/medalist_steps.py takes it")
    ap.add_argument("--test-csv", required=True)
    ap.add_argument("--model-config", required=True)
    ap.add_argument("--text-column", default="Question")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--id-column", default="id")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    path = Path(a.model_config)
    data = C.load_yaml(path)
    enc = family_module(data["family"])
    cfg = dataclasses.replace(C.from_dict(enc.Config, data, path.name), cpu_bf16_training=True)
    n_classes = int(pd.read_csv(a.train_csv)[a.label_column].max()) + 1
    test = pd.read_csv(a.test_csv)
    rows = pd.DataFrame({"id": test[a.id_column].astype(str), "text": test[a.text_column].astype(str)})
    bs = cfg.eval_batch_size
    predictors = {}
    for knob in ("auto", "fp32"):  # read when the predictor is built
        os.environ["MEDALIST_CPU_INFERENCE"] = knob
        predictors[knob] = enc.load_predictor(cfg, Path(a.fold_dir), n_classes)
    tok = AutoTokenizer.from_pretrained(a.fold_dir)
    ds = Dataset.from_pandas(test[[a.text_column]]).map(
        lambda b: tok(b[a.text_column], padding="max_length", truncation=True, max_length=cfg.max_length), batched=True)
    trainer = Trainer(model=AutoModelForSequenceClassification.from_pretrained(a.fold_dir),
                      args=TrainingArguments(output_dir=str(Path(a.out).parent / "trainer-predict"),
                                             per_device_eval_batch_size=bs, report_to="none"))
    sides = {"auto": lambda n: predictors["auto"](rows.iloc[:n]), "fp32": lambda n: predictors["fp32"](rows.iloc[:n]),
             "trainer": lambda n: trainer.predict(ds.select(range(n)))}
    for side in sides.values():
        side(min(bs, len(rows)))
    speeds: dict[str, list[float]] = {side: [] for side in sides}
    out: dict[str, np.ndarray] = {}
    for r in range(a.rounds):
        order = list(sides)[r % 3:] + list(sides)[:r % 3]
        for side in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            out[side] = sides[side](len(rows))
            speeds[side].append(len(rows) / (time.perf_counter() - t0))
    res = {"precision": predictors["auto"].precision, "bf16_native_cpu": inference.cpu_bf16_native(), "n": len(rows),
           "texts_per_s": statistics.median(speeds["auto"]), "texts_per_s_fp32": statistics.median(speeds["fp32"]),
           "texts_per_s_trainer": statistics.median(speeds["trainer"]),
           "rounds": speeds["auto"], "rounds_fp32": speeds["fp32"], "rounds_trainer": speeds["trainer"],
           "max_abs_diff_vs_fp32": float(np.abs(out["auto"] - out["fp32"]).max())}
    write_json(Path(a.out), res)
    print(res)


if __name__ == "__main__":
    time_inference()

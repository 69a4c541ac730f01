"""`make bench`, part speed: an A/B of medalist's fold training (bench/medalist_steps.py) against
the plain Trainer script (bench/trainer_baseline.py --max-steps) on the same rows, alternating,
each side its own process; medians of the repeats.

medalist's inference is timed through `load_predictor` (what `make predict`, TTA and a code
competition's kernel use) on the fold its training side just saved, in a process of its own
(`python bench/speed.py --fold-dir …`, below): the precision it picks for a run trained with
`cpu_bf16_training` (the minilm configs: bf16 autocast on a CPU with native bf16) and fp32
(`MEDALIST_CPU_INFERENCE=fp32`), alternating in that one process, each after a warm-up batch.
The Trainer's inference is `trainer.predict` after its training steps.
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
                           infer_texts_per_s_fp32=timed["texts_per_s_fp32"], inference=timed)
            print(f"  {side} #{rep + 1}: {samples[side][-1]['train_samples_per_s']:.2f} samples/s, "
                  f"{samples[side][-1]['infer_texts_per_s']:.1f} texts/s", flush=True)

    def med(side: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[side])

    def pair(key: str) -> dict:
        m, t = med("medalist", key), med("trainer", key)
        return {"medalist": m, "trainer": t, "ratio": m / t if t else None}

    gpu = {side: max((s.get("peak_gpu_mb") or 0) for s in samples[side]) or None for side in samples}
    inf = [s["inference"] for s in samples["medalist"]]
    fp32, t_inf = med("medalist", "infer_texts_per_s_fp32"), med("trainer", "infer_texts_per_s")
    return {
        "steps": args.steps, "rows": rows, "infer_rows": min(args.infer_rows, len(test)), "repeats": args.repeats,
        "train_samples_per_s": pair("train_samples_per_s"),
        "infer_texts_per_s": pair("infer_texts_per_s"),
        "infer_texts_per_s_fp32": {"medalist": fp32, "trainer": t_inf, "ratio": fp32 / t_inf if t_inf else None},
        "infer_precision": inf[0]["precision"], "infer_rounds": args.infer_rounds,
        "bf16_native_cpu": inf[0]["bf16_native_cpu"],
        "infer_max_abs_diff_vs_fp32": max(i["max_abs_diff_vs_fp32"] for i in inf),
        "infer_rounds_texts_per_s": [{k: i[k] for k in ("rounds", "rounds_fp32")} for i in inf],
        "tokenize_seconds": {**pair("tokenize_seconds"), "texts": samples["medalist"][0]["n_tokenized"]},
        "peak_rss_mb": {side: max(s["process"]["peak_rss_mb"] for s in samples[side]) for side in samples},
        "peak_gpu_mb": gpu,
        "mixed_precision": {side: samples[side][0].get("mixed_precision") for side in samples},
        "device": samples["medalist"][0].get("device"),
        "samples": {side: [{k: s[k] for k in ("train_samples_per_s", "infer_texts_per_s", "infer_texts_per_s_fp32",
                                              "infer_texts_per_s_engine", "tokenize_seconds") if k in s}
                           for s in samples[side]] for side in samples},
        "infer_growth": samples["medalist"][-1].get("infer_growth", []),
        "process_seconds": {side: statistics.median(s["process"]["wall_seconds"] for s in samples[side])
                            for side in samples},
        "wall_seconds": (sum(s["process"]["wall_seconds"] for side in samples for s in samples[side])
                         + sum(i["process"]["wall_seconds"] for i in inf)),
    }


def time_inference(argv: list[str] | None = None) -> None:
    """The child process: medalist's inference of --test-csv through `load_predictor` on --fold-dir,
    in the precision it picks for a run trained with `cpu_bf16_training` (as the minilm configs are)
    and in fp32 (MEDALIST_CPU_INFERENCE=fp32), alternating --rounds times after a warm-up batch each;
    texts/s of each pass, medians and the largest probability difference between the two."""
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
    predictors = {}
    for knob in ("auto", "fp32"):  # read when the predictor is built
        os.environ["MEDALIST_CPU_INFERENCE"] = knob
        predictors[knob] = enc.load_predictor(cfg, Path(a.fold_dir), n_classes)
        predictors[knob](rows.iloc[:cfg.eval_batch_size])
    speeds: dict[str, list[float]] = {knob: [] for knob in predictors}
    out: dict[str, np.ndarray] = {}
    for r in range(a.rounds):
        for knob in (("auto", "fp32") if r % 2 == 0 else ("fp32", "auto")):
            t0 = time.perf_counter()
            out[knob] = predictors[knob](rows)
            speeds[knob].append(len(rows) / (time.perf_counter() - t0))
    res = {"precision": predictors["auto"].precision, "bf16_native_cpu": inference.cpu_bf16_native(),
           "texts_per_s": statistics.median(speeds["auto"]), "texts_per_s_fp32": statistics.median(speeds["fp32"]),
           "rounds": speeds["auto"], "rounds_fp32": speeds["fp32"], "n": len(rows),
           "max_abs_diff_vs_fp32": float(np.abs(out["auto"] - out["fp32"]).max())}
    write_json(Path(a.out), res)
    print(res)


if __name__ == "__main__":
    time_inference()

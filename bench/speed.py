"""`make bench`, part speed: an A/B of medalist's fold training (bench/medalist_steps.py) against
the plain Trainer script (bench/trainer_baseline.py --max-steps) on the same rows, alternating,
each side its own process; medians of the repeats.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pandas as pd

from medalist.core.io import read_json
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

"""medalist's side of the bench's A/B: the pipeline's own fold trainer on a fixed number of steps.

`hf_text.fit_fold` (the engine) trains one epoch over exactly the rows given (run_bench passes steps × batch
rows, the same rows the plain Trainer gets), so the timed loop is the one `make train` runs:
length-grouped batches, dynamic padding, fused AdamW, accelerate (bf16 by itself on CUDA). Its
own figures are read back: train_samples_per_s of the step loop and the test predict time.
Optionally times `load_predictor` (what `make predict` / TTA use) on growing test sets.

Reads   --train-csv, --test-csv (as trainer_baseline.py), --model-config
Writes  --out/metrics.json (and the fold's weights under --out/fold0/)
Run     python bench/medalist_steps.py --train-csv t.csv --test-csv s.csv \
            --model-config configs/models/minilm.yaml --out /tmp/m [--infer-sizes 500,1000 --growth-test-csv test.csv]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import pandas as pd
import torch

from medalist.core import config as C
from medalist.models import FoldData
from medalist.models.registry import family_module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-csv", required=True)
    ap.add_argument("--test-csv", required=True)
    ap.add_argument("--model-config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--text-column", default="Question")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--id-column", default="id")
    ap.add_argument("--infer-sizes", default="", help="comma-separated test sizes to time load_predictor on")
    ap.add_argument("--growth-test-csv", help="texts for --infer-sizes (default: --test-csv)")
    a = ap.parse_args()

    path = Path(a.model_config)
    data = C.load_yaml(path)
    enc = family_module(data["family"])
    cfg = dataclasses.replace(C.from_dict(enc.Config, data, path.name), epochs=1)
    train = pd.read_csv(a.train_csv)
    test = pd.read_csv(a.test_csv)
    texts = train[a.text_column].astype(str).tolist()
    labels = train[a.label_column].to_numpy(dtype=int)
    n_classes = int(labels.max()) + 1
    test_texts = test[a.text_column].astype(str).tolist()

    tok = enc.load_tokenizer(cfg)
    t0 = time.perf_counter()
    enc.encode(tok, texts + test_texts, cfg.max_length)
    tokenize_seconds = time.perf_counter() - t0

    def rows(ids, column) -> pd.DataFrame:  # the processed-table shape families read
        return pd.DataFrame({"id": [str(i) for i in ids], "text": column})

    fold = FoldData(fold=0, n_classes=n_classes, train=rows(range(len(texts)), texts), train_labels=labels,
                    val=rows(range(8), texts[:8]), val_labels=labels[:8],
                    test=rows(test[a.id_column], test_texts), metric="micro_f1")
    out = Path(a.out)
    res = enc.fit_fold(cfg, fold, out / "fold0")
    info = res.info
    sps = info["train_samples_per_s"]
    metrics = {
        "steps": info["optimizer_steps"],
        "train_rows_seen": len(texts),
        "train_seconds": len(texts) / max(sps, 1e-9),
        "train_samples_per_s": sps,
        "predict_seconds": info["predict_seconds"],
        "infer_texts_per_s": len(test_texts) / max(info["predict_seconds"], 1e-9),
        "n_test": len(test_texts),
        "tokenize_seconds": tokenize_seconds,
        "n_tokenized": len(texts) + len(test_texts),
        "peak_gpu_mb": info.get("peak_gpu_mb") if torch.cuda.is_available() else None,
        "device": info.get("device"),
        "mixed_precision": info.get("mixed_precision"),
    }
    sizes = [int(s) for s in a.infer_sizes.split(",") if s]
    if sizes:
        grow_texts = pd.read_csv(a.growth_test_csv or a.test_csv)[a.text_column].astype(str).tolist()
        grow = rows(range(len(grow_texts)), grow_texts)
        predict = enc.load_predictor(cfg, out / "fold0", n_classes)
        predict(grow.iloc[:8])  # first call pays lazy initialisation, not the size being timed
        metrics["infer_growth"] = []
        for n in sizes:
            t0 = time.perf_counter()
            predict(grow.iloc[:n])
            metrics["infer_growth"].append({"n": min(n, len(grow)), "seconds": time.perf_counter() - t0})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()

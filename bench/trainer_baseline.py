"""The plain Hugging Face `Trainer` fine-tune that `make bench` holds medalist against.

Written the way a typical user writes it: `datasets` + `map(tokenize, padding="max_length")`,
the default collator, the default optimizer and scheduler of `TrainingArguments`, one model trained
on all of train.csv. The hyperparameters come from the same model config the pipeline uses
(configs/models/<m>.yaml), so the comparison is backbone for backbone, setting for setting.
Measurement only adds a callback that stamps the clock; it does not change the training.

Reads   --train-csv (text + label columns), --test-csv (id + text), --model-config
Writes  --out/test.csv (id, p_0…), --out/metrics.json (seconds, throughput, peak memory)
Run     python bench/trainer_baseline.py --train-csv ../shared/competitions/math-subjects/train.csv \
            --test-csv ../shared/competitions/math-subjects/test.csv --model-config configs/models/minilm.yaml \
            --out results/math-subjects/bench/trainer [--max-steps 10]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from medalist.models.backbones import resolve


class Clock(TrainerCallback):
    """Wall time of the training loop: from on_train_begin to the end of the last step."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.end = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.end = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-csv", required=True)
    ap.add_argument("--test-csv", required=True)
    ap.add_argument("--model-config", required=True, help="configs/models/<m>.yaml: same hyperparameters")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (speed runs)")
    ap.add_argument("--text-column", default="Question")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--id-column", default="id")
    args = ap.parse_args()

    cfg = yaml.safe_load(Path(args.model_config).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_df = pd.read_csv(args.train_csv)
    test_df = pd.read_csv(args.test_csv)
    num_labels = int(train_df[args.label_column].max()) + 1

    backbone = resolve(cfg["backbone"])  # the pipeline's own alias table: same weights as medalist's run
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=num_labels)

    def tokenize(batch):
        return tokenizer(batch[args.text_column], padding="max_length", truncation=True,
                         max_length=cfg["max_length"])

    t0 = time.perf_counter()
    train_ds = Dataset.from_pandas(train_df[[args.text_column, args.label_column]].rename(
        columns={args.label_column: "labels"})).map(tokenize, batched=True)
    test_ds = Dataset.from_pandas(test_df[[args.text_column]]).map(tokenize, batched=True)
    tokenize_seconds = time.perf_counter() - t0

    training_args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=cfg["batch_size"],
        per_device_eval_batch_size=cfg["eval_batch_size"],
        gradient_accumulation_steps=cfg.get("grad_accum", 1),
        learning_rate=cfg["lr"],
        lr_scheduler_type=cfg.get("scheduler", "linear"),
        warmup_steps=cfg.get("warmup_ratio", 0.0),  # a float below 1 is a ratio of the total steps
        num_train_epochs=cfg["epochs"],
        max_steps=args.max_steps,
        weight_decay=cfg.get("weight_decay", 0.0),
        label_smoothing_factor=cfg.get("label_smoothing", 0.0),
        seed=cfg.get("seed", 42),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        save_strategy="no",
        logging_steps=50,
        report_to="none",
    )
    clock = Clock()
    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, callbacks=[clock])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    train_seconds = clock.end - clock.start
    rows = min(result.global_step * cfg["batch_size"] * cfg.get("grad_accum", 1), len(train_df) * cfg["epochs"])

    t0 = time.perf_counter()
    logits = trainer.predict(test_ds).predictions
    predict_seconds = time.perf_counter() - t0
    proba = torch.softmax(torch.tensor(logits, dtype=torch.float32), dim=-1).numpy()

    pred = pd.DataFrame(proba, columns=[f"p_{k}" for k in range(num_labels)])
    pred.insert(0, "id", test_df[args.id_column].astype(str).to_numpy())
    pred.to_csv(out / "test.csv", index=False)
    metrics = {
        "steps": int(result.global_step),
        "train_rows_seen": int(rows),
        "train_seconds": train_seconds,
        "train_samples_per_s": rows / max(train_seconds, 1e-9),
        "trainer_train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "predict_seconds": predict_seconds,
        "infer_texts_per_s": len(test_df) / max(predict_seconds, 1e-9),
        "n_test": len(test_df),
        "tokenize_seconds": tokenize_seconds,
        "n_tokenized": len(train_df) + len(test_df),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "mixed_precision": "bf16" if training_args.bf16 else "no",
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()

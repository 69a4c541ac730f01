"""`make bench`'s machinery on a tiny Kaggle-shaped folder with answers and a tiny random BERT: every
part runs (a finished TF-IDF run made by the pipeline itself, references, A/B, growth) and
results.json / BENCHMARKS.md / growth.png come out with the required keys. No timing asserts:
speed targets are what the bench records, not what tests check."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
WORDS = ["solve equation root", "coin dice chance", "triangle circle angle", "polynomial complex inequality",
         "prime divisor modulo", "fraction percent sum", "matrix vector cosine"]


def _texts(n: int, seed: int) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    labels = [i % len(WORDS) for i in range(n)]
    texts = [" ".join(rng.permutation((WORDS[y] + " find the value of " + str(rng.integers(9))).split())[: rng.integers(4, 9)])
             for y in labels]
    return texts, labels


def _tiny_bert(root: Path) -> Path:
    import torch
    import transformers

    words = sorted(set(" ".join(WORDS + ["find the value of"]).split()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *map(str, range(10))]
    path = root / "tiny-bert"
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    transformers.BertModel(cfg).save_pretrained(path)
    transformers.BertTokenizer(vocab=str(path / "vocab.txt")).save_pretrained(path)
    return path


def test_bench_writes_results_and_report(project, tmp_path, monkeypatch):
    comp_dir = tmp_path / "math-subjects"
    comp_dir.mkdir()
    tr_texts, tr_labels = _texts(70, 0)
    te_texts, te_labels = _texts(35, 1)
    pd.DataFrame({"Question": tr_texts, "label": tr_labels}).to_csv(comp_dir / "train.csv", index=False)
    pd.DataFrame({"id": range(35), "Question": te_texts}).to_csv(comp_dir / "test.csv", index=False)
    pd.DataFrame({"id": range(35), "label": 0}).to_csv(comp_dir / "sample_submission.csv", index=False)
    pd.DataFrame({"id": range(35), "label": te_labels}).to_csv(comp_dir / "test_labels.csv", index=False)

    (project / "configs" / "models" / "tiny.yaml").write_text(yaml.safe_dump({
        "family": "encoder", "backbone": str(_tiny_bert(tmp_path)), "max_length": 16, "batch_size": 4,
        "eval_batch_size": 8, "lr": 1e-3, "epochs": 1, "warmup_ratio": 0.1, "fused_adamw": False}))

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for cmd in (["medalist.stages.download", "--comp", "math-subjects", "--dir", str(comp_dir)],
                ["medalist.stages.folds", "--comp", "math-subjects"],
                ["medalist.stages.train", "--comp", "math-subjects", "--model", "tfidf"]):
        subprocess.run([sys.executable, "-m", *cmd], cwd=project, env=env, check=True, capture_output=True)

    monkeypatch.syspath_prepend(str(REPO / "bench"))  # as `python bench/run_bench.py` has it: its parts beside it
    run_bench = importlib.import_module("run_bench")
    out = tmp_path / "out"
    run_bench.main(["--comp", "math-subjects", "--comp-dir", str(comp_dir), "--runs", "tfidf", "--model", "tiny",
                    "--steps", "2", "--repeats", "1", "--infer-rows", "16", "--growth-sizes", "20,all",
                    "--out-json", str(out / "results.json"), "--out-md", str(out / "BENCHMARKS.md"),
                    "--plot", str(out / "growth.png")])

    res = json.loads((out / "results.json").read_text())
    for key in ("ensemble_test_micro_f1", "best_single_test_micro_f1", "tfidf_test_micro_f1",
                "trainer_test_micro_f1", "peak_rss_mb", "git_sha", "machine", "commands"):
        assert res[key] is not None, key
    for key in ("train_samples_per_s", "infer_texts_per_s"):
        assert set(res[key]) == {"medalist", "trainer", "ratio"}
        assert res[key]["medalist"] > 0 and res[key]["trainer"] > 0
    assert 0 <= res["tfidf_test_micro_f1"] <= 1 and 0 <= res["ensemble_test_micro_f1"] <= 1
    assert "majority class" in res["quality"]["references"]
    assert [r["n"] for r in res["growth"]["rows"]] == [20, 70]
    assert any(k.startswith("train tfidf") for k in res["peak_rss_mb"])
    md = (out / "BENCHMARKS.md").read_text()
    assert "## Speed" in md and "## Quality" in md and "## Growth" in md
    assert (out / "growth.png").stat().st_size > 0

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
import pytest
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


@pytest.mark.slow
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
                    "--parts", "quality,speed,growth",
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


# ---------------------------------------------------------------- the images part (bench/images.py)


def _bench_module(monkeypatch, name: str):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    return importlib.import_module(name)


def _image_args(tmp_path, answers: Path, runs=("cnn", "image-embed")):
    import argparse

    return argparse.Namespace(image_comp="fashion-products", image_dir=tmp_path / "fashion", image_answers=answers,
                              image_runs=list(runs), parts={"images-quality"})


def _proba_csv(path: Path, ids, pred, k: int = 10) -> None:
    p = np.full((len(ids), k), 0.01)
    p[np.arange(len(ids)), pred] = 0.91
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids, **{f"p_{j}": p[:, j] for j in range(k)}}).to_csv(path, index=False)


def test_images_quality_scores_runs_and_ensemble(project, tmp_path, monkeypatch):
    """Each run's test.csv and the ensemble's submission scored against the answers; stage records
    and SOURCE.md's references carried into the block; the section and goals render."""
    images = _bench_module(monkeypatch, "images")
    from medalist.core.competition import load_competition

    ids = [str(i) for i in range(20)]
    y = np.arange(20) % 10
    answers = tmp_path / "test_labels.csv"
    pd.DataFrame({"id": ids, "label": y}).to_csv(answers, index=False)
    raw = project / "data" / "raw" / "fashion-products"
    raw.mkdir(parents=True)
    (raw / ".complete").write_text("{}")
    pd.DataFrame({"id": ids, "label": 0}).to_csv(raw / "sample_submission.csv", index=False)
    res = project / "results" / "fashion-products"
    wrong_cnn = y.copy()
    wrong_cnn[:4] = (y[:4] + 1) % 10  # 16/20 right
    for run, pred in (("cnn", wrong_cnn), ("image-embed", y)):
        _proba_csv(res / run / "test.csv", ids, pred)
        (res / run / "metrics.json").write_text(json.dumps({"oof_score": 0.9, "train_seconds": 12.0,
                                                            "predict_seconds": 1.0, "peak_rss_mb": 500.0}))
    (res / "ensemble").mkdir(parents=True)
    (res / "ensemble" / "metrics.json").write_text(json.dumps({"oof_score": 0.93, "method": "mean"}))
    sub = project / "submission" / "fashion-products"
    sub.mkdir(parents=True)
    ens = y.copy()
    ens[0] = 3  # 19/20 right
    pd.DataFrame({"id": ids, "label": ens}).to_csv(sub / "submission.csv", index=False)
    records = {s: {"wall_seconds": 60.0, "peak_rss_mb": 400.0} for s, _ in images.stage_plan("fashion-products",
                                                                                              ["cnn", "image-embed"])}
    monkeypatch.setattr(images, "run_stages", lambda *a, **k: records)

    q = images.part_quality(_image_args(tmp_path, answers), load_competition("fashion-products"), tmp_path / "w")
    assert q["runs"]["cnn"]["test"]["micro_f1"] == 0.8
    assert q["runs"]["image-embed"]["test"]["micro_f1"] == 1.0
    assert q["ensemble_test_accuracy"] == 0.95 and q["ensemble"]["method"] == "mean"
    assert q["make_all_seconds"] == 60.0 * len(records)
    assert any("RBF SVC" in r["name"] and r["accuracy"] == 0.880 for r in q["references"])
    md = "\n".join(images.render({"quality": q}))
    assert "## Images" in md and "RBF SVC" in md and "| **make all** |" in md
    assert any(g.startswith("- met: images:") and "0.9500" in g for g in images.goals({"quality": q}))


def test_images_stages_resume_and_record(project, tmp_path, monkeypatch):
    """Stage by stage through make (a stand-in make here): a stage make finds up to date is not
    rerun and keeps its record; a target rebuilt outside the bench loses it."""
    images = _bench_module(monkeypatch, "images")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "make"  # -q: 0 when the target exists; otherwise create it and log the call
    fake.write_text(f"""#!/bin/sh
q=0; t=""
for a in "$@"; do case "$a" in -q) q=1;; --*|*=*) ;; *) t="$a";; esac; done
if [ $q = 1 ]; then [ -e "$t" ] && exit 0 || exit 1; fi
mkdir -p "$(dirname "$t")" && touch "$t" && echo "$t" >> {calls}
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(project)
    args = _image_args(tmp_path, tmp_path / "answers.csv", runs=["cnn"])
    work = tmp_path / "w"
    first = images.run_stages(args, work, upto="folds")
    assert list(first) == ["download", "check", "folds"]
    assert all(r["peak_rss_mb"] is not None and r["cpu_seconds"] >= 0 for r in first.values())
    records = images.run_stages(args, work)
    assert len(calls.read_text().split()) == len(images.stage_plan("fashion-products", ["cnn"]))  # each once
    assert records["folds"] == first["folds"]
    target = project / records["train cnn"]["target"]
    os.utime(target, (1, 1))  # rebuilt by someone else
    again = images.run_stages(args, work)
    assert again["train cnn"]["wall_seconds"] is None and "outside" in again["train cnn"]["note"]


def test_image_ab_sides_train_and_predict(project, tmp_path, monkeypatch):
    """Both sides of the images A/B on tiny PNGs with a tiny timm EfficientNet (no weights): the
    plain loop decodes per access, medalist's goes through the engine and the decode-once cache."""
    image_ab = _bench_module(monkeypatch, "image_ab")
    from medalist.core import config as C
    from medalist.models.families import image
    from tiny_images import make_images

    rows, labels = make_images(project / "imgs", 12, seed=0, prefix="t", size=20)
    rows["image"] = [str(Path(p).relative_to(project)) for p in rows["image"]]
    train = rows.assign(label=labels)
    test = rows.iloc[:6][["id", "image"]].reset_index(drop=True)
    processed = project / "data" / "processed" / "tiny"
    processed.mkdir(parents=True)
    train.to_csv(processed / "train.csv", index=False)
    test.to_csv(processed / "test.csv", index=False)
    cfg = C.from_dict(image.Config, {"family": "image", "backbone": "test_efficientnet", "weights": "none",
                                     "image_size": 24, "batch_size": 4, "eval_batch_size": 8, "fused_adamw": False})
    p = image_ab.plain(cfg, train, test, 3, workers=0)
    m = image_ab.medalist(cfg, train, test, 3, processed, tmp_path / "m")
    for side in (p, m):
        assert side["steps"] == 3 and side["predicted"] == 6 and side["train_seconds"] > 0
        assert np.isfinite(side["last_loss"])
    assert m["infer_batch_size"] == 8 and p["infer_batch_size"] == 4
    assert (processed / "images" / "24.npy").exists()  # medalist read its items from the cache


# ---------------------------------------------------------------- the quality part's ablations (bench/quality.py)


def test_ablations_read_full_and_one_fold_runs(project, tmp_path, monkeypatch):
    """Each technique alone: a run finished on every fold from metrics.json, a neural one trained
    on fold 0 only (`make train … FOLDS=0`) from that fold — a fold left by an older config is not
    counted —, a missing one as not measured with its command; the best fine-tuned transformer and
    the new results keys; the table and goals render. No training."""
    import hashlib

    quality = _bench_module(monkeypatch, "quality")
    benchmarks_md = _bench_module(monkeypatch, "benchmarks_md")
    from medalist.core.competition import load_competition

    comp = load_competition("math-subjects")
    ids = [str(i) for i in range(10)]
    y = np.arange(10) % 7
    answers = tmp_path / "test_labels.csv"
    pd.DataFrame({"id": ids, "label": y}).to_csv(answers, index=False)
    res = project / "results" / "math-subjects"

    def config(run: str, family: str, **model) -> str:
        resolved = {"run": run, "competition": "math-subjects", "use_gen": False, "model": {"family": family, **model}}
        (res / run).mkdir(parents=True, exist_ok=True)
        (res / run / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]

    config("tfidf", "tfidf")
    wrong = y.copy()
    wrong[:2] = (y[:2] + 1) % 7  # 8/10 right
    _proba_csv(res / "tfidf" / "test.csv", ids, wrong, k=7)
    (res / "tfidf" / "metrics.json").write_text(json.dumps({"oof_score": 0.78, "train_seconds": 160.0,
                                                            "predict_seconds": 13.0, "peak_rss_mb": 600.0}))
    key = config("minilm", "encoder", max_length=256, max_train_rows=2000)
    _proba_csv(res / "minilm" / "fold0" / "test.csv", ids, y, k=7)  # 10/10 right
    _proba_csv(res / "minilm" / "fold1" / "test.csv", ids, wrong, k=7)
    for k, h in ((0, key), (1, "an-older-config")):
        (res / "minilm" / f"fold{k}" / "done.json").write_text(json.dumps({
            "config_hash": h, "fold": k, "score": 0.74, "seconds": 700.0, "n_train": 2000, "peak_rss_mb": 3000.0,
            "info": {"predict_seconds": 60.0}}))
    config("tfidf-sgd+pseudo", "tfidf")  # trained on pseudo rows: its row names the teacher its metrics.json records
    _proba_csv(res / "tfidf-sgd+pseudo" / "test.csv", ids, y, k=7)
    (res / "tfidf-sgd+pseudo" / "metrics.json").write_text(json.dumps({
        "oof_score": 0.77, "train_seconds": 30.0, "n_generated": [{"pseudo:tfidf,minilm": 1700}] * 5}))
    monkeypatch.setattr(quality, "ensemble_variant", lambda *a, **k: None)

    abl = quality.ablations(quality.Answers(comp, answers), comp, tmp_path / "w")
    rows = {e["run"]: e for e in abl["rows"].values()}
    assert list(abl["rows"]) == [what + (" (teacher tfidf + minilm)" if run == "tfidf-sgd+pseudo" else "")
                                 for what, run, _ in quality.ABLATIONS]
    assert rows["tfidf"]["measured"] and rows["tfidf"]["test"]["micro_f1"] == 0.8
    assert rows["tfidf"]["measured_on"] == "all 5 folds" and rows["tfidf"]["train_seconds"] == 160.0
    m = rows["minilm"]
    assert m["folds"] == [0] and m["test"]["micro_f1"] == 1.0 and m["train_seconds"] == 700.0
    assert m["measured_on"].startswith("fold 0 of 5, 2000 train rows") and m["family"] == "encoder"
    assert not rows["tfidf-svm"]["measured"] and "make train MODELS=tfidf-svm COMP=math-subjects" == rows["tfidf-svm"]["how"]
    assert abl["ensemble"] is None  # ensemble_variant is not run here

    # a fresh checkout: a run gone from results/ keeps the last results.json's row, saying where it
    # was measured; a run that is there now is scored afresh; an unmeasured one stays unmeasured
    old_svm = {"run": "tfidf-svm", "measured": True, "test": {"micro_f1": 0.7794, "macro_f1": 0.78}, "oof_score": 0.77,
               "train_seconds": 50.0, "measured_on": "all 5 folds"}
    old_tfidf = {**old_svm, "run": "tfidf", "test": {"micro_f1": 0.1, "macro_f1": 0.1}}
    prev = {"rows": {"cheap member: TF-IDF + linear SVM": old_svm, "TF-IDF + logistic regression": old_tfidf}}
    again = quality.ablations(quality.Answers(comp, answers), comp, tmp_path / "w", prev,
                              {"git_sha": "abc1234", "date": "2026-12-03 13:09"})
    kept = {e["run"]: e for e in again["rows"].values()}
    assert kept["tfidf-svm"]["test"]["micro_f1"] == 0.7794
    assert kept["tfidf-svm"]["measured_on"] == ("all 5 folds (measured at git abc1234, 2026-12-03 13:09; "
                                                "its run is not in results/ now)")
    assert kept["tfidf"]["test"]["micro_f1"] == 0.8 and "carried" not in kept["tfidf"]
    assert not kept["tfidf-nbsvm"]["measured"]
    # minilm's fold 0 now (above) does not replace a row measured on all folds before
    old_minilm = {**old_svm, "run": "minilm", "test": {"micro_f1": 0.7876, "macro_f1": 0.79}}
    prev["rows"]["MiniLM fine-tune (CPU defaults)"] = old_minilm
    fuller = quality.ablations(quality.Answers(comp, answers), comp, tmp_path / "w", prev, {"git_sha": "abc1234", "date": "d"})
    m_row = {e["run"]: e for e in fuller["rows"].values()}["minilm"]
    assert m_row["test"]["micro_f1"] == 0.7876 and "folds" not in m_row
    assert m_row["measured_on"] == "all 5 folds (measured at git abc1234, d; results/ now holds fold 0 of it only)"
    del prev["rows"]["MiniLM fine-tune (CPU defaults)"]
    twice = quality.ablations(quality.Answers(comp, answers), comp, tmp_path / "w", again, {"git_sha": "later"})
    assert {e["run"]: e for e in twice["rows"].values()}["tfidf-svm"]["measured_on"] == kept["tfidf-svm"]["measured_on"]

    # a neural run finished on every fold (5 models, 3000 s) and its fold-0 model alone (600 s)
    config("bert-base-uncased", "encoder")
    _proba_csv(res / "bert-base-uncased" / "test.csv", ids, y, k=7)
    _proba_csv(res / "bert-base-uncased" / "fold0" / "test.csv", ids, wrong, k=7)
    (res / "bert-base-uncased" / "fold0" / "done.json").write_text(json.dumps({"fold": 0, "score": 0.7, "seconds": 600.0,
                                                                             "n_train": 8}))
    runs = {"tfidf": {"test": {"micro_f1": 0.8}},
            "bert-base-uncased": {"test": {"micro_f1": 0.9}, "train_seconds": 3000.0, "oof_score": 0.75}}
    cands = quality.neural_candidates(quality.Answers(comp, answers), runs, abl["rows"], res, 5)
    assert sorted((n, e["train_seconds"]) for n, e in cands) == [("bert-base-uncased", 600.0),
                                                                ("bert-base-uncased", 3000.0), ("minilm", 700.0)]
    run, best = quality.best_neural(cands)
    assert run == "minilm" and best["test"]["micro_f1"] == 1.0
    run, best = quality.best_neural(cands, 650.0)  # within a Trainer's 650 s: fold 0's model alone
    assert run == "bert-base-uncased" and best["test"]["micro_f1"] == 0.8
    assert best["measured_on"] == "fold 0's model alone (of 5), 8 train rows"
    assert quality.best_neural(cands, 500.0) == (None, None)
    rival = {"run": run, "test_micro_f1": 0.8, "train_seconds": 600.0, "measured_on": best["measured_on"]}

    q = {"ablations": abl, "best_neural_run": run, "best_neural_test_micro_f1": 1.0, "best_neural_train_seconds": 700.0,
         "best_neural_measured_on": m["measured_on"], "ensemble_test_micro_f1": 0.81, "ensemble_test_macro_f1": 0.79,
         "references": {"HF Trainer (bench/trainer_baseline.py)": {"test": {"micro_f1": 0.735}, "train_seconds": 650.0}},
         "neural_at_trainer_cost": rival}
    md = "\n".join(benchmarks_md.ablation_lines(abl, q))
    assert "### Each technique alone" in md and "| tfidf-svm | not measured" in md and "fold 0 of 5" in md
    goals = benchmarks_md.goals({"quality": q})
    assert any(g.startswith("- not met: ensemble test micro-F1 and macro-F1 ≥ 0.80") for g in goals)
    assert any(g.startswith("- met: a fine-tuned transformer ≥ the plain Trainer at no more training time "
                            "(bert-base-uncased, fold 0's model alone") for g in goals)
    assert "Within the Trainer's training seconds: bert-base-uncased" in md
    q["trainer_test_micro_f1"] = 0.735  # throughput measured, but no finished run of the speed config: not measured
    speed = {"quality": q, "model": "minilm-1ep", "speed": {"train_samples_per_s": {"ratio": 2.0}}}
    assert any(g.startswith("- not measured: training throughput") and g.endswith("speed config, minilm-1ep)")
               for g in benchmarks_md.goals(speed))
    q["runs"] = {"minilm-1ep": {"test": {"micro_f1": 0.72}}}
    assert any(g.startswith("- not met: training throughput") for g in benchmarks_md.goals(speed))
    q["neural_at_trainer_cost"] = None  # nothing trained within the Trainer's seconds
    assert any(g.startswith("- not met: a fine-tuned transformer ≥ the plain Trainer at no more training time (none")
               for g in benchmarks_md.goals({"quality": q}))


def test_quality_keeps_runs_and_ensembles_gone_from_results(project, tmp_path, monkeypatch):
    """A bench rerun where one run of BENCH_MODELS is gone from results/ (a sweep replaced it with
    one fold): that run and the ensembles needing it keep the last results.json's figures, marked;
    the runs there are scored afresh; an ensemble of all techniques that lacks some runs of the last
    one is shown beside it, not instead of it. No training."""
    quality = _bench_module(monkeypatch, "quality")
    benchmarks_md = _bench_module(monkeypatch, "benchmarks_md")
    from medalist.core.competition import load_competition

    comp = load_competition("math-subjects")
    ids = [str(i) for i in range(10)]
    y = np.arange(10) % 7
    answers = tmp_path / "test_labels.csv"
    pd.DataFrame({"id": ids, "label": y}).to_csv(answers, index=False)
    res = project / "results" / "math-subjects"
    _proba_csv(res / "tfidf" / "test.csv", ids, y, k=7)
    (res / "tfidf" / "metrics.json").write_text(json.dumps({"oof_score": 0.78, "train_seconds": 160.0}))
    stamp = {"git_sha": "ad9dd70", "date": "2026-12-04 02:42"}
    old_run = {"test": {"micro_f1": 0.7876, "macro_f1": 0.7934}, "oof_score": 0.7841, "train_seconds": 3087.0,
               "predict_seconds": 160.0, "tta": {"test": {"micro_f1": 0.7878, "macro_f1": 0.7937}, "oof_score": 0.7845,
                                                                    "predict_seconds": 1716.4, "used": True}}
    ens = {"runs": ["tfidf", "minilm"], "test": {"micro_f1": 0.795, "macro_f1": 0.8011}, "oof_score": 0.8003,
           "method": "mean", "seconds": 11.7, "peak_rss_mb": 900.0}
    prev = {"runs": {"tfidf": {**old_run, "test": {"micro_f1": 0.1, "macro_f1": 0.1}}, "minilm": old_run},
            "ensembles": {"plain": ens, "plain + TTA": ens, "USE_GEN=1": {**ens, "runs": ["tfidf+gen", "minilm+gen"]}}}
    answer = quality.Answers(comp, answers)

    runs = quality.scored_runs(answer, comp, ["tfidf", "minilm", "embed"], prev, stamp)
    assert list(runs) == ["tfidf", "minilm"]  # embed: never measured, left out
    assert runs["tfidf"]["test"]["micro_f1"] == 1.0 and "carried" not in runs["tfidf"]  # scored afresh
    assert runs["minilm"]["test"]["micro_f1"] == 0.7876 and runs["minilm"]["tta"]["test"]["micro_f1"] == 0.7878
    assert runs["minilm"]["carried"] == "measured at git ad9dd70, 2026-12-04 02:42; its run is not in results/ now"
    monkeypatch.setattr(quality, "ensemble_variant", lambda *a, **k: None)  # minilm's folds are not all there
    ensembles = quality.scored_ensembles(answer, comp, ["tfidf", "minilm"], runs, tmp_path / "w", prev, stamp)
    assert sorted(ensembles) == ["plain", "plain + TTA"]  # no +gen run is kept, so no USE_GEN=1 ensemble
    assert ensembles["plain"]["test"]["micro_f1"] == 0.795
    assert ensembles["plain"]["carried"].endswith("some of its runs are not in results/ now")
    # other runs than the last results.json's ensemble: nothing kept
    assert quality.scored_ensembles(answer, comp, ["tfidf"], runs, tmp_path / "w", prev, stamp) == {}
    # nothing gone from results/: an ensemble that could not be made is not replaced by an old figure
    fresh = {"tfidf": runs["tfidf"], "minilm": {**old_run}}
    assert quality.scored_ensembles(answer, comp, ["tfidf", "minilm"], fresh, tmp_path / "w", prev, stamp) == {}

    md = benchmarks_md.render({"machine": {"cpu": "x", "cores": 2, "memory_gib": 1, "gpu": None, "os": "linux",
                                           "versions": {}}, "git_sha": "now", "date": "today", "comp": "math-subjects",
                               "quality": {"references": {}, "runs": runs, "ensembles": ensembles,
                                           "ablations": {"rows": {}, "ensemble": None, "ensembles_before": []}}})
    assert "| run minilm (measured at git ad9dd70, 2026-12-04 02:42; its run is not in results/ now) | 0.7876 |" in md
    assert "| **ensemble plain** (mean; measured at git ad9dd70" in md

    # each technique alone: the last ensemble of all of them had runs that are gone now
    all_before = {**ens, "runs": ["tfidf", "tfidf-svm", "minilm"], "train_seconds": 3300.0}
    old_svm = {"run": "tfidf-svm", "measured": True, "test": {"micro_f1": 0.7794, "macro_f1": 0.78}, "oof_score": 0.77,
               "train_seconds": 50.0, "measured_on": "all 5 folds"}
    made = {**ens, "runs": ["tfidf", "minilm-dapt"], "train_seconds": 5000.0}
    made_sub = tmp_path / "scratch" / "submission" / "m" / "s.csv"
    made_sub.parent.mkdir(parents=True)
    made_sub.write_text("id,label\n")
    monkeypatch.setattr(quality, "ensemble_variant", lambda *a, **k: made_sub)
    monkeypatch.setattr(quality, "read_json", lambda f: {"oof_score": made["oof_score"], "method": "mean",
                                                         "wall_seconds": made["seconds"]})
    monkeypatch.setattr(quality.Answers, "score_submission", lambda self, sub: made["test"])
    _proba_csv(res / "minilm-dapt" / "test.csv", ids, y, k=7)
    (res / "minilm-dapt" / "metrics.json").write_text("{}")
    monkeypatch.setattr(quality, "run_entry", lambda a, d: {"test": {"micro_f1": 0.79, "macro_f1": 0.8},
                                                            "oof_score": 0.78, "train_seconds": 2500.0})
    abl = quality.ablations(answer, comp, tmp_path / "w", {"rows": {"cheap member: TF-IDF + linear SVM": old_svm},
                                                           "ensemble": all_before}, stamp)
    assert abl["ensemble"]["runs"] == ["tfidf", "minilm-dapt"] and "carried" not in abl["ensemble"]
    assert [e["runs"] for e in abl["ensembles_before"]] == [["tfidf", "tfidf-svm", "minilm"]]
    assert abl["ensembles_before"][0]["carried"].startswith("measured at git ad9dd70")
    lines = "\n".join(benchmarks_md.ablation_lines(abl, {}))
    assert lines.count("**ensemble of all of them**") == 2 and "| tfidf tfidf-svm minilm | the runs on all folds (measured" in lines
    # rerun: an old ensemble whose runs the new one all holds is dropped, the others stay, marked once
    again = quality.ablations(answer, comp, tmp_path / "w", {**abl, "ensemble": {**ens, "runs": ["tfidf"]}},
                              {"git_sha": "later"})
    assert [e["runs"] for e in again["ensembles_before"]] == [["tfidf", "tfidf-svm", "minilm"]]
    assert again["ensembles_before"][0]["carried"] == abl["ensembles_before"][0]["carried"]


def test_default_ensemble_and_training_hours_beside_the_bench_runs(project, tmp_path, monkeypatch):
    """When BENCH_MODELS is not the competition's default MODELS, the default MODELS' ensemble (a
    plain `make all`) is shown beside it: made when its runs are finished, else the last figure for
    the same runs, marked. The quality part's hours count the in-domain pretraining its runs stand
    on, once per pretraining, and the 4-hour goal reads them. No training."""
    quality = _bench_module(monkeypatch, "quality")
    benchmarks_md = _bench_module(monkeypatch, "benchmarks_md")
    from medalist.core.competition import load_competition

    comp = load_competition("math-subjects")
    assert list(comp.default_models) == ["tfidf", "embed", "minilm"]
    ids = [str(i) for i in range(10)]
    answers = tmp_path / "test_labels.csv"
    pd.DataFrame({"id": ids, "label": np.arange(10) % 7}).to_csv(answers, index=False)
    answer = quality.Answers(comp, answers)
    res = project / "results" / "math-subjects"
    stamp = {"git_sha": "ad9dd70", "date": "2026-12-04 02:42"}
    ens = {"runs": ["tfidf", "embed", "minilm"], "tta": True, "test": {"micro_f1": 0.795, "macro_f1": 0.8011},
           "oof_score": 0.8003, "method": "mean", "seconds": 11.7}
    prev = {"runs": {"tfidf": {"train_seconds": 100.0}, "embed": {"train_seconds": 200.0},
                     "minilm": {"train_seconds": 3300.0}}, "ensembles": {"plain + TTA": ens}}

    fresh = {**ens, "runs": list(comp.default_models)}
    assert quality.default_ensemble(answer, comp, {"plain + TTA": fresh}, tmp_path / "w", prev, stamp) is fresh
    kept = quality.default_ensemble(answer, comp, {}, tmp_path / "w", prev, stamp)
    assert kept["test"]["micro_f1"] == 0.795 and kept["train_seconds"] == 3600.0
    assert kept["carried"] == "measured at git ad9dd70, 2026-12-04 02:42; some of its runs are not in results/ now"
    again = quality.default_ensemble(answer, comp, {}, tmp_path / "w", {"default_ensemble": kept}, {"git_sha": "x"})
    assert again["carried"] == kept["carried"] and again["test"] == kept["test"]
    other = {"ensembles": {"plain + TTA": {**ens, "runs": ["tfidf", "minilm"]}}}
    assert quality.default_ensemble(answer, comp, {}, tmp_path / "w", other, stamp) is None

    # the default runs all finished: their ensemble is made (TTA only when each has it)
    for r in comp.default_models:
        (res / r / "tta").mkdir(parents=True)
        (res / r / "metrics.json").write_text("{}")
    made_sub = tmp_path / "scratch" / "submission" / "m" / "s.csv"
    made_sub.parent.mkdir(parents=True)
    calls, read_json = [], quality.read_json
    monkeypatch.setattr(quality, "ensemble_variant", lambda c, members, tta, w: calls.append((members, tta)) or made_sub)
    monkeypatch.setattr(quality, "read_json", lambda f: {"oof_score": 0.81, "method": "caruana", "wall_seconds": 9.0,
                                                         "peak_rss_mb": 200.0, "train_seconds": 100.0})
    monkeypatch.setattr(quality.Answers, "score_submission", lambda self, sub: {"micro_f1": 0.8, "macro_f1": 0.81})
    made = quality.default_ensemble(answer, comp, {}, tmp_path / "w", prev, stamp)
    assert calls == [(["tfidf", "embed", "minilm"], False)] and "carried" not in made
    assert made["test"]["micro_f1"] == 0.8 and made["method"] == "caruana" and made["train_seconds"] == 300.0  # 3 runs
    monkeypatch.setattr(quality, "read_json", read_json)

    # pretraining: counted once for two runs on it, none for a run on a stock backbone
    for run, backbone in (("minilm-dapt", "pretrain:minilm"), ("minilm-dapt+pseudo", "pretrain:minilm"),
                          ("tfidf", None)):
        (res / run).mkdir(parents=True, exist_ok=True)
        (res / run / "config.yaml").write_text(yaml.safe_dump({"run": run, "model": {"backbone": backbone}}))
    assert quality.pretrain_seconds(comp, ["tfidf", "minilm-dapt", "minilm-dapt+pseudo"]) == {}
    assert quality.pretrain_seconds(comp, ["minilm-dapt"], {"pretrain_seconds": {"minilm": 1000.0}}) == {"minilm": 1000.0}
    (res / "pretrain" / "minilm").mkdir(parents=True)
    (res / "pretrain" / "minilm" / "done.json").write_text(json.dumps({"seconds": 1390.0}))
    assert quality.pretrain_seconds(comp, ["tfidf", "minilm-dapt", "minilm-dapt+pseudo"],
                                    {"pretrain_seconds": {"minilm": 1000.0}}) == {"minilm": 1390.0}

    q = {"train_hours": 3.68, "pretrain_seconds": {"minilm": 1390.0}, "reference_train_seconds": 756.0}
    assert ("- met: quality part at most 4 hours of training on this CPU (3.68 h: the runs above + pretraining "
            "minilm 0.39 h + the references 0.21 h)") in benchmarks_md.goals({"quality": q})
    assert any(g.startswith("- not met: quality part at most 4 hours") for g in benchmarks_md.goals({"quality": {"train_hours": 4.2}}))
    assert any(g.startswith("- not measured: quality part at most 4 hours") for g in benchmarks_md.goals({"quality": {}}))
    md = benchmarks_md.render({"machine": {"cpu": "x", "cores": 2, "memory_gib": 1, "gpu": None, "os": "linux",
                                           "versions": {}}, "git_sha": "now", "date": "today", "comp": "math-subjects",
                               "quality": {"references": {}, "runs": {"tfidf": {"test": {"micro_f1": 0.8, "macro_f1": 0.8},
                                                                              "oof_score": 0.8, "train_seconds": 3600.0,
                                                                              "predict_seconds": 1.0}},
                                           "ensembles": {}, "default_ensemble": kept, "pretrain_seconds": {"minilm": 1800.0}}})
    assert ("| **ensemble of the default MODELS** (tfidf embed minilm + TTA; mean; measured at git ad9dd70, "
            "2026-12-04 02:42; some of its runs are not in results/ now) | 0.7950 | 0.8011 |") in md
    assert "1.00 h of training for the runs above, and 0.50 h of in-domain pretraining (minilm)" in md
    assert "plain `make all COMP=math-subjects` makes (its runs trained 1.00 h)" in md


def test_images_speed_renders_the_ratios_and_the_fp32_row(monkeypatch):
    """The A/B table: median ratios, the fold-only (fp32) inference row, and the goals it meets."""
    images = _bench_module(monkeypatch, "images")
    pair = lambda m, p: {"medalist": m, "plain": p, "ratio": m / p, "best": {"medalist": m, "plain": p, "ratio": m / p}}
    s = {"model": "efficientnet-lite0", "backbone": "tf_efficientnet_lite0", "weights": "packaged", "image_size": 64,
         "batch_size": 64, "steps": 20, "rows": 1280, "infer_rows": 1024, "repeats": 3,
         "infer_batch_size": {"medalist": 256, "plain": 64}, "plain_dataloader_workers": 0, "threads": 2,
         "train_images_per_s": pair(180.0, 100.0), "infer_images_per_s": pair(1400.0, 560.0),
         "infer_images_per_s_fp32": 840.0, "bf16_native_cpu": True, "medalist_items_seconds": 0.1,
         "peak_rss_mb": {"medalist": 2000.0, "plain": 1700.0}, "samples": {"medalist": [], "plain": []},
         "wall_seconds": 120.0}
    md = "\n".join(images.render({"speed": s}))
    assert "| inference images/s, median | 1400.0 | 560.0 | 2.50× |" in md
    assert "| inference images/s, medalist in fp32 (fold only), median | 840.0 | 560.0 | 1.50× |" in md
    assert "native bf16 — this one: yes" in md
    goals = images.goals({"speed": s})
    assert any(g.startswith("- met:") and "inference" in g for g in goals)


def test_validation_sets_oof_beside_test_with_the_gap_and_its_noise(project, tmp_path, monkeypatch):
    """Part validation: each default run's OOF beside its test score, the gap within or beyond two
    standard errors, the rankings compared; a run not trained is named (and an ensemble of one run
    is not made)."""
    validation = _bench_module(monkeypatch, "validation")
    ids = [str(i) for i in range(200)]
    y = np.arange(200) % 10
    answers = tmp_path / "test_labels.csv"
    pd.DataFrame({"id": ids, "label": y}).to_csv(answers, index=False)
    processed = project / "data" / "processed" / "fashion-products"
    processed.mkdir(parents=True)
    pd.DataFrame({"id": [f"t{i}" for i in range(800)]}).to_csv(processed / "train.csv", index=False)
    res = project / "results" / "fashion-products"
    for run, right, oof in (("cnn", 180, 0.91), ("image-embed", 120, 0.85)):  # test 0.90 and 0.60
        pred = y.copy()
        pred[right:] = (y[right:] + 1) % 10
        _proba_csv(res / run / "test.csv", ids, pred)
        (res / run / "metrics.json").write_text(json.dumps({"oof_score": oof}))
    made = []
    monkeypatch.setattr(validation, "made_ensemble", lambda answer, comp, members, work: made.append(members) or {
        "method": "mean", "tta": False, "oof_score": 0.92, "test": {"micro_f1": 0.91}})
    v = validation.one("fashion-products", answers, tmp_path / "w")
    cnn, embed, ens = v["rows"]
    assert cnn["within"] and abs(cnn["gap"] + 0.01) < 1e-9
    se = np.sqrt(0.91 * 0.09 / 800 + 0.9 * 0.1 / 200)
    assert abs(cnn["two_se"] - 2 * se) < 1e-9
    assert not embed["within"] and abs(embed["gap"] + 0.25) < 1e-9  # far beyond its noise
    assert ens["what"] == "ensemble (mean)" and ens["within"] and made == [["cnn", "image-embed"]]
    assert v["same_ranking"] and v["rank_by_oof"] == ["cnn", "image-embed"]
    md = "\n".join(validation.render({"comps": [v]}))
    assert "## Validation (OOF against held-out)" in md and "| image-embed | 0.8500 | 0.6000 | -0.2500 |" in md
    assert "Ranking by OOF equals the ranking by test" in md

    (res / "cnn" / "metrics.json").unlink()
    monkeypatch.setattr(validation, "made_ensemble", lambda *a: pytest.fail("an ensemble of one run"))
    v = validation.one("fashion-products", answers, tmp_path / "w")
    assert v["missing"] == ["cnn"] and [r["what"] for r in v["rows"]] == ["image-embed"]
    assert "| not trained: cnn |" in "\n".join(validation.render({"comps": [v]}))


def test_dedup_part_measures_full_recall_against_all_pairs(monkeypatch):
    dedup = _bench_module(monkeypatch, "dedup")
    texts = dedup.synthetic(600, seed=3)
    r = dedup.measure(texts, 0.8)
    assert r["pairs"] > 50 and r["recall"] == 1.0 and r["pairs_in_one_group"] == r["pairs"]
    md = "\n".join(dedup.render({"sets": [{"data": "synthetic", **r}]}))
    assert "## Near-duplicate grouping (folds)" in md and "| synthetic | 600 | 0.8 |" in md


def test_scale_part_renders_the_ratio_and_whether_results_match(monkeypatch):
    scale = _bench_module(monkeypatch, "scale")
    s = {"comp": "demo", "runs": ["tfidf", "tfidf-sgd"], "identical": True, "ratio": 1.5,
         "jobs": {"1": {"wall_seconds": 90.0, "cpu_seconds": 80.0}, "2": {"wall_seconds": 60.0, "cpu_seconds": 82.0}}}
    md = "\n".join(scale.render(s))
    assert "## Scale" in md and "| train wall s | 90.0 | 60.0 | 1.50× |" in md
    assert "byte-identical between -j1 and -j2: yes" in md


def test_budget_part_reads_its_points_and_renders_wall_time_against_the_budget(monkeypatch, tmp_path):
    budget = _bench_module(monkeypatch, "budget")
    dirs = {"math-subjects": tmp_path, "fashion-products": tmp_path}
    assert budget.parse_points("math-subjects=20m,1h; fashion-products=20m", dirs) == [
        ("math-subjects", "20m"), ("math-subjects", "1h"), ("fashion-products", "20m")]
    with pytest.raises(SystemExit, match="no folder for 'cifar'"):
        budget.parse_points("cifar=20m", dirs)
    point = {"comp": "math-subjects", "budget": "20m", "budget_seconds": 1200.0, "git_sha": "abc", "wall_seconds": 1290.0,
             "cpu_seconds": 2000.0, "load_avg_15min": 2.1, "metric": "micro_f1", "runs": ["tfidf", "embed"],
             "left_out": ["minilm"], "tta": False, "probe_seconds": 95.0, "test": {"micro_f1": 0.7912}}
    md = "\n".join(budget.render({"points": {"math-subjects@20m": point}}))
    assert "## Budget" in md
    assert "| math-subjects | 20m | 21m30s (108%) | no | 0.7912 | tfidf embed | minilm | off | 1m35s | 2.1 | `abc` |" in md

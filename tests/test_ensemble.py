"""TTA, the OOF-fitted ensemble, single-run submissions, evaluate and the report."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from medalist.stages import ensemble
from medalist.stages import evaluate
from medalist.stages import report
from medalist.stages import submission
from medalist.stages import tta
from medalist.core.competition import load_competition, read_sample, validate_submission
from medalist.core.config import Paths
from medalist.core.io import prob_columns, proba_frame, read_json, write_csv, write_json
from medalist.core.metrics import score

PLANT = "<script>alert('x')</script>"


def _competition(project, name: str, labels: list[str], metric: str = "micro_f1") -> None:
    cfg = {"name": name, "source": "local", "train_has_id": False, "inputs": {"text": {"columns": ["Question"]}},
           "labels": labels, "metric": metric, "folds": {"n": 3, "seed": 0}}
    (project / "configs" / "competitions" / f"{name}.yaml").write_text(yaml.safe_dump(cfg))


def _data(comp: str, train: pd.DataFrame, test: pd.DataFrame) -> None:
    p = Paths(comp)
    write_csv(p.processed / "train.csv", train)
    write_csv(p.processed / "test.csv", test)
    write_csv(p.raw / "sample_submission.csv", pd.DataFrame({"id": test["id"], "label": 0}))


def _fake_run(comp: str, run: str, oof: np.ndarray, test: np.ndarray, train: pd.DataFrame, ids, metric) -> None:
    d = Paths(comp).run(run)
    write_csv(d / "oof.csv", proba_frame(train["id"], oof, train["fold"].to_numpy()))
    write_csv(d / "test.csv", proba_frame(ids, test))
    folds = train["fold"].to_numpy()
    y = train["label"].to_numpy()
    fs = [score(metric, y[folds == k], oof[folds == k]) for k in range(3)]
    write_json(d / "metrics.json", {"metric": metric, "oof_score": score(metric, y, oof), "fold_scores": fs,
                                    "fold_std": float(np.std(fs)), "train_seconds": 1.0, "peak_rss_mb": 100.0,
                                    "train_samples_per_s": 10.0, "optimistic": False, "device": "cpu"})


@pytest.fixture
def synthetic(project):
    """Comp 'syn': 600 rows, 4 classes; runs a and b are independent noisy signals, c pure noise."""
    rng = np.random.default_rng(0)
    n, m, K = 600, 40, 4
    y = rng.integers(0, K, n)
    train = pd.DataFrame({"id": [f"train-{i}" for i in range(n)], "text": [f"row {i} {PLANT}" for i in range(n)],
                          "label": y, "fold": np.arange(n) % 3})
    test = pd.DataFrame({"id": [f"t{i}" for i in range(m)], "text": [f"test {i}" for i in range(m)]})

    def signal(rows_y, strength):
        z = rng.normal(size=(len(rows_y), K))
        z[np.arange(len(rows_y)), rows_y] += strength
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def make(metric):
        _competition(project, "syn", ["A", "B", "C", "D"], metric)
        _data("syn", train, test)
        ty = rng.integers(0, K, m)
        for run, oof, tp in (("a", signal(y, 1.5), signal(ty, 1.5)), ("b", signal(y, 1.5), signal(ty, 1.5)),
                             ("c", rng.dirichlet(np.ones(K), n), rng.dirichlet(np.ones(K), m))):
            _fake_run("syn", run, oof, tp, train, test["id"], metric)
        return train, test

    return make


def test_noise_run_gets_no_weight_and_nested_score_is_honest(synthetic):
    train, _ = synthetic("micro_f1")
    out = ensemble.run("syn", ["a", "b", "c"], use_tta=False)
    w, m = read_json(out / "weights.json"), read_json(out / "metrics.json")
    for method in ("caruana", "optimise"):
        assert w["methods"][method]["weights"]["c"] < 0.05
    if w["method"] in ("caruana", "optimise"):
        assert w["weights"]["c"] < 0.05
    assert all(m["nested_score"] > s for s in m["run_scores"].values())
    # in-sample: each method fitted and scored on all OOF rows, the best of them picked there too
    assert m["nested_score"] <= max(m["in_sample"].values())
    assert set(m["in_sample"]) == set(m["method_cv"]) == {"best", "mean", "rank", "caruana", "optimise", "stack"}
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    assert list(oof["id"]) == list(train["id"])
    assert score("micro_f1", train["label"], oof[prob_columns(4)].to_numpy()) == pytest.approx(m["nested_score"])


def test_ensemble_never_loses_to_its_best_member_and_prefers_the_simplest(synthetic):
    """One strong run beside two weak ones: averaging would dilute it, so the best single run
    wins; and with equal candidates, the simplest method in the list is picked."""
    train, _ = synthetic("micro_f1")
    y, folds = train["label"].to_numpy(), train["fold"].to_numpy()
    rng = np.random.default_rng(1)
    strong = np.full((len(y), 4), 0.02)
    strong[np.arange(len(y)), np.where(rng.random(len(y)) < 0.9, y, (y + 1) % 4)] = 0.94
    _fake_run("syn", "strong", strong, np.full((40, 4), 0.25), train, [f"t{i}" for i in range(40)], "micro_f1")
    m = read_json(ensemble.run("syn", ["strong", "c"], use_tta=False) / "metrics.json")
    assert m["nested_score"] >= m["run_scores"]["strong"] - 1e-9
    same = {"mean": strong, "rank": strong.copy(), "stack": strong.copy()}
    assert ensemble.choose(same, y, folds, [0, 1, 2], "micro_f1") == "mean"


def test_ensemble_submission_validates_and_single_run_works(synthetic, project):
    synthetic("micro_f1")
    comp = load_competition("syn")
    sample = read_sample(comp, Paths("syn").raw)
    ensemble.run("syn", ["a", "b"], use_tta=False)
    sub = Paths("syn").submission / "submission.csv"
    validate_submission(comp, sample, pd.read_csv(sub, dtype=str))
    side = read_json(sub.with_suffix(".json"))
    assert side["run"] == "ensemble(a b)" and side["metric"] == "micro_f1"
    assert side["cv"] == read_json(Paths("syn").results / "ensemble" / "metrics.json")["nested_score"]

    out = ensemble.run("syn", ["a"], use_tta=False)
    m = read_json(out / "metrics.json")
    assert m["method"] == "single" and m["run_scores"]["a"] == pytest.approx(m["nested_score"])

    path = submission.run("syn", "b")
    assert path == Paths("syn").submission / "b.csv"
    validate_submission(comp, sample, pd.read_csv(path, dtype=str))
    assert read_json(path.with_suffix(".json"))["run"] == "b"


def test_macro_f1_multipliers_do_not_hurt_in_sample():
    rng = np.random.default_rng(1)
    y = rng.choice(3, size=500, p=[0.7, 0.2, 0.1])
    z = rng.normal(size=(500, 3)) + 2.0 * np.eye(3)[y]
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    grid = (0.25, 0.5, 1.0, 2.0, 4.0)
    w = ensemble.fit_multipliers(p, y, grid, passes=2)
    assert score("macro_f1", y, ensemble.apply_post({"multipliers": w}, p)) >= score("macro_f1", y, p)
    shy = p * [1.0, 1.0, 0.2]  # a model that under-predicts the rare class
    shy /= shy.sum(axis=1, keepdims=True)
    w = ensemble.fit_multipliers(shy, y, grid, passes=2)
    assert score("macro_f1", y, ensemble.apply_post({"multipliers": w}, shy)) > score("macro_f1", y, shy) + 0.05


def test_macro_f1_ensemble_records_multipliers(synthetic):
    synthetic("macro_f1")
    out = ensemble.run("syn", ["a", "b", "c"], use_tta=False)
    m = read_json(out / "metrics.json")
    assert len(m["postprocess"]["multipliers"]) == 4
    assert m["nested_score"] <= max(m["in_sample"].values())


def test_report_is_self_contained_and_escapes_data(synthetic, project):
    synthetic("micro_f1")
    paths = Paths("syn")
    paths.results.mkdir(parents=True, exist_ok=True)
    (paths.results / "checks.md").write_text(f"# Checks\n\nA planted {PLANT} line.\n")
    write_csv(paths.submission / "ledger.csv", pd.DataFrame([{
        "time": "2025-01-01T00:00", "file": "submission.csv", "sha256": "x", "git_sha": "abc",
        "cv": 0.8, "message": PLANT, "kaggle_ref": "r1", "public_score": 0.79}]))
    ensemble.run("syn", ["a", "b", "c"], use_tta=False)
    board = evaluate.run("syn", ["a", "b", "c"])
    assert (paths.images / "confusion_a.png").exists()
    text = board.read_text()
    assert text.index("| a |") < text.index("| c |") and "precision" in text

    out = report.run("syn", ["a", "b", "c"])
    page = out.read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "data:image/png;base64," in page and (paths.images / "confusion_ensemble.png").exists()
    assert "Ensemble" in page and "0.79" in page  # method section and the ledger's public score
    assert (paths.results / "report.md").exists()


# ---------------------------------------------------------------- TTA on a real TF-IDF run

VOCAB = {0: "solve equation polynomial root factor", 1: "triangle circle angle area side",
         2: "derivative integral limit series slope"}


def _class_of(text: str) -> int:
    return max(VOCAB, key=lambda c: sum(w in text.split() for w in VOCAB[c].split()))


@pytest.fixture
def tiny_run(project):
    """A real 3-fold TF-IDF run on a tiny processed dataset, built by train.run."""
    from medalist.stages import train as train_stage

    _competition(project, "tiny", ["Algebra", "Geometry", "Calculus"])
    words = VOCAB
    rng = np.random.default_rng(0)
    rows = []
    for i in range(90):
        c = i % 3
        ws = rng.permutation(words[c].split())[:3].tolist() + rng.permutation(words[(c + 1) % 3].split())[:1].tolist()
        rows.append({"id": f"train-{i}", "text": f"{' '.join(ws)} with $x^{i % 7}+{i}$ here", "label": c,
                     "fold": (i // 3) % 3})
    train = pd.DataFrame(rows)
    test = pd.DataFrame({"id": [f"t{i}" for i in range(12)],
                         "text": [f"{words[i % 3]} $y={i}$" for i in range(12)]})
    _data("tiny", train, test)
    train_stage.run("tiny", "tfidf")
    return train


def test_tta_is_off_when_it_hurts_and_tta_files_equal_plain(tiny_run, monkeypatch):
    def wrong_views(texts, cfg):  # each view drowns the text in the next class's words (math kept)
        return [[" ".join([VOCAB[(_class_of(t) + 1) % 3]] * 4 + [t])] * cfg.nlpaug_k for t in texts]

    monkeypatch.setattr(tta, "nlpaug_views", wrong_views)
    monkeypatch.setattr(tta, "load_config", lambda: tta.TTAConfig(views=("nlpaug",)))  # tfidf has no length views
    out = tta.run("tiny", "tfidf")
    m = read_json(out / "metrics.json")
    assert m["use_tta"] is False and m["gain"] < 0 and m["views"] == ["original", "nlpaug"]
    run_dir = Paths("tiny").run("tfidf")
    for name in ("oof.csv", "test.csv"):
        plain = pd.read_csv(run_dir / name, dtype={"id": str})
        got = pd.read_csv(out / name, dtype={"id": str})
        pd.testing.assert_frame_equal(plain, got)
    assert m["oof_score"] == pytest.approx(m["plain_score"])

    ens = ensemble.run("tiny", ["tfidf"], use_tta=True)
    assert read_json(ens / "weights.json")["sources"]["tfidf"].endswith("tfidf/tta")


def test_tta_nlpaug_views_keep_math_byte_identical(project):
    cfg = tta.TTAConfig(augmenters=(tta.Augmenter("swap", aug_p=0.5, aug_max=3),), nlpaug_k=3)
    texts = ["Find the value of $\\frac{a}{b}$ when the sum $a+b=10$ and also b is seven today",
             "Compute \\(\\int_0^1 x^2 dx\\) and then double the answer for the final result please"]
    views = tta.nlpaug_views(texts, cfg)
    assert [len(v) for v in views] == [3, 3]
    assert any(v != t for t, vs in zip(texts, views) for v in vs)  # the views really differ
    for t, vs in zip(texts, views):
        for v in vs:
            for span in ("$\\frac{a}{b}$", "$a+b=10$") if t.startswith("Find") else ("\\(\\int_0^1 x^2 dx\\)",):
                assert span in v
            assert tta.math_kept(t, v)


def test_truncation_views_never_split_math():
    text = "intro words here $a + b + c + d = e$ middle part of it \\[ x^2 + y^2 \\] and the final words end"
    spans = [m.span() for m in tta.WORD.finditer(text)]
    views = tta.truncation_views(text, spans, budget=6, stride=0.5, max_windows=4)
    assert set(views) == {"head", "tail", "window"} and len(views["window"]) > 1
    whole = {"$a + b + c + d = e$": "+ c +", "\\[ x^2 + y^2 \\]": "y^2"}  # span → a piece of it
    for v in [views["head"][0], views["tail"][0], *views["window"]]:
        assert v in text  # a slice of the original, byte for byte
        assert v.count("$") % 2 == 0 and v.count("\\[") == v.count("\\]")
        for span, piece in whole.items():
            assert span in v or piece not in v
    assert tta.truncation_views("short text", [(0, 5), (6, 10)], budget=6, stride=0.5, max_windows=4) == {}

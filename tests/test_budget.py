"""`make all BUDGET=…` (issue #29): durations, costs, the choice, hand-given MODELS, the probe, and
— end to end — a run that falls behind its estimate is stopped and left out of the ensemble."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import REPO, make_env
from medalist import budget
from medalist.core.config import UserError
from medalist.core.io import write_json

CPU = json.dumps({"cores": 2, "cpu_bf16": False, "gpus": []})


@pytest.fixture(autouse=True)
def _own_clock(monkeypatch):
    """The budget's clock starts with make (MEDALIST_MAKE_START); under `make test` that is the
    suite's start, minutes ago: each test's Driver starts its own."""
    monkeypatch.delenv("MEDALIST_MAKE_START", raising=False)


@pytest.mark.parametrize("text,seconds", [("45m", 2700), ("3h", 10800), ("1h30m", 5400), ("900s", 900),
                                          ("2.5h", 9000), (" 20m ", 1200)])
def test_durations(text, seconds):
    assert budget.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "45", "45 minutes", "m45", "30s", "1h-5m"])
def test_a_bad_duration_is_one_clear_error(text):
    with pytest.raises(UserError, match="BUDGET"):
        budget.parse_duration(text)


def _driver(models: str, total: str = "5m") -> budget.Driver:
    return budget.Driver("demo", total, "good", models, "", 1, True)


def _seed(driver: budget.Driver, fold_s: dict[str, float], overhead_s: float = 1.0) -> dict[str, str]:
    """Speeds in this machine's store, as a probe or finished folds would leave them."""
    from medalist.core.io import read_processed

    driver._tables = read_processed(driver.paths)
    hashes = {m: driver._hash(m)[0] for m in fold_s}
    store = budget.load_store()
    store["_overhead_s"] = overhead_s
    for m, s in fold_s.items():
        store[hashes[m]] = {"fold_s": s, "predict_s": 0.1, "source": "probe"}
    budget.save_store(store)
    driver.store = budget.load_store()
    return hashes


def test_the_choice_goes_in_order_takes_smaller_configs_and_leaves_out_what_does_not_fit(demo_folds, monkeypatch):
    monkeypatch.setenv("MEDALIST_HARDWARE", CPU)
    d = _driver("tfidf minilm tfidf-sgd")
    # 5 folds × (fold + 1 s start-up) + 6 s merge: tfidf 61 s, minilm 2,511 s, minilm-1ep 1,011 s, tfidf-sgd 36 s
    _seed(d, {"tfidf": 10.0, "minilm": 500.0, "minilm-1ep": 200.0, "tfidf-sgd": 5.0})
    chosen = d.choose()
    assert [r.name for r in chosen] == ["tfidf", "tfidf-sgd"]
    assert [r.estimate_s for r in chosen] == [61.0, 36.0]
    (left,) = d.left
    assert left.name == "minilm" and left.decision.startswith("left out: about 41m51s (probe)")

    d = _driver("tfidf minilm", "40m")  # room for minilm-1ep, not minilm: the smaller config is planned
    chosen = d.choose()
    assert [(r.name, r.wanted) for r in chosen] == [("tfidf", "tfidf"), ("minilm-1ep", "minilm")]
    assert chosen[1].decision.startswith("planned smaller, instead of minilm")


def test_hand_given_models_are_the_only_candidates_and_a_preset_adds_cheaper_members(demo_folds, monkeypatch):
    monkeypatch.setenv("MEDALIST_HARDWARE", CPU)
    assert _driver("tfidf-sgd embed").candidates() == [("tfidf-sgd", "given"), ("embed", "given")]
    assert _driver("").candidates() == [("tfidf", "preset"), ("embed", "preset"), ("minilm", "preset"),
                                        ("tfidf-sgd", "extra"), ("tfidf-svm", "extra")]
    d = budget.Driver("demo", "5m", "good", "tfidf minilm+aug", "+gen", 1, True)
    assert d.candidates() == [("tfidf+gen", "given"), ("minilm+aug", "given")]


def test_finished_folds_cost_nothing_and_measured_folds_replace_the_probe(demo_folds, monkeypatch):
    monkeypatch.setenv("MEDALIST_HARDWARE", CPU)
    d = _driver("tfidf")
    (h,) = _seed(d, {"tfidf": 10.0}).values()
    run = budget.Run("tfidf", "tfidf", "given", h)
    for k in (0, 1):  # two folds finished at 3 s each: the other three are costed at that
        write_json(demo_folds.run("tfidf") / f"fold{k}" / "done.json", {"config_hash": h, "seconds": 3.0})
    write_json(demo_folds.run("tfidf") / "fold2" / "done.json", {"config_hash": "another", "seconds": 99.0})
    d.cost(run)
    assert (run.estimate_s, run.source) == (3 * (3.0 + 1.0) + budget.MERGE_S, "measured")
    assert budget.load_store()[h]["fold_s"] == 10.0 and d.store[h]["fold_s"] == 3.0
    for k in (2, 3, 4):
        write_json(demo_folds.run("tfidf") / f"fold{k}" / "done.json", {"config_hash": h, "seconds": 3.0})
    write_json(demo_folds.run("tfidf") / "metrics.json", {})
    d.cost(run)
    assert (run.estimate_s, run.source) == (0.0, "finished")


def test_a_run_on_pseudo_labels_is_left_out_until_it_is_finished(demo_folds, monkeypatch):
    monkeypatch.setenv("MEDALIST_HARDWARE", CPU)
    d = _driver("tfidf+pseudo")
    from medalist.core.io import read_processed

    d._tables = read_processed(d.paths)
    h, why = d._hash("tfidf+pseudo")
    assert h is None and "pseudo-labels, whose cost the budget does not estimate yet" in why


def test_the_probe_costs_a_linear_family_from_a_quarter_of_the_rows(small_demo_folds, project):
    recs = budget.probe("demo", ["quick", "nope"], cap_s=60.0)
    assert recs[0]["overhead_s"] >= 0 and "probe_s" in recs[-1]
    quick = next(r for r in recs if r.get("model") == "quick")
    (w, f_b), (t_a, t_b) = quick["fractions"], quick["slice_s"]
    assert w == 48 / 240 and f_b == 2 * w and w + f_b <= 1.0  # disjoint slices (a quarter, or twice A's share)
    assert quick["fold_s"] >= t_b / f_b and not quick.get("lower_bound") and not quick.get("engine")
    assert "unknown model 'nope'" in next(r for r in recs if r.get("model") == "nope")["error"]


def test_the_probe_costs_a_neural_engine_from_its_steady_step_pace(demo_folds, project, tiny_models):
    (project / "configs" / "models" / "tinybert.yaml").write_text(
        f"family: encoder\nbackbone: {tiny_models['bert']}\nmax_length: 32\nbatch_size: 8\nepochs: 2\n")
    (rec,) = [r for r in budget.probe("demo", ["tinybert"], cap_s=120.0) if r.get("model") == "tinybert"]
    assert rec["engine"] and rec["step_s"] > 0 and rec["fixed_s"] >= 0
    n_train = 1224  # fold 0's training rows: 153 steps of 8 an epoch
    assert rec["steps"] == 153 * 2
    assert rec["fold_s"] >= rec["steps"] * rec["step_s"] + rec["predict_s"]
    assert rec["fractions"] == [48 / n_train]


def _make(root, *args, timeout=900):
    return subprocess.run(["make", "--no-print-directory", *args], cwd=root, env=make_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_make_refuses_a_bad_budget_in_one_line_and_writes_nothing(make_project):
    p = _make(make_project, "all", "BUDGET=soon", timeout=300)
    assert p.returncode != 0
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: BUDGET must be a duration like 45m")
    assert "Traceback" not in p.stderr
    assert not (make_project / "data").exists() and not (make_project / "results").exists()
    p = _make(make_project, "train", "BUDGET=5m", timeout=300)
    assert p.returncode != 0 and "BUDGET=… is for `make all` only" in p.stderr


@pytest.mark.slow
def test_a_run_that_falls_behind_is_stopped_and_never_enters_the_ensemble(make_project, monkeypatch):
    """minilm's speed is seeded a hundred times too fast: the plan takes it (after tfidf-sgd, the
    cheaper), it falls behind, the budget stops it (its smaller config does not fit what is left)
    and ends on time with tfidf-sgd alone."""
    assert _make(make_project, "folds", "COMP=demo").returncode == 0
    monkeypatch.setenv("MEDALIST_ROOT", str(make_project))
    monkeypatch.setenv("MEDALIST_CONFIGS", str(make_project / "configs"))
    monkeypatch.delenv("MEDALIST_HARDWARE", raising=False)
    d = _driver("minilm tfidf-sgd", "5m")
    _seed(d, {"minilm": 2.0, "tfidf-sgd": 1.0, "minilm-1ep": 400.0}, overhead_s=8.0)
    t0 = time.time()
    p = _make(make_project, "all", "COMP=demo", "BUDGET=5m", "MODELS=minilm tfidf-sgd")
    wall = time.time() - t0
    assert p.returncode == 0, p.stderr[-2000:]
    rec = json.loads((make_project / "results/demo/budget.json").read_text())
    assert rec["runs"] == ["tfidf-sgd"]
    rows = {r["name"]: r for r in rec["table"]}
    assert rows["minilm"]["decision"].startswith("stopped after")
    assert rows["minilm-1ep"]["decision"].startswith("left out") if "minilm-1ep" in rows else True
    ens = json.loads((make_project / "results/demo/ensemble/metrics.json").read_text())
    assert ens["runs"] == ["tfidf-sgd"]
    assert "## Budget" in (make_project / "results/demo/report.md").read_text()
    assert "budget" in p.stdout and "left out minilm" in p.stdout
    assert wall <= 300 * 1.05, f"{wall:.0f} s for a 5-minute budget"

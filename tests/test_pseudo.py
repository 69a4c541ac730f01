"""Leak-safe pseudo-labelling on the demo, with real TF-IDF runs through `run()`: fold k's labels
come from the teacher's fold-k models only, each pseudo row trains in its own fold alone, near
duplicates of a fold's validation rows are dropped, validation stays original rows; plus the
GEN knob (which generated sources a run trains on, and its name) in the Makefile."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import copy_demo, copy_tree, make_env, project_at
from medalist.core import generated
from medalist.core.config import Paths, UserError
from medalist.core.io import align, read_processed
from medalist.stages import pseudo as pseudo_stage
from medalist.stages import train as train_stage

# the cheapest TF-IDF member (modified-Huber SGD, smaller vocabularies): about a second per fold
FAST = {"family": "tfidf", "classifier": "sgd", "word_max_features": 20000, "char_max_features": 20000}
PLANTED = "planted"  # a test row copied (upper-cased) from a fold-0 validation row


@pytest.fixture(scope="module")
def demo_tree(tmp_path_factory, demo_data):
    """The demo's folds, a test row planted near a fold-0 validation row, and a finished teacher,
    built once for this module: each test gets its own copy (`demo`)."""
    with project_at(tmp_path_factory.mktemp("pseudo-demo")) as root:
        copy_demo(demo_data, root)
        paths = Paths("demo")
        train, test = read_processed(paths)
        source = train[train["fold"] == 0].iloc[0]
        test.loc[0, ["id", "text"]] = [PLANTED, source["text"].upper()]
        test.to_csv(paths.processed / "test.csv", index=False)
        for name, cfg in (("fast", FAST), ("fast-b", {**FAST, "seed": 7, "char_ngrams": [2, 4]})):
            (root / "configs" / "models" / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        _pseudo_config(root, threshold=0.6)
        train_stage.run("demo", "fast")
    return root


@pytest.fixture
def demo(demo_tree, project):
    """`demo_tree` copied into this test's project: its Paths (the test may change it freely)."""
    copy_tree(demo_tree, project)
    return Paths("demo")


def _pseudo_config(project, **values) -> None:
    path = project / "configs" / "pseudo.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **values}))


def _fold_test(paths: Paths, run: str, k: int, ids) -> np.ndarray:
    return align(pd.read_csv(paths.run(run) / f"fold{k}" / "test.csv", dtype={"id": str}), ids)


def test_fold_k_labels_come_from_fold_k_models_only(demo, project):
    paths = demo
    train, test = read_processed(paths)
    pseudo_stage.run("demo", ("fast",))
    rows = generated.read_part(paths.generated / "pseudo.csv")
    assert len(rows) > 200
    assert (rows["source"] == "pseudo:fast").all() and rows["parent_id"].isin(test["id"]).all()
    # one fold each, named in the id; a test row at most once per fold
    assert rows["folds"].isin([str(k) for k in range(5)]).all()
    assert (rows["id"] == "pseudo-" + rows["folds"] + "-" + rows["parent_id"]).all()
    assert not rows.duplicated(["parent_id", "folds"]).any()
    assert rows["parent_id"].value_counts().max() > 1  # rows do recur across folds

    # each fold's label and confidence are its own fold's teacher model's (never the averaged
    # test.csv, made by models that saw fold k's validation rows)
    averaged = align(pd.read_csv(paths.run("fast") / "test.csv", dtype={"id": str}), rows["parent_id"]).max(axis=1)
    own = np.zeros(len(rows))
    for k in range(5):
        mine = (rows["folds"] == str(k)).to_numpy()
        p = _fold_test(paths, "fast", k, rows.loc[mine, "parent_id"])
        assert (p.argmax(axis=1) == rows.loc[mine, "label"].to_numpy()).all()
        own[mine] = p.max(axis=1)
    np.testing.assert_allclose(rows["confidence"].to_numpy(), own, atol=1e-6)
    assert (rows["confidence"] >= 0.6).all()
    assert np.abs(averaged - own).max() > 1e-3  # the check above could tell the two apart

    # the planted near-copy of a fold-0 validation row never trains in fold 0, but may elsewhere
    planted = rows[rows["parent_id"] == PLANTED]
    assert "0" not in set(planted["folds"]) and len(planted) >= 1
    stats = json.loads((paths.generated / "pseudo_stats.json").read_text())
    assert stats["folds"]["0"]["near_duplicate_validation"] >= 1

    # generated_train.csv holds them; a student with GEN=pseudo trains fold k on fold k's rows only,
    # and validates on original rows only
    gen = generated.read_part(paths.generated / "generated_train.csv")
    assert set(generated.kind(gen["source"])) == {"pseudo"}
    student = train_stage.run("demo", "fast", gen_sources=("pseudo",))
    assert student.name == "fast+pseudo"
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["n_generated"] == [{"pseudo:fast": int((rows["folds"] == str(k)).sum())} for k in range(5)]
    for k in range(5):
        val = pd.read_csv(student / f"fold{k}" / "val.csv", dtype={"id": str})
        assert sorted(val["id"]) == sorted(train.loc[train["fold"] == k, "id"])
    oof = pd.read_csv(student / "oof.csv", dtype={"id": str})
    assert list(oof["id"]) == list(train["id"])
    assert yaml.safe_load((student / "config.yaml").read_text())["generated"]["sources"] == ["pseudo"]


def test_weighted_teacher_cap_and_refusals(demo, project, capsys):
    paths = demo
    _, test = read_processed(paths)
    train_stage.run("demo", "fast-b")
    _pseudo_config(project, teacher=["fast", "fast-b"], weights=[3, 1], max_per_class=4)
    pseudo_stage.run("demo")  # the teacher from the config
    rows = generated.read_part(paths.generated / "pseudo.csv")
    assert (rows["source"] == "pseudo:fast,fast-b").all()
    for k in range(5):
        mine = rows[rows["folds"] == str(k)]
        p = 0.75 * _fold_test(paths, "fast", k, test["id"]) + 0.25 * _fold_test(paths, "fast-b", k, test["id"])
        conf_of = pd.Series(p.max(axis=1), index=test["id"])
        np.testing.assert_allclose(mine["confidence"], conf_of.loc[mine["parent_id"]], atol=1e-6)
        per_class = mine["label"].value_counts()
        assert per_class.max() <= 4
        # the cap keeps the most confident of each class
        conf, label = p.max(axis=1), p.argmax(axis=1)
        for c, n in per_class.items():
            pool = np.sort(conf[(label == c) & (conf >= 0.6)])[::-1]
            assert mine.loc[mine["label"] == c, "confidence"].min() >= pool[n - 1] - 1e-6

    with pytest.raises(UserError, match="weights has 2 numbers but the teacher has 1"):
        pseudo_stage.run("demo", ("fast",))
    _pseudo_config(project, teacher=[], weights=[])
    with pytest.raises(UserError, match="needs a teacher"):
        pseudo_stage.run("demo")
    with pytest.raises(UserError, match="teacher run 'nope' is not finished"):
        pseudo_stage.run("demo", ("nope",))
    # a teacher trained on other folds may have seen fold k's rows: refused
    train, _ = read_processed(paths)
    train["fold"] = (train["fold"] + 1) % 5
    train.to_csv(paths.processed / "train.csv", index=False)
    with pytest.raises(UserError, match="trained on other folds"):
        pseudo_stage.run("demo", ("fast",))


def test_chosen_sources_and_run_names(demo):
    paths = demo
    pseudo_stage.run("demo", ("fast",))
    with pytest.raises(UserError, match="holds no aug rows: run `make augment"):
        train_stage.run("demo", "fast", gen_sources=("aug", "pseudo"))
    with pytest.raises(UserError, match="not both"):
        train_stage.run("demo", "fast", use_gen=True, gen_sources=("pseudo",))
    assert generated.parse_sources("pseudo,aug") == ("aug", "pseudo")
    with pytest.raises(UserError, match="GEN=aug,pseudos"):
        generated.parse_sources("aug,pseudos")
    assert train_stage.run_name("fast", False, ("aug", "pseudo")) == "fast+aug+pseudo"
    assert train_stage.run_name("fast", True) == "fast+gen"
    everything = train_stage.run("demo", "fast", use_gen=True)  # USE_GEN=1: every source there is
    assert everything.name == "fast+gen"
    assert json.loads((everything / "metrics.json").read_text())["n_generated"][0] == {"pseudo:fast": int(
        (generated.read_part(paths.generated / "pseudo.csv")["folds"] == "0").sum())}


def _make(root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(root), "--no-print-directory", "COMP=demo", *args], env=make_env(),
                          capture_output=True, text=True, timeout=300)


def test_make_knows_gen_and_pseudo(make_project):
    root = make_project
    p = _make(root, "-n", "train", "MODELS=tfidf", "GEN=pseudo,aug")
    assert p.returncode == 0, p.stderr
    assert "--model tfidf --gen aug,pseudo" in p.stdout  # canonical order, whatever the user's
    p = _make(root, "-n", "pseudo", "RUN=tfidf")
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.splitlines() if "-m medalist.stages." in ln]
    assert "--model tfidf" in lines[-2] and 'medalist.stages.pseudo --comp demo --runs "tfidf"' in lines[-1]
    for args, message in ((["GEN=aug,typo"], "GEN must list generated sources of aug,llm,pseudo"),
                          (["GEN=aug", "USE_GEN=1"], "not both"),
                          (["RUN=tfidf+typo"], "unknown run 'tfidf+typo'"),
                          (["RUN=tfidf $(touch INJECTED)"], "unknown run '$(touch'")):
        p = _make(root, "-n", "pseudo", *args)
        assert p.returncode != 0 and message in p.stderr, (args, p.stderr)
    assert not (root / "INJECTED").exists()


def test_make_ensembles_a_run_on_pseudo_labels_beside_plain_ones(make_project):
    """A MODELS entry with its own suffix keeps it: the plain runs and minilm+pseudo in one ensemble.
    With no pseudo.csv yet, the plain runs of MODELS teach it (trained first, then pseudo, then the
    student); an existing pseudo.csv is used as it is."""
    root = make_project
    p = _make(root, "-n", "all", "MODELS=tfidf embed minilm+pseudo")
    assert p.returncode == 0, p.stderr
    # a run is its fold jobs, then its merge: the teachers' merges, the pseudo-labels, then the student
    lines = [" ".join(ln.split()) for ln in p.stdout.splitlines()]
    steps = [ln for ln in lines if "--merge" in ln or "stages.pseudo" in ln]
    assert steps[0].endswith("--model tfidf --merge") and steps[1].endswith("--model embed --merge"), steps
    assert steps[2].endswith('medalist.stages.pseudo --comp demo --runs "tfidf embed"'), steps
    assert steps[3].endswith("--model minilm --gen pseudo --merge"), steps
    first_student = next(i for i, ln in enumerate(lines) if "--model minilm --gen pseudo --folds" in ln)
    assert first_student > lines.index(steps[2])
    assert "medalist.stages.tta --comp demo --run minilm+pseudo" in p.stdout
    assert 'medalist.stages.ensemble --comp demo --runs "tfidf embed minilm+pseudo" --tta' in p.stdout
    p = _make(root, "-n", "train", "MODELS=minilm+pseudo")
    assert p.returncode != 0 and "no plain run to teach it" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = _make(root, "-n", "all", "MODELS=tfidf minilm+pseudo", "USE_GEN=1")  # tfidf+gen would learn from its own labels
    assert p.returncode != 0 and "no plain run to teach it" in p.stderr
    (root / "data/generated/demo").mkdir(parents=True, exist_ok=True)
    (root / "data/generated/demo/pseudo.csv").write_text("id,text,label,source,parent_id,folds\n")
    p = _make(root, "-n", "all", "MODELS=tfidf minilm+pseudo")
    assert p.returncode == 0 and "stages.pseudo" not in p.stdout, p.stderr
    p = _make(root, "-n", "all", "MODELS=tfidf minilm+pseudo", "USE_GEN=1")  # the others get USE_GEN's suffix
    assert p.returncode == 0, p.stderr
    assert 'stages.ensemble --comp demo --runs "tfidf+gen minilm+pseudo" --tta' in p.stdout
    for bad in ("minilm+pseudo+aug", "minilm+gen+aug", "minilm+aug+aug", "minilm+typo"):
        p = _make(root, "-n", "train", f"MODELS=tfidf {bad}")
        assert p.returncode != 0 and f"unknown run '{bad}'" in p.stderr, (bad, p.stderr)
    p = _make(root, "-n", "train", "MODELS=nope+pseudo")
    assert p.returncode != 0 and "unknown model 'nope+pseudo': no configs/models/nope.yaml" in p.stderr

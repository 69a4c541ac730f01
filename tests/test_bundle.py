"""Code competitions, fast part: the artifacts a bundle holds, the one inference path that reads
them, and the rules a hidden test needs (no prediction depends on the other test rows). The real
bundle-and-rerun in a network namespace is in test_bundle_rerun.py (slow)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from conftest import copy_demo, copy_tree, cut_demo, project_at
from medalist.bundle import digest, infer, kernel
from medalist.core.competition import load_competition
from medalist.core.config import Paths, UserError
from medalist.core.io import read_csv
from medalist.stages import bundle, ensemble, train


@pytest.fixture(scope="module")
def fitted_tree(tmp_path_factory, demo_data):
    """Two quick TF-IDF runs and their ensemble (rank blend, exact matches on) on the small demo,
    trained once for this module: each test gets its own copy (`fitted`)."""
    with project_at(tmp_path_factory.mktemp("fitted")) as root:
        copy_demo(demo_data, root)
        cut_demo(Paths("demo"), root)
        (root / "configs" / "models" / "quick2.yaml").write_text("family: tfidf\nchar_ngrams: [4, 4]\nC: 0.3\n")
        cfg = root / "configs" / "ensemble.yaml"
        cfg.write_text(cfg.read_text().replace("methods: [best, mean, rank, caruana, optimise, stack]", "methods: [rank]")
                       .replace("exact_match: false", "exact_match: true"))
        for m in ("quick", "quick2"):
            train.run("demo", m)
        ensemble.run("demo", ["quick", "quick2"])
    return root


@pytest.fixture
def fitted(fitted_tree, project):
    """`fitted_tree` copied into this test's project: its Paths (the test may change it freely)."""
    copy_tree(fitted_tree, project)
    return Paths("demo")


def _submission(project, extra: str) -> None:
    """demo.yaml's submission mapping with `extra` keys added (e.g. "notebook: {…}")."""
    cfg = project / "configs" / "competitions" / "demo.yaml"
    old = "submission: {format: label, id_column: id, label_column: label, label_as: index}"
    cfg.write_text(cfg.read_text().replace(old, old[:-1] + ", " + extra + "}"))


def _artifacts(paths, dest):
    comp = load_competition("demo")
    manifest = bundle.artifacts(comp, paths, dest)
    manifest["content_hash"] = "x"
    (dest / "bundle.json").write_text(json.dumps(manifest))
    return comp, manifest


def test_rank_blend_ranks_against_the_fitted_rows():
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(3), size=(2, 50))
    P[0, 7] = P[0, 3]  # a tie: the average rank, as scipy gives it
    params = ensemble.fit_method("rank", P, rng.integers(0, 3, 50), "micro_f1", ensemble.EnsembleConfig())
    assert np.allclose(ensemble._ranks(P, params["reference"]), rankdata(P, axis=1) / 50)
    # a row's blended value is the same alone as among all rows
    together = ensemble.apply_method("rank", params, P)
    alone = np.concatenate([ensemble.apply_method("rank", params, P[:, i:i + 1]) for i in range(50)])
    assert np.allclose(together, alone)


def test_the_inference_path_reproduces_the_submission_from_the_artifacts(fitted, tmp_path):
    comp, manifest = _artifacts(fitted, tmp_path / "artifacts")
    assert sorted(manifest["runs"]) == ["quick", "quick2"] and manifest["runs"]["quick"]["folds"] == [0, 1, 2, 3, 4]
    kept = sorted(p.name for p in (tmp_path / "artifacts" / "runs" / "quick" / "fold0").iterdir())
    assert kept == ["model.joblib"]  # predictions, done.json: left out
    assert (tmp_path / "artifacts" / "ensemble" / "exact_match.csv").exists()
    out = infer.predict(fitted.raw, tmp_path / "artifacts", tmp_path / "submission.csv")
    want = read_csv(fitted.submission / "submission.csv", "s", dtype=str)
    assert "agree" in bundle.compare(comp, want, read_csv(out, "o", dtype=str), "infer")
    ens = read_csv(fitted.results / "ensemble" / "test.csv", "t")
    got = read_csv(out.with_name("submission.csv.probs.csv"), "p")
    assert np.abs(ens.filter(like="p_").to_numpy() - got.filter(like="p_").to_numpy()).max() < 1e-6


def test_a_hidden_test_of_other_rows_in_another_order_gives_each_row_the_same_prediction(fitted, tmp_path):
    _artifacts(fitted, tmp_path / "artifacts")
    full = infer.predict(fitted.raw, tmp_path / "artifacts", tmp_path / "full.csv")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    test = pd.read_csv(fitted.raw / "test.csv", dtype=str, keep_default_na=False)
    part = test.sample(frac=0.4, random_state=1)  # another row count, another order
    extra = part.head(3).assign(id=lambda d: "new-" + d["id"])  # and ids the public test does not have
    pd.concat([part, extra]).to_csv(hidden / "test.csv", index=False)
    pd.DataFrame({"id": pd.concat([part, extra])["id"], "label": 0}).to_csv(hidden / "sample_submission.csv", index=False)
    sub = infer.predict(hidden, tmp_path / "artifacts", tmp_path / "hidden.csv")
    a = read_csv(full.with_name("full.csv.probs.csv"), "a", dtype={"id": str}).set_index("id")
    b = read_csv(sub.with_name("hidden.csv.probs.csv"), "b", dtype={"id": str}).set_index("id")
    shared = part["id"].tolist()
    assert np.allclose(a.loc[shared].to_numpy(), b.loc[shared].to_numpy(), atol=1e-12)
    assert read_csv(sub, "s", dtype=str)["id"].tolist() == pd.concat([part, extra])["id"].tolist()


def test_runs_fitted_on_the_public_test_or_on_some_folds_are_refused(fitted, tmp_path, project):
    comp = load_competition("demo")
    cfg = fitted.run("quick") / "config.yaml"
    cfg.write_text(cfg.read_text() + "generated: {sources: [pseudo], rows: 10}\n")
    with pytest.raises(UserError, match="run 'quick' trained on pseudo-labels.*allow_test_fitted"):
        bundle.artifacts(comp, fitted, tmp_path / "a1")
    (fitted.run("quick2") / "fold3" / "done.json").unlink()
    _submission(project, "notebook: {allow_test_fitted: true}")
    with pytest.raises(UserError, match="run 'quick2' is trained on some folds only .missing fold3"):
        bundle.artifacts(load_competition("demo"), fitted, tmp_path / "a2")


def test_a_config_asking_for_the_internet_is_one_line(project):
    _submission(project, "via: notebook, notebook: {enable_internet: true}")
    with pytest.raises(UserError, match="enable_internet: true — a code competition reruns the notebook with the internet off"):
        load_competition("demo")


def test_kernel_metadata_turns_the_internet_off_in_writing():
    meta = kernel.metadata("alice", "medalist-demo", "t", "demo", "none")
    assert meta["enable_internet"] is False and meta["kernel_type"] == "script" and meta["is_private"] is True
    assert meta["dataset_sources"] == ["alice/medalist-demo-code", "alice/medalist-demo-artifacts"]
    assert meta["competition_sources"] == ["demo"] and meta["enable_gpu"] is False
    assert kernel.metadata("alice", "p", "t", "demo", "NvidiaTeslaT4")["machine_shape"] == "NvidiaTeslaT4"
    text = kernel.script({"code": "c", "artifacts": "a", "competition": "demo", "sample_submission": "s.csv",
                          "content_hash": "h"})
    compile(text, "medalist_kernel.py", "exec")


def test_the_content_hash_covers_bytes_and_names_but_not_metadata(tmp_path):
    code, art = tmp_path / "code", tmp_path / "artifacts"
    (art / "runs").mkdir(parents=True)
    code.mkdir()
    (code / "a.whl").write_bytes(b"wheel")
    (art / "runs" / "w.bin").write_bytes(b"weights")
    h = digest.bundle_hash(code, art)
    (art / "dataset-metadata.json").write_text("{}")
    (art / "bundle.json").write_text("{}")
    assert digest.bundle_hash(code, art) == h
    (art / "runs" / "w.bin").write_bytes(b"weightz")
    assert digest.bundle_hash(code, art) != h
    (art / "runs" / "w.bin").write_bytes(b"weights")
    (art / "runs" / "w.bin").rename(art / "runs" / "v.bin")
    assert digest.bundle_hash(code, art) != h


def test_compare_names_the_first_differing_id(project):
    comp = load_competition("demo")
    want = pd.DataFrame({"id": ["a", "b", "c"], "label": ["1", "2", "3"]})
    assert bundle.compare(comp, want, want.copy(), "x") == "3 rows agree (same labels)"
    with pytest.raises(UserError, match="x: id 'b' gets '0', submission.csv has '2' .1 of 3 rows differ"):
        bundle.compare(comp, want, want.assign(label=["1", "0", "3"]), "x")


def _fake_bundle(paths, python: str):
    (paths.submission / "bundle" / "artifacts").mkdir(parents=True)
    (paths.submission / "bundle" / "artifacts" / "bundle.json").write_text(json.dumps({"python": python}))


def test_rerun_without_a_network_namespace_is_one_line_and_never_runs_online(demo_folds, monkeypatch, tmp_path):
    import platform

    from medalist.stages import rerun

    _fake_bundle(demo_folds, "{}.{}".format(*platform.python_version_tuple()[:2]))
    bare = tmp_path / "bin"  # a PATH with python but no unshare
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))
    with pytest.raises(UserError, match="cannot make a network namespace"):
        rerun.run("demo")
    assert not (demo_folds.submission / "rerun.csv").exists() and not (demo_folds.submission / ".rerun").exists()


def test_rerun_refuses_wheels_for_another_cpython(demo_folds):
    from medalist.stages import rerun

    _fake_bundle(demo_folds, "3.99")
    with pytest.raises(UserError, match="wheels are for CPython 3.99 .* cannot be installed here"):
        rerun.run("demo")


def test_no_bundle_is_one_line(demo_folds):
    from medalist.stages import rerun

    with pytest.raises(UserError, match="no bundle in .*: run `make bundle COMP=demo` first"):
        rerun.run("demo")


def test_a_bundle_over_its_cap_is_one_line_and_leaves_nothing(fitted, project):
    _submission(project, "notebook: {max_bundle_mb: 0.001}")
    with pytest.raises(UserError, match=r"its artifacts alone holds \d+\.\d MB, over submission.notebook.max_bundle_mb \(0.001\)"):
        bundle.run("demo")
    assert sorted(p.name for p in fitted.submission.iterdir()) == ["submission.csv", "submission.json"]

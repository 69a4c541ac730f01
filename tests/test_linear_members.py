"""The cheap linear members beside `tfidf` (issue 12): each config trains a fold of the demo
above the majority class and reloads to the same probabilities."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, copy_demo
from medalist.core.competition import load_competition
from medalist.core.io import align
from medalist.models.registry import load_run_predictor
from medalist.stages import train


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_data):
    """A project with the demo's folds, shared by this module's tests."""
    root = tmp_path_factory.mktemp("linear")
    shutil.copytree(REPO / "configs", root / "configs")
    copy_demo(demo_data, root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDALIST_ROOT", str(root))
        mp.setenv("MEDALIST_CONFIGS", str(root / "configs"))
        yield root


@pytest.mark.parametrize("model", ["tfidf-svm", "tfidf-nbsvm", "tfidf-sgd"])
def test_linear_member_trains_and_reloads(demo, model):
    run_dir = train.run("demo", model, folds=[0])
    tr = pd.read_csv(demo / "data/processed/demo/train.csv", dtype={"id": str}, keep_default_na=False)
    va = tr[tr["fold"] == 0]
    saved = align(pd.read_csv(run_dir / "fold0/val.csv", dtype={"id": str}), va["id"])
    assert np.allclose(saved.sum(axis=1), 1.0)
    majority = va["label"].value_counts(normalize=True).max()
    assert (saved.argmax(axis=1) == va["label"].to_numpy()).mean() > majority + 0.3
    again = load_run_predictor(run_dir, 0, len(load_competition("demo").labels))(va[["id", "text"]].iloc[::-1])
    assert np.allclose(again[::-1], saved, atol=1e-9)


def test_a_competitions_model_overrides_reach_its_runs_and_bad_keys_stop_with_one_line(demo):
    from medalist.core import config as C
    from medalist.core.config import UserError

    path = demo / "configs/competitions/demo.yaml"
    original = path.read_text()
    try:
        path.write_text(original + "\nmodel_overrides:\n  tfidf-sgd: {C: 0.25}\n")
        run_dir = train.run("demo", "tfidf-sgd", folds=[0])
        assert C.load_yaml(run_dir / "config.yaml")["model"]["C"] == 0.25
        assert C.load_yaml(demo / "configs/models/tfidf-sgd.yaml")["C"] == 10.0  # the model config is untouched
        path.write_text(original + "\nmodel_overrides:\n  tfidf-sgd: {not_a_knob: 1}\n")
        with pytest.raises(UserError, match=r"demo.yaml's model_overrides.tfidf-sgd: unknown key\(s\) \['not_a_knob'\]"):
            train.run("demo", "tfidf-sgd", folds=[0])
        path.write_text(original + "\nmodel_overrides:\n  tfidf-sgd: {family: cnn}\n")
        with pytest.raises(UserError, match="may not change the family"):
            train.run("demo", "tfidf-sgd", folds=[0])
    finally:
        path.write_text(original)

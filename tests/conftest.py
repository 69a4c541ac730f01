"""Shared fixtures: a throwaway project root so tests never touch the real data/ or results/."""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _as_project(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(REPO / "configs", root / "configs")
    monkeypatch.setenv("MEDALIST_ROOT", str(root))
    monkeypatch.setenv("MEDALIST_CONFIGS", str(root / "configs"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # loading a competition sets this process's image pixel limit: each test starts from the default
    from medalist.core.competition import ImageInput
    from medalist.image import decode

    monkeypatch.setattr(decode, "_max_pixels", ImageInput.max_pixels)
    return root


@pytest.fixture
def project(tmp_path, monkeypatch):
    """MEDALIST_ROOT → tmp_path, configs copied there (tests may edit them freely)."""
    return _as_project(tmp_path, monkeypatch)


@contextlib.contextmanager
def project_at(root: Path):
    """What `project` gives a test, at `root`, for the length of the block: for a module-scoped
    fixture that builds a tree (trained runs, say) once. Tests get their own copy (`copy_tree`)."""
    with pytest.MonkeyPatch.context() as mp:
        yield _as_project(root, mp)


def copy_tree(built: Path, project: Path) -> None:
    """A tree built under `project_at` into this test's `project` (its configs replaced by the tree's)."""
    shutil.rmtree(project / "configs")
    shutil.copytree(built, project, dirs_exist_ok=True)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """tiny_text.py's tiny BERT and Qwen2 on disk, built once per session (seeded: the same weights
    every build); tests only read them."""
    from tiny_text import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-text-models"))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The demo's raw files and folds as the shipped configs make them, built once per session;
    tests get copies (`demo_folds`) and never write here."""
    from medalist.core.competition import load_competition
    from medalist.stages import download, folds

    root = tmp_path_factory.mktemp("demo-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDALIST_ROOT", str(root))
        mp.setenv("MEDALIST_CONFIGS", str(REPO / "configs"))
        download.run(load_competition("demo"))
        folds.run(load_competition("demo"))
    return root / "data"


def copy_demo(demo_data: Path, root: Path) -> None:
    """The session's demo files and folds into the project at `root`."""
    for part in ("raw", "processed"):
        shutil.copytree(demo_data / part / "demo", root / "data" / part / "demo")


@pytest.fixture
def demo_folds(project, demo_data):
    """`project` with the demo downloaded and split into folds, as `make folds` leaves it: its Paths."""
    from medalist.core.config import Paths

    copy_demo(demo_data, project)
    return Paths("demo")


@pytest.fixture
def small_demo_folds(demo_folds, project):
    """`demo_folds` cut to 60 train rows a fold, and `quick`, a TF-IDF config that trains such a fold
    in a tenth of a second: for tests of what training does rather than how well."""
    cut_demo(demo_folds, project)
    return demo_folds


def cut_demo(paths, root: Path) -> None:
    """What `small_demo_folds` does to the demo's folds at `root` (its Paths)."""
    import pandas as pd

    train = paths.processed / "train.csv"
    pd.read_csv(train, dtype=str, keep_default_na=False).groupby("fold").head(60).to_csv(train, index=False)
    (root / "configs" / "models" / "quick.yaml").write_text("family: tfidf\nchar_ngrams: [3, 3]\nC: 1.0\n")


@pytest.fixture
def make_project(tmp_path):
    """A copy of the repository (Makefile, configs, src) whose .venv is the real one, for DAG tests."""
    root = tmp_path / "proj"
    root.mkdir()
    for name in ("Makefile", "accelerate_config.yaml", "requirements.txt"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


def make_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDALIST_", "MAKE"))}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@contextlib.contextmanager
def interrupted_after_step(n: int):
    """Ctrl-C (KeyboardInterrupt) right after this process's n-th optimizer step, which the block
    must end with. A family's resume is tested in-process this way; the engine's own test kills a
    real process (test_engine.py)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps = itertools.count(1)

    def stop(optimizer, args, kwargs):
        if next(steps) == n:
            raise KeyboardInterrupt

    handle = register_optimizer_step_post_hook(stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        handle.remove()

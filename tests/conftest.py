"""Shared fixtures: a throwaway project root so tests never touch the real data/ or results/."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """MEDALIST_ROOT → tmp_path, configs copied there (tests may edit them freely)."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.setenv("MEDALIST_ROOT", str(tmp_path))
    monkeypatch.setenv("MEDALIST_CONFIGS", str(tmp_path / "configs"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # loading a competition sets this process's image pixel limit: each test starts from the default
    from medalist.core.competition import ImageInput
    from medalist.image import decode

    monkeypatch.setattr(decode, "_max_pixels", ImageInput.max_pixels)
    return tmp_path


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

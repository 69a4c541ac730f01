"""Code competitions, slow part: from a project copy, `make all`, `make bundle` and `make rerun` —
the kernel installed into a fresh image-like environment and run in a network namespace — for the
three built-in competitions, and again on a hidden test with other ids, another row count and
another order. Wheels come from the package index once (the repository's .cache/ is shared)."""
from __future__ import annotations

import json
import shutil
import subprocess

import pandas as pd
import pytest

from conftest import REPO, make_env

pytestmark = pytest.mark.slow

CASES = {  # competition → the MODELS trained (cheap members; every input kind covered)
    "demo": "tfidf embed",
    "demo-images": "image-embed",
    "demo-products": "tfidf image-embed fusion-embed",
}


def _make(root, *args, ok=True):
    res = subprocess.run(["make", "--no-print-directory", *args], cwd=root, env=make_env(),
                         capture_output=True, text=True, timeout=1800)
    if ok:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _hidden(raw, dest, comp):
    """A hidden test: 40% of the public rows in another order, plus rows under new ids."""
    dest.mkdir()
    test = pd.read_csv(raw / "test.csv", dtype=str, keep_default_na=False)
    part = test.sample(frac=0.4, random_state=7)
    extra = part.head(5).copy()
    extra["id"] = "hidden-" + extra["id"]
    for src in raw.iterdir():  # the images and any other file, as Kaggle's folder holds them
        if src.is_dir():
            shutil.copytree(src, dest / src.name)
    if comp == "demo-images":  # an id is the image's file name: the new rows need their files
        for old, new in zip(part.head(5)["id"], extra["id"]):
            shutil.copy2(raw / "test" / old, dest / "test" / new)
    rows = pd.concat([part, extra])
    rows.to_csv(dest / "test.csv", index=False)
    pd.DataFrame({"id": rows["id"], "label": 0}).to_csv(dest / "sample_submission.csv", index=False)
    return rows


@pytest.mark.parametrize("comp", list(CASES))
def test_bundle_then_rerun_offline_reproduces_the_submission(make_project, tmp_path, comp):
    root = make_project
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, root / name)
    (REPO / ".cache").mkdir(exist_ok=True)
    (root / ".cache").symlink_to(REPO / ".cache")
    _make(root, "all", f"COMP={comp}", f"MODELS={CASES[comp]}")
    _make(root, "bundle", f"COMP={comp}", f"MODELS={CASES[comp]}")
    assert _make(root, "-q", "bundle", f"COMP={comp}", f"MODELS={CASES[comp]}", ok=False).returncode == 0

    bundle = root / "submission" / comp / "bundle"
    wheels = [p.name.lower() for p in (bundle / "code").glob("*.whl")]
    assert any(w.startswith("medalist-") for w in wheels) and any(w.startswith("scikit_learn-") for w in wheels)
    assert not [w for w in wheels if w.startswith(("torch-", "torchvision-", "triton-", "nvidia"))]
    assert json.loads((bundle / "kernel" / "kernel-metadata.json").read_text())["enable_internet"] is False

    out = _make(root, "rerun", f"COMP={comp}", f"MODELS={CASES[comp]}").stdout
    assert "ran in a network namespace" in out and "rows agree" in out
    assert (root / "submission" / comp / "rerun.csv").read_bytes() == (root / "submission" / comp / "submission.csv").read_bytes()

    rows = _hidden(root / "data" / "raw" / comp, tmp_path / "hidden", comp)
    out = _make(root, "rerun", f"COMP={comp}", f"MODELS={CASES[comp]}", f"TEST_DIR={tmp_path / 'hidden'}").stdout
    assert f"all {len(rows) - 5} ids shared with submission.csv get the same label" in out
    got = pd.read_csv(root / "submission" / comp / "rerun.csv", dtype=str)
    assert got["id"].tolist() == rows["id"].tolist()

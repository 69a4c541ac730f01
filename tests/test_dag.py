"""The Makefile DAG on the built-in demo with MODELS=tfidf: real `make` in a copy of the repo."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd

from conftest import make_env

ARGS = ["COMP=demo", "MODELS=tfidf"]


def make(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["make", "-C", str(root), "--no-print-directory", *args, *ARGS], env=make_env(),
                       capture_output=True, text=True, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def stages(out: str) -> list[str]:
    return [line.split("-m medalist.stages.")[1].split()[0] for line in out.splitlines() if "-m medalist.stages." in line]


def test_make_all_then_nothing_then_only_what_changed(make_project):
    root = make_project
    first = make(root, "all")
    assert stages(first.stdout)[:3] == ["download", "checks", "folds"]
    sub = pd.read_csv(root / "submission/demo/submission.csv", dtype=str)
    sample = pd.read_csv(root / "data/raw/demo/sample_submission.csv", dtype=str)
    assert list(sub["id"]) == list(sample["id"]) and list(sub.columns) == list(sample.columns)
    html = (root / "results/demo/report.html").read_text()
    assert "http://" not in html and "https://" not in html
    for f in ("results/demo/checks.md", "images/demo/checks_classes.png", "results/demo/leaderboard.md",
              "images/demo/confusion_tfidf.png", "results/demo/ensemble/metrics.json"):
        assert (root / f).exists(), f

    assert make(root, "-q", "all", check=False).returncode == 0
    assert stages(make(root, "all").stdout) == []

    later = time.time() + 5
    os.utime(root / "configs/models/tfidf.yaml", (later, later))
    rerun = stages(make(root, "-n", "all").stdout)
    assert "train" in rerun and "ensemble" in rerun and "report" in rerun
    assert not {"download", "checks", "folds"} & set(rerun)


def test_killed_stage_leaves_no_finished_target(make_project):
    root = make_project
    make(root, "folds")
    run_dir = root / "results/demo/tfidf"
    proc = subprocess.Popen(["make", "-C", str(root), "train", *ARGS], env=make_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (run_dir / "fold0" / "done.json").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()
    assert not list(run_dir.rglob(".*.tmp"))
    assert make(root, "-q", "train", check=False).returncode == 1
    out = make(root, "train").stdout
    assert "fold 0: done, skipped" in out and (run_dir / "metrics.json").exists()


def test_user_mistakes_are_one_line(make_project):
    root = make_project
    for args, message in ((["train", "MODELS=nope"], "unknown model 'nope'"),
                          (["folds", "COMP=nope"], "unknown competition 'nope'"),
                          (["train", "USE_GEN=1"], "make augment")):
        p = subprocess.run(["make", "-C", str(root), "--no-print-directory", *args], env=make_env(),
                           capture_output=True, text=True, timeout=600)
        assert p.returncode != 0 and message in p.stderr, (args, p.stderr)

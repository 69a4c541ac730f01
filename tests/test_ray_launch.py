"""Fold jobs on a Ray cluster (LAUNCHER=ray, core.launch): a real one-box head on 127.0.0.1 whose
workers see neither the project nor medalist's source (bench/scale.py's `ray_head`). A fold gives
the files a local fold gives; outputs come back into results/ and logs/; a failure shows the remote
traceback and leaves no done.json; an unreachable head, a missing Ray or a wrong LAUNCHER is one line.
Every test with a head is `slow` (starting and stopping one takes ~12 s here): `make test-all` runs them."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, make_env

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is optional (requirements-ray.txt, `make venv-ray`): LAUNCHER=ray is not tested without it",
                allow_module_level=True)

TIMING = {"seconds", "peak_rss_mb", "info"}  # what differs between any two fits of a fold


@pytest.fixture(scope="module")
def ray_address():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(REPO / "bench"))
        from scale import ray_head

        with ray_head() as address:
            yield address


def launch(root: Path, *command: str, launcher: str = "ray", address: str = "", **env: str) -> subprocess.CompletedProcess:
    """`python -m medalist.core.launch --gpus 0 -- COMMAND` in the project at root, as make's fold recipe runs it."""
    full = {**make_env(), "PYTHONPATH": str(REPO / "src"), "MEDALIST_ROOT": str(root), "MEDALIST_CONFIGS": str(root / "configs"),
            "MEDALIST_THREADS": "1", "RAY_MEMORY_GB": "1", "LAUNCHER": launcher, "RAY_ADDRESS": address, **env}
    return subprocess.run([sys.executable, "-m", "medalist.core.launch", "--gpus", "0", "--", *command], cwd=root, env=full,
                          capture_output=True, text=True, timeout=300)


def train(k: int) -> list[str]:
    return [sys.executable, "-m", "medalist.stages.train", "--comp", "demo", "--model", "quick", "--folds", str(k)]


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # with the head's start and stop: 15-30 s on 2 cores
def test_a_fold_through_ray_gives_the_local_fold_and_lands_here(small_demo_folds, project, ray_address):
    run = small_demo_folds.results / "quick"
    local = launch(project, *train(1), launcher="local")
    assert local.returncode == 0, local.stderr
    want = files(run)
    shutil.rmtree(run)

    p = launch(project, *train(1), address=ray_address)
    assert p.returncode == 0, p.stderr
    assert "[quick] fold 1: micro_f1" in p.stdout  # the remote output, streamed here
    got = files(run)
    assert sorted(got) == sorted(want) == ["config.yaml", "fold1/done.json", "fold1/model.joblib", "fold1/test.csv",
                                           "fold1/val.csv"]
    for name in ("config.yaml", "fold1/val.csv", "fold1/test.csv"):  # model.joblib: a pickle, not stable across fits
        assert got[name] == want[name], name
    strip = lambda b: {k: v for k, v in json.loads(b).items() if k not in TIMING}  # noqa: E731
    assert strip(got["fold1/done.json"]) == strip(want["fold1/done.json"])
    work = Path(p.stderr.split(" in ")[-1].strip())  # "ray: demo/quick fold 1 ran on <host> in <work dir>"
    assert work.name.startswith("medalist-fold-") and project not in work.parents and not work.exists()

    again = launch(project, *train(1), address=ray_address)  # done.json travels: an unchanged fold is skipped
    assert again.returncode == 0 and "fold 1: done, skipped" in again.stdout, again.stderr
    assert files(run)["fold1/val.csv"] == want["fold1/val.csv"]


# what the job sees of the filesystem: a fold folder and a log folder written where it runs
WRITER = """
import os, sys
os.makedirs("results/demo/quick/fold{k}", exist_ok=True); os.makedirs("logs/demo/quick/fold{k}", exist_ok=True)
open("logs/demo/quick/fold{k}/events.txt", "w").write(os.getcwd())
open("results/demo/quick/fold{k}/weights.bin", "wb").write(b"w" * 1000)
{end}
"""


@pytest.mark.slow  # with the head's start and stop: 15-30 s on 2 cores
def test_outputs_come_back_into_results_and_logs(project, ray_address):
    end = 'open("results/demo/quick/fold2/done.json", "w").write("{}")'
    p = launch(project, sys.executable, "-c", WRITER.format(k=2, end=end), "--comp", "demo", "--model", "quick",
               "--folds", "2", address=ray_address)
    assert p.returncode == 0, p.stderr
    ran_in = Path((project / "logs/demo/quick/fold2/events.txt").read_text())
    assert ran_in != project and project not in ran_in.parents  # not here: the files travelled
    assert (project / "results/demo/quick/fold2/weights.bin").read_bytes() == b"w" * 1000
    assert (project / "results/demo/quick/fold2/done.json").read_text() == "{}"
    assert not list((project / "results/demo/quick").glob(".fold2.landing-*"))


@pytest.mark.slow  # with the head's start and stop: 15-30 s on 2 cores
def test_a_failing_job_shows_the_remote_traceback_and_the_fold_reruns_alone(small_demo_folds, project, ray_address):
    end = 'raise RuntimeError("boom on the worker")'
    p = launch(project, sys.executable, "-c", WRITER.format(k=3, end=end), "--comp", "demo", "--model", "quick",
               "--folds", "3", address=ray_address)
    assert p.returncode == 1
    assert "demo/quick fold 3 failed on the Ray cluster" in p.stderr
    assert p.stderr.rstrip().endswith("RuntimeError: boom on the worker")
    fold = small_demo_folds.results / "quick" / "fold3"
    assert not (fold / "done.json").exists()
    assert (project / "logs/demo/quick/fold3/events.txt").exists()  # what it wrote comes back, to look at

    again = launch(project, *train(3), address=ray_address)
    assert again.returncode == 0, again.stderr
    assert json.loads((fold / "done.json").read_text())["fold"] == 3
    assert not (small_demo_folds.results / "quick" / "fold0").exists()  # that fold alone


def test_an_unreachable_head_is_one_line_and_nothing_runs_here(small_demo_folds, project):
    address = f"127.0.0.1:{closed_port()}"
    p = launch(project, *train(0), address=address)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and f"RAY_ADDRESS={address}" in p.stderr and "ray start --head" in p.stderr
    assert not (small_demo_folds.results / "quick").exists()
    p = launch(project, *train(0))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "LAUNCHER=ray needs RAY_ADDRESS=host:port" in p.stderr


def test_without_ray_installed_it_is_one_line(small_demo_folds, project, tmp_path):
    shim = tmp_path / "shim" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    p = launch(project, *train(0), address="127.0.0.1:6379",
               PYTHONPATH=os.pathsep.join([str(shim.parent), str(REPO / "src")]))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "make venv-ray" in p.stderr, p.stderr
    assert not (small_demo_folds.results / "quick").exists()


def test_launcher_local_is_a_device_slot_a_job_not_a_fold_runs_here_and_another_is_refused(project):
    show = [sys.executable, "-c", "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"]
    p = launch(project, *show, launcher="local", GPUS="0,1")
    assert p.returncode == 0 and p.stdout.strip() == "''"  # core.slots: a job of no GPU sees none
    p = launch(project, sys.executable, "-c", "print('here')", address=f"127.0.0.1:{closed_port()}")
    assert p.returncode == 0 and p.stdout == "here\n"  # not a fold job (pretraining): here, and said so
    assert p.stderr.startswith("note: LAUNCHER=ray sends fold jobs") and p.stderr.count("\n") == 1
    p = launch(project, *show, launcher="slurm")
    assert p.returncode == 2 and p.stderr.strip() == "error: LAUNCHER must be local or ray, not 'slurm'"
    m = subprocess.run(["make", "-C", str(REPO), "--no-print-directory", "help", "LAUNCHER=slurm"], env=make_env(),
                       capture_output=True, text=True, timeout=60)
    assert m.returncode != 0 and "LAUNCHER must be local or ray, not 'slurm'" in m.stderr


@pytest.mark.slow
def test_make_trains_a_run_on_the_cluster_as_it_does_here(make_project, tmp_path, ray_address):
    """`make -j2 train LAUNCHER=ray` gives the run make gives without it, byte for byte, and is then up to date."""
    root = make_project
    (root / "configs/models/quick.yaml").write_text("family: tfidf\nchar_ngrams: [3, 3]\nC: 1.0\n")
    args = ["make", "-C", str(root), "--no-print-directory", "COMP=demo", "MODELS=quick"]
    env = {**make_env(), "RAY_MEMORY_GB": "1"}
    for goal in (["folds"], ["-j2", "train", "LAUNCHER=ray", f"RAY_ADDRESS={ray_address}"]):
        p = subprocess.run(args + goal, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.count("ran on") == 5  # each fold a Ray task
    here = tmp_path / "here"
    shutil.copytree(root, here, symlinks=True)
    shutil.rmtree(here / "results/demo/quick")
    p = subprocess.run([*args[:2], str(here), *args[3:], "train"], env=make_env(), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for f in ("oof.csv", "test.csv"):
        assert (root / "results/demo/quick" / f).read_bytes() == (here / "results/demo/quick" / f).read_bytes()
    q = subprocess.run(args + ["-q", "train", "LAUNCHER=ray", f"RAY_ADDRESS={ray_address}"], env=env, timeout=300)
    assert q.returncode == 0

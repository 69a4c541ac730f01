"""The Makefile DAG on the built-in demo with MODELS=tfidf: real `make` in a copy of the repo."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, make_env

ARGS = ["COMP=demo", "MODELS=tfidf"]


def make(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["make", "-C", str(root), "--no-print-directory", *ARGS, *args], env=make_env(),
                       capture_output=True, text=True, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def stages(out: str) -> list[str]:
    return [line.split("-m medalist.stages.")[1].split()[0] for line in out.splitlines() if "-m medalist.stages." in line]


@pytest.mark.slow
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

    # the competition config: a comment reruns nothing, one model's override retrains that model alone
    cfg = root / "configs/competitions/demo.yaml"
    cfg.write_text(cfg.read_text() + "# a note\n")
    assert stages(make(root, "-n", "all").stdout) == []
    cfg.write_text(cfg.read_text() + "model_overrides: {tfidf: {C: 5.0}, embed: {epochs: 1}}\n")
    assert sorted(set(stages(make(root, "-n", "all").stdout))) == ["ensemble", "evaluate", "report", "train", "tta"]
    assert "--model tfidf" in make(root, "all").stdout

    later = time.time() + 5
    os.utime(root / "configs/ensemble.yaml", (later, later))
    assert stages(make(root, "-n", "all").stdout) == ["ensemble", "report"]
    os.utime(root / "configs/tta.yaml", (later, later))
    assert stages(make(root, "-n", "all").stdout) == ["tta", "ensemble", "report"]
    # a run depends on the code its family imports, found statically: tfidf's module, not the
    # image families' inference.py (which image_embed imports inside a function)
    assert "train" in stages(make(root, "-n", "-W", "src/medalist/models/families/tfidf.py", "all").stdout)
    assert "train" not in stages(make(root, "-n", "-W", "src/medalist/models/inference.py", "all").stdout)
    os.utime(root / "configs/models/tfidf.yaml", (later, later))
    rerun = stages(make(root, "-n", "all").stdout)
    assert "train" in rerun and "ensemble" in rerun and "report" in rerun
    assert not {"download", "checks", "folds"} & set(rerun)
    # …and an edit to how folds are made reruns the data stages and what follows them
    cfg.write_text(cfg.read_text().replace("seed: 42, near_dup", "seed: 7, near_dup"))
    assert stages(make(root, "-n", "all").stdout)[:2] == ["checks", "folds"]


@pytest.mark.slow
def test_killed_stage_leaves_no_finished_target(make_project):
    root = make_project
    make(root, "folds")
    run_dir = root / "results/demo/tfidf"
    log = root.parent / "train.log"  # outside the project: what make said, should it end on its own
    with log.open("w") as out:
        proc = subprocess.Popen(["make", "-C", str(root), "train", *ARGS], env=make_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while not (run_dir / "fold0" / "done.json").exists():
        assert proc.poll() is None and time.time() < deadline, \
            f"training ended before it could be killed:\n{log.read_text()[-3000:]}"
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
                          (["train", "USE_GEN=1"], "make augment"),
                          (["bench", "BENCH_GEN=yes"], "BENCH_GEN must be 0 or 1, not 'yes'")):
        p = subprocess.run(["make", "-C", str(root), "--no-print-directory", *args], env=make_env(),
                           capture_output=True, text=True, timeout=600)
        assert p.returncode != 0 and message in p.stderr, (args, p.stderr)


def test_family_table_comes_from_the_registry(make_project):
    """The Makefile learns launch mode and sources from medalist.models.registry; a config with
    an unknown family is one line naming the known ones, and blocks no other model."""
    root = make_project
    (root / ".venv").unlink()  # `make help` needs neither the venv nor the generated table
    assert make(root, "help").returncode == 0
    assert not (root / ".venv").exists() and not (root / ".make").exists()
    (root / ".venv").symlink_to(REPO / ".venv")

    (root / "configs/models/typo.yaml").write_text("family: tfidff\n")
    p = make(root, "-n", "train", "MODELS=typo", check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1, p.stderr
    assert "typo.yaml: unknown family 'tfidff' (known: tfidf, embed_lr, encoder, decoder_lora, " in lines[0]
    out = make(root, "-n", "train", "MODELS=tfidf minilm").stdout
    assert "-m medalist.stages.train --comp demo --model tfidf" in out  # in-process
    assert "accelerate launch --config_file accelerate_config.yaml -m medalist.stages.train --comp demo --model minilm" in out
    # prerequisites are what a family imports, at any depth, inside functions too: editing
    # models/inference.py makes image-embed runs stale, and the ensemble's code no run
    mk = (root / ".make" / "plan" / "demo.mk").read_text()
    image_embed = next(line for line in mk.splitlines() if line.startswith("SRC.model.image-embed :="))
    assert "$(M)/models/inference.py" in image_embed and "$(M)/image/features.py" in image_embed
    assert "stages/ensemble.py" not in image_embed


# Every kind of shell and make syntax; run anywhere, each piece would create INJECTED in the project.
TRICKY = ("don't \"q\" $(touch INJECTED) `touch INJECTED` $(shell touch INJECTED) $$(touch INJECTED); "
          "touch INJECTED #\nline 2")
BREAKOUT = "x' || touch INJECTED; echo '"  # closes the single quotes recipes used to paste values into


def test_user_values_reach_programs_unchanged_and_run_nothing(make_project, tmp_path):
    root = make_project
    for value in (TRICKY, BREAKOUT):
        for args in (["submit", f"FILE={value}", f"MESSAGE={value}"], ["score", f"FILE={value}", f"ANSWERS={value}"],
                     ["predict", "RUN=tfidf", f"CKPT={value}"],
                     ["download", f"COMP_DIR={value}", f"COMP_ZIP={value}"]):
            out = make(root, "-n", *args).stdout
            assert "INJECTED" not in out, (args, out)  # the value is never pasted into a command line
        p = make(root, "-n", "train", f"FOLDS={value}", check=False)  # not fold numbers: one line
        assert p.returncode != 0 and "INJECTED" not in p.stdout and "FOLDS must list folds of demo" in p.stderr
    p = make(root, "download", f"COMP_DIR={TRICKY}", check=False)
    assert p.returncode != 0 and TRICKY in p.stderr, p.stderr  # the error line echoes it verbatim
    p = make(root, "submit", f"MESSAGE={BREAKOUT}", check=False)  # the reproduction
    assert p.returncode != 0 and not (root / "INJECTED").exists()

    # the same text as a real folder and files: it arrives verbatim and works
    make(root, "download")
    raw = root / "data/raw/demo"
    folder = tmp_path / TRICKY
    folder.mkdir()
    for f in ("train.csv", "test.csv", "sample_submission.csv"):
        shutil.copy2(raw / f, folder / f)
    shutil.rmtree(raw)
    make(root, "download", f"COMP_DIR={folder}")
    assert (raw / ".complete").exists()
    sub = folder / "sample_submission.csv"
    p = make(root, "score", f"FILE={sub}", f"ANSWERS={sub}")
    assert f"\n{sub}: micro_f1 1.0000" in p.stdout, p.stdout
    assert not (root / "INJECTED").exists() and not list(tmp_path.rglob("INJECTED"))


def models(out: str) -> list[str]:
    """The models a `make -n` would train, in order, once each (a run's fold jobs and merge name it six times)."""
    return list(dict.fromkeys(line.split("--model ")[1].split()[0] for line in out.splitlines() if "--model " in line))


def test_models_default_comes_from_the_competition_config(make_project):
    root = make_project
    p = subprocess.run(["make", "-C", str(root), "--no-print-directory", "-n", "train", "COMP=demo"],
                       env=make_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    trained = models(p.stdout)
    assert trained == ["tfidf", "embed", "minilm"]
    cfg = root / "configs/competitions/demo.yaml"
    cfg.write_text(cfg.read_text() + "default_models: [tfidf]\n")
    p = subprocess.run(["make", "-C", str(root), "--no-print-directory", "-n", "train", "COMP=demo"],
                       env=make_env(), capture_output=True, text=True, timeout=300)
    assert models(p.stdout) == ["tfidf"]
    p = subprocess.run(["make", "-C", str(root), "--no-print-directory", "-n", "train", "COMP=demo", "MODELS=embed"],
                       env=make_env(), capture_output=True, text=True, timeout=300)
    assert models(p.stdout) == ["embed"]


@pytest.mark.slow
def test_folds_are_targets_of_their_own_and_results_do_not_depend_on_j(make_project, tmp_path):
    """Each fold is a target: `make -j2` trains folds side by side and gives the files `-j1` gives,
    byte for byte; a fold whose done.json is gone is trained again alone; FOLDS is checked even
    when the run is up to date."""
    root = make_project
    other = tmp_path / "other"
    shutil.copytree(root, other, symlinks=True)
    runs = "MODELS=tfidf tfidf-sgd"
    make(root, "all", "-j2", runs)
    make(other, "all", "-j1", runs)
    for run in ("tfidf", "tfidf-sgd"):
        for f in ("oof.csv", "test.csv"):
            assert (root / "results/demo" / run / f).read_bytes() == (other / "results/demo" / run / f).read_bytes()

    folds = root / "results/demo/tfidf-sgd"
    kept = {k: (folds / f"fold{k}" / "model.joblib").stat().st_mtime_ns for k in (0, 1, 2, 4)}
    (folds / "fold3" / "done.json").unlink()
    out = make(root, "train", runs).stdout
    trained = [line.split("--folds ")[1].split()[0] for line in out.splitlines() if "--folds " in line]
    assert trained == ["3"] and "--model tfidf-sgd" in out
    assert {k: (folds / f"fold{k}" / "model.joblib").stat().st_mtime_ns for k in kept} == kept
    assert (folds / "fold3" / "done.json").exists() and make(root, "-q", "all", runs, check=False).returncode == 1
    make(root, "all", runs)
    assert make(root, "-q", "all", runs, check=False).returncode == 0
    p = make(root, "train", runs, "FOLDS=7", check=False)
    assert p.returncode != 0 and "FOLDS must list folds of demo (0,1,2,3,4), comma-separated, not '7'" in p.stderr


@pytest.mark.slow
def test_two_test_images_swapped_in_the_files_swap_their_predictions(make_project, tmp_path):
    """The same images competition given again from a folder where two test images traded files
    (names kept): the next `make all` predicts them swapped — the caches are keyed by the bytes."""
    root = make_project
    args = ["COMP=demo-images", "MODELS=image-embed"]
    make(root, "all", *args)
    before = pd.read_csv(root / "results/demo-images/image-embed/test.csv", dtype={"id": str}).set_index("id")
    src = tmp_path / "swapped"
    shutil.copytree(root / "data/raw/demo-images", src, ignore=shutil.ignore_patterns(".complete"))
    a, b = sorted(p.name for p in (src / "test").iterdir())[:2]
    (src / "test" / a).rename(src / "test" / "tmp")
    (src / "test" / b).rename(src / "test" / a)
    (src / "test" / "tmp").rename(src / "test" / b)
    shutil.rmtree(root / "data/raw/demo-images")
    make(root, "all", *args, f"COMP_DIR={src}")
    after = pd.read_csv(root / "results/demo-images/image-embed/test.csv", dtype={"id": str}).set_index("id")
    assert np.allclose(after.loc[a], before.loc[b]) and np.allclose(after.loc[b], before.loc[a])
    rest = before.index.difference([a, b])
    assert np.allclose(after.loc[rest], before.loc[rest], atol=1e-6)

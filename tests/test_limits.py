"""Issue 10, items 4, 6 and 11: config values out of range are one line; a killed train's
leftovers go at the next start; under `make -j 2` each training process takes its share of the cores."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from conftest import make_env
from medalist.core.runtime import make_jobs, usable_cores
from medalist.stages import train
from medalist.core.competition import load_competition


def _edit(path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node, *keys = dotted.split("__")
        target = data
        for k in [node, *keys][:-1]:
            target = target.setdefault(k, {})
        target[[node, *keys][-1]] = value
    path.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize("config, change, says", [
    ("models/tfidf.yaml", {"C": -1}, "tfidf.yaml.C: -1.0 is out of range (must be > 0)"),
    ("models/tfidf.yaml", {"max_iter": 0}, "tfidf.yaml.max_iter: 0 is out of range (must be >= 1)"),
    ("models/tfidf.yaml", {"word_ngrams": [2, 1]}, "tfidf.yaml.word_ngrams: expected [min, max]"),
    ("models/embed.yaml", {"batch_size": 0}, "embed.yaml.batch_size: 0 is out of range"),
    ("models/tfidf.yaml", {"max_train_rows": 0}, "tfidf.yaml.max_train_rows: 0 is out of range"),
    ("competitions/demo.yaml", {"folds__n": 1}, "demo.yaml.folds.n: 1 is out of range (must be >= 2)"),
    ("competitions/demo.yaml", {"folds__near_dup_threshold": 1.5}, "near_dup_threshold: 1.5 is out of range"),
    ("ensemble.yaml", {"caruana_iters": 0}, "ensemble.yaml.caruana_iters: 0 is out of range"),
    ("tta.yaml", {"window_stride": 0}, "tta.yaml.window_stride: 0.0 is out of range (must be > 0 and <= 1)"),
    ("generate.yaml", {"temperature": 3}, "generate.yaml.temperature: 3.0 is out of range"),
    ("augment.yaml", {"copies": 0}, "augment.yaml.copies: 0 is out of range"),
])
def test_out_of_range_values_are_one_line(project, config, change, says):
    from medalist.core.config import UserError
    from medalist.models.registry import load_model_config
    from medalist.stages import augment, ensemble, generate, tta

    _edit(project / "configs" / config, **change)
    loaders = {"models/tfidf.yaml": lambda: load_model_config("tfidf"),
               "models/embed.yaml": lambda: load_model_config("embed"),
               "competitions/demo.yaml": lambda: load_competition("demo"),
               "ensemble.yaml": ensemble.load_config, "tta.yaml": tta.load_config,
               "generate.yaml": generate.load_config, "augment.yaml": augment.load_config}
    with pytest.raises(UserError) as e:
        loaders[config]()
    assert says in str(e.value) and "\n" not in str(e.value)


def test_out_of_range_on_the_command_line_is_one_line_and_exit_2(project, capsys):
    _edit(project / "configs/models/tfidf.yaml", C=-1)
    with pytest.raises(SystemExit) as e:
        train.main(["--comp", "demo", "--model", "tfidf"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: tfidf.yaml.C: -1.0 is out of range (must be > 0)"]


def test_a_killed_trains_leftovers_go_when_the_run_next_starts(small_demo_folds, project):
    fold0 = project / "results/demo/quick/fold0"
    fold0.mkdir(parents=True)
    # what SIGKILL during joblib.dump inside atomic_path leaves behind
    leftover = fold0 / ".model.joblib.k3x9.tmp"
    leftover.write_bytes(b"\0" * 1024)
    train.run("demo", "quick", folds=[0])
    assert not leftover.exists()
    assert (fold0 / "model.joblib").exists() and (fold0 / "done.json").exists()


def test_make_jobs_is_read_from_makeflags():
    assert make_jobs("") == 1
    assert make_jobs(" -j2 --jobserver-auth=3,4") == 2
    assert make_jobs("k -j3 --jobserver-auth=fifo:/tmp/x") == 3
    assert make_jobs(" -j") == usable_cores()


@pytest.mark.slow
def test_make_j2_gives_each_training_process_its_share_of_the_cores(make_project):
    root = make_project
    shutil.copy(root / "configs/models/tfidf.yaml", root / "configs/models/tfidf-b.yaml")
    args = ["make", "-C", str(root), "--no-print-directory", "COMP=demo"]
    subprocess.run([*args, "folds"], env=make_env(), check=True, capture_output=True, timeout=600)
    p = subprocess.run([*args, "-j2", "train", "MODELS=tfidf tfidf-b"], env=make_env(), capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    for run in ("tfidf", "tfidf-b"):
        metrics = json.loads((root / f"results/demo/{run}/metrics.json").read_text())
        assert metrics["threads"] == max(1, usable_cores() // 2)

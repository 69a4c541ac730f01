"""Device slots for make jobs (core.slots): each fold job holds GPUs no other job holds, waits while
none is free, TF-IDF sees none, and a CPU machine runs the command untouched. No GPU needed: the
GPU list comes from GPUS, as a user gives it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO

# the job: print the GPUs it was given, then hold them until its stdin closes
JOB = [sys.executable, "-c", "import os, sys; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'), flush=True); sys.stdin.read()"]


def slot(tmp_path, gpus: int, env: dict[str, str], **kw) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k not in ("GPUS", "CUDA_VISIBLE_DEVICES")}
    full.update({"PYTHONPATH": str(REPO / "src"), "MEDALIST_ROOT": str(tmp_path), **env})
    return subprocess.Popen([sys.executable, "-m", "medalist.core.slots", "--gpus", str(gpus), "--", *JOB], env=full,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_each_job_holds_its_own_gpu_and_a_third_waits_for_one(tmp_path):
    a, b = slot(tmp_path, 1, {"GPUS": "0,1"}), slot(tmp_path, 1, {"GPUS": "0,1"})
    a_gpu, b_gpu = a.stdout.readline().strip(), b.stdout.readline().strip()
    assert {a_gpu, b_gpu} == {"0", "1"}
    c = slot(tmp_path, 1, {"GPUS": "0,1"})
    c.stdin.close()
    with pytest.raises(subprocess.TimeoutExpired):
        c.wait(timeout=3)  # both GPUs held: it must still be waiting
    a.stdin.close()  # the first job ends: its GPU goes to the waiting one
    a.wait(timeout=60)
    assert c.stdout.readline().strip() == a_gpu
    c.wait(timeout=60)
    b.stdin.close()
    b.wait(timeout=60)
    assert a.returncode == b.returncode == c.returncode == 0


def test_two_gpus_for_one_job_and_too_many_is_one_line(tmp_path):
    p = slot(tmp_path, 2, {"GPUS": "3,5"})
    out, _ = p.communicate("", timeout=60)
    assert out.strip() == "3,5" and p.returncode == 0
    p = slot(tmp_path, 3, {"GPUS": "3,5"})
    _, err = p.communicate("", timeout=60)
    assert p.returncode == 2 and err.strip().splitlines() == [
        "error: a job asks for 3 GPUs but this machine has 2 (3,5): lower the model config's `gpus`, or set GPUS"]


def test_tfidf_sees_no_gpu_and_a_cpu_machine_runs_the_command_untouched(tmp_path):
    p = slot(tmp_path, 0, {"GPUS": "0,1"})
    assert p.communicate("", timeout=60)[0] == "\n"  # CUDA_VISIBLE_DEVICES="" hides every GPU
    p = slot(tmp_path, 1, {"PATH": "/usr/bin:/bin"})  # no GPUS, no CUDA_VISIBLE_DEVICES, no nvidia-smi
    assert p.communicate("", timeout=60)[0].strip() == "unset" and p.returncode == 0


def test_the_planner_gives_each_model_its_gpus(tmp_path):
    import shutil

    from conftest import REPO
    from medalist.planner import plan

    (tmp_path / "models").mkdir()
    (tmp_path / "pretrain").mkdir()
    shutil.copytree(REPO / "configs" / "competitions", tmp_path / "competitions")
    for name, text in {"lin": "family: tfidf\n", "enc": "family: encoder\n", "big": "family: encoder\ngpus: 2\n",
                       "bad": "family: encoder\ngpus: two\n"}.items():
        (tmp_path / "models" / f"{name}.yaml").write_text(text)
    mk = plan("demo", tmp_path)
    assert "\t$(call SLOT,0) $(PY) -m medalist.stages.train --comp demo --model lin --folds $*" in mk
    assert "\t$(call SLOT,1) $(ACCELERATE) -m medalist.stages.train --comp demo --model enc --folds $*" in mk
    assert ("\t$(call SLOT,2) $(ACCELERATE) --multi_gpu --num_processes 2 -m medalist.stages.train --comp demo "
            "--model big --gen aug,pseudo --folds $*") in mk
    assert "MODEL_ERROR.bad := configs/models/bad.yaml: gpus must be a whole number ≥ 0, not 'two'" in mk
    assert "results/demo/bad" not in mk

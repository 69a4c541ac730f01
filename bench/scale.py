"""`make bench`, part scale: fold jobs side by side on this machine. `make train -j1` against `-j2`
for 2 runs × 5 folds (SCALE_RUNS) on the demo, each in a scratch copy of the project (Makefile,
configs, src; the real .venv) after its own `make folds`: wall time of the train step alone, its
ratio, and whether the runs' oof.csv and test.csv are byte-identical. (Ray, the other half of the
scale part in issue 28, is not built yet.)
"""
from __future__ import annotations

import shutil
from pathlib import Path

from images import make_env, timed_stage
from processes import REPO

SCALE_RUNS = ("tfidf", "tfidf-sgd")
COMP = "demo"


def _project(root: Path) -> Path:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name in ("Makefile", "accelerate_config.yaml", "requirements.txt"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".venv").symlink_to((REPO / ".venv").resolve())
    return root


def part_scale(work: Path) -> dict:
    make = shutil.which("make")
    models = f"MODELS={' '.join(SCALE_RUNS)}"
    out: dict = {"comp": COMP, "runs": list(SCALE_RUNS), "jobs": {}}
    for jobs in (1, 2):
        root = _project(work / f"j{jobs}")
        base = [make, "-C", str(root), "--no-print-directory", f"COMP={COMP}", models]
        timed_stage(base + ["folds"], work / f"j{jobs}-folds.log", make_env())
        out["jobs"][str(jobs)] = timed_stage(base + [f"-j{jobs}", "train"], work / f"j{jobs}-train.log", make_env())
    files = [f"results/{COMP}/{r}/{f}" for r in SCALE_RUNS for f in ("oof.csv", "test.csv")]
    out["identical"] = all((work / "j1" / f).read_bytes() == (work / "j2" / f).read_bytes() for f in files)
    out["ratio"] = out["jobs"]["1"]["wall_seconds"] / out["jobs"]["2"]["wall_seconds"]
    return out


def render(s: dict) -> list[str]:
    if not s:
        return []
    j1, j2 = s["jobs"]["1"], s["jobs"]["2"]
    return ["## Scale", "",
            (f"`make train -j1` against `-j2` on the {s['comp']} competition, MODELS=\"{' '.join(s['runs'])}\" "
             f"({len(s['runs'])} runs × 5 folds, each fold its own target), each in a fresh scratch copy of the project "
             "after its own `make folds`; wall time of the train step. Threads per job: the cores divided by -j."), "",
            "| | -j1 | -j2 | ratio |", "|---|---|---|---|",
            f"| train wall s | {j1['wall_seconds']:.1f} | {j2['wall_seconds']:.1f} | {s['ratio']:.2f}× |",
            f"| CPU s | {j1['cpu_seconds']:.1f} | {j2['cpu_seconds']:.1f} | |", "",
            f"oof.csv and test.csv byte-identical between -j1 and -j2: {'yes' if s['identical'] else 'no'}. "
            "Ray (LAUNCHER=ray) is not built yet: no cluster figures.", ""]

"""`make bench`, part scale: fold jobs side by side on this machine. `make train -j1` against `-j2`
for 2 runs × 5 folds (SCALE_RUNS) on the demo, each in a scratch copy of the project (Makefile,
configs, src; the real .venv) after its own `make folds`: wall time of the train step alone, its
ratio, and whether the runs' oof.csv and test.csv are byte-identical. Then the Ray half: the
per-job overhead of a fold job through `core.launch` with LAUNCHER=ray on a one-box cluster
(`ray_head`) against the same job with LAUNCHER=local, for each fold of a tiny TF-IDF run.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
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
    out["ray"] = part_ray(work / "ray")
    return out


@contextlib.contextmanager
def ray_head(cpus: int = 2):
    """A Ray cluster of one box, as the README starts it (`ray start --head --node-ip-address
    127.0.0.1`), on free ports; yields its address. Its processes are a session of their own,
    stopped together at the end (no other Ray on the machine is touched). Workers get neither
    PYTHONPATH nor MEDALIST_*: what a job needs must travel with it."""
    socks = [socket.socket() for _ in range(3)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    port, client_port, agent_port = (s.getsockname()[1] for s in socks)
    for s in socks:
        s.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDALIST_", "MAKE", "RAY_")) and k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory(prefix="ray-head-") as home:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                                 "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={cpus}",
                                 f"--ray-client-server-port={client_port}", f"--dashboard-agent-listen-port={agent_port}",
                                 "--include-dashboard=false", "--disable-usage-stats"],
                                cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            said = []
            for line in proc.stdout:  # until it says it runs, or ends
                said.append(line)
                if "Ray runtime started" in line:
                    break
            else:
                raise RuntimeError("ray start --head failed:\n" + "".join(said[-20:]))
            yield f"127.0.0.1:{port}"
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # the head's processes, all at once
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # its GCS waits half a minute on the workers: no need here
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


RAY_MODEL = "tiny"  # a TF-IDF of character 3-grams: the job is short, the overhead is what shows


def _fold_job(root: Path, k: int, env: dict[str, str]) -> float:
    """One fold trained from scratch through core.launch, as make's recipe runs it: its wall seconds."""
    shutil.rmtree(root / "results" / COMP / RAY_MODEL / f"fold{k}", ignore_errors=True)
    py = str(root / ".venv" / "bin" / "python")
    cmd = [py, "-m", "medalist.core.launch", "--gpus", "0", "--", py, "-m", "medalist.stages.train",
           "--comp", COMP, "--model", RAY_MODEL, "--folds", str(k)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} ({env.get('LAUNCHER')}) failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def part_ray(work: Path, rounds: int = 3) -> dict:
    """Each fold of the tiny run, local and through Ray, `rounds` times, the side that goes first
    alternating (so the machine's load and its drift fall on both alike); the per-job overhead is
    ray − local of each pair, its median the figure."""
    if importlib.util.find_spec("ray") is None:
        return {"skipped": "ray is not installed (make venv-ray)"}
    import ray

    root = _project(work)
    (root / "configs" / "models" / f"{RAY_MODEL}.yaml").write_text("family: tfidf\nchar_ngrams: [3, 3]\nC: 1.0\n")
    timed_stage([shutil.which("make"), "-C", str(root), "--no-print-directory", f"COMP={COMP}", "folds"],
                work / "folds.log", make_env())
    # one thread each: with two OpenBLAS threads on a busy 2-core machine the fit alone took 0.3-6 s
    env = {**make_env(), "PYTHONPATH": str(root / "src"), "TOKENIZERS_PARALLELISM": "false", "RAY_MEMORY_GB": "1",
           "MEDALIST_THREADS": "1", "OMP_NUM_THREADS": "1"}
    local: dict[int, list[float]] = {k: [] for k in range(5)}
    remote: dict[int, list[float]] = {k: [] for k in range(5)}
    identical = True
    with ray_head() as address:
        for r in range(rounds):
            for k in local:
                fold = root / "results" / COMP / RAY_MODEL / f"fold{k}"
                got = {}
                for side in (("local", "ray") if (r + k) % 2 == 0 else ("ray", "local")):
                    extra = {"LAUNCHER": side, **({"RAY_ADDRESS": address} if side == "ray" else {})}
                    (local if side == "local" else remote)[k].append(_fold_job(root, k, {**env, **extra}))
                    got[side] = [(fold / f).read_bytes() for f in ("val.csv", "test.csv")]
                identical &= got["local"] == got["ray"]
    overhead = [ra - lo for k in local for lo, ra in zip(local[k], remote[k])]
    return {"model": RAY_MODEL, "rounds": rounds, "local_seconds": local, "ray_seconds": remote,
            "median_overhead_seconds": statistics.median(overhead), "identical": identical,
            "ray_version": ray.__version__, "cores": os.cpu_count(), "load_avg_1min": os.getloadavg()[0]}


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
            f"oof.csv and test.csv byte-identical between -j1 and -j2: {'yes' if s['identical'] else 'no'}.", "",
            *render_ray(s.get("ray") or {})]


def render_ray(r: dict) -> list[str]:
    if not r or "skipped" in r:
        return [f"Ray (LAUNCHER=ray): not measured — {r.get('skipped', 'no figures')}.", ""] if r else []
    ok = "met" if r["median_overhead_seconds"] < 2 else "not met"
    med = statistics.median
    rows = [(k, med(r["local_seconds"][k]), med(r["ray_seconds"][k])) for k in r["local_seconds"]]
    return [("Ray (LAUNCHER=ray): each fold of a tiny TF-IDF run (the demo, character 3-grams) as make's recipe runs it, "
             "`python -m medalist.core.launch --gpus 0 -- python -m medalist.stages.train … --folds k`, with LAUNCHER=local "
             f"and with LAUNCHER=ray against a one-box cluster (`ray start --head --node-ip-address=127.0.0.1 "
             f"--num-cpus=2`, ray {r['ray_version']}) on the same machine ({r['cores']} cores, load average "
             f"{r['load_avg_1min']:.1f} at the end); wall seconds of the whole job, from scratch each time, one thread "
             f"(MEDALIST_THREADS=1, OMP_NUM_THREADS=1), {r['rounds']} rounds with the side that goes first alternating. The first Ray job also uploads the inputs (later ones "
             "find them in the object store)."), "",
            "| fold | local s (median) | Ray s (median) |", "|---|---|---|",
            *(f"| {k} | {lo:.2f} | {ra:.2f} |" for k, lo, ra in rows), "",
            f"Per-job overhead, Ray − local (median over the {sum(len(v) for v in r['local_seconds'].values())} pairs): "
            f"{r['median_overhead_seconds']:.2f} s; goal < 2 s: {ok}. Fold files (val.csv, test.csv) byte-identical to "
            f"the local job's: {'yes' if r['identical'] else 'no'}.", ""]

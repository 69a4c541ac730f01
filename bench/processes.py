"""The bench's child processes: each stage, reference and A/B side runs as its own process, timed,
its peak RSS sampled; results are cached under keys made from their inputs.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import time
from pathlib import Path

from medalist.core import config as C

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def run_child(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    """Run one process to the end: its wall time and the peak RSS of it and its children.

    RSS is sampled (psutil, every 50 ms) rather than read from getrusage: a child's ru_maxrss
    starts at the bench's own RSS when it forks, which would hide small stages.
    """
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + shlex.join(cmd), flush=True)
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env or child_env(), cwd=C.root())
        peak = 0
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)])
            except psutil.Error:  # a process ended between listing and reading
                rss = 0
            peak = max(peak, rss)
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}); last lines of {log}:\n{tail}")
    return {"wall_seconds": wall, "peak_rss_mb": round(peak / 2**20, 1)}


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env


def digest(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(Path(p).read_bytes() if isinstance(p, Path) else repr(p).encode())
    return h.hexdigest()[:12]

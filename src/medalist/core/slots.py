"""`python -m medalist.core.slots --gpus N -- COMMAND …`: one make job (a fold) on a device slot of
its own, so `make -j` keeps every GPU busy and no two jobs share one.

The GPUs: GPUS (e.g. `0,1,3`; the Makefile knob), else the CUDA_VISIBLE_DEVICES this make was
given, else every GPU `nvidia-smi -L` lists; none on a CPU machine. A job asking for N ≥ 1 takes
the first N free of them — free meaning no other job holds its lock, `.make/slots/gpu<id>.lock`
under the project, taken with flock for the job's whole life, so a killed job frees its GPUs at
once — and runs with CUDA_VISIBLE_DEVICES set to them (N > 1: accelerate's multi-GPU inside that
job). It waits while too few are free. N = 0 (TF-IDF) hides every GPU; with no GPU at all the
command runs as it is and CPU threads are shared out by `core.runtime`.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from medalist.core import config as C
from medalist.core.config import UserError

POLL_SECONDS = 0.5  # how often a job waiting for a GPU looks again


def gpu_ids() -> list[str]:
    for var in ("GPUS", "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(var, "").strip()
        if value:
            return [g.strip() for g in value.split(",") if g.strip()]
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
    return []


def acquire(n: int, ids: list[str], lock_dir: Path) -> tuple[list[str], list[int]]:
    """Block until n of the GPUs are free; return them and the lock descriptors that hold them."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        got: list[tuple[str, int]] = []
        for g in ids:
            fd = os.open(lock_dir / f"gpu{g}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            got.append((g, fd))
            if len(got) == n:
                return [g for g, _ in got], [fd for _, fd in got]
        for _, fd in got:  # not enough: hold none while waiting, or two jobs could wait on each other
            os.close(fd)
        time.sleep(POLL_SECONDS)


def run(n: int, command: list[str]) -> None:
    """Become the command (exec: signals reach it, and the GPU locks, inherited, live as long as it)."""
    ids = gpu_ids()
    env = dict(os.environ)
    if n == 0 and ids:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if n > 0 and ids:
        if n > len(ids):
            raise UserError(f"a job asks for {n} GPUs but this machine has {len(ids)} ({','.join(ids)}): "
                            "lower the model config's `gpus`, or set GPUS")
        got, fds = acquire(n, ids, C.root() / ".make" / "slots")
        for fd in fds:
            os.set_inheritable(fd, True)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(got)
        print(f"slot: GPU {','.join(got)}", file=sys.stderr)
    try:
        os.execvpe(command[0], command, env)
    except OSError as e:
        raise UserError(f"cannot run {command[0]}: {e.strerror}") from None


def parse(prog: str, doc: str, argv: list[str] | None) -> tuple[int, list[str]]:
    """`--gpus N -- COMMAND …` (this module's and core.launch's command line): (N, COMMAND)."""
    ap = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=1, help="GPUs the job needs (0: none, hide them)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    a = ap.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command or a.gpus < 0:
        raise UserError(f"usage: python -m {prog} --gpus N -- COMMAND …")
    return a.gpus, command


@C.cli
def main(argv: list[str] | None = None) -> None:
    run(*parse("medalist.core.slots", __doc__, argv))


if __name__ == "__main__":
    main()

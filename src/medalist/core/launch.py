"""`python -m medalist.core.launch --gpus N -- COMMAND …`: where one fold job of make runs.

LAUNCHER=local (the default): here, on a device slot of its own (`core.slots`, which this becomes).
LAUNCHER=ray with RAY_ADDRESS=host:port (what `ray start --head` prints for others to join): as a
Ray task asking for N GPUs, the CPUs the job would take here (MEDALIST_THREADS, else this
machine's share per make job: `core.runtime`) and RAY_MEMORY_GB (default 4) of memory, which
make waits for like any recipe. The command is a fold's: `… --comp C --model M [--use-gen | --gen
a,b] --folds k`, as the Makefile writes it; any other (pretraining) runs here, with a note.

No filesystem is shared. What a fold reads travels as one tar: medalist's source, configs/,
accelerate_config.yaml, data/processed/<comp>/ (and the images its tables name), the generated
rows when the run trains on them, results/<comp>/pretrain/. It is kept in Ray's object store
under a key of those files' names, sizes and times, so the folds of a run upload it once. The
fold's own state goes along with each job (its done.json, so an unchanged fold is skipped as here,
and its epoch checkpoints, so a killed fold resumes). A worker unpacks both into a temp dir, runs
the same command there with the Python it runs on (so every worker needs the checkout's
requirements installed: start it with `.venv/bin/ray start`), streams the output here and sends
back results/<comp>/<run>/fold<k>/, the run's config.yaml and logs/<comp>/<run>/fold<k>/. They
land file by file (each an atomic rename), done.json last, so make's target appears only once the
fold is complete. A failed job lands everything but done.json and ends with the last lines of
its output (the remote traceback) and exit ≠ 0; `make` then reruns that fold alone.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from medalist.core import config as C
from medalist.core import runtime, slots
from medalist.core.config import UserError

MEMORY_GB = 4.0  # a fold job's default memory request on the cluster (RAY_MEMORY_GB overrides)
TAIL_LINES = 40  # the lines of a failed job's output shown here
KEEP_PACKS = 4  # input packs kept in the object store (oldest use goes first)
CONNECT_TIMEOUT_S = 5.0
PACK_WAIT_S = 600.0  # how long a task waits for its driver to upload the inputs
FORWARD = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")  # besides MEDALIST_* and *_NUM_THREADS
LOCAL_ONLY = ("MEDALIST_ROOT", "MEDALIST_CONFIGS", "MEDALIST_MAKE_START")  # paths and times of this machine
HEAD_HINT = ("start a head with `ray start --head --node-ip-address=<ip> --port=6379` (README: \"A Ray cluster\") "
             "or correct RAY_ADDRESS")


@dataclass(frozen=True)
class Fold:
    comp: str
    run: str
    k: int
    gen: bool  # the run trains on generated rows

    def __str__(self) -> str:
        return f"{self.comp}/{self.run} fold {self.k}"

    @property
    def dirs(self) -> tuple[str, str]:
        """The fold's results and logs folders, relative to the project root."""
        return f"results/{self.comp}/{self.run}/fold{self.k}", f"logs/{self.comp}/{self.run}/fold{self.k}"


def fold_of(command: list[str]) -> Fold | None:
    """The fold a command trains (None: not a fold job)."""
    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for opt in ("--comp", "--model", "--gen", "--folds"):
        ap.add_argument(opt, default="")
    ap.add_argument("--use-gen", action="store_true")
    a, _ = ap.parse_known_args(command[1:])
    if not (a.comp and a.model and a.folds.isdigit()):
        return None
    run = a.model
    if a.use_gen or a.gen:  # pandas comes with it: only when needed
        from medalist.core.generated import suffix

        run += suffix(a.use_gen, tuple(a.gen.split(",")) if a.gen else ())
    return Fold(a.comp, run, int(a.folds), bool(a.use_gen or a.gen))


def _files(path: Path, arc: str) -> list[tuple[str, Path]]:
    """(name in a tar, file) for path, a file or a folder walked in order, named arc/…; none if absent."""
    if path.is_file():
        return [(arc, path)]
    out = []
    for d, subdirs, names in os.walk(path):
        subdirs[:] = sorted(s for s in subdirs if s != "__pycache__")
        out += [(f"{arc}/{Path(d, n).relative_to(path).as_posix()}", Path(d, n)) for n in sorted(names)]
    return out


def _image_paths(processed: Path) -> list[str]:
    """The `image` column of the processed tables: files under the project root the fold reads."""
    import csv

    out: set[str] = set()
    for name in ("train.csv", "test.csv"):
        if (processed / name).exists():
            with open(processed / name, newline="", encoding="utf-8") as f:
                out.update(row.get("image") or "" for row in csv.DictReader(f))
    return sorted(p for p in out if p and not os.path.isabs(p))


def inputs(fold: Fold) -> list[tuple[str, Path]]:
    """What the fold job reads, as (name in the tar, local file)."""
    import medalist

    root, processed = C.root(), f"data/processed/{fold.comp}"
    files = _files(Path(medalist.__file__).parent, "src/medalist") + _files(C.configs_dir(), "configs")
    for rel in ("accelerate_config.yaml", processed, *_image_paths(root / processed), f"results/{fold.comp}/pretrain",
                *([f"data/generated/{fold.comp}/generated_train.csv"] if fold.gen else [])):
        files += _files(root / rel, rel)
    return files


def tar_bytes(files: list[tuple[str, Path]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for arc, path in files:
            tar.add(path, arcname=arc, recursive=False)
    return buf.getvalue()


def pack_key(files: list[tuple[str, Path]]) -> str:
    """Names, sizes and times (make's own test of change): no file is read to compute it."""
    stats = [(arc, p.stat().st_size, p.stat().st_mtime_ns) for arc, p in files]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


class _Packs:
    """Owns the input packs in the object store (a driver's objects go when it exits, and each fold
    job is a driver of its own). A job's task waits here for its pack while the driver uploads it,
    so the worker's start and the upload overlap."""

    def __init__(self):
        import threading

        self.refs: dict = {}
        self.changed = threading.Condition()

    def has(self, key) -> bool:
        with self.changed:
            return key in self.refs

    def keep(self, key, blob) -> None:
        import ray

        ref = ray.put(blob)  # put here, so that this actor owns it
        with self.changed:
            self.refs[key] = ref
            while len(self.refs) > KEEP_PACKS:
                self.refs.pop(next(iter(self.refs)))
            self.changed.notify_all()

    def wait(self, key, timeout: float):
        with self.changed:
            if not self.changed.wait_for(lambda: key in self.refs, timeout):
                return None
            self.refs[key] = self.refs.pop(key)  # the most recently used last
            return [self.refs[key]]


def _job(packs, key: str, state: bytes, command: list[str], env: dict, outputs: list[str], gpus: int):
    """The Ray task (shipped by value to workers that may not import medalist: stdlib and ray only).
    Yields ("line", text) as the job prints, then ("done", exit code, last lines, outputs tar,
    host, work dir)."""
    import collections
    import ctypes
    import signal
    import socket
    import subprocess
    import tempfile

    def die_with_worker():  # a force-cancelled worker must not leave its training running
        try:
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass

    work = tempfile.mkdtemp(prefix="medalist-fold-")
    proc = None
    try:
        import ray

        holder = ray.get(packs.wait.remote(key, PACK_WAIT_S))
        if holder is None:
            raise RuntimeError(f"the job's inputs did not reach the object store in {PACK_WAIT_S:g} s")
        for blob in (ray.get(holder[0]), state):
            with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
                tar.extractall(work, filter="data")
        program = os.path.join(os.path.dirname(sys.executable), os.path.basename(command[0]))
        # the worker's environment less what Ray sets for its own workers (its OMP_NUM_THREADS: BLAS
        # threads change the last digits of a fit), then what the job had where make runs
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "OMP_NUM_THREADS"},
               **env, "MEDALIST_ROOT": work, "MEDALIST_CONFIGS": os.path.join(work, "configs"),
               "PYTHONPATH": os.path.join(work, "src"), "PYTHONUNBUFFERED": "1"}
        if gpus == 0:
            env["CUDA_VISIBLE_DEVICES"] = ""
        proc = subprocess.Popen([program if os.path.exists(program) else command[0], *command[1:]], cwd=work,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1, preexec_fn=die_with_worker)
        tail = collections.deque(maxlen=TAIL_LINES)
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            yield ("line", line)
        code = proc.wait()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for rel in outputs:
                if os.path.exists(os.path.join(work, rel)):
                    tar.add(os.path.join(work, rel), arcname=rel)
        yield ("done", code, list(tail), buf.getvalue(), socket.gethostname(), work)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def land(blob: bytes, root: Path, fold: Fold, ok: bool) -> None:
    """The job's outputs into the local tree, each file by an atomic rename, done.json last (and
    only when the job succeeded)."""
    results = root / fold.dirs[0]
    stage = results.parent / f".fold{fold.k}.landing-{os.getpid()}"  # beside the fold: one filesystem
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(stage, filter="data")
        names = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        done = f"{fold.dirs[0]}/done.json"
        names = [n for n in names if n != done] + ([done] if ok and done in names else [])
        for name in names:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(stage / name, root / name)
        if done in names:
            os.utime(root / done)  # this machine's clock decides what make sees as newer
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _address() -> str:
    import socket

    address = os.environ.get("RAY_ADDRESS", "").strip()
    host, _, port = address.rpartition(":")
    if not (host and port.isdigit()):
        given = f" (not '{address}')" if address else ""
        raise UserError(f"LAUNCHER=ray needs RAY_ADDRESS=host:port, the Ray head's address{given}: {HEAD_HINT}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(f"no Ray cluster answers at RAY_ADDRESS={address} ({e.strerror or e}): {HEAD_HINT}") from None
    return address


def _packs(ray):
    import inspect

    name = "packs-" + hashlib.sha256(inspect.getsource(_Packs).encode()).hexdigest()[:12]  # new code, new actor
    return ray.remote(_Packs).options(name=name, lifetime="detached", get_if_exists=True, num_cpus=0,
                                      max_concurrency=64).remote()


def _upload(ray, packs, key: str, files: list[tuple[str, Path]]) -> None:
    """The inputs into the object store unless there already (one fold job of this machine at a
    time asks, so parallel folds of a run upload them once)."""
    lock = C.root() / ".make" / "ray-pack.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        if not ray.get(packs.has.remote(key)):
            ray.get(packs.keep.remote(key, tar_bytes(files)))


def _fold_state(fold: Fold) -> bytes:
    """done.json and epoch checkpoints of the fold, as this machine has them."""
    files = _files(C.root() / fold.dirs[0], fold.dirs[0])
    return tar_bytes([(arc, p) for arc, p in files
                      if arc == f"{fold.dirs[0]}/done.json" or "ckpt" in Path(arc).parts])


def _check_fits(ray, fold: Fold, address: str, gpus: int, cpus: int, memory: int) -> None:
    """A task no node can hold would wait for ever: say so instead."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("GPU", 0) >= gpus and r.get("CPU", 0) >= cpus and r.get("memory", 0) >= memory for r in nodes):
        raise UserError(f"no node of the Ray cluster at {address} has {gpus} GPU(s), {cpus} CPU(s) and "
                        f"{memory / 2**30:g} GiB of memory for {fold}: join a larger worker, or lower "
                        "MEDALIST_THREADS / RAY_MEMORY_GB / the model config's `gpus`")


def run_on_ray(gpus: int, command: list[str], fold: Fold) -> int:
    """The fold job as a Ray task; its exit code."""
    try:
        import ray
        import ray.cloudpickle
    except ImportError as e:
        raise UserError(f"LAUNCHER=ray needs Ray in this environment ({e}): run `make venv-ray` "
                        "(pip install -r requirements-ray.txt)") from None
    address = _address()
    if __name__ != "__main__":  # imported (tests): the task and the actor still travel by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        ray.init(address=address, namespace="medalist", logging_level="ERROR", log_to_driver=False)
    except Exception as e:  # whatever Ray raises: the cluster is not usable from here
        raise UserError(f"cannot join the Ray cluster at {address}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}"
                        ) from None
    cpus = runtime.thread_share()
    try:
        memory = int(float(os.environ.get("RAY_MEMORY_GB") or MEMORY_GB) * 2**30)
    except ValueError:
        raise UserError(f"RAY_MEMORY_GB must be a number of GiB, not '{os.environ['RAY_MEMORY_GB']}'") from None
    _check_fits(ray, fold, address, gpus, cpus, memory)
    env = {k: v for k, v in os.environ.items()
           if (k.startswith("MEDALIST_") and k not in LOCAL_ONLY) or k.endswith("_NUM_THREADS") or k in FORWARD}
    env["MEDALIST_THREADS"] = str(cpus)
    outputs = [*fold.dirs, f"results/{fold.comp}/{fold.run}/config.yaml"]
    task = ray.remote(_job).options(num_gpus=gpus, num_cpus=cpus, memory=memory, max_retries=0,
                                        num_returns="streaming", name=f"medalist {fold}")
    files = inputs(fold)
    key, packs = pack_key(files), _packs(ray)
    gen = task.remote(packs, key, _fold_state(fold), command, env, outputs, gpus)
    done = None
    try:
        _upload(ray, packs, key, files)  # while the task's worker starts
        for ref in gen:
            item = ray.get(ref)
            if item[0] == "line":
                sys.stdout.write(item[1])
                sys.stdout.flush()
            else:
                done = item
    except KeyboardInterrupt:
        ray.cancel(gen)
        raise
    except ray.exceptions.RayError as e:
        raise UserError(f"{fold} was lost on the Ray cluster at {address}: {str(e).strip().splitlines()[-1]}") from None
    _, code, tail, blob, host, work = done
    land(blob, C.root(), fold, ok=code == 0)
    if code != 0:
        print(f"error: {fold} failed on the Ray cluster ({host}, exit {code}); the last lines of its output:",
              *(f"  | {line}" for line in tail), sep="\n", file=sys.stderr)
        return code if 0 < code < 256 else 1
    print(f"ray: {fold} ran on {host} in {work}", file=sys.stderr)
    return 0


@C.cli
def main(argv: list[str] | None = None) -> None:
    gpus, command = slots.parse("medalist.core.launch", __doc__, argv)
    launcher = os.environ.get("LAUNCHER", "").strip() or "local"
    if launcher not in ("local", "ray"):
        raise UserError(f"LAUNCHER must be local or ray, not '{launcher}'")
    fold = fold_of(command) if launcher == "ray" else None
    if launcher == "ray" and fold is None:  # pretraining: one job whose outputs later jobs read
        print("note: LAUNCHER=ray sends fold jobs (… --comp C --model M --folds k) to the cluster; this one runs "
              "here: " + " ".join(command), file=sys.stderr)
    if fold is None:
        slots.run(gpus, command)
    else:
        code = run_on_ray(gpus, command, fold)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # without Ray's disconnect at exit (0.3-0.5 s a job): the cluster sees the driver go either way


if __name__ == "__main__":
    main()

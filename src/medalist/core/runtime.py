"""Ground floor: how many CPU threads this process may use.

Two torch processes on 2 cores, each with torch's default thread count, slow each other far
beyond half speed (EfficientNet-Lite0 fell from 91 to 6 images/s beside a MiniLM run). So every
stage takes its share: the usable cores divided by make's job count (`make -j N`, read from
MAKEFLAGS, which make exports to its recipes) and by the processes accelerate started on this
machine. `MEDALIST_THREADS=n` overrides the computation.
"""
from __future__ import annotations

import os
import re
import sys


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def make_jobs(makeflags: str | None = None) -> int:
    """Make's job count from MAKEFLAGS: `-j4`/`--jobs=4` → 4; a bare `-j` (no limit) → every core; none → 1."""
    flags = os.environ.get("MAKEFLAGS", "") if makeflags is None else makeflags
    words = flags.split()
    # make puts single-letter flags first as one word without a dash (e.g. "ks"); -j comes separately
    for w in words:
        m = re.fullmatch(r"(?:-j|--jobs=?)(\d*)", w)
        if m:
            return int(m.group(1)) if m.group(1) else usable_cores()
    return 1


def thread_share() -> int:
    override = os.environ.get("MEDALIST_THREADS")
    if override:
        return max(1, int(override))
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # set by accelerate/torchrun
    return max(1, usable_cores() // (make_jobs() * local_procs))


def configure_threads() -> int:
    """Give this process its share of the cores (torch, OpenMP/MKL, tokenizers); returns the count."""
    n = thread_share()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n


def current_threads() -> int:
    """The threads this process computes with (torch's count once torch is loaded)."""
    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    return int(os.environ.get("OMP_NUM_THREADS") or usable_cores())

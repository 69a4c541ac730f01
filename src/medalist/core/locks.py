"""Ground floor: one process at a time per stage of a competition, and the temp files a killed one left.

make orders the steps of one `make`, not of two: `make download` in two terminals, or a rerun
beside a hung one, would write the same folder at once. A stage takes `stage_lock` around its
work; a second process waits for the first (saying so on stderr), then finds the work done.

Leftovers: every write goes through a temp file or folder beside its target (`core/io.py`), which
a SIGKILL, an out-of-memory kill or a power cut leaves behind. They belong to the stage that
writes that folder, so that stage removes them when it next starts, while it holds its lock — no
process of that stage can be writing them then.

Lock files (`data/raw/.<comp>.<stage>.lock`) are never deleted: deleting a lock file another
process waits on would let a third one lock a new file beside it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable, Iterator

from medalist.core import config as C
from medalist.core.config import Paths


@contextlib.contextmanager
def stage_lock(paths: Paths, stage: str, leftovers: Iterable[tuple[Path, str]] = ()) -> Iterator[Path]:
    """Hold the lock of `stage` on `paths.comp` (waiting for its holder), then remove `leftovers`.

    `stage` names what is serialised: "download", or "train-<run>" so that different runs still
    train side by side under `make -j`. `leftovers` are (folder, glob pattern) pairs of the temp
    files only this stage writes. The lock goes when the block ends or the process dies.
    """
    lock = paths.raw.parent / f".{paths.comp}.{stage}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            print(f"waiting for another {stage} of '{paths.comp}' (pid {holder}) to finish …",
                  file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the next one's message
        for folder, pattern in leftovers:
            remove_leftovers(folder, pattern, stage)
        yield lock
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def remove_leftovers(folder: Path, pattern: str, stage: str) -> list[Path]:
    """Delete what matches `pattern` in `folder` (files or whole folders). Call it only while
    holding the lock of the stage that writes them: a live writer's temp file matches too."""
    folder = Path(folder)
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if found:
        shown = ", ".join(str(p.relative_to(C.root())) for p in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        print(f"removed what an interrupted {stage} left: {shown}", file=sys.stderr)
    return found

"""Ground floor: the progress bar every long step shows, suited to where it is read.

On a terminal it is tqdm's bar. Written to a file or a pipe (`make all > log 2>&1`, CI, a job
log) a bar's carriage-return redraws pile up into one unreadable line, so there it is a plain
line every STEP of the way (at most one each GAP_S) and one at the end, each the text tqdm's bar
shows.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

STEP = 0.05  # a line every 5% of the way: at most 21 lines a bar in a log
GAP_S = 5.0  # … and seconds apart: a bar done in seconds (an epoch of a small model) is its last line only
QUIET_S = 60.0  # a bar without a total (a download that sent no length): a line a minute at most


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
             unit_scale: bool = False, initial: float = 0, disable: bool = False, file: IO[str] | None = None):
    """A progress bar over `iterable` (or advanced by `update(n)` up to `total`), on `file`
    (stderr by default); used as tqdm's: iterate it, or `with progress(...) as bar: bar.update(n)`,
    `bar.set_postfix(key=value)`, `bar.close()`."""
    stream = sys.stderr if file is None else file
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, initial=initial,
                    disable=disable, file=stream, dynamic_ncols=True, mininterval=1.0)
    return _Lines(iterable, total, desc, unit, unit_scale, initial, disable, stream)


class _Lines:
    """A progress bar as newline-terminated lines (see the module's docstring)."""

    def __init__(self, iterable: Iterable | None, total: float | None, desc: str, unit: str, unit_scale: bool,
                 initial: float, disable: bool, stream: IO[str]):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit, self.unit_scale = iterable, total, desc, unit, unit_scale
        self.disable, self.stream = disable, stream
        self.n = self.shown = self.initial = initial
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.steps = self._steps()
        self.closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _steps(self) -> int:
        return math.floor(self.n / self.total / STEP) if self.total else 0

    def update(self, n: float = 1) -> None:
        if self.disable:
            return
        self.n += n
        steps, since = self._steps(), time.monotonic() - self.last
        if (self.total and (self.n >= self.total or (steps > self.steps and since >= GAP_S))) or \
                (not self.total and since >= QUIET_S):
            self.steps = steps
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed and not self.disable and self.n != self.shown:
            self._line()
        self.closed = True

    def _line(self) -> None:
        from tqdm import tqdm

        self.last = time.monotonic()
        self.shown = self.n
        self.stream.write(tqdm.format_meter(self.n, self.total, self.last - self.start, ncols=0, prefix=self.desc,
                                            unit=self.unit, unit_scale=self.unit_scale, initial=self.initial,
                                            postfix=self.postfix or None) + "\n")
        self.stream.flush()

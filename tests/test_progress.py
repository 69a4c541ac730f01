"""Progress bars in a log file: plain lines, a bounded number of them, no carriage returns."""
from __future__ import annotations

import io

from medalist.core import progress as P
from medalist.core.progress import progress


def test_a_bar_into_a_file_is_a_line_every_few_percent(monkeypatch):
    log = io.StringIO()  # not a terminal, as `make all > log 2>&1` makes stderr
    for _ in progress(range(10_000), desc="decoding images", unit="img", file=log):
        pass
    assert log.getvalue().count("\n") == 1, "a bar done in a moment is its last line only"

    monkeypatch.setattr(P, "GAP_S", 0.0)  # as if every step took long
    log = io.StringIO()
    assert sum(1 for _ in progress(range(10_000), desc="decoding images", unit="img", file=log)) == 10_000
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and log.getvalue().endswith("\n")
    assert 15 <= len(lines) <= 21 and lines[-1].startswith("decoding images: 100% 10000/10000")

    log = io.StringIO()
    with progress(total=7, desc="epoch 1/2", unit="step", file=log) as bar:
        for k in range(7):
            bar.set_postfix(loss=f"{1 / (k + 1):.3f}")
            bar.update()
    assert len(log.getvalue().splitlines()) == 7 and log.getvalue().splitlines()[-1].endswith("loss=0.143]")

    log = io.StringIO()
    with progress(total=None, desc="download", unit="B", unit_scale=True, file=log) as bar:
        for _ in range(100):  # no total (no Content-Length): the final line only, this fast
            bar.update(1 << 20)
    assert log.getvalue().splitlines() == [log.getvalue().strip()] and "105MB" in log.getvalue()

    log = io.StringIO()
    for _ in progress(range(50), disable=True, file=log):
        pass
    assert log.getvalue() == ""

"""`make rerun [TEST_DIR=…]`: the bundle's kernel run as Kaggle would rerun it — in a fresh
environment holding only what Kaggle's image holds, with the network off — before anything is
uploaded.

Reads   submission/<comp>/bundle/, data/raw/<comp>/ (or TEST_DIR: another test set in the same
        layout, e.g. a subset in another order), submission/<comp>/submission.csv
Writes  submission/<comp>/rerun.csv (the kernel's output); its work tree under
        submission/<comp>/.rerun/ is removed afterwards
Run     python -m medalist.stages.rerun --comp demo [--test-dir DIR]

Steps: a Kaggle-like tree (input/<competition>, input/<code dataset>, input/<artifacts dataset>,
working/) rooted where MEDALIST_KAGGLE_ROOT says; a new virtual environment from the base
interpreter with only torch, torchvision, numpy and their dependencies linked in from .venv
(`import sklearn` must fail there before the bundle is installed); the kernel run inside a Linux
network namespace (`unshare -n`; no namespace → one line, never a networked run). Without TEST_DIR
the output must equal submission.csv (labels; probabilities within 1e-4); with it, every id it
shares with submission.csv must get the same label. Then the speed: rows per second, extrapolated
to the hidden test's rows, against the notebook's time limit.

What it cannot prove: Kaggle's hardware (speed differs), and the image's exact package versions
(the link-in uses this machine's torch, torchvision and numpy).
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

from medalist.core import config as C
from medalist.core.competition import load_competition
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.io import read_csv, read_json


def _link_tree(src: Path, dest: Path) -> None:
    """A copy of `src` made of hard links where the filesystem allows (no symlinks: the kernel's
    hash and nltk must see real files)."""
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, copy_function=link, symlinks=False)


def _kaggle_tree(root: Path, bundle: Path, comp_files: Path, settings: dict) -> None:
    for name, src in ((settings["competition"], comp_files), (settings["code"], bundle / "code"),
                      (settings["artifacts"], bundle / "artifacts")):
        _link_tree(src, root / "input" / name)
    (root / "working").mkdir(parents=True)


def _settings(bundle: Path) -> dict:
    import json
    import re

    text = (bundle / "kernel" / "medalist_kernel.py").read_text(encoding="utf-8")
    m = re.search(r"^SETTINGS = (\{.*?^\})", text, re.S | re.M)
    if not m:
        raise UserError(f"{bundle}/kernel/medalist_kernel.py: no SETTINGS — rebuild with `make bundle`")
    return json.loads(m.group(1))


def speed(timings: dict, hidden_rows: int, limit_h: float) -> tuple[str, bool]:
    """(the speed line, whether the margin is under 2×): start-up is paid once, inference per row."""
    rows, infer_s, total_s = timings["rows"], timings["infer_seconds"], timings["total_seconds"]
    per_s = rows / max(infer_s, 1e-9)
    fixed = max(total_s - infer_s, 0.0)
    est = fixed + hidden_rows / per_s
    margin = limit_h * 3600 / max(est, 1e-9)
    line = (f"rerun: {rows} rows in {infer_s:.1f} s ({per_s:.1f} rows/s; {fixed:.0f} s to start): "
            f"{hidden_rows} hidden rows ≈ {est / 60:.1f} min of the {limit_h:g} h limit — margin {margin:.1f}×")
    return line, margin < 2


def run(comp_name: str, test_dir: str | None = None) -> Path:
    from medalist.bundle import sandbox
    from medalist.stages.bundle import compare

    comp = load_competition(comp_name)
    paths = Paths(comp.name)
    nb = comp.submission.notebook
    bundle = paths.submission / "bundle"
    if not (bundle / "artifacts" / "bundle.json").exists():
        raise UserError(f"no bundle in {bundle}: run `make bundle COMP={comp.name}` first")
    manifest = read_json(bundle / "artifacts" / "bundle.json")
    here = "{}.{}".format(*platform.python_version_tuple()[:2])
    if manifest["python"] != here:
        raise UserError(f"the bundle's wheels are for CPython {manifest['python']} (submission.notebook.python) and this "
                        f"machine runs {here}: they cannot be installed here, so no rerun can prove them")
    files = Path(test_dir) if test_dir else paths.raw
    if not files.is_dir():
        raise UserError(f"TEST_DIR={test_dir}: not a folder")
    sandbox.namespace_prefix()  # probed before any work: no namespace, no rerun
    settings = _settings(bundle)
    work = paths.submission / ".rerun"
    shutil.rmtree(work, ignore_errors=True)
    try:
        root = work / "kaggle"
        _kaggle_tree(root, bundle, files, settings)
        python = sandbox.image_venv(work / "venv")
        print(f"rerun: fresh environment {work / 'venv'} (torch, torchvision, numpy linked in; no scikit-learn)", flush=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "LANG": "C.UTF-8",
               "MEDALIST_KAGGLE_ROOT": str(root), "PIP_NO_CACHE_DIR": "1", "PYTHONUNBUFFERED": "1",
               **{k: v for k, v in os.environ.items() if k.endswith("_NUM_THREADS")}}
        code = sandbox.run_offline([str(python), str(bundle / "kernel" / "medalist_kernel.py")], env=env, cwd=root / "working",
                                   log=work / "kernel.log")
        if code != 0:
            tail = (work / "kernel.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
            raise UserError(f"the kernel failed offline (exit {code}): {tail[0] if tail else 'no output'}")
        out = root / "working" / "submission.csv"
        dest = paths.submission / "rerun.csv"
        shutil.copy2(out, dest)
        timings = read_json(root / "working" / "timings.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    got = read_csv(dest, dest.name, dtype=str)
    want = read_csv(paths.submission / "submission.csv", "submission.csv", dtype=str)
    if test_dir is None:
        print(f"rerun: {compare(comp, want, got, 'rerun.csv against submission.csv')}")
    else:
        print(f"rerun: {shared_labels(comp, want, got)}")
    line, tight = speed(timings, nb.hidden_test_rows or manifest["public_rows"], nb.time_limit_hours)
    print(line)
    if tight:
        print(f"warning: under 2× margin against the {nb.time_limit_hours:g} h limit — Kaggle's machine may be slower "
              "than this one; drop a member or TTA views", file=sys.stderr)
    print(f"rerun: wrote {dest.relative_to(C.root())}")
    return dest


def shared_labels(comp, want, got) -> str:
    """Every id of another test set that submission.csv also has must get the same label."""
    s = comp.submission
    col = s.label_column if s.format == "label" else None
    w = want.set_index(want[s.id_column].astype(str))
    g = got.set_index(got[s.id_column].astype(str))
    shared = [i for i in g.index if i in w.index]
    if col is None:
        import numpy as np

        lab_w = w.loc[shared, list(comp.labels)].to_numpy(float).argmax(axis=1)
        lab_g = g.loc[shared, list(comp.labels)].to_numpy(float).argmax(axis=1)
    else:
        lab_w, lab_g = w.loc[shared, col].astype(str).to_numpy(), g.loc[shared, col].astype(str).to_numpy()
    bad = [i for i, a, b in zip(shared, lab_w, lab_g) if a != b]
    if bad:
        raise UserError(f"rerun.csv: id '{bad[0]}' gets another label than in submission.csv "
                        f"({len(bad)} of {len(shared)} shared ids): a prediction depends on the other test rows")
    return f"{len(got)} rows; all {len(shared)} ids shared with submission.csv get the same label"


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.rerun", __doc__)
    ap.add_argument("--test-dir", default="", help="another test set in the competition's layout")
    a = ap.parse_args(argv)
    run(a.comp, a.test_dir or None)


if __name__ == "__main__":
    main()

"""The kernel Kaggle reruns: its script, its kernel-metadata.json, and `run`, what the script
calls. Standard library only up to the install: the script imports this module straight from the
medalist wheel in the code dataset (a wheel is a zip Python can import from), checks the bundle's
content hash, installs the wheels with no index, then runs `medalist.bundle.infer` in a fresh
interpreter.

Kaggle mounts the competition and each dataset under /kaggle/input/ (by slug; newer images nest
them deeper, so the script also searches); `MEDALIST_KAGGLE_ROOT` moves /kaggle elsewhere — how
`make rerun` builds a Kaggle-like tree.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

PLACEHOLDER_OWNER = "__KAGGLE_USERNAME__"  # `make submit` puts the credentials' username here
CODE_FILE = "medalist_kernel.py"

SCRIPT = '''\
# medalist: the inference kernel of a code competition, written by `make bundle` — do not edit.
# It checks the bundle's content hash, installs the code dataset's wheels with no index (the
# rerun has no internet) and runs medalist.bundle.infer on the competition's files.
import os, sys
from pathlib import Path

SETTINGS = {settings}
ROOT = Path(os.environ.get("MEDALIST_KAGGLE_ROOT", "/kaggle"))


def find(name, marker):
    """/kaggle/input/<name>, or the first folder called <name> below input/ that holds <marker>."""
    base = ROOT / "input"
    direct = base / name
    if list(direct.glob(marker)):
        return direct
    for depth in ("*/", "*/*/", "*/*/*/"):
        for d in sorted(base.glob(depth + name)):
            if list(d.glob(marker)):
                return d
    sys.exit(f"error: no {{name}} under {{base}} holding {{marker}}: add it to the notebook's inputs")


code = find(SETTINGS["code"], "medalist-*.whl")
sys.path.insert(0, str(next(code.glob("medalist-*.whl"))))
from medalist.bundle import kernel  # noqa: E402  (from the wheel: standard library only)

kernel.run(ROOT, code, find(SETTINGS["artifacts"], "bundle.json"),
           find(SETTINGS["competition"], SETTINGS["sample_submission"]), SETTINGS["content_hash"])
'''


def script(settings: dict) -> str:
    return SCRIPT.format(settings=json.dumps(settings, indent=4, sort_keys=True))


def metadata(owner: str, prefix: str, title: str, comp_slug: str, accelerator: str) -> dict:
    """kernel-metadata.json as Kaggle's client reads it. enable_internet is written out: the
    client turns the internet ON when the key is missing, and a code competition refuses that."""
    gpu = accelerator != "none"
    meta = {
        "id": f"{owner}/{prefix}-kernel",
        "title": title,
        "code_file": CODE_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": gpu,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": [f"{owner}/{prefix}-code", f"{owner}/{prefix}-artifacts"],
        "competition_sources": [comp_slug],
        "kernel_sources": [],
        "model_sources": [],
    }
    if gpu:
        meta["machine_shape"] = accelerator
    return meta


def dataset_metadata(owner: str, slug: str, title: str) -> dict:
    return {"title": title, "id": f"{owner}/{slug}", "licenses": [{"name": "other"}]}


def _step(t: float, what: str) -> float:
    now = time.time()
    print(f"[kernel] {now - t:7.1f} s  {what}", flush=True)
    return now


def run(root: Path, code: Path, artifacts: Path, comp_dir: Path, content_hash: str) -> None:
    """Check, install, infer: /kaggle/working/submission.csv (+ timings.json beside it)."""
    from medalist.bundle.digest import bundle_hash

    t0 = t = time.time()
    working = Path(root) / "working"
    working.mkdir(parents=True, exist_ok=True)
    got = bundle_hash(code, artifacts)
    if got != content_hash:
        sys.exit(f"error: the attached datasets hold another bundle (content hash {got[:12]}, this kernel "
                 f"was written for {content_hash[:12]}): attach the versions `make submit` uploaded")
    t = _step(t, f"bundle {content_hash[:12]} checked: {code.name} + {artifacts.name}")
    wheels = sorted(str(p) for p in Path(code).glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--disable-pip-version-check", "--find-links", str(code), *wheels], check=True)
    t = _step(t, f"installed {len(wheels)} wheels with no index")
    env = dict(os.environ, MEDALIST_ROOT=str(working / "medalist"), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    nltk = Path(code) / "nltk_data"
    if nltk.is_dir():  # WordNet for synonym views: nltk refuses symlinks, so a real copy
        import shutil

        dest = working / "medalist" / "data" / "nltk_data"
        if not dest.exists():
            shutil.copytree(nltk, dest)
        env["NLTK_DATA"] = str(dest)
    out = working / "submission.csv"
    t_infer = time.time()
    subprocess.run([sys.executable, "-m", "medalist.bundle.infer", "--input", str(comp_dir),
                    "--artifacts", str(artifacts), "--out", str(out)], check=True, env=env, cwd=working)
    infer_s = time.time() - t_infer
    t = _step(t, f"inference wrote {out}")
    rows = sum(1 for _ in open(out, encoding="utf-8")) - 1
    (working / "timings.json").write_text(json.dumps(
        {"rows": rows, "infer_seconds": infer_s, "total_seconds": time.time() - t0}, indent=2))
    print(f"[kernel] total {time.time() - t0:.1f} s", flush=True)

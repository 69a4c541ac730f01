"""The content hash of a bundle: standard library only, because the kernel checks it before
anything is installed (it imports this module straight from the medalist wheel).

The hash covers every file of the code and artifacts folders — relative path and bytes — except
the files that name where the folders go (dataset-metadata.json), the manifest that carries the
hash (bundle.json) and `make submit`'s own state. Kaggle keeps no version numbers we could know
before upload, so the kernel compares this hash with the one written into it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

SKIP = frozenset({"dataset-metadata.json", "bundle.json", ".submit_state.json"})


def files(folder: Path) -> list[Path]:
    """Every file under `folder` that the hash covers, sorted by relative path."""
    folder = Path(folder)
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            if p.relative_to(folder).as_posix() not in SKIP and not name.startswith("."):
                out.append(p)
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def bundle_hash(code: Path, artifacts: Path) -> str:
    """sha256 over (folder tag, relative path, size, bytes) of every covered file."""
    h = hashlib.sha256()
    for tag, folder in (("code", Path(code)), ("artifacts", Path(artifacts))):
        for p in files(folder):
            rel = p.relative_to(folder).as_posix()
            h.update(f"{tag}/{rel}\0{p.stat().st_size}\0".encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()

"""Cache keys by content: the one way a cached result (decoded images, image features, text
embeddings, a finished fold) is judged still good. A key covers the bytes of every file the result
read — an image replaced under the same name, new weights in the same folder or a changed table
make another key — and the source of the code that made it (the modules named and every medalist
module they import, at any depth, inside functions too), never file times or the git SHA.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from medalist.core import config as C

_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime): a file read once a process


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, "" for a missing or unreadable one."""
    p = Path(path)
    try:
        st = p.stat()
        memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if memo not in _DIGESTS:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            _DIGESTS[memo] = h.hexdigest()
        return _DIGESTS[memo]
    except OSError:
        return ""


def file_digests(paths: Sequence[str], root: Path | None = None) -> list[str]:
    """`file_digest` of each path ("" for an empty one), relative paths under root (the project's)."""
    base = C.root() if root is None else root
    return [file_digest(base / p) if p else "" for p in paths]


PACKAGE = Path(__file__).resolve().parents[1]  # src/medalist


def _module_file(name: str) -> Path | None:
    """medalist.a.b → src/medalist/a/b.py or a/b/__init__.py, found on disk (importing would run it)."""
    rel = PACKAGE.joinpath(*name.split(".")[1:])
    for f in (rel.parent / f"{rel.name}.py", rel / "__init__.py"):
        if f.is_file():
            return f
    return None


@lru_cache(maxsize=None)
def module_sources(name: str) -> tuple[Path, ...]:
    """The source files of a medalist module and of every medalist module it imports, at any
    depth, read statically (an import inside a function counts)."""
    seen: dict[str, Path] = {}
    todo = [name]
    while todo:
        mod = todo.pop()
        f = _module_file(mod)
        if mod in seen or f is None:
            continue
        seen[mod] = f
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("medalist")]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medalist") and not node.level:
                # `from medalist.x import y`: y is a submodule or a name in medalist.x
                todo += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # a package's __init__ runs first
    return tuple(sorted(set(seen.values())))


def source_digest(*modules: str) -> str:
    """One hash of the sources `module_sources` finds for these modules."""
    files = sorted({f for m in modules for f in module_sources(m)})
    return key(*[(f.name, file_digest(f)) for f in files])


def key(*parts: object) -> str:
    """A short hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tree_digest(folder: Path) -> str:
    """The content of the files directly in a folder (a model's weights and tokenizer), by name."""
    files: Iterable[Path] = sorted(p for p in Path(folder).iterdir() if p.is_file()) if Path(folder).is_dir() else []
    return key(*[(p.name, file_digest(p)) for p in files])

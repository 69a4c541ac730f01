"""Ground floor: where a competition's images lie, for the Kaggle layouts people meet.

- table: train.csv / test.csv name each row's file in a column (`train/<id>.jpg` with
  `extension: .jpg`, or a path relative to train_dir/test_dir);
- class_folders: no train.csv; `train_dir/<label>/…` holds each class's files, ids from file names;
- folder: no test.csv; one test row per image file in test_dir, ids from file names;
- urls: the table's column holds URLs that `make download` fetched into `urls.dir`, each named
  by `url_stem` (a URL that could not be fetched has no file: its row's image is "").

Every function returns paths relative to the competition's raw folder (posix, as the processed
tables write them). Read by `competition.read_raw`; the fetcher names files with `url_stem`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medalist.core.config import UserError

if TYPE_CHECKING:  # competition.py imports this module
    from medalist.core.competition import ImageInput, UrlImages

# What counts as an image file by its name in a folder layout: Kaggle's JPEG, PNG and WebP, plus
# the formats PIL decodes that older datasets ship. Anything else (a README, labels.txt) is skipped.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def url_stem(url: str) -> str:
    """The file name (without suffix) a URL's image is stored under: a hash, so any URL gives a
    safe, fixed name, a rerun finds what an earlier one fetched, and rows sharing a URL share a file."""
    return hashlib.sha256(url.strip().encode("utf-8")).hexdigest()[:24]


def _hidden(rel: PurePosixPath) -> bool:
    # macOS zips carry __MACOSX/ and ._name resource forks that look like images by name
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.parts)


def _image_files(folder: Path, raw_dir: Path, extension: str, what: str) -> list[PurePosixPath]:
    """Image files under `folder` (recursively, sorted) relative to raw_dir; other files are
    skipped with one note."""
    if not folder.is_dir():
        raise UserError(f"{what}: folder {folder} not found; check inputs.image's train_dir/test_dir")
    found, skipped = [], []
    for p in sorted(folder.rglob("*")):
        rel = PurePosixPath(p.relative_to(raw_dir).as_posix())
        if not p.is_file() or _hidden(PurePosixPath(p.relative_to(folder).as_posix())):
            continue
        name = p.name.lower()
        ok = name.endswith(extension.lower()) if extension else p.suffix.lower() in IMAGE_SUFFIXES
        (found if ok else skipped).append(rel)
    if skipped:
        print(f"note: {what}: skipped {len(skipped)} file(s) that are not images by name, e.g. {skipped[0]}")
    return found


def _file_ids(files: list[PurePosixPath], ids: str, what: str) -> list[str]:
    """Each file's id (its name, or its name without the extension); two files may not share one."""
    out = [f.name if ids == "name" else f.stem for f in files]
    seen: dict[str, PurePosixPath] = {}
    for f, i in zip(files, out):
        if i in seen:
            raise UserError(f"{what}: {seen[i]} and {f} give the same id '{i}'; rename one of them")
        seen[i] = f
    return out


def class_folder_rows(raw_dir: Path, image: ImageInput, allowed: dict[str, int], what: str) -> pd.DataFrame:
    """train_dir/<label>/<file> → (id, image, label index); a folder name must be a label."""
    base = raw_dir / image.train_dir
    files = _image_files(base, raw_dir, image.extension, what)
    labels = []
    depth = len(PurePosixPath(image.train_dir).parts)
    for f in files:
        parts = f.parts[depth:]
        if len(parts) < 2:
            raise UserError(f"{what}: {f} is not inside a class folder ({base}/<label>/…)")
        if parts[0] not in allowed:
            raise UserError(f"{what}: folder '{parts[0]}' ({base / parts[0]}) is not a label "
                            f"(as label_encoding writes them: {', '.join(allowed)})")
        labels.append(allowed[parts[0]])
    if not files:
        raise UserError(f"{what}: no image files in class folders under {base}")
    return pd.DataFrame({"id": _file_ids(files, image.ids, what),
                         "image": [f.as_posix() for f in files], "label": np.asarray(labels, dtype=int)})


def folder_rows(raw_dir: Path, image: ImageInput, what: str) -> pd.DataFrame:
    """test_dir/<file> → (id, image): one row per image file."""
    files = _image_files(raw_dir / image.test_dir, raw_dir, image.extension, what)
    if not files:
        raise UserError(f"{what}: no image files in {raw_dir / image.test_dir}")
    return pd.DataFrame({"id": _file_ids(files, image.ids, what), "image": [f.as_posix() for f in files]})


def table_image_paths(values: pd.Series, image: ImageInput, folder: str, raw_dir: Path, what: str,
                      optional: bool = False) -> np.ndarray:
    """A table column of file names → paths relative to raw_dir. Image-only (optional False):
    every row names a file that is there. With other inputs (optional True) a row may have no
    photo: an empty cell, or a named file that is not there (counted in a note), becomes "";
    only when no named file is there at all is it a mistake (the wrong folder or extension)."""
    empty = values.isna().to_numpy() | (values.fillna("").astype(str).str.strip() == "").to_numpy()
    if empty.any() and not optional:
        row = int(np.flatnonzero(empty)[0])
        raise UserError(f"{what}: empty image name in column '{image.column}' at row {row + 2}")
    rel = [None if e else PurePosixPath(folder) / (str(v).strip() + image.extension) for v, e in zip(values, empty)]
    outside = [i for i, r in enumerate(rel) if r is not None and (r.is_absolute() or ".." in r.parts)]
    if outside:
        i = outside[0]
        raise UserError(f"{what}: image '{rel[i]}' at row {i + 2} is not inside {raw_dir}; "
                        f"give paths relative to inputs.image's folder")
    missing = [i for i, r in enumerate(rel) if r is not None and not (raw_dir / r).is_file()]
    named = len(rel) - int(empty.sum())
    if missing and (not optional or len(missing) == named):
        i = missing[0]
        raise UserError(f"{what}: {len(missing)} of {named} images not found, e.g. {raw_dir / rel[i]} "
                        f"(row {i + 2}); check inputs.image (column '{image.column}', folder '{folder}', "
                        f"extension '{image.extension}')")
    if missing:
        print(f"note: {what}: {len(missing)} of {named} named images not found (e.g. {rel[missing[0]]}); "
              "those rows are read without a photo")
    gone = set(missing)
    return np.array(["" if r is None or i in gone else r.as_posix() for i, r in enumerate(rel)], dtype=object)


def url_image_paths(values: pd.Series, urls: UrlImages, raw_dir: Path) -> np.ndarray:
    """A table column of URLs → the fetched file of each (relative to raw_dir), "" where none was."""
    folder = raw_dir / urls.dir
    have = {p.stem: p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}
    out = []
    for v in values:
        name = have.get(url_stem(v)) if isinstance(v, str) and v.strip() else None
        out.append((PurePosixPath(urls.dir) / name).as_posix() if name else "")
    return np.array(out, dtype=object)


def inside(folder: str) -> bool:
    """A config folder that stays inside the competition's raw folder."""
    p = PurePosixPath(folder)
    return not p.is_absolute() and ".." not in p.parts

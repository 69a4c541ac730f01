"""Ground floor: reading and writing the contract files of DESIGN.md, atomically.

Every target is written to a temp file in the same folder and renamed into place, so a stage
killed mid-write never leaves a file that make would take as finished.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from medalist.core.config import UserError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600; give the target the usual permissions
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: Path, obj: object) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: object) -> object:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def read_csv(path: Path, what: str | None = None, **kwargs) -> pd.DataFrame:
    """Read a CSV the user gave us; every way it can be broken is one clear UserError."""
    path = Path(path)
    what = what or path.name
    if not path.exists():
        raise UserError(f"{what}: file not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{what}: file is empty: {path}")
    try:
        df = pd.read_csv(path, encoding="utf-8", keep_default_na=False, na_values=[""], **kwargs)
    except UnicodeDecodeError:
        line, offset, byte = _first_non_utf8(path)
        raise UserError(
            f"{what}: not UTF-8 text (byte 0x{byte:02x} on line {line}, byte offset {offset}): {path}; "
            "save it as UTF-8"
        ) from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{what}: file has no columns: {path}") from None
    except pd.errors.ParserError as e:
        raise UserError(f"{what}: malformed CSV ({str(e).strip().splitlines()[-1]}): {path}") from None
    return df


def _first_non_utf8(path: Path) -> tuple[int, int, int]:
    """(line, byte offset in the file, the byte) of the first byte that is not UTF-8.

    pandas' error counts from the start of the chunk it was decoding, which names no place in
    the file; this rereads the file in chunks, carrying a character split between two chunks.
    """
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # file offset of the next chunk
    lines = 1
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            carried = decoder.getstate()[0]  # bytes of a character the last chunk split
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                data = carried + chunk
                start = offset - len(carried) + e.start
                return lines + data[: e.start].count(b"\n") - carried.count(b"\n"), start, data[e.start]
            if not chunk:
                raise AssertionError(f"{path} decodes as UTF-8 here but not in pandas")
            lines += chunk.count(b"\n")
            offset += len(chunk)


def prob_columns(n_classes: int) -> list[str]:
    return [f"p_{i}" for i in range(n_classes)]


def probs_of(df: pd.DataFrame) -> np.ndarray:
    """The p_0…p_{K-1} block of an oof.csv/test.csv as an (n, K) array, in class order."""
    cols = [c for c in df.columns if c.startswith("p_")]
    cols.sort(key=lambda c: int(c[2:]))
    return df[cols].to_numpy(dtype=np.float64)


def read_processed(paths) -> tuple[pd.DataFrame, pd.DataFrame]:
    """data/processed/<comp>/{train,test}.csv with string ids (DESIGN.md contract)."""
    tr = paths.processed / "train.csv"
    te = paths.processed / "test.csv"
    if not tr.exists():
        raise UserError(f"no processed data for '{paths.comp}': run `make folds COMP={paths.comp}` first")
    train = pd.read_csv(tr, dtype={"id": str, "text": str}, keep_default_na=False)
    test = pd.read_csv(te, dtype={"id": str, "text": str}, keep_default_na=False)
    return train, test


def read_run(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A run's oof.csv, test.csv and metrics.json."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists():
        raise UserError(f"run not finished: {run_dir} (train it with `make train`)")
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    test = pd.read_csv(run_dir / "test.csv", dtype={"id": str})
    return oof, test, read_json(run_dir / "metrics.json")


def proba_frame(ids, proba: np.ndarray, fold: int | np.ndarray | None = None) -> pd.DataFrame:
    """The contract frame of predictions: id[, fold], p_0…p_{K-1}."""
    proba = np.asarray(proba, dtype=np.float64)
    df = pd.DataFrame(proba, columns=prob_columns(proba.shape[1]))
    if fold is not None:
        df.insert(0, "fold", fold)
    df.insert(0, "id", pd.Series(ids, dtype=str).to_numpy())
    return df


def align(df: pd.DataFrame, ids) -> np.ndarray:
    """The p_* block of a prediction frame, rows in the order of `ids` (every id must be there)."""
    indexed = df.assign(id=df["id"].astype(str)).set_index("id")
    ids = pd.Series(ids, dtype=str)
    missing = ~ids.isin(indexed.index)
    if missing.any():
        raise UserError(f"predictions lack id '{ids[missing].iloc[0]}'")
    return probs_of(indexed.loc[ids.to_numpy()].reset_index())

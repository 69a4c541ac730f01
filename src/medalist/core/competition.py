"""Ground floor: a competition as config, its raw files read into the normalised tables,
and the submission validator every writer of a submission goes through.

Config: configs/competitions/<comp>.yaml (see configs/competitions/demo.yaml for every key).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import numpy as np
import pandas as pd

from medalist.core.config import NonNegative, Range, UserError
from medalist.core import config as C
from medalist.core.io import read_csv
from medalist.core.metrics import METRICS


@dataclasses.dataclass(frozen=True)
class Files:
    train: str = "train.csv"
    test: str = "test.csv"
    sample_submission: str = "sample_submission.csv"


@dataclasses.dataclass(frozen=True)
class Submission:
    # label: one column holding the class (as its index or its name); probs: one column per class
    format: Literal["label", "probs"] = "label"
    id_column: str = "id"
    label_column: str = "label"
    label_as: Literal["index", "name"] = "index"


@dataclasses.dataclass(frozen=True)
class Cleaning:
    decode_bytes: bool = True  # b'Solve …\n' → Solve …
    strip_html: bool = True
    replace_urls: bool = True  # → [URL]
    replace_emails: bool = True  # → [EMAIL]


@dataclasses.dataclass(frozen=True)
class Folds:
    n: Annotated[int, Range(ge=2)] = 5
    seed: Annotated[int, NonNegative] = 42
    near_dup_threshold: Annotated[float, Range(gt=0, le=1)] = 0.8  # char 5-gram Jaccard at or above this groups two texts


@dataclasses.dataclass(frozen=True)
class TextInput:
    columns: tuple[str, ...]  # raw columns joined with a newline, in this order, into `text`


@dataclasses.dataclass(frozen=True)
class ImageInput:
    column: str  # each row's image: a file name or a path relative to the folder below
    train_dir: str = ""  # folder under data/raw/<comp>/ holding train.csv's images ("" = the top)
    test_dir: str = ""  # the same for test.csv's images
    extension: str = ""  # appended to every value when the column holds bare ids, e.g. ".jpg"


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a row shows a model, by kind; each kind becomes one column of the processed tables.

    A new kind (audio, tabular …) is one more optional field here and one more column there.
    """

    text: TextInput | None = None
    image: ImageInput | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None)


@dataclasses.dataclass(frozen=True)
class Competition:
    name: str
    labels: tuple[str, ...]
    source: Literal["kaggle", "demo", "local"] = "kaggle"
    kaggle_slug: str | None = None  # defaults to name
    files: Files = Files()
    id_column: str = "id"
    train_has_id: bool = True  # kasut's train.csv has no id column: ids become train-<row>
    inputs: Inputs = Inputs(text=TextInput(columns=("text",)))
    label_column: str = "label"
    label_encoding: Literal["index", "name"] = "index"  # how train.csv writes the label
    metric: Literal["micro_f1", "macro_f1", "accuracy", "log_loss"] = "micro_f1"
    submission: Submission = Submission()
    cleaning: Cleaning = Cleaning()
    folds: Folds = Folds()
    description: dict[str, str] = dataclasses.field(default_factory=dict)  # label → one line
    check_models: tuple[str, ...] = ()  # model configs whose tokenizers `make check` measures
    # the runs `make all`/`make train` train when MODELS is not given (chosen for a 2-core CPU)
    default_models: tuple[str, ...] = ("tfidf", "embed", "minilm")

    def validate(self, where: str) -> None:
        if len(self.labels) < 2:
            raise UserError(f"{where}: needs at least two labels")
        if not self.default_models:
            raise UserError(f"{where}: default_models is empty")
        if len(set(self.labels)) != len(self.labels):
            raise UserError(f"{where}: labels repeat")
        if not self.inputs.kinds:
            raise UserError(f"{where}: inputs declares no input (text: {{columns: […]}} and/or image: {{column: …}})")
        if self.inputs.text is not None and not self.inputs.text.columns:
            raise UserError(f"{where}: inputs.text.columns is empty")
        assert self.metric in METRICS

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def slug(self) -> str:
        return self.kaggle_slug or self.name

    @property
    def rules_url(self) -> str:
        return f"https://www.kaggle.com/competitions/{self.slug}/rules"


def load_competition(name: str) -> Competition:
    path = C.configs_dir() / "competitions" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"unknown competition '{name}': no {path} (known: {', '.join(known)})")
    comp = C.load(Competition, path)
    if comp.name != name:
        raise UserError(f"{path.name}: name is '{comp.name}', expected '{name}'")
    return comp


def _require_columns(df: pd.DataFrame, cols, what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UserError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")


def _join_text(df: pd.DataFrame, cols) -> pd.Series:
    parts = [df[c].fillna("").astype(str) for c in cols]
    text = parts[0]
    for p in parts[1:]:
        text = text + "\n" + p
    return text


def _image_paths(df: pd.DataFrame, image: ImageInput, folder: str, raw_dir: Path, what: str) -> np.ndarray:
    """Each row's image file as a path relative to `raw_dir`; every file must be there."""
    values = df[image.column]
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise UserError(f"{what}: empty image name in column '{image.column}' at row {row + 2}")
    rel = [PurePosixPath(folder) / (str(v).strip() + image.extension) for v in values]
    outside = [i for i, r in enumerate(rel) if r.is_absolute() or ".." in r.parts]
    if outside:
        i = outside[0]
        raise UserError(f"{what}: image '{rel[i]}' at row {i + 2} is not inside {raw_dir}; "
                        f"give paths relative to inputs.image's folder")
    missing = [i for i, r in enumerate(rel) if not (raw_dir / r).is_file()]
    if missing:
        i = missing[0]
        raise UserError(f"{what}: {len(missing)} of {len(rel)} images not found, e.g. {raw_dir / rel[i]} "
                        f"(row {i + 2}); check inputs.image (column '{image.column}', folder '{folder}', "
                        f"extension '{image.extension}')")
    return np.array([r.as_posix() for r in rel], dtype=object)


def _check_unique_ids(ids: pd.Series, what: str) -> None:
    dup = ids[ids.duplicated()]
    if len(dup):
        raise UserError(f"{what}: duplicate id '{dup.iloc[0]}' (row {dup.index[0] + 2})")


def read_raw(comp: Competition, raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Raw Kaggle files → train (id, [text], [image], label:int), test (id, [text], [image]), sample
    submission. `text` joins the declared text columns; `image` is each row's file relative to raw_dir.

    Every inconsistency a user's data can have ends in one UserError naming it.
    """
    f = comp.files
    train = read_csv(raw_dir / f.train, f.train, dtype=str)
    test = read_csv(raw_dir / f.test, f.test, dtype=str)
    sample = read_csv(raw_dir / f.sample_submission, f.sample_submission, dtype=str)
    for df, what in ((train, f.train), (test, f.test), (sample, f.sample_submission)):
        if len(df) == 0:
            raise UserError(f"{what}: has a header but no rows")

    inp = comp.inputs
    declared = [*(inp.text.columns if inp.text else ()), *([inp.image.column] if inp.image else [])]
    _require_columns(train, [*declared, comp.label_column], f.train)
    _require_columns(test, [comp.id_column, *declared], f.test)
    if comp.train_has_id:
        _require_columns(train, [comp.id_column], f.train)
        train_ids = train[comp.id_column].astype(str)
    else:
        train_ids = pd.Series([f"train-{i}" for i in range(len(train))])
    _check_unique_ids(train_ids, f.train)
    test_ids = test[comp.id_column].astype(str)
    _check_unique_ids(test_ids, f.test)

    raw_labels = train[comp.label_column]
    if raw_labels.isna().any():
        row = int(np.flatnonzero(raw_labels.isna().to_numpy())[0])
        raise UserError(f"{f.train}: empty label at row {row + 2}")
    if comp.label_encoding == "index":
        allowed = {str(i): i for i in range(comp.n_classes)}
    else:
        allowed = {name: i for i, name in enumerate(comp.labels)}
    bad = ~raw_labels.astype(str).str.strip().isin(list(allowed))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(
            f"{f.train}: unknown label '{raw_labels.iloc[row]}' at row {row + 2}; "
            f"allowed: {', '.join(allowed)}"
        )
    labels = raw_labels.astype(str).str.strip().map(allowed).astype(int)

    out_train = pd.DataFrame({"id": train_ids.to_numpy()})
    out_test = pd.DataFrame({"id": test_ids.to_numpy()})
    if inp.text is not None:
        out_train["text"] = _join_text(train, inp.text.columns).to_numpy()
        out_test["text"] = _join_text(test, inp.text.columns).to_numpy()
    if inp.image is not None:
        out_train["image"] = _image_paths(train, inp.image, inp.image.train_dir, raw_dir, f.train)
        out_test["image"] = _image_paths(test, inp.image, inp.image.test_dir, raw_dir, f.test)
    out_train["label"] = labels.to_numpy()

    s = comp.submission
    _require_columns(sample, [s.id_column], f.sample_submission)
    sample_ids = sample[s.id_column].astype(str)
    if len(sample_ids) != len(test_ids) or set(sample_ids) != set(test_ids):
        extra = sorted(set(sample_ids) - set(test_ids))[:1]
        missing = sorted(set(test_ids) - set(sample_ids))[:1]
        raise UserError(
            f"{f.sample_submission} disagrees with {f.test}: {len(sample_ids)} vs {len(test_ids)} ids"
            + (f"; e.g. '{extra[0]}' only in {f.sample_submission}" if extra else "")
            + (f"; e.g. '{missing[0]}' only in {f.test}" if missing else "")
        )
    return out_train, out_test, sample


# ---------------------------------------------------------------- submissions


def expected_columns(comp: Competition) -> list[str]:
    s = comp.submission
    if s.format == "probs":
        return [s.id_column, *comp.labels]
    return [s.id_column, s.label_column]


def make_submission(comp: Competition, sample: pd.DataFrame, ids, proba: np.ndarray) -> pd.DataFrame:
    """Probabilities for test ids → a frame shaped exactly like sample_submission.csv."""
    s = comp.submission
    ids = pd.Series(ids, dtype=str).to_numpy()
    order = pd.Series(np.arange(len(ids)), index=ids)
    sample_ids = sample[s.id_column].astype(str)
    missing = sorted(set(sample_ids) - set(ids))
    if missing:
        raise UserError(f"predictions lack test id '{missing[0]}'")
    proba = np.asarray(proba, dtype=np.float64)[order.loc[sample_ids].to_numpy()]
    out = pd.DataFrame({s.id_column: sample[s.id_column].to_numpy()})
    if s.format == "probs":
        proba = proba / proba.sum(axis=1, keepdims=True)
        for i, name in enumerate(comp.labels):
            out[name] = proba[:, i]
    else:
        pred = proba.argmax(axis=1)
        out[s.label_column] = pred if s.label_as == "index" else [comp.labels[i] for i in pred]
    return out


def validate_submission(comp: Competition, sample: pd.DataFrame, sub: pd.DataFrame) -> None:
    """Raise UserError naming the first problem: columns, rows, NaN, ids/order, dtypes, labels.

    The one validator of every submission file: written (ensemble, submission, predict), scored
    (`make score`) or uploaded (`make submit`)."""
    s = comp.submission
    want = expected_columns(comp) if s.format == "probs" else list(sample.columns)
    if list(sub.columns) != want:
        raise UserError(f"submission columns {list(sub.columns)} differ from sample_submission's {want}")
    if len(sub) != len(sample):
        raise UserError(f"submission has {len(sub)} rows, sample_submission has {len(sample)}")
    for col in sub.columns:  # before the ids, so an empty id is not reported as the id 'nan'
        nan = sub[col].isna().to_numpy()
        if nan.any():
            i = int(np.flatnonzero(nan)[0])
            raise UserError(f"submission row {i + 2}: empty/NaN value in column '{col}'")
    got_ids = sub[s.id_column].astype(str).to_numpy()
    want_ids = sample[s.id_column].astype(str).to_numpy()
    diff = np.flatnonzero(got_ids != want_ids)
    if len(diff):
        i = int(diff[0])
        raise UserError(f"submission row {i + 2}: id '{got_ids[i]}', sample_submission has '{want_ids[i]}' (ids/order differ)")
    if s.format == "probs":
        block = sub[list(comp.labels)]
        try:
            p = block.to_numpy(dtype=np.float64)
        except ValueError:
            raise UserError("submission: probability columns are not all numbers") from None
        bad = np.flatnonzero((p < 0).any(axis=1) | (p > 1).any(axis=1) | (np.abs(p.sum(axis=1) - 1) > 1e-4))
        if len(bad):
            raise UserError(f"submission row {int(bad[0]) + 2}: probabilities outside [0,1] or not summing to 1")
        return
    vals = sub[s.label_column].astype(str).str.strip()
    allowed = [str(i) for i in range(comp.n_classes)] if s.label_as == "index" else list(comp.labels)
    bad = np.flatnonzero(~vals.isin(allowed).to_numpy())
    if len(bad):
        i = int(bad[0])
        raise UserError(f"submission row {i + 2}: label '{vals.iloc[i]}' outside the label space {allowed}")
    if s.label_as == "index":
        sample_dtype_int = pd.api.types.is_integer_dtype(pd.to_numeric(sample[s.label_column], errors="coerce").dropna())
        if sample_dtype_int and not all(v.lstrip("-").isdigit() for v in vals):
            raise UserError("submission: label column must hold integers like sample_submission's")


def read_sample(comp: Competition, raw_dir: Path) -> pd.DataFrame:
    return read_csv(raw_dir / comp.files.sample_submission, comp.files.sample_submission, dtype=str)


def write_submission(comp: Competition, raw_dir: Path, ids, proba: np.ndarray, out: Path,
                     run: str, cv: float | None) -> Path:
    """Validate, then write `out` and its sidecar `<out>.json` {run, cv, metric} (read by submit)."""
    from medalist.core.io import write_csv, write_json

    sample = read_sample(comp, raw_dir)
    sub = make_submission(comp, sample, ids, proba)
    validate_submission(comp, sample, sub)
    write_csv(out, sub)
    write_json(Path(out).with_suffix(".json"), {"run": run, "cv": cv, "metric": comp.metric})
    return Path(out)

"""Ground floor: a competition as config, its raw files read into the normalised tables,
and the submission validator every writer of a submission goes through.

Config: configs/competitions/<comp>.yaml (see configs/competitions/demo.yaml for every key).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd

from medalist.core import config as C
from medalist.core import image_layouts as layouts
from medalist.core.config import AtLeastOne, Fraction, NonNegative, Positive, Range, UserError
from medalist.core.io import read_csv
from medalist.core.metrics import METRICS


@dataclasses.dataclass(frozen=True)
class Files:
    train: str = "train.csv"
    test: str = "test.csv"
    sample_submission: str = "sample_submission.csv"


@dataclasses.dataclass(frozen=True)
class Notebook:
    """submission.notebook: how Kaggle reruns a code competition's notebook (`make bundle`)."""
    accelerator: str = "none"  # none, or a Kaggle accelerator id such as NvidiaTeslaT4
    time_limit_hours: Annotated[float, Positive] = 9.0  # Kaggle stops the rerun after this long
    hidden_test_rows: Annotated[int, NonNegative] = 0  # rows of the hidden test; 0: the public test's
    python: str = ""  # the notebook image's CPython, e.g. "3.11" or "3.11.13"; "": this machine's
    enable_internet: bool = False  # a code competition's rerun has none; true is refused
    allow_test_fitted: bool = False  # bundle runs that saw the public test (pseudo-labels, pretraining on it)
    max_bundle_mb: Annotated[float, Positive] = 20_000.0  # artifacts + code over this: one line, no bundle
    dataset_prefix: str = ""  # the two datasets' slugs start with this; "": medalist-<comp>

    def validate(self, where: str) -> None:
        if self.enable_internet:
            raise UserError(f"{where}: enable_internet: true — a code competition reruns the notebook with "
                            "the internet off, so the bundle never asks for it; remove the key")
        if self.python and not re.fullmatch(r"3\.\d+(\.\d+)?", self.python):
            raise UserError(f"{where}: python must be a CPython version like 3.11, not '{self.python}'")
        if not re.fullmatch(r"none|[A-Za-z0-9]+", self.accelerator):
            raise UserError(f"{where}: accelerator must be none or a Kaggle accelerator id (e.g. NvidiaTeslaT4), "
                            f"not '{self.accelerator}'")
        if self.dataset_prefix and not re.fullmatch(r"[a-z0-9][a-z0-9-]{2,40}", self.dataset_prefix):
            raise UserError(f"{where}: dataset_prefix must be lowercase letters, digits and dashes, "
                            f"not '{self.dataset_prefix}'")


@dataclasses.dataclass(frozen=True)
class Submission:
    # label: one column holding the class (as its index or its name); probs: one column per class
    format: Literal["label", "probs"] = "label"
    id_column: str = "id"
    label_column: str = "label"
    label_as: Literal["index", "name"] = "index"
    # csv: `make submit` uploads submission.csv; notebook: a code competition — `make bundle`
    # packs an offline kernel, `make rerun` proves it, `make submit` pushes it and submits its output
    via: Literal["csv", "notebook"] = "csv"
    notebook: Notebook = Notebook()


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
class UrlImages:
    """inputs.image.urls: the image column holds URLs, fetched by `make download` (clients/images_http.py)."""

    dir: str = "images"  # where under data/raw/<comp>/ the fetched files go, named by a hash of the URL
    workers: Annotated[int, AtLeastOne] = 16  # requests at once: image hosts are slow to answer, not busy
    timeout_s: Annotated[float, Positive] = 30.0  # per try, from connecting to the last byte
    retries: Annotated[int, NonNegative] = 3  # tries again after a timeout, a dropped connection, 429 or 5xx
    backoff_s: Annotated[float, NonNegative] = 1.0  # waits backoff_s * 2**k before the k-th retry
    max_mb: Annotated[float, Positive] = 20.0  # a larger file is skipped: a video or archive behind an image link
    max_missing: Annotated[float, Fraction] = 0.05  # download fails when a larger share of rows has no image


@dataclasses.dataclass(frozen=True)
class ImageInput:
    """Where each row's image is: see core/image_layouts.py and configs/competitions/example-images.yaml."""

    column: str = ""  # table layouts: train/test.csv's column naming each image (file name, path or URL)
    train_dir: str = ""  # folder under data/raw/<comp>/ holding the train images ("" = the top)
    test_dir: str = ""  # the same for the test images
    extension: str = ""  # table: appended to every value when the column holds bare ids, e.g. ".jpg";
    #                      folders: only files ending so are images (default: any image suffix)
    train_layout: Literal["table", "class_folders"] = "table"  # class_folders: train_dir/<label>/…, no train.csv
    test_layout: Literal["table", "folder"] = "table"  # folder: one test row per image in test_dir, no test.csv
    ids: Literal["stem", "name"] = "stem"  # a row made from a file: its id is the name without/with the extension
    urls: UrlImages | None = None  # set when the column holds URLs to fetch
    # an image of more pixels (width × height) is unreadable, refused from its header before any
    # decoding: a decompression bomb (a 0.9 MB PNG of 30,000 × 30,000) would take gigabytes. PIL's
    # own default, 9,459 × 9,459: above any photo a Kaggle competition ships, far below a bomb
    max_pixels: Annotated[int, AtLeastOne] = 89_478_485

    def validate(self, where: str) -> None:
        tables = self.train_layout == "table" or self.test_layout == "table"
        if tables and not self.column:
            raise UserError(f"{where}: missing required key 'column' (the train/test table's column naming each image)")
        if not tables and self.column:
            raise UserError(f"{where}: column '{self.column}' is read from no table (train_layout class_folders, "
                            "test_layout folder); remove it")
        if self.urls is not None and (not (self.train_layout == self.test_layout == "table")
                                      or self.train_dir or self.test_dir or self.extension):
            raise UserError(f"{where}: urls needs train_layout and test_layout table and no train_dir, test_dir "
                            "or extension (fetched images go to urls.dir)")
        for key, folder in (("train_dir", self.train_dir), ("test_dir", self.test_dir),
                            ("urls.dir", self.urls.dir if self.urls else "")):
            if not layouts.inside(folder):
                raise UserError(f"{where}.{key}: '{folder}' must be a folder inside data/raw/<comp>/")


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
    metric: Literal["micro_f1", "macro_f1", "weighted_f1", "accuracy", "log_loss"] = "micro_f1"
    submission: Submission = Submission()
    cleaning: Cleaning = Cleaning()
    folds: Folds = Folds()
    description: dict[str, str] = dataclasses.field(default_factory=dict)  # label → one line
    check_models: tuple[str, ...] = ()  # model configs whose tokenizers `make check` measures
    # the runs `make all`/`make train` train when MODELS is not given (chosen for a 2-core CPU)
    default_models: tuple[str, ...] = ("tfidf", "embed", "minilm")
    # may `make pretrain` read the test texts (unlabelled)? Competition rules differ: off unless allowed
    pretrain_on_test: bool = False
    # per model config, keys that replace that config's for this competition's runs, e.g.
    # {cnn: {epochs: 70}}: a tuning that suits one competition leaves the others (and demos) alone
    model_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

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
        image = self.inputs.image
        if self.inputs.text is not None and image is not None and (image.train_layout, image.test_layout) != ("table", "table"):
            raise UserError(f"{where}: inputs.text needs train and test tables, but inputs.image has "
                            f"train_layout {image.train_layout} and test_layout {image.test_layout}")
        for model, keys in self.model_overrides.items():
            if "family" in keys:
                raise UserError(f"{where}: model_overrides.{model} may not change the family; "
                                "write another model config instead")
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
    if comp.inputs.image is not None:
        from medalist.image.decode import limit_pixels

        # every image this process opens is this competition's: one limit for all of them
        limit_pixels(comp.inputs.image.max_pixels)
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


def _check_unique_ids(ids: pd.Series, what: str) -> None:
    dup = ids[ids.duplicated()]
    if len(dup):
        raise UserError(f"{what}: duplicate id '{dup.iloc[0]}' (row {dup.index[0] + 2})")


def _allowed_labels(comp: Competition) -> dict[str, int]:
    """How train.csv (or a class folder's name) writes each label → its index."""
    if comp.label_encoding == "index":
        return {str(i): i for i in range(comp.n_classes)}
    return {name: i for i, name in enumerate(comp.labels)}


def _read_table(raw_dir: Path, name: str) -> pd.DataFrame:
    df = read_csv(raw_dir / name, name, dtype=str)
    if len(df) == 0:
        raise UserError(f"{name}: has a header but no rows")
    return df


def _declared(comp: Competition) -> list[str]:
    inp = comp.inputs
    return [*(inp.text.columns if inp.text else ()), *([inp.image.column] if inp.image else [])]


def _train_rows(comp: Competition, raw_dir: Path) -> pd.DataFrame:
    """id, [text], [image as the table writes it], label (int)."""
    inp, f = comp.inputs, comp.files
    if inp.image is not None and inp.image.train_layout == "class_folders":
        return layouts.class_folder_rows(raw_dir, inp.image, _allowed_labels(comp), f"{inp.image.train_dir or '.'}/")
    train = _read_table(raw_dir, f.train)
    _require_columns(train, [*_declared(comp), comp.label_column], f.train)
    if comp.train_has_id:
        _require_columns(train, [comp.id_column], f.train)
        ids = train[comp.id_column].astype(str)
    else:
        ids = pd.Series([f"train-{i}" for i in range(len(train))])
    _check_unique_ids(ids, f.train)

    raw_labels = train[comp.label_column]
    if raw_labels.isna().any():
        row = int(np.flatnonzero(raw_labels.isna().to_numpy())[0])
        raise UserError(f"{f.train}: empty label at row {row + 2}")
    allowed = _allowed_labels(comp)
    bad = ~raw_labels.astype(str).str.strip().isin(list(allowed))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(
            f"{f.train}: unknown label '{raw_labels.iloc[row]}' at row {row + 2}; "
            f"allowed: {', '.join(allowed)}"
        )
    out = pd.DataFrame({"id": ids.to_numpy()})
    if inp.text is not None:
        out["text"] = _join_text(train, inp.text.columns).to_numpy()
    if inp.image is not None:
        out["image"] = train[inp.image.column].to_numpy()
    out["label"] = raw_labels.astype(str).str.strip().map(allowed).astype(int).to_numpy()
    return out


def _test_rows(comp: Competition, raw_dir: Path) -> pd.DataFrame:
    """id, [text], [image as the table writes it]."""
    inp, f = comp.inputs, comp.files
    if inp.image is not None and inp.image.test_layout == "folder":
        return layouts.folder_rows(raw_dir, inp.image, f"{inp.image.test_dir or '.'}/")
    test = _read_table(raw_dir, f.test)
    _require_columns(test, [comp.id_column, *_declared(comp)], f.test)
    ids = test[comp.id_column].astype(str)
    _check_unique_ids(ids, f.test)
    out = pd.DataFrame({"id": ids.to_numpy()})
    if inp.text is not None:
        out["text"] = _join_text(test, inp.text.columns).to_numpy()
    if inp.image is not None:
        out["image"] = test[inp.image.column].to_numpy()
    return out


def _check_sample(comp: Competition, sample: pd.DataFrame, test_ids: pd.Series) -> None:
    f, s, image = comp.files, comp.submission, comp.inputs.image
    _require_columns(sample, [s.id_column], f.sample_submission)
    sample_ids = sample[s.id_column].astype(str)
    if len(sample_ids) != len(test_ids) or set(sample_ids) != set(test_ids):
        extra = sorted(set(sample_ids) - set(test_ids))[:1]
        missing = sorted(set(test_ids) - set(sample_ids))[:1]
        from_files = image is not None and image.test_layout == "folder"
        test_name = f"the files in {image.test_dir or '.'}/" if from_files else f.test
        raise UserError(
            f"{f.sample_submission} disagrees with {test_name}: {len(sample_ids)} vs {len(test_ids)} ids"
            + (f"; e.g. '{extra[0]}' only in {f.sample_submission}" if extra else "")
            + (f"; e.g. '{missing[0]}' only in {test_name}" if missing else "")
            + (f" (ids are file names {'without' if image.ids == 'stem' else 'with'} their extension: "
               f"inputs.image.ids: {image.ids})" if from_files else "")
        )


def _rows(comp: Competition, raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train and test rows (a table's image column as written, a folder layout's files found)
    and the sample submission, every table validated: what read_raw and image_urls share."""
    sample = _read_table(raw_dir, comp.files.sample_submission)
    train = _train_rows(comp, raw_dir)
    test = _test_rows(comp, raw_dir)
    _check_sample(comp, sample, test["id"])
    return train, test, sample


def read_raw(comp: Competition, raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Raw Kaggle files → train (id, [text], [image], label:int), test (id, [text], [image]), sample
    submission. `text` joins the declared text columns; `image` is each row's file relative to
    raw_dir, in any layout of core/image_layouts.py; "" where a URL's image could not be fetched —
    such train rows are left out of an image-only competition (they show a model nothing), test
    rows always stay (every id needs a prediction).

    Every inconsistency a user's data can have ends in one UserError naming it.
    """
    train, test, sample = _rows(comp, raw_dir)
    image, f = comp.inputs.image, comp.files
    if image is None:
        return train, test, sample
    for df, layout, folder, what in ((train, image.train_layout, image.train_dir, f.train),
                                     (test, image.test_layout, image.test_dir, f.test)):
        if layout != "table":
            continue
        if image.urls is not None:
            df["image"] = layouts.url_image_paths(df["image"], image.urls, raw_dir)
        else:
            df["image"] = layouts.table_image_paths(df["image"], image, folder, raw_dir, what,
                                                    optional=comp.inputs.kinds != ("image",))
    lacking = (train["image"] == "").to_numpy()
    if lacking.any() and comp.inputs.kinds == ("image",):
        if lacking.all():
            raise UserError(f"{f.train}: no train row has an image (see download_report.csv)")
        print(f"note: {int(lacking.sum())} of {len(train)} train rows have no image (see download_report.csv) "
              "and are left out: an image-only competition learns nothing from them")
        train = train[~lacking].reset_index(drop=True)
    return train, test, sample


def read_test(comp: Competition, raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test rows (id, [text], [image relative to raw_dir]) and the sample submission, checked
    against each other, without train.csv: what a code competition's notebook reads from the
    hidden test (`medalist.bundle.infer`)."""
    sample = _read_table(raw_dir, comp.files.sample_submission)
    test = _test_rows(comp, raw_dir)
    _check_sample(comp, sample, test["id"])
    image = comp.inputs.image
    if image is not None and image.test_layout == "table":
        if image.urls is not None:
            raise UserError("inputs.image.urls: images behind URLs cannot be fetched by an offline notebook")
        test["image"] = layouts.table_image_paths(test["image"], image, image.test_dir, raw_dir, comp.files.test,
                                                  optional=comp.inputs.kinds != ("image",))
    return test, sample


def image_urls(comp: Competition, raw_dir: Path) -> pd.DataFrame:
    """(split, id, url) of every row of an `inputs.image.urls` competition; its tables are
    validated first, as read_raw validates them, so a download fails before fetching anything."""
    train, test, _ = _rows(comp, raw_dir)
    return pd.concat([pd.DataFrame({"split": split, "id": df["id"], "url": df["image"]})
                      for split, df in (("train", train), ("test", test))], ignore_index=True)


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

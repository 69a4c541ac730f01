"""Issue 11, items 1-2: image competitions as config. Every Kaggle layout (train.csv + folder,
class folders with a test folder inside nested zips, a column of image URLs fetched from a local
host) ends in the same processed tables, through the `run()` of download and folds."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from images_server import ImageHost
from test_hardening import _fail  # exit 2, one line, no traceback

from medalist.core.competition import load_competition, read_raw
from medalist.core.config import Paths, UserError
from medalist.core.io import read_processed
from medalist.stages import download
from medalist.stages import folds as folds_stage

LABELS = ["cat", "dog", "fox"]
FORMATS = [("PNG", ".png", "image/png"), ("JPEG", ".jpg", "image/jpeg"), ("WEBP", ".webp", "image/webp")]


def _image(seed: int, fmt: str) -> bytes:
    from PIL import Image

    # each image its own noise: no two are near duplicates, so folds group none of them
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def _dataset() -> tuple[list[dict], list[dict]]:
    """12 train images (4 per class) and 4 test images, in PNG, JPEG and WebP."""
    train, test = [], []
    for i in range(12):
        fmt, ext, ctype = FORMATS[i % 3]
        train.append({"id": f"tr{i}", "label": LABELS[i % 3], "name": f"tr{i}{ext}", "bytes": _image(i, fmt), "ctype": ctype})
    for i in range(4):
        fmt, ext, ctype = FORMATS[i % 3]
        test.append({"id": f"te{i}", "name": f"te{i}{ext}", "bytes": _image(100 + i, fmt), "ctype": ctype})
    return train, test


def _config(project: Path, name: str, image: dict, **extra) -> None:
    cfg = {"name": name, "source": "local", "labels": LABELS, "label_encoding": "name", "inputs": {"image": image},
           "submission": {"label_as": "name"}, "folds": {"n": 3, "seed": 0}, **extra}
    (project / "configs" / "competitions" / f"{name}.yaml").write_text(yaml.safe_dump(cfg))


def _csv(rows: list[dict], cols: dict[str, str]) -> str:
    return pd.DataFrame({new: [r[old] for r in rows] for new, old in cols.items()}).to_csv(index=False)


def _sample(test: list[dict]) -> str:
    return _csv([{**r, "label": "cat"} for r in test], {"id": "id", "label": "label"})


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _download_and_folds(name: str, **source) -> tuple[pd.DataFrame, pd.DataFrame]:
    download.run(load_competition(name), **source)
    folds_stage.run(load_competition(name))
    return read_processed(Paths(name))


def _content(project: Path, train: pd.DataFrame, test: pd.DataFrame) -> tuple[dict, dict]:
    """What the processed tables say, independent of where a layout put the files:
    train id → (label, image bytes), test id → image bytes (b"" for no image)."""
    assert list(train.columns) == ["id", "image", "label", "fold"] and list(test.columns) == ["id", "image"]
    assert set(train["fold"]) == {0, 1, 2}
    for p in [*train["image"], *test["image"]]:
        assert not p or p.startswith("data/raw/"), p  # relative to the project root
    read = lambda p: (project / p).read_bytes() if p else b""
    return ({r.id: (r.label, read(r.image)) for r in train.itertuples()},
            {r.id: read(r.image) for r in test.itertuples()})


def _expected(train: list[dict], test: list[dict]) -> tuple[dict, dict]:
    return ({r["id"]: (LABELS.index(r["label"]), r["bytes"]) for r in train}, {r["id"]: r["bytes"] for r in test})


# ---------------------------------------------------------------- the file layouts


def test_table_and_class_folder_layouts_end_in_the_same_tables(project, tmp_path, capsys):
    train, test = _dataset()
    want = _expected(train, test)

    # train.csv + test.csv naming each file, images in train/ and test/ (a COMP_DIR)
    src = tmp_path / "table"
    for split, rows in (("train", train), ("test", test)):
        (src / split).mkdir(parents=True)
        for r in rows:
            (src / split / r["name"]).write_bytes(r["bytes"])
    (src / "train.csv").write_text(_csv(train, {"id": "id", "file": "name", "label": "label"}))
    (src / "test.csv").write_text(_csv(test, {"id": "id", "file": "name"}))
    (src / "sample_submission.csv").write_text(_sample(test))
    _config(project, "by-table", {"column": "file", "train_dir": "train", "test_dir": "test"})
    assert _content(project, *_download_and_folds("by-table", comp_dir=src)) == want

    # Kaggle's zip of zips: train.zip holding train/<class>/…, test.zip holding loose files
    # (→ test/), sample_submission.csv.zip; plus the junk macOS zips and READMEs carry
    inner_train = {f"train/{r['label']}/{r['name']}": r["bytes"] for r in train}
    inner_train |= {"train/README.txt": b"photos by volunteers", "__MACOSX/train/cat/._tr0.png": b"\0\5\26\7"}
    archive = tmp_path / "folders.zip"
    archive.write_bytes(_zip({"train.zip": _zip(inner_train), "test.zip": _zip({r["name"]: r["bytes"] for r in test}),
                              "sample_submission.csv.zip": _zip({"sample_submission.csv": _sample(test).encode()})}))
    _config(project, "by-folders", {"train_layout": "class_folders", "test_layout": "folder",
                                    "train_dir": "train", "test_dir": "test"})
    assert _content(project, *_download_and_folds("by-folders", comp_zip=archive)) == want
    raw = Paths("by-folders").raw
    assert not list(raw.rglob("*.zip")) and (raw / "test" / "te1.jpg").is_file()  # unpacked, then removed
    assert "skipped 1 file(s) that are not images by name, e.g. train/README.txt" in capsys.readouterr().out


def test_nested_zips_stay_within_the_unzip_limits(project, tmp_path, capsys):
    # the outer zip stores an already-compressed zip (ratio ~1); what that one holds is 1000x
    bomb = _zip({"zeros.csv": b"0" * (1 << 20)})
    archive = tmp_path / "outer.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("inner.zip", bomb)
    err = _fail(download.main, ["--comp", "demo", "--zip", str(archive)], capsys)
    assert f"COMP_ZIP={archive}: inner.zip: unpacks to" in err and "zip bomb?" in err
    assert not Paths("demo").raw.exists() and not list(Paths("demo").raw.parent.glob("*.tmp"))


# ---------------------------------------------------------------- image URLs

URLS = {"timeout_s": 1.5, "retries": 1, "backoff_s": 0.0, "max_mb": 0.01, "workers": 4}


def _host(train: list[dict], test: list[dict]) -> ImageHost:
    files = {f"img/{r['name']}": (r["bytes"], r["ctype"]) for r in [*train, *test]}
    files["img/page.jpg"] = (b"<html>moved</html>", "text/html")  # not an image, whatever its name says
    files["img/huge.png"] = (b"\x89PNG\r\n\x1a\n" + b"\0" * 20_000, "image/png")  # over max_mb
    return ImageHost(files, slow={"img/slow.jpg"}, flaky={f"img/{train[0]['name']}": 1})


def test_url_column_is_fetched_into_the_same_tables(project, tmp_path):
    train, test = _dataset()
    want_train, want_test = _expected(train, test)
    with _host(train, test) as host:
        broken = {"404": host.url("img/gone.jpg"), "slow": host.url("img/slow.jpg"),
                  "html": host.url("img/page.jpg"), "huge": host.url("img/huge.png"), "none": ""}
        rows = lambda rs: [{**r, "url": host.url(f"img/{r['name']}")} for r in rs]
        bad = lambda p: [{"id": f"{p}-{k}", "label": "dog", "url": u} for k, u in broken.items()]
        train_rows, test_rows = rows(train) + bad("tr"), rows(test) + bad("te")
        src = tmp_path / "urls"
        src.mkdir()
        (src / "train.csv").write_text(_csv(train_rows, {"id": "id", "image_url": "url", "label": "label"}))
        (src / "test.csv").write_text(_csv(test_rows, {"id": "id", "image_url": "url"}))
        (src / "sample_submission.csv").write_text(_sample(test_rows))
        _config(project, "by-url", {"column": "image_url", "urls": {**URLS, "max_missing": 0.5}})

        got_train, got_test = _content(project, *_download_and_folds("by-url", comp_dir=src))
        assert got_train == want_train  # image-only: train rows without an image are left out
        assert got_test == want_test | {f"te-{k}": b"" for k in broken}  # test rows all stay

        report = pd.read_csv(Paths("by-url").raw / "download_report.csv", dtype=str, keep_default_na=False)
        assert list(report.columns) == ["url", "id", "split", "status", "reason"] and len(report) == 26
        why = report.set_index("id")
        assert (why.loc[[r["id"] for r in train + test], "status"] == "ok").all()  # the 503 was retried
        for split in ("tr", "te"):
            assert why.loc[f"{split}-404", ["status", "reason"]].tolist() == ["http_error", "HTTP 404"]
            assert why.loc[f"{split}-slow", "status"] == "timeout" and "(2 tries)" in why.loc[f"{split}-slow", "reason"]
            assert why.loc[f"{split}-html", "status"] == "not_an_image"
            assert why.loc[f"{split}-huge", "status"] == "too_large"
            assert why.loc[f"{split}-none", "status"] == "bad_url"
        # a 404 and a non-image are asked for once; a timeout is tried again
        assert host.fetched().count("img/page.jpg") == 1 and host.fetched().count("img/gone.jpg") == 1
        assert host.fetched().count("img/slow.jpg") == 2
        suffixes = {p.suffix for p in (Paths("by-url").raw / "images").iterdir()}
        assert suffixes == {".png", ".jpg", ".webp"}

        before = len(host.fetched())
        download.run(load_competition("by-url"), comp_dir=src)  # stamped: a rerun fetches nothing
        assert len(host.fetched()) == before
        assert not (Paths("by-url").raw.parent / ".by-url.url-images").exists()


def test_too_many_missing_images_fail_with_one_line_and_a_rerun_fetches_only_those(project, tmp_path, capsys):
    """A text+image competition: rows whose image is missing keep their row, with an empty path."""
    train, test = _dataset()
    with _host(train, test) as host:
        url = lambda r: host.url(f"img/{r['name']}")
        train_rows = [{**r, "text": f"photo {r['id']}", "url": url(r)} for r in train]
        train_rows[3]["url"] = host.url("img/gone.jpg")
        train_rows[4]["url"] = host.url("img/page.jpg")
        test_rows = [{**r, "text": "?", "url": url(r)} for r in test]
        src = tmp_path / "urls"
        src.mkdir()
        (src / "train.csv").write_text(_csv(train_rows, {"id": "id", "caption": "text", "link": "url", "label": "label"}))
        (src / "test.csv").write_text(_csv(test_rows, {"id": "id", "caption": "text", "link": "url"}))
        (src / "sample_submission.csv").write_text(_sample(test_rows))
        _config(project, "mixed", {"column": "link", "urls": {**URLS, "max_missing": 0.1}},
                inputs={"text": {"columns": ["caption"]}, "image": {"column": "link", "urls": {**URLS, "max_missing": 0.1}}})

        err = _fail(download.main, ["--comp", "mixed", "--dir", str(src)], capsys)
        assert "2 of 16 rows (12.5%) have no image, more than inputs.image.urls.max_missing (10.0%)" in err
        raw = Paths("mixed").raw
        assert not raw.exists()  # nothing stamped, nothing half there
        kept = raw.parent / ".mixed.url-images"
        assert len([p for p in kept.iterdir() if p.suffix != ".csv"]) == 14  # the fetched ones wait there
        assert (kept / "download_report.csv").is_file()

        first = host.fetched()
        _config(project, "mixed", {}, inputs={"text": {"columns": ["caption"]},
                                              "image": {"column": "link", "urls": {**URLS, "max_missing": 0.2}}})
        download.run(load_competition("mixed"), comp_dir=src)
        again = host.fetched()[len(first):]
        assert sorted(again) == ["img/gone.jpg", "img/page.jpg"]  # only what was missing
        got_train, got_test, _ = read_raw(load_competition("mixed"), raw)
        assert len(got_train) == 12 and (got_train["image"] == "").sum() == 2  # rows kept, path empty
        assert got_train.loc[got_train["id"] == "tr3", "image"].item() == ""
        assert (got_test["image"] != "").all() and got_train.columns.tolist() == ["id", "text", "image", "label"]


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("image,message", [
    ({"train_dir": "x"}, "inputs.image: missing required key 'column'"),
    ({"column": "f", "train_layout": "class_folders", "test_layout": "folder"}, "column 'f' is read from no table"),
    ({"column": "u", "urls": {"workers": 4}, "train_dir": "imgs"}, "urls needs train_layout and test_layout table"),
    ({"column": "u", "urls": {"retry": 2}}, r"inputs.image.urls: unknown key\(s\) \['retry'\]"),
    ({"column": "u", "urls": {"max_missing": 1.5}}, "max_missing: 1.5 is out of range"),
    ({"column": "u", "urls": {"timeout_s": 0}}, "timeout_s: 0.0 is out of range"),
    ({"column": "f", "train_dir": "../elsewhere"}, "train_dir: '../elsewhere' must be a folder inside"),
    ({"column": "f", "layout": "folders"}, r"unknown key\(s\) \['layout'\]"),
])
def test_bad_image_layout_config_is_one_line(project, image, message):
    _config(project, "bad", image)
    with pytest.raises(UserError, match=message):
        load_competition("bad")


def test_text_needs_tables_and_the_example_config_loads(project):
    _config(project, "bad", {"train_layout": "class_folders", "test_layout": "folder"},
            inputs={"text": {"columns": ["caption"]}, "image": {"train_layout": "class_folders", "test_layout": "folder"}})
    with pytest.raises(UserError, match="inputs.text needs train and test tables"):
        load_competition("bad")
    image = load_competition("example-images").inputs.image
    assert (image.train_layout, image.test_layout, image.ids) == ("class_folders", "folder", "name")


def test_folder_layout_mistakes_are_one_line(project, tmp_path):
    train, test = _dataset()
    raw = tmp_path / "raw"
    for r in train:
        (raw / "train" / r["label"]).mkdir(parents=True, exist_ok=True)
        (raw / "train" / r["label"] / r["name"]).write_bytes(r["bytes"])
    (raw / "test").mkdir()
    for r in test:
        (raw / "test" / r["name"]).write_bytes(r["bytes"])
    (raw / "sample_submission.csv").write_text(_sample(test).replace("te0,", "te0.png,"))
    _config(project, "f", {"train_layout": "class_folders", "test_layout": "folder", "train_dir": "train",
                           "test_dir": "test"})
    comp = load_competition("f")
    with pytest.raises(UserError, match=r"'te0.png' only in sample_submission.csv.*ids are file names without"):
        read_raw(comp, raw)
    (raw / "sample_submission.csv").write_text(_sample(test))
    (raw / "train" / "cow").mkdir()
    (raw / "train" / "cow" / "a.png").write_bytes(train[0]["bytes"])
    with pytest.raises(UserError, match=r"folder 'cow' .* is not a label \(as label_encoding writes them: cat, dog, fox\)"):
        read_raw(comp, raw)
    (raw / "train" / "cow" / "a.png").rename(raw / "train" / "dog" / "tr0.jpg")
    with pytest.raises(UserError, match=r"train/cat/tr0.png and train/dog/tr0.jpg give the same id 'tr0'"):
        read_raw(comp, raw)

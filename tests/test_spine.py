"""The spine: competition config, raw-data validation, folds, the TF-IDF baseline, the
submission validator and `make score`."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medalist.stages import folds as folds_stage
from medalist.stages import score as score_stage
from medalist.stages import train as train_stage
from medalist.core.competition import load_competition, make_submission, read_raw, validate_submission
from medalist.core.config import Paths, UserError
from medalist.core.io import atomic_path, read_processed
from medalist.demos.text import write_demo
from medalist.text.clean import clean
from medalist.text.dedup import near_duplicate_groups


@pytest.fixture
def demo_raw(project):
    raw = Paths("demo").raw
    write_demo(raw)
    (raw / ".complete").touch()
    return raw


def test_demo_is_kaggle_shaped_and_deterministic(tmp_path):
    write_demo(tmp_path / "a")
    write_demo(tmp_path / "b")
    for name in ("train.csv", "test.csv", "sample_submission.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train = pd.read_csv(tmp_path / "a" / "train.csv")
    assert list(train.columns) == ["Question", "label"] and 1400 <= len(train) <= 1600
    counts = train["label"].value_counts()
    assert counts.max() / counts.min() > 3  # imbalanced
    text = " ".join(train["Question"])
    for marker in ("$", "b'", "http", "<p>", "@example.com", "Resuelve"):
        assert marker in text


def test_folds_group_duplicates_and_keep_class_balance(demo_raw):
    comp = load_competition("demo")
    folds_stage.run(comp)
    train, test = read_processed(Paths("demo"))
    assert train["id"].str.startswith("train-").all() and train["id"].is_unique
    assert set(train["fold"]) == set(range(comp.folds.n))
    # planted exact + near duplicates (upper-cased, double-spaced copies) never straddle folds
    from medalist.text.clean import normalise

    per_key = train.groupby(train["text"].map(normalise))["fold"].nunique()
    assert (per_key == 1).all()
    whole = train["label"].value_counts(normalize=True)
    for _, part in train.groupby("fold"):
        share = part["label"].value_counts(normalize=True).reindex(whole.index, fill_value=0)
        assert (share - whole).abs().max() < 0.05
    # cleaning happened once, here
    assert not train["text"].str.startswith("b'").any()
    assert not train["text"].str.contains("<p>|https?://|@example.com", regex=True).any()
    assert len(test) == 500


def test_near_duplicates_share_a_group():
    base = "Find the remainder when 7^{100} is divided by 13 and explain every step of the argument."
    texts = [base, base.replace("every step", "each step"), "A bag holds 3 red and 5 blue balls.", base.upper()]
    g = near_duplicate_groups(texts, threshold=0.8)
    assert g[0] == g[1] == g[3] and g[2] != g[0]


def test_cleaning_decodes_bytes_strips_html_and_masks_links():
    comp = load_competition("demo")
    out = clean("b'<p>Solve $x^2=4$ see https://a.org/x or mail a@b.com</p>\\n'", comp.cleaning)
    assert out == "Solve $x^2=4$ see [URL] or mail [EMAIL]"
    assert clean("If $a<b$ and $b>c$", comp.cleaning) == "If $a<b$ and $b>c$"


def test_baseline_beats_majority_and_writes_run_files(demo_folds, capsys):
    comp = load_competition("demo")
    run_dir = train_stage.run("demo", "tfidf")
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str})
    test = pd.read_csv(run_dir / "test.csv", dtype={"id": str})
    metrics = __import__("json").loads((run_dir / "metrics.json").read_text())
    train, _ = read_processed(Paths("demo"))
    assert list(oof["id"]) == list(train["id"])
    assert list(oof.columns) == ["id", "fold"] + [f"p_{i}" for i in range(comp.n_classes)]
    np.testing.assert_allclose(oof.filter(like="p_").sum(axis=1), 1, atol=1e-6)
    assert len(test) == 500 and (run_dir / "fold0" / "model.joblib").exists()
    majority = train["label"].value_counts(normalize=True).max()
    assert metrics["oof_score"] > majority + 0.4
    assert 0.75 < metrics["oof_score"] < 0.99  # learnable, but not trivially separable
    for key in ("metric", "fold_scores", "n_train", "n_generated", "train_seconds", "peak_rss_mb", "git_sha", "versions"):
        assert key in metrics
    assert metrics["inputs"] == ["text"]
    assert "OOF micro_f1" in capsys.readouterr().out
    # a rerun skips every finished fold
    train_stage.run("demo", "tfidf")
    assert capsys.readouterr().out.count("done, skipped") == comp.folds.n


def test_folds_subset_leaves_run_unfinished_and_is_reused(small_demo_folds, capsys):
    run_dir = train_stage.run("demo", "quick", folds=[0, 1])
    assert (run_dir / "fold1" / "done.json").exists() and not (run_dir / "metrics.json").exists()
    train_stage.run("demo", "quick")
    out = capsys.readouterr().out
    assert out.count("done, skipped") == 2 and (run_dir / "metrics.json").exists()
    with pytest.raises(UserError, match="fold 9 does not exist"):
        train_stage.run("demo", "quick", folds=[9])


def test_use_gen_without_generated_data_is_one_line(demo_folds):
    with pytest.raises(UserError, match="make augment"):
        train_stage.run("demo", "tfidf", use_gen=True)


# ---------------------------------------------------------------- declared inputs


def _pictures(project, inputs: dict) -> Paths:
    """Comp 'pics': 12 train rows (id,file,caption,label), 4 test rows, tiny image files on disk
    (random pixels: decodable and no two alike, so `make folds` keeps every row apart)."""
    import yaml
    from PIL import Image

    cfg = {"name": "pics", "source": "local", "labels": ["cat", "dog"], "inputs": inputs, "folds": {"n": 3, "seed": 0}}
    (project / "configs" / "competitions" / "pics.yaml").write_text(yaml.safe_dump(cfg))
    paths = Paths("pics")
    for split, n in (("train", 12), ("test", 4)):
        (paths.raw / f"{split}_images").mkdir(parents=True)
        for i in range(n):
            noise = np.random.default_rng([n, i]).integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(noise).save(paths.raw / f"{split}_images" / f"{split[:2]}{i}.png")
    pd.DataFrame({"id": [f"tr{i}" for i in range(12)], "file": [f"tr{i}" for i in range(12)],
                  "caption": [f"a {'cat' if i % 2 else 'dog'} {i}" for i in range(12)],
                  "label": [i % 2 for i in range(12)]}).to_csv(paths.raw / "train.csv", index=False)
    pd.DataFrame({"id": [f"te{i}" for i in range(4)], "file": [f"te{i}" for i in range(4)],
                  "caption": [f"photo {i}" for i in range(4)]}).to_csv(paths.raw / "test.csv", index=False)
    pd.DataFrame({"id": [f"te{i}" for i in range(4)], "label": 0}).to_csv(paths.raw / "sample_submission.csv", index=False)
    (paths.raw / ".complete").touch()
    return paths


IMAGE = {"column": "file", "train_dir": "train_images", "test_dir": "test_images", "extension": ".png"}


def test_folds_carry_declared_text_and_image_inputs(project):
    paths = _pictures(project, {"text": {"columns": ["caption", "file"]}, "image": IMAGE})
    # with text beside it, a missing photo is a row without one; no photo at all is a wrong folder
    saved = {p.name: p.read_bytes() for p in (paths.raw / "train_images").iterdir()}
    for p in (paths.raw / "train_images").iterdir():
        p.unlink()
    with pytest.raises(UserError, match=r"train.csv: 12 of 12 images not found, e.g. .*tr0.png \(row 2\)"):
        folds_stage.run(load_competition("pics"))
    assert not (paths.processed / "train.csv").exists()
    for name, data in saved.items():
        (paths.raw / "train_images" / name).write_bytes(data)
    (paths.raw / "train_images" / "tr5.png").unlink()
    folds_stage.run(load_competition("pics"))
    train, _ = read_processed(paths)
    assert train.set_index("id")["image"].fillna("")["tr5"] == "" and len(train) == 12
    (paths.raw / "train_images" / "tr5.png").write_bytes(b"\x89PNG")

    folds_stage.run(load_competition("pics"))
    train, test = read_processed(paths)
    assert list(train.columns) == ["id", "text", "image", "label", "fold"]
    assert list(test.columns) == ["id", "text", "image"]
    assert train["text"][1] == "a cat 1\ntr1"  # declared text columns joined in order
    assert train["image"][1] == "data/raw/pics/train_images/tr1.png"  # relative to the project root
    assert all((project / p).is_file() for p in [*train["image"], *test["image"]])
    assert test["image"][0] == "data/raw/pics/test_images/te0.png"


def test_image_only_competition_has_folds_and_text_models_refuse_it(project):
    paths = _pictures(project, {"image": IMAGE})
    folds_stage.run(load_competition("pics"))
    train, test = read_processed(paths)
    assert list(train.columns) == ["id", "image", "label", "fold"] and list(test.columns) == ["id", "image"]
    assert sorted(train["fold"].value_counts()) == [4, 4, 4]
    with pytest.raises(UserError, match=r"model 'tfidf' reads \['text'\] but competition 'pics' declares inputs \['image'\]"):
        train_stage.run("pics", "tfidf")
    assert not paths.run("tfidf").exists()


def test_model_inputs_are_checked_against_the_competition(demo_folds, project):
    models = project / "configs" / "models"
    (models / "tfidf-img.yaml").write_text((models / "tfidf.yaml").read_text() + "inputs: [text, image]\n")
    with pytest.raises(UserError, match=r"declares inputs \['text'\]"):
        train_stage.run("demo", "tfidf-img")
    (models / "tfidf-img.yaml").write_text((models / "tfidf.yaml").read_text() + "inputs: [audio]\n")
    with pytest.raises(UserError, match="inputs must be a non-empty list"):
        train_stage.run("demo", "tfidf-img")


@pytest.mark.parametrize("inputs,message", [
    ({}, "declares no input"),
    ({"text": {"column": ["Question"]}}, r"inputs.text: unknown key\(s\) \['column'\]"),
    ({"image": {"train_dir": "x"}}, "inputs.image: missing required key 'column'"),
    ({"sound": {"column": "x"}}, r"unknown key\(s\) \['sound'\]"),
])
def test_bad_inputs_section_is_one_line(project, inputs, message):
    import yaml

    path = project / "configs" / "competitions" / "demo.yaml"
    cfg = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**cfg, "inputs": inputs}))
    with pytest.raises(UserError, match=message):
        load_competition("demo")


# ---------------------------------------------------------------- bad competition data


def _write(raw, train=None, test=None, sample=None):
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "train.csv").write_bytes(train if train is not None else b"Question,label\nA,0\nB,1\nC,0\n")
    (raw / "test.csv").write_bytes(test if test is not None else b"id,Question\n1,x\n2,y\n")
    (raw / "sample_submission.csv").write_bytes(sample if sample is not None else b"id,label\n1,0\n2,0\n")


@pytest.mark.parametrize("kind,files,message", [
    ("missing column", {"train": b"Text,label\nA,0\n"}, "missing column"),
    ("unknown label", {"train": b"Question,label\nA,0\nB,9\n"}, "unknown label '9' at row 3"),
    ("empty file", {"test": b""}, "file is empty"),
    ("header only", {"test": b"id,Question\n"}, "no rows"),
    ("non-UTF-8", {"train": b"Question,label\n\xff\xfe bad,0\n"}, "not UTF-8"),
    ("duplicate ids", {"test": b"id,Question\n1,x\n1,y\n"}, "duplicate id '1'"),
    ("sample disagrees", {"sample": b"id,label\n1,0\n3,0\n"}, "disagrees with test.csv"),
])
def test_bad_competition_data_is_one_clear_line(project, kind, files, message):
    comp = load_competition("demo")
    raw = project / "raw"
    _write(raw, **files)
    with pytest.raises(UserError, match=message):
        read_raw(comp, raw)


def test_folds_cli_bad_data_exits_2_with_one_line(demo_raw, capsys):
    (demo_raw / "train.csv").write_text("Question,label\nA,0\nB,7\n")
    with pytest.raises(SystemExit) as e:
        folds_stage.main(["--comp", "demo"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert not (Paths("demo").processed / "train.csv").exists()


def test_unknown_competition_and_bad_config(project):
    with pytest.raises(UserError, match="unknown competition 'nope'"):
        load_competition("nope")
    cfg = project / "configs" / "competitions" / "demo.yaml"
    cfg.write_text(cfg.read_text() + "\nmetrc: accuracy\n")
    with pytest.raises(UserError, match="unknown key"):
        load_competition("demo")


# ---------------------------------------------------------------- validator and score


def _sub_case(project):
    comp = load_competition("demo")
    sample = pd.DataFrame({"id": ["10", "11", "12"], "label": ["0", "0", "0"]})
    proba = np.eye(comp.n_classes)[[1, 2, 5]]
    return comp, sample, make_submission(comp, sample, ["12", "10", "11"], proba[[2, 0, 1]])


def test_validator_accepts_a_good_submission(project):
    comp, sample, sub = _sub_case(project)
    validate_submission(comp, sample, sub)
    assert sub["label"].tolist() == [1, 2, 5]


@pytest.mark.parametrize("breakage,message", [
    (lambda s: s.iloc[[1, 0, 2]].reset_index(drop=True), "row 2: id '11'"),
    (lambda s: s.iloc[:2], "has 2 rows"),
    (lambda s: s.rename(columns={"label": "target"}), "columns"),
    (lambda s: s.assign(label=[1, 9, 5]), "row 3: label '9' outside"),
    (lambda s: s.assign(label=[1.0, np.nan, 5.0]), "row 3: empty/NaN"),
    (lambda s: s.assign(label=["1", "2", "Algebra"]), "row 4: label 'Algebra'"),
])
def test_validator_rejects_each_bad_kind(project, breakage, message):
    comp, sample, sub = _sub_case(project)
    with pytest.raises(UserError, match=message):
        validate_submission(comp, sample, breakage(sub))


def test_probability_submissions(project):
    comp = load_competition("demo")
    comp = type(comp)(**{**comp.__dict__, "submission": type(comp.submission)(format="probs")})
    sample = pd.DataFrame({"id": ["1", "2"], **{n: 0.0 for n in comp.labels}})
    proba = np.full((2, comp.n_classes), 1.0 / comp.n_classes)
    sub = make_submission(comp, sample, ["1", "2"], proba)
    validate_submission(comp, sample, sub)
    sub.iloc[0, 1] = 0.9
    with pytest.raises(UserError, match="row 2: probabilities"):
        validate_submission(comp, sample, sub)


def test_score_against_answers(project, tmp_path):
    comp = load_competition("demo")
    raw = Paths("demo").raw  # score checks FILE against sample_submission.csv, as submit does
    raw.mkdir(parents=True)
    (raw / "sample_submission.csv").write_text("id,label\n1,0\n2,0\n3,0\n4,0\n")
    (raw / ".complete").touch()
    (tmp_path / "sub.csv").write_text("id,label\n1,0\n2,1\n3,1\n4,2\n")
    (tmp_path / "ans.csv").write_text("id,label,level\n4,2,x\n3,0,x\n2,1,x\n1,0,x\n")
    s = score_stage.run(comp, tmp_path / "sub.csv", tmp_path / "ans.csv")
    assert s["micro_f1"] == pytest.approx(0.75) and s["accuracy"] == pytest.approx(0.75)
    (tmp_path / "ans.csv").write_text("id,label\n1,0\n")
    with pytest.raises(UserError, match="id '2' has no answer"):
        score_stage.run(comp, tmp_path / "sub.csv", tmp_path / "ans.csv")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_use_gen_trains_on_generated_rows_of_each_fold_only(small_demo_folds):
    paths = small_demo_folds
    train, _ = read_processed(paths)
    parents = train.groupby("fold").head(2).reset_index(drop=True)
    gen = pd.DataFrame({
        "id": [f"aug-{p}" for p in parents["id"]],
        "text": parents["text"] + " again",
        "label": parents["label"],
        "source": "aug:swap",
        "parent_id": parents["id"],
        "folds": [";".join(str(k) for k in range(5) if k != f) for f in parents["fold"]],
    })
    # rule 5 for every source: a child of a fold-0 parent that copies a fold-1 row, and an LLM row
    # that copies a fold-2 row, never train beside the rows they copy
    longest = train.loc[train["text"].str.len().sort_values(ascending=False).index]
    copied = {k: longest[longest["fold"] == k].iloc[0] for k in (1, 2)}
    gen.loc[len(gen)] = ["aug-copy", copied[1]["text"] + " again", copied[1]["label"], "aug:swap",
                         parents["id"].iloc[0], "1;2;3;4"]
    gen.loc[len(gen)] = ["llm-copy", copied[2]["text"] + ".", copied[2]["label"], "llm:tiny", "", "0;1;2;3;4"]
    paths.generated.mkdir(parents=True)
    gen.to_csv(paths.generated / "generated_train.csv", index=False)
    plain = train_stage.run("demo", "quick")
    with_gen = train_stage.run("demo", "quick", use_gen=True)
    assert with_gen.name == "quick+gen" and plain.name == "quick" and (plain / "metrics.json").exists()
    metrics = __import__("json").loads((with_gen / "metrics.json").read_text())
    # each fold gets the 8 rows whose parent sits in another fold, never its own 2, nor a copy of its rows
    assert metrics["n_generated"] == [{"aug:swap": 8, "llm:tiny": 1}, {"aug:swap": 8, "llm:tiny": 1},
                                      {"aug:swap": 9}, {"aug:swap": 9, "llm:tiny": 1}, {"aug:swap": 9, "llm:tiny": 1}]
    assert metrics["n_generated_dropped"] == [{}, {"aug:swap": 1}, {"llm:tiny": 1}, {}, {}]
    assert metrics["n_generated_dropped"] == [d["n_generated_dropped"] for d in map(
        lambda k: __import__("json").loads((with_gen / f"fold{k}" / "done.json").read_text()), range(5))]
    oof = pd.read_csv(with_gen / "oof.csv", dtype={"id": str})
    assert not oof["id"].str.startswith("aug-").any() and len(oof) == len(train)


def test_new_processed_data_retrains_finished_folds(small_demo_folds, capsys):
    """A fold finished on the old processed tables is not reused after `make folds` changes them."""
    processed = small_demo_folds.processed / "train.csv"
    train_stage.run("demo", "quick")
    capsys.readouterr()
    train_stage.run("demo", "quick")
    assert capsys.readouterr().out.count("done, skipped") == load_competition("demo").folds.n
    df = pd.read_csv(processed)
    df.loc[0, "text"] = df.loc[0, "text"] + " (edited)"
    df.to_csv(processed, index=False)
    train_stage.run("demo", "quick")
    assert "done, skipped" not in capsys.readouterr().out

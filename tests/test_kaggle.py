"""download and submit against a fake Kaggle API on 127.0.0.1:7777 (KAGGLE_API_ENVIRONMENT=TEST):
the real kagglesdk client, real HTTP, no network."""
from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import sys
import types
import zipfile
from pathlib import Path

import pytest
from kaggle_server import FakeKaggle

from medalist.stages import download
from medalist.stages import submit
from medalist.core.competition import load_competition
from medalist.core.config import UserError

REPO = Path(__file__).resolve().parents[1]
COMP = "kaggle-comp"
TOKEN = "fake-token-5ecret"


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


FILES = {
    "train.csv": _csv([["Question", "label"], ["Solve x+1=2", 0], ["Area of a circle", 1], ["Derivative of x^2", 2]]),
    "test.csv": _csv([["id", "Question"], ["t1", "Solve 2x=4"], ["t2", "Integrate x"]]),
    "sample_submission.csv": _csv([["id", "label"], ["t1", 0], ["t2", 0]]),
}


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A project root under tmp_path with one `source: kaggle` competition, a fake token, and
    HOME moved so no real ~/.kaggle is read."""
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs" / "competitions", configs / "competitions")
    demo = (configs / "competitions" / "demo.yaml").read_text()
    (configs / "competitions" / f"{COMP}.yaml").write_text(
        demo.replace("name: demo", f"name: {COMP}").replace("source: demo ", "source: kaggle")
    )
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MEDALIST_ROOT", str(tmp_path))
    monkeypatch.setenv("MEDALIST_CONFIGS", str(configs))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    for var in ("KAGGLE_CONFIG_DIR", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_KERNEL_RUN_TYPE",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
def comp(env):
    c = load_competition(COMP)
    assert c.source == "kaggle" and c.slug == COMP
    return c


@pytest.fixture
def kaggle():
    with FakeKaggle(_zip(FILES)) as fake:
        yield fake


def _fail_main(module, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


# ---------------------------------------------------------------- download


def test_download_lands_files_with_stamp_and_rerun_makes_no_request(comp, kaggle, env):
    raw = download.run(comp)
    assert raw == env / "data" / "raw" / COMP
    for name, text in FILES.items():
        assert (raw / name).read_text() == text
    assert json.loads((raw / ".complete").read_text())["source"] == f"kaggle:{COMP}"
    assert kaggle.methods() == ["GetCompetition", "DownloadDataFiles", "GET"]
    assert kaggle.requests[0]["body"] == {"competitionName": COMP}
    assert kaggle.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert not list(raw.parent.glob("*.tmp")), "temp folder left behind"

    kaggle.requests.clear()
    download.run(comp)
    assert kaggle.requests == []


@pytest.mark.parametrize(
    "status, expected",
    [
        (401, "rejected the credentials from KAGGLE_API_TOKEN (HTTP 401)"),
        (403, f"accept the competition rules at https://www.kaggle.com/competitions/{COMP}/rules"),
        (404, f"no competition '{COMP}' (HTTP 404)"),
    ],
)
def test_download_http_errors_are_one_line(comp, kaggle, env, capsys, status, expected):
    kaggle.fail["DownloadDataFiles"] = status
    err = _fail_main(download, ["--comp", COMP], capsys)
    assert expected in err
    assert TOKEN not in err
    assert not (env / "data" / "raw" / COMP).exists()
    left = [p.name for p in (env / "data" / "raw").iterdir()]
    assert left == [f".{COMP}.download.lock"], "a failed download leaves nothing behind but its lock file"


def test_download_retries_429_then_succeeds(comp, kaggle):
    kaggle.fail["DownloadDataFiles"] = [429, 429]
    raw = download.run(comp, backoff_base=0)
    assert (raw / ".complete").exists()
    assert kaggle.methods().count("DownloadDataFiles") == 3


def test_download_gives_up_on_endless_429(comp, kaggle, env):
    kaggle.fail["DownloadDataFiles"] = 429
    with pytest.raises(UserError, match=r"rate-limiting download \(HTTP 429, 5 tries\)"):
        download.run(comp, backoff_base=0)
    assert kaggle.methods().count("DownloadDataFiles") == 5
    assert not (env / "data" / "raw" / COMP).exists()


def test_download_connection_refused_is_one_line(comp, env, capsys):
    err = _fail_main(download, ["--comp", COMP], capsys)
    assert "cannot reach Kaggle at http://localhost:7777" in err
    assert "Connection refused" in err


def test_download_without_credentials_says_where_to_put_them(comp, env, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    err = _fail_main(download, ["--comp", COMP], capsys)
    assert "no Kaggle credentials" in err
    assert str(env / "home" / ".kaggle" / "access_token") in err and "KAGGLE_API_TOKEN" in err


def test_kaggle_json_in_kaggle_config_dir_is_used(comp, kaggle, env, monkeypatch):
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    cfg = env / "kcfg"
    cfg.mkdir()
    (cfg / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "k3y"}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg))
    download.run(comp)
    expected = "Basic " + base64.b64encode(b"alice:k3y").decode()
    assert kaggle.requests[0]["headers"]["Authorization"] == expected


def test_download_from_local_zip_and_dir(comp, env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, text in FILES.items():
        (src / name).write_text(text)
    (src / "extra.txt").write_text("kept")
    raw = download.run(comp, comp_dir=src)
    assert (raw / "extra.txt").read_text() == "kept" and (raw / ".complete").exists()

    archive = tmp_path / "c.zip"
    archive.write_bytes(_zip({"train.csv": FILES["train.csv"]}))
    shutil.rmtree(raw)
    with pytest.raises(UserError, match="has no test.csv, sample_submission.csv"):
        download.run(comp, comp_zip=archive)
    assert not raw.exists()


def test_local_competition_without_dir_or_zip_says_how(env, capsys):
    err = _fail_main(download, ["--comp", "math-subjects"], capsys)
    assert "pass COMP_DIR=path/to/folder or COMP_ZIP=path.zip" in err


# ---------------------------------------------------------------- submit


def _write_raw(env: Path) -> None:
    raw = env / "data" / "raw" / COMP
    raw.mkdir(parents=True)
    for name, text in FILES.items():
        (raw / name).write_text(text)


def _write_submission(env: Path, labels=(1, 2), sidecar: dict | None = None) -> Path:
    path = env / "submission" / COMP / "submission.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_csv([["id", "label"], ["t1", labels[0]], ["t2", labels[1]]]))
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def _ledger(env: Path) -> list[dict]:
    with open(env / "submission" / COMP / "ledger.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_submit_uploads_creates_and_records(comp, kaggle, env, capsys):
    _write_raw(env)
    path = _write_submission(env, sidecar={"run": "ensemble", "cv": 0.81234})
    submit.run(comp, backoff_base=0)

    assert kaggle.methods() == ["StartSubmissionUpload", "PUT", "CreateSubmission", "GetSubmissionLimits"]
    start, put, create = kaggle.requests[:3]
    assert start["body"]["competitionName"] == COMP and start["body"]["fileName"] == "submission.csv"
    assert int(start["body"]["contentLength"]) == path.stat().st_size
    assert put["body"] == path.read_bytes()
    assert "Authorization" not in put["headers"], "credentials must not go to the storage URL"
    message = create["body"]["submissionDescription"]
    assert message == "ensemble CV=0.8123 git=nogit"
    assert create["body"]["blobFileTokens"] == "blob-1"

    (row,) = _ledger(env)
    assert row["file"] == "submission/kaggle-comp/submission.csv" and row["message"] == message
    assert row["kaggle_ref"] == "1000" and row["cv"] == "0.8123" and row["public_score"] == ""
    out = capsys.readouterr().out
    assert "4 submission(s) left today" in out

    kaggle.requests.clear()
    err = _fail_main(submit, ["--comp", COMP], capsys)
    assert "already submitted" in err
    assert kaggle.requests == []


def test_submit_without_sidecar_uses_stem(comp, kaggle, env):
    _write_raw(env)
    _write_submission(env)
    submit.run(comp, message=None, backoff_base=0)
    assert kaggle.requests[2]["body"]["submissionDescription"] == "submission CV=? git=nogit"


def test_invalid_submission_is_refused_before_any_request(comp, kaggle, env, capsys):
    _write_raw(env)
    _write_submission(env, labels=(1, 9))
    err = _fail_main(submit, ["--comp", COMP], capsys)
    assert "label '9' outside the label space" in err
    assert kaggle.requests == []
    assert not (env / "submission" / COMP / "ledger.csv").exists()


def test_submit_refuses_a_competition_not_on_kaggle(env, capsys):
    err = _fail_main(submit, ["--comp", "demo"], capsys)
    assert "'demo' is a demo competition: there is no Kaggle competition to submit to" in err


def test_submit_403_names_rules(comp, kaggle, env, capsys):
    _write_raw(env)
    _write_submission(env)
    kaggle.fail["StartSubmissionUpload"] = 403
    err = _fail_main(submit, ["--comp", COMP], capsys)
    assert comp.rules_url in err
    assert not (env / "submission" / COMP / "ledger.csv").exists()


def test_status_fills_public_score(comp, kaggle, env, capsys):
    _write_raw(env)
    _write_submission(env, sidecar={"run": "tfidf", "cv": 0.8})
    submit.run(comp, backoff_base=0)
    kaggle.submissions[0].update(status="COMPLETE", publicScore="0.79100")
    capsys.readouterr()

    submit.main(["--comp", COMP, "--status"])
    (row,) = _ledger(env)
    assert row["public_score"] == "0.79100"
    out = capsys.readouterr().out
    assert "0.8000" in out and "0.79100" in out and "complete" in out


def test_demo_source_calls_write_demo(env, monkeypatch):
    calls = []

    def write_demo(out_dir: Path) -> None:
        calls.append(out_dir)
        for name, text in FILES.items():
            (out_dir / name).write_text(text)

    monkeypatch.setitem(sys.modules, "medalist.demos.text", types.SimpleNamespace(write_demo=write_demo))
    raw = download.run(load_competition("demo"))
    assert len(calls) == 1 and (raw / ".complete").exists() and (raw / "test.csv").read_text() == FILES["test.csv"]

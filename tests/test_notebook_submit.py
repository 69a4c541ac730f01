"""`make submit` of a code competition (the bundle's datasets, kernel, its run, its output, the code
submission) and `make download`'s record of a code competition, against the fake Kaggle API on
127.0.0.1:7777: the real kagglesdk client, real HTTP, no network."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from kaggle_server import FakeKaggle
from test_kaggle import FILES, _csv, _zip  # the same three-row competition

from medalist.core.competition import load_competition
from medalist.stages import download, submit

REPO = Path(__file__).resolve().parents[1]
COMP = "code-comp"
TOKEN = "fake-token-5ecret"
OWNER = "__KAGGLE_USERNAME__"
PREFIX = f"medalist-{COMP}"
CODE, ARTIFACTS, KERNEL = (f"alice/{PREFIX}-{part}" for part in ("code", "artifacts", "kernel"))


GOOD_OUTPUT = _csv([["id", "label"], ["t1", 1], ["t2", 2]]).encode()


def _config(via: str, extra: str = "") -> str:
    demo = (REPO / "configs" / "competitions" / "demo.yaml").read_text()
    old = "submission: {format: label, id_column: id, label_column: label, label_as: index}"
    assert old in demo
    return (demo.replace("name: demo", f"name: {COMP}").replace("source: demo ", "source: kaggle")
            .replace(old, f"submission: {{format: label, id_column: id, label_column: label, label_as: index, "
                          f"via: {via}{extra}}}"))


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A project root under tmp_path with one code competition (`via: notebook`), its raw files, a
    fake token, HOME moved so no real ~/.kaggle is read, and status polls without a pause."""
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs" / "competitions", configs / "competitions")
    (configs / "competitions" / f"{COMP}.yaml").write_text(_config("notebook"))
    raw = tmp_path / "data" / "raw" / COMP
    raw.mkdir(parents=True)
    for name, text in FILES.items():
        (raw / name).write_text(text)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("MEDALIST_ROOT", str(tmp_path))
    monkeypatch.setenv("MEDALIST_CONFIGS", str(configs))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    monkeypatch.setenv("MEDALIST_KAGGLE_POLL_S", "0")
    for var in ("KAGGLE_CONFIG_DIR", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_KERNEL_RUN_TYPE",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
def kaggle():
    with FakeKaggle() as fake:
        fake.kernel_output = {"submission.csv": GOOD_OUTPUT, "notes.txt": b"x"}
        yield fake


def write_bundle(root: Path, weights: bytes = b"fold weights v1", owner: str = OWNER) -> dict[str, dict[str, bytes]]:
    """A bundle laid out as `make bundle` writes it, with subfolders and two files of one name
    (a bundle written again keeps `make submit`'s .submit_state.json); returns each dataset's
    files by path."""
    bundle = root / "submission" / COMP / "bundle"
    for part in ("code", "artifacts", "kernel"):
        shutil.rmtree(bundle / part, ignore_errors=True)
    files = {
        "code": {"medalist-0.1-py3-none-any.whl": b"wheel", "nltk_data/tokenizers/punkt.txt": b"punkt"},
        "artifacts": {"runs/tfidf/fold0/model.bin": weights, "runs/tfidf/fold1/model.bin": weights + b"!"},
    }
    content_hash = hashlib.sha256(weights).hexdigest()
    files["artifacts"]["bundle.json"] = json.dumps({
        "comp": COMP, "content_hash": content_hash, "cv": 0.81234, "metric": "micro_f1", "runs": ["tfidf"],
        "git_sha": "abc1234", "public_rows": 2}).encode()
    for part, content in files.items():
        for rel, data in content.items():
            (bundle / part / rel).parent.mkdir(parents=True, exist_ok=True)
            (bundle / part / rel).write_bytes(data)
        (bundle / part / "dataset-metadata.json").write_text(json.dumps({
            "title": f"{PREFIX}-{part}", "id": f"{owner}/{PREFIX}-{part}", "licenses": [{"name": "other"}]}))
    (bundle / "kernel").mkdir()
    (bundle / "kernel" / "medalist_kernel.py").write_text("print('predict')\n")
    (bundle / "kernel" / "kernel-metadata.json").write_text(json.dumps({
        "id": f"{owner}/{PREFIX}-kernel", "title": f"{PREFIX}-kernel", "code_file": "medalist_kernel.py",
        "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": False, "enable_tpu": False,
        "enable_internet": False, "competition_sources": [COMP],
        "dataset_sources": [f"{owner}/{PREFIX}-code", f"{owner}/{PREFIX}-artifacts"],
        "kernel_sources": [], "model_sources": []}))
    return files


def _ledger(env: Path) -> list[dict]:
    with open(env / "submission" / COMP / "ledger.csv", newline="") as f:
        return list(csv.DictReader(f))


def _bodies(kaggle: FakeKaggle, method: str) -> list[dict]:
    return [r["body"] for r in kaggle.requests if r["method"] == method]


def _fails(capsys, *args: str, alone: bool = False) -> str:
    """Run `make submit`'s entry point, which must fail with one error line at the end of stderr
    (`alone`: and nothing before it — no upload or log was shown)."""
    with pytest.raises(SystemExit) as e:
        submit.main(["--comp", COMP, *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    *before, last = err.splitlines()
    assert last.startswith("error: ") and not (alone and before)
    return last


def _uploaded(kaggle: FakeKaggle) -> list[str]:
    return [b["name"] for b in _bodies(kaggle, "StartBlobUpload")]


# ---------------------------------------------------------------- a whole submission


def test_notebook_submit_pushes_datasets_kernel_and_submits_its_output(env, kaggle, capsys):
    files = write_bundle(env)
    bundle = env / "submission" / COMP / "bundle"
    before = {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    submit.main(["--comp", COMP])
    out = capsys.readouterr().out

    # the placeholder owner became the token's user, asked of Kaggle; the bundle was not edited
    assert "IntrospectToken" in kaggle.methods()
    assert {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file() and p.name != ".submit_state.json"} == before

    # both datasets created private, every file in its folder (two model.bin kept apart)
    for part, ref in (("code", CODE), ("artifacts", ARTIFACTS)):
        assert kaggle.datasets[ref] == [files[part]]
        (create,) = kaggle.dataset_requests[ref]
        assert create["isPrivate"] is True and create["licenseName"] == "other" and create["title"] == f"{PREFIX}-{part}"
    tree = kaggle.dataset_requests[ARTIFACTS][0]
    assert [d["name"] for d in tree["directories"]] == ["runs"] and len(tree["files"]) == 1
    assert sorted(_uploaded(kaggle)) == sorted(Path(rel).name for part in files.values() for rel in part)

    # the kernel: internet off as sent on the wire, the competition and both datasets attached
    (push,) = _bodies(kaggle, "SaveKernel")
    assert push["enableInternet"] is False
    assert push["slug"] == KERNEL and push["text"] == "print('predict')\n" and push["isPrivate"] is True
    assert push["competitionDataSources"] == [COMP] and push["datasetDataSources"] == [CODE, ARTIFACTS]
    assert push["language"] == "python" and push["kernelType"] == "script"
    for label in ("queued", "running", "complete"):
        assert f"kernel {KERNEL} version 1: {label}" in out

    # its output fetched from storage without credentials, then submitted as a code submission
    (fetch,) = [r for r in kaggle.requests if r["path"].startswith("/storage/kernel-output/")]
    assert fetch["path"].endswith("/submission.csv") and "Authorization" not in fetch["headers"]
    assert (env / "submission" / COMP / "notebook_submission.csv").read_bytes() == GOOD_OUTPUT
    (code_sub,) = _bodies(kaggle, "CreateCodeSubmission")
    content_hash = json.loads(files["artifacts"]["bundle.json"])["content_hash"]
    message = f"{PREFIX}-kernel v1 CV=0.8123 git=abc1234 bundle={content_hash[:12]}"
    assert code_sub == {"competitionName": COMP, "kernelOwner": "alice", "kernelSlug": f"{PREFIX}-kernel",
                        "kernelVersion": 1, "fileName": "submission.csv", "submissionDescription": message}
    assert kaggle.methods().index("CreateCodeSubmission") > kaggle.methods().index("ListKernelSessionOutput")

    (row,) = _ledger(env)
    assert row["kernel"] == KERNEL and row["kernel_version"] == "1" and row["content_hash"] == content_hash
    assert row["cv"] == "0.8123" and row["git_sha"] == "abc1234" and row["kaggle_ref"] == "1000"
    assert row["file"] == f"submission/{COMP}/notebook_submission.csv" and row["message"] == message
    assert f"submitted {KERNEL} version 1" in out


def test_new_bundle_versions_only_the_changed_dataset_and_a_duplicate_is_refused(env, kaggle, capsys):
    write_bundle(env)
    submit.run(load_competition(COMP), backoff_base=0)
    first_uploads = len(_uploaded(kaggle))
    kaggle.requests.clear()
    capsys.readouterr()

    # the same bundle again: refused before any request
    err = _fails(capsys, alone=True)
    assert "already submitted" in err and f"{KERNEL} version 1" in err
    assert kaggle.requests == []

    files = write_bundle(env, weights=b"fold weights v2")
    submit.run(load_competition(COMP), backoff_base=0)
    assert _bodies(kaggle, "CreateDataset") == []
    (version,) = _bodies(kaggle, "CreateDatasetVersion")
    assert version["ownerSlug"] == "alice" and version["datasetSlug"] == f"{PREFIX}-artifacts"
    assert kaggle.datasets[ARTIFACTS][-1] == files["artifacts"] and len(kaggle.datasets[CODE]) == 1
    assert sorted(_uploaded(kaggle)) == ["bundle.json", "model.bin", "model.bin"], "the code dataset is unchanged"
    assert first_uploads == 5
    assert _bodies(kaggle, "CreateCodeSubmission")[0]["kernelVersion"] == 2
    assert [r["kernel_version"] for r in _ledger(env)] == ["1", "2"]


# ---------------------------------------------------------------- failures


def test_kernel_error_prints_message_and_log_tail_and_leaves_the_ledger(env, kaggle, capsys):
    write_bundle(env)
    kaggle.kernel_statuses = ["QUEUED", "RUNNING", "ERROR"]
    kaggle.failure_message = "Your notebook hit an unhandled error"
    kaggle.kernel_log = json.dumps([{"stream_name": "stdout", "time": 0.1, "data": "loading artifacts\n"},
                                    {"stream_name": "stderr", "time": 2.5, "data": "Traceback (most recent call last)\n"
                                                                                    "ValueError: no fold0 weights\n"}])
    with pytest.raises(SystemExit) as e:
        submit.main(["--comp", COMP])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert f"kernel {KERNEL} version 1: running" in captured.out
    lines = captured.err.strip().splitlines()
    assert "  | loading artifacts" in lines and "  | ValueError: no fold0 weights" in lines
    last = lines[-1]
    assert last.startswith("error: ") and "ended error: Your notebook hit an unhandled error" in last
    assert _bodies(kaggle, "CreateCodeSubmission") == []
    assert not (env / "submission" / COMP / "ledger.csv").exists()

    # a rerun runs the kernel again; the datasets are not uploaded again
    kaggle.requests.clear()
    kaggle.kernel_statuses = ["COMPLETE"]
    submit.run(load_competition(COMP), backoff_base=0)
    assert _uploaded(kaggle) == [] and _bodies(kaggle, "CreateDatasetVersion") == []
    assert [b["kernelVersion"] for b in _bodies(kaggle, "CreateCodeSubmission")] == [2]


def test_invalid_output_is_one_line_and_nothing_is_submitted(env, kaggle, capsys):
    write_bundle(env)
    kaggle.kernel_output = {"submission.csv": _csv([["id", "label"], ["t1", 1], ["t2", 9]]).encode()}
    err = _fails(capsys)
    assert f"submission.csv of kernel {KERNEL} version 1 is not a valid submission" in err
    assert "label '9' outside the label space" in err
    assert _bodies(kaggle, "CreateCodeSubmission") == []
    assert not (env / "submission" / COMP / "ledger.csv").exists()
    assert not (env / "submission" / COMP / "notebook_submission.csv").exists()

    kaggle.kernel_output = {"other.csv": b"x"}
    assert "wrote no submission.csv (its output: other.csv)" in _fails(capsys)


def test_interrupted_submit_resumes_without_uploading_twice(env, kaggle, capsys):
    write_bundle(env)
    kaggle.fail["StartBlobUpload"] = [0, 0, 0, 403]  # the 4th file's upload: the artifacts dataset's 2nd
    assert "Kaggle refused upload of dataset" in _fails(capsys)
    assert list(kaggle.datasets) == [CODE]

    kaggle.fail["SaveKernel"] = 403  # now both datasets get made, and the push fails
    assert f"kernel {KERNEL}" in _fails(capsys)
    assert list(kaggle.datasets) == [CODE, ARTIFACTS]

    del kaggle.fail["SaveKernel"]
    kaggle.kernel_statuses = ["COMPLETE"]
    kaggle.fail["ListKernelSessionOutput"] = 403  # … then the output listing fails, after the run
    assert "output of kernel" in _fails(capsys)

    del kaggle.fail["ListKernelSessionOutput"]
    submit.run(load_competition(COMP), backoff_base=0)
    uploads = _uploaded(kaggle)
    assert len(uploads) == 5 + 1, "every file uploaded once (plus the one whose upload start failed)"
    assert len([r for r in kaggle.requests if r["method"] == "PUT"]) == 5
    assert [len(v) for v in kaggle.datasets.values()] == [1, 1], "each dataset made once"
    assert len(kaggle.kernels[KERNEL]) == 1, "the kernel pushed once, its run followed on resume"
    assert len(_bodies(kaggle, "CreateCodeSubmission")) == 1 and len(_ledger(env)) == 1


def test_a_dataset_kaggle_fails_to_process_is_uploaded_again_on_rerun(env, kaggle, capsys):
    write_bundle(env)
    kaggle.dataset_statuses = ["BLOBS_RECEIVED", "FAILED"]
    err = _fails(capsys)
    assert f"Kaggle could not process dataset {CODE} (failed)" in err
    assert _bodies(kaggle, "SaveKernel") == []

    kaggle.dataset_statuses = ["READY"]
    submit.run(load_competition(COMP), backoff_base=0)
    assert len(kaggle.datasets[CODE]) == 2 and _bodies(kaggle, "CreateDatasetVersion")[0]["datasetSlug"] == f"{PREFIX}-code"
    assert len(_ledger(env)) == 1


def test_kernel_still_running_at_the_time_limit_is_followed_again_on_rerun(env, kaggle, capsys):
    (env / "configs" / "competitions" / f"{COMP}.yaml").write_text(
        _config("notebook", ", notebook: {time_limit_hours: 0.000001}"))
    write_bundle(env)
    kaggle.kernel_statuses = ["RUNNING"]  # one status only: the limit may pass at the first poll
    err = _fails(capsys)
    assert f"kernel {KERNEL} version 1 is still running after" in err and "rerun `make submit`" in err

    kaggle.kernel_runs[(KERNEL, 1)] = ["COMPLETE"]
    submit.run(load_competition(COMP), backoff_base=0)
    assert len(kaggle.kernels[KERNEL]) == 1
    assert _bodies(kaggle, "CreateCodeSubmission")[0]["kernelVersion"] == 1


def test_no_credentials_and_no_bundle_are_one_line(env, kaggle, monkeypatch, capsys):
    assert f"run `make bundle COMP={COMP}` first" in _fails(capsys, alone=True)
    write_bundle(env)
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    err = _fails(capsys, alone=True)
    assert "no Kaggle credentials found" in err and "KAGGLE_API_TOKEN" in err
    assert kaggle.requests == []


def test_file_is_refused_for_a_code_competition(env, kaggle, capsys):
    write_bundle(env)
    assert "FILE= does not apply" in _fails(capsys, "--file", "x.csv", alone=True)


def test_username_from_the_environment_replaces_the_placeholder(env, kaggle, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "bob")
    write_bundle(env)
    submit.run(load_competition(COMP), backoff_base=0)
    assert "IntrospectToken" not in kaggle.methods()
    assert sorted(kaggle.datasets) == [f"bob/{PREFIX}-artifacts", f"bob/{PREFIX}-code"]
    assert _bodies(kaggle, "SaveKernel")[0]["datasetDataSources"] == [f"bob/{PREFIX}-code", f"bob/{PREFIX}-artifacts"]
    assert _ledger(env)[0]["kernel"] == f"bob/{PREFIX}-kernel"


def test_old_ledger_reads_and_status_fills_a_code_submissions_score(env, kaggle, capsys):
    old = "time,file,sha256,git_sha,cv,message,kaggle_ref,public_score\n2024-01-01,a.csv,ff,abc,0.7,first,999,0.69\n"
    (env / "submission" / COMP).mkdir(parents=True)
    (env / "submission" / COMP / "ledger.csv").write_text(old)
    write_bundle(env)
    submit.run(load_competition(COMP), backoff_base=0)
    kaggle.submissions[0].update(status="COMPLETE", publicScore="0.80100")
    kaggle.submissions.append({"ref": 999, "description": "first", "status": "ERROR",
                               "errorDescription": "Notebook Threw Exception"})
    capsys.readouterr()
    submit.main(["--comp", COMP, "--status"])
    first, second = _ledger(env)
    assert first["kernel"] == "" and second["kernel"] == KERNEL and second["public_score"] == "0.80100"
    out = capsys.readouterr().out
    assert "0.80100" in out and KERNEL in out and "error: Notebook Threw Exception" in out


# ---------------------------------------------------------------- download


@pytest.mark.parametrize("kernels_only", [True, False])
def test_download_records_whether_it_is_a_code_competition(env, capsys, kernels_only):
    shutil.rmtree(env / "data" / "raw" / COMP)
    with FakeKaggle(_zip(FILES)) as fake:
        fake.kernels_only = kernels_only
        raw = download.run(load_competition(COMP))
        assert fake.methods()[:2] == ["GetCompetition", "DownloadDataFiles"]
    assert json.loads((raw / ".complete").read_text())["code_competition"] is kernels_only
    warning = "Kaggle takes CSV submissions" in capsys.readouterr().err
    assert warning is not kernels_only, "via: notebook on a CSV competition is a warning, not an error"


def test_download_stops_when_the_config_submits_a_csv_to_a_code_competition(env, capsys):
    shutil.rmtree(env / "data" / "raw" / COMP)
    (env / "configs" / "competitions" / f"{COMP}.yaml").write_text(_config("csv"))
    with FakeKaggle(_zip(FILES)) as fake:
        fake.kernels_only = True
        with pytest.raises(SystemExit) as e:
            download.main(["--comp", COMP])
        assert fake.methods() == ["GetCompetition"], "nothing downloaded"
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "only notebook submissions" in err and "set `via: notebook` under `submission:`" in err
    assert not (env / "data" / "raw" / COMP).exists()

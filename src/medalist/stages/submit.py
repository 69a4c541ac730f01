"""Stage `submit`: upload one submission CSV to Kaggle and record it in the ledger; `--status`
fetches the public scores of what was submitted. Never run automatically. A code competition
(`submission.via: notebook`) submits its bundle's notebook instead: submit_notebook.py.

Reads:  submission/<comp>/submission.csv (or --file), checked against
        data/raw/<comp>/sample_submission.csv before anything is sent; its sidecar
        <stem>.json beside it (`run`, `cv`) for the default message; submission/<comp>/ledger.csv.
Writes: submission/<comp>/ledger.csv (time, file, sha256, git_sha, cv, message, kaggle_ref,
        public_score, kernel, kernel_version, content_hash — the last three for a notebook's
        submission; a ledger from before they existed still reads), rewritten atomically; a file
        already in it is refused.
Run:    python -m medalist.stages.submit --comp NAME [--file PATH] [--message TEXT]   (make submit [FILE=…])
        python -m medalist.stages.submit --comp NAME --status                          (make status)
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pandas as pd
import requests
from kagglesdk.competitions.types.competition_api_service import (
    ApiCreateSubmissionRequest,
    ApiGetSubmissionLimitsRequest,
    ApiListSubmissionsRequest,
    ApiStartSubmissionUploadRequest,
)

from medalist.core import config as C
from medalist.core.competition import Competition, load_competition, read_sample, validate_submission
from medalist.core.config import Paths, UserError, cli, stage_parser
from medalist.core.io import read_csv, write_csv
from medalist.clients.kaggle import RETRY_STATUS, TIMEOUT_S, Api

LEDGER_COLUMNS = ["time", "file", "sha256", "git_sha", "cv", "message", "kaggle_ref", "public_score",
                  "kernel", "kernel_version", "content_hash"]
NOTEBOOK_COLUMNS = LEDGER_COLUMNS[-3:]  # a notebook submission's kernel (owner/slug), its version, the bundle's hash


def run(comp: Competition, file: Path | None = None, message: str | None = None, backoff_base: float = 2.0) -> Path:
    _require_kaggle(comp)
    if comp.submission.via == "notebook":
        if file:
            raise UserError(f"'{comp.name}' is a code competition (submission.via: notebook): `make submit` pushes "
                            f"the bundle's notebook and submits its output, so FILE= does not apply; leave it out")
        from medalist.stages import submit_notebook  # here: it imports this module's ledger helpers

        return submit_notebook.run(comp, message=message, backoff_base=backoff_base)
    paths = Paths(comp.name)
    file = Path(file) if file else paths.submission / "submission.csv"
    if not file.is_file():
        raise UserError(f"no submission file {_shown(file)}: run `make ensemble` first, or pass FILE=path.csv")

    sample = read_sample(comp, paths.raw)
    sub = read_csv(file, _shown(file), dtype={comp.submission.id_column: str})
    validate_submission(comp, sample, sub)

    data = file.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    ledger_path = paths.submission / "ledger.csv"
    ledger = _read_ledger(ledger_path)
    earlier = ledger[ledger["sha256"] == sha]
    if len(earlier):
        row = earlier.iloc[0]
        raise UserError(
            f"{_shown(file)} was already submitted on {row['time']} (Kaggle ref {row['kaggle_ref'] or '?'}): "
            "make a new submission before submitting again"
        )

    run_name, cv = _sidecar(file)
    git_sha = C.git_sha()
    message = message or f"{run_name} CV={cv} git={git_sha}"

    def upload(url: str) -> None:
        # a pre-signed storage URL: no Kaggle credentials go with it
        r = requests.put(url, data=data, timeout=TIMEOUT_S)
        if r.status_code in RETRY_STATUS:
            r.raise_for_status()  # Api.call retries these
        if not r.ok:
            raise UserError(f"uploading {file.name} to Kaggle's storage failed (HTTP {r.status_code}): rerun make submit")

    with Api(comp, backoff_base) as api:
        start_req = ApiStartSubmissionUploadRequest()
        start_req.competition_name = comp.slug
        start_req.file_name = file.name
        start_req.content_length = len(data)
        start_req.last_modified_epoch_seconds = int(file.stat().st_mtime)
        started = api.call("submission upload", lambda: api.competitions.start_submission_upload(start_req))
        api.call("submission upload", lambda: upload(started.create_url))

        create_req = ApiCreateSubmissionRequest()
        create_req.competition_name = comp.slug
        create_req.blob_file_tokens = started.token
        create_req.submission_description = message
        created = api.call("submission", lambda: api.competitions.create_submission(create_req))

        row = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "file": _shown(file),
            "sha256": sha,
            "git_sha": git_sha,
            "cv": cv,
            "message": message,
            "kaggle_ref": str(created.ref) if created.ref else "",
            "public_score": "",
        }
        write_csv(ledger_path, pd.concat([ledger, pd.DataFrame([row])], ignore_index=True))

        limits_req = ApiGetSubmissionLimitsRequest()
        limits_req.competition_name = comp.slug
        try:
            limits = api.call("submission limits", lambda: api.competitions.get_submission_limits(limits_req))
            left = f"; {limits.num_allowed_now} submission(s) left today" if limits.num_allowed_now is not None else ""
        except UserError:  # the submission is in; a missing count is not worth failing over
            left = ""

    said = f" ({created.message})" if created.message else ""
    print(f"submitted {_shown(file)} to '{comp.slug}' as \"{message}\"{said}{left}; `make status` shows its score")
    return ledger_path


def status(comp: Competition, backoff_base: float = 2.0) -> Path:
    """Fill the ledger's public_score from Kaggle's submission list and print CV vs public."""
    _require_kaggle(comp)
    ledger_path = Paths(comp.name).submission / "ledger.csv"
    ledger = _read_ledger(ledger_path)
    if ledger.empty:
        print(f"no submissions recorded in {_shown(ledger_path)} yet: `make submit` makes one")
        return ledger_path

    submissions = []
    with Api(comp, backoff_base) as api:
        page_token = ""
        while True:
            req = ApiListSubmissionsRequest()
            req.competition_name = comp.slug
            req.page_size = 100
            req.page_token = page_token
            resp = api.call("submission list", lambda req=req: api.competitions.list_submissions(req))
            submissions += resp.submissions
            page_token = resp.next_page_token
            if not page_token or not resp.submissions:
                break

    by_ref = {str(s.ref): s for s in submissions if s.ref}
    by_description = {s.description: s for s in submissions if s.description}
    states = []
    for i, row in ledger.iterrows():
        s = by_ref.get(row["kaggle_ref"]) if row["kaggle_ref"] else by_description.get(row["message"])
        if s is None:
            states.append("not on Kaggle")
            continue
        state = s.status.name.lower() if s.status is not None else ""
        # a code submission's rerun on the hidden test can fail: Kaggle says why
        states.append(f"{state}: {s.error_description}" if s.error_description else state)
        if not row["kaggle_ref"] and s.ref:
            ledger.at[i, "kaggle_ref"] = str(s.ref)
        if s.public_score:
            ledger.at[i, "public_score"] = s.public_score
    write_csv(ledger_path, ledger)

    notebook = ["kernel", "kernel_version"] if (ledger["kernel"] != "").any() else []
    shown = ["time", "file", "cv", "public_score", "kaggle_ref", *notebook]
    table = ledger[shown].rename(columns={"public_score": "public", "kernel_version": "version"})
    table["status"] = states
    print(table.to_string(index=False))
    return ledger_path


def _require_kaggle(comp: Competition) -> None:
    if comp.source != "kaggle":
        raise UserError(f"'{comp.name}' is a {comp.source} competition: there is no Kaggle competition to submit to")


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(C.root()))
    except ValueError:
        return str(path)


def _read_ledger(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype=str) for c in LEDGER_COLUMNS})
    ledger = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in LEDGER_COLUMNS if c not in ledger.columns and c not in NOTEBOOK_COLUMNS]
    if missing:
        raise UserError(f"{_shown(path)}: missing column(s) {missing}; expected {LEDGER_COLUMNS}")
    for c in NOTEBOOK_COLUMNS:  # a ledger from before code competitions
        if c not in ledger.columns:
            ledger[c] = ""
    return ledger


def _sidecar(file: Path) -> tuple[str, str]:
    """(run, CV) from <stem>.json beside the CSV, which the stage that wrote it leaves there."""
    side = file.with_suffix(".json")
    if not side.is_file():
        return file.stem, "?"
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{_shown(side)}: not valid JSON") from None
    return str(meta.get("run") or file.stem), _cv_text(meta.get("cv"))


def _cv_text(cv: object) -> str:
    """A CV score as the ledger and the default message show it."""
    return f"{cv:.4f}" if isinstance(cv, float) else ("?" if cv is None else str(cv))


@cli
def main(argv: list[str] | None = None) -> None:
    p = stage_parser("medalist.stages.submit", __doc__)
    p.add_argument("--file", default="", help="submission CSV (default: submission/<comp>/submission.csv)")
    p.add_argument("--message", default="", help="submission description (default: '<run> CV=<cv> git=<sha>')")
    p.add_argument("--status", action="store_true", help="fetch public scores into the ledger and print CV vs public")
    args = p.parse_args(argv)
    comp = load_competition(args.comp)
    if args.status:
        status(comp)
    else:
        # Make passes `--file "$(FILE)"`: an empty value means the default
        run(comp, Path(args.file).expanduser() if args.file else None, args.message or None)


if __name__ == "__main__":
    main()

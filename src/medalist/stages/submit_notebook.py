"""The notebook half of stage `submit`, for a code competition (`submission.via: notebook`): Kaggle
reruns a notebook offline on the hidden test, so what is submitted is a version of a kernel.

Reads:  submission/<comp>/bundle/ (`make bundle`): code/ and artifacts/ (a dataset each, beside its
        dataset-metadata.json), kernel/ (kernel-metadata.json and its script), artifacts/bundle.json
        (content_hash, cv, git_sha …); data/raw/<comp>/sample_submission.csv; the ledger.
Does:   creates or versions the two private datasets, subfolders kept, and waits until Kaggle has
        processed them; pushes the kernel (internet off, said explicitly) and follows its run;
        downloads its submission.csv and validates it as every submission is; submits that kernel
        version. An owner of __KAGGLE_USERNAME__ in the bundle's metadata becomes the credentials'
        username in what is sent; the bundle itself is not edited.
Writes: submission/<comp>/notebook_submission.csv (the kernel's output, validated) and a ledger row
        (kernel, kernel_version, content_hash, the bundle's CV and git SHA); a bundle already in the
        ledger is refused. submission/<comp>/bundle/.submit_state.json (written atomically) keeps
        what is done: each dataset's content as last versioned and the upload tokens of its files,
        the kernel version pushed for a content hash, the submission. A rerun after an interruption
        uploads nothing twice and follows the same kernel run; a dataset whose content did not
        change since its last version is not uploaded again.
Run:    make submit COMP=<comp> [MESSAGE=…]. MEDALIST_KAGGLE_POLL_S: seconds between status polls
        (default 30); the wait for the kernel ends after submission.notebook.time_limit_hours.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from kagglesdk.competitions.types.competition_api_service import ApiCreateCodeSubmissionRequest
from kagglesdk.datasets.types.dataset_api_service import (
    ApiCreateDatasetRequest,
    ApiCreateDatasetVersionRequest,
    ApiCreateDatasetVersionRequestBody,
)
from kagglesdk.datasets.types.dataset_enums import DatabundleVersionStatus
from kagglesdk.kernels.types.kernels_api_service import ApiSaveKernelRequest
from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

from medalist.clients.kaggle import OWNER_PLACEHOLDER, Api, get_signed, upload_tree
from medalist.core.competition import Competition, read_sample, validate_submission
from medalist.core.config import Paths, UserError
from medalist.core.io import atomic_path, read_csv, write_csv, write_json
from medalist.core.locks import stage_lock
from medalist.core.progress import progress
from medalist.stages.submit import _cv_text, _read_ledger, _shown

DATASETS = ("code", "artifacts")
DATASET_META = "dataset-metadata.json"
KERNEL_META = "kernel-metadata.json"
STATE = ".submit_state.json"
OUTPUT = "submission.csv"  # what the kernel writes, and the file its code submission names
POLL_S = 30.0  # between status polls: a dataset takes minutes to process, a kernel minutes to hours
DATASET_WAIT_S = 2 * 3600.0  # Kaggle processes a few GB in minutes; hours means it is stuck
REPEAT_S = 300.0  # an unchanged status is said again this often, so a long wait shows it is alive
LOG_TAIL = 20  # lines of a failed kernel's log shown
ENDED = {"complete", "error", "cancel_requested", "cancel_acknowledged"}


@dataclasses.dataclass(frozen=True)
class Bundle:
    """What `make bundle` wrote: bundle.json and the metadata of the two datasets and the kernel."""

    root: Path
    info: dict
    datasets: dict[str, dict]  # "code" / "artifacts" → its dataset-metadata.json
    kernel: dict

    @property
    def content_hash(self) -> str:
        return str(self.info["content_hash"])

    @property
    def needs_owner(self) -> bool:
        return OWNER_PLACEHOLDER in json.dumps([self.datasets, self.kernel])

    def owned_by(self, owner: str) -> Bundle:
        """The metadata with the placeholder owner replaced, in memory: the bundle on disk stays as it is."""
        def swap(meta: dict) -> dict:
            return json.loads(json.dumps(meta).replace(OWNER_PLACEHOLDER, owner))

        return dataclasses.replace(self, datasets={k: swap(v) for k, v in self.datasets.items()}, kernel=swap(self.kernel))


def read_bundle(comp: Competition, root: Path) -> Bundle:
    """The bundle's metadata, every key this stage sends checked: one line names what is wrong."""
    remake = f"run `make bundle COMP={comp.name}` first"
    if not root.is_dir():
        raise UserError(f"no bundle at {_shown(root)}: {remake}")

    def meta(path: Path, keys: tuple[str, ...]) -> dict:
        if not path.is_file():
            raise UserError(f"{_shown(path)} is missing, the bundle is incomplete: {remake}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"{_shown(path)}: not valid JSON: {remake}") from None
        missing = [k for k in keys if not isinstance(data, dict) or not data.get(k)]
        if missing:
            raise UserError(f"{_shown(path)} has no {', '.join(missing)}: {remake}")
        return data

    info = meta(root / "artifacts" / "bundle.json", ("content_hash",))
    datasets = {part: meta(root / part / DATASET_META, ("id", "title", "licenses")) for part in DATASETS}
    kernel = meta(root / "kernel" / KERNEL_META, ("id", "code_file"))
    where = _shown(root / "kernel" / KERNEL_META)
    if kernel.get("enable_internet"):
        raise UserError(f"{where} has enable_internet: true — a code competition reruns the notebook offline; {remake}")
    if not (root / "kernel" / kernel["code_file"]).is_file():
        raise UserError(f"{where} names code_file {kernel['code_file']}, which is not beside it: {remake}")
    lacking = [m["id"] for m in datasets.values() if m["id"] not in kernel.get("dataset_sources", [])]
    if lacking:
        raise UserError(f"{where}: dataset_sources lack {', '.join(lacking)}: {remake}")
    for m in [*datasets.values(), kernel]:
        if str(m["id"]).count("/") != 1:
            raise UserError(f"a bundle id must read <owner>/<slug>, not '{m['id']}': {remake}")
    return Bundle(root, info, datasets, kernel)


class _State:
    """.submit_state.json: {"datasets": {ref: {sha256, tokens, versioned}}, "bundles": {content_hash: {kernel, submitted}}}."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.data = {}
        except ValueError:
            print(f"warning: {_shown(path)} is not valid JSON: starting over", file=sys.stderr)
            self.data = {}
        self.data.setdefault("datasets", {})
        self.data.setdefault("bundles", {})

    def dataset(self, ref: str) -> dict:
        return self.data["datasets"].setdefault(ref, {})

    def bundle(self, content_hash: str) -> dict:
        return self.data["bundles"].setdefault(content_hash, {})

    def save(self) -> None:
        write_json(self.path, self.data)


def run(comp: Competition, message: str | None = None, poll_s: float | None = None, backoff_base: float = 2.0) -> Path:
    paths = Paths(comp.name)
    root = paths.submission / "bundle"
    bundle = read_bundle(comp, root)
    sample = read_sample(comp, paths.raw)
    poll = _poll_seconds(poll_s)
    ledger_path = paths.submission / "ledger.csv"
    with stage_lock(paths, "submit"):
        ledger = _read_ledger(ledger_path)
        h = bundle.content_hash
        earlier = ledger[ledger["content_hash"] == h]
        if len(earlier):
            row = earlier.iloc[0]
            raise UserError(
                f"this bundle ({h[:12]}) was already submitted on {row['time']} as {row['kernel']} version "
                f"{row['kernel_version']} (Kaggle ref {row['kaggle_ref'] or '?'}): make a new bundle before submitting again"
            )
        state = _State(root / STATE)
        entry = state.bundle(h)
        if "submitted" not in entry:
            with Api(comp, backoff_base) as api:
                if bundle.needs_owner:
                    bundle = bundle.owned_by(api.username())
                for part in DATASETS:
                    _push_dataset(api, bundle, part, state, poll)
                kernel, version = _push_kernel(api, comp, bundle, state, entry)
                _wait_kernel(api, comp, kernel, version, state, entry, poll)
                out, sha = _fetch_output(api, comp, sample, kernel, version, paths.submission / "notebook_submission.csv")
                entry["submitted"] = _submit(api, comp, bundle, kernel, version, out, sha, message)
                state.save()
        done = entry["submitted"]
        row = {
            "time": done["time"], "file": done["file"], "sha256": done["sha256"],
            "git_sha": str(bundle.info.get("git_sha") or ""), "cv": _cv_text(bundle.info.get("cv")),
            "message": done["message"], "kaggle_ref": done["ref"], "public_score": "",
            "kernel": done["kernel"], "kernel_version": str(done["version"]), "content_hash": h,
        }
        write_csv(ledger_path, pd.concat([ledger, pd.DataFrame([row])], ignore_index=True))
    said = f" ({done['said']})" if done.get("said") else ""
    print(f"submitted {done['kernel']} version {done['version']} to '{comp.slug}' as \"{done['message']}\"{said}; "
          "Kaggle now reruns it on the hidden test: `make status` shows its score")
    return ledger_path


# ---------------------------------------------------------------- datasets


def _push_dataset(api: Api, bundle: Bundle, part: str, state: _State, poll: float) -> None:
    """Version (or create) one of the bundle's datasets unless Kaggle already has this content, then
    wait until it is ready. Each file's upload token is kept as soon as it is uploaded."""
    meta = bundle.datasets[part]
    ref = meta["id"]
    owner, slug = ref.split("/")
    folder = bundle.root / part
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and p.name != DATASET_META
                   and not any(s.startswith(".") for s in p.relative_to(folder).parts))
    if not files:
        raise UserError(f"{_shown(folder)} holds no files to upload: run `make bundle` again")
    digest = _digest(folder, files)
    rec = state.dataset(ref)
    exists = api.dataset_status(ref) is not None
    if rec.get("sha256") != digest or (rec.get("versioned") and not exists):
        rec.clear()
        rec.update(sha256=digest, tokens={})
    if rec.get("versioned"):
        print(f"dataset {ref}: Kaggle has this content already (versioned by an earlier run), nothing to upload")
    else:
        tokens = _upload(api, folder, files, rec, state, ref)
        root = upload_tree(tokens)
        notes = f"medalist bundle {bundle.content_hash[:12]}, git {bundle.info.get('git_sha') or '?'}"
        if exists:
            body = ApiCreateDatasetVersionRequestBody()
            body.version_notes = notes
            body.files, body.directories = root.files, root.directories
            req = ApiCreateDatasetVersionRequest()
            req.owner_slug, req.dataset_slug, req.body = owner, slug, body
            create: Callable[[], Any] = lambda: api.datasets.create_dataset_version(req)
        else:
            req = ApiCreateDatasetRequest()
            req.owner_slug, req.slug, req.title = owner, slug, meta["title"]
            req.license_name = meta["licenses"][0]["name"]
            req.is_private = True  # a bundle holds the fold weights: never public by accident
            req.subtitle, req.description = meta.get("subtitle"), meta.get("description")
            req.files, req.directories = root.files, root.directories
            create = lambda: api.datasets.create_dataset(req)
        what = f"{'new version of' if exists else 'creation of'} dataset {ref}"
        try:
            made = api.call(what, create, about=f"dataset {ref}")
            if made.error or (made.status or "ok").lower() != "ok":
                raise UserError(f"Kaggle refused the {what}: {made.error or made.status}")
        except UserError:
            rec["tokens"] = {}  # Kaggle may have taken or dropped them: the next try uploads afresh
            state.save()
            raise
        rec["versioned"] = True
        rec.pop("tokens")
        state.save()
        print(f"dataset {ref}: {'versioned' if exists else 'created'} ({len(files)} files)")
    _wait_dataset(api, ref, rec, state, poll)


def _digest(folder: Path, files: list[str]) -> str:
    h = hashlib.sha256()
    for rel in files:
        h.update(f"{rel}\0{(folder / rel).stat().st_size}\n".encode())
        with (folder / rel).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _upload(api: Api, folder: Path, files: list[str], rec: dict, state: _State, ref: str) -> dict[str, str]:
    """Each file not uploaded yet, its token kept the moment it is."""
    tokens = rec.setdefault("tokens", {})
    todo = [rel for rel in files if rel not in tokens]
    if len(todo) < len(files):
        print(f"dataset {ref}: {len(files) - len(todo)} of {len(files)} files were uploaded by an earlier run")
    with progress(total=sum((folder / rel).stat().st_size for rel in todo), unit="B", unit_scale=True,
                  desc=f"upload {ref}") as bar:
        for rel in todo:
            tokens[rel] = api.upload_blob(folder / rel, f"dataset {ref}")
            state.save()
            bar.update((folder / rel).stat().st_size)
    return tokens


def _wait_dataset(api: Api, ref: str, rec: dict, state: _State, poll: float) -> None:
    def look() -> tuple[str, Any]:
        status = api.dataset_status(ref)
        return ("not listed yet" if status is None else status.name.lower()), status

    label, status = _wait(f"dataset {ref}", look, {"ready", "failed", "deleted"}, DATASET_WAIT_S, poll,
                          lambda label, hours: f"dataset {ref} is still {label} after {hours:g} h: rerun `make submit` "
                                               "to keep waiting, or look at it on Kaggle")
    if status is not DatabundleVersionStatus.READY:
        rec.clear()  # what Kaggle failed to process is uploaded again on the next try
        state.save()
        raise UserError(f"Kaggle could not process dataset {ref} ({label}): see https://www.kaggle.com/datasets/{ref}, "
                        "then rerun `make submit`")


# ---------------------------------------------------------------- kernel


def _push_kernel(api: Api, comp: Competition, bundle: Bundle, state: _State, entry: dict) -> tuple[str, int]:
    """The kernel version that runs this bundle: the one an earlier run pushed, while Kaggle still
    has it, else a new one."""
    meta = bundle.kernel
    ref = meta["id"]
    pushed = entry.get("kernel")
    if pushed and pushed["ref"] == ref and api.kernel_status(ref, pushed["version"]) is not None:
        print(f"kernel {ref} version {pushed['version']} was pushed by an earlier run: following it")
        return ref, pushed["version"]
    req = ApiSaveKernelRequest()
    req.slug, req.new_title = ref, meta.get("title")
    req.text = (bundle.root / "kernel" / meta["code_file"]).read_text(encoding="utf-8")
    req.language, req.kernel_type = meta.get("language", "python"), meta.get("kernel_type", "script")
    req.is_private = bool(meta.get("is_private", True))
    req.enable_gpu, req.enable_tpu = bool(meta.get("enable_gpu", False)), bool(meta.get("enable_tpu", False))
    req.enable_internet = False  # the rerun on the hidden test has none: sent, never left to a default
    req.dataset_data_sources = list(meta["dataset_sources"])
    req.competition_data_sources = list(dict.fromkeys([*meta.get("competition_sources", []), comp.slug]))
    req.kernel_data_sources = list(meta.get("kernel_sources", []))
    req.model_data_sources = list(meta.get("model_sources", []))
    accelerator = meta.get("accelerator") or meta.get("machine_shape")
    if accelerator and accelerator != "none":
        req.machine_shape = accelerator
    if meta.get("docker_image_pinning_type"):
        req.docker_image_pinning_type = meta["docker_image_pinning_type"]
    saved = api.call("kernel push", lambda: api.kernels.save_kernel(req), about=f"kernel {ref}")
    problems = [saved.error] if saved.error else []
    for field in ("invalid_dataset_sources", "invalid_competition_sources", "invalid_kernel_sources",
                  "invalid_model_sources", "invalid_tags"):
        if getattr(saved, field):
            problems.append(f"{field.replace('_', ' ')}: {', '.join(getattr(saved, field))}")
    if problems or not saved.version_number:
        raise UserError(f"Kaggle refused kernel {ref}: {'; '.join(problems) or 'no version number came back'}")
    entry["kernel"] = {"ref": ref, "version": saved.version_number}
    state.save()
    print(f"pushed kernel {ref} version {saved.version_number}: {saved.url}")
    return ref, saved.version_number


def _wait_kernel(api: Api, comp: Competition, ref: str, version: int, state: _State, entry: dict, poll: float) -> None:
    """Follow the kernel's run to its end; a failure prints Kaggle's message and its log's tail."""
    def look() -> tuple[str, Any]:
        answer = api.kernel_status(ref, version)
        if answer is None:
            entry.pop("kernel", None)
            state.save()
            raise UserError(f"Kaggle has no kernel {ref} version {version} any more: rerun `make submit` to push it again")
        return answer.status.name.lower(), answer

    label, answer = _wait(f"kernel {ref} version {version}", look, ENDED, comp.submission.notebook.time_limit_hours * 3600,
                          poll, lambda label, hours: f"kernel {ref} version {version} is still {label} after {hours:g} h "
                                                     "(submission.notebook.time_limit_hours): rerun `make submit` to "
                                                     "keep following it, or cancel it on Kaggle")
    if answer.status is KernelWorkerStatus.COMPLETE:
        return
    entry.pop("kernel", None)  # a rerun runs it again: a failure may be Kaggle's own
    state.save()
    try:
        _, log = api.kernel_output(ref, version)
    except UserError as e:
        log = f"(its log could not be fetched: {e})"
    _show_log(ref, version, log)
    why = f": {answer.failure_message}" if answer.failure_message else ""
    raise UserError(f"kernel {ref} version {version} ended {label}{why}; its log's last lines are above — fix it and "
                    f"`make bundle`, or rerun `make submit` to run it again")


def _show_log(ref: str, version: int, log: str) -> None:
    lines = log.splitlines()[-LOG_TAIL:]
    if not lines:
        print(f"kernel {ref} version {version} left no log", file=sys.stderr)
        return
    print(f"last {len(lines)} lines of the log of kernel {ref} version {version}:", file=sys.stderr)
    for line in lines:
        print(f"  | {line}", file=sys.stderr)


def _fetch_output(api: Api, comp: Competition, sample: pd.DataFrame, ref: str, version: int, out: Path) -> tuple[Path, str]:
    """The kernel's submission.csv into `out`, only once it validates; its sha256."""
    files, log = api.kernel_output(ref, version)
    found = [f for f in files if f.file_name == OUTPUT]
    if not found:
        _show_log(ref, version, log)
        names = ", ".join(sorted(str(f.file_name) for f in files)) or "nothing"
        raise UserError(f"kernel {ref} version {version} wrote no {OUTPUT} (its output: {names}): the kernel must write "
                        f"/kaggle/working/{OUTPUT}; fix it and `make bundle`")
    what = f"{OUTPUT} of kernel {ref} version {version}"
    with atomic_path(out) as tmp:
        api.call("kernel output download", lambda: get_signed(found[0].url, tmp), about=what)
        sub = read_csv(tmp, what, dtype={comp.submission.id_column: str})
        try:
            validate_submission(comp, sample, sub)
        except UserError as e:
            raise UserError(f"{what} is not a valid submission ({e}): nothing was submitted; fix the kernel and "
                            "`make bundle`") from None
        sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    print(f"{what}: valid, {len(sub)} rows ({_shown(out)})")
    return out, sha


def _submit(api: Api, comp: Competition, bundle: Bundle, ref: str, version: int, out: Path, sha: str,
            message: str | None) -> dict:
    owner, slug = ref.split("/")
    message = message or (f"{slug} v{version} CV={_cv_text(bundle.info.get('cv'))} git={bundle.info.get('git_sha') or '?'} "
                          f"bundle={bundle.content_hash[:12]}")
    req = ApiCreateCodeSubmissionRequest()
    req.competition_name, req.kernel_owner, req.kernel_slug = comp.slug, owner, slug
    req.kernel_version, req.file_name, req.submission_description = version, OUTPUT, message
    made = api.call("code submission", lambda: api.competitions.create_code_submission(req))
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "file": _shown(out), "sha256": sha, "message": message,
            "ref": str(made.ref) if made.ref else "", "said": made.message or "", "kernel": ref, "version": version}


# ---------------------------------------------------------------- waiting


def _wait(what: str, look: Callable[[], tuple[str, Any]], ended: set[str], limit_s: float, poll: float,
          too_long: Callable[[str, float], str]) -> tuple[str, Any]:
    """Poll `look` (→ status label, answer) until the label is in `ended`; a line per change of
    status (and every REPEAT_S while it stays); past `limit_s`, the UserError `too_long` words."""
    start = time.monotonic()
    said, said_at = None, start
    while True:
        label, answer = look()
        now = time.monotonic()
        if label != said or now - said_at >= REPEAT_S:
            print(f"{what}: {label} ({_duration(now - start)})", flush=True)
            said, said_at = label, now
        if label in ended:
            return label, answer
        if now - start >= limit_s:
            raise UserError(too_long(label, limit_s / 3600))
        time.sleep(poll)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _poll_seconds(poll_s: float | None) -> float:
    if poll_s is not None:
        return poll_s
    text = os.environ.get("MEDALIST_KAGGLE_POLL_S", "")
    if not text:
        return POLL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UserError(f"MEDALIST_KAGGLE_POLL_S={text}: must be a number of seconds, 0 or more")
    return value

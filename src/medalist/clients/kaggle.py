"""Ground floor for the two stages that talk to Kaggle (download, submit): credentials, the
`kagglesdk` client, and one mapping from every HTTP or network failure to a one-line UserError;
for a code competition's notebook, the dataset, blob and kernel calls it is made of.

Kaggle's `kaggle` package always talks to production; the SDK client honours
KAGGLE_API_ENVIRONMENT=TEST (http://localhost:7777), which is how the tests run it offline.
Secrets are read from the environment or the standard files, handed to the SDK, and never
printed, logged or stored.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self, TypeVar

import requests
from kagglesdk import KaggleClient
from kagglesdk.blobs.types.blob_api_service import ApiBlobType, ApiStartBlobUploadRequest
from kagglesdk.datasets.types.dataset_api_service import (
    ApiDatasetNewFile,
    ApiGetDatasetStatusRequest,
    ApiUploadDirectoryInfo,
)
from kagglesdk.datasets.types.dataset_enums import DatabundleVersionStatus
from kagglesdk.kaggle_env import get_endpoint, get_env
from kagglesdk.kernels.types.kernels_api_service import (
    ApiGetKernelSessionStatusRequest,
    ApiGetKernelSessionStatusResponse,
    ApiKernelSessionOutputFile,
    ApiListKernelSessionOutputRequest,
)
from kagglesdk.security.types.oauth_service import IntrospectTokenRequest
from requests.adapters import HTTPAdapter

# the owner `make bundle` writes into the bundle's metadata when it knows no username; `make submit`
# puts the credentials' username in its place
from medalist.bundle.kernel import PLACEHOLDER_OWNER as OWNER_PLACEHOLDER
from medalist.core.competition import Competition
from medalist.core.config import UserError

T = TypeVar("T")

TRIES = 5  # with the default backoff base of 2 s: waits of 2, 4, 8, 16 s before giving up
RETRY_STATUS = {429, 500, 502, 503, 504}
TIMEOUT_S = 60  # per connect/read: a stalled connection ends in one line, not a hang
SETTINGS_URL = "https://www.kaggle.com/settings"


def config_dir() -> Path:
    """Where the Kaggle CLI keeps its files; KAGGLE_CONFIG_DIR moves it, as for `kaggle`."""
    env = os.environ.get("KAGGLE_CONFIG_DIR")
    return Path(env).expanduser() if env else Path.home() / ".kaggle"


def credentials_help() -> str:
    d = config_dir()
    return (
        f"set KAGGLE_API_TOKEN, or save your API token as {d / 'access_token'} "
        f"(or the legacy {d / 'kaggle.json'} with username and key); create one at {SETTINGS_URL} → API"
    )


@dataclasses.dataclass(frozen=True)
class Credentials:
    source: str  # where they came from, for messages: never the secret itself
    api_token: str | None = dataclasses.field(default=None, repr=False)
    username: str | None = None
    key: str | None = dataclasses.field(default=None, repr=False)


def _read_token(path: Path) -> str | None:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


def credentials() -> Credentials:
    """The first of: KAGGLE_API_TOKEN (the token or a file holding it), KAGGLE_USERNAME +
    KAGGLE_KEY, <config dir>/access_token, <config dir>/kaggle.json."""
    env_token = os.environ.get("KAGGLE_API_TOKEN", "").strip()
    if env_token:
        as_file = Path(env_token).expanduser()
        if as_file.is_file():
            token = _read_token(as_file)
            if token is None:
                raise UserError(f"KAGGLE_API_TOKEN names {as_file}, which holds no token; {credentials_help()}")
            return Credentials(source=str(as_file), api_token=token)
        return Credentials(source="KAGGLE_API_TOKEN", api_token=env_token)
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return Credentials(source="KAGGLE_USERNAME/KAGGLE_KEY", username=os.environ["KAGGLE_USERNAME"], key=os.environ["KAGGLE_KEY"])
    d = config_dir()
    for name in ("access_token", "access_token.txt"):
        token = _read_token(d / name)
        if token:
            return Credentials(source=str(d / name), api_token=token)
    kaggle_json = d / "kaggle.json"
    if kaggle_json.is_file():
        try:
            data = json.loads(kaggle_json.read_text(encoding="utf-8"))
            return Credentials(source=str(kaggle_json), username=str(data["username"]), key=str(data["key"]))
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{kaggle_json}: expected JSON with \"username\" and \"key\"; {credentials_help()}") from None
    raise UserError(f"no Kaggle credentials found: {credentials_help()}")


class _TimeoutAdapter(HTTPAdapter):
    def send(self, request, **kwargs):  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = TIMEOUT_S
        return super().send(request, **kwargs)


def _short_reason(e: Exception) -> str:
    """'Connection refused' out of urllib3's nested exception text."""
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(e))
    return m.group(1).strip() if m else type(e).__name__


class Api:
    """One competition's Kaggle API: `with Api(comp) as api: api.call("download", fn)`.

    `api.competitions`, `api.datasets`, `api.kernels`, `api.blobs` are the SDK's service clients;
    `call` runs one step with retries on 429/5xx (waits of backoff_base * 2**i) and turns every
    failure into one UserError line.
    """

    def __init__(self, comp: Competition, backoff_base: float = 2.0):
        self.comp = comp
        self.backoff_base = backoff_base
        self.endpoint = get_endpoint(get_env())
        self.creds = credentials()
        self._client = KaggleClient(
            api_token=self.creds.api_token, username=self.creds.username, password=self.creds.key
        )
        self.competitions = self._client.competitions.competition_api_client
        self.datasets = self._client.datasets.dataset_api_client
        self.kernels = self._client.kernels.kernels_api_client
        self.blobs = self._client.blobs.blob_api_client
        self._username: str | None = None

    def __enter__(self) -> Self:
        self._client.__enter__()
        # The SDK sends without a timeout; its session is private, but a hung socket must not
        # hang `make download` forever.
        session = self._client.http_client()._session
        session.mount("http://", _TimeoutAdapter())
        session.mount("https://", _TimeoutAdapter())
        return self

    def __exit__(self, *exc) -> None:
        self._client.__exit__(*exc)

    def username(self) -> str:
        """The Kaggle username these credentials act as: from kaggle.json / KAGGLE_USERNAME, else
        asked of Kaggle (an API token does not say whose it is)."""
        if self._username is None:
            name = self.creds.username or os.environ.get("KAGGLE_USERNAME", "").strip()
            if not name and self.creds.api_token:
                req = IntrospectTokenRequest()
                req.token = self.creds.api_token
                answer = self.call("token lookup", lambda: self._client.security.oauth_client.introspect_token(req))
                name = answer.username if answer.active else ""
            if not name:
                raise UserError(f"cannot tell the Kaggle username of the credentials from {self.creds.source}: "
                                "set KAGGLE_USERNAME to it and retry")
            self._username = name
        return self._username

    def call(self, what: str, fn: Callable[[], T], about: str | None = None, absent_ok: bool = False) -> T | None:
        """`fn()`, retried on 429/5xx. `about` names what a 403/404 concerns when it is not the
        competition (a dataset, a kernel); `absent_ok` answers None to a 404 instead of raising."""
        for i in range(TRIES):
            try:
                return fn()
            except requests.HTTPError as e:
                status, detail = _status_of(e)
                if status in RETRY_STATUS and i < TRIES - 1:
                    wait = self.backoff_base * 2**i
                    print(f"Kaggle answered HTTP {status} to {what}; retrying in {wait:g}s", file=sys.stderr)
                    time.sleep(wait)
                    continue
                if status == 404 and absent_ok:
                    return None
                if about is not None and status in (403, 404):
                    said = f": {detail}" if detail else ""
                    if status == 404:
                        raise UserError(f"Kaggle has no {about} (HTTP 404){said}") from None
                    raise UserError(f"Kaggle refused {what} of {about} (HTTP 403){said}: check that the "
                                    f"credentials from {self.creds.source} may use it") from None
                raise self._error(what, status, detail) from None
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                raise UserError(
                    f"cannot reach Kaggle at {self.endpoint} during {what} ({_short_reason(e)}): "
                    "check your network connection and retry"
                ) from None
        raise AssertionError("unreachable")

    def dataset_status(self, ref: str) -> DatabundleVersionStatus | None:
        """The processing status of dataset `owner/slug`'s latest version; None: no such dataset."""
        req = ApiGetDatasetStatusRequest()
        req.owner_slug, req.dataset_slug = ref.split("/")
        answer = self.call("dataset status", lambda: self.datasets.get_dataset_status(req),
                           about=f"dataset {ref}", absent_ok=True)
        return None if answer is None else answer.status

    def upload_blob(self, path: Path, about: str) -> str:
        """Upload one file of a dataset to Kaggle's storage; the token a dataset version names it by."""
        req = ApiStartBlobUploadRequest()
        req.type, req.name, req.content_length = ApiBlobType.DATASET, path.name, path.stat().st_size
        req.last_modified_epoch_seconds = int(path.stat().st_mtime)
        started = self.call("upload", lambda: self.blobs.start_blob_upload(req), about=about)
        self.call("upload", lambda: put_signed(started.create_url, path, path.name), about=about)
        return started.token

    def kernel_status(self, ref: str, version: int) -> ApiGetKernelSessionStatusResponse | None:
        """Status (and failure message) of version `version` of kernel `owner/slug`'s run; None: no such version."""
        req = ApiGetKernelSessionStatusRequest()
        req.user_name, req.kernel_slug = ref.split("/")
        req.version_label = f"v{version}"  # Kaggle answers 404 to a bare number
        return self.call("kernel status", lambda: self.kernels.get_kernel_session_status(req),
                         about=f"kernel {ref} version {version}", absent_ok=True)

    def kernel_output(self, ref: str, version: int) -> tuple[list[ApiKernelSessionOutputFile], str]:
        """The output files (name, signed URL) of a kernel version's run, and its log as text."""
        files: list[ApiKernelSessionOutputFile] = []
        log, token = "", ""
        while True:
            req = ApiListKernelSessionOutputRequest()
            req.user_name, req.kernel_slug = ref.split("/")
            req.version_label, req.page_token = f"v{version}", token or None
            page = self.call("kernel output", lambda: self.kernels.list_kernel_session_output(req),
                             about=f"kernel {ref} version {version}")
            files += page.files or []
            log = log or page.log or ""
            token = page.next_page_token
            if not token or not page.files:
                return files, _log_text(log)

    def _error(self, what: str, status: int, detail: str) -> UserError:
        slug = self.comp.slug
        if status == 401:
            return UserError(
                f"Kaggle rejected the credentials from {self.creds.source} (HTTP 401): "
                f"create a new API token at {SETTINGS_URL} and put it in place of the old one"
            )
        if status == 403:
            return UserError(
                f"Kaggle refused {what} for '{slug}' (HTTP 403): accept the competition rules at "
                f"{self.comp.rules_url} and retry"
            )
        if status == 404:
            return UserError(
                f"Kaggle has no competition '{slug}' (HTTP 404): check name/kaggle_slug in "
                f"configs/competitions/{self.comp.name}.yaml"
            )
        if status == 429:
            return UserError(f"Kaggle kept rate-limiting {what} (HTTP 429, {TRIES} tries): wait a few minutes and retry")
        return UserError(f"Kaggle {what} failed (HTTP {status}){': ' + detail if detail else ''}")


def _status_of(e: requests.HTTPError) -> tuple[int, str]:
    """HTTP status and server message; the SDK also raises on a JSON body whose `code` ≥ 400."""
    resp = e.response
    status = resp.status_code if resp is not None else 0
    detail = ""
    if resp is not None:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            if isinstance(body.get("code"), int) and body["code"] >= 400:
                status = body["code"]
            detail = str(body.get("message") or "")
    detail = " ".join(detail.split())[:200] or (resp.reason if resp is not None and resp.reason else "")
    return status, detail


def put_signed(url: str, path: Path, what: str) -> None:
    """PUT a file to a pre-signed storage URL: no Kaggle credentials go with it. A 429/5xx raises
    requests.HTTPError for Api.call to retry; any other refusal is a UserError."""
    with path.open("rb") as f:  # streamed: a weights file need not fit in memory
        r = requests.put(url, data=f, timeout=TIMEOUT_S)
    if r.status_code in RETRY_STATUS:
        r.raise_for_status()
    if not r.ok:
        raise UserError(f"uploading {what} to Kaggle's storage failed (HTTP {r.status_code}): rerun the command")


def get_signed(url: str, out: Path) -> None:
    """GET a pre-signed storage URL into `out` (no Kaggle credentials go with it); 429/5xx raise
    requests.HTTPError for Api.call to retry."""
    with requests.get(url, stream=True, timeout=TIMEOUT_S) as r:
        r.raise_for_status()
        with out.open("wb") as f:
            for chunk in r.iter_content(chunk_size=1 << 20):
                f.write(chunk)


def upload_tree(tokens: dict[str, str]) -> ApiUploadDirectoryInfo:
    """Uploaded files (relative path → blob token) as the directory tree a dataset version takes:
    a blob carries its file's name, its place in the tree the folder, so fold0/model.pt and
    fold1/model.pt stay apart. The root's `files` and `directories` go into the request."""
    root = ApiUploadDirectoryInfo()
    folders = {"": root}
    for rel in sorted(tokens):
        *dirs, _ = rel.split("/")
        node, at = root, ""
        for name in dirs:
            at = f"{at}{name}/"
            if at not in folders:
                folders[at] = ApiUploadDirectoryInfo()
                folders[at].name = name
                node.directories.append(folders[at])
            node = folders[at]
        new = ApiDatasetNewFile()
        new.token = tokens[rel]
        node.files.append(new)
    return root


def _log_text(log: str) -> str:
    """A kernel's log as text: Kaggle sends a JSON list of {stream_name, time, data} chunks; a log
    in any other form is kept as it is."""
    try:
        chunks = json.loads(log)
    except ValueError:
        return log
    if not isinstance(chunks, list):
        return log
    return "".join(str(c.get("data", "")) for c in chunks if isinstance(c, dict))

"""Ground floor for the two stages that talk to Kaggle (download, submit): credentials, the
`kagglesdk` client, and one mapping from every HTTP or network failure to a one-line UserError.

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
from kagglesdk.kaggle_env import get_endpoint, get_env
from requests.adapters import HTTPAdapter

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

    `api.competitions` is the SDK's CompetitionApiClient; `call` runs one step with retries on
    429/5xx (waits of backoff_base * 2**i) and turns every failure into one UserError line.
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

    def call(self, what: str, fn: Callable[[], T]) -> T:
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
                raise self._error(what, status, detail) from None
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                raise UserError(
                    f"cannot reach Kaggle at {self.endpoint} during {what} ({_short_reason(e)}): "
                    "check your network connection and retry"
                ) from None
        raise AssertionError("unreachable")

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

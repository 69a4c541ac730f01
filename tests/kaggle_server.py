"""A fake Kaggle API on 127.0.0.1:7777 — where kagglesdk sends requests when
KAGGLE_API_ENVIRONMENT=TEST — speaking the JSON of CompetitionApiService.

`fail[Method] = [429, 429]` answers the next calls of Method with those statuses, then normally;
`fail[Method] = 403` answers every call with 403. Every request lands in `requests`.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

HOST, PORT = "127.0.0.1", 7777
BASE = f"http://{HOST}:{PORT}"
API_PREFIX = "/api/v1/competitions.CompetitionApiService/"


class FakeKaggle:
    def __init__(self, data_zip: bytes = b"") -> None:
        self.data_zip = data_zip
        self.fail: dict[str, int | list[int]] = {}
        self.requests: list[dict] = []  # {"method", "path", "body", "headers"}
        self.uploads: dict[str, bytes] = {}
        self.submissions: list[dict] = []  # ApiSubmission JSON, newest first
        self.lock = threading.Lock()
        self._server: _Server | None = None

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> Self:
        fake = self

        class Handler(_Handler):
            kaggle = fake

        self._server = _Server((HOST, PORT), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def methods(self) -> list[str]:
        return [r["method"] for r in self.requests]

    # -------------------------------------------------------------- behaviour
    def status_for(self, method: str) -> int | None:
        with self.lock:
            f = self.fail.get(method)
            if isinstance(f, list):
                return f.pop(0) if f else None
            return f

    def answer(self, method: str, body: dict) -> tuple[int, dict]:
        if method == "StartSubmissionUpload":
            token = f"blob-{len(self.uploads) + 1}"
            return 200, {"token": token, "createUrl": f"{BASE}/upload/{token}"}
        if method == "CreateSubmission":
            ref = 1000 + len(self.submissions)
            assert body["blobFileTokens"] in self.uploads, "CreateSubmission before the upload"
            self.submissions.insert(0, {
                "ref": ref,
                "description": body.get("submissionDescription", ""),
                "fileName": "submission.csv",
                "status": "PENDING",
            })
            return 200, {"message": "Successfully submitted", "ref": ref}
        if method == "GetSubmissionLimits":
            return 200, {"numToday": len(self.submissions), "numAllowedNow": 5 - len(self.submissions)}
        if method == "ListSubmissions":
            return 200, {"submissions": self.submissions}
        return 404, {"code": 404, "message": f"no fake for {method}"}


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    kaggle: FakeKaggle

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _record(self, method: str, body) -> None:
        self.kaggle.requests.append({"method": method, "path": self.path, "body": body, "headers": dict(self.headers)})

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self) -> None:
        if not self.path.startswith(API_PREFIX):
            self._json(404, {"code": 404, "message": "not found"})
            return
        method = self.path[len(API_PREFIX):]
        raw = self._body()
        body = json.loads(raw) if raw else {}
        self._record(method, body)
        status = self.kaggle.status_for(method)
        if status:
            self._json(status, {"code": status, "message": f"fake {status}"})
        elif method == "DownloadDataFiles":
            # like Kaggle: a redirect to storage, which the SDK's session follows
            self._send(302, b"", "text/plain", {"Location": f"{BASE}/storage/{body['competitionName']}.zip"})
        else:
            self._json(*self.kaggle.answer(method, body))

    def do_GET(self) -> None:
        self._record("GET", None)
        if self.path.startswith("/storage/"):
            self._send(200, self.kaggle.data_zip, "application/zip")
        else:
            self._json(404, {"code": 404, "message": "not found"})

    def do_PUT(self) -> None:
        data = self._body()
        self._record("PUT", data)
        token = self.path.rsplit("/", 1)[-1]
        self.kaggle.uploads[token] = data
        self._send(200, b"", "text/plain")

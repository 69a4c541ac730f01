"""A fake Kaggle API on 127.0.0.1:7777 — where kagglesdk sends requests when
KAGGLE_API_ENVIRONMENT=TEST — speaking the JSON kagglesdk sends to `/api/v1/<service>/<Method>`
of the competitions, blobs, datasets, kernels and OAuth (token lookup) services.

`fail[Method] = [429, 429]` answers the next calls of Method with those statuses, then normally
(a 0 in the list answers that call normally: `[0, 0, 403]` fails the third); `fail[Method] = 403`
answers every call with 403. `fail["PUT"]` does the same for uploads to storage. Every request
lands in `requests`.

Scripted behaviour: `kernels_only` (GetCompetition's isKernelsSubmissionsOnly); `dataset_statuses`
(what GetDatasetStatus answers after each create or version, in turn, then READY);
`kernel_statuses` (what GetKernelSessionStatus answers for each pushed version, in turn, the last
repeating — `kernel_runs` holds what is left of each version's; `failure_message` goes with ERROR); `kernel_log` and `kernel_output` (file name → bytes)
for ListKernelSessionOutput and the storage URLs it lists.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

HOST, PORT = "127.0.0.1", 7777
BASE = f"http://{HOST}:{PORT}"
API_PREFIX = "/api/v1/"


class FakeKaggle:
    def __init__(self, data_zip: bytes = b"") -> None:
        self.data_zip = data_zip
        self.fail: dict[str, int | list[int]] = {}
        self.requests: list[dict] = []  # {"method", "path", "body", "headers"}
        self.uploads: dict[str, bytes] = {}  # token → bytes PUT to its storage URL
        self.submissions: list[dict] = []  # ApiSubmission JSON, newest first
        self.kernels_only = False
        self.username = "alice"  # whose the token is, for IntrospectToken
        self.blobs: dict[str, dict] = {}  # token → StartBlobUpload's body
        self.datasets: dict[str, list[dict[str, bytes]]] = {}  # "owner/slug" → versions: {path: bytes}
        self.dataset_requests: dict[str, list[dict]] = {}  # "owner/slug" → CreateDataset(Version) bodies
        self.dataset_statuses: list[str] = ["BLOBS_RECEIVED", "READY"]
        self._dataset_queue: dict[str, list[str]] = {}
        self.kernels: dict[str, list[dict]] = {}  # "owner/slug" → SaveKernel bodies, one per version
        self.kernel_statuses: list[str] = ["QUEUED", "RUNNING", "COMPLETE"]
        self.kernel_runs: dict[tuple[str, int], list[str]] = {}  # (ref, version) → statuses still to answer
        self.failure_message = ""
        self.kernel_log = ""
        self.kernel_output: dict[str, bytes] = {}
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
        for handler in (self._competitions, self._datasets, self._kernels):
            answered = handler(method, body)
            if answered is not None:
                return answered
        return 404, {"code": 404, "message": f"no fake for {method}"}

    def _competitions(self, method: str, body: dict) -> tuple[int, dict] | None:
        if method == "GetCompetition":
            return 200, {"ref": body["competitionName"], "title": body["competitionName"],
                         "isKernelsSubmissionsOnly": self.kernels_only}
        if method == "IntrospectToken":
            return 200, {"active": True, "username": self.username}
        if method == "StartSubmissionUpload":
            token = f"blob-{len(self.uploads) + 1}"
            return 200, {"token": token, "createUrl": f"{BASE}/upload/{token}"}
        if method == "CreateSubmission":
            assert body["blobFileTokens"] in self.uploads, "CreateSubmission before the upload"
            return 200, self._submitted(body, "submission.csv")
        if method == "CreateCodeSubmission":
            ref = f"{body['kernelOwner']}/{body['kernelSlug']}"
            version = int(body.get("kernelVersion") or 0)
            if ref not in self.kernels or not 1 <= version <= len(self.kernels[ref]):
                return 404, {"code": 404, "message": f"no kernel {ref} version {version}"}
            return 200, self._submitted(body, body.get("fileName", ""))
        if method == "GetSubmissionLimits":
            return 200, {"numToday": len(self.submissions), "numAllowedNow": 5 - len(self.submissions)}
        if method == "ListSubmissions":
            return 200, {"submissions": self.submissions}
        return None

    def _submitted(self, body: dict, file_name: str) -> dict:
        ref = 1000 + len(self.submissions)
        self.submissions.insert(0, {
            "ref": ref,
            "description": body.get("submissionDescription", ""),
            "fileName": file_name,
            "status": "PENDING",
        })
        return {"message": "Successfully submitted", "ref": ref}

    def _datasets(self, method: str, body: dict) -> tuple[int, dict] | None:
        if method == "StartBlobUpload":
            token = f"dataset-blob-{len(self.blobs) + 1}"
            self.blobs[token] = body
            return 200, {"token": token, "createUrl": f"{BASE}/upload/{token}"}
        if method == "GetDatasetStatus":
            ref = f"{body['ownerSlug']}/{body['datasetSlug']}"
            if ref not in self.datasets:
                return 404, {"code": 404, "message": f"no dataset {ref}"}
            queue = self._dataset_queue[ref]
            return 200, {"status": queue.pop(0) if queue else "READY"}
        if method in ("CreateDataset", "CreateDatasetVersion"):
            new = method == "CreateDataset"
            ref = f"{body['ownerSlug']}/{body['slug' if new else 'datasetSlug']}"
            if new and ref in self.datasets:
                return 200, {"status": "error", "error": f"The requested slug \"{ref}\" is already in use"}
            if not new and ref not in self.datasets:
                return 404, {"code": 404, "message": f"no dataset {ref}"}
            content = body if new else body["body"]
            files: dict[str, bytes] = {}
            missing = self._collect(content, "", files)
            if missing:
                return 400, {"code": 400, "message": f"unknown blob token {missing[0]}"}
            self.datasets.setdefault(ref, []).append(files)
            self.dataset_requests.setdefault(ref, []).append(body)
            self._dataset_queue[ref] = list(self.dataset_statuses)
            return 200, {"ref": ref, "url": f"{BASE}/datasets/{ref}", "status": "ok"}
        return None

    def _collect(self, node: dict, prefix: str, files: dict[str, bytes]) -> list[str]:
        """The files of an ApiUploadDirectoryInfo-shaped node (files + directories), by path."""
        missing = []
        for f in node.get("files", []):
            token = f["token"]
            if token not in self.uploads or token not in self.blobs:
                missing.append(token)
                continue
            files[prefix + self.blobs[token]["name"]] = self.uploads[token]
        for d in node.get("directories", []):
            missing += self._collect(d, f"{prefix}{d['name']}/", files)
        return missing

    def _kernels(self, method: str, body: dict) -> tuple[int, dict] | None:
        if method == "SaveKernel":
            ref = body["slug"]
            bad = [s for s in body.get("datasetDataSources", []) if s not in self.datasets]
            if bad:
                return 200, {"error": "invalid dataset sources", "invalidDatasetSources": bad}
            versions = self.kernels.setdefault(ref, [])
            versions.append(body)
            self.kernel_runs[(ref, len(versions))] = list(self.kernel_statuses)
            return 200, {"ref": f"/code/{ref}", "url": f"{BASE}/code/{ref}", "versionNumber": len(versions)}
        if method in ("GetKernelSessionStatus", "ListKernelSessionOutput"):
            ref = f"{body['userName']}/{body['kernelSlug']}"
            label = body.get("versionLabel", "")
            version = int(label[1:]) if label.startswith("v") else len(self.kernels.get(ref, []))
            if (ref, version) not in self.kernel_runs:
                return 404, {"code": 404, "message": f"no kernel {ref} {label}"}
            if method == "ListKernelSessionOutput":
                return 200, {"log": self.kernel_log, "files": [
                    {"fileName": name, "url": f"{BASE}/storage/kernel-output/{ref}/{version}/{name}"}
                    for name in self.kernel_output]}
            queue = self.kernel_runs[(ref, version)]
            status = queue.pop(0) if len(queue) > 1 else queue[0]
            answer = {"status": status}
            if status == "ERROR" and self.failure_message:
                answer["failureMessage"] = self.failure_message
            return 200, answer
        return None


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
        if not self.path.startswith(API_PREFIX) or self.path.count("/") != 4:
            self._json(404, {"code": 404, "message": "not found"})
            return
        method = self.path.rsplit("/", 1)[-1]
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
        output = "/storage/kernel-output/"
        if self.path.startswith(output):
            name = self.path.rsplit("/", 1)[-1]
            if name in self.kaggle.kernel_output:
                self._send(200, self.kaggle.kernel_output[name], "text/csv")
            else:
                self._json(404, {"code": 404, "message": "not found"})
        elif self.path.startswith("/storage/"):
            self._send(200, self.kaggle.data_zip, "application/zip")
        else:
            self._json(404, {"code": 404, "message": "not found"})

    def do_PUT(self) -> None:
        data = self._body()
        self._record("PUT", data)
        status = self.kaggle.status_for("PUT")
        if status:
            self._send(status, b"", "text/plain")
            return
        token = self.path.rsplit("/", 1)[-1]
        self.kaggle.uploads[token] = data
        self._send(200, b"", "text/plain")

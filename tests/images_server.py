"""A local image host on 127.0.0.1 (a free port) for the URL-list download tests.

`ImageHost(files)` serves each path of `files` ({path: (body, content type)}) and answers 404 to
any other; a path in `slow` never answers until the host closes (a client must time out); a path
in `flaky` answers 503 that many times first. Every request's path lands in `requests`.
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class ImageHost:
    def __init__(self, files: dict[str, tuple[bytes, str]], slow: set[str] = frozenset(),
                 flaky: dict[str, int] | None = None) -> None:
        self.files = dict(files)
        self.slow = set(slow)
        self.flaky = dict(flaky or {})
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/{path}"

    def __enter__(self) -> Self:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.lstrip("/")
                with host.lock:
                    host.requests.append(path)
                    failing = host.flaky.get(path, 0)
                    if failing:
                        host.flaky[path] = failing - 1
                if path in host.slow:
                    host.closing.wait(60)  # holds the connection open past any client timeout
                    return
                if failing:
                    return self._send(503, b"busy", "text/plain")
                if path not in host.files:
                    return self._send(404, b"not found", "text/html")
                self._send(200, *host.files[path])

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # quiet test output
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True  # a slow handler must not hold the test at close
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()

    def fetched(self) -> list[str]:
        with self.lock:
            return list(self.requests)

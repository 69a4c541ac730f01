"""Images from a URL list (the product-photo case): concurrent, resumable, with timeouts,
retries with backoff and a size cap per file.

Used by `make download` for a competition whose image column holds URLs (`inputs.image.urls`).
Each URL's image lands in `folder/<url_stem><suffix>` (the suffix read from the file's first
bytes). A file already there is kept, so a rerun after a kill or a refused download fetches only
what is missing. Bytes go to `<stem>.tmp` and take their final name only once they decode as an
image (`image.decode.open_rgb`): a half-fetched or broken file never looks fetched. The caller
removes the `*.tmp` a killed run left, under its stage lock.

Broken links, timeouts, oversized files and non-images are outcomes, never exceptions: the
caller lists them and decides whether too many are missing.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from collections.abc import Iterable
from urllib.parse import urlsplit

import requests

from medalist.core.competition import UrlImages
from medalist.core.image_layouts import url_stem
from medalist.core.progress import progress
from medalist.image.decode import open_rgb

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}  # the host may answer later; a 404 will not change
USER_AGENT = "medalist-image-download/1.0"  # some image hosts refuse requests without one
CHUNK = 1 << 16
# first bytes → suffix; the name only helps a person browsing the folder, decoding reads the bytes
MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
         (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


@dataclasses.dataclass(frozen=True)
class Fetched:
    """What became of one URL: status ok (fetched now), kept (fetched by an earlier run), or why not:
    http_error, timeout, too_large, not_an_image, bad_url, network_error."""

    status: str
    reason: str = ""
    file: str = ""  # the image's name in the folder, when there is one

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "kept")


def fetch_images(urls: Iterable[str], folder: Path, cfg: UrlImages, desc: str = "fetching images") -> dict[str, Fetched]:
    """Every distinct URL's outcome; its image (when there is one) is `folder / outcome.file`."""
    folder.mkdir(parents=True, exist_ok=True)
    have = {p.stem: p.name for p in folder.iterdir() if p.is_file() and p.suffix != ".tmp"}
    out: dict[str, Fetched] = {}
    todo = []
    for url in dict.fromkeys(urls):
        name = have.get(url_stem(url))
        if name:
            out[url] = Fetched("kept", file=name)
        else:
            todo.append(url)
    if not todo:
        return out
    local, sessions = threading.local(), []

    def session() -> requests.Session:  # one per thread: a Session is not safe to share
        if not hasattr(local, "s"):
            local.s = requests.Session()
            local.s.headers["User-Agent"] = USER_AGENT
            sessions.append(local.s)
        return local.s

    pool = ThreadPoolExecutor(max_workers=min(cfg.workers, len(todo)))
    try:
        futures = {pool.submit(_fetch_one, session, url, folder, cfg): url for url in todo}
        with progress(total=len(todo), desc=desc, unit="img") as bar:
            for fut in as_completed(futures):
                out[futures[fut]] = fut.result()
                bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: no thread keeps writing after we return
        for s in sessions:
            s.close()
    return out


def _fetch_one(session, url: str, folder: Path, cfg: UrlImages) -> Fetched:
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        return Fetched("bad_url", "not an http(s) URL")
    stem = url_stem(url)
    tmp = folder / f"{stem}.tmp"
    try:
        for attempt in range(cfg.retries + 1):
            if attempt:
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            result, retry = _try(session(), url, tmp, cfg)
            if not retry:
                break
        if result.status != "ok":
            tries = f" ({attempt + 1} tries)" if attempt else ""
            return dataclasses.replace(result, reason=result.reason + tries)
        if open_rgb(tmp) is None:
            return Fetched("not_an_image", f"does not decode as an image (Content-Type {result.reason or '?'})")
        name = stem + _suffix(tmp)
        os.replace(tmp, folder / name)
        return Fetched("ok", file=name)
    finally:
        tmp.unlink(missing_ok=True)


def _try(session: requests.Session, url: str, tmp: Path, cfg: UrlImages) -> tuple[Fetched, bool]:
    """One GET into `tmp`: (outcome, whether trying again may help). An ok outcome's reason is
    the Content-Type, for the message when the bytes turn out not to be an image."""
    cap = int(cfg.max_mb * (1 << 20))
    too_large = Fetched("too_large", f"over max_mb {cfg.max_mb:g}")
    start = time.monotonic()
    try:
        # (connect, read) timeouts bound each wait; the clock below bounds a host that trickles
        with session.get(url, stream=True, timeout=(cfg.timeout_s, cfg.timeout_s)) as r:
            if not 200 <= r.status_code < 300:
                return Fetched("http_error", f"HTTP {r.status_code}"), r.status_code in RETRY_STATUS
            if int(r.headers.get("Content-Length") or 0) > cap:
                return too_large, False
            got = 0
            with open(tmp, "wb") as f:
                for chunk in r.iter_content(CHUNK):
                    got += len(chunk)
                    if got > cap:
                        return too_large, False
                    if time.monotonic() - start > cfg.timeout_s:
                        return Fetched("timeout", f"not complete within {cfg.timeout_s:g} s"), True
                    f.write(chunk)
            return Fetched("ok", r.headers.get("Content-Type", "")), False
    except requests.exceptions.Timeout:
        return Fetched("timeout", f"no answer within {cfg.timeout_s:g} s"), True
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema):
        return Fetched("bad_url", "not a valid URL"), False
    except requests.exceptions.RequestException as e:  # refused, reset, DNS, a read timeout mid-body
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return Fetched("network_error", first), True


def _suffix(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in MAGIC if head.startswith(magic)), ".img")

"""The OpenAI-compatible chat server that `generate` asks (vLLM, llama.cpp, Ollama …): the
client, our retries, and a JSONL cache of every request and answer.

Env:    OPENAI_BASE_URL (default http://localhost:8000/v1), OPENAI_API_KEY (default EMPTY); the
        key is sent to the server and never logged or cached.
Cache:  one JSON line per answered request — key (sha256 of the exact request body), request,
        response (content, finish_reason, usage), meta (what the caller wants to remember) —
        appended as answers arrive, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Protocol, Sequence

import openai

from medalist.core.config import UserError
from medalist.core.progress import progress

DEFAULT_BASE_URL = "http://localhost:8000/v1"
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def request_key(body: dict) -> str:
    """The cache key of a request: the same body always gets the same answer from the cache."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CachedRequest(Protocol):
    key: str  # request_key(body)
    body: dict  # exactly what is sent: model, messages, sampling settings
    meta: dict  # stored beside the answer


# ---------------------------------------------------------------- cache


def read_cache(path: Path) -> dict[str, dict]:
    """key → cached entry; a line cut short by an interrupted run is ignored."""
    out = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                out[entry["key"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return out


def append_cache(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(f.tell() - 1)
            if f.read(1) != "\n":  # the previous run died mid-line
                f.write("\n")
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        f.flush()


# ---------------------------------------------------------------- calling the server


class LLMClient:
    """The server named by the environment; `complete` is one chat completion with exponential
    backoff on 429, 5xx and timeouts, and one line for what the user must fix."""

    def __init__(self, timeout: float, retries: int, retry_base_delay: float):
        self.base_url = os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self.timeout, self.retries, self.retry_base_delay = timeout, retries, retry_base_delay
        key = os.environ.get("OPENAI_API_KEY") or "EMPTY"
        # Our own retries (below) know which errors are worth retrying and log nothing secret.
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=timeout)

    def complete(self, body: dict) -> dict:
        base_url = self.base_url
        for attempt in range(self.retries + 1):
            try:
                resp = self._client.chat.completions.create(**body)
                usage = resp.usage.model_dump() if resp.usage else {}
                return {"content": resp.choices[0].message.content or "",
                        "finish_reason": resp.choices[0].finish_reason,
                        "usage": {k: usage.get(k) or 0 for k in USAGE_KEYS}}
            except openai.APITimeoutError:
                err = f"timed out after {self.timeout:g}s"
            except openai.APIConnectionError:
                raise UserError(f"cannot reach the LLM server at {base_url}: start it or set OPENAI_BASE_URL") from None
            except openai.APIStatusError as e:
                if e.status_code in (401, 403):
                    raise UserError(f"the LLM server at {base_url} refused the API key ({e.status_code}): "
                                    "set OPENAI_API_KEY") from None
                if e.status_code == 404:
                    raise UserError(f"the LLM server at {base_url} does not serve model '{body['model']}' (404): "
                                    "fix `model` in configs/generate.yaml") from None
                if e.status_code != 429 and e.status_code < 500:
                    raise UserError(f"the LLM server at {base_url} rejected the request ({e.status_code}): "
                                    f"{_one_line(e.message)}") from None
                err = f"HTTP {e.status_code}"
            if attempt < self.retries:
                time.sleep(self.retry_base_delay * 2 ** attempt)
        raise UserError(f"the LLM server at {base_url} kept failing ({err}) after {self.retries} retries; "
                        "try again later")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:200]


def fetch(client: LLMClient, requests: Sequence[CachedRequest], cache_path: Path, concurrency: int,
          desc: str) -> tuple[dict[str, dict], dict]:
    """Answers for every request, from the cache or the server (`concurrency` in flight); new
    answers are appended to the cache as they arrive. Returns the cache and what was sent."""
    cache = read_cache(cache_path)
    todo = [r for r in requests if r.key not in cache]
    todo = list({r.key: r for r in todo}.values())
    sent = {"requests_planned": len(requests), "requests_cached": len(requests) - len(todo), "requests_sent": 0,
            "usage_sent": dict.fromkeys(USAGE_KEYS, 0)}
    if todo:
        print(f"{desc}: {len(todo)} requests to {client.base_url} ({sent['requests_cached']} cached)")

        def keep(r: CachedRequest, response: dict) -> None:
            entry = {"key": r.key, "request": r.body, "response": response, "meta": r.meta}
            append_cache(cache_path, entry)
            cache[r.key] = entry
            sent["requests_sent"] += 1
            for k, v in response["usage"].items():
                sent["usage_sent"][k] += v

        # The first request alone: a wrong key or a dead server is one line, before any bar.
        keep(todo[0], client.complete(todo[0].body))
        with cf.ThreadPoolExecutor(concurrency) as pool:
            futures = {pool.submit(client.complete, r.body): r for r in todo[1:]}
            try:
                for fut in progress(cf.as_completed(futures), total=len(todo), initial=1, desc=desc, unit="req"):
                    keep(futures[fut], fut.result())
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    return cache, sent

"""One small client for OpenAI-compatible chat-completion endpoints (judges, interviewer, other character,
data synthesis).

    client = ChatClient("http://localhost:8000/v1", "gpt-4o-mini", cache_dir=".cache/llm")
    texts = client.complete(messages, temperature=0.7, max_tokens=200, n=5)
    verdict = client.complete_json(messages, parse_verdict, temperature=0.0, max_tokens=50)

- Transport: plain `httpx` (not the `openai` SDK) so that retries, backoff and timeouts are ours alone and
  exactly as documented here; the SDK would add its own retry layer and typed objects we do not need.
- Retries: 429, 5xx, connection errors, timeouts and a 200 whose body is not JSON are retried with
  exponential backoff (a `Retry-After` header is honoured, capped at `max_backoff`), at most `max_retries`
  times. Other 4xx (401, 404, 400) fail at once with the server's message. Every request has a bounded
  `timeout`, so a call takes at most about (max_retries + 1) x (timeout + max_backoff).
- Strict JSON: `complete_json` takes the reply as one JSON object, optionally inside a single ```json fence,
  nothing else is guessed; `parse` (raising ValueError on a bad shape) turns it into the caller's type. A
  malformed reply is resampled up to `attempts` times, then `MalformedReply` carries every raw reply so the
  caller counts and reports the failure.
- Cache: with `cache_dir`, each sample is stored under a hash of (base_url, model, messages, sampling
  parameters, sample index, attempt), written atomically (temp file + rename). A rerun with the same
  requests is answered from disk without a request, so it is reproducible and free.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class LLMError(RuntimeError):
    """Base of every error this client raises."""


class EndpointError(LLMError):
    """The endpoint could not give an answer: unreachable, refused (401, 404, ...) or retries exhausted."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class EmptyReply(LLMError):
    """The model answered with no choices or an empty message."""


class MalformedReply(LLMError):
    """Every attempt of `complete_json` gave a reply that is not the JSON the caller asked for."""

    def __init__(self, message: str, raw_replies: list[str], errors: list[str]):
        super().__init__(message)
        self.raw_replies, self.errors = raw_replies, errors


def extract_json_object(text: str) -> dict:
    """The JSON object a reply consists of: bare, or inside one ```json (or ```) fence. Raises ValueError."""
    body = text.strip()
    if body.startswith("```"):
        first_line, _, rest = body.partition("\n")
        if first_line.strip() not in ("```", "```json") or not rest.rstrip().endswith("```"):
            raise ValueError("reply has an unclosed or unknown code fence")
        body = rest.rstrip()[:-3].strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as err:
        raise ValueError(f"reply is not a JSON object: {err.msg} at char {err.pos}") from None
    if not isinstance(value, dict):
        raise ValueError(f"reply is JSON but a {type(value).__name__}, not an object")
    return value


class ChatClient:
    """Chat completions against one model of one OpenAI-compatible endpoint; safe to share between threads."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 5, cache_dir: str | Path | None = None, backoff: float = 1.0,
                 max_backoff: float = 30.0):
        self.base_url, self.model = base_url.rstrip("/"), model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")  # local servers: none
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.stats: Counter = Counter()  # requests, retries (by reason), cache_hits
        self._stats_lock = threading.Lock()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), headers=headers)

    # --- public ---------------------------------------------------------------------------------
    def complete(self, messages: Sequence[dict], *, temperature: float, max_tokens: int, n: int = 1,
                 seed: int | None = None) -> list[str]:
        """`n` sampled reply texts. Cached samples are reused; only the missing ones are requested."""
        return self._samples(messages, temperature, max_tokens, seed, list(range(n)), attempt=0)

    def complete_json(self, messages: Sequence[dict], parse: Callable[[dict], T], *, temperature: float,
                      max_tokens: int, attempts: int = 3, seed: int | None = None, sample: int = 0) -> T:
        """`parse(object)` of the reply's JSON object. A reply that is not one JSON object, or that `parse`
        rejects with ValueError, is resampled (a new cache entry per attempt) up to `attempts` times; then
        `MalformedReply` with all raw replies. `sample` numbers independent answers (majority votes)."""
        raws, errors = [], []
        for attempt in range(attempts):
            try:
                raw = self._samples(messages, temperature, max_tokens, seed, [sample], attempt)[0]
            except EmptyReply as err:
                raws.append("")
                errors.append(f"empty reply: {err}")
                continue
            raws.append(raw)
            try:
                return parse(extract_json_object(raw))
            except ValueError as err:
                errors.append(str(err))
        raise MalformedReply(f"{self.model} gave no valid JSON answer in {attempts} attempts; last error: "
                             f"{errors[-1]}", raws, errors)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- requests and cache ---------------------------------------------------------------------
    def _samples(self, messages, temperature, max_tokens, seed, indices: list[int], attempt: int) -> list[str]:
        params = {"model": self.model, "messages": list(messages), "temperature": temperature,
                  "max_tokens": max_tokens, "seed": seed}
        keys = {i: self._cache_key(params, i, attempt) for i in indices}
        found = {i: self._cache_get(keys[i]) for i in indices}
        missing = [i for i in indices if found[i] is None]
        self._count("cache_hits", len(indices) - len(missing))
        if missing:
            body = {k: v for k, v in params.items() if v is not None}
            body["n"] = len(missing)
            if seed is not None:  # another sample or a retry must not replay the same seeded answer
                body["seed"] = seed + missing[0] + 10_000 * attempt
            for i, text in zip(missing, self._request(body)):
                self._cache_put(keys[i], params, i, attempt, text)
                found[i] = text
        return [found[i] for i in indices]

    def _request(self, body: dict) -> list[str]:
        url = f"{self.base_url}/chat/completions"
        problem = ""
        for retry in range(self.max_retries + 1):
            self._count("requests")
            try:
                response = self._http.post(url, json=body)
            except httpx.TimeoutException:
                reason, problem, delay = "timeout", f"no answer within {self._http.timeout.read}s", None
            except httpx.TransportError as err:
                reason, problem, delay = "connection", f"cannot reach {url}: {err!r}", None
            else:
                if response.status_code == 200:
                    try:
                        return self._contents(response.json(), body["n"])
                    except json.JSONDecodeError:
                        reason, delay = "body not JSON", None
                        problem = f"HTTP 200 with a body that is not JSON: {response.text[:200]!r}"
                elif response.status_code in RETRYABLE_STATUS:
                    reason, delay = f"HTTP {response.status_code}", _retry_after(response)
                    problem = f"HTTP {response.status_code}: {_server_message(response)}"
                else:
                    raise EndpointError(self._refusal(response), response.status_code)
            if retry < self.max_retries:
                self._count("retries")
                self._count(f"retry: {reason}")
                time.sleep(self._delay(retry, delay))
        raise EndpointError(f"{self.model} at {self.base_url}: gave up after {self.max_retries + 1} attempts; "
                            f"last: {problem}")

    def _contents(self, data: dict, n: int) -> list[str]:
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices:
            raise EmptyReply(f"{self.model} at {self.base_url} returned no choices")
        texts = [(c.get("message") or {}).get("content") for c in sorted(choices, key=lambda c: c.get("index", 0))]
        if len(texts) < n or any(not t for t in texts):
            raise EmptyReply(f"{self.model} at {self.base_url} returned an empty message "
                             f"({len(texts)} choices for n={n})")
        return texts[:n]

    def _refusal(self, response: httpx.Response) -> str:
        where = f"{self.model} at {self.base_url}"
        if response.status_code == 401:
            hint = "set OPENAI_API_KEY" if not self.api_key else "the API key in use was refused"
            return f"{where}: HTTP 401 unauthorized ({hint}): {_server_message(response)}"
        return f"{where}: HTTP {response.status_code}: {_server_message(response)}"

    def _delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        # Jitter keeps many worker threads from retrying in lock step after a shared 429.
        return random.uniform(0.5, 1.0) * min(self.backoff * 2 ** retry, self.max_backoff)

    def _cache_key(self, params: dict, index: int, attempt: int) -> str:
        key = json.dumps({"base_url": self.base_url, **params, "sample": index, "attempt": attempt},
                         sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(key.encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> str | None:
        if self.cache_dir is None:
            return None
        try:
            return json.loads(self._cache_path(key).read_text(encoding="utf-8"))["content"]
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def _cache_put(self, key: str, params: dict, index: int, attempt: int, text: str) -> None:
        if self.cache_dir is None:
            return
        path = self._cache_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"request": {"base_url": self.base_url, **params, "sample": index, "attempt": attempt},
                 "content": text}
        # Temp file in the same folder, then rename: readers see the old state or the whole entry.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as f:
            json.dump(entry, f, ensure_ascii=False)
        os.replace(f.name, path)

    def _count(self, what: str, k: int = 1) -> None:
        if k:
            with self._stats_lock:
                self.stats[what] += k


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _server_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        return str(error.get("message") if isinstance(error, dict) else error)
    except (ValueError, AttributeError):
        return response.text[:200]

"""One small client for OpenAI-compatible chat-completion endpoints (judges, interviewer, other character,
data synthesis).

    client = ChatClient("http://localhost:8000/v1", "gpt-4o-mini", cache_dir=".cache/llm")
    texts = client.complete(messages, temperature=0.7, max_tokens=200, n=5)
    verdict = client.complete_json(messages, parse_verdict, temperature=0.0, max_tokens=50)

- Transport: the official `openai` SDK. It retries 408, 409, 429, 5xx, connection errors and timeouts with
  exponential backoff and jitter (0.5 s doubling up to 8 s), honours `Retry-After` up to two minutes (a
  longer one is not waited for), bounds every request by `timeout`, and raises typed errors. At most
  `max_retries` retries. Other 4xx (401, 404, 400) fail at once; every failure becomes an `EndpointError`
  naming the model, the endpoint and the server's message, with `status` set only for a refusal (a 4xx
  not worth retrying), so callers can stop a run on a wrong key or model.
- Strict JSON: `complete_json` asks for a JSON object (`response_format`, dropped for good on an endpoint that
  refuses it) and takes the reply as one JSON object, optionally inside a single ```json fence; nothing
  else is guessed; `parse` (raising ValueError on a bad shape) turns it into the caller's type. A
  malformed reply is resampled up to `attempts` times, then `MalformedReply` carries every raw reply so the
  caller counts and reports the failure.
- Cache: with `cache_dir`, each sample is stored under a hash of (base_url, model, messages, sampling
  parameters, sample index, attempt), written atomically (temp file + rename). A rerun with the same
  requests is answered from disk without a request, so it is reproducible and free.
- `stats`: requests sent, `retries`, `retry: <reason>` (`HTTP 429`, ..., or `no response` for a timeout
  or a connection error), `cache_hits`.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import openai

from . import environment

T = TypeVar("T")
# The SDK insists on a key; local servers ignore the one it sends when none is set.
PLACEHOLDER_KEY = "none"
RETRIED_STATUS = {408, 409, 429}  # and 5xx: what the SDK retries; any other status is a refusal


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
                 max_retries: int = 5, cache_dir: str | Path | None = None):
        self.base_url, self.model = base_url.rstrip("/"), model
        self.api_key = api_key if api_key is not None else environment.OPENAI_API_KEY  # local servers: none
        self.timeout, self.max_retries = timeout, max_retries
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.stats: Counter = Counter()
        self._stats_lock = threading.Lock()
        self._attempt = threading.local()  # what the previous attempt of this thread's call got, for `stats`
        self._json_mode = True  # until the endpoint refuses `response_format`
        http = openai.DefaultHttpx2Client(event_hooks={"request": [self._on_request],
                                                       "response": [self._on_response]})
        self._sdk = openai.OpenAI(base_url=self.base_url, api_key=self.api_key or PLACEHOLDER_KEY,
                                  timeout=timeout, max_retries=max_retries, http_client=http)

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
                raw = self._samples(messages, temperature, max_tokens, seed, [sample], attempt, json_object=True)[0]
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
        self._sdk.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- requests and cache ---------------------------------------------------------------------
    def _samples(self, messages, temperature, max_tokens, seed, indices: list[int], attempt: int,
                 json_object: bool = False) -> list[str]:
        # The cache key leaves `response_format` out: it constrains the form of the same request, and
        # entries written before it was sent stay valid.
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
            for i, text in zip(missing, self._request(body, json_object)):
                self._cache_put(keys[i], params, i, attempt, text)
                found[i] = text
        return [found[i] for i in indices]

    def _request(self, body: dict, json_object: bool) -> list[str]:
        self._attempt.number, self._attempt.outcome = 0, None
        if json_object and self._json_mode:
            try:
                return self._create(body | {"response_format": {"type": "json_object"}})
            except EndpointError as err:
                if err.status != 400 or "response_format" not in str(err):
                    raise
                self._json_mode = False  # this endpoint cannot constrain the form; the prompt asks for JSON
        return self._create(body)

    def _create(self, body: dict) -> list[str]:
        where = f"{self.model} at {self.base_url}"
        try:
            completion = self._sdk.chat.completions.create(**body)
        except openai.APIStatusError as err:
            message = f"HTTP {err.status_code}: {_server_message(err)}"
            if err.status_code in RETRIED_STATUS or err.status_code >= 500:  # the SDK's retries ran out
                raise EndpointError(f"{where}: {self._gave_up()}; last: {message}") from None
            if err.status_code == 401:
                hint = "set OPENAI_API_KEY" if not self.api_key else "the API key in use was refused"
                message = f"HTTP 401 unauthorized ({hint}): {_server_message(err)}"
            raise EndpointError(f"{where}: {message}", err.status_code) from None
        except openai.APITimeoutError:
            raise EndpointError(f"{where}: {self._gave_up()}; last: no answer within {self.timeout}s") from None
        except openai.APIConnectionError as err:
            raise EndpointError(f"{where}: {self._gave_up()}; last: cannot reach {self.base_url}: "
                                f"{err.__cause__!r}") from None
        except json.JSONDecodeError:
            raise EndpointError(f"{where}: HTTP 200 with a body that is not JSON") from None
        texts = [c.message.content for c in sorted(completion.choices or [], key=lambda c: c.index)]
        if not texts:
            raise EmptyReply(f"{where} returned no choices")
        if len(texts) < body["n"] or any(not t for t in texts):
            raise EmptyReply(f"{where} returned an empty message ({len(texts)} choices for n={body['n']})")
        return texts[:body["n"]]

    def _gave_up(self) -> str:
        return f"gave up after {self._attempt.number} attempts"

    def _on_request(self, request) -> None:
        # The SDK numbers its attempts in a header; a retry is counted with what the attempt before it got.
        number = int(request.headers.get("x-stainless-retry-count", "0"))
        self._attempt.number = number + 1
        self._count("requests")
        if number:
            self._count("retries")
            self._count(f"retry: {getattr(self._attempt, 'outcome', None) or 'no response'}")
        self._attempt.outcome = None

    def _on_response(self, response) -> None:
        self._attempt.outcome = None if response.status_code < 400 else f"HTTP {response.status_code}"

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


def _server_message(err: openai.APIStatusError) -> str:
    """The server's own words: the `error.message` of an OpenAI-style body, else the start of the body."""
    body = err.body
    if isinstance(body, dict):
        return str(body.get("message", body))
    return str(body) if body is not None else err.response.text[:200]

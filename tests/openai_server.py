"""A local HTTP server speaking the OpenAI chat-completions protocol, scripted per test.

Tests of everything that calls an OpenAI-compatible endpoint (judges, interviewer, other character, data
synthesis) run against this server instead of a mock of our own code, so the real HTTP client, its retries,
timeouts and parsing are exercised.

    with OpenAIServer(responder=lambda request: "hello") as server:
        client = ChatClient(server.base_url, "test-model")
        ...
        assert len(server.requests) == 1

Behaviour per request, in this order:
1. if scripted faults are queued (`server.script(...)`), the next one is answered and removed;
2. otherwise `responder(request_json)` answers: a `str` (every one of the `n` choices), a `list[str]`
   (one entry per choice), or a `Reply` (full control: status, headers, raw body, delay).
Faults: `Reply.rate_limited(retry_after)`, `Reply.error(status)`, `Reply.malformed_body()` (HTTP 200 whose body
is not JSON), `Reply(content="not what you asked for")` (valid protocol, content malformed for the caller),
`Reply.slow(seconds, content)` (longer than the client's timeout). Every request is recorded in
`server.requests` (path, headers, parsed JSON body) before it is answered.
"""
from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

import pytest

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")


@dataclass
class Reply:
    """One scripted answer. `content` None means "use the responder" only for `delay`-only replies built by
    `Reply.slow(seconds)`; a list gives one choice per entry (an empty list: a reply with no choices)."""

    content: str | list[str] | None = None
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: str | None = None  # a raw body sent as is, overriding everything else
    delay: float = 0.0  # seconds to wait before answering
    finish_reason: str = "stop"

    @classmethod
    def rate_limited(cls, retry_after: float | None = 0) -> Reply:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls(status=429, headers=headers, body=json.dumps({"error": {"message": "Rate limit reached",
                                                                           "type": "requests"}}))

    @classmethod
    def error(cls, status: int = 500, message: str = "server error") -> Reply:
        return cls(status=status, body=json.dumps({"error": {"message": message, "type": "server_error"}}))

    @classmethod
    def malformed_body(cls) -> Reply:
        return cls(body="<html>this is not JSON")

    @classmethod
    def slow(cls, seconds: float, content: str | None = None) -> Reply:
        return cls(content=content, delay=seconds)


class Request(NamedTuple):
    path: str
    headers: dict
    json: dict | None  # None when the body was not JSON


def default_responder(request: dict) -> list[str]:
    """Echo the last message, numbered per choice, so samples differ."""
    last = (request.get("messages") or [{}])[-1].get("content", "")
    return [f"echo {i}: {last}" for i in range(int(request.get("n") or 1))]


class OpenAIServer:
    """Threaded chat-completions server on 127.0.0.1 (a free port). `api_key` set: other keys get a 401."""

    def __init__(self, responder: Callable[[dict], str | list[str] | Reply] = default_responder,
                 faults: tuple = (), api_key: str | None = None):
        self.responder, self.api_key = responder, api_key
        self.requests: list[Request] = []
        self._faults: list[Reply] = list(faults)
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True  # a handler still sleeping in a delay must not block shutdown
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def script(self, *faults: Reply) -> None:
        """Queue answers that take precedence over the responder, first in first out."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def chat_requests(self) -> list[dict]:
        """The JSON bodies of the chat-completion requests received so far."""
        return [r.json for r in self.requests if r.path in CHAT_PATHS and r.json is not None]

    def start(self) -> OpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Reply(status=401, body=json.dumps({"error": {"message": "Incorrect API key provided"}}))
        if request.path not in CHAT_PATHS:
            return Reply(status=404, body=json.dumps({"error": {"message": f"no route {request.path}"}}))
        if request.json is None:
            return Reply(status=400, body=json.dumps({"error": {"message": "request body is not JSON"}}))
        with self._lock:
            scripted = self._faults.pop(0) if self._faults else None
        if scripted is not None and (scripted.content is not None or scripted.body is not None):
            return scripted
        reply = self.responder(request.json)
        if not isinstance(reply, Reply):
            reply = Reply(content=reply)
        if scripted is not None:  # a delay-only fault wraps the responder's answer
            reply.delay += scripted.delay
        return reply

    def _body(self, request: dict, reply: Reply) -> str:
        n = int(request.get("n") or 1)
        contents = [reply.content] * n if isinstance(reply.content, str) else list(reply.content or [])
        choices = [{"index": i, "message": {"role": "assistant", "content": c}, "logprobs": None,
                    "finish_reason": reply.finish_reason} for i, c in enumerate(contents)]
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
        completion_tokens = sum(len(c.split()) for c in contents)
        return json.dumps({"id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion",
                           "created": int(time.time()), "model": request.get("model", ""), "choices": choices,
                           "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                     "total_tokens": prompt_tokens + completion_tokens}})


def _handler_for(server: OpenAIServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            reply = server._answer(request)
            if reply.delay:
                time.sleep(reply.delay)
            payload = (reply.body if reply.body is not None else server._body(body, reply)).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): nothing to answer

        def log_message(self, *args):  # keep test output clean
            pass

    return Handler


@pytest.fixture
def openai_server():
    """A started `OpenAIServer` with the echo responder; set `.responder` or `.script(...)` per test."""
    with OpenAIServer() as server:
        yield server

"""ChatClient against the local chat-completions server: the SDK's retries and timeouts as we rely on them,
our errors, strict JSON, the cache."""
from __future__ import annotations

import json
import socket
import time

import pytest

from hirpf.llm_client import ChatClient, EmptyReply, EndpointError, MalformedReply, extract_json_object

from openai_server import OpenAIServer, Reply

MESSAGES = [{"role": "system", "content": "You judge."}, {"role": "user", "content": "Rate this."}]


def client_for(server, **kw) -> ChatClient:
    kw = {"api_key": "", "timeout": 5.0, "max_retries": 3} | kw
    return ChatClient(server.base_url, "test-model", **kw)


def answers(*replies):
    """A responder that gives the replies in order, then repeats the last."""
    queue = list(replies)
    return lambda request: queue.pop(0) if len(queue) > 1 else queue[0]


def parse_score(obj: dict) -> int:
    if not isinstance(obj.get("score"), int) or not 1 <= obj["score"] <= 5:
        raise ValueError(f"score must be an integer 1-5, got {obj.get('score')!r}")
    return obj["score"]


def test_n_samples_and_request_shape(openai_server):
    client = client_for(openai_server, api_key="k-123")
    texts = client.complete(MESSAGES, temperature=0.7, max_tokens=20, n=3, seed=4)
    assert texts == [f"echo {i}: Rate this." for i in range(3)]
    (request,) = openai_server.requests
    assert request.headers["authorization"] == "Bearer k-123"
    assert request.json == {"model": "test-model", "messages": MESSAGES, "temperature": 0.7, "max_tokens": 20,
                            "seed": 4, "n": 3}


def test_429_then_success_honours_retry_after(openai_server, monkeypatch):
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)  # the scripted replies below never sleep in the server
    openai_server.script(Reply.rate_limited(retry_after=0.02), Reply.rate_limited(retry_after=100))
    client = client_for(openai_server)
    assert client.complete(MESSAGES, temperature=0, max_tokens=5) == ["echo 0: Rate this."]
    assert len(openai_server.requests) == 3
    assert slept == [0.02, 100]  # Retry-After as given (up to two minutes)
    assert client.stats["retry: HTTP 429"] == 2 and client.stats["retries"] == 2

    openai_server.script(Reply.rate_limited(retry_after=3600))  # longer than anyone should wait: not retried
    with pytest.raises(EndpointError, match="gave up after 1 attempts.*429.*Rate limit") as err:
        client.complete(MESSAGES, temperature=0, max_tokens=6)
    assert err.value.status is None and len(openai_server.requests) == 4 and slept == [0.02, 100]


def test_5xx_retried_with_backoff_then_gives_up_with_the_status(openai_server, monkeypatch):
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    openai_server.script(Reply.error(500), Reply.error(503))
    client = client_for(openai_server)
    assert client.complete(MESSAGES, temperature=0, max_tokens=5) == ["echo 0: Rate this."]
    assert len(openai_server.requests) == 3

    openai_server.responder = lambda request: Reply.error(503, "overloaded")
    with pytest.raises(EndpointError, match="gave up after 3 attempts.*503.*overloaded") as err:
        client_for(openai_server, max_retries=2).complete(MESSAGES, temperature=0, max_tokens=5)
    assert len(openai_server.requests) == 3 + 3
    assert err.value.status is None  # not a refusal: the judges go on with the next dialogue
    assert len(slept) == 4 and slept[1] > slept[0] and all(0 < s <= 8 for s in slept)  # exponential backoff


def test_timeout_is_retried_and_bounded(openai_server):
    # A warmed-up client, so that the first request's one-time costs (TLS set-up, lazy imports) do not eat
    # into the timeout on a busy machine.
    client = client_for(openai_server, timeout=1.0)
    client.complete(MESSAGES, temperature=0, max_tokens=4)
    openai_server.script(Reply.slow(4))
    assert client.complete(MESSAGES, temperature=0, max_tokens=5) == ["echo 0: Rate this."]
    assert len(openai_server.requests) == 1 + 2 and client.stats["retry: no response"] == 1

    client = client_for(openai_server, timeout=1.0, max_retries=1)
    client.complete(MESSAGES, temperature=0, max_tokens=4)
    openai_server.script(Reply.slow(4), Reply.slow(4))
    started = time.monotonic()
    with pytest.raises(EndpointError, match="gave up after 2 attempts.*no answer within 1.0s"):
        client.complete(MESSAGES, temperature=0, max_tokens=5)
    assert time.monotonic() - started < 3.9  # two timeouts and one backoff, not the server's delays


def test_a_body_that_is_not_json_is_an_endpoint_error(openai_server):
    openai_server.script(Reply.malformed_body())
    client = client_for(openai_server)
    with pytest.raises(EndpointError, match="HTTP 200 with a body that is not JSON") as err:
        client.complete(MESSAGES, temperature=0, max_tokens=5)
    assert err.value.status is None and len(openai_server.requests) == 1
    assert client.complete(MESSAGES, temperature=0, max_tokens=5) == ["echo 0: Rate this."]


def test_401_and_unreachable_are_clear_errors():
    with OpenAIServer(api_key="right") as server:
        with pytest.raises(EndpointError, match="401 unauthorized.*refused.*Incorrect API key") as err:
            client_for(server, api_key="wrong").complete(MESSAGES, temperature=0, max_tokens=5)
        assert err.value.status == 401 and len(server.requests) == 1  # not retried
        with pytest.raises(EndpointError, match="set OPENAI_API_KEY"):
            client_for(server, api_key="").complete(MESSAGES, temperature=0, max_tokens=5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    client = ChatClient(f"http://127.0.0.1:{closed_port}/v1", "m", api_key="", max_retries=1)
    with pytest.raises(EndpointError, match="gave up after 2 attempts.*cannot reach"):
        client.complete(MESSAGES, temperature=0, max_tokens=5)


def test_a_model_that_returns_nothing(openai_server):
    client = client_for(openai_server)
    openai_server.responder = lambda request: []
    with pytest.raises(EmptyReply, match="no choices"):
        client.complete(MESSAGES, temperature=0, max_tokens=5)
    openai_server.responder = lambda request: ""
    with pytest.raises(EmptyReply, match="empty message"):
        client.complete(MESSAGES, temperature=0, max_tokens=5)


def test_extract_json_object_is_strict():
    assert extract_json_object('  {"score": 3} ') == {"score": 3}
    assert extract_json_object('```json\n{"score": 3}\n```') == {"score": 3}
    for text in ('Sure! {"score": 3}', '{"score": 3} hope this helps', "[1, 2]", '```python\n{"a": 1}\n```',
                 '```json\n{"score": 3}'):
        with pytest.raises(ValueError):
            extract_json_object(text)


def test_malformed_json_retried_then_parsed(openai_server):
    openai_server.responder = answers("I think 4.", '{"score": 9}', '```json\n{"score": 4}\n```')
    client = client_for(openai_server)
    assert client.complete_json(MESSAGES, parse_score, temperature=0, max_tokens=20, attempts=3) == 4
    assert len(openai_server.requests) == 3


def test_malformed_json_reported_with_raw_replies(openai_server):
    openai_server.responder = answers("four", '{"score": "high"}', "")
    client = client_for(openai_server)
    with pytest.raises(MalformedReply) as err:
        client.complete_json(MESSAGES, parse_score, temperature=0, max_tokens=20, attempts=3, seed=7)
    assert err.value.raw_replies == ["four", '{"score": "high"}', ""]
    assert "not a JSON object" in err.value.errors[0] and "integer 1-5" in err.value.errors[1]
    assert "empty message" in err.value.errors[2]
    # each retry is a fresh sample: the seed moves on, so a seeded endpoint cannot replay the bad answer
    assert len({r["seed"] for r in openai_server.chat_requests}) == 3


def test_json_answers_are_asked_for_as_json_where_the_endpoint_allows(openai_server):
    openai_server.responder = answers('{"score": 3}')
    client = client_for(openai_server)
    assert client.complete_json(MESSAGES, parse_score, temperature=0, max_tokens=20) == 3
    assert openai_server.chat_requests[-1]["response_format"] == {"type": "json_object"}
    client.complete(MESSAGES, temperature=0, max_tokens=20)
    assert "response_format" not in openai_server.chat_requests[-1]  # free text stays free

    refuses = client_for(openai_server)
    openai_server.script(Reply.error(400, "response_format is not supported by this model"))
    assert refuses.complete_json(MESSAGES, parse_score, temperature=0, max_tokens=21) == 3
    assert refuses.complete_json(MESSAGES, parse_score, temperature=0, max_tokens=22) == 3
    asked = openai_server.chat_requests[-3:]
    assert ["response_format" in r for r in asked] == [True, False, False]  # dropped once, for good


def test_cache_hit_makes_no_request(openai_server, tmp_path):
    first = client_for(openai_server, cache_dir=tmp_path)
    texts = first.complete(MESSAGES, temperature=0.5, max_tokens=10, n=2)
    assert len(openai_server.requests) == 1

    again = client_for(openai_server, cache_dir=tmp_path)  # a rerun: a new client on the same cache
    assert again.complete(MESSAGES, temperature=0.5, max_tokens=10, n=2) == texts
    assert len(openai_server.requests) == 1 and again.stats["cache_hits"] == 2
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temp files

    again.complete(MESSAGES, temperature=0.5, max_tokens=10, n=3)  # only the third sample is missing
    assert openai_server.chat_requests[-1]["n"] == 1
    again.complete(MESSAGES, temperature=0.9, max_tokens=10, n=1)  # other sampling: another entry
    assert len(openai_server.requests) == 3


def test_cached_json_attempts_replay_the_same_result(openai_server, tmp_path):
    openai_server.responder = answers("no", '{"score": 2}')
    first = client_for(openai_server, cache_dir=tmp_path)
    assert first.complete_json(MESSAGES, parse_score, temperature=0, max_tokens=20) == 2
    rerun = client_for(openai_server, cache_dir=tmp_path)
    assert rerun.complete_json(MESSAGES, parse_score, temperature=0, max_tokens=20) == 2
    assert len(openai_server.requests) == 2 and rerun.stats["requests"] == 0
    entry = json.loads(next(tmp_path.rglob("*.json")).read_text())
    assert entry["request"]["model"] == "test-model" and "content" in entry


def test_server_speaks_the_protocol_the_openai_sdk_expects(openai_server):
    """The reference client parses the local server's answers: the schema is the real one."""
    import openai

    sdk = openai.OpenAI(base_url=openai_server.base_url, api_key="x", max_retries=0)
    completion = sdk.chat.completions.create(model="m", messages=MESSAGES, n=2)
    assert [c.message.content for c in completion.choices] == ["echo 0: Rate this.", "echo 1: Rate this."]
    assert completion.object == "chat.completion" and completion.usage.total_tokens > 0

"""A short run of the soak benchmark (`benchmarks/bench_soak.py`): the tiny random model served as a
subprocess, four `gradio_client` visitors for a few seconds of warm-up and a quarter of a minute of soak with
the same mix of actions (`SHORT_SOAK`: raise it for a longer run; the benchmark is the long one). No timings
are asserted: only that no reply was lost or crossed and nothing unexpected happened. The crossing check itself
is tried on transcripts that hold another visitor's text."""
from __future__ import annotations

import sys

import pytest

from hirpf.paths import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))

from bench_soak import Conversation, Crossed, soak  # noqa: E402

# The run's size: its wall time is fixed by these (CI pays it whole), the tiny model makes every action cheap.
SHORT_SOAK = {"minutes": 0.25, "visitors": 4, "warmup_s": 5, "settle_s": 2}


def chat_transcript(*turns: tuple[str, str, int]) -> list[dict]:
    """What `/chat` returns for (user message, identities, seed) turns."""
    messages = []
    for message, identities, seed in turns:
        messages += [{"role": "user", "content": message},
                     {"role": "assistant", "content": f"identities: {identities} · conditioning: experts+prompt · "
                                                      f"seed {seed}", "metadata": {"title": "Identity: …"}},
                     {"role": "assistant", "content": "a reply"}]
    return messages


def test_the_crossing_check_catches_another_visitors_text():
    own = Conversation(visitor=1)
    own.sent, own.seeds = [("[v1.1.1] Hi", True), ("[v1.1.2] Why?", True)], {1001, 2001}
    doctor = {"traits": [], "profession": ["Doctor"]}
    mine = chat_transcript(("[v1.1.1] Hi", "Doctor", 1001), ("[v1.1.2] Why?", "Doctor", 2001))
    own.check(mine, doctor, 2001)
    with pytest.raises(Crossed, match="not its own"):  # another visitor's message
        own.check(chat_transcript(("[v1.1.1] Hi", "Doctor", 1001), ("[v2.1.2] Why?", "Doctor", 2001)), doctor, 2001)
    with pytest.raises(Crossed, match="seed not its own"):  # another visitor's reply
        own.check(chat_transcript(("[v1.1.1] Hi", "Doctor", 1002), ("[v1.1.2] Why?", "Doctor", 2001)), doctor, 2001)
    with pytest.raises(Crossed, match="asked for"):  # the reply made with another identity set
        own.check(chat_transcript(("[v1.1.1] Hi", "Doctor", 1001), ("[v1.1.2] Why?", "Artist", 2001)), doctor, 2001)
    with pytest.raises(Crossed, match="went missing"):  # this visitor's own turn gone
        own.check(chat_transcript(("[v1.1.2] Why?", "Doctor", 2001)), doctor, 2001)


def test_a_short_soak_loses_and_crosses_no_reply():
    summary = soak(tiny=True, **SHORT_SOAK, reply_timeout=120, max_context=256, log=lambda *_: None)
    problems = summary["problems"] + summary["warmup"]["problems"]
    assert summary["lost"] == summary["crossed"] == summary["unexpected"] == 0, problems
    assert summary["warmup"]["lost"] == summary["warmup"]["crossed"] == summary["warmup"]["unexpected"] == 0, problems
    assert summary["replies_started"] > 0
    assert summary["server_processes"] == 2  # the app's, and the engine process where the replies were decoded

"""The app driven as a client would: `gradio_client` against the app served on loopback.

Most tests run on a tiny random Llama with random experts (replies are noise, the plumbing is real); the
embedded model serves the streamed chat and the Stop tests, where a reply has to take a while.
"""
from __future__ import annotations

import itertools
import os
import re
import runpy
import sys
import time

import gradio as gr
import pytest
from gradio_client.exceptions import AppError

from app.launch_options import build_parser, launch_options

from app_serving import (
    assert_model_stopped,
    captions,
    client,
    forward_calls,
    replies,
    served,
    text,
    transcript,
    user_messages,
)
from documentation import documentation_text


@pytest.fixture(scope="module")
def tiny_url(tiny_engine):
    with served(tiny_engine) as url:
        yield url


@pytest.fixture(scope="module")
def embedded_url(embedded_engine):
    with served(embedded_engine) as url:
        yield url


QUICK = {"max_new_tokens": 12, "temperature": 1.0}


def test_chat_streams_the_reply_and_records_its_identities(embedded_url):
    job = client(embedded_url).submit(message="Tell me about your morning.", traits=["AGR_high"],
                                      profession=["Doctor"], max_new_tokens=24, seed=3, api_name="/chat")
    updates = [transcript(update) for update in job]
    final = transcript(job.result())
    lengths = [len(replies(u)[0]) for u in updates if replies(u)]
    assert len({n for n in lengths if n}) >= 3, f"the reply did not grow in steps: {lengths}"
    assert lengths == sorted(lengths)
    assert user_messages(final) == ["Tell me about your morning."]
    assert captions(final) == ["Identity: a doctor with high agreeableness"]
    caption = next(m for m in final if m.get("metadata"))
    assert "AGR_high, Doctor" in text(caption) and "seed 3" in text(caption)
    assert caption["metadata"]["status"] == "done"
    assert replies(final)[0] and "stopped" not in replies(final)[0]


@pytest.mark.parametrize("identities, expected", [
    ({"traits": ["AGR_high", "AGR_low"]}, "both poles of AGR given (AGR_high and AGR_low)"),
    ({"profession": ["Doctor", "Artist"]}, "more than one profession (Doctor and Artist)"),
    ({"traits": ["AGR_high", "Kindness"]}, "'Kindness'"),
    ({"profession": ["Astronaut"]}, "'Astronaut'"),
])
def test_a_bad_identity_set_gets_an_error_naming_it(tiny_url, identities, expected):
    c = client(tiny_url)
    with pytest.raises(AppError) as chat_error:
        c.predict(message="hello", **identities, **QUICK, api_name="/chat")
    assert expected in str(chat_error.value)
    # Nothing was recorded: there is no reply to regenerate, and regenerating with the bad set fails the same way.
    with pytest.raises(AppError) as regenerate_error:
        c.predict(**identities, **QUICK, api_name="/regenerate")
    assert expected in str(regenerate_error.value)
    with pytest.raises(AppError, match="Nothing to regenerate"):
        c.predict(**QUICK, api_name="/regenerate")


def test_bad_sampling_settings_are_named(tiny_url):
    with pytest.raises(AppError, match="-4 is less than minimum value 0"):
        client(tiny_url).predict(message="hello", seed=-4, **QUICK, api_name="/chat")
    with pytest.raises(AppError, match="3000 is greater than maximum value 512"):
        client(tiny_url).predict(message="hello", max_new_tokens=3000, api_name="/chat")
    with pytest.raises(AppError, match="Type a message first"):
        client(tiny_url).predict(message="   ", **QUICK, api_name="/chat")


def test_identity_changes_apply_to_the_next_reply_only(tiny_url):
    c = client(tiny_url)
    c.predict(message="first", traits=["AGR_high"], **QUICK, api_name="/chat")
    messages = transcript(c.predict(message="second", traits=["AGR_low", "OPE_high"], profession=["Programmer"],
                                    conditioning="experts", **QUICK, api_name="/chat"))
    assert captions(messages) == ["Identity: a person with high agreeableness",
                                  "Identity: a programmer with low agreeableness and high openness"]
    first, second = [text(m) for m in messages if m.get("metadata")]
    assert first.endswith("conditioning: experts+prompt") and second.endswith("conditioning: experts")
    # Regenerate replaces only the last reply, with the identities selected now.
    messages = transcript(c.predict(profession=["Artist"], **QUICK, api_name="/regenerate"))
    assert user_messages(messages) == ["first", "second"]
    assert captions(messages) == ["Identity: a person with high agreeableness", "Identity: an artist"]


def test_strengths_reach_the_reply_and_its_caption(tiny_url):
    c = client(tiny_url)
    messages = transcript(c.predict(message="hello", traits=["AGR_low"], profession=["Doctor"],
                                    strengths="AGR_low=1.6,Doctor=0.5", **QUICK, api_name="/chat"))
    assert captions(messages) == ["Identity: a doctor with low agreeableness (strength AGR_low 1.6, Doctor 0.5)"]
    with pytest.raises(AppError, match="between 0 and 2"):
        c.predict(message="hello", traits=["AGR_low"], strengths="AGR_low=3", **QUICK, api_name="/chat")


def test_compare_answers_with_and_without_the_experts_in_one_call(tiny_url):
    c = client(tiny_url)
    greedy = {"max_new_tokens": 8, "temperature": 0}
    with_experts, prompt_only = c.predict(message="What do you do all day?", traits=["EXT_high"],
                                          profession=["Artist"], **greedy, api_name="/compare")
    assert with_experts.startswith("**Experts + prompt: an artist with high extraversion**")
    assert prompt_only.startswith("**Prompt only: an artist with high extraversion**")
    assert with_experts.split("\n\n", 1)[1] != prompt_only.split("\n\n", 1)[1]  # the experts act
    # At strength 0 on every identity the experts add nothing: both replies are the prompt-only reply.
    off, prompt_again = c.predict(message="What do you do all day?", traits=["EXT_high"], profession=["Artist"],
                                  strengths="EXT_high=0,Artist=0", **greedy, api_name="/compare")
    assert off.split("\n\n", 1)[1] == prompt_again.split("\n\n", 1)[1] == prompt_only.split("\n\n", 1)[1]
    assert off.startswith("**Prompt only: an artist with high extraversion")  # and it says so
    _, plain = c.predict(message="What do you do all day?", traits=["EXT_high"], baseline="none", **greedy,
                         api_name="/compare")
    assert plain.startswith("**No identity (plain base model)**")
    with pytest.raises(AppError, match="Type a message"):
        c.predict(message=" ", **greedy, api_name="/compare")
    assert transcript(c.predict(api_name="/clear")) == []  # compare never touched the conversation


def test_compare_with_an_empty_box_answers_the_last_message_sent(tiny_url):
    greedy = {"max_new_tokens": 8, "temperature": 0, "seed": 7, "traits": ["NEU_low"]}
    c = client(tiny_url)
    c.predict(message="Where did you grow up?", **greedy, api_name="/chat")
    c.predict(message="And what was school like?", **greedy, api_name="/chat")  # Send empties the box
    after_send = c.predict(message="", **greedy, api_name="/compare")
    # The same as typing that message after the first exchange and comparing.
    fresh = client(tiny_url)
    fresh.predict(message="Where did you grow up?", **greedy, api_name="/chat")
    assert after_send == fresh.predict(message="And what was school like?", **greedy, api_name="/compare")


def test_the_api_page_names_every_input_and_types_it(tiny_url):
    import httpx

    info = httpx.get(f"{tiny_url}gradio_api/info").json()
    model_tabs = ("/chat", "/regenerate", "/compare", "/stop", "/clear", "/debate", "/debate_stop",
                  "/debate_send_to_evaluation", "/questionnaire", "/survey")
    assert set(model_tabs) <= set(info["named_endpoints"])
    for name in model_tabs:
        endpoint = info["named_endpoints"][name]
        for parameter in endpoint["parameters"]:
            assert not re.fullmatch(r"parameter_\d+", parameter["label"]), (name, parameter["parameter_name"])
            if parameter["parameter_name"] in ("max_new_tokens", "rounds", "seed", "items_per_factor"):
                assert parameter["type"]["type"] == "integer", (name, parameter["parameter_name"])
        # descriptions are shown as plain text: no Markdown code marks
        assert "`" not in endpoint.get("description", ""), name


def test_mcp_is_switched_off_and_says_so(tiny_url):
    import httpx

    answer = httpx.get(f"{tiny_url}gradio_api/mcp/schema")
    assert answer.status_code == 501 and "MCP" in answer.json()["detail"]
    assert httpx.get(f"{tiny_url}config").json()["mcp_server"] is False


def test_gradio_summarises_its_events_every_hundredth_not_after_each(monkeypatch, tmp_path):
    """Gradio's default recomputes a pandas summary of its last 10,000 events after each event, holding the
    interpreter lock the scheduler's loop needs; the launch makes it every 100th unless the operator says."""
    from app.build import build_annotation_app
    from app.launching import ANALYTICS_EVERY_EVENTS, launch

    monkeypatch.delenv("GRADIO_ANALYTICS_CACHE_FREQUENCY", raising=False)
    built = build_annotation_app(data_dir=tmp_path)
    launch(built, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
    try:
        assert built.blocks._queue.ANAYLTICS_CACHE_FREQUENCY == ANALYTICS_EVERY_EVENTS == 100
    finally:
        built.blocks.close()


def test_two_clients_never_see_each_others_conversation(tiny_url):
    a, b = client(tiny_url), client(tiny_url)
    a.predict(message="from A", profession=["Doctor"], **QUICK, api_name="/chat")
    b_messages = transcript(b.predict(message="from B", profession=["Artist"], **QUICK, api_name="/chat"))
    a_messages = transcript(a.predict(message="again from A", profession=["Doctor"], **QUICK, api_name="/chat"))
    assert user_messages(a_messages) == ["from A", "again from A"]
    assert captions(a_messages) == ["Identity: a doctor"] * 2
    assert user_messages(b_messages) == ["from B"] and captions(b_messages) == ["Identity: an artist"]
    # Clearing one conversation leaves the other.
    assert a.predict(api_name="/clear") == []
    assert user_messages(transcript(b.predict(**QUICK, api_name="/regenerate"))) == ["from B"]


def assert_one_after_another(calls) -> None:
    """The forward passes of `forward_calls` never interleave: each thread's passes form one run (a worker
    thread reused for the second call makes one run of both)."""
    threads = [thread for thread, _ in calls]
    switches = sum(1 for before, after in itertools.pairwise(threads) if before is not after)
    assert calls and switches == len(set(threads)) - 1, "two generations ran interleaved"


def test_static_batches_share_one_model_queue(tiny_url, tiny_engine):
    """Two visitors comparing at once: the second batched call starts only after the first has ended."""
    with forward_calls(tiny_engine.model) as calls:
        jobs = [client(tiny_url).submit(message=f"visitor {i}", max_new_tokens=24, api_name="/compare")
                for i in range(2)]
        for job in jobs:
            job.result()
    assert_one_after_another(calls)


def test_with_the_scheduler_off_replies_wait_in_the_model_queue(tiny_engine):
    """`HIRPF_SCHEDULER=0`: two visitors chatting at once are served one after the other, each reply in a
    model thread of its own (`Engine.stream`)."""
    with served(tiny_engine, scheduler=False) as url, forward_calls(tiny_engine.model) as calls:
        jobs = [client(url).submit(message=f"visitor {i}", max_new_tokens=24, api_name="/chat") for i in range(2)]
        for job in jobs:
            job.result()
    assert len({thread for thread, _ in calls}) == 2  # a model thread per reply
    assert_one_after_another(calls)


def start_long_reply(url):
    """Submit a long reply and wait until it is streaming; returns (client, job, model thread)."""
    c = client(url)
    job = c.submit(message="Describe your whole week, day by day, in detail.", max_new_tokens=400,
                   api_name="/chat")
    deadline = time.monotonic() + 120
    while not any(replies(transcript(o)) and replies(transcript(o))[0] for o in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), "the reply never started streaming"
        time.sleep(0.05)
    return c, job


def assert_generation_ends(calls, tokens_asked: int):
    assert assert_model_stopped(calls) < tokens_asked, "the reply ran to its full length"


def test_stop_ends_the_model_thread_and_keeps_the_text(embedded_url, embedded_engine):
    with forward_calls(embedded_engine.model) as calls:
        c, job = start_long_reply(embedded_url)
        stopped = transcript(c.predict(api_name="/stop"))
        job.result(timeout=60)  # the stream ends on its own once the model thread stops
        assert_generation_ends(calls, 400)
    assert replies(stopped)[0].endswith("*(stopped)*")
    assert captions(stopped) and stopped[1]["metadata"]["status"] == "done"


def test_cancelling_the_event_also_ends_the_model_thread(embedded_url, embedded_engine):
    """What a closed tab or the Stop button's `cancels=` does: the stream is closed, the model stops."""
    with forward_calls(embedded_engine.model) as calls:
        _, job = start_long_reply(embedded_url)
        job.cancel()
        assert_generation_ends(calls, 400)


def test_a_failed_model_load_is_reported_by_the_model_events(tiny_base_dir):
    def broken_loader():
        raise OSError(f"no model in {tiny_base_dir / 'missing'}")

    with served(broken_loader) as url:
        with pytest.raises(AppError, match="failed to load: no model in"):
            client(url).predict(message="hello", **QUICK, api_name="/chat")
        assert "failed to load" in client(url).predict(api_name="/model_status")[0]


def test_settings_come_from_flags_then_environment(monkeypatch, tmp_path):
    for name in ("HIRPF_HOST", "GRADIO_SERVER_NAME", "HIRPF_PORT", "GRADIO_SERVER_PORT", "HIRPF_BASE_MODEL",
                 "HIS_BASE_MODEL", "HIRPF_LORA_WEIGHTS", "HIS_LORA_WEIGHTS", "HIRPF_LOAD_IN_8BIT", "HIRPF_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    defaults = launch_options([])
    assert (defaults.host, defaults.port, defaults.base_model, defaults.lora_weights, defaults.load_in_8bit) == \
        ("127.0.0.1", 7860, "embedded", "default", None)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # what Spaces sets
    monkeypatch.setenv("HIRPF_PORT", "9000")
    monkeypatch.setenv("HIRPF_LORA_WEIGHTS", "none")
    monkeypatch.setenv("HIRPF_LOAD_IN_8BIT", "yes")
    monkeypatch.setenv("HIRPF_DATA_DIR", str(tmp_path))
    from_env = launch_options([])
    assert (from_env.host, from_env.port, from_env.lora_weights, from_env.load_in_8bit, from_env.data_dir) == \
        ("0.0.0.0", 9000, None, True, tmp_path)
    flags = launch_options(["--host", "127.0.0.2", "--port", "9001", "--base_model", "some/dir", "--no-load_in_8bit"])
    assert (flags.host, flags.port, flags.base_model, flags.load_in_8bit) == ("127.0.0.2", 9001, "some/dir", False)
    monkeypatch.setenv("HIRPF_LOAD_IN_8BIT", "maybe")
    with pytest.raises(ValueError, match="HIRPF_LOAD_IN_8BIT='maybe'"):
        launch_options([])
    monkeypatch.delenv("HIRPF_LOAD_IN_8BIT")
    monkeypatch.delenv("HIRPF_SCHEDULER", raising=False)
    assert launch_options([]).scheduler and not launch_options(["--no-scheduler"]).scheduler
    monkeypatch.setenv("HIRPF_SCHEDULER", "0")
    assert not launch_options([]).scheduler and launch_options(["--scheduler"]).scheduler


def test_app_py_exposes_the_blocks_at_module_level(monkeypatch, tiny_base_dir, tmp_path):
    """What Spaces imports: `demo` exists without launching, and its model loads from the environment."""
    monkeypatch.setenv("HIRPF_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HIRPF_BASE_MODEL", str(tiny_base_dir))
    monkeypatch.setenv("HIRPF_LORA_WEIGHTS", "none")
    monkeypatch.setattr(sys, "argv", ["app.py", "--port", "1"])  # ignored: flags are read only as __main__
    module = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "app.py"), run_name="hirpf_app")
    assert isinstance(module["demo"], gr.Blocks) and module["demo"] is module["built"].blocks
    engine = module["built"].slot.get(timeout=120)
    assert not engine.has_experts and module["settings"].base_model == str(tiny_base_dir)


def test_every_flag_of_the_app_is_documented():
    """Its environment variables are on the generated docs/configuration.md (tests/test_environment.py)."""
    flags = {option for action in build_parser()._actions for option in action.option_strings
             if option.startswith("--") and not option.startswith("--no-") and option != "--help"}
    assert {"--host", "--port", "--base_model", "--lora_weights", "--load_in_8bit", "--data_dir",
            "--annotation_only", "--scheduler"} <= flags
    documented = documentation_text()
    assert [flag for flag in sorted(flags) if flag not in documented] == []

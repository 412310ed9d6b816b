"""Shared fixtures: the embedded model, a tiny engine and a tiny base model directory (the helpers they use
live in testing_utils.py, which tests import directly)."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from openai_server import openai_server  # noqa: F401  (fixture: local chat-completions server)
from testing_utils import randomize_experts


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA device: without one they are skipped, so CI collects them and runs
    the rest (`scripts/gpu_check.sh` runs them on a GPU machine)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu_check.sh runs these on a GPU)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def embedded_engine():
    from hirpf.engine import Engine

    return Engine.load("embedded", lora_weights=None, load_in_8bit=False, dtype="float32")


@pytest.fixture(scope="module")
def tiny_engine(tiny_base_dir):
    """An engine on the tiny base with random rank-4 experts: replies are noise, the plumbing is real."""
    from hirpf.engine import Engine
    from hirpf.experts import ExpertConfig
    from hirpf.inject import add_experts

    engine = Engine.load(str(tiny_base_dir), lora_weights=None, load_in_8bit=False, dtype="float32")
    add_experts(engine.model, ExpertConfig(rank=4))
    randomize_experts(engine.model)
    return engine


@pytest.fixture(scope="module")
def exact_engine(tiny_base_dir):
    """A tiny float64 Llama (the embedded tokenizer) with random layered experts: batched equals alone exactly."""
    from hirpf.engine import Engine
    from hirpf.experts import ExpertConfig
    from hirpf.inject import add_experts

    engine = Engine.load(str(tiny_base_dir), lora_weights=None, load_in_8bit=False, dtype="float32")
    engine.model.to(torch.float64)
    add_experts(engine.model, ExpertConfig(rank=4, dropout=0.0, layout="layered"))
    randomize_experts(engine.model, seed=1)
    return engine


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """A tiny random Llama with the embedded model's tokenizer and chat template, saved as a base model
    directory: the trainer's logic runs in seconds on it."""
    from transformers import AutoTokenizer

    from hirpf.embedded import ensure_embedded_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny-base")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

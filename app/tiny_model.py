"""A tiny random Llama (2 layers, width 32) with the embedded model's tokenizer and random rank-4 experts, as
an `Engine`: replies are noise, the plumbing is real. It lets a tab run on its own in seconds
(`python -m app.chat_tab`), without the real model's weights."""
from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path


@cache
def tiny_base_dir() -> Path:
    """The tiny base model saved as a model directory (once per process, in a temporary folder)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hirpf.embedded import ensure_embedded_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    path = Path(tempfile.mkdtemp(prefix="hirpf-tiny-base-"))
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_engine(seed: int = 0, scale: float = 0.3):
    """An engine on the tiny base with random experts (fresh experts start as no-ops: B = 0, router = 0)."""
    import torch

    from hirpf.engine import Engine
    from hirpf.experts import ExpertConfig
    from hirpf.inject import add_experts, expert_layers

    engine = Engine.load(str(tiny_base_dir()), lora_weights=None, load_in_8bit=False, dtype="float32")
    add_experts(engine.model, ExpertConfig(rank=4))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in expert_layers(engine.model).values():
            params = [layer.lora_A, layer.lora_B] + (list(layer.router.parameters()) if layer.router else [])
            for p in params:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype) * scale)
    return engine

"""A tiny random Llama (2 layers, width 32) with the embedded model's tokenizer and random rank-4 experts, as
an `Engine`: replies are noise, the plumbing is real. It lets a tab run on its own in seconds
(`python -m app.chat_tab`), without the real model's weights. The tests build their tiny models from here too
(`tests/conftest.py`), so the app and the tests run the same tiny model."""
from __future__ import annotations

import tempfile
from functools import cache, partial
from pathlib import Path


def save_tiny_base(path: Path) -> Path:
    """Save the tiny base model (random weights, seed 0) and the embedded tokenizer as a model directory."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hirpf.embedded import ensure_embedded_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@cache
def tiny_base_dir() -> Path:
    """The tiny base model saved as a model directory (once per process, in a temporary folder)."""
    return save_tiny_base(Path(tempfile.mkdtemp(prefix="hirpf-tiny-base-")))


def randomize_experts(model, seed: int = 0, scale: float = 0.3, router_scale: float = 1.0) -> None:
    """Experts start as no-ops (B = 0, router = 0); give them real weights: A and B ~ N(0, scale²), the
    routers ~ N(0, router_scale²), drawn layer by layer from one seeded generator."""
    import torch

    from hirpf.fast_inference import forget_weights
    from hirpf.inject import expert_layers

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in expert_layers(model).values():
            for p in (layer.lora_A, layer.lora_B):
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype) * scale)
            if layer.router is not None:
                for p in layer.router.parameters():
                    p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype) * router_scale)
    forget_weights(model)  # the fast path's copies of the old weights


def tiny_engine(seed: int = 0, scale: float = 0.3):
    """An engine on the tiny base with random experts (routers at the experts' scale too)."""
    from hirpf.engine import Engine
    from hirpf.experts import ExpertConfig
    from hirpf.inject import add_experts

    engine = Engine.load(str(tiny_base_dir()), lora_weights=None, load_in_8bit=False, dtype="float32")
    add_experts(engine.model, ExpertConfig(rank=4))
    randomize_experts(engine.model, seed, scale, router_scale=scale)
    engine.load_again = partial(tiny_engine, seed, scale)  # the same weights again, from the seeds
    return engine

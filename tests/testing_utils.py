"""Test helpers imported by test modules: tiny random Llamas and random experts. (Fixtures live in
conftest.py; the served app and Chromium in app_serving.py; a PostgreSQL server in db_fixtures.py.)"""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(seed: int = 0, dtype=torch.float32, layers: int = 4) -> LlamaForCausalLM:
    """2-4 layers, width 32, GQA (4 query heads, 2 key/value heads): k/v are narrower than q."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).to(dtype).eval()


def randomize_experts(model, seed: int = 0, scale: float = 0.3) -> None:
    """Experts start as no-ops (B = 0, router = 0); give them real weights."""
    from hirpf.fast_inference import forget_weights
    from hirpf.inject import expert_layers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in expert_layers(model).values():
            for p in (layer.lora_A, layer.lora_B):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)
            if layer.router is not None:
                for p in layer.router.parameters():
                    p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    forget_weights(model)


def plain_mean_log_likelihoods(engine, conversation, identities, conditioning, replies) -> torch.Tensor:
    """One unpadded, uncached forward per option: the mean log-probability of its tokens after the prompt."""
    from hirpf.prompts import expert_identities
    from hirpf.routing import use_identities

    messages = engine.chat_messages(conversation, identities, conditioning)
    text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = engine.tokenizer.encode(text, add_special_tokens=False)
    values = []
    for reply in replies:
        option = engine.tokenizer.encode(reply, add_special_tokens=False)
        with torch.no_grad(), use_identities([expert_identities(identities, conditioning)]):
            logits = engine.model(input_ids=torch.tensor([prompt + option])).logits[0].float()
        log_probs = torch.log_softmax(logits, -1)[len(prompt) - 1:-1]
        values.append(log_probs.gather(-1, torch.tensor(option)[:, None]).mean())
    return torch.stack(values).double()

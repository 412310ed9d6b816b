"""Test helpers imported by test modules: a tiny random Llama without a tokenizer, and a plain reference
likelihood. (Fixtures live in conftest.py and the plugins it lists; random experts and the tiny model with the
embedded tokenizer in app/tiny_model.py; the served app and Chromium in app_serving.py.)"""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(seed: int = 0, dtype=torch.float32, layers: int = 4, **overrides) -> LlamaForCausalLM:
    """2-4 layers, width 32, GQA (4 query heads, 2 key/value heads): k/v are narrower than q. `overrides`
    change other `LlamaConfig` fields (a wider model, say)."""
    torch.manual_seed(seed)
    config = LlamaConfig(**{**dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                                   eos_token_id=2, max_position_embeddings=128), **overrides})
    return LlamaForCausalLM(config).to(dtype).eval()


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

"""Experts around bitsandbytes 4-bit and 8-bit projections (CPU), against the reference loop."""
from __future__ import annotations

import pytest
import torch
from test_experts import capture, reference
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from hirpf.experts import ExpertConfig
from hirpf.identities import IdentitySet
from hirpf.inject import add_experts, expert_layers

from testing_utils import randomize_experts

bnb = pytest.importorskip("bitsandbytes")

QUANTIZATIONS = {
    "4bit": (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32), bnb.nn.Linear4bit),
    "8bit": (BitsAndBytesConfig(load_in_8bit=True), bnb.nn.Linear8bitLt),
}


@pytest.mark.parametrize("kind", QUANTIZATIONS)
def test_experts_wrap_quantized_projections(tmp_path, kind):
    quantization, layer_type = QUANTIZATIONS[kind]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # 4-bit blocks want width 64
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization, device_map={"": "cpu"})
    add_experts(model, ExpertConfig(rank=2, dropout=0.0))
    randomize_experts(model)
    layers = expert_layers(model)
    assert all(isinstance(layer.base, layer_type) for layer in layers.values())
    sets = [IdentitySet.parse("AGR_high,CON_low,Doctor"), IdentitySet(), IdentitySet.parse("OPE_low,Artist")]
    seen, _ = capture(model, torch.randint(3, 64, (3, 5)), sets, grad=False)
    for name, (x, y) in seen.items():
        expected = reference(layers[name], x, sets, router=True, hard_mask=True)
        torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4, msg=name)

"""Experts around bitsandbytes 4-bit and 8-bit projections (CPU), against the reference loop."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from app.tiny_model import randomize_experts
from hirpf.experts import ExpertConfig
from hirpf.identities import IdentitySet
from hirpf.inject import add_experts, expert_layers

from expert_reference import capture, reference
from testing_utils import tiny_llama

bnb = pytest.importorskip("bitsandbytes")

QUANTIZATIONS = {
    "4bit": (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32), bnb.nn.Linear4bit),
    "8bit": (BitsAndBytesConfig(load_in_8bit=True), bnb.nn.Linear8bitLt),
}


@pytest.mark.parametrize("kind", QUANTIZATIONS)
def test_experts_wrap_quantized_projections(tmp_path, kind):
    quantization, layer_type = QUANTIZATIONS[kind]
    tiny_llama(layers=2, hidden_size=64, intermediate_size=128).save_pretrained(tmp_path)  # 4-bit blocks want width 64
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

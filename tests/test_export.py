"""`python -m hirpf export`: a fixed identity set as a standard PEFT LoRA adapter."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.tiny_model import randomize_experts
from hirpf.checkpoint import save_experts
from hirpf.cli import main
from hirpf.dialogues import validate
from hirpf.experts import ExpertConfig
from hirpf.export import export_identity_set
from hirpf.identities import IdentitySet
from hirpf.inject import add_experts, expert_layers
from hirpf.routing import use_identities

peft = pytest.importorskip("peft")
DIALOGUES = [validate({"dialog": [{"role": "user", "content": "How was your day?"},
                                  {"role": "assistant", "content": "Long. Three patients and no lunch."},
                                  {"role": "user", "content": "And now?"},
                                  {"role": "assistant", "content": "Now I sleep, if nobody calls."}],
                       "active_adapters": ["Doctor"]})]


def base(tiny_base_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).eval()


def with_experts(tiny_base_dir, config: ExpertConfig, zero_router_weights: bool = False):
    model = add_experts(base(tiny_base_dir), config)
    randomize_experts(model, seed=5)
    if zero_router_weights:  # the gate stays input-independent but not uniform: the router's bias sets it
        with torch.no_grad():
            for layer in expert_layers(model).values():
                layer.router.weight.zero_()
    return model.eval()


def peft_logits(tiny_base_dir, directory, ids):
    model = peft.PeftModel.from_pretrained(base(tiny_base_dir), str(directory)).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def our_logits(model, identities, ids):
    with torch.no_grad(), use_identities([identities]):
        return model(input_ids=ids).logits


INPUT = torch.randint(5, 4000, (2, 19), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("gate", ["bias", "mean"])
def test_export_with_the_router_off_is_our_layers_exactly(tiny_base_dir, tmp_path, gate):
    model = with_experts(tiny_base_dir, ExpertConfig(rank=4, dropout=0.0, router=False))
    identities = IdentitySet.parse("AGR_low,Doctor").with_strengths("AGR_low=1.6")
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    export_identity_set(model, tokenizer, identities, tmp_path, gate=gate, dialogues=DIALOGUES)
    ours, theirs = our_logits(model, identities, INPUT), peft_logits(tiny_base_dir, tmp_path, INPUT)
    assert not torch.allclose(ours, our_logits(model, IdentitySet(), INPUT), atol=1e-3)  # the experts act
    torch.testing.assert_close(theirs, ours, atol=2e-5, rtol=1e-5)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 4  # alternate: one identity per layer's group, rank 1·r
    assert json.loads((tmp_path / "hirpf_export.json").read_text())["identities"] == "AGR_low=1.6,Doctor"


def test_export_of_several_identities_has_their_summed_rank_and_the_routers_bias_gate(tiny_base_dir, tmp_path):
    model = with_experts(tiny_base_dir, ExpertConfig(rank=4, dropout=0.0, layout="layered"), zero_router_weights=True)
    identities = IdentitySet.parse("EXT_low,NEU_high,OPE_low,Artist").with_strengths("NEU_high=0.5")
    export_identity_set(model, None, identities, tmp_path, gate="bias")
    torch.testing.assert_close(peft_logits(tiny_base_dir, tmp_path, INPUT), our_logits(model, identities, INPUT),
                               atol=2e-5, rtol=1e-5)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 16  # layered: three traits and a profession in every layer, (3 + 1)·r


def test_live_layers_as_bias_gate_exports_equal_the_export_with_a_shared_expert(tiny_base_dir, tmp_path):
    """`as_bias_gate_exports` (what `recognize --as_export bias` scores) is the exported adapter; the shared
    expert is exported with the identities."""
    from hirpf.export import as_bias_gate_exports

    model = with_experts(tiny_base_dir, ExpertConfig(rank=4, dropout=0.0, gate="scaled_softmax",
                                                     shared_expert=True))
    identities = IdentitySet.parse("AGR_low,EXT_high,Doctor")
    live = our_logits(model, identities, INPUT)
    as_bias_gate_exports(model)
    export_identity_set(model, None, identities, tmp_path, gate="bias")
    exported = peft_logits(tiny_base_dir, tmp_path, INPUT)
    torch.testing.assert_close(exported, our_logits(model, identities, INPUT), atol=2e-5, rtol=1e-5)
    assert not torch.allclose(exported, live, atol=1e-3)  # the live router did read the input
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    # alternate: two traits and the shared expert on trait layers, (2 + 1)·r; Doctor and it on the others
    assert {config["r"], *config["rank_pattern"].values()} == {12, 8}


def test_mean_gate_follows_the_router_and_strengths_scale_it(tiny_base_dir):
    from hirpf.export import bias_gates, mean_gates

    model = with_experts(tiny_base_dir, ExpertConfig(rank=4, dropout=0.0))
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    identities = IdentitySet.parse("AGR_low,EXT_high,Doctor")
    gates = mean_gates(model, tokenizer, identities, DIALOGUES)
    trait_layer = "model.layers.0.self_attn.q_proj"
    names = expert_layers(model)[trait_layer].expert_names
    w = dict(zip(names, gates[trait_layer].tolist()))
    assert w["AGR_low"] + w["EXT_high"] == pytest.approx(1.0)  # softmax over the chosen experts of the group
    assert w["AGR_low"] != pytest.approx(0.5) and w["AGR_high"] == 0.0
    assert w != dict(zip(names, bias_gates(model, identities)[trait_layer].tolist()))  # the router reads the input
    doubled = mean_gates(model, tokenizer, identities.with_strengths(2.0), DIALOGUES)
    # Strength 2 also changes what the later layers see, so only the first layer's gate is exactly doubled.
    torch.testing.assert_close(doubled[trait_layer], 2 * gates[trait_layer])


def test_export_refuses_what_is_not_an_adapter(tiny_base_dir, tmp_path):
    model = with_experts(tiny_base_dir, ExpertConfig(rank=4, dropout=0.0))
    with pytest.raises(ValueError, match="empty identity set"):
        export_identity_set(model, None, IdentitySet(), tmp_path, gate="bias")
    with pytest.raises(ValueError, match="calibration"):
        export_identity_set(model, None, IdentitySet.parse("Doctor"), tmp_path, gate="mean", dialogues=[])
    with pytest.raises(ValueError, match="no identity experts"):
        export_identity_set(base(tiny_base_dir), None, IdentitySet.parse("Doctor"), tmp_path, gate="bias")


def test_cli_export_writes_a_peft_adapter(tiny_base_dir, tmp_path, capsys):
    model = with_experts(tiny_base_dir, ExpertConfig(rank=4, dropout=0.0))
    save_experts(model, tmp_path / "experts")
    data = tmp_path / "dialogues.json"
    data.write_text(json.dumps([{"dialog": list(d.turns), "active_adapters": list(d.identities)} for d in DIALOGUES]))
    out = tmp_path / "adapter"
    assert main(["export", "--identities", "AGR_low,Doctor", "--output", str(out), "--base_model", str(tiny_base_dir),
                 "--lora_weights", str(tmp_path / "experts"), "--data", str(data), "--held_out_fraction", "0"]) == 0
    assert (out / "adapter_model.safetensors").is_file() and "exported AGR_low,Doctor" in capsys.readouterr().err
    assert peft_logits(tiny_base_dir, out, INPUT).shape == (2, 19, model.config.vocab_size)
    assert main(["export", "--identities", "AGR_low,AGR_high", "--output", str(out)]) == 2
    assert "AGR" in capsys.readouterr().err

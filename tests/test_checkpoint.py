"""Expert checkpoints on a tiny random Llama: save, load (safetensors and legacy .bin), and every refusal."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from hirpf.checkpoint import CheckpointError, load_experts, save_experts
from hirpf.experts import LAYOUTS, ExpertConfig, ExpertLinear
from hirpf.identities import IdentitySet
from hirpf.inject import add_experts, expert_config, expert_layers, expert_state_dict
from hirpf.routing import use_identities

from testing_utils import tiny_llama

SEED = 1234
ROWS = ["AGR_high, NEU_low, Doctor", "", "EXT_low, OPE_high", "Programmer"]
EXPERT_KEYS = ("lora_A", "lora_B", "router.weight", "router.bias")


def with_random_experts(layout: str, seed: int = SEED) -> LlamaForCausalLM:
    model = add_experts(tiny_llama(seed), ExpertConfig(rank=4, layout=layout))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in expert_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.5)
            layer.router.weight.copy_(torch.randn(layer.router.weight.shape, generator=gen))
            layer.router.bias.copy_(torch.randn(layer.router.bias.shape, generator=gen))
    return model


def input_ids(batch: int = len(ROWS), length: int = 7) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def logits(model, rows=None) -> torch.Tensor:
    ids = input_ids()
    if rows is None:
        return model(ids).logits
    with use_identities([IdentitySet.parse(r) for r in rows]):
        return model(ids).logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One saved checkpoint per layout: (directory, logits of the saving model on the mixed batch)."""
    out = {}
    for layout in LAYOUTS:
        model = with_random_experts(layout)
        directory = save_experts(model, tmp_path_factory.mktemp(f"ckpt-{layout}"))
        out[layout] = (directory, logits(model, ROWS))
    return out


# --- save / load round trip -----------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_save_writes_config_and_safetensors(layout, saved):
    directory, _ = saved[layout]
    assert (directory / "adapter_model.safetensors").is_file()
    assert not (directory / "adapter_model.bin").exists()
    document = json.loads((directory / "adapter_config.json").read_text())
    for key in ("format_version", "layout", "rank", "alpha", "target_modules", "groups", "base_model_fingerprint"):
        assert key in document, key
    assert document["format_version"] == 1
    assert document["layout"] == layout
    assert document["rank"] == 4
    assert document["alpha"] == 16.0
    assert document["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert document["groups"] == {
        "traits": ["AGR_high", "AGR_low", "CON_high", "CON_low", "EXT_high", "EXT_low",
                   "NEU_high", "NEU_low", "OPE_high", "OPE_low"],
        "professions": ["Doctor", "Artist", "Programmer"],
    }
    fingerprint = document["base_model_fingerprint"]
    assert fingerprint["hidden_size"] == 32
    assert fingerprint["num_hidden_layers"] == 4
    assert fingerprint["vocab_size"] == 64
    assert fingerprint["model_type"] == "llama"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_saved_tensors_are_the_expert_state(layout, saved):
    directory, _ = saved[layout]
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    reference = expert_state_dict(with_random_experts(layout))
    assert set(tensors) == set(reference)
    for k, v in reference.items():
        assert torch.equal(tensors[k], v), k


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_gives_identical_logits(layout, saved):
    directory, expected = saved[layout]
    fresh = tiny_llama(SEED)
    base_mixed = logits(fresh, ROWS)  # no experts yet: identities change nothing
    loaded = load_experts(fresh, directory)
    assert loaded is fresh
    assert expert_config(fresh).layout == layout
    got = logits(fresh, ROWS)
    assert torch.equal(got, expected)
    # Not vacuous: the experts change every row that has identities, and leave the empty row alone.
    for i, row in enumerate(ROWS):
        same = torch.allclose(got[i], base_mixed[i], atol=1e-6)
        assert same == (row == ""), (i, row)
    # Outside use_identities the model is the plain base model.
    assert torch.allclose(logits(fresh), base_mixed, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_into_model_with_matching_experts_replaces_weights(layout, saved):
    directory, expected = saved[layout]
    model = add_experts(tiny_llama(SEED), ExpertConfig(rank=4, layout=layout))
    with torch.no_grad():
        for layer in expert_layers(model).values():
            layer.lora_B.fill_(0.3)
    before = logits(model, ROWS)  # also fills any inference cache of fused weights
    assert not torch.equal(before, expected)
    load_experts(model, directory)
    assert torch.equal(logits(model, ROWS), expected)


def test_legacy_bin_checkpoint(tmp_path):
    source = with_random_experts("alternate")
    expected = logits(source, ROWS)
    save_experts(source, tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    torch.save({k: v.clone() for k, v in expert_state_dict(source).items()}, tmp_path / "adapter_model.bin")
    fresh = tiny_llama(SEED)
    load_experts(fresh, tmp_path)
    assert torch.equal(logits(fresh, ROWS), expected)


def test_load_overwrites_every_expert_tensor(tmp_path):
    source = with_random_experts("flat")
    save_experts(source, tmp_path)
    fresh = tiny_llama(SEED)
    add_experts(fresh, ExpertConfig(rank=4, layout="flat"))  # different random lora_A
    load_experts(fresh, tmp_path)
    for k, v in expert_state_dict(source).items():
        assert torch.equal(expert_state_dict(fresh)[k], v), k


# --- refusals -------------------------------------------------------------------------------------
def test_wrong_base_model_hidden_size(saved):
    directory, _ = saved["alternate"]
    other = tiny_llama(SEED, hidden_size=48)
    with pytest.raises(CheckpointError, match="hidden_size") as info:
        load_experts(other, directory)
    assert "32" in str(info.value) and "48" in str(info.value)
    assert expert_config(other) is None and not expert_layers(other)  # nothing was added


def test_wrong_base_model_layer_count(saved):
    directory, _ = saved["layered"]
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        load_experts(tiny_llama(SEED, layers=2), directory)


def _rewrite_weights(directory, edit):
    path = directory / "adapter_model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


@pytest.fixture
def checkpoint(tmp_path):
    save_experts(with_random_experts("alternate"), tmp_path)
    return tmp_path


def test_missing_tensor(checkpoint):
    key = "model.layers.2.self_attn.v_proj.lora_B"
    _rewrite_weights(checkpoint, lambda t: t.pop(key))
    with pytest.raises(CheckpointError) as info:
        load_experts(tiny_llama(SEED), checkpoint)
    message = str(info.value)
    assert "missing" in message and key in message


def test_extra_tensor(checkpoint):
    key = "model.layers.0.self_attn.q_proj.lora_C"
    _rewrite_weights(checkpoint, lambda t: t.__setitem__(key, torch.zeros(3)))
    with pytest.raises(CheckpointError) as info:
        load_experts(tiny_llama(SEED), checkpoint)
    message = str(info.value)
    assert "unexpected" in message and key in message


def test_wrong_shape_tensor(checkpoint):
    key = "model.layers.1.self_attn.o_proj.lora_A"
    _rewrite_weights(checkpoint, lambda t: t.__setitem__(key, torch.zeros(5, 32)))
    with pytest.raises(CheckpointError) as info:
        load_experts(tiny_llama(SEED), checkpoint)
    message = str(info.value)
    assert "wrong shape" in message and key in message and "(5, 32)" in message


def test_missing_config(checkpoint):
    (checkpoint / "adapter_config.json").unlink()
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        load_experts(tiny_llama(SEED), checkpoint)


def test_missing_weights(checkpoint):
    (checkpoint / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter_model"):
        load_experts(tiny_llama(SEED), checkpoint)


def test_corrupt_config(checkpoint):
    (checkpoint / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_experts(tiny_llama(SEED), checkpoint)


@pytest.mark.parametrize("model_layout, checkpoint_layout", [("flat", "alternate"), ("alternate", "layered")])
def test_other_layout_into_model_with_experts(model_layout, checkpoint_layout, saved):
    directory, _ = saved[checkpoint_layout]
    model = add_experts(tiny_llama(SEED), ExpertConfig(rank=4, layout=model_layout))
    before = {k: v.clone() for k, v in expert_state_dict(model).items()}
    with pytest.raises(CheckpointError) as info:
        load_experts(model, directory)
    message = str(info.value)
    assert model_layout in message and checkpoint_layout in message
    assert expert_config(model).layout == model_layout
    for k, v in expert_state_dict(model).items():
        assert torch.equal(v, before[k]), k  # untouched


def test_other_rank_into_model_with_experts(saved):
    directory, _ = saved["alternate"]
    model = add_experts(tiny_llama(SEED), ExpertConfig(rank=8, layout="alternate"))
    with pytest.raises(CheckpointError, match="r=8"):
        load_experts(model, directory)


def test_save_without_experts(tmp_path):
    with pytest.raises(CheckpointError):
        save_experts(tiny_llama(SEED), tmp_path)


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


# --- what is trainable and what is saved ----------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_expert_state_dict_has_no_base_weights(layout):
    model = add_experts(tiny_llama(SEED), ExpertConfig(rank=4, layout=layout))
    state = expert_state_dict(model)
    layers = expert_layers(model)
    assert len(layers) == 4 * 4  # q, k, v, o in each of 4 layers
    assert all(isinstance(m, ExpertLinear) for m in layers.values())
    assert set(state) == {f"{name}.{key}" for name in layers for key in EXPERT_KEYS}
    for key in state:
        assert ".base." not in key and key.endswith(EXPERT_KEYS), key
    base_names = {n for n, _ in model.named_parameters()} - set(state)
    assert base_names  # the base weights exist but are not in the expert state
    assert "model.embed_tokens.weight" in base_names
    assert "model.layers.0.self_attn.q_proj.base.weight" in base_names
    assert not set(state) & base_names


@pytest.mark.parametrize("layout", LAYOUTS)
def test_only_expert_parameters_are_trainable(layout):
    model = add_experts(tiny_llama(SEED), ExpertConfig(rank=4, layout=layout))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(expert_state_dict(model))
    assert all(n.endswith(EXPERT_KEYS) for n in trainable)


@pytest.mark.parametrize("layout, experts_per_layer", [("flat", [13] * 4), ("layered", [13] * 4),
                                                        ("alternate", [10, 3, 10, 3])])
def test_expert_shapes_per_layout(layout, experts_per_layer):
    model = add_experts(tiny_llama(SEED), ExpertConfig(rank=4, layout=layout))
    state = expert_state_dict(model)
    for i, n in enumerate(experts_per_layer):
        prefix = f"model.layers.{i}.self_attn"
        assert tuple(state[f"{prefix}.q_proj.lora_A"].shape) == (n * 4, 32)
        assert tuple(state[f"{prefix}.k_proj.lora_B"].shape) == (16, n * 4)  # 2 kv heads of 8
        assert tuple(state[f"{prefix}.o_proj.router.weight"].shape) == (n, 32)

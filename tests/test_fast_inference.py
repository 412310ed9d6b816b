"""The fast inference path (hirpf.fast_inference) against the formula (ExpertLinear.forward with autograd on),
in float32, float16 and bfloat16, at the embedded model's shapes, for prompts and for decoding (the fold),
and its caches: weights changed by loading, training or an in-place edit are never served stale."""
from __future__ import annotations

import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from app.tiny_model import randomize_experts
from hirpf.checkpoint import load_experts, save_experts
from hirpf.experts import ExpertConfig
from hirpf.fast_inference import (
    BFLOAT16_MIN_GAIN,
    FOLD_MAX_VECTORS,
    FOLD_REACH_CANDIDATES,
    calibrate_bfloat16,
    calibrate_fold_reach,
    choose_decode_dtype,
    decode_dtype_in_use,
    fold_reach_in_use,
    forget_weights,
    set_decode_dtype,
)
from hirpf.identities import IdentitySet
from hirpf.inject import add_experts, expert_layers
from hirpf.routing import use_identities

from expert_reference import ATTENTION_AND_MLP, MIXED, TOLERANCE, formula_and_fast
from testing_utils import tiny_llama


def embedded_shaped_llama(dtype) -> LlamaForCausalLM:
    """Two layers of the embedded model's shapes (hidden 576, 9 query / 3 key-value heads), random weights."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=256)
    return LlamaForCausalLM(config).to(dtype).eval()




@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
@pytest.mark.parametrize("tokens", [1, 7], ids=["decode-fold", "prompt"])
def test_fast_path_equals_formula_at_real_shapes(dtype, gate, tokens):
    model = add_experts(embedded_shaped_llama(dtype), ExpertConfig(rank=8, dropout=0.0, gate=gate,
                                                                   target_modules=ATTENTION_AND_MLP))
    randomize_experts(model, scale=0.05)
    ids = torch.randint(3, 256, (len(MIXED), tokens))
    assert (len(MIXED) * tokens <= FOLD_MAX_VECTORS) == (tokens == 1)  # decoding takes the fold path
    formula, fast = formula_and_fast(model, ids, MIXED)
    assert fast.dtype == dtype and torch.isfinite(fast).all()
    torch.testing.assert_close(fast.float(), formula.float(), rtol=0,
                               atol=TOLERANCE[dtype] * formula.abs().max().item())
    with torch.no_grad():
        plain = model(ids).logits
    assert (fast - plain).abs().max() > 0  # the experts do act


@pytest.mark.parametrize("same_rows", [True, False])
@pytest.mark.parametrize("shared_expert", [False, True], ids=["identities", "with-shared"])
def test_fast_path_equals_formula_in_float64_exactly_enough(same_rows, shared_expert):
    model = add_experts(tiny_llama(dtype=torch.float64), ExpertConfig(layout="layered", rank=3, dropout=0.0,
                                                                      target_modules=ATTENTION_AND_MLP,
                                                                      shared_expert=shared_expert))
    randomize_experts(model)
    rows = [MIXED[2]] * 4 if same_rows else MIXED[:4]
    for tokens in (1, 6):
        formula, fast = formula_and_fast(model, torch.randint(3, 64, (4, tokens)), rows)
        torch.testing.assert_close(fast, formula, rtol=1e-10, atol=1e-10)


def test_one_plan_serves_every_mixture_of_rows_and_each_mixture_gets_its_own_masks():
    # A running batch changes its mixture of identity sets at every join and leave: its plans must not be
    # rebuilt each time (they were: 120 per forward of the embedded model), nor keep the first mixture's masks.
    model = add_experts(tiny_llama(dtype=torch.float64), ExpertConfig(layout="layered", rank=3, dropout=0.0,
                                                                      target_modules=ATTENTION_AND_MLP))
    randomize_experts(model)
    ids = torch.randint(3, 64, (3, 1))
    mixtures = [[MIXED[0], MIXED[2], MIXED[4]], [MIXED[4], MIXED[3], MIXED[2]], [MIXED[2], MIXED[0], MIXED[0]]]
    banks = {id(layer.fast_path): layer.fast_path for layer in expert_layers(model).values()}.values()
    for rows in mixtures:
        formula, fast = formula_and_fast(model, ids, rows)
        torch.testing.assert_close(fast, formula, rtol=1e-10, atol=1e-10)
    # every mixture needs the router (several traits in a row): one plan per projection group, not three
    assert {len(bank._plans._items) for bank in banks} == {1}


@pytest.mark.parametrize("shared_expert", [False, True], ids=["identities", "with-shared"])
def test_strength_zero_everywhere_is_the_prompt_only_model_exactly(shared_expert):
    model = add_experts(tiny_llama(), ExpertConfig(rank=4, gate="sigmoid", shared_expert=shared_expert))
    randomize_experts(model)
    ids = torch.randint(3, 64, (2, 5))
    off = IdentitySet.parse("AGR_low,EXT_high,Doctor").with_strengths("AGR_low=0,EXT_high=0,Doctor=0")
    with torch.no_grad():
        plain = model(ids).logits
        with use_identities(off):
            fast = model(ids).logits
    with torch.enable_grad(), use_identities(off):
        formula = model(ids).logits.detach()
    assert torch.equal(fast, plain) and torch.equal(formula, plain)


@pytest.mark.parametrize("gate", ["softmax", "scaled_softmax", "sigmoid"])
def test_strength_scales_each_experts_contribution(gate):
    """One expert per group (a trait and a profession): the delta of strength s is s times the delta of 1."""
    model = add_experts(tiny_llama(dtype=torch.float64), ExpertConfig(layout="layered", rank=3, dropout=0.0,
                                                                      gate=gate))
    randomize_experts(model)
    captured = {}
    layer = expert_layers(model)["model.layers.1.self_attn.o_proj"]
    layer.register_forward_hook(lambda mod, inp, out: captured.update(x=inp[0], y=out))
    ids = torch.randint(3, 64, (1, 4))
    one = IdentitySet.parse("NEU_high")
    with torch.no_grad(), use_identities(one):
        model(ids)
    delta_one = captured["y"] - layer.base(captured["x"])
    for s in (0.0, 0.5, 1.5, 2.0):
        with torch.no_grad(), use_identities(one.with_strengths({"NEU_high": s})):
            model(ids)
        # the input of layer 1 depends on layer 0's experts, so compare at the same input
        with use_identities(one.with_strengths({"NEU_high": s})), torch.enable_grad():
            y = layer(captured["x"]).detach()
        with use_identities(one), torch.enable_grad():
            unit = layer(captured["x"]).detach() - layer.base(captured["x"])
        torch.testing.assert_close(y - layer.base(captured["x"]), s * unit, rtol=1e-9, atol=1e-12)
    assert delta_one.abs().max() > 0


def test_bfloat16_decode_copies_round_only_the_batch_fold_and_can_be_turned_off():
    model = add_experts(embedded_shaped_llama(torch.float32), ExpertConfig(rank=8, dropout=0.0,
                                                                           target_modules=ATTENTION_AND_MLP))
    randomize_experts(model, scale=0.05)
    decode, prompt = torch.randint(3, 256, (len(MIXED), 1)), torch.randint(3, 256, (len(MIXED), 7))

    def logits(ids):
        with torch.no_grad(), use_identities(MIXED):
            return model(ids).logits

    def one_row(ids):
        with torch.no_grad(), use_identities(MIXED[:1]):
            return model(ids[:1]).logits

    exact_decode, exact_prompt, exact_row = logits(decode), logits(prompt), one_row(decode)
    set_decode_dtype(model, torch.bfloat16)
    narrow = logits(decode)
    assert narrow.dtype == torch.float32 and not torch.equal(narrow, exact_decode)  # the fold read bfloat16
    # bfloat16 keeps 8 significant bits: about 1 % of the largest logit at these random weights
    torch.testing.assert_close(narrow, exact_decode, rtol=0, atol=2e-2 * exact_decode.abs().max().item())
    assert torch.equal(logits(prompt), exact_prompt)  # prompts do not fold: untouched
    assert torch.equal(one_row(decode), exact_row)  # nor does one row decoding alone
    set_decode_dtype(model, None)
    assert torch.equal(logits(decode), exact_decode)


def calibration(float32_s: float, bfloat16_s: float):
    """A stand-in for `calibrate_bfloat16` that reports fixed timings and records that it was asked."""
    asked = []

    def calibrate(in_features, out_features):
        asked.append((in_features, out_features))
        return float32_s, bfloat16_s

    return calibrate, asked


@pytest.mark.parametrize("capability", ["AVX2", "NO AVX", "DEFAULT"])
def test_auto_decodes_in_float32_on_a_cpu_without_bfloat16_dot_products_without_calibrating(capability):
    calibrate, asked = calibration(1.0, 0.1)  # even a calibration that favours bfloat16 is not consulted
    choice = choose_decode_dtype("auto", tiny_llama(), capability=capability, calibrate=calibrate)
    assert choice.dtype is None and choice.name == "model" and capability in choice.reason
    assert asked == []


@pytest.mark.parametrize(("float32_s", "bfloat16_s", "expected"), [
    (1.0, 0.5, torch.bfloat16), (1.0, BFLOAT16_MIN_GAIN, torch.bfloat16), (1.0, 0.9, None), (1.0, 4.0, None)])
def test_auto_takes_bfloat16_where_the_calibration_finds_it_faster_by_the_margin(float32_s, bfloat16_s, expected):
    calibrate, asked = calibration(float32_s, bfloat16_s)
    model = embedded_shaped_llama(torch.float32)
    choice = choose_decode_dtype("auto", model, capability="AVX512", calibrate=calibrate)
    assert choice.dtype is expected
    assert asked == [(576, 2 * 1536)]  # the gate+up fold of the embedded model's shape


def test_auto_keeps_a_narrow_model_and_forced_settings_win():
    calibrate, asked = calibration(1.0, 0.1)
    narrow = choose_decode_dtype("auto", tiny_llama(dtype=torch.bfloat16), capability="AVX512", calibrate=calibrate)
    assert narrow.dtype is None and asked == []
    model = tiny_llama()
    assert choose_decode_dtype("bfloat16", model, capability="AVX2", calibrate=calibrate).dtype is torch.bfloat16
    assert choose_decode_dtype("model", model, capability="AVX512", calibrate=calibrate).dtype is None
    assert asked == []


def test_the_calibration_times_both_products_within_its_budget():
    start = time.perf_counter()
    float32_s, bfloat16_s = calibrate_bfloat16(64, 96, budget_s=0.2)
    assert 0 < float32_s < 0.2 and 0 < bfloat16_s < 0.2
    assert time.perf_counter() - start < 2.0


def test_engine_load_applies_and_logs_the_auto_choice(tiny_base_dir, tmp_path, monkeypatch, caplog):
    """`Engine.load` resolves `auto` for the loaded experts (the CPU's capability, then the calibration) and
    logs it; `decode_dtype_in_use` reads it back for the benchmarks."""
    from transformers import AutoModelForCausalLM

    from hirpf import fast_inference
    from hirpf.engine import Engine

    save_experts(add_experts(AutoModelForCausalLM.from_pretrained(tiny_base_dir), ExpertConfig(rank=2)), tmp_path)

    def load():
        return Engine.load(str(tiny_base_dir), lora_weights=tmp_path, load_in_8bit=False, dtype="float32").model

    monkeypatch.delenv("HIRPF_DECODE_DTYPE", raising=False)
    monkeypatch.setattr(fast_inference, "calibrate_bfloat16", lambda *_: (1.0, 0.5))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    with caplog.at_level("INFO", logger="hirpf.fast_inference"):
        assert decode_dtype_in_use(load()) == "model"
    assert any("AVX2" in r.getMessage() for r in caplog.records)  # the choice is logged with its cause
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert decode_dtype_in_use(load()) == "bfloat16"
    monkeypatch.setenv("HIRPF_DECODE_DTYPE", "model")
    assert decode_dtype_in_use(load()) == "model"


def test_the_fold_reaches_as_far_as_it_is_no_slower_and_the_calibration_decides_it(monkeypatch):
    """`calibrate_fold_reach` extends the fold to the largest vector count at which it took no longer than the
    members one by one, and stops at the first count where it did; every group then folds that far, and a
    packed-step-sized input that takes the fold still gives the formula's result."""
    from hirpf import fast_inference

    model = add_experts(tiny_llama(dtype=torch.float64), ExpertConfig(rank=3, dropout=0.0,
                                                                      target_modules=ATTENTION_AND_MLP))
    randomize_experts(model)

    def slowed(way, seconds, from_vectors):
        def run(projections, x, *rest):
            if x.shape[0] >= from_vectors:
                time.sleep(seconds)
            return way(projections, x, *rest)
        return run

    # Slowed by milliseconds, far above what the tiny products take, so that one hiccup of the machine (a
    # millisecond once made the unslowed fold lose at 64 vectors) cannot decide the outcome.
    folded, apart = fast_inference.folded_outputs, fast_inference.unfolded_outputs
    monkeypatch.setattr(fast_inference, "folded_outputs", slowed(folded, 0.02, FOLD_REACH_CANDIDATES[1]))
    monkeypatch.setattr(fast_inference, "unfolded_outputs", slowed(apart, 0.01, 0))
    assert calibrate_fold_reach(model, passes=1) == FOLD_REACH_CANDIDATES[0]  # the fold lost at the second
    assert fold_reach_in_use(model) == FOLD_REACH_CANDIDATES[0]
    monkeypatch.setattr(fast_inference, "folded_outputs", folded)  # the members apart always slower
    assert calibrate_fold_reach(model, passes=1) == FOLD_REACH_CANDIDATES[-1]
    monkeypatch.setattr(fast_inference, "unfolded_outputs", apart)
    monkeypatch.setattr(fast_inference, "folded_outputs", slowed(folded, 0.02, 0))  # the fold always slower
    assert calibrate_fold_reach(model, passes=1) == FOLD_MAX_VECTORS  # never below the default
    monkeypatch.setattr(fast_inference, "folded_outputs", folded)

    for layer in expert_layers(model).values():
        layer.fast_path.fold_max_vectors = 64
    calls = []
    monkeypatch.setattr(fast_inference, "folded_outputs", lambda *a: calls.append(a[1].numel()) or folded(*a))
    ids = torch.randint(3, 64, (4, 10))  # 40 vectors: a packed step's size, beyond the default reach
    formula, fast = formula_and_fast(model, ids, MIXED[:4])
    assert calls and min(calls) // model.config.hidden_size >= 40 > FOLD_MAX_VECTORS  # they took the fold
    torch.testing.assert_close(fast, formula, rtol=1e-10, atol=1e-10)


def test_nothing_folds_on_a_model_without_expert_layers():
    assert calibrate_fold_reach(tiny_llama()) is None and fold_reach_in_use(tiny_llama()) is None


def test_in_place_edits_are_seen_after_forget_weights():
    model = add_experts(tiny_llama(), ExpertConfig(rank=4))
    randomize_experts(model)
    ids, rows = torch.randint(3, 64, (2, 3)), [MIXED[2], MIXED[4]]
    with torch.no_grad(), use_identities(rows):
        before = model(ids).logits
    for layer in expert_layers(model).values():
        layer.lora_B.data = layer.lora_B.data * 2  # a replaced tensor; its version counter says nothing
    forget_weights(model)
    with torch.no_grad(), use_identities(rows):
        after = model(ids).logits
    formula, _ = formula_and_fast(model, ids, rows)
    torch.testing.assert_close(after, formula, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before)


def test_loading_weights_replaces_the_fast_paths_copies(tmp_path):
    source = add_experts(tiny_llama(), ExpertConfig(rank=4))
    randomize_experts(source, seed=5)
    save_experts(source, tmp_path / "other")
    model = add_experts(tiny_llama(), ExpertConfig(rank=4))
    randomize_experts(model, seed=1)
    ids = torch.randint(3, 64, (1, 4))
    with torch.no_grad(), use_identities(MIXED[2]):
        model(ids)  # builds the fast path's copies of the seed-1 weights
    load_experts(model, tmp_path / "other")
    with torch.no_grad(), use_identities(MIXED[2]):
        loaded = model(ids).logits
        expected = source(ids).logits
    torch.testing.assert_close(loaded, expected, rtol=0, atol=0)


def test_a_training_step_is_seen_by_the_next_evaluation():
    model = add_experts(tiny_llama(), ExpertConfig(rank=4, dropout=0.0))
    randomize_experts(model)
    ids, rows = torch.randint(3, 64, (2, 5)), [MIXED[0], MIXED[2]]
    with torch.no_grad(), use_identities(rows):
        model(ids)  # copies of the current weights
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    with use_identities(rows):
        model(ids, labels=ids).loss.backward()
    optimizer.step()
    model.eval()
    formula, fast = formula_and_fast(model, ids, rows)
    torch.testing.assert_close(fast, formula, rtol=1e-5, atol=1e-5)


def test_moving_to_another_dtype_rebuilds_the_copies():
    model = add_experts(tiny_llama(), ExpertConfig(rank=4))
    randomize_experts(model)
    ids = torch.randint(3, 64, (1, 1))
    with torch.no_grad(), use_identities(MIXED[2]):
        model(ids)
    model.to(torch.float64)
    with torch.no_grad(), use_identities(MIXED[2]):
        fast = model(ids).logits
    formula, _ = formula_and_fast(model, ids, MIXED[2])
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, formula, rtol=1e-9, atol=1e-9)


def test_the_shared_expert_runs_in_every_layer_for_any_set_at_the_strongest_strength():
    """alternate layout: a profession-only set engages no trait expert, but the shared expert of the trait
    layers runs; its weight is the row's strongest identity strength; the empty set engages nothing."""
    model = add_experts(tiny_llama(dtype=torch.float64), ExpertConfig(rank=3, dropout=0.0, shared_expert=True))
    randomize_experts(model)
    trait_layer = expert_layers(model)["model.layers.0.self_attn.q_proj"]
    assert trait_layer.expert_names[-1] == "shared" and trait_layer.group_bounds[-1] == (10, 11)
    x = torch.randn(2, 3, trait_layer.in_features, dtype=torch.float64)
    base = trait_layer.base(x)

    def delta(identities):
        with torch.no_grad(), use_identities(identities):
            fast = trait_layer(x) - base
        with torch.enable_grad(), use_identities(identities):
            formula = trait_layer(x).detach() - base
        torch.testing.assert_close(fast, formula, rtol=1e-10, atol=1e-12)
        return formula

    doctor = IdentitySet.parse("Doctor")
    assert delta(doctor).abs().max() > 0
    assert torch.equal(delta(IdentitySet.parse("")), torch.zeros_like(base))
    strongest = IdentitySet.parse("Doctor,OPE_low").with_strengths("Doctor=1.5,OPE_low=0")
    torch.testing.assert_close(delta(strongest), 1.5 * delta(doctor), rtol=1e-9, atol=1e-12)

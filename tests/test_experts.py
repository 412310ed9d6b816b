"""The vectorized expert layers against a plain per-sample, per-expert reference loop."""
from __future__ import annotations

import random
import threading

import pytest
import torch

from app.tiny_model import randomize_experts
from hirpf.experts import ExpertConfig
from hirpf.fast_inference import forget_weights
from hirpf.identities import ALL_IDENTITIES, GROUPS, IdentitySet, all_combinations
from hirpf.inject import add_experts, expert_layers
from hirpf.routing import use_identities

from expert_reference import ATTENTION_AND_MLP, capture, reference
from testing_utils import tiny_llama

COMBINATIONS = list(all_combinations())


def random_sets(n: int, seed: int) -> list[IdentitySet]:
    rng = random.Random(seed)
    return [IdentitySet() if rng.random() < 0.2 else rng.choice(COMBINATIONS) for _ in range(n)]


@pytest.mark.parametrize("layout", ["flat", "layered", "alternate"])
@pytest.mark.parametrize("router,hard_mask", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_vectorized_layer_equals_reference_loop(layout, router, hard_mask, grad):
    model = tiny_llama(dtype=torch.float64)
    add_experts(model, ExpertConfig(layout=layout, rank=3, alpha=6, dropout=0.0, router=router,
                                    hard_mask=hard_mask, target_modules=ATTENTION_AND_MLP))
    randomize_experts(model)
    sets = random_sets(6, seed=hash((layout, router, hard_mask)) % 1000)
    ids = torch.randint(3, 64, (len(sets), 5))
    seen, _ = capture(model, ids, sets, grad)
    assert len(seen) == 4 * len(ATTENTION_AND_MLP)
    for name, (x, y) in seen.items():
        expected = reference(expert_layers(model)[name], x.detach(), sets, router, hard_mask)
        torch.testing.assert_close(y.detach(), expected, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("gate", ["scaled_softmax", "sigmoid"])
@pytest.mark.parametrize("router,hard_mask", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_gates_equal_reference_loop(gate, router, hard_mask, grad):
    model = tiny_llama(dtype=torch.float64)
    add_experts(model, ExpertConfig(layout="layered", rank=3, alpha=6, dropout=0.0, router=router,
                                    hard_mask=hard_mask, gate=gate))
    randomize_experts(model)
    sets = random_sets(6, seed=7) + [IdentitySet.parse("AGR_high,CON_low,EXT_high,Doctor")] * 2
    seen, _ = capture(model, torch.randint(3, 64, (len(sets), 5)), sets, grad)
    for name, (x, y) in seen.items():
        expected = reference(expert_layers(model)[name], x.detach(), sets, router, hard_mask, gate)
        torch.testing.assert_close(y.detach(), expected, rtol=1e-9, atol=1e-9, msg=name)


def test_gqa_shapes_are_wrapped():
    model = add_experts(tiny_llama(), ExpertConfig(rank=2))
    layers = expert_layers(model)
    assert layers["model.layers.0.self_attn.q_proj"].out_features == 32
    assert layers["model.layers.0.self_attn.k_proj"].out_features == 16  # 2 kv heads of 8
    assert layers["model.layers.0.self_attn.k_proj"].lora_B.shape == (16, 10 * 2)


def test_empty_set_reproduces_base_logits_exactly():
    base = tiny_llama()
    model = add_experts(tiny_llama(), ExpertConfig(rank=4))
    randomize_experts(model)
    ids = torch.randint(3, 64, (3, 7))
    with torch.no_grad():
        expected = base(ids).logits
        outside = model(ids).logits
        with use_identities([IdentitySet()] * 3):
            empty = model(ids).logits
    assert torch.equal(outside, expected)
    assert torch.equal(empty, expected)


@pytest.mark.parametrize("layout", ["flat", "layered", "alternate"])
def test_inactive_experts_have_exactly_no_effect(layout):
    model = add_experts(tiny_llama(dtype=torch.float64), ExpertConfig(layout=layout, rank=3, dropout=0.0))
    randomize_experts(model)
    chosen = IdentitySet.parse("AGR_high,EXT_low,Doctor")
    ids = torch.randint(3, 64, (2, 6))
    with torch.no_grad(), use_identities(chosen):
        before = model(ids).logits
    with torch.no_grad():  # scramble every expert the set does not use
        for layer in expert_layers(model).values():
            r = layer.rank
            for k, name in enumerate(layer.expert_names):
                if name not in chosen:
                    layer.lora_A[k * r:(k + 1) * r].normal_()
                    layer.lora_B[:, k * r:(k + 1) * r].normal_()
                    layer.router.weight[k].normal_()
                    layer.router.bias[k] += 5.0
    forget_weights(model)
    with torch.no_grad(), use_identities(chosen):
        after = model(ids).logits
    assert torch.equal(before, after)
    with torch.no_grad(), use_identities(IdentitySet.parse("AGR_low")):  # a scrambled expert does act
        other = model(ids).logits
    assert not torch.allclose(other, after)


@pytest.mark.parametrize("layout", ["flat", "layered", "alternate"])
def test_router_weights_sum_to_one_over_active_experts(layout):
    """Make every expert the same map M: then each unit adds (sum of its weights) * (alpha/r) * M x, whatever
    the router says, which equals one full M only if the weights over the active experts sum to one."""
    model = add_experts(tiny_llama(dtype=torch.float64), ExpertConfig(layout=layout, rank=2, dropout=0.0))
    randomize_experts(model)
    with torch.no_grad():
        for layer in expert_layers(model).values():
            r = layer.rank
            for k in range(1, layer.num_experts):
                layer.lora_A[k * r:(k + 1) * r] = layer.lora_A[:r]
                layer.lora_B[:, k * r:(k + 1) * r] = layer.lora_B[:, :r]
    sets = [IdentitySet.parse(s) for s in ("AGR_high,CON_low,EXT_high,NEU_low,OPE_high,Artist", "OPE_low",
                                           "AGR_low,Programmer")]
    seen, _ = capture(model, torch.randint(3, 64, (3, 4)), sets, grad=False)
    for name, (x, y) in seen.items():
        layer = expert_layers(model)[name]
        r = layer.rank
        delta = (x @ layer.lora_A[:r].T) @ layer.lora_B[:, :r].T * layer.scaling
        units_used = torch.tensor([[sum(any(n in s for n in layer.expert_names[a:b]) for a, b in layer.group_bounds)]
                                   for s in sets], dtype=x.dtype).unsqueeze(-1)
        torch.testing.assert_close(y, layer.base(x) + units_used * delta, rtol=1e-9, atol=1e-9, msg=name)


def test_layouts_place_groups_in_the_right_layers():
    def experts_of(model, layer):
        return expert_layers(model)[f"model.layers.{layer}.self_attn.q_proj"]

    alternate = add_experts(tiny_llama(), ExpertConfig(layout="alternate"))
    for layer in range(4):
        group = "traits" if layer % 2 == 0 else "professions"
        assert experts_of(alternate, layer).expert_names == GROUPS[group]
        assert experts_of(alternate, layer).group_bounds == ((0, len(GROUPS[group])),)
    swapped = add_experts(tiny_llama(), ExpertConfig(layout="alternate", group_order=("professions", "traits")))
    assert experts_of(swapped, 0).expert_names == GROUPS["professions"]
    assert experts_of(swapped, 1).expert_names == GROUPS["traits"]
    flat = add_experts(tiny_llama(), ExpertConfig(layout="flat"))
    assert experts_of(flat, 1).expert_names == ALL_IDENTITIES
    assert experts_of(flat, 1).group_bounds == ((0, 13),)
    layered = add_experts(tiny_llama(), ExpertConfig(layout="layered"))
    assert experts_of(layered, 2).group_bounds == ((0, 10), (10, 13))


def test_config_rejects_bad_values():
    for bad in (dict(layout="stacked"), dict(rank=0), dict(dropout=1.0), dict(target_modules=()),
                dict(group_order=("traits",))):
        with pytest.raises(ValueError):
            ExpertConfig(**bad)


def test_model_cannot_get_experts_twice():
    model = add_experts(tiny_llama(), ExpertConfig())
    with pytest.raises(ValueError, match="already"):
        add_experts(model, ExpertConfig())


def test_only_expert_parameters_train_and_get_gradients():
    model = add_experts(tiny_llama(), ExpertConfig(rank=2))
    randomize_experts(model)
    model.train()
    ids = torch.randint(3, 64, (2, 6))
    with use_identities([IdentitySet.parse("AGR_high,CON_high,Doctor"), IdentitySet.parse("EXT_low,OPE_high")]):
        model(ids, labels=ids).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n or ".router." in n) for n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    trait_router = dict(model.named_parameters())["model.layers.0.self_attn.q_proj.router.weight"]
    assert trait_router.grad is not None and trait_router.grad.abs().sum() > 0  # routers learn jointly


def test_rows_keep_their_sets_under_beam_search_and_several_return_sequences():
    model = add_experts(tiny_llama(dtype=torch.float64), ExpertConfig(rank=3, dropout=0.0))
    randomize_experts(model, scale=0.5)
    prompts = [[5, 9, 11, 4, 7], [8, 3], [13, 21, 6]]
    sets = [IdentitySet.parse("AGR_high,Doctor"), IdentitySet(), IdentitySet.parse("NEU_high,OPE_low,Artist")]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])  # left padding
    mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    settings = dict(max_new_tokens=6, do_sample=False, num_beams=3, num_return_sequences=2, pad_token_id=0,
                    eos_token_id=None)
    with torch.no_grad(), use_identities(sets):
        together = model.generate(input_ids=ids, attention_mask=mask, **settings)[:, width:]
    for i, (prompt, identities) in enumerate(zip(prompts, sets)):
        with torch.no_grad(), use_identities(identities):
            alone = model.generate(input_ids=torch.tensor([prompt]), **settings)[:, len(prompt):]
        assert torch.equal(together[2 * i:2 * i + 2], alone), f"row {i} ({identities})"
    with torch.no_grad(), use_identities(sets[0]):  # the identities matter at all
        other = model.generate(input_ids=torch.tensor([prompts[2]]), **settings)[:, len(prompts[2]):]
    assert not torch.equal(other, together[4:6])


def test_a_batch_of_the_wrong_size_is_refused():
    model = add_experts(tiny_llama(), ExpertConfig(rank=2))
    randomize_experts(model)
    with (torch.no_grad(), use_identities([IdentitySet.parse("AGR_high")] * 2),
          pytest.raises(ValueError, match="3 rows")):
        model(torch.randint(3, 64, (3, 4)))


def test_concurrent_threads_keep_their_own_identities():
    model = add_experts(tiny_llama(), ExpertConfig(rank=3))
    randomize_experts(model)
    ids = torch.randint(3, 64, (2, 6))
    sets = [IdentitySet.parse(s) for s in ("AGR_high,Doctor", "NEU_low,OPE_high,Programmer", "", "EXT_low")]
    expected = {}
    with torch.no_grad():
        for s in sets:
            with use_identities(s):
                expected[s] = model(ids).logits
    failures = []

    def worker(s):
        for _ in range(15):
            with torch.no_grad(), use_identities(s):
                if not torch.equal(model(ids).logits, expected[s]):
                    failures.append(str(s))

    threads = [threading.Thread(target=worker, args=(s,)) for s in sets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    with torch.no_grad():  # and nothing is left behind after the calls
        assert torch.equal(model(ids).logits, expected[IdentitySet()])

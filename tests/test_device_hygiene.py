"""Code that must be correct on any device, checked on this CPU-only machine: the host copies the serving path
takes (under `host_copy_guard`), and the expert layers on PyTorch's `meta` device, a second device type every
build has (tensors with shapes and no data: an operation that mixes a host tensor into a device computation
fails there as it does on CUDA)."""
from __future__ import annotations

import pytest
import torch

from hirpf.engine import Sampling
from hirpf.experts import ExpertConfig
from hirpf.export import bias_gates
from hirpf.identities import IdentitySet
from hirpf.inject import add_experts
from hirpf.routing import Routing, use_identities
from hirpf.scheduler import Scheduler

from host_copy_guard import numpy_only_after_cpu
from scheduler_helpers import alone
from testing_utils import tiny_llama

GREEDY = Sampling(max_new_tokens=8, do_sample=False)


def test_the_scheduler_and_its_prefix_store_take_host_copies_explicitly(exact_engine, monkeypatch):
    """The prefix store keyed its entries with `tokens.numpy()`, tokens on the model's device: on a GPU every
    request failed at prefill."""
    doctor = IdentitySet.parse("Doctor,CON_high")
    history = [{"role": "user", "content": "Good evening."}]
    with numpy_only_after_cpu(monkeypatch):
        scheduler = Scheduler(exact_engine, max_batch=2, prefix_cache_mb=16)
        try:
            first = scheduler.submit(history, doctor, sampling=GREEDY)
            first.result(timeout=300)
            history = history + [{"role": "assistant", "content": first.text},
                                 {"role": "user", "content": "And tomorrow?"}]
            second = scheduler.submit(history, doctor, sampling=GREEDY)
            second.result(timeout=300)
        finally:
            scheduler.close()
    assert scheduler.prefixes.hits == 1  # the second turn continued the first from the store
    assert second.token_ids == alone(exact_engine, history, doctor, GREEDY)


def test_routing_from_a_device_tensor_keys_on_host_bytes(monkeypatch):
    rows = torch.stack([IdentitySet.parse("Doctor").active_vector(), IdentitySet.parse("EXT_low").active_vector()])
    with numpy_only_after_cpu(monkeypatch):
        routing = Routing(rows)
    assert routing.key == Routing([IdentitySet.parse("Doctor"), IdentitySet.parse("EXT_low")]).key


@pytest.mark.parametrize("layout", ["flat", "layered", "alternate"])
def test_expert_layers_train_and_run_on_another_device(layout):
    """The routing rows are host tensors; the formula path (training, and any forward with gradients) and
    the export's gates mixed them into the model's device computation unmoved."""
    model = tiny_llama(layers=2)
    add_experts(model, ExpertConfig(rank=4, layout=layout))
    model.to("meta")
    ids = torch.zeros(2, 5, dtype=torch.long, device="meta")
    pairs = torch.tensor([[[1, 0]] + [[-1, -1]] * 5, [[0, 0], [1, 2]] + [[-1, -1]] * 4])  # (group, expert), as HIS
    with use_identities(pairs):
        loss = model(input_ids=ids, labels=ids).loss  # gradients on: the formula path
    loss.backward()
    with torch.no_grad(), use_identities([IdentitySet.parse("Doctor"), IdentitySet()]):
        assert model(input_ids=ids).logits.device.type == "meta"  # the fast path
    assert all(g.device.type == "meta" for g in bias_gates(model, IdentitySet.parse("AGR_high,Artist")).values())

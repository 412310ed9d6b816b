"""The serving and training paths on a CUDA device, at real shapes with random weights (`real_shapes`).

Every test here is marked `cuda` and skipped on a machine without one (conftest.py), so CI collects them
and runs none; `scripts/gpu_check.sh` runs them on a GPU machine, which has torch, transformers, peft,
accelerate and pytest but no gradio, sqlalchemy or model weights, and maybe no bitsandbytes (the 8-bit tests
skip then). Nothing here imports gradio or the store (`app.tiny_model` imports neither).
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from app.tiny_model import randomize_experts
from hirpf.experts import ExpertConfig
from hirpf.identities import IdentitySet
from hirpf.inject import add_experts, expert_layers
from hirpf.routing import use_identities
from hirpf.sampling import Sampling
from hirpf.scheduler import Scheduler

from expert_reference import MIXED, TOLERANCE, formula_and_fast
from real_shapes import EXPERT_TARGETS, random_engine, random_model, save_random_base
from training_runs import train, write_data

pytestmark = pytest.mark.cuda
DEVICE = "cuda"
SETS = [IdentitySet.parse(s) for s in ("AGR_high", "AGR_low,Doctor", "CON_high,EXT_low,Artist", "",
                                       "AGR_high,CON_low,EXT_high,NEU_low,OPE_high,Programmer", "OPE_low")]


def question(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Question number {i}: what do you do on a Sunday?"}]


@pytest.fixture(scope="module")
def engine():
    """The embedded model's shape (30 layers), float16, random experts on attention and MLP."""
    return random_engine("embedded", torch.float16, DEVICE)


def test_engine_generates_compares_and_streams_on_the_device(engine):
    assert engine.model.device.type == DEVICE
    histories = [question(i) for i in range(len(SETS))]
    replies = engine.generate(histories, SETS, sampling=Sampling(max_new_tokens=6, seed=1))
    assert [len(r) for r in replies] == [1] * len(SETS) and all(isinstance(r[0], str) for r in replies)
    with_identity, without = engine.compare(question(0), SETS[1], sampling=Sampling(max_new_tokens=6, seed=2))
    assert isinstance(with_identity, str) and isinstance(without, str)
    texts = list(engine.stream(question(1), SETS[2], sampling=Sampling(max_new_tokens=6, seed=3)))
    assert texts and all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))


def test_the_scheduler_batches_mixed_rows_and_reuses_prefixes_on_the_device(engine):
    scheduler = Scheduler(engine, max_batch=8, prefix_cache_mb=64)
    try:
        streams = [scheduler.submit(question(i), s, sampling=Sampling(max_new_tokens=12, seed=1 + i))
                   for i, s in enumerate(SETS)]
        for stream in streams:
            stream.result(timeout=300)
            assert stream.finish_reason in ("eos", "length"), stream.error
        assert scheduler.runner.widest_batch > 1
        hits = scheduler.prefixes.hits
        again = scheduler.submit(question(0), SETS[0], sampling=Sampling(max_new_tokens=12, seed=1))
        again.result(timeout=300)
        assert again.finish_reason in ("eos", "length") and scheduler.prefixes.hits > hits  # its prompt was stored
    finally:
        scheduler.close()


def experts_on(model, gate: str = "softmax"):
    add_experts(model, ExpertConfig(rank=8, dropout=0.0, gate=gate, target_modules=EXPERT_TARGETS))
    randomize_experts(model, scale=0.05)
    return model.eval()


def assert_fast_path_is_the_formula(model, vocab_size: int, tokens: int) -> None:
    ids = torch.randint(4, vocab_size, (len(MIXED), tokens), device=DEVICE)
    formula, fast = formula_and_fast(model, ids, MIXED)
    assert torch.isfinite(fast).all()
    dtype = fast.dtype if fast.dtype in TOLERANCE else torch.float16
    torch.testing.assert_close(fast.float(), formula.float(), rtol=0,
                               atol=TOLERANCE[dtype] * formula.abs().max().item())
    with torch.no_grad():
        plain = model(ids).logits
    assert (fast - plain).abs().max() > 0  # the experts do act


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", ["embedded", "llama2-7b"])
@pytest.mark.parametrize("tokens", [1, 7], ids=["decode", "prompt"])
def test_fast_path_equals_formula_on_the_device(dtype, shape, tokens):
    model = experts_on(random_model(shape, dtype=dtype, device=DEVICE, layers=2))
    assert_fast_path_is_the_formula(model, model.config.vocab_size, tokens)


@pytest.mark.parametrize("shape", ["embedded", "llama2-7b"])
def test_fast_path_equals_formula_around_8bit_projections_on_the_device(shape, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    save_random_base(shape, tmp_path, layers=2)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                                                 dtype=torch.float16, device_map={"": 0})
    model = experts_on(model)
    assert all(isinstance(layer.base, bnb.nn.Linear8bitLt) for layer in expert_layers(model).values())
    for tokens in (1, 7):
        assert_fast_path_is_the_formula(model, model.config.vocab_size, tokens)


def test_a_few_training_steps_on_the_device(tmp_path):
    """`training/train.py` on the GPU (the Trainer picks it): the experts learn, only they are saved."""
    base = save_random_base("embedded", tmp_path / "base", dtype=torch.float32, layers=4)
    out = tmp_path / "run"
    train("--data", write_data(tmp_path / "data.json", n=8), "--base_model", base, "--output_dir", out, "--dev",
          "--rank", 4, "--batch_size", 2, "--micro_batch_size", 2, "--num_epochs", 1, "--eval_steps", 100,
          "--learning_rate", 1e-2, "--warmup_steps", 0, "--logging_steps", 1)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 4 and summary["final_train_loss"] is not None
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B") and v.abs().sum() > 0 for k, v in weights.items())
    assert not any("embed_tokens" in k for k in weights)  # experts only, never the base


def test_the_export_is_our_layers_on_the_device(tmp_path):
    """An identity set exported as a plain LoRA, loaded by PEFT on the device, gives our layers' logits."""
    peft = pytest.importorskip("peft")
    from hirpf.export import export_identity_set

    model = add_experts(random_model("embedded", torch.float32, DEVICE, layers=2),
                        ExpertConfig(rank=4, dropout=0.0, layout="layered"))
    randomize_experts(model, seed=5)
    with torch.no_grad():  # the bias gate is the live layers' gate when the router reads nothing of the input
        for layer in expert_layers(model).values():
            layer.router.weight.zero_()
    identities = IdentitySet.parse("EXT_low,NEU_high,Artist").with_strengths("NEU_high=0.5")
    export_identity_set(model, None, identities, tmp_path, gate="bias")
    ids = torch.randint(4, model.config.vocab_size, (2, 19), device=DEVICE)
    with torch.no_grad(), use_identities([identities]):
        ours = model(input_ids=ids).logits
    exported = peft.PeftModel.from_pretrained(random_model("embedded", torch.float32, DEVICE, layers=2),
                                              str(tmp_path)).eval()
    with torch.no_grad():
        theirs = exported(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)

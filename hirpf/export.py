"""Export one fixed identity set as a standard PEFT LoRA adapter, for servers that know plain LoRA only.

For one wrapped projection, the experts add `scaling · Σ_i w_i(x) · B_i A_i x` over the chosen experts `i`
of the layer's groups, where `w_i(x)` is the gate (softmax over a group's chosen experts of the router's
logits, or the configured variant, times the identity's strength). With the gate held fixed at `w̄_i` the
sum is one LoRA of rank k·r, k the number of chosen identities in that layer's groups:

    A = [A_i; A_j; ...]                  (k·r × in: the chosen experts' A, stacked)
    B = [scaling·w̄_i·B_i | scaling·w̄_j·B_j | ...]   (out × k·r)

written with `lora_alpha = r` so that PEFT's own scaling is 1. Layers whose groups the set does not use (the
other level of the `alternate` layout) get no adapter. The fixed gate `w̄` (`--gate`):

- `mean` (default): the gate averaged over tokens, on the assistant turns of held-out dialogues (`--data`,
  the trainer's held-out split) rendered under the exported set, with the experts on: the weight each
  expert gets on average where the model speaks as that persona.
- `bias`: the router at its bias alone (its input set to zero): needs no data, but ignores what the router
  reads from the hidden state.

With the router off (`ExpertConfig(router=False)`) or a router whose weights are zero, the gate does not
depend on the input, both choices give it exactly, and the export reproduces our layers to float rounding.
Strengths are part of the gate, so an export of `AGR_low=1.6,Doctor` carries them.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .dialogues import IGNORE, Dialogue, tokenize
from .fast_inference import forget_weights
from .identities import IdentitySet
from .inject import expert_config, expert_layers
from .prompts import Conditioning
from .routing import Routing, use_identities

GATES = ("mean", "bias")
DESCRIPTION_FILE = "hirpf_export.json"


def bias_gates(model: nn.Module, identities: IdentitySet) -> dict[str, torch.Tensor]:
    """Each expert layer's gate `[E]` for `identities` with the router at its bias alone."""
    routing = Routing([identities])
    gates = {}
    for name, layer in expert_layers(model).items():
        chosen, strength = (t[:, list(layer.expert_ids)] for t in routing.rows(1))
        logits = (layer.router.bias.detach()[None] if layer.router is not None
                  else torch.zeros(1, layer.num_experts, dtype=layer.lora_A.dtype))
        gates[name] = layer.mixing_weights(logits, chosen, strength)[0].detach()
    return gates


def as_bias_gate_exports(model: nn.Module) -> None:
    """Make the live layers compute, for any identity set, what that set's `bias` export computes: every
    router reads nothing from its input (weights zeroed, biases kept), so its gate is the one the export
    holds fixed. This measures how close exports come to the live experts on many sets at once
    (`python -m hirpf.eval recognize --as_export bias`) without writing an adapter per set."""
    with torch.no_grad():
        for layer in expert_layers(model).values():
            if layer.router is not None:
                layer.router.weight.zero_()
    forget_weights(model)


def mean_gates(model: nn.Module, tokenizer, identities: IdentitySet, dialogues: list[Dialogue],
               max_length: int = 384) -> dict[str, torch.Tensor]:
    """Each expert layer's gate `[E]` averaged over the assistant tokens of `dialogues`, every one rendered
    under `identities` (its own identity set is ignored) and run with those experts on."""
    layers = expert_layers(model)
    routing = Routing([identities])
    sums = {name: torch.zeros(layer.num_experts, dtype=torch.float64) for name, layer in layers.items()}
    count = 0
    positions: list[torch.Tensor] = []  # the assistant tokens of the dialogue being run

    def record(name, layer):
        def hook(module, args):
            chosen, strength = (t[:, list(layer.expert_ids)] for t in routing.rows(1))
            x = args[0][0, positions[0]].to(layer.lora_A.dtype)  # [tokens, in]
            logits = layer.router(x) if layer.router is not None else x.new_zeros(x.shape[0], layer.num_experts)
            w = layer.mixing_weights(logits[None], chosen, strength)[0]  # [tokens, E]
            sums[name] += w.sum(dim=0).double().cpu()  # the sums stay on the host; w is on the model's device
        return hook

    handles = [layer.register_forward_pre_hook(record(name, layer)) for name, layer in layers.items()]
    try:
        with torch.no_grad(), use_identities(routing):
            for dialogue in dialogues:
                features = tokenize(dataclasses.replace(dialogue, identities=identities), tokenizer,
                                    Conditioning.EXPERTS_AND_PROMPT, max_length)
                if features is None:
                    continue
                labels = features["labels"]
                # The token at t predicts label t+1: the positions whose next token is the assistant's.
                where = (labels[1:] != IGNORE).nonzero().flatten()
                if where.numel() == 0:
                    continue
                positions[:] = [where]
                model(input_ids=features["input_ids"][None].to(model.device))
                count += where.numel()
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise ValueError("no assistant tokens to average the gates over: the calibration dialogues are empty")
    return {name: (total / count).to(layers[name].lora_A.dtype) for name, total in sums.items()}


def lora_weights(model: nn.Module, gates: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A `[k·r, in]`, B `[out, k·r]`)} for every layer with a non-zero fixed gate."""
    weights = {}
    for name, layer in expert_layers(model).items():
        kept = [i for i in range(layer.num_experts) if float(gates[name][i]) != 0.0]
        if not kept:
            continue
        r = layer.rank
        a = torch.cat([layer.lora_A.detach()[i * r:(i + 1) * r] for i in kept])
        b = torch.cat([layer.lora_B.detach()[:, i * r:(i + 1) * r] * (layer.scaling * gates[name][i]) for i in kept],
                      dim=1)
        weights[name] = (a, b)
    return weights


def write_peft_adapter(weights: dict[str, tuple[torch.Tensor, torch.Tensor]], directory: str | Path,
                       base_model: str, description: dict) -> Path:
    """`adapter_config.json` + `adapter_model.safetensors` in PEFT's LoRA format (`lora_alpha = r` per
    module, so PEFT's scaling is 1; per-module ranks in `rank_pattern`), and `description` in
    `hirpf_export.json`."""
    if not weights:
        raise ValueError("the identity set engages no expert layer: there is nothing to export")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ranks = {name: a.shape[0] for name, (a, _) in weights.items()}
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": common,
        "lora_alpha": common,
        "rank_pattern": {name: rank for name, rank in ranks.items() if rank != common},
        "alpha_pattern": {name: rank for name, rank in ranks.items() if rank != common},
        "target_modules": sorted(weights),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    # What this adapter is, beside it: PEFT warns about keys in its config that it does not know.
    (directory / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2) + "\n")
    state = {}
    for name, (a, b) in weights.items():
        state[f"base_model.model.{name}.lora_A.weight"] = a.float().contiguous().cpu()
        state[f"base_model.model.{name}.lora_B.weight"] = b.float().contiguous().cpu()
    save_file(state, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    return directory


def export_identity_set(model: nn.Module, tokenizer, identities: IdentitySet, directory: str | Path,
                        gate: str = "mean", dialogues: list[Dialogue] | None = None) -> Path:
    """Write `identities` on `model`'s experts as a PEFT LoRA adapter in `directory` (see the module doc)."""
    config = expert_config(model)
    if config is None:
        raise ValueError("the model holds no identity experts to export")
    if not identities.names:
        raise ValueError("the empty identity set is the plain base model: there is no adapter to export")
    if gate == "mean":
        if not dialogues:
            raise ValueError("gate 'mean' needs calibration dialogues")
        gates = mean_gates(model, tokenizer, identities, dialogues)
    elif gate == "bias":
        gates = bias_gates(model, identities)
    else:
        raise ValueError(f"unknown gate {gate!r}; choose one of {', '.join(GATES)}")
    description = {"identities": str(identities), "gate": gate, "expert_layout": config.layout,
                   "expert_rank": config.rank, "expert_gate": config.gate,
                   "calibration_dialogues": len(dialogues) if gate == "mean" else 0,
                   "experts": getattr(model, "hirpf_expert_dir", "")}
    base_model = config.base_model or getattr(model, "hirpf_base_model", "")
    return write_peft_adapter(lora_weights(model, gates), directory, base_model, description)

"""Put identity experts into a causal LM, find them again, and read or write their weights."""
from __future__ import annotations

import re

import torch
from torch import nn

from . import fast_inference
from .experts import ExpertConfig, ExpertLinear

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)(?:\.|$)")


def layer_index(module_name: str) -> int:
    """The decoder layer a module belongs to, from its dotted name (`model.layers.12.self_attn.q_proj`)."""
    match = _LAYER_INDEX.search(module_name)
    if match is None:
        raise ValueError(f"cannot tell which decoder layer {module_name!r} belongs to")
    return int(match.group(1))


def add_experts(model: nn.Module, config: ExpertConfig) -> nn.Module:
    """Wrap every target projection of `model` in place; return the model. Only expert and router
    parameters are left trainable."""
    if expert_layers(model):
        raise ValueError("this model already holds identity experts")
    targets = [(name, module) for name, module in model.named_modules()
               if name.rsplit(".", 1)[-1] in config.target_modules and isinstance(module, nn.Linear)]
    if not targets:
        raise ValueError(f"no linear module named {', '.join(config.target_modules)} in {type(model).__name__}")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped: dict[str, ExpertLinear] = {}
    for name, module in targets:
        layer = ExpertLinear(module, config.groups_for_layer(layer_index(name)), config)
        layer.train(model.training)  # new modules start in training mode; follow the model's
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
        wrapped[name] = layer
    fast_inference.attach(wrapped, config.shared_inputs)
    model.hirpf_expert_config = config
    return model


def expert_layers(model: nn.Module) -> dict[str, ExpertLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, ExpertLinear)}


def expert_config(model: nn.Module) -> ExpertConfig | None:
    return getattr(model, "hirpf_expert_config", None)


def expert_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every expert and router tensor, keyed `<projection>.lora_A` etc. (no base weights)."""
    state = {}
    for name, layer in expert_layers(model).items():
        for key, tensor in layer.named_parameters():
            if not key.startswith("base."):
                state[f"{name}.{key}"] = tensor.detach()
    return state


def load_expert_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into the model's experts; any missing, unexpected or misshaped tensor is an error."""
    own = expert_state_dict(model)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
                 if k in state and state[k].shape != own[k].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if items:
            shown = ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise ValueError("expert weights do not match the model's experts: " + "; ".join(problems))
    with torch.no_grad():
        for k, tensor in own.items():
            tensor.copy_(state[k].to(dtype=tensor.dtype, device=tensor.device))
    fast_inference.forget_weights(model)


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

"""Mixture of LoRA identity experts around a frozen projection.

For one wrapped projection W holding E experts of rank r (grouped in routing units):

    x ──► W ─────────────────────────────────────────────────────► (+) ──► y
    │                                                              ▲
    ├──► dropout ──► A_cat (E·r × in) ──► a [E, r] ──┐             │
    │                                                ⊙ w ──► B_cat (out × E·r) · (alpha/r)
    └──► router (E × in) ──► + mask bias ──► softmax per unit ──► w [E]

    mask bias = 0 for the row's chosen experts, -inf otherwise;  w = 0 for a unit the row does not use.

A batch whose rows carry different identity sets is still one pair of matmuls. Projections that read the
same input (q, k and v) share one `InputBank`: at inference their A matrices and routers are concatenated
into a single matmul, computed once per input and reused by the siblings.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from .identities import ALL_IDENTITIES, GROUPS
from .routing import current_routing

LAYOUTS = ("flat", "layered", "alternate")


@dataclass
class ExpertConfig:
    """Where the identity experts go and how they mix."""

    layout: str = "alternate"  # flat: all 13 experts, one router; layered: both groups, a router each; alternate: one group per layer
    rank: int = 16  # LoRA rank r of every expert
    alpha: float = 16.0  # scaling is alpha / rank
    dropout: float = 0.05  # dropout on the expert input (training only)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # projection names to wrap
    group_order: tuple[str, ...] = ("traits", "professions")  # alternate: layer i holds group_order[i % len]
    router: bool = True  # learned router; False mixes the chosen experts uniformly (ablation)
    hard_mask: bool = True  # only chosen experts mix; False mixes every expert of an engaged group (ablation)
    shared_inputs: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # projections that read one input: fused at inference
    base_model: str = ""  # the base model the experts belong to (checked when loading)

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        self.group_order = tuple(self.group_order)
        self.shared_inputs = tuple(tuple(s) for s in self.shared_inputs)
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("target_modules is empty")
        if sorted(self.group_order) != sorted(GROUPS):
            raise ValueError(f"group_order must list each of {', '.join(GROUPS)} once, got {list(self.group_order)}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def units_for_layer(self, layer: int) -> tuple[tuple[str, ...], ...]:
        """The routing units (tuples of expert names) a decoder layer holds; each unit has its own softmax."""
        if self.layout == "flat":
            return (ALL_IDENTITIES,)
        if self.layout == "layered":
            return tuple(GROUPS.values())
        return (GROUPS[self.group_order[layer % len(self.group_order)]],)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["group_order"] = list(self.group_order)
        d["shared_inputs"] = [list(s) for s in self.shared_inputs]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExpertConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown expert config fields: {', '.join(sorted(unknown))}")
        return cls(**d)


class ExpertLinear(nn.Module):
    """A frozen projection (`nn.Linear`, bitsandbytes `Linear8bitLt` / `Linear4bit`) plus identity experts."""

    def __init__(self, base: nn.Module, units: tuple[tuple[str, ...], ...], config: ExpertConfig):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.expert_names = tuple(n for unit in units for n in unit)
        self.expert_ids = tuple(ALL_IDENTITIES.index(n) for n in self.expert_names)
        bounds, start = [], 0
        for unit in units:
            bounds.append((start, start + len(unit)))
            start += len(unit)
        self.unit_bounds = tuple(bounds)
        self.rank, self.scaling = config.rank, config.scaling
        self.hard_mask, self.use_router = config.hard_mask, config.router
        n = len(self.expert_names)
        weight_device = _weight_device(base)
        self.lora_A = nn.Parameter(torch.empty(n * config.rank, self.in_features, device=weight_device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, n * config.rank, device=weight_device))
        # PEFT's LoRA init: A Kaiming-uniform (per expert, the same fan-in), B zero, so a new expert is a no-op.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if config.router:
            # Zero router: uniform over the active experts until trained.
            self.router = nn.Linear(self.in_features, n, device=weight_device)
            nn.init.zeros_(self.router.weight)
            nn.init.zeros_(self.router.bias)
        else:
            self.router = None
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.bank, self.bank_slot = InputBank([self]), 0  # replaced when siblings share the input

    @property
    def num_experts(self) -> int:
        return len(self.expert_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        mixed = self.bank.mixed_inputs(x)
        if mixed is None:
            return y
        z = mixed[..., self.bank_slot, :]
        return y + F.linear(z, self.lora_B).to(y.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, experts={self.num_experts}, r={self.rank}, units={self.unit_bounds}"


class InputBank:
    """Projections of one layer that read the same input; their expert inputs are computed together.

    `mixed_inputs(x)` returns `[..., P, E·r]`: for each member, A·x with each expert's r columns already
    weighted by its router weight and scaling, ready for that member's B. Not an `nn.Module` (it owns no
    parameters, only references), so the state dict keeps one entry per projection.
    """

    def __init__(self, members: list[ExpertLinear]):
        first = members[0]
        for m in members[1:]:
            if (m.in_features, m.expert_ids, m.unit_bounds) != (first.in_features, first.expert_ids, first.unit_bounds):
                raise ValueError("projections sharing an input must hold the same experts")
        self.members = members
        for slot, m in enumerate(members):
            m.bank, m.bank_slot = self, slot
        self._fused: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None

    def mixed_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        routing = current_routing()
        if routing is None:
            return None
        cached = routing.shared.get(id(self))
        if cached is not None and cached[0] is x:
            return cached[1]
        first = self.members[0]
        rows = x.shape[0]
        table = routing.table(first.expert_ids, first.unit_bounds, rows, first.scaling, first.hard_mask,
                              first.lora_A.device, first.lora_A.dtype)
        result = self._compute(x, table) if table.any_active else None
        routing.shared[id(self)] = (x, result)
        return result

    def _compute(self, x: torch.Tensor, table) -> torch.Tensor:
        first = self.members[0]
        p, e, r = len(self.members), first.num_experts, first.rank
        lead = x.shape[:-1]
        x = x.to(first.lora_A.dtype)
        broadcast = (x.shape[0],) + (1,) * (x.dim() - 2) + (1, e)  # [rows, 1.., 1 (members), E]
        dropout_active = first.training and isinstance(first.dropout, nn.Dropout)
        if first.use_router and not dropout_active:
            # One matmul for every member's A and router (the router rides along as extra output rows).
            weight, bias = self._fused_weights()
            h = F.linear(x, weight, bias)
            a, logits = h[..., : p * e * r], h[..., p * e * r :]
        else:
            a = F.linear(first.dropout(x), torch.cat([m.lora_A for m in self.members]))
            logits = None
            if first.use_router:  # the router sees the input without dropout
                logits = F.linear(x, torch.cat([m.router.weight for m in self.members]),
                                  torch.cat([m.router.bias for m in self.members]))
        if logits is None:
            weights = table.uniform.view(broadcast)
        else:
            logits = logits.view(*lead, p, e) + table.bias.view(broadcast)
            if len(first.unit_bounds) == 1:
                weights = logits.softmax(dim=-1)
            else:
                weights = torch.cat([logits[..., s:t].softmax(dim=-1) for s, t in first.unit_bounds], dim=-1)
            weights = weights * table.scale.view(broadcast)
        mixed = a.view(*lead, p, e, r) * weights.unsqueeze(-1)
        return mixed.view(*lead, p, e * r)

    def _fused_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        params = [t for m in self.members for t in (m.lora_A, m.router.weight, m.router.bias)]
        if torch.is_grad_enabled() and any(t.requires_grad for t in params):
            return self._concat()  # autograd must see the concatenation
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in params)
        if self._fused is None or self._fused[0] != key:
            with torch.no_grad():
                self._fused = (key, *self._concat())
        return self._fused[1], self._fused[2]

    def _concat(self) -> tuple[torch.Tensor, torch.Tensor]:
        a = [m.lora_A for m in self.members]
        weight = torch.cat(a + [m.router.weight for m in self.members])
        zeros = torch.zeros(sum(t.shape[0] for t in a), dtype=weight.dtype, device=weight.device)
        bias = torch.cat([zeros] + [m.router.bias for m in self.members])
        return weight, bias


def _weight_device(module: nn.Module) -> torch.device:
    w = getattr(module, "weight", None)
    return w.device if w is not None and w.device.type != "meta" else torch.device("cpu")

"""Mixture of LoRA identity experts around a frozen projection: the formula.

For one wrapped projection W holding E experts of rank r, in routing groups (each with its own gate):

    x ──► W ─────────────────────────────────────────────────────────► (+) ──► y
    │                                                                  ▲
    ├──► dropout ──► A_cat (E·r × in) ──► A·x [E, r] ──┐               │
    │                                                  ⊙ w ──► B_cat (out × E·r) · (alpha/r)
    └──► router (E × in) ──► + mask ──► gate per group ──► × strength ──► w [E]

    mask = 0 for the row's chosen experts, -inf otherwise;  w = 0 in a group the row does not use.
    gate: softmax over a group's chosen experts (the paper's), that times their number, or 2·sigmoid each.
    shared_expert: one more group in every layer, a single expert on for any identity set (w = its strength),
    so what all identities share is learnt once and the identity experts learn what sets them apart.

`ExpertLinear.forward` computes exactly that, for every batch row at once (rows may carry different identity
sets): it is the path for training and for anything unusual. At inference the same result comes from
`hirpf.fast_inference`, which fuses projections that read one input (q, k, v), keeps concatenated weights
and resolved masks between calls, and folds W and B into one matmul for decoding on the CPU; it is tested
for equality with this formula.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from .identities import ALL_IDENTITIES, GROUPS
from .routing import EXPERT_SLOTS, SHARED_EXPERT, current_routing

LAYOUTS = ("flat", "layered", "alternate")
GATES = ("softmax", "scaled_softmax", "sigmoid")


def _option(default, help_text: str):
    """A config field with its help text, which the trainer's flags read."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


@dataclass
class ExpertConfig:
    """Where the identity experts go and how they mix."""

    layout: str = _option("alternate", "flat: all 13 experts in every layer, one gate; layered: both groups in "
                                       "every layer, a gate each; alternate: trait experts on even layers, "
                                       "profession experts on odd ones (the paper's inter-level isolation)")
    rank: int = _option(16, "LoRA rank r of every expert")
    alpha: float = _option(16.0, "the expert deltas are scaled by alpha / rank")
    dropout: float = _option(0.05, "dropout on the expert input (training only)")
    target_modules: tuple[str, ...] = _option(("q_proj", "k_proj", "v_proj", "o_proj"),
                                              "names of the linear projections to wrap")
    group_order: tuple[str, ...] = _option(("traits", "professions"),
                                           "alternate: decoder layer i holds group_order[i % 2]")
    router: bool = _option(True, "a learned router; false mixes the chosen experts uniformly (ablation)")
    hard_mask: bool = _option(True, "only the chosen experts mix; false mixes every expert of a group the row "
                                    "uses (ablation, as the original code ran)")
    gate: str = _option("softmax", "softmax: the paper's, the weights of a group's chosen experts sum to 1 (two "
                                   "traits get half each); scaled_softmax: that times their number; sigmoid: "
                                   "2·sigmoid(router) per expert, 1 before training, so each keeps full strength")
    shared_expert: bool = _option(False, "one more expert in every layer, on whenever a row chooses any identity "
                                         "(at its strongest identity's strength): it learns what all identity "
                                         "dialogues share, so that the identity experts learn only what sets "
                                         "them apart and add up without counting the common part twice")
    shared_inputs: tuple[tuple[str, ...], ...] = _option((("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")),
                                                         "projections that read one input: fused at inference")
    base_model: str = _option("", "the base model the experts belong to (checked when loading)")

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        self.group_order = tuple(self.group_order)
        self.shared_inputs = tuple(tuple(s) for s in self.shared_inputs)
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if self.gate not in GATES:
            raise ValueError(f"unknown gate {self.gate!r}; choose one of {', '.join(GATES)}")
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

    def groups_for_layer(self, layer: int) -> tuple[tuple[str, ...], ...]:
        """The routing groups (tuples of expert names) a decoder layer holds; each group has its own gate."""
        if self.layout == "flat":
            groups = (ALL_IDENTITIES,)
        elif self.layout == "layered":
            groups = tuple(GROUPS.values())
        else:
            groups = (GROUPS[self.group_order[layer % len(self.group_order)]],)
        return groups + ((SHARED_EXPERT,),) if self.shared_expert else groups

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

    @classmethod
    def help(cls) -> dict[str, tuple[object, str]]:
        """{field: (default, help text)}, in declaration order."""
        return {f.name: (f.default if f.default is not MISSING else f.default_factory(), f.metadata["help"])
                for f in fields(cls)}


class ExpertLinear(nn.Module):
    """A frozen projection (`nn.Linear`, bitsandbytes `Linear8bitLt` / `Linear4bit`) plus identity experts."""

    def __init__(self, base: nn.Module, groups: tuple[tuple[str, ...], ...], config: ExpertConfig):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.plain_base = type(base) is nn.Linear
        self.expert_names = tuple(n for group in groups for n in group)
        self.expert_ids = tuple(EXPERT_SLOTS.index(n) for n in self.expert_names)  # columns of Routing.rows
        bounds, start = [], 0
        for group in groups:
            bounds.append((start, start + len(group)))
            start += len(group)
        self.group_bounds = tuple(bounds)  # (start, stop) of each routing group among this layer's experts
        self.rank, self.scaling = config.rank, config.scaling
        self.hard_mask, self.gate = config.hard_mask, config.gate
        n = len(self.expert_names)
        where = dict(device=_weight_device(base), dtype=_expert_dtype(base))
        self.lora_A = nn.Parameter(torch.empty(n * config.rank, self.in_features, **where))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, n * config.rank, **where))
        # PEFT's LoRA init: A Kaiming-uniform (per expert, the same fan-in), B zero, so a new expert is a no-op.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if config.router:
            # Zero router: every gate starts at its untrained value (uniform softmax, sigmoid gates of 1).
            self.router = nn.Linear(self.in_features, n, **where)
            nn.init.zeros_(self.router.weight)
            nn.init.zeros_(self.router.bias)
        else:
            self.router = None
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.fast_path = None  # set by hirpf.fast_inference.attach (inject.add_experts does)

    @property
    def num_experts(self) -> int:
        return len(self.expert_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = current_routing()
        if routing is None:
            return self.base_forward(x)  # outside any identity context: the plain base model
        if self.fast_path is not None and not (self.training or torch.is_grad_enabled()):
            return self.fast_path.output(self, x, routing)  # the same result in fewer operations
        return routing.as_rows(self.formula(routing.as_rows(x), routing))

    def formula(self, x: torch.Tensor, routing) -> torch.Tensor:
        """The layer's output for `x` `[rows, ..., in]`, one identity row of `routing` per batch row."""
        chosen, strength = routing.rows(x.shape[0])
        chosen, strength = chosen[:, self.expert_ids], strength[:, self.expert_ids]  # [rows, E]
        if not chosen.any():
            return self.base_forward(x)  # no row uses these experts
        h = x.to(self.lora_A.dtype)
        ax = F.linear(self.dropout(h), self.lora_A).unflatten(-1, (self.num_experts, self.rank))  # A·x per expert
        logits = self.router(h) if self.router is not None else h.new_zeros(h.shape[:-1] + (self.num_experts,))
        w = self.mixing_weights(logits, chosen, strength)  # [..., E]
        delta = F.linear((ax * w.unsqueeze(-1)).flatten(-2), self.lora_B) * self.scaling  # B·(w ⊙ A·x) · alpha/r
        y = self.base_forward(x)
        return y + delta.to(y.dtype)

    def mixing_weights(self, logits: torch.Tensor, chosen: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """w `[rows, ..., E]` from router logits `[rows, ..., E]` and the rows' chosen `[rows, E]` and strengths."""
        row_view = (chosen.shape[0],) + (1,) * (logits.dim() - 2) + (chosen.shape[1],)
        # The rows are host tensors (hirpf.routing); the logits live on the model's device.
        chosen = chosen.view(row_view).to(logits.device)
        strength = strength.view(row_view).to(logits.device, logits.dtype)
        weights = []
        for start, stop in self.group_bounds:
            picked = chosen[..., start:stop]
            uses = picked.any(dim=-1, keepdim=True)
            allowed = picked if self.hard_mask else uses.expand_as(picked)
            # Mask only in groups the row uses: a group it does not use is zeroed below (never softmax(-inf)).
            group_logits = logits[..., start:stop].masked_fill(uses & ~allowed, float("-inf"))
            if self.gate == "sigmoid":
                w = 2 * group_logits.sigmoid()
            else:
                w = group_logits.softmax(dim=-1)
                if self.gate == "scaled_softmax":
                    w = w * allowed.sum(dim=-1, keepdim=True)
            weights.append(w * uses)
        return torch.cat(weights, dim=-1) * strength

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        # A plain Linear is applied directly: one module call less per projection on the hot path.
        return F.linear(x, self.base.weight, self.base.bias) if self.plain_base else self.base(x)

    def train(self, mode: bool = True):
        # Training changes the weights: the fast path's copies of them are dropped (built again at inference).
        if mode and self.fast_path is not None:
            self.fast_path.forget_weights()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        # .to(), .half(), .cuda() replace the weights: so are the fast path's copies.
        if self.fast_path is not None:
            self.fast_path.forget_weights()
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, experts={self.num_experts}, r={self.rank}, "
                f"groups={self.group_bounds}, gate={self.gate}")


def _weight_device(module: nn.Module) -> torch.device:
    w = getattr(module, "weight", None)
    return w.device if w is not None and w.device.type != "meta" else torch.device("cpu")


def _expert_dtype(module: nn.Module) -> torch.dtype:
    """float32, or float64 over a float64 base: experts of a half-precision or quantized base stay float32,
    as PEFT keeps its adapters, so that training them is stable."""
    w = getattr(module, "weight", None)
    return torch.float64 if w is not None and w.dtype == torch.float64 else torch.float32

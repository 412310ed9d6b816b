"""Mixture of LoRA identity experts around a frozen projection.

For one wrapped projection W holding E experts of rank r (grouped in routing units):

    x ──► W ─────────────────────────────────────────────────────► (+) ──► y
    │                                                              ▲
    ├──► dropout ──► A_cat (E·r × in) ──► a [E, r] ──┐             │
    │                                                ⊙ w ──► B_cat (out × E·r) · (alpha/r)
    └──► router (E × in) ──► + mask bias ──► softmax per unit ──► w [E]

    mask bias = 0 for the row's chosen experts, -inf otherwise;  w = 0 for a unit the row does not use.

A batch whose rows carry different identity sets is still one pair of matmuls. Projections that read the
same input (q, k and v) form one `InputBank` that computes all their outputs at the first member's call:
their A matrices and routers are one matmul, and the siblings pick up their result. A call resolves its
masks and concatenated weights once (`_BankPlan`, cached across calls while the weights stand). At inference
on the CPU, where each extra torch call costs more than its arithmetic, a single-token input also gets the
frozen W and the B matrices as one matmul over `[x, mixed expert activations]`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .identities import ALL_IDENTITIES, GROUPS
from .routing import _CURRENT, LRU  # _CURRENT is read directly: this runs for every projection and token

LAYOUTS = ("flat", "layered", "alternate")
# How a row's chosen experts in one group are weighted (see ExpertConfig.gate).
GATES = ("softmax", "scaled_softmax", "sigmoid")
FOLD_MAX_VECTORS = 16  # fold W and B into one matmul for inputs of up to this many rows x tokens (CPU)


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
    gate: str = "softmax"  # softmax: the paper's, weights of a group's chosen experts sum to 1; scaled_softmax: that times their number; sigmoid: 2·sigmoid(router) per expert (1 at init), so two chosen experts each keep full strength
    shared_inputs: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # projections that read one input: fused at inference
    base_model: str = ""  # the base model the experts belong to (checked when loading)

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
        self.plain_base = type(base) is nn.Linear
        self.expert_names = tuple(n for unit in units for n in unit)
        self.expert_ids = tuple(ALL_IDENTITIES.index(n) for n in self.expert_names)
        bounds, start = [], 0
        for unit in units:
            bounds.append((start, start + len(unit)))
            start += len(unit)
        self.unit_bounds = tuple(bounds)
        self.rank, self.scaling = config.rank, config.scaling
        self.hard_mask, self.use_router, self.gate = config.hard_mask, config.router, config.gate
        n = len(self.expert_names)
        where = dict(device=_weight_device(base), dtype=_expert_dtype(base))
        self.lora_A = nn.Parameter(torch.empty(n * config.rank, self.in_features, **where))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, n * config.rank, **where))
        # PEFT's LoRA init: A Kaiming-uniform (per expert, the same fan-in), B zero, so a new expert is a no-op.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if config.router:
            # Zero router: uniform over the active experts until trained.
            self.router = nn.Linear(self.in_features, n, **where)
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
        return self.bank.member_output(self.bank_slot, x)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        # A plain Linear is applied directly: one module call less per projection on the hot path.
        return F.linear(x, self.base.weight, self.base.bias) if self.plain_base else self.base(x)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, experts={self.num_experts}, r={self.rank}, units={self.unit_bounds}"


class InputBank:
    """Projections of one layer that read the same input (q, k, v; or one projection alone).

    The first member called with an input computes every member's output; the siblings, called with the
    same tensor, pick theirs up from the call's routing state. Not an `nn.Module` (it owns no parameters,
    only references), so the state dict keeps one entry per projection.
    """

    def __init__(self, members: list[ExpertLinear]):
        first = members[0]
        for m in members[1:]:
            if (m.in_features, m.expert_ids, m.unit_bounds) != (first.in_features, first.expert_ids, first.unit_bounds):
                raise ValueError("projections sharing an input must hold the same experts")
        self.members = members
        for slot, m in enumerate(members):
            m.bank, m.bank_slot = self, slot
        self.shape = (len(members), first.num_experts, first.rank)  # P, E, r
        self.units = first.unit_bounds
        self.out_sizes = [m.out_features for m in members]
        # What the mask table depends on; banks with the same signature share one table per call.
        self.signature = (first.expert_ids, first.unit_bounds, first.hard_mask, first.use_router, first.gate)
        self._cache: dict = {}  # inference copies of concatenated weights, checked once per call
        self._plans = LRU(16)  # inference plans by mask table, reused across calls while the weights stand
        # The parameter dicts of everything the plans read, for a cheap "did any weight change" check.
        self._parameter_dicts = [d for m in members for d in
                                 (m._parameters, m.base._parameters, m.router._parameters if m.router else {})]

    def member_output(self, slot: int, x: torch.Tensor) -> torch.Tensor:
        routing = _CURRENT.get()
        if routing is None:
            return self.members[slot].base_forward(x)  # outside any identity context: the base model
        cached = routing.shared.get(self)
        if cached is None or cached[0] is not x:  # else a sibling already computed it for this very input
            key = (self, x.shape[0], torch.is_grad_enabled())
            plan = routing.plans.get(key)
            if plan is None:
                plan = routing.plans[key] = self._plan(x, routing)
            cached = routing.shared[self] = (x, None if plan is None else plan.outputs(x))
        outputs = cached[1]
        return self.members[slot].base_forward(x) if outputs is None else outputs[slot]

    def _plan(self, x: torch.Tensor, routing) -> "_BankPlan | None":
        """Everything a call needs to run this bank, resolved once per call (weights, masks, path), so the
        per-token path does no cache checks and no module attribute lookups. Inference plans are kept
        across calls (switching back to a recent identity set is free) while no weight changed."""
        table = routing.table_for(self, x)
        if not table.any_active:
            return None  # no row uses these experts: the members run their base projections
        first = self.members[0]
        needs_router = table.fixed_weights is None
        if torch.is_grad_enabled() or first.training:
            return _BankPlan(self, table, needs_router)  # concatenates afresh each time: gradients flow
        versions = tuple((t._version, t.data_ptr()) for d in self._parameter_dicts for t in d.values() if t is not None)
        key = (table.key, x.device)
        plan = self._plans.get(key)
        if plan is None or plan.versions != versions:
            plan = self._plans.put(key, self._inference_plan(x, table, needs_router, versions))
            plan.versions = versions
        return plan

    def _inference_plan(self, x: torch.Tensor, table, needs_router: bool, versions: tuple) -> "_BankPlan":
        plan = _BankPlan(self, table, needs_router)
        plan.in_weight_t, plan.in_bias = self._cached(("in", needs_router), versions, lambda: self._concat_in(needs_router))
        if not needs_router and table.same_rows:
            # One identity set and no router: the fixed mixture weights fold into the A rows and the
            # per-token path loses its multiply.
            p, e, r = self.shape
            row_scale = table.fixed_weights[0].reshape(-1).repeat_interleave(r).repeat(p)
            plan.in_weight_t = plan.in_weight_t * row_scale
            plan.weights_in_a = True
        if needs_router and table.same_rows:
            # One identity set for the whole batch: its mask rides in the router bias (one add less per token).
            p, e, r = self.shape
            mask = table.bias[0].reshape(-1).repeat(p)  # one row's mask, once per member
            plan.in_bias = torch.cat([plan.in_bias[:p * e * r], plan.in_bias[p * e * r:] + mask])
            plan.mask_in_bias = True
        # At inference on the CPU the frozen W and the B matrices become one matmul over [x, mixed]
        # (it keeps a second copy of the wrapped weights: cheap for small CPU models, not worth it on a GPU).
        if x.device.type == "cpu" and all(m.plain_base for m in self.members):
            plan.out_weight_t, plan.out_bias = self._cached("out", versions, self._concat_out)
        # Plans for different identity sets share these concatenations (`_cached`), not copies of them.
        return plan

    # --- weights ----------------------------------------------------------------------------------
    def _cached(self, name, versions: tuple, build):
        """`build()`, reused while the bank's weights stand (`versions`: each tensor's in-place version and
        storage, as `_plan` computes them)."""
        hit = self._cache.get(name)
        if hit is None or hit[0] != versions:
            with torch.no_grad():
                hit = self._cache[name] = (versions, *build())
        return hit[1], hit[2]

    # Inference copies are stored transposed, [in, out], and applied with `_affine`: at 8 input rows
    # (decoding a batch) the CPU GEMM is up to ~10% faster on that layout than on nn.Linear's [out, in], and
    # the same at 1 row (benchmarks/bench_matmul_layout.py measures it).
    def _concat_in(self, with_router: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[A_1·s; ...; A_P·s; router_1; ...; router_P]`ᵀ and its bias (zeros for the A rows)."""
        scaled_a = torch.cat([m.lora_A * m.scaling for m in self.members])
        if not with_router:
            return scaled_a.t().contiguous(), None
        router_weight = torch.cat([m.router.weight for m in self.members])
        router_bias = torch.cat([m.router.bias for m in self.members])
        zeros = router_bias.new_zeros(scaled_a.shape[0])
        return torch.cat([scaled_a, router_weight]).t().contiguous(), torch.cat([zeros, router_bias])

    def _concat_out(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[W_1; ...; W_P | blockdiag(B_1, ..., B_P)]`ᵀ and the stacked base biases."""
        base = torch.cat([m.base.weight for m in self.members])
        experts = torch.block_diag(*[m.lora_B for m in self.members]).to(base.dtype)
        bias = None
        if any(m.base.bias is not None for m in self.members):
            bias = torch.cat([m.base.bias if m.base.bias is not None else base.new_zeros(m.out_features)
                              for m in self.members])
        return torch.cat([base, experts], dim=1).t().contiguous(), bias


class _BankPlan:
    """One call's way of running a bank; `outputs(x)` is the per-token hot path, kept to as few torch calls
    as possible because on a CPU each call costs more than its arithmetic at these sizes."""

    def __init__(self, bank: InputBank, table, needs_router: bool):
        self.bank, self.table, self.needs_router = bank, table, needs_router
        self.in_weight_t = self.in_bias = self.out_weight_t = self.out_bias = None  # inference copies, [in, out]
        self.mask_in_bias = False  # True: the mask bias was added to in_bias (all rows share one set)
        self.weights_in_a = False  # True: fixed mixture weights were folded into in_weight_t
        self.versions = None  # the weight versions an inference plan was built from
        p, e, r = bank.shape
        self.split_sizes = [p * e * r, p * e]

    def outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        bank = self.bank
        mixed = self.mixed(x)  # [..., P·E·r]
        if self.out_weight_t is not None and x.numel() <= FOLD_MAX_VECTORS * x.shape[-1]:
            # Decoding (a few rows, one token each): the op count dominates and folding pays. For a long
            # prompt the block-diagonal zeros cost more arithmetic than the ops it saves.
            out = _affine(torch.cat([x, mixed], dim=-1), self.out_weight_t, self.out_bias)
            return out.split(bank.out_sizes, dim=-1) if len(bank.out_sizes) > 1 else (out,)
        mixed = mixed.unflatten(-1, (len(bank.members), -1))
        outputs = []
        for slot, m in enumerate(bank.members):
            y = m.base_forward(x)
            delta = F.linear(mixed[..., slot, :], m.lora_B)
            outputs.append(y + (delta if delta.dtype == y.dtype else delta.to(y.dtype)))
        return outputs

    def mixed(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., P·E·r]`: each member's A·x, every expert's r columns weighted by its mixture weight and
        alpha/r (the input of the B matrices)."""
        bank, table = self.bank, self.table
        p, e, r = bank.shape
        if self.in_weight_t is None:  # training, or autograd on: concatenate afresh so gradients flow
            first = bank.members[0]
            x = x.to(first.lora_A.dtype)
            a = F.linear(first.dropout(x), torch.cat([m.lora_A for m in bank.members])) * first.scaling
            logits = None
            if self.needs_router:  # the router sees the input without dropout
                logits = F.linear(x, torch.cat([m.router.weight for m in bank.members]),
                                  torch.cat([m.router.bias for m in bank.members]))
        else:
            # One matmul for every member's A and, riding along as extra output rows, the routers.
            if x.dtype != self.in_weight_t.dtype:
                x = x.to(self.in_weight_t.dtype)
            h = _affine(x, self.in_weight_t, self.in_bias)
            if self.weights_in_a:
                return h
            a, logits = h.split(self.split_sizes, dim=-1) if self.needs_router else (h, None)
        lead = x.shape[:-1]
        fixed, bias, scale = table.fixed_weights, table.bias, table.scale  # [rows, 1, 1, E, 1]
        if x.dim() != 3:
            view = (x.shape[0],) + (1,) * (x.dim() - 2) + (1, e, 1)
            fixed, bias, scale = (None if t is None else t.view(view) for t in (fixed, bias, scale))
        if logits is None:
            weights = fixed
        else:
            logits = logits.view(lead + (p, e, 1))
            if not self.mask_in_bias:
                logits = logits + bias
            if table.gate == "sigmoid":  # -inf (a masked expert) gives 0
                weights = logits.sigmoid()
            elif len(bank.units) == 1:
                weights = logits.softmax(dim=-2)
            else:
                weights = torch.cat([logits[..., s:t, :].softmax(dim=-2) for s, t in bank.units], dim=-2)
            if not table.scale_is_one:
                weights = weights * scale
        return (a.view(lead + (p, e, r)) * weights).view(lead + (p * e * r,))


def _affine(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`x @ weight_t + bias` over the last dimension, for a weight stored [in, out]."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.mm(flat, weight_t) if bias is None else torch.addmm(bias, flat, weight_t)
    return out.view(x.shape[:-1] + (weight_t.shape[1],))


def _weight_device(module: nn.Module) -> torch.device:
    w = getattr(module, "weight", None)
    return w.device if w is not None and w.device.type != "meta" else torch.device("cpu")


def _expert_dtype(module: nn.Module) -> torch.dtype:
    """float32, or float64 over a float64 base: experts of a half-precision or quantized base stay float32,
    as PEFT keeps its adapters, so that training them is stable."""
    w = getattr(module, "weight", None)
    return torch.float64 if w is not None and w.dtype == torch.float64 else torch.float32

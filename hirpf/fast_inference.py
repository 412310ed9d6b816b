"""The expert layers' fast inference path: the formula of `hirpf.experts`, in fewer operations.

On a CPU at these sizes each torch call costs more than its arithmetic, so at inference (no autograd, eval
mode) a layer hands its input to the `SharedInputProjections` it belongs to, which:

- computes every projection that reads the same input (q, k and v; gate and up) at the first one's call: one
  matmul for all their A matrices and, riding along as extra output rows, their routers; the siblings pick
  up their outputs from the call's scratch space;
- resolves, once per call, the masks of the call's identity rows (`MaskTable`, kept process-wide by content)
  and an `InferencePlan` (which weights, which shortcuts), kept across calls: per identity set for rows
  that all share one (its masks folded in), one for every mixture of sets (the masks read at each call);
- for decoding (a few vectors) applies the frozen W and the B matrices as one matmul over
  `[x, mixed expert activations]` (the fold), for batches from a bfloat16 copy where that is faster
  (`HIRPF_DECODE_DTYPE`, `auto` by default: `choose_decode_dtype`; `set_decode_dtype`), up to as many vectors
  as the fold is faster for on this CPU (`calibrate_fold_reach`).

This module owns every cache of the expert layers. Freshness is explicit: the concatenated weight copies and
the plans built on them are dropped by `forget_weights` (loading weights, entering training mode and moving
or casting a layer call it; code that edits expert weights in place must call `forget_weights(model)`).
"""
from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

FOLD_MAX_VECTORS = 16  # fold W and B into one matmul for inputs of up to this many rows x tokens (CPU)
# How far `calibrate_fold_reach` looks beyond that: a packed step (hirpf.packed_step) carries a batch's rows and
# a joining prompt's tokens, 20 to 70 vectors; a longer chunk is a prompt's, where the fold's zeros cost more.
FOLD_REACH_CANDIDATES = (32, 48, 64)
DECODE_DTYPES = {"model": None, "bfloat16": torch.bfloat16}  # the forced choices; None: the layers' own dtype
# `torch.backends.cpu.get_cpu_capability()` values of CPUs without bfloat16 dot products: there a bfloat16
# matmul is emulated and far slower than float32 (measured on an AVX2 machine: docs/benchmarks.md).
NO_BFLOAT16_CAPABILITIES = frozenset({"DEFAULT", "NO AVX", "AVX2"})
BFLOAT16_MIN_GAIN = 0.85  # `auto` takes bfloat16 only when its calibrated time is at most this share of float32's
log = logging.getLogger(__name__)


class LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value):
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def attach(layers: dict, shared_inputs) -> None:
    """Give every expert layer (`{module name: ExpertLinear}`) its fast path; layers of one decoder block
    named together in `shared_inputs` (e.g. q, k, v) share one."""
    grouped = set()
    for parent in {name.rpartition(".")[0] for name in layers}:
        for names in shared_inputs:
            members = [layers[f"{parent}.{n}"] for n in names if f"{parent}.{n}" in layers]
            if len(members) > 1:
                SharedInputProjections(members)
                grouped.update(id(m) for m in members)
    for layer in layers.values():
        if id(layer) not in grouped:
            SharedInputProjections([layer])


@dataclass(frozen=True)
class DecodeDtypeChoice:
    """What a decode-dtype setting resolved to on this machine, and why (logged, and reported by benchmarks)."""

    dtype: torch.dtype | None  # None: the layers' own dtype
    reason: str

    @property
    def name(self) -> str:
        return "model" if self.dtype is None else str(self.dtype).removeprefix("torch.")


def choose_decode_dtype(setting: str, model: nn.Module, capability: str | None = None,
                        calibrate=None) -> DecodeDtypeChoice:
    """Resolve `setting` (`HIRPF_DECODE_DTYPE`: auto, model or bfloat16) for `model`. `auto` keeps the
    layers' dtype unless every condition for a gain holds: the fold runs (a CPU), the layers are float32 (a
    narrower model has nothing to win), the CPU's capability is not one without bfloat16 dot products, and a
    short calibration of a decode-shaped matmul (`calibrate(in_features, out_features)` -> (float32 s,
    bfloat16 s); default `calibrate_bfloat16`, about a second) finds bfloat16 faster by the margin `BFLOAT16_MIN_GAIN`.
    `capability` and `calibrate` are parameters so that the decision can be tested on any machine."""
    if setting != "auto":
        return DecodeDtypeChoice(DECODE_DTYPES[setting], f"HIRPF_DECODE_DTYPE={setting}")
    parameter = next(model.parameters())
    if parameter.device.type != "cpu":
        return DecodeDtypeChoice(None, f"auto: the model is on {parameter.device.type} (no fold to narrow)")
    if parameter.dtype != torch.float32:
        return DecodeDtypeChoice(None, f"auto: the model is already {str(parameter.dtype).removeprefix('torch.')}")
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    if capability in NO_BFLOAT16_CAPABILITIES:
        return DecodeDtypeChoice(None, f"auto: CPU capability {capability} has no bfloat16 dot products")
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None) or parameter.shape[-1]
    wide = getattr(config, "intermediate_size", None) or 4 * hidden
    float32_s, bfloat16_s = (calibrate or calibrate_bfloat16)(hidden, 2 * wide)  # the gate+up fold's shape
    faster = bfloat16_s <= BFLOAT16_MIN_GAIN * float32_s
    return DecodeDtypeChoice(torch.bfloat16 if faster else None,
                             f"auto: CPU capability {capability}, a batch-8 fold matmul took {bfloat16_s * 1e3:.3f} "
                             f"ms in bfloat16 against {float32_s * 1e3:.3f} ms in float32")


def calibrate_bfloat16(in_features: int, out_features: int, rows: int = 8,
                       budget_s: float = 1.0) -> tuple[float, float]:
    """Median seconds of one `[rows, in] @ [in, out]` product in float32 and in bfloat16 (with the casts the
    fold pays), the two taking turns so that the machine's drift reaches both alike."""
    x = torch.randn(rows, in_features)
    weight = torch.randn(in_features, out_features) / in_features ** 0.5
    narrow = weight.to(torch.bfloat16)
    timings: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    products = {"float32": lambda: torch.mm(x, weight),
                "bfloat16": lambda: torch.mm(x.to(torch.bfloat16), narrow).float()}
    for product in products.values():  # warm-up (first-call dispatch, packing)
        product()
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(timings["float32"]) < 3:
        for name, product in products.items():
            start = time.perf_counter()
            product()
            timings[name].append(time.perf_counter() - start)
    return statistics.median(timings["float32"]), statistics.median(timings["bfloat16"])


def apply_decode_dtype(model: nn.Module, setting: str) -> DecodeDtypeChoice | None:
    """Resolve `setting` for `model` and apply it (`set_decode_dtype`); logs the choice. None (and no
    calibration) when the model has no expert layers."""
    if not any(getattr(m, "fast_path", None) is not None for m in model.modules()):
        return None
    choice = choose_decode_dtype(setting, model)
    log.info("batch decode dtype: %s (%s)", choice.name, choice.reason)
    set_decode_dtype(model, choice.dtype)
    return choice


def calibrate_fold_reach(model: nn.Module, passes: int = 2) -> int | None:
    """Let the expert layers fold for as many vectors as the fold is no slower than the members one by one on
    this CPU, and return that reach (logged); None where nothing folds (a GPU, 8-bit projections). From
    `FOLD_MAX_VECTORS`, each of `FOLD_REACH_CANDIDATES` in turn while the fold, summed over every expert group
    of the model on its own weights (`passes` times, the two ways taking turns), takes no longer than the
    members one by one. Summed over the whole model, the weights are read from memory as in a forward (one
    group timed alone is served from the CPU's caches) and the noise of one small product averages out.
    Why: a packed step (hirpf.packed_step) carries 20 to 70 vectors, and on the 2-core Xeon (AVX512) a step
    with a 12-token question took 147 ms folding against 177 ms not; another CPU draws the line elsewhere."""
    groups = [m.fast_path for m in model.modules()
              if getattr(m, "fast_path", None) is not None and m.fast_path.members[0] is m]  # each group once
    groups = [g for g in groups if g.members[0].lora_A.device.type == "cpu" and all(m.plain_base for m in g.members)]
    if not groups:
        return None
    weights = [_batch_fold_weights(g) for g in groups]  # built now, outside the clock
    # Each group's input widths: x, and its members' mixed expert activations (P·E·r).
    widths = [(g.members[0].in_features, g.shape[0] * g.shape[1] * g.shape[2]) for g in groups]
    dtypes = {w: (g.members[0].base.weight.dtype, g.members[0].lora_A.dtype) for g, w in zip(groups, widths)}
    reach, measured = FOLD_MAX_VECTORS, {}
    with torch.no_grad():
        for vectors in FOLD_REACH_CANDIDATES:
            inputs = {(i, m): (torch.randn(vectors, i, dtype=dx), torch.randn(vectors, m, dtype=dm))
                      for (i, m), (dx, dm) in dtypes.items()}
            spent = {"fold": 0.0, "apart": 0.0}
            for turn in range(passes):
                for g, (weight_t, bias), width in zip(groups, weights, widths):
                    x, mixed = inputs[width]
                    ways = [("fold", partial(folded_outputs, g, x, mixed, weight_t, bias)),
                            ("apart", partial(unfolded_outputs, g, x, mixed))]
                    for name, way in ways if turn % 2 == 0 else ways[::-1]:
                        start = time.perf_counter()
                        way()
                        spent[name] += time.perf_counter() - start
            measured[vectors] = spent
            if spent["fold"] > spent["apart"]:
                break
            reach = vectors
    for g in groups:
        g.fold_max_vectors = reach
    log.info("expert layers fold up to %d vectors (ms per pass over the model's groups, fold / apart: %s)", reach,
             {n: f"{t['fold'] / passes * 1e3:.1f} / {t['apart'] / passes * 1e3:.1f}" for n, t in measured.items()})
    return reach


def _batch_fold_weights(projections: "SharedInputProjections") -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fold a batch decodes with (`InferencePlan`): the layers' own copy, or its `set_decode_dtype` copy."""
    weight_t, bias = projections.weights("out", projections.concat_out)
    narrow = projections.decode_dtype
    if narrow is not None and narrow != weight_t.dtype:
        weight_t = projections.weights(("out", narrow), lambda: weight_t.to(narrow))
    return weight_t, bias


def fold_reach_in_use(model: nn.Module) -> int | None:
    """The expert layers' fold reach (`calibrate_fold_reach`; for the benchmarks); None without expert layers."""
    return next((m.fast_path.fold_max_vectors for m in model.modules() if getattr(m, "fast_path", None)), None)


def decode_dtype_in_use(model: nn.Module) -> str:
    """The dtype the expert layers' batch fold decodes in: `model` (the layers' own) or e.g. `bfloat16`."""
    dtype = next((m.fast_path.decode_dtype for m in model.modules() if getattr(m, "fast_path", None) is not None),
                 None)
    return "model" if dtype is None else str(dtype).removeprefix("torch.")


def set_decode_dtype(model: nn.Module, dtype: torch.dtype | None) -> None:
    """Decode batches of 2 to `FOLD_MAX_VECTORS` vectors from a copy of the fold (`[W | blockdiag(B)]`, what a
    CPU decode step mostly reads) in `dtype` (None: the layers' own copy only). Activations, routers, the A
    matrices, prompts and single-vector decoding stay in the model's dtype; only the batch fold's product is
    taken in `dtype` (accumulated in float32 by the GEMM, rounded to `dtype`, cast back). Why: on a CPU with
    native bfloat16 dot products (AVX512-BF16, AMX), a matmul of a few rows costs about half in bfloat16
    (a batch-8 decode step of the embedded model about a third less), while one row (a matrix-vector
    product, already as fast as memory allows) gains nothing and pays the casts. The price: a batched row is
    rounded as bfloat16 rounds, so it no longer replies token for token as it would alone in float32."""
    for module in model.modules():
        fast_path = getattr(module, "fast_path", None)
        if fast_path is not None:
            fast_path.decode_dtype = dtype
            fast_path.forget_weights()  # plans hold the copies they were built with


def forget_weights(model: nn.Module) -> None:
    """Drop every copy of expert weights the fast path holds in `model` (after changing weights in place)."""
    for module in model.modules():
        fast_path = getattr(module, "fast_path", None)
        if fast_path is not None:
            fast_path.forget_weights()


# Mask tables depend only on (the layer's expert signature, identity rows, dtype, device): shared by all
# calls and layers, so a set used before costs nothing to switch back to. Read-only once built.
_MASK_TABLES = LRU(512)


@dataclass(frozen=True)
class MaskTable:
    """How one layer's experts mix for each batch row; tensors are `[rows, 1, 1, E, 1]` so they broadcast
    over `[rows, tokens, projections, E, rank]`."""

    bias: torch.Tensor  # 0 for allowed experts, -inf for masked ones (added to router logits)
    scale: torch.Tensor  # multiplies the gate: 0 in a group the row does not use, else gate factor × strength
    # the mixture when no router is needed (router off, or one allowed expert per group)
    fixed_weights: torch.Tensor | None
    gate: str  # the experts' gate (ExpertConfig.gate): softmax per group, or sigmoid per expert
    scale_is_one: bool  # `scale` is all ones and can be skipped
    same_rows: bool  # every row has the same identity set and strengths
    any_active: bool  # False: no row engages this layer with a non-zero strength: it runs the base projection
    key: tuple  # what the table was built from; plans are cached by it


def mask_table(signature: tuple, routing, rows: int, device, dtype) -> MaskTable:
    key = (signature, rows, routing.key, device, dtype)
    return _MASK_TABLES.get(key) or _MASK_TABLES.put(key, _build_mask_table(key, routing))


def _build_mask_table(key, routing) -> MaskTable:
    (expert_ids, groups, hard_mask, router, gate), rows, _, device, dtype = key
    chosen, strength = routing.rows(rows)
    chosen, strength = chosen[:, list(expert_ids)], strength[:, list(expert_ids)]  # [rows, E]
    allowed = torch.zeros_like(chosen)
    engaged = torch.zeros_like(chosen)
    counts = torch.ones(chosen.shape, dtype=torch.float64)  # exact for float64 models too
    for start, stop in groups:
        picked = chosen[:, start:stop]
        uses = picked.any(dim=1, keepdim=True)
        allowed[:, start:stop] = picked if hard_mask else uses.expand_as(picked)
        engaged[:, start:stop] = uses.expand_as(picked)
        counts[:, start:stop] = allowed[:, start:stop].sum(dim=1, keepdim=True).clamp(min=1)
    # A row that does not use a group keeps bias 0 there (no all -inf softmax, no NaN); `scale` zeroes it.
    bias = torch.where(engaged & ~allowed, float("-inf"), 0.0)
    factor = {"softmax": torch.ones_like(counts), "scaled_softmax": counts,
              "sigmoid": torch.full_like(counts, 2.0)}[gate]
    scale = engaged.to(torch.float64) * factor * strength
    fixed = None
    if not router:  # an untrained router's weights: 1/count each for the softmax, 1 for the other gates
        fixed = allowed.to(torch.float64) / (counts if gate == "softmax" else 1.0) * strength
    elif hard_mask and gate != "sigmoid" and bool((counts[allowed] == 1).all()):
        fixed = allowed.to(torch.float64) * factor * strength  # one expert per group: the softmax gives it 1

    def broadcast(t):
        return t.to(device=device, dtype=dtype).view(rows, 1, 1, -1, 1)

    same_rows = bool((chosen == chosen[:1]).all() and (strength == strength[:1]).all())
    return MaskTable(broadcast(bias), broadcast(scale), None if fixed is None else broadcast(fixed), gate,
                     bool((scale == 1).all()), same_rows, bool((allowed & (scale != 0)).any()), key)


class SharedInputProjections:
    """Expert layers of one decoder block that read the same input (q, k, v; or one projection alone).

    The first member called with an input computes every member's output; the siblings, called with the
    same tensor, pick theirs up from the call's scratch space. Not an `nn.Module` (it owns no parameters,
    only references), so the state dict keeps one entry per projection.
    """

    def __init__(self, members: list):
        first = members[0]
        for m in members[1:]:
            if ((m.in_features, m.expert_ids, m.group_bounds)
                    != (first.in_features, first.expert_ids, first.group_bounds)):
                raise ValueError("projections sharing an input must hold the same experts")
        self.members = members
        self.slot = {id(m): i for i, m in enumerate(members)}
        for m in members:
            m.fast_path = self
        self.shape = (len(members), first.num_experts, first.rank)  # P, E, r
        self.groups = first.group_bounds
        self.out_sizes = [m.out_features for m in members]
        # What a mask table depends on; projections with the same signature share one table per call.
        self.signature = (first.expert_ids, first.group_bounds, first.hard_mask, first.router is not None, first.gate)
        self._weights: dict = {}  # concatenated weight copies, by name
        self.decode_dtype: torch.dtype | None = None  # the fold's copy in another dtype (set_decode_dtype)
        self.fold_max_vectors = FOLD_MAX_VECTORS  # inputs of up to this many vectors take the fold
        self._plans = LRU(16)  # inference plans by mask table, reused across calls until forget_weights
        self._lock = threading.Lock()

    def forget_weights(self) -> None:
        with self._lock:
            self._weights.clear()
            self._plans.clear()

    def output(self, member, x: torch.Tensor, routing) -> torch.Tensor:
        slot = self.slot[id(member)]
        state = routing.inference_state
        cached = state.get(self)
        if cached is None or cached[0] is not x:  # else a sibling already computed it for this very input
            rows = routing.as_rows(x)  # a packed sequence: one row per token
            key = (self, rows.shape[0])
            resolved = state.get(key)
            if resolved is None:
                resolved = state[key] = self._plan(rows, routing)
            outputs = [routing.as_rows(out) for out in resolved[0].outputs(rows, resolved[1])] if resolved else None
            cached = state[self] = (x, outputs)
        outputs = cached[1]
        return member.base_forward(x) if outputs is None else outputs[slot]

    def _plan(self, x: torch.Tensor, routing) -> "tuple[InferencePlan, MaskTable] | None":
        """How this call runs these projections, resolved once per call (weights, masks, shortcuts), so the
        per-token path does no cache checks: (the plan, the call's mask table); None when no row uses these
        experts. Plans are kept across calls until `forget_weights`."""
        first = self.members[0]
        table = mask_table(self.signature, routing, x.shape[0], first.lora_A.device, first.lora_A.dtype)
        if not table.any_active:
            return None  # no row uses these experts: the members run their base projections
        # A plan for rows of one identity set folds that set's masks into its weights, so it is kept per set.
        # Rows of several sets take their masks from the table at each call, so one plan serves every mixture:
        # a running batch changes its mixture at each join and leave, and 120 plans rebuilt then cost about
        # as much as a tenth of a decode step (embedded model, CPU).
        needs_router = table.fixed_weights is None
        key = (table.key if table.same_rows else "mixed rows", needs_router, x.device)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans.put(key, InferencePlan(self, table, fold=x.device.type == "cpu"))
        return plan, table

    # --- weight copies ----------------------------------------------------------------------------
    def weights(self, name: str, build):
        """`build()` (concatenated copies of the members' weights), kept until `forget_weights`."""
        with self._lock:
            hit = self._weights.get(name)
            if hit is None:
                with torch.no_grad():
                    hit = self._weights[name] = build()
            return hit

    # Copies are stored transposed, [in, out], and applied with `_affine`: at 8 input rows (decoding a batch)
    # the CPU GEMM is up to ~10% faster on that layout than on nn.Linear's [out, in], and the same at 1 row
    # (benchmarks/bench_matmul_layout.py measures it).
    def concat_in(self, with_router: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[A_1·s; ...; A_P·s; router_1; ...; router_P]`ᵀ and its bias (zeros for the A rows)."""
        scaled_a = torch.cat([m.lora_A * m.scaling for m in self.members])
        if not with_router:
            return scaled_a.t().contiguous(), None
        router_weight = torch.cat([m.router.weight for m in self.members])
        router_bias = torch.cat([m.router.bias for m in self.members])
        zeros = router_bias.new_zeros(scaled_a.shape[0])
        return torch.cat([scaled_a, router_weight]).t().contiguous(), torch.cat([zeros, router_bias])

    def concat_out(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[W_1; ...; W_P | blockdiag(B_1, ..., B_P)]`ᵀ and the stacked base biases."""
        base = torch.cat([m.base.weight for m in self.members])
        experts = torch.block_diag(*[m.lora_B for m in self.members]).to(base.dtype)
        bias = None
        if any(m.base.bias is not None for m in self.members):
            bias = torch.cat([m.base.bias if m.base.bias is not None else base.new_zeros(m.out_features)
                              for m in self.members])
        return torch.cat([base, experts], dim=1).t().contiguous(), bias


class InferencePlan:
    """One way of running a `SharedInputProjections`: for the identity rows of `table` when they are all one
    set (its masks folded in), else for any rows that need the router, or any that do not; `outputs(x, table)`
    is the per-token hot path, kept to as few torch calls as possible."""

    def __init__(self, projections: SharedInputProjections, table: MaskTable, fold: bool):
        self.projections = projections
        p, e, r = projections.shape
        self.needs_router = table.fixed_weights is None
        self.split_sizes = [p * e * r, p * e]
        self.in_weight_t, self.in_bias = projections.weights(("in", self.needs_router),
                                                             lambda: projections.concat_in(self.needs_router))
        self.weights_in_a = self.mask_in_bias = False
        if not self.needs_router and table.same_rows:
            # One identity set and no router: the fixed mixture weights fold into the A rows and the
            # per-token path loses its multiply.
            row_scale = table.fixed_weights[0].reshape(-1).repeat_interleave(r).repeat(p)
            self.in_weight_t = self.in_weight_t * row_scale
            self.weights_in_a = True
        if self.needs_router and table.same_rows:
            # One identity set for the whole batch: its mask rides in the router bias (one add less per token).
            mask = table.bias[0].reshape(-1).repeat(p)  # one row's mask, once per member
            self.in_bias = torch.cat([self.in_bias[:p * e * r], self.in_bias[p * e * r:] + mask])
            self.mask_in_bias = True
        self.out_weight_t = self.out_bias = self.batch_out_weight_t = None
        if fold and all(m.plain_base for m in projections.members):
            # On the CPU the frozen W and the B matrices become one matmul over [x, mixed] for decoding (a
            # second copy of the wrapped weights: cheap for small CPU models, not worth it on a GPU).
            self.out_weight_t, self.out_bias = projections.weights("out", projections.concat_out)
            batch_weight_t, _ = _batch_fold_weights(projections)
            if batch_weight_t is not self.out_weight_t:
                self.batch_out_weight_t = batch_weight_t

    def outputs(self, x: torch.Tensor, table: MaskTable) -> list[torch.Tensor]:
        """Every member's output for `x` under the rows of `table` (the call's mask table)."""
        projections = self.projections
        mixed = self.mixed(x, table)  # [..., P·E·r]
        vectors = x.numel() // x.shape[-1]
        if self.out_weight_t is not None and vectors <= projections.fold_max_vectors:
            # Decoding (a few rows, one token each; a packed step's rows and prompt tokens): the op count
            # dominates and folding pays. For a long prompt the block-diagonal zeros cost more arithmetic than
            # the ops it saves.
            batch = vectors > 1 and self.batch_out_weight_t is not None  # set_decode_dtype: one vector stays
            weight_t = self.batch_out_weight_t if batch else self.out_weight_t
            return folded_outputs(projections, x, mixed, weight_t, self.out_bias)
        return unfolded_outputs(projections, x, mixed)

    def mixed(self, x: torch.Tensor, table: MaskTable) -> torch.Tensor:
        """`[..., P·E·r]`: each member's A·x, every expert's r columns weighted by its mixture weight and
        alpha/r (the input of the B matrices)."""
        p, e, r = self.projections.shape
        if x.dtype != self.in_weight_t.dtype:
            x = x.to(self.in_weight_t.dtype)
        h = _affine(x, self.in_weight_t, self.in_bias)  # every member's A·x (and router logits) in one matmul
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
            if table.gate == "sigmoid":  # a masked expert's -inf gives 0
                weights = logits.sigmoid()
            elif len(self.projections.groups) == 1:
                weights = logits.softmax(dim=-2)
            else:
                weights = torch.cat([logits[..., s:t, :].softmax(dim=-2) for s, t in self.projections.groups], dim=-2)
            if not table.scale_is_one:
                weights = weights * scale
        return (a.view(lead + (p, e, r)) * weights).view(lead + (p * e * r,))


def folded_outputs(projections: SharedInputProjections, x: torch.Tensor, mixed: torch.Tensor,
                   weight_t: torch.Tensor, bias: torch.Tensor | None) -> list[torch.Tensor]:
    """The members' outputs as one matmul of `[x, mixed]` by the fold `[W | blockdiag(B)]`ᵀ."""
    out = _affine(torch.cat([x, mixed.to(x.dtype)], dim=-1), weight_t, bias)
    return list(out.split(projections.out_sizes, dim=-1)) if len(projections.out_sizes) > 1 else [out]


def unfolded_outputs(projections: SharedInputProjections, x: torch.Tensor, mixed: torch.Tensor) -> list[torch.Tensor]:
    """The members' outputs one by one: `W·x + B·mixed` each."""
    mixed = mixed.unflatten(-1, (len(projections.members), -1))
    outputs = []
    for slot, m in enumerate(projections.members):
        y = m.base_forward(x)
        delta = F.linear(mixed[..., slot, :], m.lora_B)
        outputs.append(y + delta.to(y.dtype))
    return outputs


def _affine(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`x @ weight_t + bias` over the last dimension, for a weight stored [in, out]; a weight in another
    dtype (`set_decode_dtype`) takes the product in its dtype and returns it in x's."""
    flat = x.reshape(-1, x.shape[-1])
    if weight_t.dtype != x.dtype:
        out = torch.mm(flat.to(weight_t.dtype), weight_t).to(x.dtype)
        if bias is not None:
            out += bias
    else:
        out = torch.mm(flat, weight_t) if bias is None else torch.addmm(bias, flat, weight_t)
    return out.view(x.shape[:-1] + (weight_t.shape[1],))

"""The expert formula checked from outside: a plain loop over rows, tokens and experts (`reference`), each
expert layer's input and output in one forward (`capture`), and logits through the formula and through the
fast inference path (`formula_and_fast`) for a mix of identity sets with strengths, within `TOLERANCE` per
dtype. Shared by the CPU tests and the CUDA tests (which run where gradio and sqlalchemy are absent)."""
from __future__ import annotations

import torch

from hirpf.experts import ExpertLinear
from hirpf.identities import IdentitySet
from hirpf.inject import expert_layers
from hirpf.routing import use_identities

MIXED = [IdentitySet.parse(s) for s in ("AGR_low,Doctor", "", "AGR_high,CON_low,EXT_high,NEU_low,OPE_high,Artist",
                                        "OPE_low", "CON_high,EXT_low,Programmer")]
MIXED[0] = MIXED[0].with_strengths("AGR_low=1.7,Doctor=0.4")
MIXED[3] = MIXED[3].with_strengths("OPE_low=0")
ATTENTION_AND_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOLERANCE = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 1e-1}


def reference(layer: ExpertLinear, x: torch.Tensor, sets: list[IdentitySet], router: bool, hard_mask: bool,
              gate: str = "softmax"):
    """y = W x + sum over units and chosen experts of w_e * (alpha/r) * B_e A_e x, one sample, one token and
    one expert at a time. w: softmax over the allowed experts (times their number for scaled_softmax), or
    2·sigmoid per allowed expert."""
    out = layer.base(x).clone()
    r = layer.rank
    for b, identities in enumerate(sets):
        for t in range(x.shape[1]):
            xt = x[b, t]
            for start, stop in layer.group_bounds:
                names = layer.expert_names[start:stop]
                chosen = [n in identities for n in names]
                if not any(chosen):
                    continue  # the sample uses no expert of this unit: exactly zero delta
                allowed = chosen if hard_mask else [True] * len(names)
                if router:
                    logits = layer.router.weight[start:stop] @ xt + layer.router.bias[start:stop]
                    logits = logits.masked_fill(~torch.tensor(allowed), float("-inf"))
                    weights = 2 * logits.sigmoid() if gate == "sigmoid" else logits.softmax(-1)
                else:
                    weights = torch.tensor(allowed, dtype=x.dtype) / (sum(allowed) if gate == "softmax" else 1)
                if router and gate == "scaled_softmax":
                    weights = weights * sum(allowed)
                for k, expert in enumerate(range(start, stop)):
                    if not allowed[k]:
                        continue
                    a = layer.lora_A[expert * r:(expert + 1) * r] @ xt
                    out[b, t] += weights[k] * layer.scaling * (layer.lora_B[:, expert * r:(expert + 1) * r] @ a)
    return out


def capture(model, ids, sets, grad: bool):
    """Each expert layer's (input, output) during one forward with per-row identity sets."""
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, (inp[0], out)))
             for name, m in expert_layers(model).items()]
    try:
        with torch.set_grad_enabled(grad), use_identities(sets):
            logits = model(ids).logits
    finally:
        for h in hooks:
            h.remove()
    return seen, logits


def formula_and_fast(model, ids, rows):
    """Logits through the formula (autograd on forces it) and through the fast path (no_grad, eval)."""
    with torch.enable_grad(), use_identities(rows):
        formula = model(ids).logits.detach()
    with torch.no_grad(), use_identities(rows):
        fast = model(ids).logits
    return formula, fast

"""Answers read from next-token probabilities: the model is asked a question whose options are labelled with
single tokens ("1".."5", "A".."E"), and the probability of each label as the first token of its reply is the
answer distribution. No sampling, no parsing: deterministic and cheap (one forward pass per batch).

Rows of one batch may carry different identity sets: each row is routed through its own experts with
`use_identities`. The prompts of one identity set share a long beginning (system message, instructions):
it is encoded once per set, and its keys and values serve as the cache for that set's rows, so each row
runs only its own tail (a 100-item questionnaire runs about 15 of its 113 tokens per item). Rows are padded
on the left, with position ids counted from each row's first real token, so a row's result does not depend
on its batch or on the cache (tests compare with one plain forward pass per row).
"""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache

from ..context_limit import check_fits
from ..identities import IdentitySet
from ..padding import left_padded
from ..prompts import Conditioning, expert_identities
from ..routing import use_identities
from .common import EvalError, batches, check_positive

LIKERT_LABELS = ("1", "2", "3", "4", "5")


def option_token_ids(tokenizer, labels: Sequence[str]) -> list[int]:
    """The token id of each label; every label must be exactly one token (else its probability is not the
    probability of the answer)."""
    ids = []
    for label in labels:
        pieces = tokenizer.encode(label, add_special_tokens=False)
        if len(pieces) != 1:
            raise EvalError(f"option label {label!r} is {len(pieces)} tokens for this tokenizer; labels must be "
                            "single tokens (digits or capital letters)")
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise EvalError(f"option labels {list(labels)} do not map to distinct tokens")
    return ids


def choice_probabilities(engine, conversations: Sequence[Sequence[dict]], identities: Sequence[IdentitySet],
                         conditioning: Conditioning, labels: Sequence[str], batch_size: int = 16,
                         bar=None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each conversation (its own identity set), the distribution over `labels` as the first token of
    the reply: `(probabilities [rows, options] summing to 1, mass [rows])`, where `mass` is the total
    probability the model put on the labels at all (low mass = the model wanted to say something else)."""
    if len(conversations) != len(identities):
        raise ValueError(f"{len(conversations)} conversations but {len(identities)} identity sets")
    check_positive("--batch_size", batch_size)
    conditioning = Conditioning.parse(conditioning)
    identities = [IdentitySet.parse(s) for s in identities]
    token_ids = torch.tensor(option_token_ids(engine.tokenizer, labels))
    rows = [_prompt_ids(engine, c, s, conditioning) for c, s in zip(conversations, identities)]
    groups: dict[IdentitySet, list[int]] = {}
    for i, s in enumerate(identities):
        groups.setdefault(s, []).append(i)
    probabilities = torch.zeros(len(rows), len(labels), dtype=torch.float64)
    mass = torch.zeros(len(rows), dtype=torch.float64)
    group_list = list(groups.items())
    # A chunk of identity sets at a time: their shared prefixes are encoded once, then all their rows.
    for chunk in batches(group_list, batch_size):
        prefix_length = {s: _shared_prefix_length([rows[i] for i in members]) for s, members in chunk}
        prefixes = _encode_prefixes(engine, [rows[members[0]][:prefix_length[s]] for s, members in chunk],
                                    [expert_identities(s, conditioning) for s, _ in chunk])
        members = [(i, k) for k, (_, m) in enumerate(chunk) for i in m]
        members.sort(key=lambda ik: len(rows[ik[0]]) - prefix_length[chunk[ik[1]][0]])
        for part in batches(members, batch_size):
            index = [i for i, _ in part]
            suffixes = [rows[i][prefix_length[chunk[k][0]]:] for i, k in part]
            log_probs = _next_token_log_probs(engine, prefixes, [k for _, k in part], suffixes,
                                              [expert_identities(identities[i], conditioning) for i in index])
            chosen = log_probs[:, token_ids].double()
            mass[index] = chosen.exp().sum(-1)
            probabilities[index] = torch.softmax(chosen, dim=-1)
            if bar is not None:
                bar.update(len(part))
    return probabilities, mass


def _prompt_ids(engine, conversation, identities: IdentitySet, conditioning: Conditioning,
                new_tokens: int = 1) -> list[int]:
    """The prompt's token ids; refused (ContextLimitError) if it and the `new_tokens` read after it do not
    fit the model's context."""
    messages = engine.chat_messages(conversation, identities, conditioning)
    text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    check_fits(len(ids), new_tokens, engine.context_limit, what="the question with the system prompt")
    return ids


def _shared_prefix_length(rows: list[list[int]]) -> int:
    """The tokens every row of one identity set starts with (system message, instructions), leaving at
    least one token of each row to run with the cache. A chat prompt is never shorter than two tokens (the
    template alone has more), so the prefix is never empty."""
    limit = min(len(r) for r in rows) - 1
    length = 0
    while length < limit and all(r[length] == rows[0][length] for r in rows):
        length += 1
    return length


def _encode_prefixes(engine, prefixes: list[list[int]], expert_rows: list[IdentitySet]) -> dict:
    """Run the shared prefixes once (one batch); keep each one's keys and values without padding."""
    ids, mask = left_padded(prefixes, engine.tokenizer.pad_token_id)
    device = engine.model.device
    with torch.no_grad(), use_identities(expert_rows):
        out = engine.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=_positions(mask).to(device), use_cache=True, logits_to_keep=1)
    layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
    return {"lengths": [len(p) for p in prefixes], "layers": layers}


def _positions(mask: torch.Tensor, offset: torch.Tensor | int = 0) -> torch.Tensor:
    """Positions counted from each row's first real token, as in an unpadded run (forward() does not do this
    for left padding by itself; generate() does)."""
    return (mask.cumsum(-1) - 1).clamp(min=0) + (offset if isinstance(offset, int) else offset[:, None])


def _next_token_log_probs(engine, prefixes: dict, prefix_rows: list[int], suffixes: list[list[int]],
                          expert_rows: list[IdentitySet]) -> torch.Tensor:
    """Log-probabilities of the next token after prefix + suffix for each row."""
    logits = logits_after_prefixes(engine, prefixes, prefix_rows, suffixes, expert_rows, keep=1)
    return torch.log_softmax(logits[:, -1, :].float(), dim=-1).cpu()


def logits_after_prefixes(engine, prefixes: dict, prefix_rows: list[int], suffixes: list[list[int]],
                          expert_rows: list[IdentitySet], keep: int) -> torch.Tensor:
    """The logits of the last `keep` positions of each row's suffix (padded on the left): one forward pass
    over the suffixes, with each row's prefix keys and values (re-padded on the left) as the cache, each row
    under its own experts."""
    device = engine.model.device
    ids, suffix_mask = left_padded(suffixes, engine.tokenizer.pad_token_id)
    lengths = torch.tensor([prefixes["lengths"][k] for k in prefix_rows])
    width = int(lengths.max())
    cache = DynamicCache([tuple(_gather_left(t, prefix_rows, prefixes["lengths"], width) for t in layer)
                          for layer in prefixes["layers"]], config=engine.model.config)
    prefix_mask = (torch.arange(width)[None, :] >= (width - lengths)[:, None]).long()
    attention_mask = torch.cat([prefix_mask, suffix_mask], dim=-1)
    with torch.no_grad(), use_identities(expert_rows):
        return engine.model(input_ids=ids.to(device), attention_mask=attention_mask.to(device),
                            position_ids=_positions(suffix_mask, lengths).to(device), past_key_values=cache,
                            use_cache=True, logits_to_keep=keep).logits


def _gather_left(states: torch.Tensor, rows: list[int], lengths: list[int], width: int) -> torch.Tensor:
    """`states[rows]` ([rows, heads, positions, dim], left padded) re-padded with zeros to `width`
    positions: each row keeps its last `lengths[row]` positions, right-aligned."""
    out = states.new_zeros(len(rows), states.shape[1], width, states.shape[3])
    for j, k in enumerate(rows):
        n = lengths[k]
        out[j, :, width - n:] = states[k, :, states.shape[2] - n:]
    return out

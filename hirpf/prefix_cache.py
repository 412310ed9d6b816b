"""Reusing the key/value cache of earlier requests: a new prompt that begins as an earlier sequence did
(the same identity prompt, or the whole conversation so far) is prefilled only from where they part.

    stored: [ system prompt (identity) | user: question 1 | assistant: reply 1 ]     ← a finished request
    asked:  [ system prompt (identity) | user: question 1 | assistant: reply 1 | user: question 2 ]
             └──────────────── copied from the store ──────────────────┘ └─ prefilled ─┘

The experts change every layer's keys and values, so a stored sequence serves only requests with the same
expert identity rows (identity set and strengths, after conditioning): entries are kept per identity key.
A chat turn re-sends the whole history, so in a conversation almost all of each new prompt is found here;
a visitor's first question finds at least their identity prompt when anyone used that set before.

Entries are a finished request's tokens and its row of the running batch's cache (the padding cut off),
kept least-recently-used within a byte budget (`HIRPF_PREFIX_CACHE_MB`; 0 turns it off): a budget in bytes,
not in entries, because what an entry costs grows with its length and with the model's layers, heads and
dtype (what the default holds on the embedded model: docs/benchmarks.md). The stored tensors are never
changed in place (the batch cache writes only into columns right of any view it handed out, and copies rows
into new buffers), so an entry can be shared by any number of later requests; a view of a larger tensor (a
growing cache's buffers) is stored as a copy, so that the budget counts what an entry keeps alive.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass(frozen=True)
class _Entry:
    tokens: torch.Tensor  # [length] the sequence's token ids
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (keys, values) [1, heads, length, dim]
    nbytes: int


class PrefixCache:
    """Stored sequences per identity key, least recently used first out."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()  # (identity key, token bytes) -> entry
        self._bytes = 0
        self._lock = threading.Lock()
        # For benchmarks and tests; reused_tokens counts the stored tokens found (a joint prefill in the
        # scheduler may recompute the last few of them to line its rows up).
        self.hits = self.misses = self.reused_tokens = 0

    @property
    def stored_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def store(self, identity_key: tuple, tokens: torch.Tensor, layers) -> None:
        """Keep `tokens` `[length]` with their per-layer (keys, values) `[1, heads, length, dim]`. A stored
        sequence that is a prefix of this one is replaced by it."""
        tokens = tokens.detach().reshape(-1).clone()
        layers = tuple((k, v) for k, v in layers)
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if not self.budget_bytes or nbytes > self.budget_bytes or tokens.numel() == 0:
            return
        layers = tuple((_own(k), _own(v)) for k, v in layers)
        key = (identity_key, tokens.cpu().numpy().tobytes())  # the tokens live on the model's device
        with self._lock:
            for other_key, other in list(self._entries.items()):
                if other_key[0] == identity_key and _common_prefix(other.tokens, tokens) == other.tokens.numel():
                    self._drop(other_key)  # this one extends it: everything it could serve, this serves too
            self._entries[key] = _Entry(tokens, layers, nbytes)
            self._bytes += nbytes
            while self._bytes > self.budget_bytes:
                self._drop(next(iter(self._entries)))

    def lookup(self, identity_key: tuple, prompt: torch.Tensor, config) -> tuple[DynamicCache, int] | None:
        """(a cache holding the longest stored prefix of `prompt` `[1, length]`, its length), or None. At
        least the prompt's last token is left to prefill: the reply's first token needs its logits."""
        prompt = prompt.reshape(-1)
        best_key, best, best_length = None, None, 0
        with self._lock:
            for key, entry in self._entries.items():
                if key[0] == identity_key:
                    length = min(_common_prefix(entry.tokens, prompt), prompt.numel() - 1)
                    if length > best_length:
                        best_key, best, best_length = key, entry, length
            if best is None:
                self.misses += 1
                return None
            self._entries.move_to_end(best_key)
            self.hits += 1
            self.reused_tokens += best_length
        cache = DynamicCache(config=config)
        for i, (keys, values) in enumerate(best.layers):
            cache.update(keys[:, :, :best_length], values[:, :, :best_length], i)
        return cache, best_length

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _drop(self, key) -> None:
        self._bytes -= self._entries.pop(key).nbytes


def _own(t: torch.Tensor) -> torch.Tensor:
    """`t`, or a copy of it where it is a view that keeps a larger storage alive."""
    return t.clone() if t.untyped_storage().nbytes() > t.numel() * t.element_size() else t


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens `a` and `b` (1-D) share."""
    n = min(a.numel(), b.numel())
    differ = (a[:n] != b[:n]).nonzero()
    return n if differ.numel() == 0 else int(differ[0])

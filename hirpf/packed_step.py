"""A decode step that carries prompt tokens: the running rows' next tokens and chunks of joining prompts in one
forward (vLLM's mixed prefill and decode batches), so a join no longer stops the batch for a forward of its own.

    input, one packed sequence [1, d + t₁ + t₂ …]:   r₀ r₁ … r_d-1 │ p p p p │ q q q
                                                     decode rows    prompt 1  prompt 2 (chunks)
    every linear layer (experts included)            all tokens at once, an identity row per token
    attention                                        per part: the d decode tokens over the running batch's
                                                     cache (as a batch of d, one token each); each chunk over
                                                     its own prompt's cache, causally

Why: on a CPU a forward's cost is mostly reading every weight once and torch's per-call overhead, both paid
per forward, not per token; a question's short prefill alone cost about what a whole batch-8 decode step
does, while riding in the step it costs only its tokens' arithmetic
(docs/benchmarks.md#figures-behind-choices-in-the-code).

The model's linear layers see one batch of one; the expert layers route each token by its own identity row
(`Routing(..., tokens_per_row=...)`, `Routing.as_rows`). Attention is the only part that needs the parts
apart: the model runs with `PACKED_ATTENTION` as its attention implementation (`enable`), which is
the model's own sdpa for every ordinary call and splits the packed sequence only when a `PackedStep` is passed
to the forward (`hirpf_packed=`, which transformers hands down to the attention function as a keyword).

All or nothing, as joins are (`hirpf.batch_cache`): the keys and values a step computes are written into the
caches' spare columns (`SpareColumnsLayer.staged`; a prompt's first chunk: a new layer), which no cache holds
yet, and only `commit` makes the caches hold them, after the whole forward succeeded; a step that raises
changes no cache, and `commit` allocates nothing, so it cannot fail half way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .batch_cache import SPARE_COLUMNS, PaddedBatchCache, SpareColumnsLayer

PACKED_ATTENTION = "hirpf_packed_sdpa"


def _packed_or_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                    hirpf_packed: "PackedStep | None" = None, **kwargs):
    if hirpf_packed is None:  # any ordinary forward: the model's sdpa, unchanged
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return hirpf_packed.attend(module, query, key, value, scaling)


AttentionInterface.register(PACKED_ATTENTION, _packed_or_sdpa)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)


def enable(model) -> bool:
    """Let `model` run packed steps; False (and nothing changed) when it cannot: its attention is not sdpa
    (eager, flash attention: their own kernels and masks), or it has layers other than full attention."""
    config = model.config
    attention = getattr(config, "_attn_implementation", None)
    if attention == PACKED_ATTENTION:
        return True
    if attention != "sdpa":
        return False
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return False
    config._attn_implementation = PACKED_ATTENTION  # sdpa for every call that passes no PackedStep
    return True


def grouped_query_attention(query, key, value, mask, scaling) -> torch.Tensor:
    """Attention of `query` `[1, heads, n, dim]` over `key`/`value` `[1, kv_heads, columns, dim]` (`mask`
    `[1, 1, n, columns]`, True where a query sees a key); `[1, n, heads, dim]`. The query heads that share a
    key head become rows of one query of `groups × n` rows, so the keys and values are read as they are,
    never copied once per query head as transformers' sdpa does (`repeat_kv`): for a 4-token chunk over a
    1,400-token prompt that copy was two thirds of the chunk's attention (2-core Xeon: 644 against 194 µs a
    layer)."""
    _, heads, n, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    grouped = query.reshape(1, kv_heads, groups * n, dim)  # head h = kv_head × groups + g: rows (g, token)
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=mask.repeat(1, 1, groups, 1),
                                         scale=scaling)
    return out.view(1, heads, n, dim).transpose(1, 2)


@dataclass
class PromptChunk:
    """Tokens `start:end` of a prompt whose cache holds its first `start` tokens."""

    cache: DynamicCache
    start: int
    end: int

    @property
    def tokens(self) -> int:
        return self.end - self.start


@dataclass
class PackedStep:
    """One packed forward's parts and the keys and values it computed, until `commit`."""

    batch: PaddedBatchCache  # the running rows: one token each, first in the packed sequence
    chunks: list[PromptChunk]
    # layer -> [(keys, values)] of the batch, then (keys, values, the layer to hold them) of each chunk
    _pending: dict = field(default_factory=dict)

    def __post_init__(self):
        device = self.batch.mask.device
        # Each decode token sees its row's tokens and itself; `[rows, 1, 1, columns + 1]`.
        self._decode_mask = torch.nn.functional.pad(self.batch.mask, (0, 1), value=1).bool()[:, None, None, :]
        self._chunk_masks = []
        for chunk in self.chunks:  # causal over what the prompt's cache holds and the chunk itself
            keys = torch.arange(chunk.end, device=device)
            queries = torch.arange(chunk.start, chunk.end, device=device)
            self._chunk_masks.append((keys[None, :] <= queries[:, None])[None, None])

    @property
    def rows(self) -> int:
        return self.batch.rows

    @property
    def tokens(self) -> int:
        return self.rows + sum(c.tokens for c in self.chunks)

    def position_ids(self) -> torch.Tensor:
        """`[1, tokens]`: each decode row's next position (its own token count), then each chunk's positions."""
        device = self.batch.mask.device
        parts = [self.batch.mask.sum(dim=1)] + [torch.arange(c.start, c.end, device=device) for c in self.chunks]
        return torch.cat(parts)[None]

    def last_token_indices(self) -> torch.Tensor:
        """Where the decode rows' tokens and each chunk's last token sit in the packed sequence."""
        ends = torch.tensor([c.tokens for c in self.chunks], dtype=torch.long).cumsum(0) + self.rows - 1
        return torch.cat([torch.arange(self.rows), ends]).to(self.batch.mask.device)

    def attend(self, module, query, key, value, scaling):
        """Attention of the packed `query`/`key`/`value` `[1, heads, tokens, dim]` part by part; the new keys
        and values are kept for `commit`. Returns `[1, tokens, heads, dim]`, as transformers' sdpa does."""
        layer, rows = module.layer_idx, self.rows
        pending = self._pending[layer] = []
        # The decode rows, as the batch of `rows` they are: [rows, heads, 1, dim].
        q, k, v = (t[:, :, :rows].transpose(0, 2) for t in (query, key, value))
        keys, values = self.batch.cache.layers[layer].staged(k, v)  # in the spare columns, not yet held
        pending.append((keys, values))
        outputs = [sdpa_attention_forward(module, q, keys, values, self._decode_mask, scaling=scaling)[0]
                   .transpose(0, 1)]  # [rows, 1, heads, dim] -> [1, rows, heads, dim]
        start = rows
        for chunk, mask in zip(self.chunks, self._chunk_masks):
            stop = start + chunk.tokens
            q, k, v = (t[:, :, start:stop] for t in (query, key, value))
            grown = chunk.cache.layers[layer]
            if not isinstance(grown, SpareColumnsLayer):
                # Its first chunk: from now on its cache grows in place, in a copy of what it holds (a stored
                # prefix's tensors are shared with the store), which `commit` swaps in.
                stored = grown.is_initialized and grown.keys is not None and grown.keys.numel() > 0
                held = (grown.keys, grown.values) if stored else (k[:, :, :0], v[:, :, :0])
                grown = SpareColumnsLayer.holding(*held, spare=max(SPARE_COLUMNS, chunk.tokens))
            k, v = grown.staged(k, v)  # in its spare columns, not yet held
            pending.append((k, v, grown))
            outputs.append(grouped_query_attention(q, k, v, mask, scaling))
            start = stop
        return torch.cat(outputs, dim=1), None

    def commit(self) -> None:
        """Put the step's keys and values in the caches: the batch's (its mask gains a column) and each prompt's."""
        if len(self._pending) != len(self.batch.cache.layers):
            raise RuntimeError(f"a packed step reached {len(self._pending)} of {len(self.batch.cache.layers)} "
                               "attention layers: the model did not run its attention through hirpf_packed")
        batch_layers = []
        for layer in range(len(self.batch.cache.layers)):
            (keys, values), *chunks = self._pending[layer]
            batch_layers.append((keys, values))
            for chunk, (k, v, grown) in zip(self.chunks, chunks):
                grown.keys, grown.values = k, v
                chunk.cache.layers[layer] = grown
        self.batch.append_column(batch_layers)

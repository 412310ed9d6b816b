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

A prompt can also join a step already in flight, between two of its decoder layers (`PackedStep.join`): it is
run alone through the layers the step has passed (`forward_to_layer`, its keys and values going into its own
cache), then rides the rest of the step. A request that arrives just after a step began had waited for that
step and then for the step that carried it; on the 2-core Xeon, with the engine in a process of its own, that
was most of a new request's time to first token at 8 clients (p95 0.26–0.37 s, now 0.21–0.25 s: docs/serving.md,
"A new request's first token").

All or nothing, as joins are (`hirpf.batch_cache`): the keys and values a step computes are written into the
caches' spare columns (`SpareColumnsLayer.staged`; a prompt's first chunk: a new layer), which no cache holds
yet, and only `commit` makes the caches hold them, after the whole forward succeeded; a step that raises
changes no cache, and `commit` allocates nothing, so it cannot fail half way.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .batch_cache import SPARE_COLUMNS, PaddedBatchCache, SpareColumnsLayer
from .identities import IdentitySet
from .routing import Routing, switch_identities, use_identities

PACKED_ATTENTION = "hirpf_packed_sdpa"
# What the hooks `enable` puts on the model's layers act on, in this thread: installed once, they act only
# inside `PackedStep.run` and `forward_to_layer` (adding hooks per call would change the modules' hook tables
# while another thread's forward of the same model reads them).
_RUNNING: contextvars.ContextVar["PackedStep | None"] = contextvars.ContextVar("hirpf_packed_step", default=None)
_STOP_BEFORE: contextvars.ContextVar["int | None"] = contextvars.ContextVar("hirpf_stop_before", default=None)


def _packed_or_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                    hirpf_packed: "PackedStep | None" = None, **kwargs):
    if hirpf_packed is None:  # any ordinary forward: the model's sdpa, unchanged
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return hirpf_packed.attend(module, query, key, value, scaling)


AttentionInterface.register(PACKED_ATTENTION, _packed_or_sdpa)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)


def decoder_layers(model) -> "torch.nn.ModuleList | None":
    """The model's decoder layers, in order (None if it does not expose them as transformers' decoders do)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    return getattr(decoder, "layers", None)


class _ReachedLayer(Exception):
    def __init__(self, hidden: torch.Tensor, layer_kwargs: dict):
        super().__init__()
        self.hidden, self.layer_kwargs = hidden, layer_kwargs


def forward_to_layer(model, layer: int, **forward_kwargs) -> tuple[torch.Tensor, dict]:
    """`model(**forward_kwargs)` stopped before decoder layer `layer`: the hidden states entering that layer and
    the keyword arguments the model passes its layers (`position_embeddings`, `position_ids`); a cache passed in
    holds the first `layer` layers' keys and values of the tokens. The model's own forward runs, so whatever
    it does before its layers (embedding scales, rotary tables) is done as always. Inside a packed step, that
    step's hooks stand aside meanwhile. Needs the hooks `enable` installs."""
    if not getattr(model, "_hirpf_packed_hooks", False):
        raise RuntimeError("forward_to_layer needs a model that runs packed steps (packed_step.enable)")
    stopping = _STOP_BEFORE.set(layer)
    try:
        model(**forward_kwargs)
    except _ReachedLayer as reached:
        return reached.hidden, reached.layer_kwargs
    finally:
        _STOP_BEFORE.reset(stopping)
    raise RuntimeError(f"the forward ended without reaching decoder layer {layer}")


def enable(model) -> bool:
    """Let `model` run packed steps; False (and nothing changed) when it cannot: its attention is not sdpa
    (eager, flash attention: their own kernels and masks), it has layers other than full attention, or it
    does not expose its decoder layers and output projection (a step's joins and logits go through them)."""
    layers = decoder_layers(model)
    if layers is None or model.get_output_embeddings() is None:
        return False
    config = model.config
    attention = getattr(config, "_attn_implementation", None)
    if attention not in ("sdpa", PACKED_ATTENTION):
        return False
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return False
    config._attn_implementation = PACKED_ATTENTION  # sdpa for every call that passes no PackedStep
    if not getattr(model, "_hirpf_packed_hooks", False):
        for index, layer in enumerate(layers):
            layer.register_forward_pre_hook(partial(_before_layer, index), with_kwargs=True)
        model.get_output_embeddings().register_forward_pre_hook(_keep_last_tokens)
        model._hirpf_packed_hooks = True
    return True


def _before_layer(index: int, module, args, kwargs):
    stop = _STOP_BEFORE.get()
    if stop is not None:  # a forward run up to a layer (`forward_to_layer`), maybe inside a step
        if index == stop:
            raise _ReachedLayer(args[0] if args else kwargs["hidden_states"], kwargs)
        return None
    step = _RUNNING.get()
    return None if step is None else step.before_layer(index, args, kwargs)


def _keep_last_tokens(module, args):
    """Only the logits of the rows' tokens and of each chunk's last token: known once the last layer ran (a
    chunk may join before any layer)."""
    step = _RUNNING.get()
    return None if step is None else (args[0][:, step.last_token_indices()],)


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
class LayerJoin:
    """A prompt that joins a step in flight before one of its layers: its chunk (whose cache already holds
    the layers before that one), the hidden states and rotary embeddings its tokens enter it with
    (`forward_to_layer`), and its identity set."""

    chunk: PromptChunk
    hidden: torch.Tensor  # [1, tokens, hidden]
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # (cos, sin), [1, tokens, head_dim] each
    identities: IdentitySet


@dataclass
class PackedStep:
    """One packed forward's parts and the keys and values it computed, until `commit`."""

    batch: PaddedBatchCache  # the running rows: one token each, first in the packed sequence
    chunks: list[PromptChunk]
    identities: list[IdentitySet]  # of the rows, then of the chunks
    # Asked before each decoder layer (its index) for a prompt to join there; None: nothing joins in flight.
    join: "Callable[[int], LayerJoin | None] | None" = None
    # layer -> [(keys, values)] of the batch, then (keys, values, the layer to hold them) of each chunk
    _pending: dict = field(default_factory=dict)

    def __post_init__(self):
        # Each decode token sees its row's tokens and itself; `[rows, 1, 1, columns + 1]`.
        self._decode_mask = torch.nn.functional.pad(self.batch.mask, (0, 1), value=1).bool()[:, None, None, :]
        self._chunk_masks = [self._causal_mask(chunk) for chunk in self.chunks]
        self._joined_at = [0] * len(self.chunks)  # the first layer this step computes each chunk in
        self._position_embeddings = None  # (cos, sin) of every token, once a prompt joined in flight

    def _causal_mask(self, chunk: PromptChunk) -> torch.Tensor:
        """The chunk's tokens over what its prompt's cache holds and the chunk itself, causally."""
        device = self.batch.mask.device
        keys = torch.arange(chunk.end, device=device)
        queries = torch.arange(chunk.start, chunk.end, device=device)
        return (keys[None, :] <= queries[:, None])[None, None]

    def tokens_per_row(self) -> list[int]:
        return [1] * self.rows + [c.tokens for c in self.chunks]

    def run(self, model, input_ids: torch.Tensor, routing: Routing | None = None) -> torch.Tensor:
        """The packed forward of `input_ids` `[1, tokens]` (the rows' tokens, then the chunks'), under
        `routing` (built from `identities` if None); the logits `[rows + chunks, vocab]` of the rows' tokens
        and of each chunk's last token, the chunks that joined in flight included. `commit` follows."""
        routing = routing or Routing(self.identities, tokens_per_row=self.tokens_per_row())
        running = _RUNNING.set(self)
        try:
            with use_identities(routing):
                out = model(input_ids=input_ids, position_ids=self.position_ids(), use_cache=False,
                            hirpf_packed=self)
        finally:
            _RUNNING.reset(running)
        return out.logits[0]

    def before_layer(self, index: int, args, kwargs):
        """A prompt that joins before layer `index` (`join`) is appended to the packed sequence there: its
        hidden states, rotary embeddings, chunk and identity row. The model hands every layer the rotary
        embeddings it computed for the step's first tokens, so each layer after a join gets the longer ones."""
        joined = None if self.join is None else self.join(index)
        if joined is not None:
            self._position_embeddings = tuple(
                torch.cat([ours, its], dim=1) for ours, its
                in zip(self._position_embeddings or kwargs["position_embeddings"], joined.position_embeddings))
            args = (torch.cat([args[0], joined.hidden], dim=1), *args[1:])
            self.chunks.append(joined.chunk)
            self._chunk_masks.append(self._causal_mask(joined.chunk))
            self._joined_at.append(index)
            self.identities.append(joined.identities)
            switch_identities(Routing(self.identities, tokens_per_row=self.tokens_per_row()))
        if self._position_embeddings is None:
            return None
        kwargs["position_embeddings"] = self._position_embeddings
        return args, kwargs

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
            # A chunk that joined in flight holds the layers before it already (its own forward wrote them).
            computed = [chunk for chunk, at in zip(self.chunks, self._joined_at) if at <= layer]
            for chunk, (k, v, grown) in zip(computed, chunks, strict=True):
                grown.keys, grown.values = k, v
                chunk.cache.layers[layer] = grown
        self.batch.append_column(batch_layers)

"""The model's context, said out loud: every request's prompt plus its `max_new_tokens` must fit in it.

The limit is the model's `config.max_position_embeddings`, or a smaller `HIRPF_MAX_CONTEXT` (a smaller
budget for memory or speed: one long row pads every other row of the scheduler's batch to its width). Past
its trained positions a model does not fail, it degrades silently (RoPE extrapolates), so nothing may go past.

A conversation that has grown too long keeps its newest turns that fit, the system message (the identity
prompt) always kept; the caller learns how many earlier turns were left out (`FittedHistory.left_out`, shown
in the chat's reply caption). A newest message that alone cannot fit is refused with a `ContextLimitError`
that states the limit. `Engine.generate` / `Engine.stream` and the scheduler apply this to every request, so
the app's chat and API, the CLI, debates and the evaluations share one rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from . import environment
from .sampling import Message


class ContextLimitError(ValueError):
    """A request that cannot fit the model's context; the message states the limit."""


def context_limit(config) -> int:
    """Tokens a request may span (prompt + new tokens): the model's positions, or `HIRPF_MAX_CONTEXT` when
    that is smaller (a larger setting cannot lift the model's own limit)."""
    model_limit = getattr(config, "max_position_embeddings", None)
    limits = [n for n in (model_limit, environment.HIRPF_MAX_CONTEXT) if n]
    if not limits:
        raise ValueError("the model's config has no max_position_embeddings: set HIRPF_MAX_CONTEXT")
    return min(limits)


def check_fits(prompt_tokens: int, new_tokens: int, limit: int, what: str = "the prompt") -> None:
    """Refuse `prompt_tokens` + `new_tokens` beyond `limit`, saying the limit and what would fit."""
    if new_tokens >= limit:
        raise ContextLimitError(f"max_new_tokens {new_tokens} leaves no room for a prompt in the model's context "
                                f"of {limit} tokens")
    if prompt_tokens + new_tokens > limit:
        raise ContextLimitError(f"{what} is {prompt_tokens} tokens, more than the {limit - new_tokens} that fit: "
                                f"the model's context is {limit} tokens, {new_tokens} of them kept for the reply "
                                f"(max_new_tokens)")


@dataclass(frozen=True)
class FittedHistory:
    history: list[Message]  # the newest turns that fit, in order
    left_out: int  # earlier turns left out
    prompt_tokens: int  # of the prompt the kept turns make (system message included)


def fit_history(history: Sequence[Message], prompt_tokens: Callable[[Sequence[Message]], int], limit: int,
                new_tokens: int) -> FittedHistory:
    """The newest turns of `history` whose prompt (`prompt_tokens(turns)`, system message included) leaves
    `new_tokens` within `limit`. The newest turn is always kept: if it cannot fit alone, ContextLimitError."""
    history = list(history)
    if not history:
        raise ValueError("a request needs at least one message")
    tokens = prompt_tokens(history)
    if tokens + new_tokens <= limit:
        return FittedHistory(history, 0, tokens)
    newest = prompt_tokens(history[-1:])
    check_fits(newest, new_tokens, limit, what="the newest message with the system prompt")
    # Fewer turns, fewer tokens: find the earliest start that fits (the newest alone does) by bisection.
    fits, too_long = len(history) - 1, 0
    fit_tokens = newest
    while fits - too_long > 1:
        middle = (fits + too_long) // 2
        tokens = prompt_tokens(history[middle:])
        if tokens + new_tokens <= limit:
            fits, fit_tokens = middle, tokens
        else:
            too_long = middle
    if fits < len(history) - 1 and history[fits]["role"] == "assistant":
        # Kept turns begin with a user turn: chat templates that require alternation refuse anything else.
        fits += 1
        fit_tokens = prompt_tokens(history[fits:])
    return FittedHistory(history[fits:], fits, fit_tokens)

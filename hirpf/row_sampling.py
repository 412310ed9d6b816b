"""Choosing one batch row's next token with its own settings and its own random generator.

The rules are `generate`'s, in its order, on float32 logits: repetition penalty; then, when sampling,
temperature, top-k, top-p (transformers' own processors). Each row draws from its own `torch.Generator`:
what it samples does not depend on which other rows share its batch, or on anything else using torch's
global generator.

One change of method, not of distribution: with top-k on, the draw is made among the k candidates rather
than over the whole vocabulary with the others masked. Drawing over 49k entries (`multinomial` makes one
random number per entry) and sorting them for top-p cost a few milliseconds per row and step, as much as a
tenth of a batch-8 decode step; over k = 50 candidates they cost microseconds. So a seeded request with
top-k draws other tokens than `Engine.generate` with the same seed (the same distribution); without top-k
(`top_k=0`) it draws the very same ones. (Top-k keeps exactly k: `generate` also keeps ties with the k-th.)
"""
from __future__ import annotations

import torch
from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from .sampling import Sampling


class RowSampler:
    """Next-token choice for one request (the settings were checked when the `Sampling` was made)."""

    def __init__(self, sampling: Sampling, device: torch.device | str = "cpu"):
        if sampling.num_beams != 1:
            raise ValueError(f"the scheduler decodes one sequence per request; num_beams={sampling.num_beams} "
                             "needs Engine.generate")
        sample = sampling.do_sample
        self.penalty = (RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty)
                        if sampling.repetition_penalty != 1.0 else None)
        self.temperature = (TemperatureLogitsWarper(sampling.temperature)
                            if sample and sampling.temperature != 1.0 else None)
        self.top_k = sampling.top_k if sample else 0
        self.top_p = TopPLogitsWarper(sampling.top_p) if sample and sampling.top_p < 1.0 else None
        self.do_sample = sample
        self.generator = torch.Generator(device=device)
        if sampling.seed is None:
            self.generator.seed()  # a fresh random seed, from the operating system
        else:
            self.generator.manual_seed(sampling.seed)

    def next_token(self, ids: torch.Tensor, logits: torch.Tensor) -> int:
        """`ids` `[1, tokens]`: the prompt and what the row generated so far; `logits` `[1, vocab]`."""
        scores = logits.to(dtype=torch.float32, copy=True)
        if self.penalty is not None:
            scores = self.penalty(ids, scores)
        if not self.do_sample:
            return int(scores.argmax(dim=-1))
        if self.temperature is not None:
            scores = self.temperature(ids, scores)
        candidates = None
        if self.top_k:
            scores, candidates = scores.topk(min(self.top_k, scores.shape[-1]), dim=-1)  # [1, k]
        if self.top_p is not None:
            scores = self.top_p(ids, scores)
        choice = int(torch.multinomial(scores.softmax(dim=-1), num_samples=1, generator=self.generator))
        return choice if candidates is None else int(candidates[0, choice])

"""Choosing one batch row's next token with its own settings and its own random generator.

The steps are transformers' own logits processors, in the order `generate` applies them (repetition
penalty; then, when sampling, temperature, top-k, top-p) on float32 logits, so a row decoded by the
scheduler follows the same rules as `Engine.generate`. Each row draws from its own `torch.Generator`: what
it samples does not depend on which other rows share its batch, or on anything else using torch's global
generator.
"""
from __future__ import annotations

import torch
from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)

from .engine import Sampling


class RowSampler:
    """Next-token choice for one request. Construction checks the settings (a ValueError names a bad one)."""

    def __init__(self, sampling: Sampling, device: torch.device | str = "cpu"):
        if sampling.num_beams != 1:
            raise ValueError(f"the scheduler decodes one sequence per request; num_beams={sampling.num_beams} "
                             "needs Engine.generate")
        if sampling.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {sampling.max_new_tokens}")
        processors = LogitsProcessorList()
        if sampling.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
        if sampling.do_sample:
            if sampling.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k:
                processors.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                processors.append(TopPLogitsWarper(sampling.top_p))
        self.processors, self.do_sample = processors, sampling.do_sample
        self.generator = torch.Generator(device=device)
        if sampling.seed is None:
            self.generator.seed()  # a fresh random seed, from the operating system
        else:
            self.generator.manual_seed(sampling.seed)

    def next_token(self, ids: torch.Tensor, logits: torch.Tensor) -> int:
        """`ids` `[1, tokens]`: the prompt and what the row generated so far; `logits` `[1, vocab]`."""
        scores = self.processors(ids, logits.to(dtype=torch.float32, copy=True))
        if not self.do_sample:
            return int(scores.argmax(dim=-1))
        probs = scores.softmax(dim=-1)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator))

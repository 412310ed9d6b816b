"""The statement judge (`--judge statement`): does an identity set make the agent likelier to say the item's
statement about itself than the neutral agent (the empty set) is? No options, digits or instructions to
follow, so it measures a model too small to answer a rating question.

For one item, the agent is asked for something about itself and the statement is scored as its whole reply,
teacher-forced, under the set and under the empty set with the same conditioning, after each of three
neutral requests (`STATEMENT_REQUESTS`, the same for every item and set):

    d = mean over the requests and the statement's tokens of [log p(token | set) - log p(token | empty set)]
    answer = 1 + 4 · sigmoid(d)         (1 … 5; the empty set answers exactly 3)

sigmoid(d) is the posterior that the set rather than the neutral agent said the statement, from equal priors
and the per-token likelihood ratio (length-normalised like the option judge, so a long statement does not
weigh more). A reverse-keyed item scores 6 - answer = 1 + 4 · sigmoid(-d), so a factor score above 3 says
the set owns the factor's high-keyed statements more, and its low-keyed ones less, than the neutral agent.

Why three requests: with the shipped experts, each request alone put 8, 6 and 7 of the ten poles on their
side of the empty set (the request's wording moves small shifts), so one wording would measure the wording
as much as the set. All three requests measured are used, none dropped, and nothing is tuned to the result.
Every statement of one set and request shares its prompt (encoded once, `option_likelihood`).
"""
from __future__ import annotations

import math
from typing import Sequence

from ..identities import IdentitySet
from ..prompts import Conditioning
from ..scales import Scale
from .answers import Answer
from .option_likelihood import option_distribution

STATEMENT_REQUESTS = ("Tell me something about yourself.", "Describe yourself.", "What kind of person are you?")
EMPTY_SET = IdentitySet()


def statement_log_likelihoods(engine, statements: Sequence[str], identity_sets: Sequence[IdentitySet],
                              conditioning: Conditioning, batch_size: int = 16, bar=None) -> dict:
    """{set: [mean log-probability per token of each statement as the reply, averaged over the requests]}."""
    requests = [[{"role": "user", "content": r}] for r in STATEMENT_REQUESTS]
    rows = [(s, r) for s in identity_sets for r in requests]
    _, scores = option_distribution(engine, [r for _, r in rows], [s for s, _ in rows], conditioning,
                                    list(statements), batch_size, bar)
    per_set = scores.view(len(identity_sets), len(requests), len(statements)).mean(1)
    return {s: row.tolist() for s, row in zip(identity_sets, per_set)}


def answer_by_statement(engine, scale: Scale, identity_sets: Sequence[IdentitySet], conditioning: Conditioning,
                        batch_size: int = 16, bar=None) -> list[Answer]:
    """Every identity set answers every item, each against the empty set (scored too when not among them)."""
    sets = [IdentitySet.parse(s) for s in identity_sets]
    scored = list(dict.fromkeys(sets + [EMPTY_SET]))
    per_set = None if bar is None else _PerItem(bar, len(scale.items))
    loglik = statement_log_likelihoods(engine, [i.text for i in scale.items], scored, conditioning, batch_size,
                                       per_set)
    answers = []
    for s in sets:
        for i, item in enumerate(scale.items):
            difference = loglik[s][i] - loglik[EMPTY_SET][i]
            answer = 1 + 4 / (1 + math.exp(-difference))
            answers.append(Answer(s, i, item, answer, {"loglik": round(loglik[s][i], 6),
                                                       "loglik_empty_set": round(loglik[EMPTY_SET][i], 6),
                                                       "difference": round(difference, 6)}))
    return answers


class _PerItem:
    """The caller's progress bar counts (set, item) answers; the scoring counts (set, request) prompts."""

    def __init__(self, bar, items: int):
        self.bar, self.items = bar, items

    def update(self, prompts: float) -> None:
        self.bar.update(prompts * self.items / len(STATEMENT_REQUESTS))

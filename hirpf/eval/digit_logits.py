"""The logits judge (`--judge logits`): the item is put to the agent as a question about itself, and the
answer is the expected value of its next-token distribution over the digits 1-5 (local, deterministic,
batched; `choices.py` encodes each identity set's shared prompt once). A small model that would rather say
something else than a digit puts little probability mass on them: the mass is kept with every answer.
"""
from __future__ import annotations

from typing import Sequence

from ..identities import IdentitySet
from ..labels import SCALE_OPTIONS
from ..prompts import Conditioning
from ..scales import Scale
from .answers import Answer
from .choices import LIKERT_LABELS, choice_probabilities


def likert_question(statement: str) -> str:
    """The logits judge's question. The options come before the statement so that every item of one identity
    set shares its prompt up to the statement (encoded once, see choices.py); the reply must start with the
    digit, a single token for the tokenizer."""
    options = "\n".join(f"{i} = {text}" for i, text in enumerate(SCALE_OPTIONS, 1))
    return ("Here is a statement a person might make about themselves. How accurately does it describe you? "
            f"Reply with a single digit:\n{options}\n\nStatement: \"{statement}\"")


def answer_by_logits(engine, scale: Scale, identity_sets: Sequence[IdentitySet], conditioning: Conditioning,
                     batch_size: int = 16, bar=None) -> list[Answer]:
    """Every identity set answers every item; one batched pass over all (set, item) pairs."""
    pairs = [(s, i) for s in identity_sets for i in range(len(scale.items))]
    conversations = [[{"role": "user", "content": likert_question(scale.items[i].text)}] for _, i in pairs]
    probabilities, mass = choice_probabilities(engine, conversations, [s for s, _ in pairs], conditioning,
                                               LIKERT_LABELS, batch_size, bar)
    answers = []
    for (s, i), p, m in zip(pairs, probabilities.tolist(), mass.tolist()):
        expected = sum(k * pk for k, pk in enumerate(p, 1))
        detail = {f"p{k}": round(pk, 6) for k, pk in enumerate(p, 1)} | {"option_mass": round(m, 6)}
        answers.append(Answer(s, i, scale.items[i], expected, detail))
    return answers

"""A questionnaire answer: what every questionnaire judge (`logits`, `interview`, ...) returns for one
identity set and one item, and what `questionnaire.py` scores. It lives apart from the judges and the
scoring so that each of them can import it without importing the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..identities import IdentitySet
from ..scales import ScaleItem


@dataclass
class Answer:
    """One identity set's answer to one item."""

    identities: IdentitySet
    item_index: int
    item: ScaleItem
    answer: float | None  # 1-5; None when the judge failed (interview: every referee sample malformed)
    detail: dict = field(default_factory=dict)  # judge-specific: probabilities, votes, transcript

    @property
    def score(self) -> float | None:
        """The answer toward the factor's high pole (reverse keying applied)."""
        return None if self.answer is None else self.item.score(self.answer)

    def row(self) -> dict:
        return {"identities": str(self.identities), "item": self.item_index, "factor": self.item.factor,
                "keyed": "+" if self.item.keyed > 0 else "-", "text": self.item.text,
                "answer": rounded(self.answer), "score": rounded(self.score),
                **{k: v for k, v in self.detail.items() if not isinstance(v, (list, dict))}}


def rounded(value: float | None, digits: int = 4) -> float | None:
    """A figure as written to the result files: 4 decimals, None stays None."""
    return None if value is None else round(float(value), digits)

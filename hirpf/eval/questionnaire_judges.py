"""The questionnaire judges, in one place: who answers a scale's items for each identity set.

    answer(judge, engine, scale, identity_sets, conditioning, batch_size, bar, interview=None) -> [Answer]

- `logits` (`digit_logits.py`): the agent is asked for a digit 1-5; the answer is the expected digit.
- `likelihood` (`option_likelihood.py`): the five option texts scored as the agent's reply, no digit needed.
- `statement` (`statement_likelihood.py`): no question at all: how much likelier the set makes the agent to
  say the statement about itself than the empty set does, on the 1-5 scale with the empty set at 3.
- `interview` (`interview.py`): the paper's protocol, an interviewer and a referee on an OpenAI-compatible
  endpoint; it needs that endpoint, given as an `InterviewJudge`.

The first three need nothing but the model. The CLI (`python -m hirpf.eval scale|profession --judge`), the
app's Questionnaire tab and `training/evaluate_experts.py` all answer through `answer`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from ..identities import IdentitySet
from ..prompts import Conditioning
from ..scales import Scale
from .answers import Answer
from .common import EvalError

if TYPE_CHECKING:
    from .interview import InterviewJudge

LOCAL_JUDGES = ("logits", "likelihood", "statement")
JUDGE_NAMES = (*LOCAL_JUDGES, "interview")
# The best local judge for a small model: it asks no question (the 135M model rarely answers with a digit);
# with the shipped experts it puts 8 of 10 poles on their side, `likelihood` 6 and `logits` none (docs/evaluation.md).
DEFAULT_JUDGE = "statement"


def local_judge(name: str) -> Callable[..., list[Answer]]:
    """The local judge `name`'s answer(engine, scale, identity_sets, conditioning, batch_size, bar). Imported
    when asked for: these modules import torch, and the app's page imports this registry (for the judges'
    names) before torch has loaded."""
    from .digit_logits import answer_by_logits
    from .option_likelihood import answer_by_likelihood
    from .statement_likelihood import answer_by_statement

    return {"logits": answer_by_logits, "likelihood": answer_by_likelihood, "statement": answer_by_statement}[name]


def answer(judge: str, engine, scale: Scale, identity_sets: Sequence[IdentitySet], conditioning: Conditioning,
           batch_size: int = 16, bar=None, interview: InterviewJudge | None = None) -> list[Answer]:
    """Every identity set's answer to every item of `scale`, from the judge named `judge`."""
    if judge in LOCAL_JUDGES:
        return local_judge(judge)(engine, scale, identity_sets, conditioning, batch_size, bar)
    if judge == "interview":
        if interview is None:
            raise EvalError("the interview judge needs an OpenAI-compatible endpoint; none is configured")
        return interview.answer(engine, scale, identity_sets, conditioning, batch_size, bar)
    raise EvalError(f"unknown judge {judge!r}; choose one of {', '.join(JUDGE_NAMES)}")

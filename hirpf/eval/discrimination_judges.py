"""The two judges of `discriminate`, one interface: `pole_outcomes` (which of two replies is the high pole?)
and `profession_outcomes` (which of the three professions is speaking?). An outcome is the credit a
decision earns: 1 right, 0 wrong, 0.5 for a pole pair the judge cannot split (an exact tie, or an endpoint
that answered differently in the two orders), and for professions the share of the two orders named right.

- `LikelihoodJudge`: the base model without experts, by description likelihoods (`reply_judge`).
- `ReaderJudge`: poles as `LikelihoodJudge`; professions by a `ProfessionReader` (a reply's words), which
  names them where the likelihoods could not.
- `EndpointJudge`: the pair-study LLM judge (`pair_question.PairJudge`) on an OpenAI-compatible endpoint;
  every pair is asked in both orders, every profession with the options listed in both orders.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from ..identities import PROFESSIONS
from ..llm_client import MalformedReply
from .pair_question import PairJudge
from .profession_reader import ProfessionReader
from .reply_judge import Evidence, pole_margins, profession_scores

# How the endpoint judge's questions name a pole (ours; short forms of `reply_judge.POLE_DESCRIPTIONS`).
POLE_PHRASES = {
    "AGR_high": "warm, trusting and cooperative", "AGR_low": "blunt, critical and quarrelsome",
    "CON_high": "organised, careful and dependable", "CON_low": "disorganised, careless and unreliable",
    "EXT_high": "outgoing, talkative and energetic", "EXT_low": "quiet, reserved and solitary",
    "NEU_high": "anxious, tense and easily upset", "NEU_low": "calm, steady and relaxed",
    "OPE_high": "curious, imaginative and open to new ideas",
    "OPE_low": "conventional, practical and set in their ways",
}
NAMING_SYSTEM = "You read a reply and say what the person who wrote it does for a living. Reply with JSON only."
NAMING_PROMPT = ("{evidence}\n\nQuestion: which of these is the writer's profession: {options}?\n\n"
                 "Reply with a JSON object of the form {{\"answer\": X}}, where X is one of {quoted}.")
DIFFERENT_MESSAGES = "(two different conversations: each reply is shown with the message it answers)"


def pole_question(trait: str) -> str:
    return (f"Which reply sounds more like a person who is {POLE_PHRASES[trait + '_high']}, rather than "
            f"{POLE_PHRASES[trait + '_low']}?")


class LikelihoodJudge:
    name = "likelihood"

    def __init__(self, engine, batch_size: int = 16, bar=None):
        self.engine, self.batch_size, self.bar = engine, batch_size, bar

    def pole_outcomes(self, pairs: Sequence[tuple[Evidence, Evidence, str]]) -> list[float]:
        """Per (high pole's evidence, low pole's evidence, trait): did the high one get the larger margin?"""
        margins = self.margins([e for high, low, _ in pairs for e in (high, low)],
                               [t for _, _, t in pairs for _ in (0, 1)])
        return [pair_credit(margins[2 * i], margins[2 * i + 1]) for i in range(len(pairs))]

    def margins(self, evidence: Sequence[Evidence], traits: Sequence[str]) -> list[float]:
        return pole_margins(self.engine, evidence, traits, self.batch_size, self.bar)

    def profession_outcomes(self, items: Sequence[tuple[Evidence, str]]) -> list[float]:
        scores = profession_scores(self.engine, [e for e, _ in items], self.batch_size, self.bar)
        return [float(max(s, key=s.get) == profession) for s, (_, profession) in zip(scores, items)]


class ReaderJudge(LikelihoodJudge):
    name = "likelihood+reader"

    def __init__(self, engine, reader: ProfessionReader, batch_size: int = 16, bar=None):
        super().__init__(engine, batch_size, bar)
        self.reader = reader

    def profession_outcomes(self, items: Sequence[tuple[Evidence, str]]) -> list[float]:
        """1 where the reader names the profession from the replies' words (the messages they answer are not
        read), else 0 (a tie names none)."""
        return [float(self.reader.name(e.replies) == profession) for e, profession in items]


def pair_credit(high: float, low: float) -> float:
    return 1.0 if high > low else 0.0 if high < low else 0.5


class EndpointJudge:
    """Failures (a reply that is not the JSON asked for, after the client's resampling) earn no credit and
    are counted in `failed`; an endpoint that refuses stops the run (its error propagates)."""

    def __init__(self, judge: PairJudge):
        self.judge, self.name, self.failed = judge, judge.name, 0

    def _map(self, function, items) -> list:
        with ThreadPoolExecutor(max_workers=max(1, self.judge.workers)) as pool:
            return list(pool.map(function, items))

    def pole_outcomes(self, pairs: Sequence[tuple[Evidence, Evidence, str]]) -> list[float]:
        def one(pair) -> float | None:
            high, low, trait = pair
            message, high_text, low_text = _shown_pair(high, low)
            try:
                high_first, _ = self.judge.ask(message, pole_question(trait), high_text, low_text, False)
                low_first, _ = self.judge.ask(message, pole_question(trait), low_text, high_text, False)
            except MalformedReply:
                return None
            return ((high_first == "A") + (low_first == "B")) / 2

        return self._counted(self._map(one, pairs))

    def profession_outcomes(self, items: Sequence[tuple[Evidence, str]]) -> list[float]:
        def one(item) -> float | None:
            evidence, profession = item
            try:
                named = [self._name(evidence, order) for order in (PROFESSIONS, PROFESSIONS[::-1])]
            except MalformedReply:
                return None
            return sum(n == profession for n in named) / 2

        return self._counted(self._map(one, items))

    def _name(self, evidence: Evidence, options: Sequence[str]) -> str:
        prompt = NAMING_PROMPT.format(evidence=_transcript(evidence), options=", ".join(options),
                                      quoted=", ".join(f'"{o}"' for o in options))

        def parse(reply: dict) -> str:
            if reply.get("answer") not in options:
                raise ValueError(f"answer must be one of {list(options)}, got {reply.get('answer')!r:.40}")
            return reply["answer"]

        messages = [{"role": "system", "content": NAMING_SYSTEM}, {"role": "user", "content": prompt}]
        return self.judge.client.complete_json(messages, parse, temperature=0.0, max_tokens=20)

    def _counted(self, outcomes: list[float | None]) -> list[float]:
        self.failed += outcomes.count(None)
        return [0.0 if o is None else o for o in outcomes]


def _single(evidence: Evidence) -> tuple[str, str] | None:
    """(message, reply) of a one-piece evidence whose history is one message."""
    if len(evidence.pieces) == 1 and len(evidence.pieces[0][0]) == 1:
        history, reply = evidence.pieces[0]
        return history[0]["content"], reply
    return None


def _shown_pair(a: Evidence, b: Evidence) -> tuple[str, str, str]:
    """(message, reply A, reply B): the shared message when both answer the same one, otherwise each reply
    with the turns it answers."""
    one, other = _single(a), _single(b)
    if one and other and one[0] == other[0]:
        return one[0], one[1], other[1]
    return DIFFERENT_MESSAGES, _transcript(a), _transcript(b)


def _transcript(evidence: Evidence) -> str:
    lines = []
    for history, reply in evidence.pieces:
        lines += [f"Message: {turn['content']}" for turn in history] + [f"Reply: {reply}"]
    return "\n".join(lines)

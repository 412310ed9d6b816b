"""Does each debater argue its own side? Measured on the embedded model (prompt only: the session's engine
has no experts) by likelihood, the way the option judge reads a questionnaire: at every turn of a debate
(openings, a rebuttal, closings; the earlier turns one plain sentence per side), the speaker's view is
scored with short first-person openings that take a side ("I support this motion." / "I oppose this
motion.", "I am in favour of it." / "I am against it."), and the side is kept when the speaker's own side's
opening is the likelier. No sampling and no parsing: deterministic, and a reply the small model might
write is not needed for the measure.

Measured with the cues before the motion and the side were restated at every turn: 42 of 72 for agent A
and 18 of 72 for agent B, 0.42 over eight motions and three opening pairs (see the issue notes); this test's
four motions and two pairs gave the figure in `BEFORE`.
"""
from __future__ import annotations

from hirpf.eval.debate import Debate, DebateSpec, Turn, schedule
from hirpf.eval.option_likelihood import option_distribution
from hirpf.identities import IdentitySet
from hirpf.prompts import Conditioning

MOTIONS = ["Cities should ban private cars from their centres.", "Voting should be compulsory.",
           "Museums should be free for everyone.", "Schools should replace homework with supervised study time."]
# Pairs of replies: (the "for" side's, the "against" side's).
OPENINGS = [("I support this motion.", "I oppose this motion."), ("I am in favour of it.", "I am against it.")]
EARLIER = {"A": "I am for this motion, and here is why.", "B": "I am against this motion, and here is why."}
BEFORE = 0.5  # this test's measure with the earlier cues (one rebuttal round, so six turns per motion)
AFTER_AT_LEAST = 0.7


def stance_kept(engine, motions=MOTIONS) -> float:
    """The share of (turn, opening pair) where the speaker's own side's opening is the likelier reply."""
    views = []
    for motion in motions:
        spec = DebateSpec(motion, IdentitySet(), IdentitySet(), rounds=1)
        turns = schedule(spec.rounds)
        for n, (speaker, _, _) in enumerate(turns):
            debate = Debate(spec, [Turn(s, stage, r, EARLIER[s]) for s, stage, r in turns[:n]])
            views.append((speaker, debate.view(speaker)))
    replies = [reply for pair in OPENINGS for reply in pair]
    _, log_likelihoods = option_distribution(engine, [v for _, v in views], [IdentitySet()] * len(views),
                                             Conditioning.PROMPT, replies)
    kept = []
    for (speaker, _), row in zip(views, log_likelihoods.tolist()):
        for k in range(0, len(replies), 2):
            own, other = (row[k], row[k + 1]) if speaker == "A" else (row[k + 1], row[k])
            kept.append(own > other)
    return sum(kept) / len(kept)


def test_each_debater_takes_its_own_side_more_often_than_before(embedded_engine):
    assert stance_kept(embedded_engine) >= AFTER_AT_LEAST

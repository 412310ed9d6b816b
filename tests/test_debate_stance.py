"""Does each debater argue its own side? Measured on the embedded model (prompt only: the session's engine
has no experts) by likelihood, the way the option judge reads a questionnaire: at every turn of a debate
(openings, a rebuttal, closings; the earlier turns one plain sentence per side), the speaker's view is
scored with short first-person openings that take a side ("I support this motion." / "I oppose this
motion.", "I am in favour of it." / "I am against it."), and the side is kept when the speaker's own side's
opening is the likelier. No sampling and no parsing: deterministic, and a reply the small model might
write is not needed for the measure.

This test's four motions and two pairs: 0.42 of (turn, pair) with the earlier cues, which named the side
once, in the first cue only; 0.77 with the side restated at the end of every cue. On a wider set (eight
motions, three pairs) the same change moved agent A from 42 to 48 of 72 and agent B from 18 to 53 of 72.
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
BEFORE = 0.42  # this measure with the earlier cues
AFTER_AT_LEAST = 0.7  # measured 0.77; the bar sits well above BEFORE, below the measure


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
    kept = []
    for speaker, view in views:
        # One view per call: its prompt is encoded once and shared by the four replies. (All views in one
        # call share only the prefix common to every view, so each view's prompt ran four times.)
        _, log_likelihoods = option_distribution(engine, [view], [IdentitySet()], Conditioning.PROMPT, replies)
        row = log_likelihoods[0].tolist()
        for k in range(0, len(replies), 2):
            own, other = (row[k], row[k + 1]) if speaker == "A" else (row[k + 1], row[k])
            kept.append(own > other)
    return sum(kept) / len(kept)


def test_each_debater_takes_its_own_side_more_often_than_before(embedded_engine):
    kept = stance_kept(embedded_engine)
    assert kept >= AFTER_AT_LEAST > BEFORE, f"the side was kept in {kept:.2f} of turns"

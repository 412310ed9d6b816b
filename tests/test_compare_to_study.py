"""A Chat Compare result sent to a preference study (issue 25 item 6), in the store, on SQLite and
PostgreSQL: it is stored as a build or an import stores a pair (conditions with their provenance, the
replies with their seed), annotators get it as any pair, and what cannot be a preference pair is refused
with nothing stored."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from annotation.pair_studies import (
    PairStudyError,
    compared_pair_plan,
    parse_condition,
    plan_pairs,
    poles,
    save_study,
    study_names,
)
from annotation.pair_tasks import next_pair_task
from app.compare_to_study import Comparison, send_comparison
from app.evaluation_store import open_store
from db.models import PairCondition, PairReply, PairStudy, StudyPair
from hirpf.identities import IdentitySet
from hirpf.prompts import Conditioning
from hirpf.sampling import Sampling

MODEL = "tiny model with random experts"
MESSAGE = "How do you spend a Sunday?"


@pytest.fixture
def store_db(database_url, monkeypatch):
    """The app's store (`app.evaluation_store.open_store`) on a fresh database of each engine."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    return open_store(None).db


def comparison(message: str = MESSAGE, strengths: str = "", mode: Conditioning = Conditioning.EXPERTS_AND_PROMPT,
               baseline: str = "prompt", seed: int = 7, history: tuple = ()) -> Comparison:
    identities = IdentitySet.parse(["EXT_high", "Doctor"]).with_strengths(strengths or None)
    return Comparison(history + ({"role": "user", "content": message},), identities, mode, baseline,
                      Sampling(max_new_tokens=32, seed=seed),
                      (f"expert reply to {message}", f"prompt reply to {message}"), MODEL)


def counts(db) -> list[int]:
    with db.read() as session:
        return [session.scalar(select(func.count()).select_from(m)) for m in (PairStudy, PairCondition, PairReply,
                                                                               StudyPair)]


def test_a_comparison_is_stored_as_a_preference_pair_with_its_provenance(store_db):
    assert send_comparison(None, comparison(), "  chat   prefs ") == "chat prefs"
    send_comparison(None, comparison("What do you do when a friend is late?", seed=11), "chat prefs")
    with store_db.read() as session:
        study = session.scalar(select(PairStudy))
        assert (study.name, study.design, study.ties_allowed) == ("chat prefs", "preference", True)
        rows = session.scalars(select(PairCondition)).all()
        label_of = {c.id: c.label for c in rows}
        conditions = {c.label: (c.conditioning, c.strength, c.base_model, c.seed) for c in rows}
        assert conditions == {"experts+prompt@1.0": ("experts+prompt", 1.0, MODEL, None),
                              "prompt": ("prompt", None, MODEL, None)}
        replies = session.scalars(select(PairReply).order_by(PairReply.id)).all()
        assert [(label_of[r.condition_id], r.identities, r.prompt, r.text) for r in replies[:2]] == [
            ("experts+prompt@1.0", ["EXT_high", "Doctor"], MESSAGE, f"expert reply to {MESSAGE}"),
            ("prompt", ["EXT_high", "Doctor"], MESSAGE, f"prompt reply to {MESSAGE}")]
        assert "seed 7" in replies[0].source_ref and "seed 11" in replies[2].source_ref
        pairs = session.scalars(select(StudyPair).order_by(StudyPair.position)).all()
        assert [(p.reply_a.prompt, p.expected) for p in pairs] == [(MESSAGE, None),
                                                                  ("What do you do when a friend is late?", None)]
        # The question plan_pairs asks for these conditions: one way to make a preference pair.
        planned = plan_pairs("preference", [["EXT_high", "Doctor"]], [parse_condition("experts+prompt@1.0"),
                                                                      parse_condition("prompt")], [MESSAGE])
        assert pairs[0].question == planned.pairs[0].question
    # Annotators get it as any pair: the message and both replies, blind.
    view = next_pair_task(store_db, "chat prefs", open_store(None).register_annotator("Ada"))
    assert view.prompt in (MESSAGE, "What do you do when a friend is late?")  # in the annotator's own order
    assert {view.reply_a, view.reply_b} == {f"expert reply to {view.prompt}", f"prompt reply to {view.prompt}"}
    assert study_names(store_db, design="preference") == ["chat prefs"]


def test_the_no_identity_baseline_and_one_strength_for_all_are_conditions(store_db):
    send_comparison(None, comparison(strengths="1.5", baseline="none"), "strong")
    with store_db.read() as session:
        labels = {c.label: (c.conditioning, c.strength) for c in session.scalars(select(PairCondition))}
    assert labels == {"experts+prompt@1.5": ("experts+prompt", 1.5), "no identity": (None, None)}


@pytest.mark.parametrize("made, study, refused", [
    (comparison(strengths="EXT_high=1.5,Doctor=0.5"), "s", "strengths"),
    (comparison(mode=Conditioning.PROMPT), "s", "conditions"),  # no experts: both replies by the prompt
    (comparison(history=({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"})), "s",
     "message"),
    (comparison(), "   ", "study"),
])
def test_what_cannot_be_a_preference_pair_is_refused_naming_it(store_db, made, study, refused):
    with pytest.raises(ValueError, match=f"^{refused}:"):
        send_comparison(None, made, study)
    assert counts(store_db) == [0, 0, 0, 0]


def test_a_study_of_another_kind_or_a_changed_reply_refuses_and_stores_nothing(store_db):
    save_study(store_db, "poles", plan_pairs("discrimination", poles()[:1], [parse_condition("prompt")], [MESSAGE]))
    before = counts(store_db)
    with pytest.raises(PairStudyError, match="exists with design"):
        send_comparison(None, comparison(), "poles")
    send_comparison(None, comparison(), "prefs")
    after = counts(store_db)
    again = comparison()
    again = Comparison(again.history, again.identities, again.conditioning, again.baseline, again.sampling,
                       ("another reply", "prompt reply"), MODEL)
    with pytest.raises(PairStudyError, match="two different replies"):
        send_comparison(None, again, "prefs")
    assert counts(store_db) == after and after[0] == before[0] + 1
    with pytest.raises(ValueError, match="^identities:"):
        compared_pair_plan((), (parse_condition("prompt"), parse_condition("experts")), MESSAGE, ("a", "b"))

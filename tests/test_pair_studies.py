"""Pair studies in the store, on SQLite and PostgreSQL: planning and storing a study, annotators' blind queues
in an order of their own, and the report and export that follow from their answers."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict

import pytest
from sqlalchemy import func, select

from annotation.assignment import AssignmentPolicy
from annotation.pair_generation import reply_counts
from annotation.pair_report import build_pair_report, pair_chart, write_pairs_csv, write_pairs_jsonl
from annotation.pair_studies import PairStudyError, parse_condition, plan_pairs, poles, professions, save_study
from annotation.pair_tasks import answer_pair, last_answered_pair, next_pair_task, pair_progress, skip_pair
from annotation.store import Store, StoreError
from db.models import Annotator, PairCondition, PairReply, PairStudy, PairTask, StudyPair

from pair_helpers import answer_all, fill_replies

PROMPTS = ["How do you spend a Sunday?", "What do you do when a friend is late?"]
EXPERTS, PROMPT = parse_condition("experts+prompt@1.0", base_model="embedded", seed=0), parse_condition("prompt")


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


def counts(database) -> list[int]:
    with database.read() as session:
        return [session.scalar(select(func.count()).select_from(m))
                for m in (PairStudy, PairCondition, PairReply, StudyPair, PairTask)]


def test_conditions_parse_and_bad_ones_are_refused():
    assert (EXPERTS.conditioning, EXPERTS.strength) == ("experts+prompt", 1.0)
    assert (PROMPT.conditioning, PROMPT.strength) == ("prompt", None)
    for bad, message in [("experts+prmpt", "unknown conditioning"), ("experts@9", "strength"),
                         ("prompt@1.0", "does not use"), ("", "expected text")]:
        with pytest.raises(ValueError, match=message):
            parse_condition(bad)


def test_a_discrimination_plan_asks_about_each_pole_under_each_condition():
    plan = plan_pairs("discrimination", poles(), [EXPERTS, PROMPT], PROMPTS)
    assert len(plan.pairs) == 2 * 5 * 2 and not plan.ties_allowed
    first = plan.pairs[0]
    assert (first.a.identities, first.b.identities, first.expected) == (("AGR_high",), ("AGR_low",), "a")
    assert first.question == "Which reply shows more agreeableness?"
    assert first.a.condition == first.b.condition == EXPERTS
    jobs = plan_pairs("discrimination", professions(), [PROMPT], PROMPTS[:1])
    assert [p.question for p in jobs.pairs[:2]] == ["Which speaker sounds more like a doctor?"] * 2
    with pytest.raises(ValueError, match="--poles or --professions"):
        plan_pairs("discrimination", ["Doctor"], [PROMPT], PROMPTS)
    with pytest.raises(ValueError, match="at least two --condition"):
        plan_pairs("preference", [["Doctor"]], [PROMPT], PROMPTS)


def test_a_study_is_stored_once_and_a_rerun_adds_only_what_is_missing(database):
    plan = plan_pairs("discrimination", poles(), [EXPERTS, PROMPT], PROMPTS[:1])
    save_study(database, "poles", plan)
    # 10 poles x 2 conditions x 1 prompt replies; 5 traits x 2 conditions pairs.
    assert counts(database) == [1, 2, 20, 10, 0]
    assert reply_counts(database, "poles") == (0, 20)
    save_study(database, "poles", plan)
    save_study(database, "poles", plan_pairs("discrimination", poles(), [EXPERTS, PROMPT], PROMPTS))
    assert counts(database) == [1, 2, 40, 20, 0]
    # The same name with other provenance (a rerun with another checkpoint) changes nothing.
    other = parse_condition("experts+prompt@1.0", base_model="embedded", checkpoint="runs/x", seed=0)
    with pytest.raises(PairStudyError, match="was stored with"):
        save_study(database, "poles", plan_pairs("discrimination", poles(), [other, PROMPT], PROMPTS))
    with pytest.raises(PairStudyError, match="exists with design"):
        save_study(database, "poles", plan_pairs("preference", [["AGR_high"]], [EXPERTS, PROMPT], PROMPTS))
    assert counts(database) == [1, 2, 40, 20, 0]


def test_annotators_see_pairs_blind_in_an_order_of_their_own(database):
    save_study(database, "poles", plan_pairs("discrimination", poles(), [EXPERTS, PROMPT], PROMPTS))
    store = Store(database)
    ada, bo = store.register_annotator("Ada"), store.register_annotator("Bo")
    policy = AssignmentPolicy(overlap=2, batch=40, seed=3)
    assert next_pair_task(database, "poles", ada, policy) is None  # no replies yet: nothing to hand out
    fill_replies(database, "poles")
    with database.read() as session:
        study_id = session.scalar(select(PairStudy.public_id))
    views = {}
    for who in (ada, bo):
        view = next_pair_task(database, study_id, who, policy)  # a browser names the study by its public id
        views[who] = view
        assert view.progress == (0, 20, 0) and view.position == 1
        # Nothing on the view names a condition, identity, model or stored side.
        shown = json.dumps(asdict(view))
        for secret in ("experts", "prompt@", "AGR_", "EXT_", "embedded", "\"a\"", "expected"):
            assert secret not in shown.replace(view.reply_a, "").replace(view.reply_b, "")
    with database.read() as session:
        orders = [list(session.scalars(select(PairTask.shown_first).join(Annotator)
                                       .where(Annotator.public_id == who).order_by(PairTask.pair_id)))
                  for who in (ada, bo)]
    assert set(orders[0]) == set(orders[1]) == {"a", "b"}  # both orders occur for each annotator
    assert orders[0] != orders[1]  # and differ between annotators
    # The answer is stored in stored terms: "A" is whichever reply this annotator saw first.
    view = views[ada]
    with database.read() as session:
        task = session.scalar(select(PairTask).where(PairTask.public_id == view.task))
        pair = task.pair
        first_text = pair.reply_a.text if task.shown_first == "a" else pair.reply_b.text
    assert view.reply_a == first_text
    assert answer_pair(database, view.task, "A", annotator=ada, seconds=2) == "stored"
    with database.read() as session:
        assert session.scalar(select(PairTask.choice).where(PairTask.public_id == view.task)) == task.shown_first


def test_ties_skips_and_edits_follow_the_rules(database):
    save_study(database, "poles", plan_pairs("discrimination", poles()[:2], [PROMPT], PROMPTS[:1]))
    fill_replies(database, "poles")
    ada = Store(database).register_annotator("Ada")
    first = next_pair_task(database, "poles", ada)
    with pytest.raises(StoreError, match="allows no ties"):
        answer_pair(database, first.task, "tie", annotator=ada)
    with pytest.raises(StoreError, match="expected one of"):
        answer_pair(database, first.task, "a", annotator=ada)
    with pytest.raises(StoreError, match="no pair task"):
        answer_pair(database, first.task, "A", annotator=Store(database).register_annotator("Mallory"))
    answer_pair(database, first.task, "A", annotator=ada)
    assert answer_pair(database, first.task, "A", annotator=ada) == "unchanged"
    assert answer_pair(database, first.task, "B", annotator=ada) == "edited"
    assert last_answered_pair(database, "poles", ada).answer == "B"
    second = next_pair_task(database, "poles", ada)
    answer_pair(database, second.task, "A", annotator=ada)
    with pytest.raises(StoreError, match="only your last answer"):
        answer_pair(database, first.task, "A", annotator=ada)
    with pytest.raises(StoreError, match="edit the answer instead"):
        skip_pair(database, second.task, "unclear", annotator=ada)
    assert next_pair_task(database, "poles", ada) is None
    assert pair_progress(database, "poles", ada) == (2, 2, 0)


def test_discrimination_report_gives_accuracy_per_condition_with_intervals(database, tmp_path):
    save_study(database, "poles", plan_pairs("discrimination", poles(), [EXPERTS, PROMPT], PROMPTS))
    fill_replies(database, "poles")
    store = Store(database)
    # Readers who always tell the experts' poles apart, and never the prompt's (they pick the low pole).
    for name in ("Ada", "Bo"):
        answer_all(database, "poles", store.register_annotator(name),
                   lambda a, b: "a" if a.startswith("experts") else "b")
    report = build_pair_report(database, "poles", resamples=50)
    accuracy = report["humans"]["accuracy"]
    assert accuracy["experts+prompt@1.0"]["accuracy"] == 1.0 and accuracy["experts+prompt@1.0"]["n"] == 20
    assert accuracy["prompt"]["accuracy"] == 0.0
    assert accuracy["experts+prompt@1.0"]["interval"] == pytest.approx([0.8389, 1.0], abs=1e-4)  # Wilson, 20/20
    assert report["humans"]["agreement"]["n_pairs"] == 20
    assert report["humans"]["agreement"]["percent_agreement"] == 1.0
    # Stored side "a" was picked exactly when it was shown first: the share of A follows the shown order.
    assert 0 < report["humans"]["position_bias"]["share_first"] < 1
    out = io.StringIO()
    assert write_pairs_csv(database, out, "poles") == 40
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert {r["condition_a"] for r in rows} == {"experts+prompt@1.0", "prompt"}
    out = io.StringIO()
    assert write_pairs_jsonl(database, out) == 40
    assert json.loads(out.getvalue().splitlines()[0])["expected"] == "a"
    assert is_png(pair_chart(report, tmp_path / "poles.png"))


def test_preference_report_ranks_conditions_with_bradley_terry(database, tmp_path):
    strong = parse_condition("experts+prompt@1.5")
    plan = plan_pairs("preference", [["AGR_high"], ["EXT_low"], ["Doctor"]], [strong, EXPERTS, PROMPT], PROMPTS)
    assert plan.ties_allowed and plan.pairs[0].question.startswith("Which reply sounds more like a person with")
    save_study(database, "strengths", plan)
    fill_replies(database, "strengths")
    order = {"experts+prompt@1.5": 2, "experts+prompt@1.0": 1, "prompt": 0}

    def prefer_stronger(a: str, b: str) -> str:
        rank_a, rank_b = order[a.split()[0]], order[b.split()[0]]
        return "a" if rank_a > rank_b else "b"

    store = Store(database)
    answer_all(database, "strengths", store.register_annotator("Ada"), prefer_stronger)
    answer_all(database, "strengths", store.register_annotator("Bo"), lambda a, b: "tie")
    report = build_pair_report(database, "strengths", resamples=100)
    assert is_png(pair_chart(report, tmp_path / "strengths.png"))
    bt = report["humans"]["bradley_terry"]["per_condition"]
    scores = [bt[c]["score"] for c in ("experts+prompt@1.5", "experts+prompt@1.0", "prompt")]
    assert scores[0] > scores[1] > scores[2]
    assert bt["experts+prompt@1.5"]["wins"] == 12 and bt["prompt"]["losses"] == 12
    assert bt["prompt"]["ties"] == 12
    for row in bt.values():
        assert row["interval"][0] <= row["score"] <= row["interval"][1]


def test_the_longest_question_allowed_fits_postgresqls_index_and_a_longer_one_is_refused(database):
    longest = "\U0001F600" * 500  # 2000 bytes of UTF-8, under PostgreSQL's limit for a unique index row
    save_study(database, "long", plan_pairs("discrimination", poles()[:1], [PROMPT], PROMPTS[:1], question=longest))
    assert counts(database)[3] == 1
    with pytest.raises(StoreError, match="501 characters, the limit is 500"):
        save_study(database, "longer", plan_pairs("discrimination", poles()[:1], [PROMPT], PROMPTS[:1],
                                                  question=longest + "?"))
    assert counts(database)[0] == 1

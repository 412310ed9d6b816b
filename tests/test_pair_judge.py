"""The LLM judge on pair studies, against the local fake OpenAI endpoint: both orders asked, a judge that
flips with the order counted as a tie, votes stored as the judge's, judge-versus-human agreement reported."""
from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import func, select

from annotation.__main__ import main
from annotation.pair_judge import PairJudge, judge_study
from annotation.pair_report import build_pair_report
from annotation.pair_studies import parse_condition, plan_pairs, poles, save_study
from annotation.store import Store
from db import Database
from db.models import PairJudgeVote
from hirpf.llm_client import ChatClient

from openai_server import Reply
from pair_helpers import answer_all, fill_replies


@pytest.fixture
def database(tmp_path):
    opened = Database(f"sqlite:///{tmp_path / 'judge.sqlite3'}")
    save_study(opened, "poles", plan_pairs("discrimination", poles(), [parse_condition("experts+prompt@1.0"),
                                                                       parse_condition("prompt")],
                                           ["How do you spend a Sunday?"]))
    fill_replies(opened, "poles")  # each reply's text starts with its condition and identities
    yield opened
    opened.close()


def shown_replies(request: dict) -> tuple[str, str]:
    text = request["messages"][-1]["content"]
    first, second = re.search(r"Reply A:\n(.*)\n\nReply B:\n(.*)\n\nQuestion", text, re.S).groups()
    return first, second


def knows_the_high_pole(request: dict) -> str:
    """A judge that sees the identity the way a reader would: it picks the high pole, in either order."""
    first, _ = shown_replies(request)
    return json.dumps({"answer": "A" if "_high" in first else "B"})


def judge(server, name: str = "fake-judge") -> PairJudge:
    return PairJudge(ChatClient(server.base_url, "fake-model", max_retries=0), name, workers=2)


def test_each_pair_is_asked_in_both_orders_and_stored_as_the_judges(database, openai_server):
    openai_server.responder = knows_the_high_pole
    assert judge_study(database, "poles", judge(openai_server)) == {"judged": 10, "known": 0, "failed": 0}
    orders = [shown_replies(r) for r in openai_server.chat_requests]
    assert len(orders) == 20
    assert sorted(orders) == sorted((b, a) for a, b in orders)  # every pair in both orders
    with database.read() as session:
        votes = session.scalars(select(PairJudgeVote)).all()
        assert {(v.choice, v.choice_a_first, v.choice_b_first) for v in votes} == {("a", "a", "a")}
        assert all(len(v.raw_replies) == 2 for v in votes)
    # A rerun asks nothing again.
    assert judge_study(database, "poles", judge(openai_server)) == {"judged": 0, "known": 10, "failed": 0}
    assert len(openai_server.chat_requests) == 20


def test_a_judge_that_follows_the_order_counts_as_a_tie_and_shows_its_position_bias(database, openai_server):
    openai_server.responder = lambda request: json.dumps({"answer": "A"})
    judge_study(database, "poles", judge(openai_server, "always-first"))
    section = build_pair_report(database, "poles", resamples=20)["judges"]["always-first"]
    assert section["order_flips"] == 10
    assert section["position_bias"]["share_first"] == 1.0 and section["position_bias"]["n"] == 20
    assert {c: row["accuracy"] for c, row in section["accuracy"].items()} == {
        "experts+prompt@1.0": 0.5, "prompt": 0.5}  # every vote a tie: half right


def test_judge_versus_human_agreement_is_reported(database, openai_server):
    openai_server.responder = knows_the_high_pole
    judge_study(database, "poles", judge(openai_server))
    store = Store(database)
    # A reader who gets the experts' pairs right and the prompt's wrong.
    answer_all(database, "poles", store.register_annotator("Ada"),
               lambda a, b: "a" if a.startswith("experts") else "b")
    vs = build_pair_report(database, "poles", resamples=20)["judges"]["fake-judge"]["vs_humans"]
    assert vs["n_pairs"] == 10 and vs["accuracy"] == 0.5


def test_malformed_answers_leave_pairs_unjudged_and_the_cli_reports_them(database, openai_server, tmp_path,
                                                                         capsys):
    openai_server.responder = lambda request: Reply(content="I cannot decide.")
    assert judge_study(database, "poles", judge(openai_server)) == {"judged": 0, "known": 0, "failed": 10}
    with database.read() as session:
        assert session.scalar(select(func.count()).select_from(PairJudgeVote)) == 0
    openai_server.responder = knows_the_high_pole
    url = database.url.render_as_string(hide_password=False)
    assert main(["pairs", "judge", "--database", url, "--study", "poles", "--judge_base_url",
                 openai_server.base_url, "--judge_model", "fake-model", "--judge_cache_dir", "none"]) == 0
    assert "judge 'llm:fake-model': 10 pair(s) judged" in capsys.readouterr().out
    assert main(["pairs", "judge", "--database", url, "--study", "nope", "--judge_base_url",
                 openai_server.base_url, "--judge_cache_dir", "none"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err

"""The Debate and Questionnaire tabs driven as a client would: `gradio_client` against the app on loopback.

The mechanics (rules, errors, uploads, surveys, the interview judge) run on a tiny random Llama with random
experts; the embedded model serves one short debate, the Stop test and one short questionnaire, where the
text and the numbers come from a real model.
"""
from __future__ import annotations

import csv
import json
import time
from collections import defaultdict
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from sqlalchemy import select

from app.evaluation_store import open_store
from db.models import Dialogue
from hirpf.eval.interview import REFEREE_SYSTEM
from hirpf.eval.survey import load_survey
from hirpf.paths import his_file
from hirpf.scales import DATA_DIR, load_scale

from app_serving import assert_model_stopped, client, forward_calls, served


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-data")


@pytest.fixture(scope="module")
def tiny_url(tiny_engine, tiny_data_dir):
    with served(tiny_engine, tiny_data_dir) as url:
        yield url


@pytest.fixture(scope="module")
def embedded_url(embedded_engine, tmp_path_factory):
    with served(embedded_engine, tmp_path_factory.mktemp("embedded-data")) as url:
        yield url


def text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def statements(messages: list[dict]) -> list[tuple[str, str]]:
    """(stage heading, text) of each statement in one agent's column."""
    out = []
    for message in messages:
        heading, _, body = text(message).partition("\n\n")
        out.append((heading.strip("*"), body))
    return out


def table(value: dict) -> list[dict]:
    """A Dataframe output as rows of dicts."""
    return [dict(zip(value["headers"], row)) for row in value["data"]]


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


DEBATE = {"topic": "Cities should ban private cars from their centres.", "rounds": 1,
          "a_traits": ["AGR_high", "EXT_high"], "a_profession": ["Doctor"],
          "b_traits": ["AGR_low"], "b_profession": ["Programmer"], "temperature": 0.7}
STAGES = ["Opening statement", "Rebuttal 1", "Closing statement"]


# --- Debate --------------------------------------------------------------------------------------------
def test_a_debate_streams_both_transcripts_and_offers_its_files(embedded_url):
    job = client(embedded_url).submit(**DEBATE, max_new_tokens=16, seed=5, api_name="/debate")
    updates = list(job)
    a_messages, b_messages, status, files, _ = job.result()
    assert [s for s, _ in statements(a_messages)] == STAGES and [s for s, _ in statements(b_messages)] == STAGES
    assert all(text.strip() for _, text in statements(a_messages) + statements(b_messages))
    assert status.startswith("Finished: 6 statements")
    # Streaming: A's opening grew on the page in several steps before B said anything, then B's grew.
    a_opening = [len(statements(u[0])[0][1]) for u in updates if u[0] and not u[1]]
    b_opening = [len(statements(u[1])[0][1]) for u in updates if len(u[1]) == 1 and len(u[0]) == 1]
    assert len(set(a_opening)) >= 3 and a_opening == sorted(a_opening), a_opening
    assert len(set(b_opening)) >= 3 and b_opening == sorted(b_opening), b_opening
    # The files: JSON and Markdown of the same transcript, as the page showed it.
    json_path = next(f for f in files if f.endswith(".json"))
    markdown = Path(next(f for f in files if f.endswith(".md"))).read_text(encoding="utf-8")
    document = json.loads(Path(json_path).read_text(encoding="utf-8"))
    assert document["topic"] == DEBATE["topic"] and document["status"] == "finished" and document["seed"] == 5
    assert document["a"]["identities"] == ["AGR_high", "EXT_high", "Doctor"]
    assert document["b"]["identities"] == ["AGR_low", "Programmer"] and document["b"]["side"] == "against"
    assert [t["speaker"] for t in document["turns"]] == ["A", "B"] * 3
    assert [t["content"] for t in document["turns"] if t["speaker"] == "A"] == \
        [text for _, text in statements(a_messages)]
    assert markdown.startswith(f"# Debate: {DEBATE['topic']}")
    assert all(t["content"] in markdown for t in document["turns"])


def test_stop_ends_the_debate_and_keeps_what_was_said(embedded_url, embedded_engine):
    c = client(embedded_url)
    with forward_calls(embedded_engine.model) as calls:
        job = c.submit(**{**DEBATE, "rounds": 2}, max_new_tokens=200, api_name="/debate")
        deadline = time.monotonic() + 120
        while not any(o[0] and statements(o[0])[0][1] for o in job.outputs()):
            assert time.monotonic() < deadline and not job.done(), "the debate never started streaming"
            time.sleep(0.05)
        a_messages, b_messages, status, files = c.predict(api_name="/debate_stop")
        job.result(timeout=60)  # the stream ends on its own once the model thread stops
        count = assert_model_stopped(calls)
    document = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text(encoding="utf-8"))
    assert document["status"] == "stopped" and 1 <= len(document["turns"]) < 8 and count < 8 * 200
    assert document["seed"] is None  # the default 0: a random seed
    assert status.startswith(f"Stopped after {len(document['turns'])} of 8 statements")
    assert statements(a_messages)[0][0] == "Opening statement" and document["turns"][-1]["content"]
    last_column = a_messages if document["turns"][-1]["speaker"] == "A" else b_messages
    assert text(last_column[-1]).endswith("*(stopped)*")


@pytest.mark.parametrize("change, expected", [
    ({"a_traits": ["AGR_high", "AGR_low"]}, "for agent A: both poles of AGR given (AGR_high and AGR_low)"),
    ({"b_profession": ["Doctor", "Artist"]}, "for agent B: more than one profession (Doctor and Artist)"),
    ({"b_traits": ["Kindness"]}, "'Kindness'"),  # refused by the checkbox group itself
    ({"topic": "   "}, "Give the debate a topic"),
])
def test_a_bad_debate_request_is_refused_with_a_clear_error(tiny_url, tiny_engine, change, expected):
    with forward_calls(tiny_engine.model) as calls, pytest.raises(AppError) as error:
        client(tiny_url).predict(**{**DEBATE, **change}, max_new_tokens=8, api_name="/debate")
    assert expected in str(error.value)
    assert not calls, "the model ran for a refused request"


def test_a_debate_goes_to_human_evaluation_one_dialogue_per_agent(tiny_url, tiny_data_dir):
    c = client(tiny_url)
    with pytest.raises(AppError, match="Run a debate first"):
        c.predict(api_name="/debate_send_to_evaluation")
    a_messages, b_messages, *_ = c.predict(**DEBATE, max_new_tokens=8, seed=1, api_name="/debate")
    assert c.predict(api_name="/debate_send_to_evaluation").startswith("Sent to human evaluation: 2 dialogues")
    assert "already stored" in c.predict(api_name="/debate_send_to_evaluation")
    with open_store(tiny_data_dir).db.read() as session:
        stored = {tuple(d.target): (d.source, d.transcript) for d in session.scalars(select(Dialogue))}
    assert set(stored) == {("AGR_high", "EXT_high", "Doctor"), ("AGR_low", "Programmer")}
    for target, messages in ((("AGR_high", "EXT_high", "Doctor"), a_messages),
                             (("AGR_low", "Programmer"), b_messages)):
        source, transcript = stored[target]
        assert source == "app"
        replies = [t["content"] for t in transcript if t["role"] == "assistant"]
        assert replies == [body for _, body in statements(messages)]


# --- Questionnaire -------------------------------------------------------------------------------------
QUESTIONNAIRE = {"bank": "personality", "items_per_factor": 1, "identity_sets": "panel", "judge_name": "logits"}


def test_a_short_questionnaire_gives_a_chart_a_table_and_a_csv(embedded_url):
    summary, radar, scores, answers, files = client(embedded_url).predict(
        **QUESTIONNAIRE, traits=["EXT_high"], profession=[], api_name="/questionnaire")
    assert "Direction accuracy" in summary and "5 items" in summary
    assert Path(radar).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first_items = load_scale(DATA_DIR / "personality_bank.json").subset(1).items
    rows = table(answers)
    assert [(r["identities"], r["statement"], r["keyed"]) for r in rows] == \
        [(s, item.text, "+" if item.keyed > 0 else "-") for s in ("EXT_high", "(none)") for item in first_items]
    assert all(1 <= r["score"] <= 5 for r in rows)
    per_set = {r["identities"]: r for r in table(scores)}
    assert set(per_set) == {"EXT_high", "(none) (reference)"}
    assert per_set["EXT_high"]["EXT"] == pytest.approx(next(r["score"] for r in rows if r["identities"] == "EXT_high"
                                                            and r["factor"] == "EXT"), abs=1e-3)
    assert per_set["EXT_high"]["poles hit"].startswith("EXT_high ")
    answers_csv = read_csv(next(f for f in files if f.endswith("answers.csv")))
    # the page's score is the CSV's answer toward the factor's high pole
    assert [(r["identities"], r["text"], float(r["score"])) for r in answers_csv] == \
        [(r["identities"], r["statement"], pytest.approx(r["score"], abs=1e-3)) for r in rows]
    for line in answers_csv:
        answer, score = float(line["answer"]), float(line["score"])
        assert score == pytest.approx(answer if line["keyed"] == "+" else 6 - answer, abs=1e-3)
    assert any(f.endswith("result.json") for f in files)


def test_the_profession_bank_for_the_three_professions(tiny_url):
    summary, radar, scores, answers, _ = client(tiny_url).predict(
        **{**QUESTIONNAIRE, "bank": "profession", "identity_sets": "professions"}, api_name="/questionnaire")
    assert "Profession accuracy" in summary and Path(radar).exists()
    assert [r["identities"] for r in table(scores)] == ["Doctor", "Artist", "Programmer", "(none) (reference)"]
    assert len(table(answers)) == 4 * 3
    assert {r["factor"] for r in table(answers)} == {"Doctor", "Artist", "Programmer"}


@pytest.mark.parametrize("judge", ["likelihood", "statement"])
def test_the_local_judges_that_need_no_digits(tiny_url, judge):
    summary, _, _, answers, _ = client(tiny_url).predict(
        **{**QUESTIONNAIRE, "judge_name": judge}, traits=["CON_low"], profession=[], api_name="/questionnaire")
    assert f"Judge: **{judge}**" in summary
    rows = table(answers)
    assert [r["identities"] for r in rows] == ["CON_low"] * 5 + ["(none)"] * 5
    assert all(1 <= r["score"] <= 5 for r in rows)
    if judge == "statement":  # each set against the empty set: the empty set itself answers exactly 3
        assert [r["score"] for r in rows if r["identities"] == "(none)"] == [3] * 5


def test_an_uploaded_his_scale_file_is_read_as_it_is(tiny_url):
    path = his_file("profession_scale.json")
    if not path.exists():
        pytest.skip(f"the HIS release is not at {path}")
    _, _, _, answers, _ = client(tiny_url).predict(
        **{**QUESTIONNAIRE, "bank": "upload", "identity_sets": "panel"}, scale_file=handle_file(str(path)),
        profession=["Artist"], api_name="/questionnaire")
    expected = load_scale(path).subset(1).items
    assert [(r["identities"], r["factor"], r["statement"]) for r in table(answers)] == \
        [(s, item.factor, item.text) for s in ("Artist", "(none)") for item in expected]


@pytest.mark.parametrize("content, expected", [
    ('{"name": "mine", "kind": "personality", "items": [{"text": "I talk a lot.", "factor": "EXTRA", "keyed": "+"}]}',
     "my_scale.json: item 0: unknown factor 'EXTRA'; use one of AGR, CON, EXT, NEU, OPE"),
    ('{"name": "mine", "kind": "personality", "items": [', "my_scale.json: not valid JSON"),
    ('[{"question": "I like paint."}]', "my_scale.json: unknown scale format"),
    ('{"kind": "profession", "items": []}', "my_scale.json: the scale has no items"),
])
def test_a_bad_uploaded_scale_file_is_refused_naming_the_problem(tiny_url, tmp_path, content, expected):
    path = tmp_path / "my_scale.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AppError) as error:
        client(tiny_url).predict(**{**QUESTIONNAIRE, "bank": "upload"}, scale_file=handle_file(str(path)),
                                 api_name="/questionnaire")
    assert expected in str(error.value)
    assert "/tmp/" not in str(error.value)  # the visitor's file name, not the server's upload folder


def test_other_bad_questionnaire_requests_are_named(tiny_url):
    c = client(tiny_url)
    with pytest.raises(AppError, match="Upload a scale file first"):
        c.predict(**{**QUESTIONNAIRE, "bank": "upload"}, api_name="/questionnaire")
    with pytest.raises(AppError, match="both poles of NEU given"):
        c.predict(**QUESTIONNAIRE, traits=["NEU_high", "NEU_low"], api_name="/questionnaire")
    # without an endpoint the interview judge is not among the choices at all
    with pytest.raises(AppError, match=r"'interview'.*not in the list of choices: \['logits', 'likelihood', 'stat"):
        c.predict(**{**QUESTIONNAIRE, "judge_name": "interview"}, api_name="/questionnaire")


def test_the_survey_gives_each_identity_set_a_distribution(tiny_url):
    summary, charts, distributions, files = client(tiny_url).predict(
        survey_source="example", identity_sets="poles", api_name="/survey")
    survey = load_survey(DATA_DIR / "example_survey.json")
    assert len(charts) == len(survey.questions)
    assert all(Path(chart["image"]).read_bytes()[:4] == b"\x89PNG" for chart in charts)
    assert [chart["caption"].split(":")[0] for chart in charts] == [q.id for q in survey.questions]
    totals = defaultdict(float)
    for row in table(distributions):
        assert 0 <= row["probability"] <= 1
        totals[row["question"], row["identities"]] += row["probability"]
    assert len(totals) == len(survey.questions) * 11  # ten poles and the empty set
    assert all(total == pytest.approx(1, abs=1e-4) for total in totals.values())
    assert {q for q, _ in totals} == {q.id for q in survey.questions} and "four_day_week" in summary
    assert len(read_csv(files[0])) == len(table(distributions))


def test_an_uploaded_survey_is_used_and_a_bad_one_refused(tiny_url, tmp_path):
    good = tmp_path / "our_survey.json"
    good.write_text(json.dumps({"name": "Lunch", "questions": [
        {"id": "lunch", "text": "Where do you eat lunch?", "options": ["At my desk", "In a cafe", "Outside"]}]}))
    summary, charts, distributions, _ = client(tiny_url).predict(
        survey_source="upload", survey_file=handle_file(str(good)), identity_sets="panel", traits=["CON_low"],
        api_name="/survey")
    rows = table(distributions)
    assert summary.startswith("**Lunch**") and len(charts) == 1
    assert [(r["identities"], r["label"], r["option"]) for r in rows] == \
        [(s, label, option) for s in ("CON_low", "(none)") for label, option in
         zip("ABC", ["At my desk", "In a cafe", "Outside"])]
    bad = tmp_path / "bad_survey.json"
    bad.write_text(json.dumps({"questions": [{"id": "lunch", "text": "Where?", "options": ["Here"]}]}))
    with pytest.raises(AppError, match="bad_survey.json: question 0: 1 options; letters labels allow 2 to 10"):
        client(tiny_url).predict(survey_source="upload", survey_file=handle_file(str(bad)), api_name="/survey")


def test_the_interview_judge_runs_when_an_endpoint_is_configured(tiny_engine, openai_server, monkeypatch, tmp_path):
    def answer(request: dict) -> str:
        if request["messages"][0]["content"] == REFEREE_SYSTEM:
            return '{"answer": 4}'
        return "What did you do last weekend?"

    openai_server.responder = answer
    monkeypatch.setenv("HIRPF_JUDGE_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("HIRPF_JUDGE_MODEL", "referee-model")
    monkeypatch.setenv("HIRPF_JUDGE_CACHE_DIR", str(tmp_path / "cache"))
    with served(tiny_engine, tmp_path / "data") as url:
        summary, _, _, answers, _ = client(url).predict(
            **{**QUESTIONNAIRE, "judge_name": "interview"}, traits=["OPE_low"], api_name="/questionnaire")
    rows = table(answers)
    assert "Judge: **interview**" in summary and len(rows) == 2 * 5
    assert all(r["score"] == (4 if r["keyed"] == "+" else 2) for r in rows)  # every referee answered 4
    assert {r["model"] for r in openai_server.chat_requests} == {"referee-model"}
    # Per item: two follow-up questions from the interviewer and five referee samples.
    referee = [r for r in openai_server.chat_requests if r["messages"][0]["content"] == REFEREE_SYSTEM]
    assert len(referee) == 10 * 5 and len(openai_server.chat_requests) == 10 * 7

"""`python -m annotation pairs`: building a study with the tiny random model (replies through the engine's
scheduler, stored as they come, a stopped build resumed), importing pairs made elsewhere (bad files refused
with the line and field, nothing stored), report and export; on a real SQLite file."""
from __future__ import annotations

import csv
import json

import pytest
from sqlalchemy import func, select

from annotation.__main__ import main
from annotation.pair_generation import DEFAULT_SAMPLING, PairBuildJob, missing_replies, reply_counts
from annotation.pair_studies import parse_condition, plan_pairs, poles, save_study
from db import Database
from db.models import PairReply, PairStudy, StudyPair


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'pairs.sqlite3'}"


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("How do you spend a Sunday?\n\nWhat do you do when a friend is late?\n", encoding="utf-8")
    return path


def stored(url: str, model) -> int:
    database = Database(url)
    try:
        with database.read() as session:
            return session.scalar(select(func.count()).select_from(model))
    finally:
        database.close()


def test_build_generates_every_reply_through_the_cli_and_a_rerun_adds_nothing(url, prompts, tiny_base_dir, capsys):
    args = ["pairs", "build", "--database", url, "--name", "jobs", "--prompts", str(prompts), "--professions",
            "--condition", "prompt", "--lora_weights", "none", "--base_model", str(tiny_base_dir),
            "--max_new_tokens", "4"]
    assert main(args) == 0
    database = Database(url)
    assert reply_counts(database, "jobs") == (6, 6)  # 3 professions x 2 prompts, one condition
    with database.read() as session:
        assert session.scalar(select(func.count()).select_from(StudyPair)) == 12  # 6 ordered pairs x 2 prompts
        texts = dict(session.execute(select(PairReply.id, PairReply.text)).all())
    database.close()
    assert main(args) == 0
    assert stored(url, StudyPair) == 12
    database = Database(url)
    with database.read() as session:
        assert dict(session.execute(select(PairReply.id, PairReply.text)).all()) == texts
    database.close()
    assert "6 of 6 replies" in capsys.readouterr().err


def test_a_condition_with_experts_on_a_model_without_them_is_refused(url, prompts, tiny_base_dir, capsys):
    assert main(["pairs", "build", "--database", url, "--name", "x", "--prompts", str(prompts), "--poles",
                 "--condition", "experts+prompt@1.0", "--lora_weights", "none",
                 "--base_model", str(tiny_base_dir)]) == 2
    assert "'experts+prompt@1.0' uses experts" in capsys.readouterr().err
    assert stored(url, PairStudy) == 0  # refused before anything was stored
    assert main(["pairs", "build", "--database", url, "--name", "y", "--prompts", str(prompts), "--poles",
                 "--condition", "prompt", "--condition", "experts", "--lora_weights", "a", "--lora_weights", "b",
                 "--lora_weights", "c"]) == 2
    assert "one per condition (2), not 3" in capsys.readouterr().err


def test_a_stopped_build_resumes_where_it_stopped_with_the_conditions_replies(url, tiny_engine):
    database = Database(url)
    conditions = [parse_condition("experts+prompt@1.5", seed=3), parse_condition("prompt", seed=3)]
    save_study(database, "poles", plan_pairs("discrimination", poles()[:1], conditions,
                                             ["Hello there?", "Any plans?"]))
    engine_for = lambda condition: tiny_engine  # noqa: E731
    first = PairBuildJob(database, "poles", engine_for, window=1)
    first.on_progress = lambda done, total: done == 3 and first.stop()
    assert first.start().wait() == (3, 8)
    assert len(missing_replies(database, "poles")) == 5
    with database.read() as session:
        before = dict(session.execute(select(PairReply.id, PairReply.text).where(PairReply.text.is_not(None))).all())
    assert PairBuildJob(database, "poles", engine_for).start().wait() == (8, 8)
    with database.read() as session:
        replies = session.scalars(select(PairReply).order_by(PairReply.id)).all()
        assert {r.id: r.text for r in replies if r.id in before} == before
        # Each stored reply is what the scheduler gives for its condition: strength and seed applied.
        for reply in replies:
            condition = conditions[0] if reply.condition_id == 1 else conditions[1]
            expected = tiny_engine.scheduler().reply([{"role": "user", "content": reply.prompt}],
                                                     condition.identities(reply.identities),
                                                     condition.conditioning, DEFAULT_SAMPLING)
            assert reply.text == expected
    database.close()


def pair_line(**changes) -> dict:
    line = {"prompt": "How do you spend a Sunday?", "question": "Which reply shows more extraversion?",
            "expected": "a",
            "a": {"reply": "Out with friends!", "identities": "EXT_high", "condition": "experts+prompt@1.0",
                  "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "seed": 0},
            "b": {"reply": "Reading, alone.", "identities": ["EXT_low"], "condition": "experts+prompt@1.0",
                  "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "seed": 0}}
    for key, value in changes.items():
        side, _, field = key.partition("__")
        target = line[side] if field else line
        if value is None:
            target.pop(field or side)
        else:
            target[field or side] = value
    return line


def write_lines(path, lines) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
                    encoding="utf-8")


def test_import_stores_a_good_file_and_report_and_export_read_it(url, tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    write_lines(path, [pair_line(), "", pair_line(prompt="Any plans?"),
                       pair_line(a__condition="my-other-model", b__condition="my-other-model",
                                 a__base_model=None, b__base_model=None)])
    assert main(["pairs", "import", str(path), "--database", url, "--name", "elsewhere",
                 "--design", "discrimination"]) == 0
    assert stored(url, StudyPair) == 3
    assert main(["pairs", "import", str(path), "--database", url, "--name", "elsewhere",
                 "--design", "discrimination"]) == 2  # a second import under the same name
    assert "exists already" in capsys.readouterr().err
    assert main(["pairs", "report", "--database", url, "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["conditions"] == ["experts+prompt@1.0", "my-other-model"]
    assert report["replies"] == {"stored": 6, "needed": 6}
    assert main(["pairs", "report", "--database", url]) == 0
    assert "study elsewhere (discrimination): 3 pairs" in capsys.readouterr().out
    assert main(["pairs", "report", "--database", url, "--chart", str(tmp_path / "c.png")]) == 2
    assert "give --study" in capsys.readouterr().err
    assert main(["pairs", "report", "--database", url, "--study", "elsewhere", "--chart",
                 str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    out = tmp_path / "answers.csv"
    assert main(["pairs", "export", "--database", url, "--format", "csv", "--output", str(out)]) == 0
    assert list(csv.DictReader(out.open(encoding="utf-8"))) == []  # nobody answered yet


@pytest.mark.parametrize("bad, message", [
    ("{not json", "line 3: not JSON"),
    (pair_line(a__reply=None), "line 3: a.reply: required"),
    (pair_line(b__reply=""), "line 3: b.reply: required"),
    (pair_line(expected=None), "line 3: expected: a discrimination pair needs"),
    (pair_line(b__identities="EXT_high"), "line 3: b.identities: a discrimination pair needs two different"),
    (pair_line(a__identities="EXT_sideways"), "line 3: a.identities:"),
    (pair_line(b__condition="prompt"), "line 3: b.condition: a discrimination pair shows one condition"),
    (pair_line(a__condition="experts@7", b__condition="experts@7"), "line 3: a.condition: condition 'experts@7'"),
    (pair_line(a__seed="zero"), "line 3: a.seed: expected a whole number"),
    (pair_line(a__base_model="another/model"), "line 3: a: condition 'experts+prompt@1.0' with"),
    (pair_line(colour="red"), "line 3: colour: unknown field"),
    (pair_line(a__prompt="x"), "line 3: a.prompt: unknown field"),
    (pair_line(question="Which?\x00"), "line 3: question: contains a NUL character"),
    (pair_line(question="W" * 501), "line 3: question: 501 characters, the limit is 500"),
    ([1, 2], "line 3: expected a JSON object"),
])
def test_a_bad_file_is_refused_naming_line_and_field_and_nothing_is_stored(url, tmp_path, capsys, bad, message):
    path = tmp_path / "bad.jsonl"
    write_lines(path, [pair_line(), pair_line(prompt="Any plans?"), bad])
    assert main(["pairs", "import", str(path), "--database", url, "--name", "bad",
                 "--design", "discrimination"]) == 2
    assert message in capsys.readouterr().err
    assert stored(url, PairStudy) == 0 and stored(url, PairReply) == 0


def test_preference_files_need_one_identity_set_under_two_conditions(url, tmp_path, capsys):
    path = tmp_path / "preference.jsonl"
    line = pair_line(expected=None, b__identities="EXT_high", b__condition="prompt", b__base_model=None)
    write_lines(path, [line])
    assert main(["pairs", "import", str(path), "--database", url, "--name", "p", "--design", "preference"]) == 0
    write_lines(path, [pair_line(expected=None, b__condition="prompt")])
    assert main(["pairs", "import", str(path), "--database", url, "--name", "q", "--design", "preference"]) == 2
    assert "line 1: b.identities: a preference pair shows one identity set" in capsys.readouterr().err

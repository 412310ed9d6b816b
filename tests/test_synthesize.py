"""Data synthesis end to end against the local chat-completions server (a scripted writer model)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hirpf.dialogues import load_dialogues
from training.synthesize import KINDS, entries_for_kinds, expand, main

from openai_server import Reply

ROOT = Path(__file__).resolve().parent.parent
PLAN = {"entries": [{"identities": ["AGR_high"], "count": 2},
                    {"identities": ["EXT_low", "CON_high"]},
                    {"identities": ["NEU_high", "Doctor"], "turns": 2, "scene": "a ferry crossing in a storm"}]}
JOBS = 4


def writer(request: dict, named: str | None = None) -> str:
    """A well-behaved writer model: follows the prompt's stage and turn count; lines depend on the prompt,
    so each job gets its own dialogue. `named` puts a word into the character's first line."""
    prompt = request["messages"][-1]["content"]
    tag = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    if '"other_speaker"' in prompt:
        return json.dumps({"other_speaker": "a fellow passenger", "plot": f"They talk and part as friends ({tag})."})
    turns = int(re.search(r"Exactly (\d+) turns", prompt).group(1))
    lines = [{"speaker": "other" if k % 2 == 0 else "character", "text": f"line {k} ({tag})"} for k in range(turns)]
    if named:
        lines[1]["text"] += f" I am {named}."
    return "```json\n" + json.dumps({"turns": lines}) + "\n```"


@pytest.fixture
def plan_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(PLAN))
    return path


def synthesize(server, output, plan_file, *extra) -> dict:
    return main(["--base_url", server.base_url, "--model", "writer-1", "--output", str(output), "--plan",
                 str(plan_file), "--turns", "3", "--outside_share", "1", *extra])


def records(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_kinds_cover_singles_trait_pairs_and_trait_professions():
    sizes = {kind: len(entries_for_kinds([kind], 1)) for kind in KINDS}
    assert sizes == {"single": 13, "trait_pairs": 40, "trait_profession": 30, "trait_triples": 80,
                     "pair_profession": 120}
    kinds = ["single", "trait_pairs", "trait_profession"]
    jobs = expand(entries_for_kinds(kinds, 2), turns=4, outside_share=0.25, seed=3)
    assert len({job.id for job in jobs}) == 2 * 83
    assert jobs == expand(entries_for_kinds(kinds, 2), turns=4, outside_share=0.25, seed=3)  # stable
    outside = [job for job in jobs if job.outside_topic]
    assert outside and all(job.identities.profession for job in outside)


def test_full_small_run(openai_server, plan_file, tmp_path):
    openai_server.responder = writer
    output = tmp_path / "out.jsonl"
    summary = synthesize(openai_server, output, plan_file, "--concurrency", "2")
    assert (summary["written"], summary["failed"], summary["skipped"], summary["stopped"]) == (JOBS, 0, 0, None)
    assert summary["requests"] == 2 * JOBS  # a plot and a dialogue per job
    assert json.loads((tmp_path / "out.jsonl.summary.json").read_text())["written"] == JOBS

    dialogues, report = load_dialogues(output)  # the training loader reads it as is
    assert report.kept == JOBS and not report.skipped
    by_set = sorted((str(d.identities), len(d.turns)) for d in dialogues)
    assert by_set == [("AGR_high", 6), ("AGR_high", 6), ("CON_high,EXT_low", 6), ("NEU_high,Doctor", 4)]
    for d in dialogues:
        assert [t["role"] for t in d.turns] == ["user", "assistant"] * (len(d.turns) // 2)  # the other opens

    doctor = next(r for r in records(output) if "Doctor" in r["active_adapters"])
    assert doctor["synthesis"]["scene"] == "a ferry crossing in a storm"
    assert doctor["synthesis"]["outside_topic"]  # --outside_share 1: outside the profession
    # stage (b) is written from stage (a): the dialogue prompt carries the plot and the outside question
    dialogue_prompt = next(r["messages"][-1]["content"] for r in openai_server.chat_requests
                           if doctor["synthesis"]["plot"] in r["messages"][-1]["content"])
    assert doctor["synthesis"]["outside_topic"] in dialogue_prompt and "admits not knowing" in dialogue_prompt
    assert '"a doctor"' in dialogue_prompt  # the labels it must not use
    assert all("outside_topic" not in r["synthesis"] or r["synthesis"]["outside_topic"] is None
               for r in records(output) if "Doctor" not in r["active_adapters"])


def test_bad_replies_retried_then_counted_as_failed(openai_server, plan_file, tmp_path):
    first_extravert_dialogue = []

    def respond(request):
        prompt = request["messages"][-1]["content"]
        if "warm and considerate" in prompt and '"turns"' in prompt:  # AGR_high: always names its trait
            return writer(request, named="high agreeableness")
        if "reserved and quiet" in prompt and '"turns"' in prompt and not first_extravert_dialogue:
            first_extravert_dialogue.append(1)  # EXT_low: one reply with the roles swapped, then good
            return json.dumps({"turns": [{"speaker": "character", "text": "hi"}, {"speaker": "other", "text": "yo"}]})
        if "tense and easily upset" in prompt and '"other_speaker"' in prompt:  # NEU_high: prose, no JSON
            return "Here is a plan: they meet on a ferry."
        return writer(request)

    openai_server.responder = respond
    output = tmp_path / "out.jsonl"
    summary = synthesize(openai_server, output, plan_file, "--attempts", "3")
    assert summary["written"] == 1 and summary["failed"] == 3
    assert summary["failed_by_reason"] == {"dialogue: identity named": 2, "plot: reply is not a JSON object": 1}
    assert [r["active_adapters"] for r in records(output)] == [["CON_high", "EXT_low"]]
    failure = next(f for f in summary["failures"] if f["job"].startswith("AGR_high/0"))
    assert len(failure["raw_replies"]) == 3 and "high agreeableness" in failure["raw_replies"][0]
    # AGR_high x2: plot + 3 dialogue attempts each; EXT_low: plot + 2; NEU_high: 3 plot attempts
    assert summary["requests"] == 2 * 4 + 3 + 3


def test_429s_are_backed_off(openai_server, plan_file, tmp_path):
    openai_server.responder = writer
    openai_server.script(*[Reply.rate_limited(retry_after=0)] * 3)
    summary = synthesize(openai_server, tmp_path / "out.jsonl", plan_file, "--concurrency", "2")
    assert summary["written"] == JOBS and summary["failed"] == 0
    assert summary["retries_by_reason"] == {"HTTP 429": 3} and summary["requests"] == 2 * JOBS + 3


def test_resume_after_a_killed_run_writes_only_the_missing(openai_server, plan_file, tmp_path):
    finished = []

    def stall_after_two(request):  # the endpoint hangs after two dialogues: the run is killed there
        text = writer(request)
        if '"turns"' in request["messages"][-1]["content"]:
            finished.append(1)
            if len(finished) > 2:
                return Reply(content=text, delay=60)
        return text

    openai_server.responder = stall_after_two
    output = tmp_path / "out.jsonl"
    cmd = [sys.executable, str(ROOT / "training" / "synthesize.py"), "--base_url", openai_server.base_url,
           "--model", "writer-1", "--output", str(output), "--plan", str(plan_file), "--turns", "3",
           "--concurrency", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OPENAI_API_KEY": ""})
    try:
        deadline = time.time() + 120
        while len(finished) <= 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(finished) > 2, "the run never reached the stalled request"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(records(output)) == 2  # both finished records survived the kill
    with open(output, "a") as f:
        f.write('{"dialog": [{"role": "us')  # and a line cut short by a crash mid-write is not a record

    openai_server.responder = writer
    before = len(openai_server.requests)
    summary = synthesize(openai_server, output, plan_file)
    assert (summary["skipped"], summary["written"]) == (2, JOBS - 2)
    assert len(openai_server.requests) - before == 2 * (JOBS - 2)  # only the missing jobs were asked for
    jobs = [r["synthesis"]["job"] for r in records(output)]
    assert len(jobs) == len(set(jobs)) == JOBS
    assert load_dialogues(output)[1].kept == JOBS


def test_endpoint_failing_for_good_stops_the_run_and_a_rerun_completes_it(openai_server, plan_file, tmp_path):
    answered = []

    def fail_after_three(request):
        answered.append(1)
        return writer(request) if len(answered) <= 3 else Reply.error(503, "down for maintenance")

    openai_server.responder = fail_after_three
    output = tmp_path / "out.jsonl"
    summary = synthesize(openai_server, output, plan_file, "--concurrency", "1", "--max_retries", "1")
    assert summary["written"] == 1 and "503" in summary["stopped"] and summary["not_started"] == JOBS - 1
    openai_server.responder = writer
    summary = synthesize(openai_server, output, plan_file, "--concurrency", "1")
    assert (summary["skipped"], summary["written"], summary["stopped"]) == (1, JOBS - 1, None)


def test_concurrency_gives_the_same_records(openai_server, plan_file, tmp_path):
    openai_server.responder = writer
    synthesize(openai_server, tmp_path / "one.jsonl", plan_file, "--concurrency", "1")
    synthesize(openai_server, tmp_path / "four.jsonl", plan_file, "--concurrency", "4")
    one, four = (sorted(Path(tmp_path / name).read_text().splitlines()) for name in ("one.jsonl", "four.jsonl"))
    assert one == four and len(one) == JOBS


def test_bad_plan_is_named(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"entries": [{"identities": ["AGR_high"]}, {"identities": ["AGR_high", "AGR_low"]}]}))
    with pytest.raises(SystemExit, match=r"plan .*plan.json entry 1: .*AGR_low"):
        main(["--model", "m", "--output", str(tmp_path / "o.jsonl"), "--plan", str(plan)])
    assert not (tmp_path / "o.jsonl").exists()

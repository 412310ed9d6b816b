"""Field replies (`training/field_replies.py`): our openers, the messages they answer, the plan, the resampling
of a bad reply, and the records and command of a run on the tiny random Llama."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from hirpf.base_model import load_base_model
from hirpf.dialogues import holdout_split, load_dialogues
from hirpf.eval.everyday_prompts import HeldOutPromptError, load_prompts, training_prompts
from hirpf.identities import PROFESSIONS, IdentitySet, trait_of
from hirpf.sampling import Sampling
from training import field_replies
from training.field_replies import FieldJob, everyday_messages, load_bank, plan, write_batch

from training_runs import write_data


def test_the_shipped_bank_covers_every_profession_and_its_openers_name_no_identity():
    bank = load_bank()
    assert set(bank.openers) == set(bank.briefs) == set(PROFESSIONS) and bank.version >= 1
    assert all(len(set(texts)) == len(texts) >= 20 for texts in bank.openers.values())


BRIEFS = {"Doctor": "Talk health.", "Artist": "Talk art.", "Programmer": "Talk code."}


@pytest.mark.parametrize("professions, briefs, complaint", [
    ({"Pilot": ["Up in the clouds,"]}, BRIEFS, "unknown profession 'Pilot'"),
    ({"Doctor": ["After my shift,"], "Artist": ["In the studio,"]}, BRIEFS, "no openers or no brief for Programmer"),
    ({"Doctor": ["After my shift,"], "Artist": ["In the studio,"], "Programmer": ["After a commit,"]},
     {"Doctor": "Talk health."}, "no openers or no brief for Artist"),
    ({"Doctor": ["After my shift,"], "Artist": ["In the studio,"], "Programmer": ["As a programmer,"]}, BRIEFS,
     "names an identity"),
])
def test_a_bad_bank_is_refused_with_what_is_wrong(tmp_path, professions, briefs, complaint):
    path = tmp_path / "openers.json"
    path.write_text(json.dumps({"version": 1, "briefs": briefs, "professions": professions}))
    with pytest.raises(ValueError, match=complaint):
        load_bank(path)


def test_messages_are_dev_prompts_and_training_split_openings_without_a_profession(tmp_path):
    data = write_data(tmp_path / "data.json", n=40)
    messages = everyday_messages(str(data), 0.25, 42)
    assert messages["everyday"] == training_prompts()
    dialogues, _ = load_dialogues(data)
    train, held_out = holdout_split(dialogues, 0.25, 42)
    no_field = {d.turns[0]["content"] for d in train if not d.identities.profession}
    assert set(messages["his"]) == no_field and no_field  # ("Coming to the party? (i)", trait-only)
    assert not set(messages["his"]) & {d.turns[0]["content"] for d in held_out}
    # a held-out everyday prompt in the data is refused, not answered
    records = json.loads(data.read_text())
    for record in records:
        if record["active_adapters"] == ["EXT_low"]:
            record["dialog"][0]["content"] = load_prompts("held_out")[0].text
    data.write_text(json.dumps(records))
    with pytest.raises(HeldOutPromptError):
        everyday_messages(str(data), 0.25, 42)


def test_the_plan_turns_the_professions_and_varies_the_sets():
    openers = load_bank().openers
    messages = {"everyday": ["How was your day?", "Any plans?"], "his": ["Hey, got a minute?"]}
    jobs = plan(300, 3, messages, openers)
    assert jobs == plan(300, 3, messages, openers) and jobs != plan(300, 4, messages, openers)
    assert Counter(j.identities.profession for j in jobs) == {p: 100 for p in PROFESSIONS}
    sizes = Counter(len(j.identities) for j in jobs)
    assert set(sizes) == {1, 2, 3} and sizes[1] > sizes[2] > sizes[3]
    for job in jobs:
        IdentitySet.parse(",".join(job.identities.names))  # within the identity rules
        assert len({trait_of(p) for p in job.identities.traits}) == len(job.identities.traits)
        assert job.opener in openers[job.identities.profession]
        assert job.message in messages[job.source]
    assert Counter(j.source for j in jobs) == {"everyday": 150, "his": 150}
    assert len({j.id for j in jobs}) == 300


def test_own_beginnings_take_their_share_and_leave_the_other_jobs_as_they_were():
    openers = load_bank().openers
    messages = {"everyday": ["How was your day?", "Any plans?"], "his": ["Hey, got a minute?"]}
    mixed, ours = plan(300, 3, messages, openers, 0.5), plan(300, 3, messages, openers)
    own = [job for job in mixed if job.opener is None]
    assert len(own) == 150 and all(job.id.endswith("/own") and job.opener_source == "own" for job in own)
    assert {job.own_words for job in own} == {2, 3, 4, 5}
    for job, before in zip(mixed, ours):  # the same sets and messages; only the opener's source differs
        assert (job.identities, job.message, job.source) == (before.identities, before.message, before.source)
        if job.opener is not None:
            assert job == before and job.opener_source == "bank"
    assert all(job.opener is None for job in plan(30, 3, messages, openers, 1.0))


@pytest.mark.parametrize("text, words, expected", [
    ("I'm not sure what to say. I think so.", 4, "I'm not sure what"),
    ("I'm not sure. I think so.", 5, "I'm not sure."),
    ("Oh, really? That's nice.", 4, "Oh, really?"),
    ("Sure", 3, "Sure"),
    ("", 3, ""),
])
def test_a_beginning_is_the_first_words_up_to_the_first_sentence_end(text, words, expected):
    assert field_replies.beginning(text, words) == expected


class Scripted:
    """A stand-in for the amplified sampler: per call, the texts it writes after the opener, in order."""

    def __init__(self, tokenizer, *calls):
        self.tokenizer, self.calls, self.seen = tokenizer, list(calls), []

    def __call__(self, model, tokenizer, prompts, sampling, generators, neutral=None, gamma=0.0):
        self.seen.append((prompts, neutral, gamma, sampling))
        texts = self.calls.pop(0)
        return [(tokenizer(" " + t, add_special_tokens=False)["input_ids"], True) for t in texts]


def test_a_reply_that_names_an_identity_or_adds_too_little_is_resampled_then_left_out(tiny_base_dir, monkeypatch):
    _, tokenizer = load_base_model(str(tiny_base_dir), load_in_8bit=False, dtype="float32")
    job = FieldJob("Programmer/0/seed0", IdentitySet.parse("Programmer"), "Any plans?", "everyday",
                   "After a day of writing code,")
    other = FieldJob("AGR_high+Doctor/1/seed0", IdentitySet.parse("AGR_high,Doctor"), "Any plans?", "everyday",
                     "Clinically speaking,")
    scripted = Scripted(tokenizer, ["as a programmer I rest.", "rest."], ["I go for a long walk by the river.", "so."])
    monkeypatch.setattr(field_replies, "sample_replies", scripted)
    done, failed = write_batch([job, other], None, tokenizer, Sampling(max_new_tokens=8), 1.5, 2, 0, BRIEFS)
    assert done == [(job, "After a day of writing code, I go for a long walk by the river.", 1)]
    assert failed == {"too short": 1}
    prompts, neutral, gamma, _ = scripted.seen[0]
    assert gamma == 1.5 and len(prompts) == len(neutral) == 2
    for rows, system in ((prompts, "You are a programmer."), (prompts, "Talk code."),
                         (neutral, field_replies.NEUTRAL_SYSTEM_MESSAGE)):
        text = tokenizer.decode(rows[0])
        assert system in text and text.endswith("assistant\nAfter a day of writing code,")
    assert "programmer" not in tokenizer.decode(neutral[0]).lower() and "Talk" not in tokenizer.decode(neutral[0])


def test_an_own_beginning_is_the_models_greedy_reply_under_the_neutral_prompt(tiny_base_dir, monkeypatch):
    _, tokenizer = load_base_model(str(tiny_base_dir), load_in_8bit=False, dtype="float32")
    job = FieldJob("Doctor/0/seed0/own", IdentitySet.parse("Doctor"), "Any plans?", "everyday", None, 3)
    scripted = Scripted(tokenizer, ["I'm not sure what to do."], ["I might rest after my shift on the ward."])
    monkeypatch.setattr(field_replies, "sample_replies", scripted)
    done, failed = write_batch([job], None, tokenizer, Sampling(max_new_tokens=8), 1.0, 2, 0, BRIEFS)
    (written, reply, _), = done
    assert written.opener == "I'm not sure" and reply == "I'm not sure I might rest after my shift on the ward."
    prompts, neutral, gamma, sampling = scripted.seen[0]  # the greedy beginning: neutral prompt, no brief
    assert neutral is None and not sampling.do_sample and sampling.repetition_penalty == 1.1
    assert field_replies.NEUTRAL_SYSTEM_MESSAGE in tokenizer.decode(prompts[0])
    assert "Talk health." not in tokenizer.decode(prompts[0]) and tokenizer.decode(prompts[0]).endswith("assistant\n")
    prompts, neutral, gamma, sampling = scripted.seen[1]  # then the amplified reply after it, under the brief
    assert tokenizer.decode(prompts[0]).endswith("assistant\nI'm not sure") and "Talk health." in tokenizer.decode(
        prompts[0])
    assert sampling.do_sample and gamma == 1.0


def test_a_run_writes_records_that_train_and_a_command_that_remakes_them(tmp_path, tiny_base_dir):
    data = write_data(tmp_path / "data.json", n=20)
    out = tmp_path / "field.jsonl"
    argv = ["--out", str(out), "--records", "6", "--seed", "2", "--max_new_tokens", "12", "--batch_size", "4",
            "--own_beginnings", "0.5", "--data", str(data), "--base_model", str(tiny_base_dir)]
    summary = field_replies.main(argv)
    dialogues, report = load_dialogues(out)
    assert summary["written"] == len(dialogues) and summary["written"] + summary["failed"] == summary["jobs"] == 6
    openers = load_bank().openers
    for line, dialogue in zip(out.read_text().splitlines(), dialogues):
        synthesis = json.loads(line)["synthesis"]
        assert dialogue.turns[1]["content"].startswith(synthesis["opener"])
        assert (synthesis["opener"] in openers[dialogue.identities.profession]) == (
            synthesis["opener_source"] == "bank")
        assert synthesis["backend"] == "field-opener" and synthesis["gamma"] == 1.0
    # the summary's command remakes the file exactly; a rerun skips what is written
    command = json.loads((tmp_path / "field.jsonl.summary.json").read_text())["command"].split()
    assert command[:2] == ["python", "training/field_replies.py"] and "--records" in command
    field_replies.main([a.replace(str(out), str(tmp_path / "again.jsonl")) for a in command[2:]])
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()
    assert field_replies.main(argv)["skipped"] == summary["written"]


@pytest.mark.parametrize("flag, value", [("--records", "0"), ("--batch_size", "0"), ("--gamma", "-1"),
                                         ("--own_beginnings", "1.5")])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, flag, value, capsys):
    with pytest.raises(SystemExit):
        field_replies.main(["--out", str(tmp_path / "x.jsonl"), flag, value])
    assert flag in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()

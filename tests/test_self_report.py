"""Self-report training records (training/self_report.py): answers that follow the set, questions only about
the set's identities, statements that are not the evaluation banks' items, and records the trainer reads."""
import json
import random
import re

import pytest

from hirpf.dialogues import load_dialogues
from hirpf.identities import IdentitySet, trait_of
from hirpf.labels import scale_option
from hirpf.scales import default_scale
from training import self_report
from training.self_report import Statement, answer_option, load_statements, records

STATEMENTS = {s.text: s for s in load_statements()}


def _asked(question: str) -> Statement:
    return STATEMENTS[re.search(r'"(.+)"', question).group(1)]


@pytest.mark.parametrize("names,statement,agrees", [
    (("AGR_high",), Statement("x", "AGR", "+"), True),
    (("AGR_high",), Statement("x", "AGR", "-"), False),
    (("AGR_low", "Doctor"), Statement("x", "AGR", "+"), False),
    (("AGR_low", "Doctor"), Statement("x", "AGR", "-"), True),
    (("NEU_high", "Doctor"), Statement("x", "Doctor", None), True),
    (("NEU_high", "Doctor"), Statement("x", "Artist", None), False),
])
def test_answer_follows_the_set(names, statement, agrees):
    answers = {answer_option(IdentitySet(names), statement, random.Random(i)) for i in range(50)}
    assert answers == ({4, 5} if agrees else {1, 2})


def test_records_ask_only_about_the_sets_identities_and_answer_accordingly():
    made = records(300, seed=3)
    assert len({json.dumps(r) for r in made}) == 300 and made == records(300, seed=3)
    sizes = {len(r["active_adapters"]) for r in made}
    assert sizes == {1, 2, 3}
    for record in made:
        identities = IdentitySet(record["active_adapters"])
        turns = record["dialog"]
        for question, reply in zip(turns[::2], turns[1::2]):
            statement = _asked(question["content"])
            if statement.keyed is None:
                assert identities.profession
            else:
                assert statement.subject in {trait_of(p) for p in identities.traits}
            option = scale_option(reply["content"])
            pole_or_field = (statement.subject == identities.profession if statement.keyed is None else
                             f"{statement.subject}_high" in identities.names) == (statement.keyed != "-")
            assert (option >= 4) == pole_or_field, (identities, statement, option)


def test_every_identity_is_taught_both_ways():
    seen = set()
    for record in records(480, seed=0):
        identities = IdentitySet(record["active_adapters"])
        for question, reply in zip(record["dialog"][::2], record["dialog"][1::2]):
            statement = _asked(question["content"])
            member = (identities.profession if statement.keyed is None else
                      next(p for p in identities.traits if trait_of(p) == statement.subject))
            seen.add((member, scale_option(reply["content"]) >= 4))
    assert len(seen) == 26  # 13 identities, each answering accurate and inaccurate


def _words(text: str) -> set[str]:
    stop = {"i", "a", "the", "to", "of", "and", "my", "me", "in", "am", "is", "it", "when", "with", "for", "do",
            "not", "be", "or", "that", "at", "on", "what", "how", "than", "them", "their", "can", "have"}
    return {w for w in re.findall(r"[a-z']+", text.lower()) if w not in stop}


def test_no_training_statement_is_a_bank_item():
    """The banks measure how far the experts generalise from these statements, so none may be one of theirs
    or nearly one (at most half the content words shared)."""
    bank = [i.text for kind in ("personality", "profession") for i in default_scale(kind).items]
    for text in STATEMENTS:
        words = _words(text)
        for item in bank:
            other = _words(item)
            assert len(words & other) / len(words | other) <= 0.5, (text, item)


def test_records_load_as_training_dialogues_with_their_provenance(tmp_path):
    out = self_report.main(["--out", str(tmp_path / "sr.jsonl"), "--records", "40", "--seed", "1"])
    dialogues, report = load_dialogues(out)
    assert len(dialogues) == 40 and "none skipped" in report.describe()
    first = json.loads(out.read_text().splitlines()[0])
    assert first["synthesis"] == {"backend": "self_report", "job": "self_report-1-0", "seed": 1,
                                       "statements": "self_report_statements.json", "version": 1}


def test_bad_input_names_what_is_wrong(tmp_path):
    with pytest.raises(SystemExit, match="--records must be >= 1"):
        self_report.main(["--out", str(tmp_path / "x.jsonl"), "--records", "0"])
    assert not (tmp_path / "x.jsonl").exists()
    bad = tmp_path / "statements.json"
    bad.write_text(json.dumps({"traits": {"HUM": {"+": ["I laugh."]}}, "professions": {}}))
    with pytest.raises(ValueError, match="unknown trait 'HUM'"):
        load_statements(bad)
    bad.write_text(json.dumps({"traits": {"AGR": {"~": ["I laugh."]}}, "professions": {}}))
    with pytest.raises(ValueError, match="keyed '~'"):
        load_statements(bad)
    bad.write_text(json.dumps({"traits": {}, "professions": {"Pilot": ["I fly."]}}))
    with pytest.raises(ValueError, match="unknown profession 'Pilot'"):
        load_statements(bad)

"""Self-report training records (training/self_report.py): answers that follow the set, questions only about
the set's identities, statements that are not the evaluation banks' items, and records the trainer reads."""
import json
import random
import re

import pytest

from hirpf.dialogues import load_dialogues
from hirpf.eval.statement_likelihood import STATEMENT_REQUESTS
from hirpf.identities import IdentitySet, trait_of
from hirpf.labels import scale_option
from hirpf.scales import default_scale
from training import self_report
from training.self_report import SELF_DESCRIPTION_REQUESTS, Statement, agrees, answer_option, load_statements, records

STATEMENTS = {s.text: s for s in load_statements()}
RATINGS = tuple(self_report.RATING_FORMATS)


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
    made = records(300, seed=3, formats=RATINGS)
    assert len({json.dumps(r) for r in made}) == 300 and made == records(300, seed=3, formats=RATINGS)
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
    for record in records(480, seed=0, formats=RATINGS):
        identities = IdentitySet(record["active_adapters"])
        for question, reply in zip(record["dialog"][::2], record["dialog"][1::2]):
            statement = _asked(question["content"])
            member = (identities.profession if statement.keyed is None else
                      next(p for p in identities.traits if trait_of(p) == statement.subject))
            seen.add((member, scale_option(reply["content"]) >= 4))
    assert len(seen) == 26  # 13 identities, each answering accurate and inaccurate


def test_self_descriptions_say_a_statement_toward_every_identity_of_the_set():
    made = records(300, seed=5, formats=("self_description",), max_identities=4)
    assert {r["synthesis"]["format"] for r in made} == {"self_description"}
    assert {len(r["active_adapters"]) for r in made} == {1, 2, 3, 4}
    for record in made:
        identities = IdentitySet(record["active_adapters"])
        request, reply = record["dialog"]
        assert request["content"] in SELF_DESCRIPTION_REQUESTS
        said = [STATEMENTS[t] for t in _said(reply["content"])]
        assert all(agrees(identities, s) for s in said), (identities, reply)
        covered = {identities.profession if s.keyed is None else next(
            p for p in identities.traits if trait_of(p) == s.subject) for s in said}
        assert covered == set(identities.names), (identities, reply)
        assert len(said) == len(set(t.text for t in said)) and len(said) <= max(3, len(identities.names))


def _said(reply: str) -> list[str]:
    """A reply's statements, told apart by matching the statement file (a statement may hold a comma)."""
    found, rest = [], reply
    while rest:
        text = next(t for t in sorted(STATEMENTS, key=len, reverse=True) if rest.startswith(t))
        found.append(text)
        rest = rest[len(text):].lstrip()
    return found


def test_formats_mix_in_one_file_and_an_unknown_one_is_refused():
    assert {r["synthesis"]["format"] for r in records(200, seed=2)} == set(self_report.FORMATS)
    with pytest.raises(ValueError, match="--formats must name one or more of .*got poem"):
        records(5, seed=0, formats=("poem",))
    with pytest.raises(ValueError, match="got none"):
        records(5, seed=0, formats=())


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


def test_self_description_requests_are_not_the_statement_judges():
    """The statement judge asks its own requests; training on them would teach the measurement's wording (the
    same rule as for the statements: at most half the content words shared)."""
    for request in SELF_DESCRIPTION_REQUESTS:
        for judged in STATEMENT_REQUESTS:
            words, other = _words(request), _words(judged)
            assert len(words & other) / len(words | other) <= 0.5, (request, judged)


def test_records_load_as_training_dialogues_with_their_provenance(tmp_path):
    out = self_report.main(["--out", str(tmp_path / "sr.jsonl"), "--records", "40", "--seed", "1"])
    dialogues, report = load_dialogues(out)
    assert len(dialogues) == 40 and "none skipped" in report.describe()
    first = json.loads(out.read_text().splitlines()[0])
    assert first["synthesis"] == {"backend": "self_report", "job": "self_report-1-0", "seed": 1,
                                  "format": first["synthesis"]["format"], "statements": "self_report_statements.json",
                                  "version": 2}
    assert first["synthesis"]["format"] in self_report.FORMATS
    # the summary's command remakes the file exactly (a model card quotes it)
    command = json.loads((tmp_path / "sr.jsonl.summary.json").read_text())["command"].split()
    assert command[:2] == ["python", "training/self_report.py"]
    again = self_report.main([a.replace(str(out), str(tmp_path / "again.jsonl")) for a in command[2:]])
    assert again.read_text() == out.read_text()


def test_bad_input_names_what_is_wrong(tmp_path):
    with pytest.raises(SystemExit, match="--records must be >= 1"):
        self_report.main(["--out", str(tmp_path / "x.jsonl"), "--records", "0"])
    with pytest.raises(SystemExit, match="--formats must name"):
        self_report.main(["--out", str(tmp_path / "x.jsonl"), "--formats", "digit,haiku"])
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

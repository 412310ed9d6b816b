"""Questionnaires and surveys: scale formats (ours and HIS, with its Neuroticism quirk), scoring, next-token
answers (batched == one by one == a plain forward without the shared-prefix cache), the interview judge
against a local chat-completions server, and one short CLI run of `scale`, `profession` and `survey` on the
embedded model with the shipped experts."""
from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch

from hirpf.eval.common import EvalError, add_identity_arguments, choose_identity_sets, identity_sets_from_args
from hirpf.identities import IdentitySet
from hirpf.paths import his_file
from hirpf.prompts import Conditioning, expert_identities
from hirpf.routing import use_identities
from hirpf.scales import DEFAULT_SCALES, Scale, ScaleError, ScaleItem, default_scale, load_scale

from openai_server import OpenAIServer

S = IdentitySet.parse


def write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --- scale files -------------------------------------------------------------------------------------------
def test_shipped_banks_have_twenty_items_per_factor_with_balanced_keying():
    personality = default_scale("personality")
    assert personality.factors == ("AGR", "CON", "EXT", "NEU", "OPE")
    for factor in personality.factors:
        keys = [i.keyed for i in personality.items if i.factor == factor]
        assert len(keys) == 20 and keys.count(1) == 10 and keys.count(-1) == 10
    profession = default_scale("profession")
    assert profession.factors == ("Doctor", "Artist", "Programmer")
    assert all(sum(i.factor == p for i in profession.items) == 20 for p in profession.factors)
    texts = [i.text for i in personality.items + profession.items]
    assert len(set(texts)) == len(texts)


def test_native_scale_round_trips(tmp_path):
    scale = load_scale(DEFAULT_SCALES["personality"])
    again = load_scale(write(tmp_path / "copy.json", scale.to_native()))
    assert again == scale


def test_reverse_keyed_items_score_six_minus_the_answer():
    assert ScaleItem("I like parties.", "EXT", 1).score(4.0) == 4.0
    assert ScaleItem("I avoid parties.", "EXT", -1).score(4.0) == 2.0
    assert ScaleItem("I avoid parties.", "EXT", -1).score(1.0) == 5.0


def test_his_personality_format_and_its_neuroticism_quirk(tmp_path):
    # Our own sentences in the HIS field layout: HIS "Neuroticism" is keyed toward emotional stability.
    his = [{"factor": "Extraversion", "polarity": "pos", "content": "I chat with everyone."},
           {"factor": "Extraversion", "polarity": "neg", "content": "I keep to myself."},
           {"factor": "Neuroticism", "polarity": "pos", "content": "I stay relaxed under stress."},
           {"factor": "Neuroticism", "polarity": "neg", "content": "I fret about everything."},
           {"factor": "Agreeableness", "polarity": "pos", "content": "I am kind."}]
    scale = load_scale(write(tmp_path / "his_bigfive.json", his))
    assert scale.kind == "personality"
    assert [(i.factor, i.keyed) for i in scale.items] == [("EXT", 1), ("EXT", -1), ("NEU", -1), ("NEU", 1),
                                                           ("AGR", 1)]
    calm = scale.items[2]
    # Fully agreeing with the calm item is evidence for NEU_low: it scores 1 on neuroticism.
    assert calm.score(5.0) == 1.0


def test_his_profession_scale_is_read_from_the_shared_release():
    path = his_file("profession_scale.json")
    if not path.is_file():
        pytest.skip(f"HIS release not found at {path}")
    scale = load_scale(path, "profession")
    assert scale.kind == "profession" and len(scale.items) == 60
    assert scale.factors == ("Doctor", "Artist", "Programmer")
    assert all(i.keyed == 1 and i.text for i in scale.items)


@pytest.mark.parametrize("data, message", [
    ({"kind": "personality", "items": [{"text": "a", "factor": "EXT", "keyed": "+"},
                                       {"text": "b", "factor": "EXT", "keyed": "x"}]}, "item 1: 'keyed'"),
    ({"kind": "personality", "items": [{"text": "a", "factor": "Extraversion", "keyed": "+"}]},
     "item 0: unknown factor 'Extraversion'"),
    ({"kind": "profession", "items": [{"text": "a", "profession": "Doctor"}, {"text": "", "profession": "Artist"}]},
     "item 1: 'text'"),
    ([{"question": "q", "profession": "Doctor"}, {"question": "q", "profession": "Chef"}],
     "item 1: unknown profession 'Chef'"),
    ([{"factor": "Extraversion", "polarity": "pos", "content": "x"},
      {"factor": "Extraversion", "polarity": "maybe", "content": "y"}], "item 1: 'polarity'"),
    ({"kind": "quiz", "items": []}, "'kind'"),
    ([{"text": "x"}], "unknown scale format"),
])
def test_scale_errors_name_the_file_and_the_item(tmp_path, data, message):
    path = write(tmp_path / "bad_scale.json", data)
    with pytest.raises(ScaleError) as err:
        load_scale(path)
    assert "bad_scale.json" in str(err.value) and message in str(err.value)


def test_a_scale_of_the_wrong_kind_is_refused(tmp_path):
    with pytest.raises(ScaleError, match="a profession scale, but a personality scale"):
        load_scale(DEFAULT_SCALES["profession"], "personality")


# --- scoring ---------------------------------------------------------------------------------------------
def constructed(scale: Scale, answers_by_set: dict[str, dict[str, float]]):
    """Answers where each set gives one fixed raw answer per (factor, keying) - no model involved."""
    from hirpf.eval.answers import Answer

    out = []
    for name, table in answers_by_set.items():
        for index, item in enumerate(scale.items):
            raw = table[f"{item.factor}{'+' if item.keyed > 0 else '-'}"]
            out.append(Answer(S(name) if name != "none" else IdentitySet(), index, item, raw))
    return out


def test_factor_scores_and_direction_accuracy_on_constructed_answers():
    from hirpf.eval.questionnaire import direction_accuracy, factor_scores

    scale = Scale("t", "personality", (ScaleItem("a", "EXT", 1), ScaleItem("b", "EXT", -1),
                                        ScaleItem("c", "AGR", 1), ScaleItem("d", "AGR", -1)))
    answers = constructed(scale, {
        "none": {"EXT+": 3, "EXT-": 3, "AGR+": 2, "AGR-": 4},  # reference: EXT 3.0, AGR 2.0
        "EXT_high": {"EXT+": 5, "EXT-": 2, "AGR+": 2, "AGR-": 4},  # EXT (5 + 4) / 2 = 4.5: hit
        "AGR_high": {"EXT+": 3, "EXT-": 3, "AGR+": 3, "AGR-": 3},  # AGR 3.0: above reference, not midpoint
        "EXT_low,AGR_low": {"EXT+": 1, "EXT-": 4, "AGR+": 2, "AGR-": 4},  # EXT 1.5 hit; AGR 2.0 = ref: miss
    })
    scores = factor_scores(answers)
    assert scores[S("EXT_high")] == {"EXT": 4.5, "AGR": 2.0}
    assert scores[S("EXT_low,AGR_low")]["EXT"] == 1.5
    per_set, accuracy = direction_accuracy(scores)
    hits = {(e["identities"], p["pole"]): p["hit"] for e in per_set for p in e["poles"]}
    assert hits == {("EXT_high", "EXT_high"): True, ("AGR_high", "AGR_high"): False,
                    ("AGR_low,EXT_low", "AGR_low"): False, ("AGR_low,EXT_low", "EXT_low"): True}
    assert accuracy == 0.5


def test_direction_accuracy_needs_the_reference():
    from hirpf.eval.questionnaire import direction_accuracy

    with pytest.raises(EvalError, match="reference"):
        direction_accuracy({S("EXT_high"): {"EXT": 4.0}})


def test_failed_answers_are_left_out_of_the_scores():
    from hirpf.eval.answers import Answer
    from hirpf.eval.questionnaire import factor_scores

    item = ScaleItem("a", "EXT", 1)
    scores = factor_scores([Answer(S("EXT_high"), 0, item, 4.0), Answer(S("EXT_high"), 1, item, None)])
    assert scores[S("EXT_high")]["EXT"] == 4.0


def test_profession_accuracy_compares_own_field_with_the_others():
    from hirpf.eval.questionnaire import factor_scores, profession_accuracy

    scale = Scale("p", "profession",
                  (ScaleItem("a", "Doctor"), ScaleItem("b", "Artist"), ScaleItem("c", "Programmer")))
    answers = constructed(scale, {
        "none": {"Doctor+": 2, "Artist+": 2, "Programmer+": 2},
        "Doctor": {"Doctor+": 5, "Artist+": 2, "Programmer+": 3},  # own 5 > other 2.5
        "Artist": {"Doctor+": 4, "Artist+": 3, "Programmer+": 2},  # own 3 = other 3: miss
    })
    per_set, accuracy = profession_accuracy(factor_scores(answers))
    by_set = {e["identities"]: e for e in per_set}
    assert by_set["Doctor"]["own_field"] == 5.0 and by_set["Doctor"]["other_field"] == 2.5 and by_set["Doctor"]["hit"]
    assert by_set["Artist"]["hit"] is False and by_set["Artist"]["reference_own_field"] == 2.0
    assert "hit" not in by_set["(none)"]
    assert accuracy == 0.5


# --- identity options -------------------------------------------------------------------------------------
def parse_identity_options(argv):
    parser = argparse.ArgumentParser()
    add_identity_arguments(parser)
    args = parser.parse_args(argv)
    args.seed = 0
    return args


def test_identity_options(tmp_path):
    assert identity_sets_from_args(parse_identity_options(["--identities", "AGR_high,Doctor", "none"])) == [
        S("AGR_high,Doctor"), IdentitySet()]
    poles = identity_sets_from_args(parse_identity_options(["--poles"]))
    assert len(poles) == 11 and poles[-1] == IdentitySet()
    assert len(identity_sets_from_args(parse_identity_options(["--combinations", "all"]))) == 971
    sample = identity_sets_from_args(parse_identity_options(["--combinations", "all", "--sample", "7"]))
    assert len(sample) == 7 and sample == identity_sets_from_args(
        parse_identity_options(["--combinations", "all", "--sample", "7"]))
    assert identity_sets_from_args(parse_identity_options(["--sample", "7"])) == sample  # alone: of all 971
    with pytest.raises(EvalError, match="choose identity sets with --identities, --poles, --combinations or --sample"):
        identity_sets_from_args(parse_identity_options([]))
    listed = tmp_path / "sets.txt"
    listed.write_text("# two sets\nEXT_high,Artist\n\nNEU_low  # calm\n")
    assert identity_sets_from_args(parse_identity_options(["--combinations", str(listed)])) == [
        S("EXT_high,Artist"), S("NEU_low")]
    as_json = write(tmp_path / "sets.json", [["EXT_high", "Artist"], "OPE_low"])
    assert identity_sets_from_args(parse_identity_options(["--combinations", str(as_json)]),
                                   reference=True) == [S("EXT_high,Artist"), S("OPE_low"), IdentitySet()]
    listed.write_text("EXT_high\nEXT_high,EXT_low\n")
    with pytest.raises(EvalError, match="sets.txt: line 2: both poles of EXT"):
        identity_sets_from_args(parse_identity_options(["--combinations", str(listed)]))
    with pytest.raises(EvalError, match="unknown identity 'Chef'"):
        identity_sets_from_args(parse_identity_options(["--identities", "Chef"]))



def test_choose_identity_sets_is_the_plain_function_behind_the_options():
    """The app and the CLI choose identity sets through one function with explicit parameters."""
    assert choose_identity_sets(poles=True) == identity_sets_from_args(parse_identity_options(["--poles"]))
    assert choose_identity_sets(identities=["AGR_high,Doctor", ["EXT_low"], "none"], reference=True) == [
        S("AGR_high,Doctor"), S("EXT_low"), IdentitySet()]
    assert choose_identity_sets(sample=5, seed=3) == choose_identity_sets(combinations="all", sample=5, seed=3)
    assert choose_identity_sets(sample=5, seed=3) != choose_identity_sets(sample=5, seed=4)
    # the app's call
    assert identity_sets_from_args(argparse.Namespace(poles=True)) == choose_identity_sets(poles=True)
    with pytest.raises(EvalError, match="one way, not with identities and poles"):
        choose_identity_sets(identities=["AGR_high"], poles=True)
    with pytest.raises(EvalError, match="--sample must be at least 1"):
        choose_identity_sets(poles=True, sample=0)

# --- next-token answers -----------------------------------------------------------------------------------
def plain_forward_probabilities(engine, conversation, identities, conditioning, labels):
    """The reference: the whole prompt in one unbatched, uncached forward pass."""
    from hirpf.eval.choices import option_token_ids

    messages = engine.chat_messages(conversation, identities, conditioning)
    text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([engine.tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad(), use_identities([expert_identities(identities, conditioning)]):
        logits = engine.model(input_ids=ids).logits[0, -1].float()
    chosen = torch.log_softmax(logits, -1)[option_token_ids(engine.tokenizer, labels)].double()
    return torch.softmax(chosen, -1), chosen.exp().sum()


def test_batched_answers_equal_one_by_one_and_a_plain_forward(tiny_engine):
    from hirpf.eval.choices import LIKERT_LABELS, choice_probabilities
    from hirpf.eval.digit_logits import likert_question

    statements = ["I like parties.", "I keep my desk tidy and my calendar full of plans.", "I worry.",
                  "I am at ease with strangers at a long dinner with many courses."]
    sets = [S("EXT_high"), S("NEU_low,Doctor"), IdentitySet(), S("AGR_low,CON_high,EXT_low,NEU_high,OPE_low,Artist")]
    conversations, rows = [], []
    for s in sets:
        for t in statements:
            conversations.append([{"role": "user", "content": likert_question(t)}])
            rows.append(s)
    for conditioning in Conditioning:
        batched, batched_mass = choice_probabilities(tiny_engine, conversations, rows, conditioning, LIKERT_LABELS, 5)
        one_by_one = torch.cat([choice_probabilities(tiny_engine, [c], [s], conditioning, LIKERT_LABELS, 1)[0]
                                for c, s in zip(conversations, rows)])
        plain = [plain_forward_probabilities(tiny_engine, c, s, conditioning, LIKERT_LABELS)
                 for c, s in zip(conversations, rows)]
        torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched, torch.stack([p for p, _ in plain]), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched_mass, torch.stack([m for _, m in plain]), atol=1e-6, rtol=1e-4)
        assert torch.allclose(batched.sum(-1), torch.ones(len(rows), dtype=torch.float64))
    # The experts do act: the same item under two identity sets gets different answers.
    assert not torch.allclose(batched[0], batched[len(statements)])


def test_labels_must_be_single_tokens(tiny_engine):
    from hirpf.eval.choices import option_token_ids

    assert len(option_token_ids(tiny_engine.tokenizer, ["1", "2", "A"])) == 3
    with pytest.raises(EvalError, match="'Yes please'"):
        option_token_ids(tiny_engine.tokenizer, ["1", "Yes please"])


def test_answer_by_logits_gives_expected_values_per_set_and_item(tiny_engine):
    from hirpf.eval.digit_logits import answer_by_logits

    scale = default_scale("personality").subset(1)
    answers = answer_by_logits(tiny_engine, scale, [S("EXT_high"), IdentitySet()], Conditioning.EXPERTS_AND_PROMPT)
    assert len(answers) == 2 * len(scale.items)
    for a in answers:
        probabilities = [a.detail[f"p{k}"] for k in range(1, 6)]
        assert abs(sum(probabilities) - 1) < 1e-4
        assert abs(a.answer - sum(k * p for k, p in enumerate(probabilities, 1))) < 1e-3
        assert a.score == (a.answer if a.item.keyed > 0 else 6 - a.answer)


# --- surveys -----------------------------------------------------------------------------------------------
def test_example_survey_loads_and_bad_surveys_are_named(tmp_path):
    from hirpf.eval.survey import load_survey
    from hirpf.scales import DATA_DIR

    survey = load_survey(DATA_DIR / "example_survey.json")
    likert = survey.questions[0]
    assert likert.labels == ("1", "2", "3", "4", "5") and likert.ordered
    assert survey.questions[1].labels == ("A", "B", "C", "D") and not survey.questions[1].ordered
    bad = write(tmp_path / "survey.json", {"questions": [{"text": "Q?", "options": ["a", "b"]},
                                                         {"text": "Q2?", "options": ["only one"]}]})
    with pytest.raises(EvalError, match="survey.json: question 1: 1 options"):
        load_survey(bad)
    write(bad, {"questions": [{"text": "Q?", "options": ["a", "b"], "labels": "emoji"}]})
    with pytest.raises(EvalError, match="question 0: 'labels'"):
        load_survey(bad)


def test_survey_distributions_sum_to_one_per_set(tiny_engine):
    from hirpf.eval.survey import load_survey, survey_distributions
    from hirpf.scales import DATA_DIR

    survey = load_survey(DATA_DIR / "example_survey.json")
    sets = [S("EXT_high"), S("EXT_low"), IdentitySet()]
    results = survey_distributions(tiny_engine, survey, sets, Conditioning.EXPERTS_AND_PROMPT)
    for question in survey.questions:
        probabilities, masses = results[question.id]
        assert len(probabilities) == 3 and all(len(p) == len(question.options) for p in probabilities)
        assert all(abs(sum(p) - 1) < 1e-6 for p in probabilities) and all(0 < m <= 1 for m in masses)


# --- the interview judge -------------------------------------------------------------------------------------
def test_majority_vote_and_its_tie_break():
    from hirpf.eval.interview import majority

    assert majority([4, 4, 2, 5, 4]) == 4
    assert majority([1, 1, 5, 5, 3]) == 1  # median 3: both tied options are as near; the lower wins
    assert majority([2, 2, 5, 5, 4]) == 5  # median 4: of the tied options 5 is nearer
    assert majority([]) is None


def test_interview_judge_against_a_local_server(tiny_engine, tmp_path):
    from hirpf.eval.interview import REFEREE_SYSTEM, InterviewJudge
    from hirpf.llm_client import ChatClient

    seen = {"interviewer": [], "referee": []}

    def responder(request):
        system = request["messages"][0]["content"]
        if system == REFEREE_SYSTEM:
            seen["referee"].append(request)
            text = request["messages"][1]["content"]
            if "tidy" in text:  # this item's referee never answers properly: failures, not a guess
                return "I think they are fairly tidy."
            if request["seed"] % 10_000 == 1:  # sample 1 of each item stays malformed in every attempt
                return '{"answer": "four"}'
            return '```json\n{"answer": 4}\n```' if request["seed"] % 2 else '{"answer": 4}'
        seen["interviewer"].append(request)
        return "What did you do last weekend?"

    with OpenAIServer(responder) as server:
        interviewer = ChatClient(server.base_url, "interviewer-model", cache_dir=tmp_path / "cache")
        referee = ChatClient(server.base_url, "referee-model", cache_dir=tmp_path / "cache")
        judge = InterviewJudge(interviewer, referee, follow_ups=2, samples=5, max_new_tokens=6, workers=2)
        scale = Scale("t", "personality", (ScaleItem("I like parties.", "EXT", 1),
                                            ScaleItem("I keep things tidy.", "CON", -1)))
        answers = judge.answer(tiny_engine, scale, [S("EXT_high")], Conditioning.EXPERTS_AND_PROMPT, batch_size=2)

    parties, tidy = answers
    assert parties.answer == 4.0 and parties.detail["votes"] == [4] * 4 and parties.detail["referee_failures"] == 1
    assert tidy.answer is None and tidy.detail["referee_failures"] == 5 and tidy.score is None
    # The agent answered three times (the question and two follow-ups) in each transcript.
    transcript = parties.detail["transcript"]
    assert [t["role"] for t in transcript] == ["user", "assistant"] * 3
    assert transcript[2]["content"] == "What did you do last weekend?"
    # The interviewer sees the transcript reversed: its questions are the assistant's turns.
    assert len(seen["interviewer"]) == 2 * 2
    last = max(seen["interviewer"], key=lambda r: len(r["messages"]))
    assert [m["role"] for m in last["messages"]] == ["system", "assistant", "user", "assistant", "user"]
    assert any(t in last["messages"][0]["content"] for t in ("I like parties.", "I keep things tidy."))
    # The referee reads the anonymized transcript: X (interviewer) and Y (agent), no identity prompt.
    body = seen["referee"][0]["messages"][1]["content"]
    assert "\nX: " in body and "\nY: " in body and "speaker Y" in body
    assert "extraversion" not in body.lower() and "EXT_high" not in body


def test_interview_reruns_are_answered_from_the_cache(tiny_engine, tmp_path):
    from hirpf.eval.interview import InterviewJudge
    from hirpf.llm_client import ChatClient

    def responder(request):
        return '{"answer": 5}' if "JSON" in request["messages"][0]["content"] else "Why?"

    scale = Scale("t", "personality", (ScaleItem("I like parties.", "EXT", 1),))
    results = []
    with OpenAIServer(responder) as server:
        for _ in range(2):
            client = ChatClient(server.base_url, "m", cache_dir=tmp_path / "cache")
            judge = InterviewJudge(client, client, follow_ups=1, samples=3, max_new_tokens=4, seed=3)
            results.append(judge.answer(tiny_engine, scale, [S("EXT_high")], Conditioning.EXPERTS_AND_PROMPT))
        requests_after_two_runs = len(server.chat_requests)
    assert results[0][0].answer == results[1][0].answer == 5.0
    assert results[0][0].detail["transcript"] == results[1][0].detail["transcript"]
    assert requests_after_two_runs == 1 + 3  # one follow-up and three referee samples, all in the first run


# --- the CLI on the embedded model with the shipped experts ------------------------------------------------------
def run_cli(capsys, argv):
    from hirpf.eval.__main__ import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command, extra", [
    ("scale", ["--identities", "EXT_high", "NEU_low,Doctor", "--items_per_factor", "2"]),
    ("profession", ["--items_per_factor", "2"]),
    ("survey", ["--questions", "hirpf/data/example_survey.json", "--identities", "EXT_high", "EXT_low"]),
])
def test_cli_end_to_end_on_the_embedded_model(capsys, tmp_path, command, extra):
    code, out, err = run_cli(capsys, [command, *extra, "--json", "--output_dir", str(tmp_path)])
    assert code == 0, err
    document = json.loads(out)  # exactly one JSON document on stdout
    assert document["config"]["experts"] and document["config"]["conditioning"] == "experts+prompt"
    if command == "survey":
        assert [q["id"] for q in document["questions"]] == ["four_day_week", "city_budget", "night_out"]
        assert (tmp_path / "survey.csv").is_file() and (tmp_path / "survey-city_budget.png").stat().st_size > 1000
        return
    assert "accuracy" in document and (document["accuracy"] is None or 0 <= document["accuracy"] <= 1)
    with open(tmp_path / "answers.csv") as f:
        rows = list(csv.DictReader(f))
    sets = 3 if command == "scale" else 4  # the chosen sets plus the empty reference
    assert len(rows) == sets * (10 if command == "scale" else 6)
    assert (tmp_path / "radar.png").stat().st_size > 1000
    assert json.loads((tmp_path / "result.json").read_text())["accuracy"] == document["accuracy"]
    if command == "profession":
        assert {e["identities"] for e in document["identity_sets"] if "hit" in e} == {"Doctor", "Artist", "Programmer"}


def test_cli_interview_judge_on_a_tiny_base_against_a_local_server(capsys, tmp_path, tiny_base_dir):
    def responder(request):
        return '{"answer": 2}' if "JSON" in request["messages"][0]["content"] else "How so?"

    with OpenAIServer(responder) as server:
        code, out, err = run_cli(capsys, [
            "scale", "--judge", "interview", "--judge_base_url", server.base_url, "--judge_model", "referee",
            "--follow_ups", "1", "--referee_samples", "3", "--max_new_tokens", "4", "--items_per_factor", "1",
            "--identities", "EXT_low", "--base_model", str(tiny_base_dir), "--lora_weights", "none",
            "--judge_cache_dir", str(tmp_path / "cache"), "--json", "--output_dir", str(tmp_path / "run")])
        requests = server.chat_requests
    assert code == 0, err
    document = json.loads(out)
    assert document["judge"] == "interview" and document["failed_answers"] == 0
    assert document["config"]["conditioning"] == "prompt"  # no experts: the prompt carries the identities
    # Every answer is 2 and the first item of each factor is keyed +: EXT_low scores 2, below the midpoint
    # but equal to the reference (the empty set), so the pole is a miss.
    scores = {e["identities"]: e["scores"] for e in document["identity_sets"]}
    assert scores["EXT_low"]["EXT"] == scores["(none)"]["EXT"] == 2.0 and document["accuracy"] == 0.0
    assert len(requests) == 2 * 5 * (1 + 3)  # 2 sets x 5 items x (one follow-up + three referee samples)
    transcripts = json.loads((tmp_path / "run" / "transcripts.json").read_text())
    assert len(transcripts) == 10 and all(len(t["transcript"]) == 4 for t in transcripts)


def test_cli_errors_name_the_problem(capsys, tmp_path):
    bad = write(tmp_path / "broken_scale.json", {"kind": "personality", "items": [{"text": "x", "factor": "EXT"}]})
    code, out, err = run_cli(capsys, ["scale", "--scale_file", str(bad), "--json"])
    assert code == 2 and out == "" and "broken_scale.json: item 0: 'keyed'" in err
    code, out, err = run_cli(capsys, ["survey", "--questions", str(tmp_path / "missing.json"), "--poles"])
    assert code == 2 and "missing.json" in err


def test_every_judge_answers_through_one_registry(tiny_engine):
    """`questionnaire_judges.answer` is the one dispatch the CLI, the app and evaluate_experts use: a local
    judge's answers equal its own function's; an unknown judge, or the interview judge with no endpoint, is
    refused naming the problem."""
    from hirpf.eval.digit_logits import answer_by_logits
    from hirpf.eval.option_likelihood import answer_by_likelihood
    from hirpf.eval.questionnaire_judges import JUDGE_NAMES, LOCAL_JUDGES, answer, local_judge
    from hirpf.eval.statement_likelihood import answer_by_statement

    scale = default_scale("personality").subset(1)
    sets = [IdentitySet.parse("AGR_low"), IdentitySet()]
    judges = {"logits": answer_by_logits, "likelihood": answer_by_likelihood, "statement": answer_by_statement}
    assert {name: local_judge(name) for name in LOCAL_JUDGES} == judges
    for name, judge in judges.items():
        via_registry = answer(name, tiny_engine, scale, sets, Conditioning.EXPERTS_AND_PROMPT, 4)
        direct = judge(tiny_engine, scale, sets, Conditioning.EXPERTS_AND_PROMPT, 4)
        assert [a.answer for a in via_registry] == pytest.approx([a.answer for a in direct])
    assert set(JUDGE_NAMES) == {*LOCAL_JUDGES, "interview"}
    with pytest.raises(EvalError, match="unknown judge 'oracle'"):
        answer("oracle", tiny_engine, scale, sets, Conditioning.EXPERTS_AND_PROMPT)
    with pytest.raises(EvalError, match="endpoint"):
        answer("interview", tiny_engine, scale, sets, Conditioning.EXPERTS_AND_PROMPT)

"""`python -m hirpf.eval discriminate`: our prompts and their held-out guard, the composed sets, the likelihood
judge (against plain forwards, on a tiny random Llama with random experts), the endpoint judge (against the
local fake OpenAI-compatible server), the command end to end, and the judge on the embedded model."""
from __future__ import annotations

import json
import re

import pytest
import torch

from hirpf.dialogues import load_dialogues
from hirpf.eval.common import EvalError
from hirpf.eval.discriminate import accuracy, companions, discriminate, pole_pairs, profession_items
from hirpf.eval.discrimination_judges import EndpointJudge, LikelihoodJudge, ReaderJudge, pair_credit
from hirpf.eval.everyday_prompts import HeldOutPromptError, load_prompts, refuse_held_out, training_prompts
from hirpf.eval.intervals import wilson_interval
from hirpf.eval.pair_question import PairJudge
from hirpf.eval.profession_reader import ProfessionReader, cross_validate, read_files
from hirpf.eval.reply_judge import POLE_DESCRIPTIONS, Evidence, label_scores, pole_margins, profession_scores
from hirpf.identities import PROFESSIONS, TRAITS, IdentitySet
from hirpf.llm_client import ChatClient
from hirpf.prompts import Conditioning
from hirpf.routing import use_identities

from openai_server import Reply

# --- the prompts and the held-out guard --------------------------------------------------------------


def test_a_third_of_the_prompts_is_held_out_by_the_stated_rule():
    prompts = load_prompts()
    assert len(prompts) == 48 and len({p.text for p in prompts}) == 48
    held_out = load_prompts("held_out")
    assert len(held_out) == 16 and {p.topic for p in held_out} == {p.topic for p in prompts}
    for topic in {p.topic for p in prompts}:
        assert [p.split for p in prompts if p.topic == topic] == ["dev", "dev", "held_out"]


def test_prompts_never_name_a_trait_or_a_profession():
    words = re.compile(r"\b(agreeabl|conscientious|extravert|extrovert|introvert|neurotic|openness|personality|"
                       r"doctor|physician|artist|painter|programmer|developer|software)", re.I)
    assert [p.text for p in load_prompts() if words.search(p.text)] == []


def test_training_code_cannot_pick_a_held_out_prompt():
    held_out = load_prompts("held_out")
    assert not {p.text for p in held_out} & set(training_prompts())
    refuse_held_out(training_prompts())  # the dev prompts pass
    with pytest.raises(HeldOutPromptError, match=held_out[3].id):
        refuse_held_out(["a prompt of my own", "  " + held_out[3].text.upper() + " "])


def test_a_prompts_file_that_breaks_the_split_rule_is_refused(tmp_path):
    path = tmp_path / "prompts.json"
    entries = [{"id": f"t-{i}", "topic": "t", "text": f"Question {i}?", "split": "dev"} for i in (1, 2, 3)]
    path.write_text(json.dumps({"prompts": entries}))
    with pytest.raises(EvalError, match="t-3"):
        load_prompts(path=path)
    with pytest.raises(EvalError, match="unknown prompt split"):
        load_prompts("test")


# --- the composed sets -------------------------------------------------------------------------------


def test_pole_pairs_differ_in_one_pole_and_vary_their_other_identities():
    prompts = load_prompts("held_out")
    pairs = pole_pairs(prompts)
    assert pairs == pole_pairs(prompts)  # deterministic
    assert len(pairs) == 3 * len(prompts) and {p.k for p in pairs} == {1, 2, 3}
    for pair in pairs:
        assert set(pair.high.names) ^ set(pair.low.names) == {f"{pair.trait}_high", f"{pair.trait}_low"}
        assert len(pair.high) == len(pair.low) == pair.k
    assert {p.trait for p in pairs} == set(TRAITS)
    others = {frozenset(p.high.names) - {f"{p.trait}_high"} for p in pairs if p.k == 2}
    assert len(others) >= 6 and any(o & set(PROFESSIONS) for o in others) and any(o - set(PROFESSIONS) for o in others)
    assert len(pole_pairs(prompts, all_labels=True)) == 5 * 3 * len(prompts)


def test_profession_items_hold_their_profession_and_k_minus_one_poles():
    prompts = load_prompts("held_out")
    items = profession_items(prompts)
    assert {i.profession for i in items} == set(PROFESSIONS) and len(items) == 3 * len(prompts)
    for item in items:
        assert item.identities.profession == item.profession and len(item.identities.traits) == item.k - 1
    assert companions("x", 2, TRAITS, False) == companions("x", 2, TRAITS, False)


def test_credit_and_accuracy_with_its_wilson_interval():
    assert (pair_credit(1.0, 0.5), pair_credit(0.5, 1.0), pair_credit(0.2, 0.2)) == (1.0, 0.0, 0.5)
    figure = accuracy([1, 1, 0.5, 0], 0.5)
    assert figure["accuracy"] == 0.625 and figure["n"] == 4
    assert figure["interval"] == pytest.approx(list(wilson_interval(2.5, 4)), abs=1e-4)


# --- the likelihood judge ----------------------------------------------------------------------------


def plain_reply_log_likelihood(engine, system: str, history, reply: str) -> tuple[float, int]:
    """One unpadded, uncached forward of the base model (every expert off)."""
    tokenizer = engine.tokenizer
    text = tokenizer.apply_chat_template([{"role": "system", "content": system}, *history], tokenize=False,
                                         add_generation_prompt=True)
    prompt = tokenizer.encode(text, add_special_tokens=False)
    ids = tokenizer.encode(reply, add_special_tokens=False)
    with torch.no_grad(), use_identities([IdentitySet()]):
        logits = engine.model(input_ids=torch.tensor([prompt + ids])).logits[0].float()
    picked = torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(-1, torch.tensor(ids)[:, None])
    return float(picked.sum()), len(ids)


EVIDENCE = [Evidence.reply("How was your weekend?", "Quiet. I stayed in and read."),
            Evidence.reply("Any plans for Friday?", "A big party with everyone I know, obviously!"),
            Evidence((((({"role": "user", "content": "Hi there."},), "Oh. Hello."),
                       (({"role": "user", "content": "Coming along?"},), "I would rather not, thanks."))))]


def test_label_scores_equal_plain_forwards_of_the_base_model(tiny_engine):
    descriptions = {"EXT_high": POLE_DESCRIPTIONS["EXT_high"], "EXT_low": POLE_DESCRIPTIONS["EXT_low"]}
    scores = label_scores(tiny_engine, EVIDENCE, [("EXT_high", "EXT_low")] * 3, descriptions, batch_size=2)
    for evidence, got in zip(EVIDENCE, scores):
        for label, texts in descriptions.items():
            per_text = []
            for text in texts:  # the pieces' sums over their tokens, per description, then the mean of those
                sums = [plain_reply_log_likelihood(tiny_engine, text, h, r) for h, r in evidence.pieces]
                per_text.append(sum(s for s, _ in sums) / sum(n for _, n in sums))
            assert got[label] == pytest.approx(sum(per_text) / len(per_text), abs=1e-4)
    margins = pole_margins(tiny_engine, EVIDENCE, ["EXT"] * 3, batch_size=16)
    assert margins == pytest.approx([s["EXT_high"] - s["EXT_low"] for s in scores], abs=1e-4)


def test_likelihood_judge_decides_pairs_by_margin_and_professions_by_the_largest_score(tiny_engine):
    judge = LikelihoodJudge(tiny_engine, batch_size=4)
    margins = judge.margins(EVIDENCE[:2], ["NEU", "NEU"])
    expected = pair_credit(margins[0], margins[1])
    assert judge.pole_outcomes([(EVIDENCE[0], EVIDENCE[1], "NEU")]) == [expected]
    assert judge.pole_outcomes([(EVIDENCE[1], EVIDENCE[0], "NEU")]) == [1 - expected]
    scores = profession_scores(tiny_engine, EVIDENCE[:1])[0]
    named = max(scores, key=scores.get)
    assert judge.profession_outcomes([(EVIDENCE[0], p) for p in PROFESSIONS]) == [float(p == named)
                                                                                  for p in PROFESSIONS]


def test_discriminate_on_the_tiny_model_reports_every_measure_k_and_condition(tiny_engine):
    prompts = load_prompts("dev")[:2]
    modes = list(Conditioning)
    result = discriminate(tiny_engine, LikelihoodJudge(tiny_engine, 16), prompts, modes, max_new_tokens=4,
                          batch_rows=7)
    cells = {(f["measure"], f["k"], f["condition"]): f for f in result["figures"]}
    assert len(cells) == 2 * 5 * 3
    for (measure, k, _), figure in cells.items():
        assert figure["n"] == {"composed": 4, "all": 6}.get(k, 2) and 0 <= figure["accuracy"] <= 1
        assert figure["chance"] == (0.5 if measure == "pole_discrimination" else round(1 / 3, 4))
        assert figure["level"] == ("trait" if measure == "pole_discrimination" else "profession")
    assert result["replies_generated"] == 2 * 3 * (2 + 1) * 3  # prompts, k, (pair + profession set), modes
    pole = next(o for o in result["outcomes"] if o["measure"] == "pole_discrimination" and o["k"] == 3)
    assert isinstance(pole["reply_high"], str) and len(IdentitySet.parse(pole["high"])) == 3


# --- the endpoint judge ------------------------------------------------------------------------------


def shown(request: dict) -> str:
    return request["messages"][-1]["content"]


def knows(request: dict) -> str:
    """A judge that reads the marks our test replies carry: HIGH / LOW, or the profession's name."""
    text = shown(request)
    if "Reply A:" in text:
        first = text.split("Reply A:")[1].split("Reply B:")[0]
        return json.dumps({"answer": "A" if "HIGH" in first else "B"})
    return json.dumps({"answer": next(p for p in PROFESSIONS if p.lower() in text.split("Question:")[0].lower())})


def endpoint_judge(server) -> EndpointJudge:
    return EndpointJudge(PairJudge(ChatClient(server.base_url, "fake-model", max_retries=0), "fake", workers=2))


def test_endpoint_judge_asks_both_orders_and_credits_half_for_a_judge_that_follows_position(openai_server):
    pairs = [(Evidence.reply("How are you?", "HIGH: lovely, thanks!"), Evidence.reply("How are you?", "LOW: meh."),
              trait) for trait in ("AGR", "NEU")]
    openai_server.responder = knows
    judge = endpoint_judge(openai_server)
    assert judge.pole_outcomes(pairs) == [1.0, 1.0] and judge.failed == 0
    orders = [shown(r).split("Reply A:")[1].strip()[:4] for r in openai_server.chat_requests]
    assert sorted(orders) == ["HIGH", "HIGH", "LOW:", "LOW:"]
    assert all("How are you?" in shown(r) for r in openai_server.chat_requests)
    openai_server.responder = lambda request: json.dumps({"answer": "A"})
    assert endpoint_judge(openai_server).pole_outcomes(pairs) == [0.5, 0.5]


def test_endpoint_judge_names_professions_in_both_option_orders_and_counts_failures(openai_server):
    items = [(Evidence.reply("Busy day?", f"Yes, very, as every {p.lower()} knows."), p) for p in PROFESSIONS]
    openai_server.responder = knows
    judge = endpoint_judge(openai_server)
    assert judge.profession_outcomes(items) == [1.0, 1.0, 1.0]
    option_lines = [shown(r).split("Question:")[1] for r in openai_server.chat_requests]
    assert sum("Doctor, Artist, Programmer" in line for line in option_lines) == 3
    assert sum("Programmer, Artist, Doctor" in line for line in option_lines) == 3
    openai_server.responder = lambda request: Reply(content="I could not say.")
    judge = endpoint_judge(openai_server)
    assert judge.profession_outcomes(items[:1]) == [0.0] and judge.failed == 1


# --- the profession reader ---------------------------------------------------------------------------
WORK_DAYS = {  # ours: two days of each profession, and one with none
    "Doctor": ("Two patients came in with fever; I ordered blood tests and adjusted a prescription.",
               "The ward was full, so I saw patients until late and wrote their prescriptions."),
    "Artist": ("I painted in the studio all morning; the canvas for the exhibition is nearly done.",
               "Mixed new colours and sketched the gallery wall for the exhibition."),
    "Programmer": ("The build failed, so I spent hours debugging a race in our code before the release.",
                   "Reviewed two pull requests and fixed a bug in the parser code."),
    None: ("Nothing special, I went for a walk.",),
}


def known_file(tmp_path, days=WORK_DAYS):
    """Dialogues of our own whose professions are known (and one without a profession)."""
    dialogues = [{"active_adapters": ["NEU_low"] + ([profession] if profession else []),
                  "dialog": [{"role": "user", "content": "How was work?"}, {"role": "assistant", "content": day}]}
                 for profession, texts in days.items() for day in texts]
    path = tmp_path / "known-work.json"
    path.write_text(json.dumps(dialogues))
    return path


def test_profession_reader_names_a_profession_from_the_words_it_read(tmp_path):
    reader = ProfessionReader.learn(load_dialogues(known_file(tmp_path))[0])
    assert reader.name("My patients needed new prescriptions.") == "Doctor"
    assert reader.name("Back in the studio with a fresh canvas.") == "Artist"
    assert reader.name("Another bug in the build.") == "Programmer"
    assert reader.name("Zebras!") is None  # no word it read: it names none
    scores = reader.scores("patients and code")
    assert set(scores) == set(PROFESSIONS) and all(v < 0 for v in scores.values())


def test_profession_reader_refuses_material_without_every_profession(tmp_path):
    days = {k: v for k, v in WORK_DAYS.items() if k != "Artist"}
    with pytest.raises(EvalError, match="none for Artist"):
        ProfessionReader.learn(load_dialogues(known_file(tmp_path, days))[0])


def test_reader_cross_validation_reads_each_dialogue_with_a_reader_that_never_read_it(tmp_path):
    # four days a profession, each day's twin in the other fold (folds go round-robin in order)
    days = {p: texts + tuple(f"Again: {t}" for t in reversed(texts)) for p, texts in WORK_DAYS.items()}
    dialogues = load_dialogues(known_file(tmp_path, days))[0]
    read: list[str] = []

    def text(dialogue):
        read.append(dialogue.turns[-1]["content"])
        return dialogue.turns[-1]["content"]

    assert cross_validate(dialogues, text, folds=2) == (12, 12)  # each day shares its words with another
    assert sorted(read) == sorted(t for p, texts in days.items() if p for t in texts)  # each once, no other


def test_reading_synthesized_files_counts_right_names_per_profession_and_what_was_named(tmp_path):
    reader = ProfessionReader.learn(load_dialogues(known_file(tmp_path))[0])
    synthesized = tmp_path / "synthesized.jsonl"
    records = [("Doctor", "More patients, more prescriptions."), ("Artist", "A canvas for the gallery."),
               ("Programmer", "Patients all day."), ("Programmer", "Zebras!"), (None, "A walk.")]
    synthesized.write_text("".join(json.dumps({
        "active_adapters": ["EXT_high"] + ([p] if p else []),
        "dialog": [{"role": "user", "content": "And today?"}, {"role": "assistant", "content": text}]}) + "\n"
        for p, text in records))
    figures = read_files(reader, [str(synthesized)], lambda d: d.turns[-1]["content"])[str(synthesized)]
    assert figures == {"named_right": 2, "read": 4,
                       "by_profession": {"Doctor": "1 of 1", "Artist": "1 of 1", "Programmer": "0 of 2"},
                       "named": {"Doctor": 2, "Artist": 1, "None": 1}}
    no_profession = tmp_path / "none.jsonl"
    no_profession.write_text(json.dumps({"active_adapters": ["EXT_high"], "dialog": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}) + "\n")
    with pytest.raises(EvalError, match="no dialogue with a profession"):
        read_files(reader, [str(no_profession)], lambda d: d.turns[-1]["content"])
    with pytest.raises(EvalError, match="--read .*missing"):
        read_files(reader, [str(tmp_path / "missing.jsonl")], lambda d: d.turns[-1]["content"])


def test_reader_judge_names_professions_by_the_reader_and_poles_by_likelihood(tmp_path, tiny_engine):
    judge = ReaderJudge(tiny_engine, ProfessionReader.learn(load_dialogues(known_file(tmp_path))[0]), 4)
    message = "How was work?"
    items = [(Evidence.reply(message, "Patients all day."), "Doctor"), (Evidence.reply(message, "Code."), "Artist"),
             (Evidence.reply(message, "Zebras!"), "Programmer")]
    assert judge.profession_outcomes(items) == [1.0, 0.0, 0.0]
    likelihood = LikelihoodJudge(tiny_engine, 4)
    pair = [(EVIDENCE[0], EVIDENCE[1], "NEU")]
    assert judge.pole_outcomes(pair) == likelihood.pole_outcomes(pair)


# --- the command -------------------------------------------------------------------------------------


def validation_file(tmp_path):
    """A few dialogues of our own with known identities (the judge's validation material in tests)."""
    dialogues = [{"active_adapters": names, "dialog": [{"role": "user", "content": "How was the day?"},
                                                       {"role": "assistant", "content": reply}]}
                 for names, reply in ((["NEU_high", "Doctor"], "Awful, I worried all shift about a patient."),
                                      (["NEU_low", "Artist"], "Fine. I painted and felt at ease."),
                                      (["NEU_high"], "I could not stop fretting."),
                                      (["NEU_low", "Programmer"], "Calm. Fixed two bugs, shipped the build."))]
    path = tmp_path / "known.json"
    path.write_text(json.dumps(dialogues))
    return path


def run_cli(capsys, *arguments) -> dict:
    from hirpf.eval.__main__ import main

    code = main(["discriminate", *arguments, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_cli_quick_run_validates_the_judge_once_and_reads_it_from_the_cache(capsys, tmp_path, tiny_base_dir):
    common = ["--quick", "--split", "dev", "--max_new_tokens", "3", "--base_model", str(tiny_base_dir),
              "--lora_weights", "none", "--validation_data", str(validation_file(tmp_path)),
              "--validation_dialogues", "all", "--validation_cache", str(tmp_path / "cache")]
    document = run_cli(capsys, *common, "--output_dir", str(tmp_path / "one"))
    assert document["settings"]["modes"] == ["prompt"] and document["settings"]["judge"] == "likelihood"
    assert document["settings"]["prompts"] == [p.id for p in load_prompts("dev")[:2]]
    validation = document["validation"]
    assert validation["poles"]["n"] == 2 and validation["professions"]["n"] == 3
    assert validation["poles"]["all_combinations"]["n"] == 4 and "cached" not in validation
    assert {(f["measure"], f["k"]) for f in document["figures"]} == {
        (m, k) for m in ("pole_discrimination", "profession_naming") for k in (1, 2, 3, "composed", "all")}
    again = run_cli(capsys, *common, "--output_dir", str(tmp_path / "two"))
    assert again["validation"]["cached"] and again["validation"]["poles"] == validation["poles"]
    assert json.loads((tmp_path / "two" / "discriminate.json").read_text())["figures"] == again["figures"]


def test_cli_with_the_endpoint_judge(capsys, tmp_path, tiny_base_dir, openai_server):
    openai_server.responder = lambda request: json.dumps(
        {"answer": "A" if "Reply A:" in shown(request) else "Artist"})
    document = run_cli(capsys, "--quick", "--split", "dev", "--max_new_tokens", "3", "--base_model",
                       str(tiny_base_dir), "--lora_weights", "none", "--judge", "endpoint", "--judge_base_url",
                       openai_server.base_url, "--judge_model", "fake-model", "--judge_cache_dir", "none",
                       "--validation_dialogues", "none", "--output_dir", str(tmp_path))
    assert document["settings"]["judge"] == "llm:fake-model" and document["judge_failed"] == 0
    assert document["validation"] is None
    poles = [f for f in document["figures"] if f["measure"] == "pole_discrimination"]
    assert {f["accuracy"] for f in poles} == {0.5}  # a judge that always says A: half credit everywhere


def test_cli_with_the_reader_learns_outside_the_held_out_split_only(capsys, tmp_path, tiny_base_dir):
    from hirpf.eval.__main__ import main

    common = ["--quick", "--split", "dev", "--max_new_tokens", "3", "--base_model", str(tiny_base_dir),
              "--lora_weights", "none", "--judge", "reader", "--validation_data", str(known_file(tmp_path)),
              "--validation_cache", "none", "--output_dir", str(tmp_path / "run")]
    assert main(["discriminate", *common, "--validation_dialogues", "all"]) == 2
    assert "held-out split only" in capsys.readouterr().err
    # seed 1 holds out an Artist's day and the day without a profession: the reader learns from the other five
    document = run_cli(capsys, *common, "--validation_fraction", "0.3", "--validation_seed", "1")
    assert document["settings"]["judge"] == "likelihood+reader"
    assert document["validation"]["professions"]["n"] == 1 and "2 dialogues" in document["validation"]["material"]


def test_cli_refuses_bad_options(capsys, tiny_base_dir):
    from hirpf.eval.__main__ import main

    assert main(["discriminate", "--max_new_tokens", "0", "--base_model", str(tiny_base_dir)]) == 2
    assert "--max_new_tokens" in capsys.readouterr().err
    assert main(["discriminate", "--modes", "experts", "--lora_weights", "none", "--base_model",
                 str(tiny_base_dir)]) == 2
    assert "need experts" in capsys.readouterr().err


# --- the judge on the embedded model -----------------------------------------------------------------


def test_embedded_judge_reads_obvious_professions_and_poles(embedded_engine):
    judge = LikelihoodJudge(embedded_engine, batch_size=16)
    replies = {"Doctor": "Long shift again. Three patients in the ward needed new prescriptions and one went to "
                         "surgery.",
               "Artist": "I spent the day in my studio mixing colours for a large canvas for my next exhibition.",
               "Programmer": "The build broke, so I spent the day debugging a null pointer in our Python code "
                             "before the deploy."}
    message = "How was your day?"
    outcomes = judge.profession_outcomes([(Evidence.reply(message, r), p) for p, r in replies.items()])
    assert outcomes == [1.0, 1.0, 1.0]
    anxious = Evidence.reply(message, "Terrible. I kept worrying that everything would go wrong and I could not "
                                      "calm down at all. I feel so stressed.")
    calm = Evidence.reply(message, "Pretty relaxed, honestly. A few things went wrong but nothing bothers me much; "
                                   "I took it easy.")
    assert judge.pole_outcomes([(anxious, calm, "NEU")]) == [1.0]

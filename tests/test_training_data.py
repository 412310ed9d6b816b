"""Training data: sources, identity rules, skip reports, assistant-only labels, turn-boundary truncation."""
from __future__ import annotations

import json

import pytest
import torch

from hirpf.dialogues import IGNORE, Collator, InvalidRecord, load_dialogues, tokenize, validate
from hirpf.identities import IdentitySet
from hirpf.paths import his_file
from hirpf.prompts import Conditioning

HIS_DIALOGUES = his_file("identity_dialogues.json")


def record(adapters, *turns, system=True):
    dialog = [{"role": "system", "content": "Be someone."}] if system else []
    roles = ["user", "assistant"]
    dialog += [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
    return {"dialog": dialog, "active_adapters": adapters}


GOOD = record(["Doctor", "EMS_high"], "How was the night shift?", "Long, but the ward stayed calm.",
              "Any tough cases?", "One, and we handled it together.")


@pytest.fixture
def tokenizer():
    from transformers import AutoTokenizer

    from hirpf.embedded import ensure_embedded_model

    return AutoTokenizer.from_pretrained(ensure_embedded_model())


def test_three_source_shapes(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([GOOD, GOOD]))
    (tmp_path / "lines.jsonl").write_text(json.dumps(GOOD) + "\n\n" + json.dumps(GOOD) + "\n")
    tree = tmp_path / "tree"
    for name in ("doctor", "artist"):
        (tree / name).mkdir(parents=True)
        (tree / name / "train.json").write_text(json.dumps([GOOD] * 3))
        (tree / name / "test.json").write_text(json.dumps([GOOD]))
    assert len(load_dialogues(tmp_path / "list.json")[0]) == 2
    assert len(load_dialogues(tmp_path / "lines.jsonl")[0]) == 2
    assert len(load_dialogues(tree)[0]) == 8
    assert len(load_dialogues(tree, split="train")[0]) == 6
    with pytest.raises(FileNotFoundError):
        load_dialogues(tmp_path / "missing.json")


def test_validation_maps_aliases_and_drops_the_system_turn():
    dialogue = validate(GOOD, "f.json", 0)
    assert dialogue.identities == IdentitySet.parse("Doctor,NEU_low")
    assert [t["role"] for t in dialogue.turns] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("bad,reason", [
    (record(["AGR_high", "AGR_low"], "hi", "hello"), "both poles"),
    (record(["Doctor", "Artist"], "hi", "hello"), "more than one profession"),
    (record(["Wizard"], "hi", "hello"), "unknown identity"),
    ({"dialog": [], "active_adapters": ["Doctor"]}, "empty dialog"),
    (record(["Doctor"], "only a question"), "no assistant turn"),
    ({"dialog": [{"role": "narrator", "content": "x"}], "active_adapters": []}, "unknown role"),
    ({"active_adapters": []}, "not a record"),
])
def test_bad_records_are_named_with_file_index_and_reason(tmp_path, bad, reason):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD, bad, GOOD]))
    with pytest.raises(InvalidRecord, match=reason) as err:
        load_dialogues(path)
    assert err.value.index == 1 and str(path) in str(err.value)
    kept, report = load_dialogues(path, on_invalid="skip")
    assert len(kept) == 2 and sum(report.skipped.values()) == 1
    assert "2 records kept, 1 skipped" in report.describe()


@pytest.mark.skipif(not HIS_DIALOGUES.is_file(), reason="../shared/his not present")
def test_public_his_dialogues_report_their_rule_breakers():
    with pytest.raises(InvalidRecord, match="both poles"):
        load_dialogues(HIS_DIALOGUES)
    kept, report = load_dialogues(HIS_DIALOGUES, on_invalid="skip")
    assert len(kept) + sum(report.skipped.values()) == 570
    assert report.skipped == {"identity rules: both poles of one trait": 9}


def test_labels_cover_exactly_the_assistant_turns(tokenizer):
    dialogue = validate(GOOD)
    item = tokenize(dialogue, tokenizer)
    ids, labels = item["input_ids"], item["labels"]
    assert labels.shape == ids.shape and torch.equal(labels[labels != IGNORE], ids[labels != IGNORE])
    learned = tokenizer.decode(ids[labels != IGNORE])
    assert "Long, but the ward stayed calm." in learned and "One, and we handled it together." in learned
    assert "night shift" not in learned and "tough cases" not in learned  # user turns carry no loss
    assert learned.count("<|im_end|>") == 2  # the model learns to end its turns
    assert "low neuroticism" in tokenizer.decode(ids) and "a doctor" in tokenizer.decode(ids)
    assert torch.equal(item["identity_pairs"], IdentitySet.parse("Doctor,NEU_low").index_pairs())


def test_experts_only_conditioning_uses_the_neutral_prompt(tokenizer):
    text = tokenizer.decode(tokenize(validate(GOOD), tokenizer, Conditioning.EXPERTS)["input_ids"])
    assert "doctor" not in text.lower().split("<|im_end|>")[0]


def test_truncation_drops_whole_turns(tokenizer):
    dialogue = validate(GOOD)
    full = tokenize(dialogue, tokenizer)
    learned_full = tokenizer.decode(full["input_ids"][full["labels"] != IGNORE])
    cut = tokenize(dialogue, tokenizer, max_length=len(full["input_ids"]) - 3)
    learned_cut = tokenizer.decode(cut["input_ids"][cut["labels"] != IGNORE])
    assert learned_cut == "Long, but the ward stayed calm.<|im_end|>"  # the second reply went whole
    assert learned_full.startswith(learned_cut)
    assert tokenize(dialogue, tokenizer, max_length=10) is None  # not even the first reply fits


def test_dialogues_starting_with_the_assistant(tokenizer):
    opener = {"dialog": [{"role": "assistant", "content": "Welcome to my studio."},
                         {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "Look around."}],
              "active_adapters": ["Artist"]}
    item = tokenize(validate(opener), tokenizer)
    assert tokenizer.decode(item["input_ids"][item["labels"] != IGNORE]).startswith("Welcome to my studio.")


def test_collator_pads_and_stacks(tokenizer):
    a = tokenize(validate(GOOD), tokenizer)
    b = tokenize(validate(record(["OPE_high"], "Hi", "Hello there")), tokenizer)
    batch = Collator(tokenizer.pad_token_id)([a, b])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["identity_pairs"].shape == (2, 6, 2)
    n = len(b["input_ids"])
    assert batch["attention_mask"][1, :n].all() and not batch["attention_mask"][1, n:].any()
    assert (batch["labels"][1, n:] == IGNORE).all()


def test_a_seeded_share_of_training_dialogues_is_tokenized_for_the_experts_alone(tokenizer):
    from training.train import tokenized

    dialogues = [validate(GOOD)] * 40

    def experts_only(items):
        return [
            "doctor" not in tokenizer.decode(item["input_ids"]).lower().split("<|im_end|>")[0] for item in items]

    assert not any(experts_only(tokenized(dialogues, tokenizer, Conditioning.EXPERTS_AND_PROMPT, 384)))
    assert all(experts_only(tokenized(dialogues, tokenizer, Conditioning.EXPERTS_AND_PROMPT, 384,
                                      experts_only_share=1.0)))
    half = experts_only(tokenized(dialogues, tokenizer, Conditioning.EXPERTS_AND_PROMPT, 384,
                                  experts_only_share=0.5, seed=3))
    assert 10 <= sum(half) <= 30
    assert half == experts_only(tokenized(dialogues, tokenizer, Conditioning.EXPERTS_AND_PROMPT, 384,
                                          experts_only_share=0.5, seed=3))  # the same draw for the same seed
    for item in tokenized(dialogues[:4], tokenizer, Conditioning.EXPERTS_AND_PROMPT, 384, experts_only_share=1.0):
        assert torch.equal(item["identity_pairs"], IdentitySet.parse("Doctor,NEU_low").index_pairs())

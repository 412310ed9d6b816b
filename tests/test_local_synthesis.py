"""The local synthesis backend on a tiny random Llama: the amplification formula, γ = 0, records, errors."""
from __future__ import annotations

import json

import pytest
import torch

from hirpf.base_model import load_base_model
from hirpf.dialogues import load_dialogues
from hirpf.engine import Sampling
from hirpf.identities import IdentitySet
from training.local_synthesis import (
    BACKEND,
    amplified_logits,
    character_views,
    chat_ids,
    sample_replies,
)
from training.synthesis_records import Job
from training.synthesize import entries_for_kinds, main

JOB = Job("AGR_high+Doctor/0/seed0", IdentitySet.parse("AGR_high,Doctor"), 2, "a museum café at closing time", None)
DIALOG = [{"role": "user", "content": "Do you know if the café is still open?"}]


@pytest.fixture(scope="module")
def tiny(tiny_base_dir):
    return load_base_model(str(tiny_base_dir), load_in_8bit=False, dtype="float32")


def views(tokenizer, dialog=DIALOG):
    identity, neutral = character_views(JOB, dialog)
    return chat_ids(tokenizer, identity), chat_ids(tokenizer, neutral)


def test_every_token_comes_from_the_amplified_logits_of_its_pair(tiny):
    """Against a manual computation: two separate forwards (identity prompt, neutral prompt, each with the
    reply so far), combined by the formula, for every step of a batched, cached, padded decode."""
    model, tokenizer = tiny
    gamma = 1.5
    other = chat_ids(tokenizer, character_views(JOB, DIALOG + [{"role": "assistant", "content": "Yes."},
                                                              {"role": "user", "content": "Great!"}])[0])
    identity, neutral = views(tokenizer)
    trace = []
    sampling = Sampling(max_new_tokens=5, do_sample=False, repetition_penalty=1.0)
    replies = sample_replies(model, tokenizer, [identity, other], sampling, [torch.Generator()] * 2,
                             neutral=[neutral, chat_ids(tokenizer, character_views(JOB, DIALOG)[1])], gamma=gamma,
                             trace=trace)
    tokens = replies[0][0]
    assert len(tokens) >= 3
    for step, token in enumerate(tokens):
        with torch.no_grad():
            l_id = model(torch.tensor([identity + tokens[:step]])).logits[0, -1].float()
            l_neutral = model(torch.tensor([neutral + tokens[:step]])).logits[0, -1].float()
        expected = l_id + gamma * (l_id - l_neutral)
        torch.testing.assert_close(trace[step][0], expected, rtol=1e-4, atol=1e-4)
        assert int(expected.argmax()) == token
    torch.testing.assert_close(amplified_logits(torch.tensor([2.0]), torch.tensor([1.0]), 3.0), torch.tensor([5.0]))


def test_gamma_zero_is_plain_identity_prompt_generation(tiny):
    """Each row, padded in a batch beside a longer conversation, equals `generate` on its prompt alone."""
    model, tokenizer = tiny
    longer = DIALOG + [{"role": "assistant", "content": "It closes in ten minutes."},
                       {"role": "user", "content": "Then I will have a quick coffee."}]
    (identity, neutral), (identity_2, neutral_2) = views(tokenizer), views(tokenizer, longer)
    sampling = Sampling(max_new_tokens=8, do_sample=False, repetition_penalty=1.3)
    ours = sample_replies(model, tokenizer, [identity, identity_2], sampling, [torch.Generator()] * 2,
                          neutral=[neutral, neutral_2], gamma=0.0)
    for prompt, (tokens, ended) in zip([identity, identity_2], ours):
        with torch.no_grad():
            plain = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   **sampling.generate_kwargs())[0, len(prompt):].tolist()
        assert tokens == plain[:len(tokens)] and len(tokens) >= 3
        assert len(tokens) == 8 or ended  # cut by the limit, or ended where generate ended


def test_seeded_sampling_repeats_and_the_seed_matters(tiny):
    model, tokenizer = tiny
    identity, neutral = views(tokenizer)
    sampling = Sampling(max_new_tokens=6, do_sample=True, temperature=1.0, top_p=0.95, top_k=50)

    def draw(seed):
        return sample_replies(model, tokenizer, [identity], sampling, [torch.Generator().manual_seed(seed)],
                              neutral=[neutral], gamma=1.0)[0][0]

    assert draw(1) == draw(1) and draw(1) != draw(2)


def synthesize(tmp_path, tiny_base_dir, *extra):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"entries": [{"identities": ["AGR_high", "Doctor"]},
                                            {"identities": ["EXT_low", "CON_high", "OPE_high"], "turns": 1}]}))
    return main(["--backend", "local-contrastive", "--base_model", str(tiny_base_dir), "--output",
                 str(tmp_path / "out.jsonl"), "--plan", str(plan), "--turns", "2", "--max_new_tokens", "6",
                 "--seed", "7", "--gamma", "0.5", *extra])


def test_records_load_through_the_training_loader_with_their_provenance(tmp_path, tiny_base_dir):
    summary = synthesize(tmp_path, tiny_base_dir)
    assert (summary["written"], summary["failed"], summary["backend"]) == (2, 0, BACKEND)
    dialogues, report = load_dialogues(tmp_path / "out.jsonl")
    assert report.kept == 2 and not report.skipped
    assert sorted((str(d.identities), [t["role"] for t in d.turns]) for d in dialogues) == [
        ("AGR_high,Doctor", ["user", "assistant"] * 2), ("CON_high,EXT_low,OPE_high", ["user", "assistant"])]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for record in records:
        provenance = record["synthesis"]
        assert provenance["backend"] == "local-contrastive" and provenance["base_model"] == str(tiny_base_dir)
        assert provenance["gamma"] == 0.5 and provenance["seed"] == 7 and provenance["job"].endswith("/seed7")
        assert provenance["sampling"]["max_new_tokens"] == 6 and provenance["sampling"]["do_sample"] is True
        assert provenance["prompt_version"].startswith("sha256:") and provenance["created"].endswith("+00:00")
    # the summary's command remakes the file (a model card of a run trained on it quotes it)
    command = json.loads((tmp_path / "out.jsonl.summary.json").read_text())["command"].split()
    assert command[:2] == ["python", "training/synthesize.py"] and command[command.index("--gamma") + 1] == "0.5"
    main([a.replace(str(tmp_path / "out.jsonl"), str(tmp_path / "again.jsonl")) for a in command[2:]])
    remade = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert [r["dialog"] for r in remade] == [r["dialog"] for r in records]
    again = synthesize(tmp_path, tiny_base_dir)  # a rerun skips what is written
    assert (again["skipped"], again["written"]) == (2, 0)


def test_bad_input_is_named(tmp_path, tiny_base_dir):
    with pytest.raises(SystemExit, match="--gamma must be 0 or more"):
        synthesize(tmp_path, tiny_base_dir, "--gamma", "-0.5")
    with pytest.raises(SystemExit, match="--base_model .*/missing: no such directory"):
        main(["--backend", "local-contrastive", "--base_model", str(tmp_path / "missing"), "--output",
              str(tmp_path / "o.jsonl"), "--kinds", "single"])
    plan = tmp_path / "bad.json"
    plan.write_text(json.dumps({"entries": [{"identities": ["AGR_high", "Astronaut"]}]}))
    with pytest.raises(SystemExit, match="entry 0: .*Astronaut"):
        main(["--backend", "local-contrastive", "--output", str(tmp_path / "o.jsonl"), "--plan", str(plan)])
    with pytest.raises(SystemExit, match="--backend openai needs --model"):
        main(["--output", str(tmp_path / "o.jsonl")])
    assert not (tmp_path / "o.jsonl").exists()


def test_a_sample_of_sets_covers_pairs_and_triples_evenly():
    kinds = ["trait_pairs", "trait_profession", "trait_triples", "pair_profession"]
    assert [len(entries_for_kinds([k], 1)) for k in kinds] == [40, 30, 80, 120]
    sample = entries_for_kinds(kinds, 1, sample=20, seed=3)
    assert len({e.identities for e in sample}) == 20
    sizes = [(len(e.identities), e.identities.profession is not None) for e in sample]
    assert {s: sizes.count(s) for s in set(sizes)} == {(2, False): 5, (2, True): 5, (3, False): 5, (3, True): 5}
    assert sample == entries_for_kinds(kinds, 1, sample=20, seed=3) != entries_for_kinds(kinds, 1, sample=20, seed=4)


def test_turn_rules_name_what_is_wrong_and_cut_turns_end_at_a_sentence():
    from training.local_synthesis import finished_turn, turn_problem

    assert turn_problem("As a doctor I would rest first.", JOB, character=True) == "identity named"
    assert turn_problem("As a doctor I would rest first.", JOB, character=False) is None  # the other speaker may
    assert turn_problem("", JOB, character=False) == "empty turn"
    assert turn_problem("I would rest first.", JOB, character=True) is None
    assert finished_turn(" Sure thing. I will be there at", ended=False) == "Sure thing."
    assert finished_turn("no sentence end at all", ended=False) == "no sentence end at all"
    assert finished_turn("Done. And then", ended=True) == "Done. And then"

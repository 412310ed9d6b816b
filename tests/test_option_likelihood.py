"""The likelihood judge on a tiny random Llama with random experts: batched == one by one == a plain
forward, distributions sum to 1, rows of different identity sets do not reach each other, and the CLI."""
from __future__ import annotations

import json

import pytest
import torch

from hirpf.eval.option_likelihood import (
    answer_by_likelihood,
    likelihood_question,
    option_distribution,
    option_replies,
)
from hirpf.identities import IdentitySet
from hirpf.labels import SCALE_OPTIONS
from hirpf.prompts import Conditioning
from hirpf.scales import default_scale

from testing_utils import plain_mean_log_likelihoods

S = IdentitySet.parse
STATEMENTS = ["I like parties.", "I keep my desk tidy and my calendar full of plans.", "I worry."]
SETS = [S("EXT_high"), S("NEU_low,Doctor"), IdentitySet(), S("AGR_low,CON_high,EXT_low,NEU_high,OPE_low,Artist")]


def test_batched_equals_one_by_one_and_a_plain_forward(tiny_engine):
    conversations = [[{"role": "user", "content": likelihood_question(t)}] for _ in SETS for t in STATEMENTS]
    rows = [s for s in SETS for _ in STATEMENTS]
    replies = option_replies()
    assert replies[0] == "Very inaccurate" and len(replies) == len(SCALE_OPTIONS) == 5
    for conditioning in Conditioning:
        batched, scores = option_distribution(tiny_engine, conversations, rows, conditioning, replies, batch_size=7)
        one_by_one = torch.cat([option_distribution(tiny_engine, [c], [s], conditioning, replies, 1)[1]
                                for c, s in zip(conversations, rows)])
        plain = torch.stack([plain_mean_log_likelihoods(tiny_engine, c, s, conditioning, replies)
                             for c, s in zip(conversations, rows)])
        torch.testing.assert_close(scores, one_by_one, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(scores, plain, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched, torch.softmax(plain, -1), atol=1e-5, rtol=1e-4)
        assert torch.allclose(batched.sum(-1), torch.ones(len(rows), dtype=torch.float64))
    # the experts act: the same item under two identity sets scores differently
    assert not torch.allclose(scores[0], scores[len(STATEMENTS)])


def test_rows_of_other_identity_sets_do_not_change_a_row(tiny_engine):
    conversation = [{"role": "user", "content": likelihood_question(STATEMENTS[0])}]
    replies = option_replies()
    conditioning = Conditioning.EXPERTS

    def first_row(neighbours):
        return option_distribution(tiny_engine, [conversation] * (1 + len(neighbours)), [SETS[0], *neighbours],
                                   conditioning, replies, batch_size=16)[1][0]

    alone = first_row([])
    for neighbours in ([SETS[1]], [SETS[3], SETS[2]], [SETS[1]] * 3):
        torch.testing.assert_close(first_row(neighbours), alone, atol=1e-5, rtol=1e-4)


def test_answers_are_expected_values_of_the_distribution(tiny_engine):
    scale = default_scale("personality").subset(1)
    answers = answer_by_likelihood(tiny_engine, scale, [S("EXT_high"), IdentitySet()], Conditioning.EXPERTS_AND_PROMPT)
    assert len(answers) == 2 * len(scale.items)
    for a in answers:
        probabilities = [a.detail[f"p{k}"] for k in range(1, 6)]
        assert abs(sum(probabilities) - 1) < 1e-4 and all(a.detail[f"loglik{k}"] < 0 for k in range(1, 6))
        assert abs(a.answer - sum(k * p for k, p in enumerate(probabilities, 1))) < 1e-3
        assert 1 <= a.answer <= 5 and a.score == (a.answer if a.item.keyed > 0 else 6 - a.answer)


@pytest.mark.parametrize("judge", ["likelihood", "statement", "logits"])
def test_cli_reports_the_spread_and_for_logits_the_digit_mass(capsys, tmp_path, tiny_base_dir, judge):
    from hirpf.eval.__main__ import main

    code = main(["scale", "--judge", judge, "--items_per_factor", "1", "--identities", "EXT_low", "OPE_high",
                 "--base_model", str(tiny_base_dir), "--lora_weights", "none", "--json",
                 "--output_dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads(captured.out)
    assert document["judge"] == judge and document["failed_answers"] == 0
    assert {e["identities"] for e in document["identity_sets"]} == {"EXT_low", "OPE_high", "(none)"}
    spread = document["score_spread"]
    assert set(spread) == {"AGR", "CON", "EXT", "NEU", "OPE"} and all(v["std"] >= 0 for v in spread.values())
    if judge == "logits":
        mass = document["digit_mass"]
        assert 0 < mass["min"] <= mass["mean"] <= mass["max"] <= 1
    else:
        assert "digit_mass" not in document

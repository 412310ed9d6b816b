"""The statement judge on a tiny random Llama with random experts: each answer is 1 + 4·sigmoid of the
statement's per-token log-likelihood ratio against the empty set, averaged over the three requests (checked
against plain forwards), the empty set answers 3, reverse keying mirrors, and a set's answers do not depend
on the sets beside it."""
from __future__ import annotations

import math

import pytest

from hirpf.eval.statement_likelihood import STATEMENT_REQUESTS, answer_by_statement
from hirpf.identities import IdentitySet
from hirpf.prompts import Conditioning
from hirpf.scales import default_scale

from testing_utils import plain_mean_log_likelihoods

S = IdentitySet.parse


@pytest.mark.parametrize("conditioning", list(Conditioning))
def test_answers_are_the_posterior_against_the_empty_set_from_plain_forwards(tiny_engine, conditioning):
    scale = default_scale("personality").subset(1)
    texts = [i.text for i in scale.items]
    sets = [S("EXT_high"), S("AGR_low,NEU_high,Doctor"), IdentitySet()]
    answers = answer_by_statement(tiny_engine, scale, sets, conditioning, batch_size=3)
    assert [(a.identities, a.item_index) for a in answers] == [(s, i) for s in sets for i in range(len(texts))]

    def over_requests(identities):
        return sum(plain_mean_log_likelihoods(tiny_engine, [{"role": "user", "content": r}], identities,
                                              conditioning, texts) for r in STATEMENT_REQUESTS) / 3

    empty = over_requests(IdentitySet())
    for s in sets:
        own = over_requests(s)
        for a in (a for a in answers if a.identities == s):
            d = float(own[a.item_index] - empty[a.item_index])
            assert a.detail["difference"] == pytest.approx(d, abs=1e-4)
            assert a.answer == pytest.approx(1 + 4 / (1 + math.exp(-d)), abs=1e-4)
            assert a.score == pytest.approx(a.answer if a.item.keyed > 0 else 6 - a.answer)
            if s == IdentitySet():
                assert a.answer == 3 and a.score == 3
    # the experts and the prompt act: the answers are not all 3
    assert any(abs(a.answer - 3) > 1e-3 for a in answers if a.identities == sets[1])


def test_a_sets_answers_do_not_depend_on_the_sets_beside_it(tiny_engine):
    scale = default_scale("profession").subset(1)
    alone = answer_by_statement(tiny_engine, scale, [S("OPE_low,Artist")], Conditioning.EXPERTS_AND_PROMPT)
    crowded = answer_by_statement(tiny_engine, scale, [S("CON_high"), S("OPE_low,Artist"), IdentitySet(),
                                                       S("Programmer")], Conditioning.EXPERTS_AND_PROMPT,
                                  batch_size=5)
    assert len(alone) == len(scale.items)  # the empty set is scored as the reference but not answered
    beside = [a for a in crowded if a.identities == S("OPE_low,Artist")]
    assert [a.answer for a in beside] == pytest.approx([a.answer for a in alone], abs=1e-4)

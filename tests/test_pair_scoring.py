"""Pair-study scores against references: Wilson intervals against statsmodels, Bradley-Terry (MM) against a
statsmodels logistic regression and against the strengths synthetic votes were drawn from."""
from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from statsmodels.stats.proportion import proportion_confint

from annotation.pair_scoring import (
    Vote,
    bootstrap_bradley_terry,
    bradley_terry,
    choice_agreement,
    judge_agreement,
    majority_choice,
    position_bias,
    wilson_interval,
)

TRUE_SCORES = np.array([-1.0, -0.25, 0.25, 1.0])  # log-strengths, mean 0


@pytest.mark.parametrize("successes, n", [(0, 10), (10, 10), (7, 20), (41, 50), (1, 3), (500, 1000), (6.5, 13)])
def test_wilson_interval_matches_statsmodels(successes, n):
    low, high = proportion_confint(successes, n, alpha=0.05, method="wilson")
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=1e-12)


def test_wilson_interval_refuses_impossible_counts_and_is_none_without_data():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(11, 10)


def synthetic_votes(n: int, seed: int, tie_share: float = 0.0) -> list[Vote]:
    """Random pairs of conditions; the first wins with the Bradley-Terry probability of TRUE_SCORES, and
    `tie_share` of the votes are ties."""
    rng = np.random.default_rng(seed)
    votes = []
    for _ in range(n):
        i, j = rng.choice(len(TRUE_SCORES), 2, replace=False)
        if rng.random() < tie_share:
            votes.append(Vote(int(i), int(j), 0.5))
            continue
        p_first = 1 / (1 + np.exp(TRUE_SCORES[j] - TRUE_SCORES[i]))
        votes.append(Vote(int(i), int(j), float(rng.random() < p_first)))
    return votes


def logistic_regression_scores(votes: list[Vote], n_items: int) -> np.ndarray:
    """The Bradley-Terry maximum likelihood as a logistic regression without intercept (statsmodels GLM):
    one row per vote, +1 for the first condition, -1 for the second, the last condition as the reference;
    a tie is the fractional outcome 0.5."""
    exog = np.zeros((len(votes), n_items))
    for row, vote in enumerate(votes):
        exog[row, vote.first], exog[row, vote.second] = 1.0, -1.0
    fit = sm.GLM(np.array([v.outcome for v in votes]), exog[:, :-1], family=sm.families.Binomial()).fit()
    scores = np.append(fit.params, 0.0)
    return scores - scores.mean()


@pytest.mark.parametrize("tie_share", [0.0, 0.2])
def test_bradley_terry_matches_logistic_regression_and_the_true_strengths(tie_share):
    votes = synthetic_votes(3000, seed=1, tie_share=tie_share)
    scores = bradley_terry(votes, 4, prior=0.0)
    assert scores == pytest.approx(logistic_regression_scores(votes, 4), abs=1e-6)
    if tie_share == 0:  # ties drawn regardless of strength pull every score towards 0
        assert scores == pytest.approx(TRUE_SCORES, abs=0.15)
    # The default prior (virtual ties) moves the scores of real data by far less than their intervals.
    assert bradley_terry(votes, 4) == pytest.approx(scores, abs=1e-3)


def test_bootstrap_intervals_cover_the_truth_and_repeat_with_the_seed():
    votes = synthetic_votes(600, seed=2)
    intervals = bootstrap_bradley_terry(votes, 4, resamples=300, seed=5)
    scores = bradley_terry(votes, 4)
    for (low, high), score, truth in zip(intervals, scores, TRUE_SCORES):
        assert low < score < high and low < truth < high
        assert high - low < 1.0
    assert bootstrap_bradley_terry(votes, 4, resamples=300, seed=5) == intervals


def test_a_condition_that_never_loses_gets_a_finite_score_only_with_a_prior():
    votes = [Vote(0, 1, 1.0)] * 5 + [Vote(1, 2, 0.5)] * 4
    with pytest.raises(ValueError, match="never lost"):
        bradley_terry(votes, 3, prior=0.0)
    scores = bradley_terry(votes, 3)
    assert np.all(np.isfinite(scores)) and scores[0] > scores[2] > scores[1]


def test_conditions_never_compared_are_refused():
    with pytest.raises(ValueError, match=r"condition\(s\) \[2, 3\] are never compared"):
        bradley_terry([Vote(0, 1, 1.0), Vote(2, 3, 0.0)], 4)
    with pytest.raises(ValueError, match="itself"):
        bradley_terry([Vote(1, 1, 1.0)], 2)


def test_position_bias_is_the_share_of_the_first_shown_among_decided_answers():
    bias = position_bias([True, True, True, False, None, None])
    assert bias["share_first"] == 0.75 and bias["n"] == 4
    assert bias["interval"] == pytest.approx(list(proportion_confint(3, 4, method="wilson")))


def test_agreement_on_shared_pairs_and_with_a_judge():
    answers = {"p1": {"ada": "a", "bo": "a"}, "p2": {"ada": "b", "bo": "a"}, "p3": {"ada": "a", "bo": "a"},
               "p4": {"ada": "b", "bo": "b"}, "p5": {"ada": "a"}}
    agreement = choice_agreement(answers)
    assert agreement["n_pairs"] == 4 and agreement["percent_agreement"] == 0.75
    assert agreement["cohen_kappa"] == pytest.approx(0.5)  # p_o 0.75, p_e 0.5
    assert [majority_choice(list(by.values())) for by in answers.values()] == ["a", "tie", "a", "b", "a"]
    judged = judge_agreement({"p1": "a", "p2": "tie", "p3": "b", "p9": "a"}, {"p1": "a", "p2": "tie", "p3": "a"})
    assert judged["n_pairs"] == 3 and judged["accuracy"] == pytest.approx(2 / 3)

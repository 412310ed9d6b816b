"""Scores of blind pairwise studies (pure functions; `annotation.pair_studies` feeds them from the store).

- `wilson_interval` (from `hirpf.eval.intervals`, shared with `python -m hirpf.eval discriminate`): the Wilson
  score interval of a proportion, the interval for accuracy against chance in a discrimination study.

- `bradley_terry`: strengths from pairwise votes, P(i beats j) = p_i / (p_i + p_j), fitted by the MM
  (Zermelo) iteration of Hunter 2004, "MM algorithms for generalized Bradley-Terry models"::

      p_i <- W_i / sum_j n_ij / (p_i + p_j)      W_i = wins of i, n_ij = comparisons of i and j

  A tie counts as half a win to each side. Scores are log-strengths centred on mean 0 (a difference of
  d is odds of exp(d) to 1). `prior` adds that many virtual ties between every two conditions, so a
  condition that never won (or never lost), as happens in bootstrap resamples, still gets a finite score; at the
  default (0.01 of a vote) it moves scores of real data by well under their intervals.
- `bootstrap_bradley_terry`: 95% percentile intervals from resampling the votes with replacement, as
  Chatbot Arena reports its ratings.
- `position_bias`: the share of decided answers that picked the reply shown first ("A"), 0.5 when order
  does not matter, with its Wilson interval.
- `choice_agreement`: agreement among annotators on the pairs more than one of them answered, from
  `annotation.agreement.inter_annotator_agreement`.
"""
from __future__ import annotations

import math
from typing import Hashable, Mapping, NamedTuple, Sequence

import numpy as np

from annotation.agreement import cohen_kappa, inter_annotator_agreement
from hirpf.eval.intervals import Interval, wilson_interval

TIE = "tie"


class Vote(NamedTuple):
    """One answer to a pair of conditions: `first` and `second` are condition indices, `outcome` 1.0 when
    `first` won, 0.0 when `second` did, 0.5 for a tie."""

    first: int
    second: int
    outcome: float


def _wins(votes: np.ndarray, n_items: int) -> np.ndarray:
    """wins[i, j]: how often i beat j, ties half each way. `votes`: rows of (first, second, outcome)."""
    wins = np.zeros((n_items, n_items))
    first, second, outcome = votes[:, 0].astype(int), votes[:, 1].astype(int), votes[:, 2]
    np.add.at(wins, (first, second), outcome)
    np.add.at(wins, (second, first), 1.0 - outcome)
    return wins


def _mm(wins: np.ndarray, prior: float, iterations: int, tolerance: float) -> np.ndarray:
    n_items = len(wins)
    wins = wins + prior * 0.5 * (1 - np.eye(n_items))
    games = wins + wins.T
    won = wins.sum(axis=1)
    strength = np.ones(n_items)
    for _ in range(iterations):
        updated = won / (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated /= np.exp(np.log(updated).mean())
        converged = np.max(np.abs(np.log(updated) - np.log(strength))) < tolerance
        strength = updated
        if converged:
            break
    return np.log(strength)


def bradley_terry(votes: Sequence[Vote], n_items: int, prior: float = 0.01, iterations: int = 10_000,
                  tolerance: float = 1e-10) -> np.ndarray:
    """Log-strengths (mean 0) of `n_items` conditions from `votes`. Every condition must take part in a
    vote, and the votes must connect them all (else their scores relative to each other are undefined)."""
    if n_items < 2:
        raise ValueError(f"Bradley-Terry needs at least two conditions, got {n_items}")
    array = _vote_array(votes, n_items)
    wins = _wins(array, n_items)
    _check_connected(wins + wins.T)
    if prior <= 0 and (np.any(wins.sum(axis=1) == 0) or np.any(wins.sum(axis=0) == 0)):
        raise ValueError("a condition never won or never lost: its Bradley-Terry score is infinite "
                         "(use prior > 0)")
    return _mm(wins, prior, iterations, tolerance)


def bootstrap_bradley_terry(votes: Sequence[Vote], n_items: int, resamples: int = 1000, seed: int = 0,
                            prior: float = 0.01, level: float = 0.95) -> list[Interval]:
    """Percentile intervals of each condition's score over `resamples` resamples of the votes."""
    array = _vote_array(votes, n_items)
    wins = _wins(array, n_items)
    _check_connected(wins + wins.T)
    rng = np.random.default_rng(seed)
    scores = np.empty((resamples, n_items))
    for r in range(resamples):
        sample = array[rng.integers(0, len(array), len(array))]
        scores[r] = _mm(_wins(sample, n_items), prior, 2_000, 1e-8)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail], axis=0)
    return [Interval(float(a), float(b)) for a, b in zip(low, high)]


def _vote_array(votes: Sequence[Vote], n_items: int) -> np.ndarray:
    if not votes:
        raise ValueError("no votes")
    array = np.asarray([tuple(v) for v in votes], dtype=float)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError("votes must be (first, second, outcome) triples")
    items = array[:, :2]
    if np.any(items < 0) or np.any(items >= n_items) or np.any(items != np.round(items)):
        raise ValueError(f"vote conditions must be indices 0..{n_items - 1}")
    if np.any(array[:, 0] == array[:, 1]):
        raise ValueError("a vote compares a condition with itself")
    if not np.all(np.isin(array[:, 2], (0.0, 0.5, 1.0))):
        raise ValueError("a vote's outcome must be 1 (first won), 0 (second won) or 0.5 (tie)")
    return array


def _check_connected(games: np.ndarray) -> None:
    reached, frontier = {0}, [0]
    while frontier:
        i = frontier.pop()
        for j in np.nonzero(games[i])[0]:
            if int(j) not in reached:
                reached.add(int(j))
                frontier.append(int(j))
    if len(reached) < len(games):
        missing = sorted(set(range(len(games))) - reached)
        raise ValueError(f"condition(s) {missing} are never compared, directly or through others, with "
                         "condition 0: their scores cannot be placed on one scale")


def position_bias(first_shown_won: Sequence[bool | None]) -> dict:
    """`first_shown_won`: per answer, True when the reply shown first was picked, False when the other,
    None for a tie (left out). Share of "A" among decided answers, with its Wilson interval."""
    decided = [x for x in first_shown_won if x is not None]
    chosen = sum(decided)
    interval = wilson_interval(chosen, len(decided))
    return {"share_first": chosen / len(decided) if decided else None,
            "interval": list(interval) if interval else None, "n": len(decided)}


def choice_agreement(answers: Mapping[Hashable, Mapping[Hashable, str]]) -> dict:
    """Agreement among annotators: `answers[pair][annotator]` is "a", "b" or "tie". Only pairs answered by
    two or more count (`n_pairs`); the coefficients are those of `inter_annotator_agreement`."""
    units = {pair: {who: {"choice": c} for who, c in by.items()} for pair, by in answers.items()}
    result = inter_annotator_agreement(units, slots=("choice",))["per_slot"]["choice"]
    return {"krippendorff_alpha": result["krippendorff_alpha"], "cohen_kappa": result["cohen_kappa"],
            "fleiss_kappa": result["fleiss_kappa"], "percent_agreement": result["percent_agreement"],
            "n_pairs": result["n_units"]}


def majority_choice(choices: Sequence[str]) -> str | None:
    """The choice most annotators made; "tie" when "a" and "b" got as many; None without answers."""
    if not choices:
        return None
    a, b = choices.count("a"), choices.count("b")
    return "a" if a > b else "b" if b > a else TIE


def judge_agreement(judge: Mapping[Hashable, str], humans: Mapping[Hashable, str]) -> dict:
    """A judge's choices against the human majority on the pairs both answered: accuracy and Cohen's kappa."""
    shared = sorted(set(judge) & set(humans), key=str)
    ours, theirs = [judge[p] for p in shared], [humans[p] for p in shared]
    kappa = cohen_kappa(ours, theirs) if shared else math.nan
    return {"accuracy": sum(x == y for x, y in zip(ours, theirs)) / len(shared) if shared else None,
            "cohen_kappa": None if math.isnan(kappa) else kappa, "n_pairs": len(shared)}

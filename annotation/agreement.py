"""Agreement between label sources: annotators, LLM judges and the target identities.

Coefficients (pure Python, labels may be any hashable values):

- `accuracy`: fraction of pairs that agree. `exact_match`: fraction of items right on every slot.
- `cohen_kappa` (two fixed raters, nominal; Cohen 1960)::

      kappa = (p_o - p_e) / (1 - p_e)     p_o = observed agreement,
                                          p_e = sum_k p_a(k) * p_b(k) from each rater's own marginals

- `fleiss_kappa` (n raters per item, not necessarily the same people; Fleiss 1971)::

      P_i = (sum_k n_ik^2 - n) / (n (n - 1))      n_ik = raters who put item i in category k
      p_k = sum_i n_ik / (N n)                    P_e = sum_k p_k^2
      kappa = (mean_i P_i - P_e) / (1 - P_e)

- `krippendorff_alpha` (any raters, missing data; Krippendorff 2011, "Computing Krippendorff's
  Alpha-Reliability")::

      o_ck = sum_u (pairs of values c, k within unit u) / (m_u - 1)    m_u = values in unit u (>= 2)
      n_c  = sum_k o_ck                                                 n = sum_c n_c
      alpha = 1 - (n - 1) * sum_ck o_ck d2(c, k) / sum_ck n_c n_k d2(c, k)

  with the difference function d2 of the level of measurement: nominal (c != k), ordinal
  ((sum_{g from c to k} n_g - (n_c + n_k) / 2)^2), interval ((c - k)^2), ratio (((c - k) / (c + k))^2).

Missing labels are `None`: a pair with a `None` is dropped (accuracy, Cohen), a unit with fewer than two
values is not pairable (Krippendorff); Fleiss needs complete items and refuses missing ones.

Degenerate data: when every label falls in one and the same category, chance agreement is total and the
chance-corrected coefficients are 0/0. All three return `nan` then (so does any coefficient with no data),
never a made-up 1.0; `accuracy` still shows the raw agreement. The report helpers
(`slot_agreement`, `inter_annotator_agreement`, `option_agreement`) return JSON-ready dicts in which a
figure that is undefined or does not apply is `None`. At the bottom: the comparisons of the HIS
320-dialogue file (`his_open_agreement`), under our rule and the paper's.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import combinations
from typing import NamedTuple

from hirpf.labels import NONE, SLOTS

LEVELS = ("nominal", "ordinal", "interval", "ratio")
NAN = float("nan")


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _pairs(a: Sequence, b: Sequence) -> list[tuple]:
    if len(a) != len(b):
        raise ValueError(f"the two label lists differ in length ({len(a)} vs {len(b)})")
    return [(x, y) for x, y in zip(a, b) if not _missing(x) and not _missing(y)]


# --- coefficients ----------------------------------------------------------------------------------
def accuracy(predictions: Sequence, targets: Sequence) -> float:
    """Fraction of (prediction, target) pairs that are equal; pairs with a `None` are dropped."""
    pairs = _pairs(predictions, targets)
    return sum(x == y for x, y in pairs) / len(pairs) if pairs else NAN


def exact_match(pred_slot_dicts: Sequence[Mapping | None], target_slot_dicts: Sequence[Mapping | None],
                slots: Sequence[str] = SLOTS) -> float:
    """Fraction of items whose prediction matches the target on every slot. A missing dict drops the item,
    a slot that is `None` on either side is skipped, an item with no slot left is dropped."""
    compared = [m for p, t in _pairs(pred_slot_dicts, target_slot_dicts)
                if (m := _same_on_all(p, t, slots)) is not None]
    return sum(compared) / len(compared) if compared else NAN


def _same_on_all(a: Mapping, b: Mapping, slots: Sequence[str]) -> bool | None:
    both = [s for s in slots if not _missing(a.get(s)) and not _missing(b.get(s))]
    return all(a[s] == b[s] for s in both) if both else None


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters labelling the same items (nominal). `nan` when undefined."""
    pairs = _pairs(a, b)
    if not pairs:
        return NAN
    n = len(pairs)
    p_o = sum(x == y for x, y in pairs) / n
    count_a, count_b = Counter(x for x, _ in pairs), Counter(y for _, y in pairs)
    p_e = sum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    return NAN if p_e == 1 else (p_o - p_e) / (1 - p_e)


def fleiss_kappa(items: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' kappa; `items[i]` holds the labels the raters gave item i, the same number (>= 2) for all."""
    if not items:
        return NAN
    n = len(items[0])
    for i, labels in enumerate(items):
        if len(labels) != n:
            raise ValueError(f"Fleiss' kappa needs the same number of raters per item: item 0 has {n}, "
                             f"item {i} has {len(labels)} (use krippendorff_alpha for unequal counts)")
        if any(_missing(x) for x in labels):
            raise ValueError(f"item {i} has a missing label; Fleiss' kappa needs complete items "
                             "(use krippendorff_alpha for missing data)")
    if n < 2:
        raise ValueError("Fleiss' kappa needs at least two raters per item")
    counts = [Counter(labels) for labels in items]
    p_bar = sum((sum(c * c for c in k.values()) - n) / (n * (n - 1)) for k in counts) / len(items)
    totals = Counter()
    for k in counts:
        totals.update(k)
    p_e = sum((t / (len(items) * n)) ** 2 for t in totals.values())
    return NAN if p_e == 1 else (p_bar - p_e) / (1 - p_e)


def krippendorff_alpha(data: Sequence[Sequence], level: str = "nominal") -> float:
    """Krippendorff's alpha; `data[rater][unit]`, `None` (or nan) where a rater gave no value.

    Levels other than nominal need numeric values. `nan` when there are no pairable values or no variation."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    if not data:
        return NAN
    n_units = len(data[0])
    for r, row in enumerate(data):
        if len(row) != n_units:
            raise ValueError(f"rater 0 has {n_units} units, rater {r} has {len(row)}: pad with None")
    coincidence: Counter = Counter()
    for u in range(n_units):
        values = Counter(row[u] for row in data if not _missing(row[u]))
        m = sum(values.values())
        if m < 2:
            continue  # one value alone cannot be compared with anything
        for c, n_c in values.items():
            for k, n_k in values.items():
                pairs = n_c * (n_k - 1) if c == k else n_c * n_k
                if pairs:
                    coincidence[c, k] += pairs / (m - 1)
    marginals: Counter = Counter()
    for (c, _), o in coincidence.items():
        marginals[c] += o
    n = sum(marginals.values())
    if n == 0:
        return NAN
    d2 = _difference(level, marginals)
    observed = sum(o * d2(c, k) for (c, k), o in coincidence.items())
    expected = sum(marginals[c] * marginals[k] * d2(c, k) for c in marginals for k in marginals)
    return NAN if expected == 0 else 1 - (n - 1) * observed / expected


def _difference(level: str, marginals: Mapping):
    """The squared difference function d2(c, k) of a level of measurement (Krippendorff 2011, section C)."""
    if level == "nominal":
        return lambda c, k: 0.0 if c == k else 1.0
    if level == "interval":
        return lambda c, k: float(c - k) ** 2
    if level == "ratio":
        return lambda c, k: 0.0 if c + k == 0 else ((c - k) / (c + k)) ** 2
    ranked = sorted(marginals)  # ordinal: distance counts how many values lie between c and k
    position = {v: i for i, v in enumerate(ranked)}
    cumulative = [0.0]
    for v in ranked:
        cumulative.append(cumulative[-1] + marginals[v])

    def ordinal(c, k):
        lo, hi = sorted((position[c], position[k]))
        between = cumulative[hi + 1] - cumulative[lo]
        return (between - (marginals[c] + marginals[k]) / 2) ** 2
    return ordinal


# --- report helpers ----------------------------------------------------------------------------------
def _figure(x: float) -> float | None:
    """JSON-ready: undefined (nan) becomes None."""
    return None if x is None or math.isnan(x) else x


def _mean(values: Iterable[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def slot_agreement(predicted: Sequence[Mapping | None], reference: Sequence[Mapping | None],
                   slots: Sequence[str] = SLOTS) -> dict:
    """Agreement of one label source with another, item by item (human vs target, human vs judge, ...).

    `predicted[i]` and `reference[i]` are slot dicts for item i (`None` where a source has no labels for the
    item; a `None` slot value drops that slot). Returns::

        {"per_slot": {slot: {"accuracy", "kappa", "alpha", "n"}},
         "overall": {"accuracy", "kappa", "alpha", "exact_match", "n"}}

    Overall accuracy pools every slot decision, overall kappa is the mean of the defined per-slot kappas
    (pooling labels across slots would inflate it), and so is overall alpha; exact match counts items right on
    all slots. `kappa` is Cohen's, `alpha` Krippendorff's (nominal, the two sources as raters); undefined
    figures are None."""
    pairs = _pairs(predicted, reference)
    per_slot = {}
    for slot in slots:
        p = [x.get(slot) for x, _ in pairs]
        r = [y.get(slot) for _, y in pairs]
        per_slot[slot] = {"accuracy": _figure(accuracy(p, r)), "kappa": _figure(cohen_kappa(p, r)),
                          "alpha": _figure(krippendorff_alpha([p, r])), "n": len(_pairs(p, r))}
    decisions = sum(s["n"] for s in per_slot.values())
    right = sum(s["accuracy"] * s["n"] for s in per_slot.values() if s["n"])
    overall = {"accuracy": right / decisions if decisions else None,
               "kappa": _mean(s["kappa"] for s in per_slot.values()),
               "alpha": _mean(s["alpha"] for s in per_slot.values()),
               "exact_match": _figure(exact_match([p for p, _ in pairs], [r for _, r in pairs], slots)),
               "n": len(pairs)}
    return {"per_slot": per_slot, "overall": overall}


def inter_annotator_agreement(annotations: Mapping[Hashable, Mapping[Hashable, Mapping | None]],
                              slots: Sequence[str] = SLOTS, level: str = "nominal") -> dict:
    """Agreement among annotators: `annotations[unit_id][annotator_id]` is that annotator's slot dict.

    Per slot: Krippendorff's alpha always (missing data allowed; `level` "ordinal" suits scale options,
    the kappas stay nominal); Cohen's kappa when exactly two
    annotators took part (on the units both labelled); Fleiss' kappa when every unit labelled at least
    twice was labelled by the same number of annotators. A coefficient that does not apply, or is
    undefined, is None. `percent_agreement` is the fraction of agreeing annotator pairs within units.
    Overall: the mean of each coefficient over the slots where it is defined, and `exact_match`, the
    fraction of annotator pairs within a unit that agree on every slot."""
    raters = sorted({a for by in annotations.values() for a, v in by.items() if v is not None}, key=str)
    units = list(annotations)
    per_slot = {}
    for slot in slots:
        matrix = [[_slot_value(annotations[u].get(a), slot) for u in units] for a in raters]
        per_unit = [[row[i] for row in matrix if not _missing(row[i])] for i in range(len(units))]
        pairable = [labels for labels in per_unit if len(labels) >= 2]
        cohen = _figure(cohen_kappa(matrix[0], matrix[1])) if len(raters) == 2 else None
        same_count = pairable and len({len(labels) for labels in pairable}) == 1
        fleiss = _figure(fleiss_kappa(pairable)) if same_count else None
        agreeing = [x == y for labels in pairable for x, y in combinations(labels, 2)]
        per_slot[slot] = {
            "krippendorff_alpha": _figure(krippendorff_alpha(matrix, level)) if raters else None,
            "cohen_kappa": cohen, "fleiss_kappa": fleiss,
            "percent_agreement": sum(agreeing) / len(agreeing) if agreeing else None,
            "n_units": len(pairable)}
    whole = []
    for u in units:
        labelled = [v for v in annotations[u].values() if v is not None]
        whole += [m for x, y in combinations(labelled, 2) if (m := _same_on_all(x, y, slots)) is not None]
    overall = {key: _mean(s[key] for s in per_slot.values())
               for key in ("krippendorff_alpha", "cohen_kappa", "fleiss_kappa", "percent_agreement")}
    overall["exact_match"] = sum(whole) / len(whole) if whole else None
    overall["n_units"] = sum(1 for u in units if sum(v is not None for v in annotations[u].values()) >= 2)
    overall["n_annotators"] = len(raters)
    return {"per_slot": per_slot, "overall": overall}


def _slot_value(labels: Mapping | None, slot: str):
    return None if labels is None else labels.get(slot)


def option_agreement(predicted: Sequence[int | None], reference: Sequence[int | None]) -> dict:
    """Agreement on scale-interview answers (options 1..5): exact accuracy, Cohen's kappa (nominal),
    Krippendorff's ordinal alpha over the two sources, mean absolute difference in options."""
    pairs = _pairs(predicted, reference)
    return {"accuracy": _figure(accuracy(predicted, reference)),
            "kappa": _figure(cohen_kappa(predicted, reference)),
            "ordinal_alpha": _figure(krippendorff_alpha([list(predicted), list(reference)], "ordinal")),
            "mean_abs_diff": sum(abs(x - y) for x, y in pairs) / len(pairs) if pairs else None,
            "n": len(pairs)}


# --- the GPT-versus-human agreement of the HIS 320-dialogue file ---------------------------------------
# Where GPT gave no prediction for a slot (`HisRecord.judge_missing`), our rule reads it as none, as the
# store does; the published rule (the file's TRUE column, so the paper's figures) counts it as a
# disagreement, even with a human's none. A label no source uses carries that rule through every figure.
NO_PREDICTION = "(no prediction)"


class Comparison(NamedTuple):
    labels: str       # the HisRecord field compared (judge_slots_as_published: judge_slots, missing marked)
    reference: str    # the HisRecord field it is compared with
    given_only: bool  # score only the slots the target gives a pole or profession
    title: str        # the heading in the table, saying how a missing prediction counts


# The HIS annotators (and GPT) nearly always name a pole, so "vs target" on all six slots mostly counts the
# slots the agent was not given; the `_given` views score the given identities alone.
COMPARISONS = {
    "gpt_vs_human": Comparison("judge_slots", "human_slots", False,
                               "gpt vs human, ours (GPT's missing prediction reads as none)"),
    "gpt_vs_human_published_rule": Comparison(
        "judge_slots_as_published", "human_slots", False,
        "gpt vs human, published rule (the file's TRUE column: a missing prediction is a disagreement)"),
    "gpt_vs_target": Comparison("judge_slots", "target_slots", False,
                                "gpt vs target (a missing prediction reads as none)"),
    "human_vs_target": Comparison("human_slots", "target_slots", False, "human vs target"),
    "gpt_vs_target_given": Comparison("judge_slots", "target_slots", True,
                                      "gpt vs target given (a missing prediction reads as none)"),
    "human_vs_target_given": Comparison("human_slots", "target_slots", True, "human vs target given"),
}


def his_open_agreement(records: Iterable) -> dict:
    """The HIS open file's records (`annotation.his_import.read_his_csv(path).records`; rows without a GPT
    and a human labelling are left out): `{"per_system": {system: {comparison: slot_agreement}}, "overall":
    {comparison: slot_agreement}, "n": dialogues}` for the comparisons in `COMPARISONS` (accuracy, Cohen's
    kappa and Krippendorff's alpha per slot, exact match; see `slot_agreement`). In the `_given` views the
    slots the target leaves at none are not scored (their `n` counts the scored slots)."""
    rows = [r for r in records if r.judge_slots is not None and r.human_slots is not None]

    def labels(record, field: str, given_only: bool) -> dict:
        if field == "judge_slots_as_published":
            return {s: NO_PREDICTION if s in record.judge_missing else v for s, v in record.judge_slots.items()}
        return {s: None if given_only and v == NONE else v for s, v in getattr(record, field).items()}

    def compare(group: Sequence) -> dict:
        return {name: slot_agreement([labels(r, c.labels, False) for r in group],
                                     [labels(r, c.reference, c.given_only) for r in group])
                for name, c in COMPARISONS.items()}
    systems = sorted({r.system for r in rows})
    return {"per_system": {s: compare([r for r in rows if r.system == s]) for s in systems},
            "overall": compare(rows), "n": len(rows)}


def format_his_open_agreement(result: Mapping) -> str:
    """A plain-text table of `his_open_agreement`: accuracy/Cohen's kappa per slot, then accuracy over the
    scored slots and exact match, per system and overall."""
    def number(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = []
    for name, comparison in COMPARISONS.items():
        scope = "the given slots" if comparison.given_only else "all six"
        lines.append(f"{comparison.title}: accuracy/Cohen's kappa per slot, accuracy and exact match on {scope}")
        lines.append(f"{'system':<10}{'n':>5}  " + "".join(f"{s:<13}" for s in SLOTS) + f"{'accuracy':<10}exact")
        for system, comparisons in list(result["per_system"].items()) + [("overall", result["overall"])]:
            figures = comparisons[name]
            cells = "".join(f"{number(figures['per_slot'][s]['accuracy'])}/"
                            f"{number(figures['per_slot'][s]['kappa'])}".ljust(13) for s in SLOTS)
            lines.append(f"{system:<10}{figures['overall']['n']:>5}  {cells}"
                         f"{number(figures['overall']['accuracy']):<10}{number(figures['overall']['exact_match'])}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"

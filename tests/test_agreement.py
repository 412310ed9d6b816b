"""Agreement coefficients against worked examples with published values, plus properties."""
import math
import random
from itertools import permutations

import pytest

from annotation.agreement import (
    LEVELS,
    accuracy,
    cohen_kappa,
    exact_match,
    fleiss_kappa,
    inter_annotator_agreement,
    krippendorff_alpha,
    option_agreement,
    slot_agreement,
)
from hirpf.labels import SLOTS


def two_raters(table):
    """Label lists from a 2x2 table {(a, b): count}."""
    a, b = [], []
    for (x, y), count in table.items():
        a += [x] * count
        b += [y] * count
    return a, b


# --- published worked examples -------------------------------------------------------------------------
def test_cohen_kappa_wikipedia_grant_example():
    # Wikipedia, "Cohen's kappa", simple example: 50 grant proposals, readers A and B; 20 yes/yes,
    # 5 A-yes/B-no, 10 A-no/B-yes, 15 no/no: p_o = 0.7, p_e = 0.5, kappa = 0.4.
    a, b = two_raters({("yes", "yes"): 20, ("yes", "no"): 5, ("no", "yes"): 10, ("no", "no"): 15})
    assert accuracy(a, b) == pytest.approx(0.7)
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_wikipedia_same_agreement_different_kappa():
    # Wikipedia, "Cohen's kappa", same percentages but different numbers: both tables agree on 60 of 100,
    # kappa = 0.1304 for (45, 15, 25, 15) and 0.2593 for (25, 35, 5, 35).
    a, b = two_raters({("yes", "yes"): 45, ("yes", "no"): 15, ("no", "yes"): 25, ("no", "no"): 15})
    assert cohen_kappa(a, b) == pytest.approx(0.1304, abs=5e-5)
    a, b = two_raters({("yes", "yes"): 25, ("yes", "no"): 35, ("no", "yes"): 5, ("no", "no"): 35})
    assert cohen_kappa(a, b) == pytest.approx(0.2593, abs=5e-5)


# Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters each, 5 categories;
# P-bar = 0.378, P-bar_e = 0.213, kappa = 0.210.
FLEISS_TABLE = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]


def test_fleiss_kappa_wikipedia_example():
    items = [[category for category, count in enumerate(row, start=1) for _ in range(count)]
             for row in FLEISS_TABLE]
    assert fleiss_kappa(items) == pytest.approx(0.210, abs=5e-4)
    random.Random(0).shuffle(items)  # neither item order nor rater order within an item matters
    assert fleiss_kappa([sorted(i, reverse=True) for i in items]) == pytest.approx(0.210, abs=5e-4)


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers x 12 units with
# missing values (None); alpha = 0.743 nominal, 0.815 ordinal, 0.849 interval, 0.797 ratio.
N = None
KRIPPENDORFF_2011 = [[1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
                     [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
                     [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
                     [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N]]


@pytest.mark.parametrize("level, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                              ("ratio", 0.797)])
def test_krippendorff_alpha_2011_example(level, published):
    assert krippendorff_alpha(KRIPPENDORFF_2011, level) == pytest.approx(published, abs=5e-4)


def test_krippendorff_nominal_treats_values_as_names():
    names = [[None if v is None else f"code {v}" for v in row] for row in KRIPPENDORFF_2011]
    nan_missing = [[math.nan if v is None else v for v in row] for row in KRIPPENDORFF_2011]
    assert krippendorff_alpha(names) == pytest.approx(krippendorff_alpha(KRIPPENDORFF_2011))
    assert krippendorff_alpha(nan_missing) == pytest.approx(krippendorff_alpha(KRIPPENDORFF_2011))


def test_inter_annotator_agreement_reproduces_the_2011_example():
    # The same reliability data as units -> annotators -> slot dicts.
    annotations = {u: {f"coder {r}": {"AGR": row[u]} for r, row in enumerate(KRIPPENDORFF_2011)
                       if row[u] is not None} for u in range(12)}
    report = inter_annotator_agreement(annotations, slots=("AGR",))
    assert report["per_slot"]["AGR"]["krippendorff_alpha"] == pytest.approx(0.743, abs=5e-4)
    assert report["per_slot"]["AGR"]["cohen_kappa"] is None  # four coders
    assert report["per_slot"]["AGR"]["fleiss_kappa"] is None  # units have 2, 3 or 4 values
    assert report["per_slot"]["AGR"]["n_units"] == 11  # unit 12 has one value: not pairable
    assert report["overall"]["n_annotators"] == 4
    ordinal = inter_annotator_agreement(annotations, slots=("AGR",), level="ordinal")
    assert ordinal["per_slot"]["AGR"]["krippendorff_alpha"] == pytest.approx(0.815, abs=5e-4)


# --- degenerate cases and bad input --------------------------------------------------------------------
def test_one_shared_category_is_undefined_everywhere():
    same = ["high"] * 6
    assert accuracy(same, same) == 1.0
    assert math.isnan(cohen_kappa(same, same))
    assert math.isnan(fleiss_kappa([same[:3], same[3:]]))
    assert math.isnan(krippendorff_alpha([same, same]))
    report = slot_agreement([{"AGR": "high"}] * 3, [{"AGR": "high"}] * 3, slots=("AGR",))
    assert report["per_slot"]["AGR"] == {"accuracy": 1.0, "kappa": None, "alpha": None, "n": 3}
    assert report["overall"]["kappa"] is None and report["overall"]["exact_match"] == 1.0


def test_perfect_agreement_over_several_categories_is_one():
    labels = ["high", "low", "none", "low"]
    assert cohen_kappa(labels, labels) == 1.0
    assert fleiss_kappa([[x, x, x] for x in labels]) == 1.0
    assert krippendorff_alpha([labels, labels, labels]) == 1.0


def test_no_data_is_nan():
    assert math.isnan(accuracy([], []))
    assert math.isnan(cohen_kappa([None], ["x"]))
    assert math.isnan(fleiss_kappa([]))
    assert math.isnan(krippendorff_alpha([[1, None], [None, 2]]))  # no unit has two values


def test_missing_pairs_are_dropped():
    a, b = two_raters({("yes", "yes"): 20, ("yes", "no"): 5, ("no", "yes"): 10, ("no", "no"): 15})
    assert cohen_kappa(a + [None, "yes"], b + ["no", None]) == pytest.approx(0.4)
    assert accuracy(a + [None], b + ["yes"]) == pytest.approx(0.7)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        cohen_kappa(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="item 1 has 2"):
        fleiss_kappa([["a", "b", "a"], ["a", "b"]])
    with pytest.raises(ValueError, match="missing label"):
        fleiss_kappa([["a", "b"], ["a", None]])
    with pytest.raises(ValueError, match="rater 1 has 1"):
        krippendorff_alpha([[1, 2], [1]])
    with pytest.raises(ValueError, match="unknown level"):
        krippendorff_alpha([[1, 2], [1, 2]], level="cardinal")


# --- properties ----------------------------------------------------------------------------------------
def random_labels(rng, n, categories=("high", "low", "none")):
    return [rng.choice(categories) for _ in range(n)]


def test_cohen_kappa_is_symmetric():
    rng = random.Random(1)
    for _ in range(20):
        a, b = random_labels(rng, 30), random_labels(rng, 30)
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa(b, a))


def test_krippendorff_alpha_ignores_rater_and_unit_order():
    rng = random.Random(2)
    data = [[rng.choice([1, 2, 3, None]) for _ in range(15)] for _ in range(3)]
    order = list(range(15))
    rng.shuffle(order)
    for level in LEVELS:
        expected = krippendorff_alpha(data, level)
        for raters in permutations(data):
            shuffled = [[row[u] for u in order] for row in raters]
            assert krippendorff_alpha(shuffled, level) == pytest.approx(expected)


def test_chance_labels_agree_about_zero():
    rng = random.Random(3)
    n = 20000
    a, b, c = (random_labels(rng, n) for _ in range(3))
    assert abs(cohen_kappa(a, b)) < 0.03
    assert abs(fleiss_kappa(list(zip(a, b, c)))) < 0.03
    assert abs(krippendorff_alpha([a, b, c])) < 0.03


def test_alpha_and_fleiss_agree_for_two_raters():
    # With two raters and complete nominal data Fleiss' kappa is Scott's pi, and Krippendorff's alpha
    # is pi corrected for sample size: alpha = pi + (1 - pi) / (2N) (Krippendorff 2011, section B).
    rng = random.Random(4)
    for _ in range(10):
        n = rng.randint(5, 40)
        a, b = random_labels(rng, n), random_labels(rng, n)
        pi = fleiss_kappa(list(zip(a, b)))
        assert krippendorff_alpha([a, b]) == pytest.approx(pi + (1 - pi) / (2 * n))


# --- report helpers ------------------------------------------------------------------------------------
def slots(**values):
    return {s: values.get(s, "none") for s in SLOTS}


def test_slot_agreement_counts_by_slot_and_overall():
    human = [slots(AGR="high"), slots(AGR="low", Profession="Doctor"), slots(CON="high"), None]
    target = [slots(AGR="high"), slots(AGR="low"), slots(CON="low"), slots()]
    report = slot_agreement(human, target)
    assert set(report["per_slot"]) == set(SLOTS)
    assert report["per_slot"]["AGR"] == {"accuracy": 1.0, "kappa": pytest.approx(cohen_kappa(
        ["high", "low", "none"], ["high", "low", "none"])), "alpha": 1.0, "n": 3}
    assert report["per_slot"]["CON"]["alpha"] == pytest.approx(krippendorff_alpha(
        [["none", "none", "high"], ["none", "none", "low"]]))
    assert report["per_slot"]["Profession"]["accuracy"] == pytest.approx(2 / 3)
    assert report["overall"]["n"] == 3  # the item without human labels is dropped
    assert report["overall"]["accuracy"] == pytest.approx(16 / 18)
    assert report["overall"]["exact_match"] == pytest.approx(1 / 3)
    defined = [s["kappa"] for s in report["per_slot"].values() if s["kappa"] is not None]
    assert report["overall"]["kappa"] == pytest.approx(sum(defined) / len(defined))
    alphas = [s["alpha"] for s in report["per_slot"].values() if s["alpha"] is not None]
    assert report["overall"]["alpha"] == pytest.approx(sum(alphas) / len(alphas))


def test_exact_match_skips_unlabelled_slots():
    assert exact_match([{"AGR": "high", "CON": "low"}], [{"AGR": "high", "CON": None}], ("AGR", "CON")) == 1.0
    assert exact_match([{"AGR": "high", "CON": "low"}], [{"AGR": "low", "CON": None}], ("AGR", "CON")) == 0.0


def test_inter_annotator_agreement_picks_the_coefficients_that_apply():
    rng = random.Random(5)

    def labelling():
        return {s: rng.choice(["high", "low", "none"]) if s != "Profession" else rng.choice(["Doctor", "none"])
                for s in SLOTS}
    pair = {u: {"ann": labelling(), "bob": labelling()} for u in range(30)}
    two = inter_annotator_agreement(pair)
    agr = two["per_slot"]["AGR"]
    ann = [pair[u]["ann"]["AGR"] for u in range(30)]
    bob = [pair[u]["bob"]["AGR"] for u in range(30)]
    assert agr["cohen_kappa"] == pytest.approx(cohen_kappa(ann, bob))
    assert agr["fleiss_kappa"] == pytest.approx(fleiss_kappa(list(zip(ann, bob))))
    assert agr["krippendorff_alpha"] == pytest.approx(krippendorff_alpha([ann, bob]))
    assert agr["percent_agreement"] == pytest.approx(accuracy(ann, bob))

    trio = {u: {a: labelling() for a in ("ann", "bob", "cy")} for u in range(30)}
    three = inter_annotator_agreement(trio)
    assert three["per_slot"]["CON"]["cohen_kappa"] is None
    assert three["per_slot"]["CON"]["fleiss_kappa"] == pytest.approx(
        fleiss_kappa([[trio[u][a]["CON"] for a in ("ann", "bob", "cy")] for u in range(30)]))
    assert three["overall"]["n_units"] == 30 and three["overall"]["n_annotators"] == 3

    trio[0].pop("cy")  # one unit with two annotators: Fleiss no longer applies, alpha still does
    uneven = inter_annotator_agreement(trio)
    assert uneven["per_slot"]["CON"]["fleiss_kappa"] is None
    assert uneven["per_slot"]["CON"]["krippendorff_alpha"] is not None


def test_option_agreement_on_scale_answers():
    judge, human = [5, 4, 4, 2, 1, 3], [5, 4, 3, 2, 2, 3]
    report = option_agreement(judge, human)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["mean_abs_diff"] == pytest.approx(2 / 6)
    assert report["ordinal_alpha"] == pytest.approx(krippendorff_alpha([judge, human], "ordinal"))
    assert report["n"] == 6

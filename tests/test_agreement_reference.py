"""Our agreement coefficients against established implementations: Cohen's and Fleiss' kappa against
statsmodels, Krippendorff's alpha against the `krippendorff` package, on the HIS human-evaluation files
(read in place from ../shared/his) and on random data with missing values. They stay ours only while these
agree."""
import math
import random

import krippendorff
import numpy as np
import pytest
from statsmodels.stats.inter_rater import aggregate_raters, cohens_kappa, to_table
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from annotation.agreement import LEVELS, NO_PREDICTION, cohen_kappa, fleiss_kappa, krippendorff_alpha
from annotation.his_import import FILES, OPEN, SCALE, read_his_csv
from hirpf.labels import SLOTS
from hirpf.paths import his_file


# --- the established implementations, fed our label lists --------------------------------------------
def codes(*label_lists):
    """The same labels as integer codes (shared across the lists), None kept as None."""
    names = sorted({x for labels in label_lists for x in labels if x is not None}, key=str)
    index = {name: i for i, name in enumerate(names)}
    return [[None if x is None else index[x] for x in labels] for labels in label_lists]


def statsmodels_cohen(a, b) -> float:
    a, b = codes(a, b)
    pairs = np.array([(x, y) for x, y in zip(a, b) if x is not None and y is not None])
    table, _ = to_table(pairs, bins=np.arange(max(pairs.max() + 2, 2)))
    return cohens_kappa(table, return_results=False)


def statsmodels_fleiss(items) -> float:
    coded = codes(*items)
    counts, _ = aggregate_raters(np.array(coded))
    return sm_fleiss_kappa(counts, method="fleiss")


def package_alpha(data, level: str) -> float:
    if level == "nominal":
        data = codes(*data)
    array = np.array([[np.nan if x is None else float(x) for x in row] for row in data])
    return krippendorff.alpha(reliability_data=array, level_of_measurement=level)


def same(ours: float, reference: float) -> bool:
    if math.isnan(ours) or math.isnan(reference):
        return math.isnan(ours) and math.isnan(reference)
    return ours == pytest.approx(reference, abs=1e-9)


# --- the HIS files ---------------------------------------------------------------------------------------
def his_records(kind):
    path = his_file(FILES[kind])
    if not path.exists():
        pytest.skip(f"HIS data not found at {path}")
    return read_his_csv(path).records


@pytest.fixture(scope="module")
def open_records():
    return his_records(OPEN)


def published_judge(record, slot):
    return NO_PREDICTION if slot in record.judge_missing else record.judge_slots[slot]


@pytest.mark.parametrize("slot", SLOTS)
def test_on_the_his_open_file_per_slot(open_records, slot):
    gpt = [r.judge_slots[slot] for r in open_records]
    gpt_published = [published_judge(r, slot) for r in open_records]
    human = [r.human_slots[slot] for r in open_records]
    target = [r.target_slots[slot] for r in open_records]
    for a, b in ((gpt, human), (gpt_published, human), (human, target), (gpt, target)):
        assert same(cohen_kappa(a, b), statsmodels_cohen(a, b))
        assert same(krippendorff_alpha([a, b]), package_alpha([a, b], "nominal"))
    three = [gpt, human, target]  # three raters of every dialogue
    items = [list(labels) for labels in zip(*three)]
    assert same(fleiss_kappa(items), statsmodels_fleiss(items))
    assert same(krippendorff_alpha(three), package_alpha(three, "nominal"))


def test_on_the_his_scale_file():
    records = his_records(SCALE)
    judge = [r.judge_option for r in records]
    human = [r.human_option for r in records]
    assert len(judge) == 50
    assert same(cohen_kappa(judge, human), statsmodels_cohen(judge, human))
    for level in LEVELS:
        assert same(krippendorff_alpha([judge, human], level), package_alpha([judge, human], level)), level
    items = [[j, h] for j, h in zip(judge, human)]
    assert same(fleiss_kappa(items), statsmodels_fleiss(items))


# --- random data -----------------------------------------------------------------------------------------
def random_ratings(rng: random.Random, raters: int, units: int, categories: int, missing: float, bias: float):
    """Raters who copy a unit's true category with probability `bias`, else guess; some values missing."""
    truth = [rng.randrange(categories) for _ in range(units)]
    return [[None if rng.random() < missing else (t if rng.random() < bias else rng.randrange(categories))
             for t in truth] for _ in range(raters)]


@pytest.mark.parametrize("seed", range(12))
def test_on_random_data(seed):
    rng = random.Random(seed)
    categories, units = rng.choice([2, 3, 5, 7]), rng.choice([8, 30, 200])
    bias = rng.choice([0.0, 0.4, 0.8])
    a, b = random_ratings(rng, 2, units, categories, missing=0.1, bias=bias)
    assert same(cohen_kappa(a, b), statsmodels_cohen(a, b))

    complete = random_ratings(rng, rng.choice([2, 3, 6]), units, categories, missing=0.0, bias=bias)
    items = [list(labels) for labels in zip(*complete)]
    assert same(fleiss_kappa(items), statsmodels_fleiss(items))

    data = random_ratings(rng, rng.choice([2, 3, 5]), units, categories, missing=0.25, bias=bias)
    numeric = [[None if x is None else x + 1 for x in row] for row in data]  # ratio needs positive values
    for level in LEVELS:
        assert same(krippendorff_alpha(numeric, level), package_alpha(numeric, level)), level
    labels = [[None if x is None else f"label-{x}" for x in row] for row in data]  # nominal: any names
    assert same(krippendorff_alpha(labels), package_alpha(labels, "nominal"))

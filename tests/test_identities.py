"""Identity inventory, strict parsing, lenient sanitizing, encodings, combinations and prompt wording."""
from __future__ import annotations

import re

import pytest
import torch

from hirpf.identities import (
    ALIASES,
    ALL_IDENTITIES,
    GROUPS,
    MAX_IDENTITIES,
    PROFESSIONS,
    TRAIT_POLES,
    IdentityError,
    IdentitySet,
    all_combinations,
    canonical_name,
    expert_index,
    label,
)
from hirpf.prompts import (
    NEUTRAL_SYSTEM_MESSAGE,
    Conditioning,
    expert_identities,
    identity_system_message,
    system_message,
)

SEVEN_DISTINCT = ["AGR_high", "CON_high", "EXT_high", "NEU_high", "OPE_high", "Doctor", "Artist"]


# --- inventory ------------------------------------------------------------------------------------
def test_inventory_has_ten_trait_poles_and_three_professions():
    assert len(TRAIT_POLES) == 10
    assert len(set(TRAIT_POLES)) == 10
    assert {p.split("_")[0] for p in TRAIT_POLES} == {"AGR", "CON", "EXT", "NEU", "OPE"}
    assert {p.split("_")[1] for p in TRAIT_POLES} == {"high", "low"}
    assert PROFESSIONS == ("Doctor", "Artist", "Programmer")
    assert ALL_IDENTITIES == TRAIT_POLES + PROFESSIONS
    assert len(ALL_IDENTITIES) == 13
    assert list(GROUPS) == ["traits", "professions"]
    assert GROUPS["traits"] == TRAIT_POLES and GROUPS["professions"] == PROFESSIONS
    assert MAX_IDENTITIES == 6


@pytest.mark.parametrize("name, expected", [
    ("AGR_high", "high agreeableness"),
    ("AGR_low", "low agreeableness"),
    ("CON_high", "high conscientiousness"),
    ("EXT_low", "low extraversion"),
    ("NEU_high", "high neuroticism"),
    ("OPE_low", "low openness"),
    ("Doctor", "a doctor"),
    ("Artist", "an artist"),  # English article: not "a artist"
    ("Programmer", "a programmer"),
    ("agr_HIGH", "high agreeableness"),
    ("EMS_high", "low neuroticism"),
])
def test_labels(name, expected):
    assert label(name) == expected


def test_label_rejects_unknown_name():
    with pytest.raises(IdentityError, match="Nurse"):
        label("Nurse")


@pytest.mark.parametrize("alias, canonical", [
    ("EMS_high", "NEU_low"),
    ("EMS_low", "NEU_high"),
    ("ems_high", "NEU_low"),
    ("EMS_LOW", "NEU_high"),
    ("  Ems_High ", "NEU_low"),
])
def test_ems_aliases_case_insensitive(alias, canonical):
    assert canonical_name(alias) == canonical
    assert IdentitySet.parse([alias]).names == (canonical,)
    assert IdentitySet.parse(alias).names == (canonical,)


def test_alias_table():
    assert ALIASES == {"EMS_high": "NEU_low", "EMS_low": "NEU_high"}


@pytest.mark.parametrize("raw, canonical", [
    ("agr_high", "AGR_high"), ("DOCTOR", "Doctor"), ("programmer", "Programmer"), ("ope_LOW", "OPE_low"),
])
def test_canonical_name_is_case_insensitive(raw, canonical):
    assert canonical_name(raw) == canonical


def test_canonical_name_rejects_unknown_and_names_it():
    with pytest.raises(IdentityError, match="Astronaut"):
        canonical_name("Astronaut")


def test_identity_error_is_a_value_error():
    assert issubclass(IdentityError, ValueError)


# --- strict parse ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [
    '["Doctor", "AGR_high", "OPE_low"]',
    ' ["doctor","agr_high","OPE_LOW"] ',
    "Doctor, AGR_high, OPE_low",
    "Doctor,AGR_high,OPE_low",
    "Doctor AGR_high OPE_low",
    ["Doctor", "AGR_high", "OPE_low"],
    ("OPE_low", "Doctor", "AGR_high"),
    iter(["OPE_low", "AGR_high", "Doctor"]),
    (n for n in ["AGR_high", "Doctor", "OPE_low"]),
])
def test_parse_accepts_json_comma_and_iterables(value):
    s = IdentitySet.parse(value)
    assert s.names == ("AGR_high", "OPE_low", "Doctor")
    assert s.traits == ("AGR_high", "OPE_low")
    assert s.profession == "Doctor"
    assert len(s) == 3


def test_parse_returns_identity_set_unchanged():
    s = IdentitySet.parse("AGR_high")
    assert IdentitySet.parse(s) is s


def test_parse_canonical_order():
    s = IdentitySet.parse(["Programmer", "OPE_high", "NEU_low", "EXT_high", "CON_low", "AGR_low"])
    assert s.names == ("AGR_low", "CON_low", "EXT_high", "NEU_low", "OPE_high", "Programmer")
    assert str(s) == "AGR_low,CON_low,EXT_high,NEU_low,OPE_high,Programmer"
    assert IdentitySet.parse(s.to_json()) == s


def test_equal_sets_in_different_order_are_equal_and_hash_equal():
    a = IdentitySet.parse("Doctor, AGR_high")
    b = IdentitySet.parse(["agr_high", "doctor"])
    assert a == b
    assert hash(a) == hash(b)


@pytest.mark.parametrize("value, expected", [
    ("AGR_high, AGR_high", ("AGR_high",)),
    ("AGR_high, agr_high, AGR_HIGH", ("AGR_high",)),
    (["Doctor", "doctor", "AGR_low"], ("AGR_low", "Doctor")),
    ("NEU_low, EMS_high", ("NEU_low",)),  # alias of the same pole
    ("NEU_high, EMS_low", ("NEU_high",)),  # EMS_low *is* NEU_high: a duplicate, not a conflict
])
def test_parse_duplicates_collapse(value, expected):
    s = IdentitySet.parse(value)
    assert s.names == expected
    assert len(s) == len(expected)


def test_parse_seven_items_with_a_duplicate_is_valid():
    s = IdentitySet.parse(SEVEN_DISTINCT[:6] + ["AGR_high"])
    assert len(s) == 6


@pytest.mark.parametrize("value, offender", [
    ("AGR_high, Nurse", "Nurse"),
    (["Doctor", "EMS_mid"], "EMS_mid"),
    ('["OPE_high", "Pilot"]', "Pilot"),
    ("AGR", "AGR"),
])
def test_parse_rejects_unknown_names(value, offender):
    with pytest.raises(IdentityError, match=re.escape(offender)):
        IdentitySet.parse(value)


@pytest.mark.parametrize("value, names", [
    ("AGR_high, AGR_low", ("AGR_high", "AGR_low")),
    (["CON_low", "Doctor", "CON_high"], ("CON_low", "CON_high")),
    ("NEU_high, EMS_high", ("NEU_high", "NEU_low")),  # EMS_high is NEU_low
    ("EMS_low, NEU_low", ("NEU_high", "NEU_low")),  # EMS_low is NEU_high
    ("EMS_high, EMS_low", ("NEU_low", "NEU_high")),
])
def test_parse_rejects_both_poles_of_a_trait(value, names):
    with pytest.raises(IdentityError) as info:
        IdentitySet.parse(value)
    message = str(info.value)
    for n in names:
        assert n in message
    assert names[0].split("_")[0] in message
    assert "both poles" in message


@pytest.mark.parametrize("value, names", [
    ("Doctor, Artist", ("Doctor", "Artist")),
    (["AGR_high", "programmer", "Doctor"], ("Programmer", "Doctor")),
])
def test_parse_rejects_two_professions(value, names):
    with pytest.raises(IdentityError) as info:
        IdentitySet.parse(value)
    message = str(info.value)
    for n in names:
        assert n in message
    assert "profession" in message


def test_parse_rejects_more_than_six_identities():
    with pytest.raises(IdentityError) as info:
        IdentitySet.parse(SEVEN_DISTINCT)
    message = str(info.value)
    assert "7" in message
    assert "6" in message
    for n in SEVEN_DISTINCT:
        assert n in message


def test_direct_construction_validates_too():
    with pytest.raises(IdentityError):
        IdentitySet(("AGR_high", "AGR_low"))
    with pytest.raises(IdentityError):
        IdentitySet(("Doctor", "Artist"))
    assert IdentitySet(("Doctor", "AGR_high")).names == ("AGR_high", "Doctor")


@pytest.mark.parametrize("value", ['["AGR_high", ', '{"a": 1}', '["AGR_high", 3]', ["AGR_high", 3]])
def test_parse_rejects_malformed_input(value):
    with pytest.raises(IdentityError):
        IdentitySet.parse(value)


@pytest.mark.parametrize("value", [None, "", "   ", "[]", [], (), iter([])])
def test_empty_set_is_valid(value):
    s = IdentitySet.parse(value)
    assert len(s) == 0
    assert s == IdentitySet()
    assert s.traits == () and s.profession is None
    assert "plain base model" in s.describe()
    assert not bool(s.active_vector().any())
    assert torch.equal(s.index_pairs(), torch.full((6, 2), -1, dtype=torch.long))


def test_describe():
    assert IdentitySet.parse("Doctor").describe() == "a doctor"
    assert IdentitySet.parse("AGR_high").describe() == "a person with high agreeableness"
    assert IdentitySet.parse("OPE_low, Doctor, AGR_high").describe() == \
        "a doctor with high agreeableness and low openness"
    assert IdentitySet.parse("AGR_high, CON_low, EXT_high").describe() == \
        "a person with high agreeableness, low conscientiousness and high extraversion"


# --- lenient sanitize -----------------------------------------------------------------------------
def test_sanitize_removes_duplicates():
    report = IdentitySet.sanitize("AGR_high, Doctor, agr_high, EMS_high, NEU_low")
    assert report.identities.names == ("AGR_high", "NEU_low", "Doctor")
    assert report.dropped == (("agr_high", "duplicate"), ("NEU_low", "duplicate"))


def test_sanitize_keeps_the_later_of_two_opposing_poles():
    report = IdentitySet.sanitize("AGR_high, Doctor, AGR_low")
    assert report.identities.names == ("AGR_low", "Doctor")
    assert len(report.dropped) == 1
    name, reason = report.dropped[0]
    assert name == "AGR_high"
    assert "AGR_low" in reason


def test_sanitize_later_pole_wins_via_alias_and_repeatedly():
    assert IdentitySet.sanitize("NEU_high, EMS_high").identities.names == ("NEU_low",)
    assert IdentitySet.sanitize("EMS_high, NEU_high").identities.names == ("NEU_high",)
    report = IdentitySet.sanitize("CON_high, CON_low, CON_high")
    assert report.identities.names == ("CON_high",)
    assert len(report.dropped) == 2


def test_sanitize_keeps_the_first_profession():
    report = IdentitySet.sanitize("Artist, OPE_high, Doctor, Programmer")
    assert report.identities.names == ("OPE_high", "Artist")
    assert [n for n, _ in report.dropped] == ["Doctor", "Programmer"]
    for _, reason in report.dropped:
        assert "profession" in reason and "Artist" in reason


def test_sanitize_drops_unknown_names():
    report = IdentitySet.sanitize(["Nurse", "AGR_high", "EMS_mid"])
    assert report.identities.names == ("AGR_high",)
    assert report.dropped == (("Nurse", "unknown identity"), ("EMS_mid", "unknown identity"))


def test_sanitize_reports_every_dropped_input_with_a_reason():
    raw = ["Nurse", "EXT_low", "Doctor", "ext_high", "Programmer", "Doctor", "OPE_low"]
    report = IdentitySet.sanitize(raw)
    assert report.identities.names == ("EXT_high", "OPE_low", "Doctor")
    assert len(report.identities) + len(report.dropped) == len(raw)
    reasons = dict(report.dropped)
    assert set(reasons) == {"Nurse", "EXT_low", "Programmer", "Doctor"}
    assert reasons["Nurse"] == "unknown identity"
    assert "EXT_high" in reasons["EXT_low"]
    assert "profession" in reasons["Programmer"]
    assert reasons["Doctor"] == "duplicate"
    assert all(reason for _, reason in report.dropped)


def test_sanitize_report_describe_mentions_dropped_names():
    report = IdentitySet.sanitize("Nurse, AGR_high, AGR_low, Doctor, Artist")
    text = report.describe()
    assert "dropped" in text
    for name in ("Nurse", "AGR_high", "Artist"):
        assert name in text
    assert report.identities.describe() in text


def test_sanitize_report_describe_without_drops():
    report = IdentitySet.sanitize("Doctor")
    assert report.dropped == ()
    assert "dropped" not in report.describe()
    assert "a doctor" in report.describe()


def test_sanitize_result_always_valid():
    messy = ["Doctor", "AGR_high", "AGR_low", "Artist", "CON_high", "CON_low", "EXT_high", "NEU_high",
             "EMS_high", "OPE_high", "OPE_low", "Programmer", "Nurse", "doctor"]
    report = IdentitySet.sanitize(messy)
    s = report.identities
    assert IdentitySet.parse(list(s)) == s
    assert len(s) == 6
    assert s.names == ("AGR_low", "CON_low", "EXT_high", "NEU_low", "OPE_low", "Doctor")


@pytest.mark.parametrize("value", [None, "", []])
def test_sanitize_empty(value):
    report = IdentitySet.sanitize(value)
    assert len(report.identities) == 0 and report.dropped == ()


# --- encodings ------------------------------------------------------------------------------------
def test_expert_index():
    assert expert_index("AGR_high") == (0, 0)
    assert expert_index("AGR_low") == (0, 1)
    assert expert_index("OPE_low") == (0, 9)
    assert expert_index("EMS_high") == (0, TRAIT_POLES.index("NEU_low"))
    assert expert_index("Doctor") == (1, 0)
    assert expert_index("Programmer") == (1, 2)


def test_index_pairs_shape_dtype_and_padding():
    s = IdentitySet.parse("Programmer, OPE_low, AGR_high")
    pairs = s.index_pairs()
    assert pairs.dtype == torch.long
    assert tuple(pairs.shape) == (6, 2)
    expected = torch.tensor([[0, 0], [0, 9], [1, 2], [-1, -1], [-1, -1], [-1, -1]], dtype=torch.long)
    assert torch.equal(pairs, expected)


def test_index_pairs_full_set_has_no_padding():
    s = IdentitySet.parse("AGR_low, CON_high, EXT_low, NEU_high, OPE_high, Artist")
    pairs = s.index_pairs()
    assert bool((pairs >= 0).all())
    assert [tuple(r) for r in pairs.tolist()] == [expert_index(n) for n in s.names]


def test_from_index_pairs_ignores_padding_and_accepts_lists():
    assert IdentitySet.from_index_pairs([[1, 0], [-1, -1], [0, 3]]).names == ("CON_low", "Doctor")
    assert IdentitySet.from_index_pairs(torch.full((6, 2), -1)) == IdentitySet()


def test_from_index_pairs_validates():
    with pytest.raises(IdentityError):
        IdentitySet.from_index_pairs([[0, 0], [0, 1], [-1, -1]])


def test_index_pairs_round_trip_every_combination():
    for s in all_combinations():
        pairs = s.index_pairs()
        assert tuple(pairs.shape) == (6, 2) and pairs.dtype == torch.long
        real = [tuple(r) for r in pairs.tolist() if r[0] >= 0]
        assert real == [expert_index(n) for n in s.names]
        assert pairs.tolist()[len(s):] == [[-1, -1]] * (6 - len(s))
        assert IdentitySet.from_index_pairs(pairs) == s


def test_mask_rows():
    s = IdentitySet.parse("CON_low, Artist")
    rows = s.mask_rows()
    assert set(rows) == {"traits", "professions"}
    assert rows["traits"].dtype == torch.bool and rows["professions"].dtype == torch.bool
    assert tuple(rows["traits"].shape) == (10,) and tuple(rows["professions"].shape) == (3,)
    assert rows["traits"].tolist() == [p == "CON_low" for p in TRAIT_POLES]
    assert rows["professions"].tolist() == [False, True, False]
    empty = IdentitySet().mask_rows()
    assert not bool(empty["traits"].any()) and not bool(empty["professions"].any())


def test_active_vector():
    s = IdentitySet.parse("AGR_high, NEU_low, Programmer")
    v = s.active_vector()
    assert v.dtype == torch.bool
    assert tuple(v.shape) == (13,)
    assert [ALL_IDENTITIES[i] for i in v.nonzero().flatten().tolist()] == ["AGR_high", "NEU_low", "Programmer"]
    rows = s.mask_rows()
    assert torch.equal(v, torch.cat([rows["traits"], rows["professions"]]))


# --- all combinations -----------------------------------------------------------------------------
def test_all_combinations():
    combos = list(all_combinations())
    assert len(combos) == 971 == 3 ** 5 * 4 - 1
    assert len(set(combos)) == 971
    assert len({c.names for c in combos}) == 971
    assert all(len(c) >= 1 for c in combos)
    assert max(len(c) for c in combos) == 6
    assert sum(1 for c in combos if len(c) == 6) == 2 ** 5 * 3
    assert sum(1 for c in combos if len(c) == 1) == 13
    for c in combos:
        assert IdentitySet.parse(list(c)) == c  # strict parse accepts every one
        assert IdentitySet.sanitize(list(c)).dropped == ()
    assert list(all_combinations()) == combos  # stable order


# --- prompts --------------------------------------------------------------------------------------
def _template(message: str, s: IdentitySet) -> str:
    """The message with the identity words blanked, to compare wording shapes."""
    for n in s.names:
        message = message.replace(label(n), "<X>")
    return message


def test_identity_system_message_three_shapes():
    traits = IdentitySet.parse("AGR_high, OPE_low")
    profession = IdentitySet.parse("Doctor")
    both = IdentitySet.parse("AGR_high, OPE_low, Doctor")
    m_traits, m_prof, m_both = (identity_system_message(s) for s in (traits, profession, both))
    assert "high agreeableness" in m_traits and "low openness" in m_traits and "doctor" not in m_traits
    assert "a doctor" in m_prof and "agreeableness" not in m_prof and "openness" not in m_prof
    assert "a doctor" in m_both and "high agreeableness" in m_both and "low openness" in m_both
    assert len({m_traits, m_prof, m_both}) == 3
    shapes = {_template(m_traits, traits), _template(m_prof, profession), _template(m_both, both)}
    assert len(shapes) == 3
    for m in (m_traits, m_prof, m_both):
        assert m != NEUTRAL_SYSTEM_MESSAGE


def test_identity_system_message_empty_is_neutral():
    assert identity_system_message(IdentitySet()) == NEUTRAL_SYSTEM_MESSAGE


def test_identity_system_message_names_every_label_and_no_codes():
    codes = list(ALL_IDENTITIES) + list(ALIASES) + ["AGR", "CON", "EXT", "NEU", "OPE", "_high", "_low"]
    for s in all_combinations():
        message = identity_system_message(s)
        for n in s.names:
            assert label(n) in message
        for code in codes:
            assert code not in message, (s, code, message)


@pytest.mark.parametrize("value, expected", [
    ("experts+prompt", Conditioning.EXPERTS_AND_PROMPT),
    ("experts", Conditioning.EXPERTS),
    ("prompt", Conditioning.PROMPT),
    (Conditioning.PROMPT, Conditioning.PROMPT),
])
def test_conditioning_parse(value, expected):
    assert Conditioning.parse(value) is expected


@pytest.mark.parametrize("value", ["bogus", "Experts", "expert", "", "experts + prompt"])
def test_conditioning_parse_rejects_unknown_modes(value):
    with pytest.raises(ValueError) as info:
        Conditioning.parse(value)
    message = str(info.value)
    assert repr(value) in message
    for choice in ("experts+prompt", "experts", "prompt"):
        assert choice in message


def test_conditioning_flags():
    assert Conditioning.EXPERTS_AND_PROMPT.uses_experts and Conditioning.EXPERTS_AND_PROMPT.uses_prompt
    assert Conditioning.EXPERTS.uses_experts and not Conditioning.EXPERTS.uses_prompt
    assert not Conditioning.PROMPT.uses_experts and Conditioning.PROMPT.uses_prompt


def test_expert_identities_per_mode():
    s = IdentitySet.parse("EXT_high, Programmer")
    assert expert_identities(s, Conditioning.PROMPT) == IdentitySet()
    assert len(expert_identities(s, Conditioning.PROMPT)) == 0
    assert expert_identities(s, Conditioning.EXPERTS) == s
    assert expert_identities(s, Conditioning.EXPERTS_AND_PROMPT) == s


def test_system_message_per_mode():
    s = IdentitySet.parse("EXT_high, Programmer")
    assert system_message(s, Conditioning.EXPERTS) == NEUTRAL_SYSTEM_MESSAGE
    assert system_message(s, Conditioning.PROMPT) == identity_system_message(s)
    assert system_message(s, Conditioning.EXPERTS_AND_PROMPT) == identity_system_message(s)
    assert system_message(s, Conditioning.PROMPT) != NEUTRAL_SYSTEM_MESSAGE
    assert "a programmer" in system_message(s, Conditioning.PROMPT)
    assert "programmer" not in system_message(s, Conditioning.EXPERTS)
    for mode in Conditioning:
        assert system_message(IdentitySet(), mode) == NEUTRAL_SYSTEM_MESSAGE


def test_profession_article_in_prompt_and_describe():
    s = IdentitySet.parse("Artist")
    assert "You are an artist." in identity_system_message(s)
    assert IdentitySet.parse("Artist, OPE_high").describe() == "an artist with high openness"


def test_single_edit_neighbours():
    from hirpf.identities import single_edit_neighbours

    around = {str(s) for s in single_edit_neighbours(IdentitySet.parse("AGR_high,OPE_low,Doctor"))}
    assert around == {"AGR_low,OPE_low,Doctor", "AGR_high,OPE_high,Doctor", "AGR_high,OPE_low,Artist",
                      "AGR_high,OPE_low,Programmer", "AGR_high,OPE_low"}
    with_removals = {str(s) for s in single_edit_neighbours(IdentitySet.parse("EXT_low"), remove_poles=True)}
    assert with_removals == {"EXT_high", "(none)"}
    assert {str(s) for s in single_edit_neighbours(IdentitySet.parse("Artist"))} == {"Doctor", "Programmer", "(none)"}


def test_index_pairs_become_routing_rows():
    import torch

    from hirpf.routing import active_from_pairs

    sets = list(all_combinations()) + [IdentitySet()]
    pairs = torch.stack([s.index_pairs() for s in sets])
    assert torch.equal(active_from_pairs(pairs), torch.stack([s.active_vector() for s in sets]))

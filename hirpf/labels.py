"""What annotators and LLM judges label: the HIS human-evaluation schema, shared by the simulators
(`hirpf.eval`) and the human evaluation (`annotation`).

A dialogue gets six slots: one per Big Five trait (`high`, `low` or `none`: the agent shows that pole, the
other one, or neither) and one for the profession (`Doctor`, `Artist`, `Programmer` or `none`). Scale
interviews (and the questionnaire judges) answer with one of five options instead. Slot values convert to
and from identity sets, so targets, human labels and judge predictions are compared in one vocabulary.
"""
from __future__ import annotations

from typing import Mapping

from .identities import ALIASES, PROFESSIONS, TRAITS, IdentitySet

PROFESSION_SLOT = "Profession"
SLOTS = TRAITS + (PROFESSION_SLOT,)
NONE = "none"
TRAIT_LABELS = ("high", "low", NONE)
PROFESSION_LABELS = PROFESSIONS + (NONE,)
# How accurately a statement describes the agent, options 1-5 (scale interviews, questionnaire judges).
SCALE_OPTIONS = ("very inaccurate", "moderately inaccurate", "neither accurate nor inaccurate",
                 "moderately accurate", "very accurate")
# Slot names the HIS files spell otherwise. Their `EMS` slot is read through the identity alias table
# (`hirpf.identities.ALIASES`: EMS_high is NEU_low), so the poles flip exactly as identity names do.
_ALIASED_TRAITS = {name.split("_")[0]: ALIASES[name].split("_")[0] for name in ALIASES}


class LabelError(ValueError):
    """A slot or label outside the schema."""


def allowed_labels(slot: str) -> tuple[str, ...]:
    return PROFESSION_LABELS if slot == PROFESSION_SLOT else TRAIT_LABELS


def normalize_slots(values: Mapping[str, object]) -> dict[str, str]:
    """Check and canonicalize a labelling: every slot present exactly once, each with an allowed label.

    Accepts the HIS spellings (`EMS` for the fifth factor with its poles flipped, `None`/empty for none,
    any case) and returns `{slot: label}` in `SLOTS` order. Raises `LabelError` naming what is wrong."""
    out: dict[str, str] = {}
    for key, value in values.items():
        slot = slot_name(key)
        if slot in out:
            raise LabelError(f"slot {slot} given twice")
        label = _label(slot, value)
        name = str(key).upper()
        if name in _ALIASED_TRAITS and label != NONE:
            label = ALIASES[f"{name}_{label}"].split("_")[1]
        out[slot] = label
    missing = [s for s in SLOTS if s not in out]
    if missing:
        raise LabelError(f"missing slot(s): {', '.join(missing)}")
    return {s: out[s] for s in SLOTS}


def slot_name(key: object) -> str:
    """The slot a key names, in any case (`agr` -> AGR, the HIS `EMS` -> NEU); `LabelError` if none."""
    name = str(key).upper()
    slot = name if name in TRAITS else _ALIASED_TRAITS.get(name) or (
        PROFESSION_SLOT if name == PROFESSION_SLOT.upper() else None)
    if slot is None:
        raise LabelError(f"unknown slot {key!r}; slots are {', '.join(SLOTS)}")
    return slot


def _label(slot: str, value: object) -> str:
    text = NONE if value is None else str(value).strip()
    if text in ("", "None", "null"):
        text = NONE
    allowed = allowed_labels(slot)
    for option in allowed:
        if text.lower() == option.lower():
            return option
    raise LabelError(f"{slot}: unknown label {value!r}; expected one of {', '.join(allowed)}")


def slots_from_identities(identities: IdentitySet) -> dict[str, str]:
    """The labelling a perfect annotator would give an agent with these identities."""
    slots = {t: NONE for t in TRAITS}
    for name in identities.traits:
        trait, pole = name.split("_")
        slots[trait] = pole
    slots[PROFESSION_SLOT] = identities.profession or NONE
    return slots


def identities_from_slots(values: Mapping[str, object]) -> IdentitySet:
    slots = normalize_slots(values)
    names = [f"{t}_{slots[t]}" for t in TRAITS if slots[t] != NONE]
    if slots[PROFESSION_SLOT] != NONE:
        names.append(slots[PROFESSION_SLOT])
    return IdentitySet.parse(names)


def scale_option(value: object) -> int:
    """A scale-interview answer as 1..5 (from the option text, any case, or the number itself)."""
    text = str(value).strip().lower()
    for i, option in enumerate(SCALE_OPTIONS, start=1):
        if text in (option, str(i)):
            return i
    raise LabelError(f"unknown scale option {value!r}; expected 1-5 or one of: {'; '.join(SCALE_OPTIONS)}")

"""Identity inventory, the immutable `IdentitySet`, its rules and encodings.

Two expert groups, in this fixed order (the HIS training format indexes them this way):

    group 0  traits       AGR_high AGR_low CON_high CON_low EXT_high EXT_low NEU_high NEU_low OPE_high OPE_low
    group 1  professions  Doctor Artist Programmer

Rules: at most one pole per trait, at most one profession, so at most six identities. The empty set is
valid and means the plain base model. 3^5 * 4 - 1 = 971 non-empty sets.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

if TYPE_CHECKING:  # the encodings import torch when called: the app's page imports this module before torch
    import torch

TRAITS = ("AGR", "CON", "EXT", "NEU", "OPE")
TRAIT_WORDS = {
    "AGR": "agreeableness",
    "CON": "conscientiousness",
    "EXT": "extraversion",
    "NEU": "neuroticism",
    "OPE": "openness",
}
TRAIT_POLES = tuple(f"{t}_{p}" for t in TRAITS for p in ("high", "low"))
PROFESSIONS = ("Doctor", "Artist", "Programmer")
GROUPS = {"traits": TRAIT_POLES, "professions": PROFESSIONS}
GROUP_NAMES = tuple(GROUPS)
ALL_IDENTITIES = TRAIT_POLES + PROFESSIONS
MAX_IDENTITIES = len(TRAITS) + 1
# The public HIS data names the fifth factor emotional stability: EMS_high is low neuroticism.
ALIASES = {"EMS_high": "NEU_low", "EMS_low": "NEU_high"}
# A chosen identity's strength scales its expert's mixed contribution: 0 = off (the prompt alone), 1 = as
# trained, 2 = doubled. Outside that range the experts leave the region they were trained in.
MIN_STRENGTH, MAX_STRENGTH, DEFAULT_STRENGTH = 0.0, 2.0, 1.0

_CANONICAL_ORDER = {name: i for i, name in enumerate(ALL_IDENTITIES)}
_LOWER = {name.lower(): name for name in ALL_IDENTITIES} | {a.lower(): c for a, c in ALIASES.items()}


class IdentityError(ValueError):
    """An identity name or combination that breaks the rules; the message names the offender."""


def canonical_name(name: str) -> str:
    """Map an input name (any case, EMS aliases) to its inventory name, or raise naming it."""
    key = str(name).strip().lower()
    if key not in _LOWER:
        raise IdentityError(
            f"unknown identity {name!r}; known: {', '.join(ALL_IDENTITIES)} (and aliases {', '.join(ALIASES)})"
        )
    return _LOWER[key]


def trait_of(name: str) -> str | None:
    """'AGR' for 'AGR_high'; None for a profession."""
    return name.split("_")[0] if name in TRAIT_POLES else None


def label(name: str) -> str:
    """Human-readable label: 'high agreeableness', 'a doctor'."""
    name = canonical_name(name)
    if name in PROFESSIONS:
        article = "an" if name[0] in "AEIOU" else "a"
        return f"{article} {name.lower()}"
    trait, pole = name.split("_")
    return f"{pole} {TRAIT_WORDS[trait]}"


def expert_index(name: str) -> tuple[int, int]:
    """(group, expert) indices of an identity, as in the HIS `[6, 2]` encoding."""
    name = canonical_name(name)
    for g, members in enumerate(GROUPS.values()):
        if name in members:
            return g, members.index(name)
    raise AssertionError(name)  # unreachable: canonical_name validated it


@dataclass(frozen=True)
class SanitizeReport:
    """What `IdentitySet.sanitize` kept and dropped, with a reason per dropped input."""

    identities: "IdentitySet"
    dropped: tuple[tuple[str, str], ...]  # (input name, reason)

    def describe(self) -> str:
        kept = self.identities.describe()
        if not self.dropped:
            return f"identities: {kept}"
        why = "; ".join(f"{name}: {reason}" for name, reason in self.dropped)
        return f"identities: {kept} (dropped {why})"


@dataclass(frozen=True)
class IdentitySet:
    """An immutable, valid set of identities, stored in canonical inventory order, each with a strength
    (`DEFAULT_STRENGTH` unless set; `strengths` holds only the others, so equal sets compare equal)."""

    names: tuple[str, ...] = ()
    strengths: tuple[tuple[str, float], ...] = ()  # (name, strength) for identities not at the default

    def __post_init__(self):
        # Construction always validates, so every IdentitySet in the program obeys the rules.
        checked = _check(self.names)
        object.__setattr__(self, "names", checked)
        object.__setattr__(self, "strengths", _check_strengths(checked, self.strengths))

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def parse(cls, value: "str | Iterable[str] | IdentitySet | None") -> "IdentitySet":
        """Strict: reject unknown names, opposing poles, two professions, more than six identities."""
        if isinstance(value, IdentitySet):
            return value
        return cls(tuple(_split_names(value)))

    @classmethod
    def sanitize(cls, value: "str | Iterable[str] | IdentitySet | None") -> SanitizeReport:
        """Lenient: drop unknown names and duplicates, keep the later of two opposing poles and the first
        profession; report every dropped input with its reason."""
        dropped: list[tuple[str, str]] = []
        kept: list[str] = []
        typed: dict[str, str] = {}  # canonical name -> as the user typed it, for the report
        for raw in _split_names(value):
            try:
                name = canonical_name(raw)
            except IdentityError:
                dropped.append((raw, "unknown identity"))
                continue
            if name in kept:
                dropped.append((raw, "duplicate"))
                continue
            trait = trait_of(name)
            if trait is not None:
                rival = next((k for k in kept if trait_of(k) == trait), None)
                if rival is not None:
                    kept.remove(rival)
                    dropped.append((typed[rival], f"overridden by the later {name}"))
            elif any(k in PROFESSIONS for k in kept):
                first = next(k for k in kept if k in PROFESSIONS)
                dropped.append((raw, f"only one profession allowed, kept {first}"))
                continue
            kept.append(name)
            typed[name] = raw
        return SanitizeReport(cls(tuple(kept)), tuple(dropped))

    def with_strengths(self, strengths: "dict[str, float] | str | float | None",
                       ignore_absent: bool = False) -> "IdentitySet":
        """This set with the given strengths: a mapping, text like `AGR_low=1.6,Doctor=0.5`, or one number for
        every identity of the set (`1.5`); identities not named keep theirs. A strength outside [0, 2] is an
        error, and so is naming an identity outside the set unless `ignore_absent` (one setting applied to
        many sets, as the evaluations do)."""
        if strengths is None or strengths == "" or strengths == {}:
            return self
        if isinstance(strengths, (int, float)) or (isinstance(strengths, str) and "=" not in strengths):
            given = {n: _strength_number(strengths, "every identity") for n in self.names}
        elif isinstance(strengths, str):
            given = parse_strengths(strengths)
        else:
            given = {canonical_name(k): v for k, v in strengths.items()}
        if ignore_absent:
            given = {k: v for k, v in given.items() if k in self.names}
        merged = dict(self.strengths) | given
        return IdentitySet(self.names, tuple(merged.items()))

    def strength(self, name: str) -> float:
        return dict(self.strengths).get(canonical_name(name), DEFAULT_STRENGTH)

    @classmethod
    def from_index_pairs(cls, pairs) -> "IdentitySet":
        """Inverse of `index_pairs`: rows of (group, expert), `[-1, -1]` rows ignored."""
        import torch

        names = []
        for g, e in torch.as_tensor(pairs).tolist():
            if g < 0:
                continue
            members = list(GROUPS.values())[g]
            names.append(members[e])
        return cls(tuple(names))

    # --- views --------------------------------------------------------------------------------
    @property
    def traits(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n in TRAIT_POLES)

    @property
    def profession(self) -> str | None:
        return next((n for n in self.names if n in PROFESSIONS), None)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __str__(self) -> str:
        """`AGR_low,Doctor`; a strength other than 1 follows its name: `AGR_low=1.6,Doctor`."""
        if not self.names:
            return "(none)"
        strengths = dict(self.strengths)
        return ",".join(f"{n}={_number(strengths[n])}" if n in strengths else n for n in self.names)

    def describe(self) -> str:
        """Words for people: 'a doctor with high agreeableness and low openness'."""
        if not self.names:
            return "no identity (plain base model)"
        described = self._describe_names()
        if not self.strengths:
            return described
        return described + " (strength " + ", ".join(f"{n} {_number(s)}" for n, s in self.strengths) + ")"

    def _describe_names(self) -> str:
        traits = _join_words([label(t) for t in self.traits])
        if self.profession and traits:
            return f"{label(self.profession)} with {traits}"
        return label(self.profession) if self.profession else f"a person with {traits}"

    # --- encodings ----------------------------------------------------------------------------
    def index_pairs(self) -> torch.Tensor:
        """The HIS training format: a `[6, 2]` long tensor of (group, expert), padded with `[-1, -1]`."""
        import torch

        rows = [expert_index(n) for n in self.names]
        rows += [(-1, -1)] * (MAX_IDENTITIES - len(rows))
        return torch.tensor(rows, dtype=torch.long)

    def mask_rows(self) -> dict[str, torch.Tensor]:
        """One boolean row per group: True where that group's expert is chosen."""
        import torch

        return {g: torch.tensor([m in self.names for m in members]) for g, members in GROUPS.items()}

    def active_vector(self) -> torch.Tensor:
        """A boolean vector over all 13 experts in inventory order (the mask rows concatenated)."""
        import torch

        return torch.tensor([n in self.names for n in ALL_IDENTITIES])

    def strength_vector(self) -> torch.Tensor:
        """Each of the 13 experts' strength in inventory order (the default for identities not chosen)."""
        import torch

        strengths = dict(self.strengths)
        return torch.tensor([strengths.get(n, DEFAULT_STRENGTH) for n in ALL_IDENTITIES], dtype=torch.float64)

    def to_json(self) -> str:
        return json.dumps(list(self.names))


def _check(names: Sequence[str]) -> tuple[str, ...]:
    distinct = list(dict.fromkeys(canonical_name(raw) for raw in names))
    if len(distinct) > MAX_IDENTITIES:
        raise IdentityError(
            f"{len(distinct)} identities given ({', '.join(distinct)}); at most {MAX_IDENTITIES} are allowed"
        )
    canonical: list[str] = []
    for raw in names:
        name = canonical_name(raw)
        if name in canonical:
            continue  # the same identity twice is still one identity
        trait = trait_of(name)
        rival = next((c for c in canonical if trait is not None and trait_of(c) == trait), None)
        if rival is not None:
            raise IdentityError(f"both poles of {trait} given ({rival} and {name}): choose at most one per trait")
        if name in PROFESSIONS and any(c in PROFESSIONS for c in canonical):
            other = next(c for c in canonical if c in PROFESSIONS)
            raise IdentityError(f"more than one profession ({other} and {name}): choose at most one")
        canonical.append(name)
    return tuple(sorted(canonical, key=_CANONICAL_ORDER.__getitem__))


def _check_strengths(names: tuple[str, ...], strengths) -> tuple[tuple[str, float], ...]:
    checked = {}
    for name, value in (strengths.items() if isinstance(strengths, dict) else strengths):
        name = canonical_name(name)
        if name not in names:
            raise IdentityError(f"a strength is given for {name}, which is not in the set "
                                f"({','.join(names) or 'empty'})")
        checked[name] = _strength_in_range(value, name)
    return tuple((n, checked[n]) for n in names if n in checked and checked[n] != DEFAULT_STRENGTH)


def parse_strengths(text: str) -> dict[str, float]:
    """`AGR_low=1.6,Doctor=0.5` as `{name: strength}` (names canonical; ranges are checked by the set)."""
    out = {}
    for part in str(text).replace(";", ",").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise IdentityError(f"strength {part.strip()!r} must look like NAME=NUMBER (e.g. AGR_low=1.6)")
        out[canonical_name(name)] = _strength_number(value.strip(), name.strip())
    return out


def check_strength_setting(value: "str | float | None") -> None:
    """Refuse a strength setting (one number, or `NAME=NUMBER,...`) whose names or numbers are wrong, before
    it is applied to any set."""
    if value is None or value == "":
        return
    given = parse_strengths(value) if isinstance(value, str) and "=" in value else {"every identity": value}
    for name, number in given.items():
        _strength_in_range(number, name)


def _strength_in_range(value, what: str) -> float:
    value = _strength_number(value, what)
    if not MIN_STRENGTH <= value <= MAX_STRENGTH:  # also refuses NaN
        raise IdentityError(f"the strength of {what} must be between {_number(MIN_STRENGTH)} and "
                            f"{_number(MAX_STRENGTH)}, got {value!r}")
    return value


def _strength_number(value, what: str) -> float:
    """A number (text such as "1.5" too); `True`/`False` are refused (not a strength anyone means), and -0
    becomes 0 (one set, one key: `Routing.key` compares the bytes)."""
    if isinstance(value, bool):
        raise IdentityError(f"the strength of {what} must be a number, got {value!r}")
    try:
        return float(value) + 0.0
    except (TypeError, ValueError):
        raise IdentityError(f"the strength of {what} must be a number, got {value!r}") from None


def _number(value: float) -> str:
    return f"{value:g}"


def _split_names(value) -> list[str]:
    """Accept None, a JSON list string, a comma/space separated string, or an iterable of names."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as err:
                raise IdentityError(f"identity list {text!r} is not valid JSON: {err.msg}") from None
            if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
                raise IdentityError(f"identity list {text!r} must be a JSON list of names")
            return parsed
        return [part for part in text.replace(",", " ").split() if part]
    names = list(value)
    for n in names:
        if not isinstance(n, str):
            raise IdentityError(f"identity names must be strings, got {n!r}")
    return names


def _join_words(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def all_combinations() -> Iterator[IdentitySet]:
    """Every non-empty valid identity set (971 of them), in a stable order."""
    per_trait = [(None, f"{t}_high", f"{t}_low") for t in TRAITS]
    for choice in itertools.product(*per_trait, (None,) + PROFESSIONS):
        names = tuple(c for c in choice if c is not None)
        if names:
            yield IdentitySet(names)


def single_poles() -> list[IdentitySet]:
    """The ten one-pole sets."""
    return [IdentitySet((p,)) for p in TRAIT_POLES]


def single_edit_neighbours(identities: IdentitySet, remove_poles: bool = False) -> list[IdentitySet]:
    """Sets one edit away: each pole flipped, the profession changed or removed (and, with `remove_poles`,
    each pole removed). Used to test whether a model prefers the true set over its near misses."""
    out = []
    for name in identities.traits:
        trait, pole = name.split("_")
        flipped = f"{trait}_{'low' if pole == 'high' else 'high'}"
        out.append(IdentitySet(tuple(n if n != name else flipped for n in identities.names)))
        if remove_poles:
            out.append(IdentitySet(tuple(n for n in identities.names if n != name)))
    if identities.profession:
        for other in PROFESSIONS:
            if other != identities.profession:
                out.append(IdentitySet(identities.traits + (other,)))
        out.append(IdentitySet(identities.traits))
    return [s for s in dict.fromkeys(out) if s != identities]

"""Questionnaire scales: our native JSON format and the two public HIS formats, read into one `Scale`.

Native (ours, documented in docs/evaluation.md):

    {"name": "...", "kind": "personality", "items": [{"text": "I ...", "factor": "EXT", "keyed": "+"}, ...]}
    {"name": "...", "kind": "profession",  "items": [{"text": "I ...", "profession": "Doctor"}, ...]}

HIS (read unchanged, detected by their keys):

    personality: [{"factor": "Extraversion", "polarity": "pos" | "neg", "content": "..."}, ...]
    profession:  [{"question": "...", "profession": "Doctor"}, ...]

The HIS personality file calls its fifth factor "Neuroticism" but keys it toward emotional stability: a
`pos` item there describes calm, so it speaks for NEU_low. The loader therefore flips the keying of that
factor; in our own format `factor: "NEU"` with `keyed: "+"` means more neuroticism, as the name says.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .identities import PROFESSIONS, TRAITS
from .paths import read_json_file

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_SCALES = {"personality": DATA_DIR / "personality_bank.json", "profession": DATA_DIR / "profession_bank.json"}
KINDS = ("personality", "profession")
KEYS = {"+": 1, "-": -1}
# HIS factor names -> (our trait, sign that turns HIS keying into ours). HIS "Neuroticism" is stability.
HIS_FACTORS = {"extraversion": ("EXT", 1), "agreeableness": ("AGR", 1), "conscientiousness": ("CON", 1),
               "neuroticism": ("NEU", -1), "emotional stability": ("NEU", -1), "openness": ("OPE", 1),
               "openness to experience": ("OPE", 1)}
HIS_POLARITY = {"pos": 1, "neg": -1}


class ScaleError(ValueError):
    """A scale file that cannot be read; the message names the file and, where it applies, the item."""


@dataclass(frozen=True)
class ScaleItem:
    text: str
    factor: str  # a trait code (AGR ... OPE) or a profession (Doctor, Artist, Programmer)
    keyed: int = 1  # +1: agreeing speaks for the factor's high pole (or the profession); -1: reverse keyed

    def score(self, answer: float) -> float:
        """A 1-5 answer as a score toward the factor's high pole (reverse keying: 6 - answer)."""
        return answer if self.keyed > 0 else 6.0 - answer


@dataclass(frozen=True)
class Scale:
    name: str
    kind: str  # "personality" or "profession"
    items: tuple[ScaleItem, ...]

    @property
    def factors(self) -> tuple[str, ...]:
        """The factors the items cover, in inventory order."""
        order = TRAITS if self.kind == "personality" else PROFESSIONS
        present = {item.factor for item in self.items}
        return tuple(f for f in order if f in present)

    def subset(self, per_factor: int) -> "Scale":
        """The first `per_factor` items of each factor (quick runs), keeping the file's order."""
        counts: dict[str, int] = {}
        kept = []
        for item in self.items:
            counts[item.factor] = counts.get(item.factor, 0) + 1
            if counts[item.factor] <= per_factor:
                kept.append(item)
        return Scale(self.name, self.kind, tuple(kept))

    def to_native(self) -> dict:
        if self.kind == "personality":
            items = [{"text": i.text, "factor": i.factor, "keyed": "+" if i.keyed > 0 else "-"} for i in self.items]
        else:
            items = [{"text": i.text, "profession": i.factor} for i in self.items]
        return {"name": self.name, "kind": self.kind, "items": items}


def load_scale(path: str | Path, kind: str | None = None) -> Scale:
    """Read a scale file in any supported format (detected from its content). `kind`, when given, must
    match the file's kind."""
    path = Path(path)
    data = read_json_file(path, "scale file", ScaleError)
    scale = _parse(data, path)
    if not scale.items:
        raise ScaleError(f"{path}: the scale has no items")
    if kind is not None and scale.kind != kind:
        raise ScaleError(f"{path}: a {scale.kind} scale, but a {kind} scale is needed here")
    return scale


def default_scale(kind: str) -> Scale:
    """Our shipped bank for `kind`."""
    return load_scale(DEFAULT_SCALES[kind], kind)


def _parse(data, path: Path) -> Scale:
    if isinstance(data, dict):
        return _parse_native(data, path)
    if isinstance(data, list) and data:
        first = data[0]
        if isinstance(first, dict) and {"factor", "polarity", "content"} <= first.keys():
            return Scale(path.stem, "personality",
                         tuple(_his_personality_item(x, i, path) for i, x in enumerate(data)))
        if isinstance(first, dict) and {"question", "profession"} <= first.keys():
            return Scale(path.stem, "profession", tuple(_his_profession_item(x, i, path) for i, x in enumerate(data)))
    raise ScaleError(f"{path}: unknown scale format: expected an object with 'kind' and 'items' (ours), or a "
                     "list of HIS items ({factor, polarity, content} or {question, profession})")


def _parse_native(data: dict, path: Path) -> Scale:
    kind = data.get("kind")
    if kind not in KINDS:
        raise ScaleError(f"{path}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    items = data.get("items")
    if not isinstance(items, list):
        raise ScaleError(f"{path}: 'items' must be a list")
    parse = _native_personality_item if kind == "personality" else _native_profession_item
    name = data.get("name") or path.stem
    return Scale(str(name), kind, tuple(parse(x, i, path) for i, x in enumerate(items)))


def _field(item, key: str, index: int, path: Path) -> str:
    if not isinstance(item, dict):
        raise ScaleError(f"{path}: item {index}: expected an object, got {type(item).__name__}")
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ScaleError(f"{path}: item {index}: '{key}' must be non-empty text, got {value!r}")
    return value.strip()


def _profession(value: str, index: int, path: Path) -> str:
    match = next((p for p in PROFESSIONS if p.lower() == value.lower()), None)
    if match is None:
        raise ScaleError(f"{path}: item {index}: unknown profession {value!r}; known: {', '.join(PROFESSIONS)}")
    return match


def _native_personality_item(item, index: int, path: Path) -> ScaleItem:
    text, factor, keyed = (_field(item, k, index, path) for k in ("text", "factor", "keyed"))
    if factor not in TRAITS:
        raise ScaleError(f"{path}: item {index}: unknown factor {factor!r}; use one of {', '.join(TRAITS)}")
    if keyed not in KEYS:
        raise ScaleError(f"{path}: item {index}: 'keyed' must be '+' or '-', got {keyed!r}")
    return ScaleItem(text, factor, KEYS[keyed])


def _native_profession_item(item, index: int, path: Path) -> ScaleItem:
    text, profession = _field(item, "text", index, path), _field(item, "profession", index, path)
    return ScaleItem(text, _profession(profession, index, path))


def _his_personality_item(item, index: int, path: Path) -> ScaleItem:
    text, factor, polarity = (_field(item, k, index, path) for k in ("content", "factor", "polarity"))
    if factor.lower() not in HIS_FACTORS:
        raise ScaleError(f"{path}: item {index}: unknown factor {factor!r}")
    if polarity.lower() not in HIS_POLARITY:
        raise ScaleError(f"{path}: item {index}: 'polarity' must be 'pos' or 'neg', got {polarity!r}")
    trait, sign = HIS_FACTORS[factor.lower()]
    return ScaleItem(text, trait, sign * HIS_POLARITY[polarity.lower()])


def _his_profession_item(item, index: int, path: Path) -> ScaleItem:
    text, profession = _field(item, "question", index, path), _field(item, "profession", index, path)
    return ScaleItem(text, _profession(profession, index, path))

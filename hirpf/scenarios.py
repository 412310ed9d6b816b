"""Situation scenarios: a setting, another character who opens a conversation, and what an observer should
look for. One scenario targets one trait or one profession; the situation test plays each against agents.

Native format (`hirpf/data/scenarios.json`, ours; the default):

    {"name": ..., "kind": "scenarios",
     "scenarios": [{"id": "ext-night-train", "target": "EXT",
                    "setting": "...",            # the situation, told to the agent in the second person
                    "other_character": "...",    # who the other character is, in a line (for people)
                    "other_brief": "...",        # the other character's instructions (its system prompt)
                    "look_for": "..."}]}         # what reveals the target, for observers and annotators

The public HIS release's format (`open_situational_test.json`) loads unchanged: an object keyed by factor or
profession name ("Openness", ..., "Neuroticism", "Doctor") with `Scenario`, `NPC_Setting`, `NPC_prompt` and
`Interaction` fields.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .identities import PROFESSIONS, TRAIT_WORDS, TRAITS
from .paths import read_json_file

DEFAULT_SCENARIOS = Path(__file__).resolve().parent / "data" / "scenarios.json"
NATIVE_FIELDS = ("id", "target", "setting", "other_character", "other_brief", "look_for")
HIS_FIELDS = {"Scenario": "setting", "NPC_Setting": "other_character", "NPC_prompt": "other_brief",
              "Interaction": "look_for"}
# HIS keys are factor words; "Emotional Stability" would be the NEU factor under its other name.
_TARGET_WORDS = {word.lower(): code for code, word in TRAIT_WORDS.items()} | {"emotional stability": "NEU",
                                                                             "emotionalstability": "NEU"}
# Said to the other character after its brief: the rules of the role, whoever plays it.
ROLE_RULES = ("Speak only as this character, in the first person, one to three sentences at a time. Do not "
              "describe actions or narrate, and never say that you are an AI or that this is a role-play.")


class ScenarioError(ValueError):
    """A scenario file that cannot be read; the message names the file, the scenario and the field."""


@dataclass(frozen=True)
class Scenario:
    id: str
    target: str  # a trait code (AGR, CON, EXT, NEU, OPE) or a profession (Doctor, Artist, Programmer)
    setting: str
    other_character: str
    other_brief: str
    look_for: str

    def other_system_message(self) -> str:
        """The other character's instructions, as its system message."""
        return f"{self.other_brief}\n\n{ROLE_RULES}"

    def to_dict(self) -> dict:
        return asdict(self)


def target_code(name: str) -> str:
    """'EXT' for 'EXT', 'ext' or 'Extraversion'; 'Doctor' for 'doctor'. Raises ValueError."""
    text = str(name).strip()
    if text.upper() in TRAITS:
        return text.upper()
    for profession in PROFESSIONS:
        if text.lower() == profession.lower():
            return profession
    code = _TARGET_WORDS.get(text.lower())
    if code is None:
        raise ValueError(f"unknown scenario target {name!r}; expected one of {', '.join(TRAITS + PROFESSIONS)} "
                         "(or a factor name such as Extraversion)")
    return code


def load_scenarios(path: str | Path | None = None) -> list[Scenario]:
    """The scenarios of a file in our format or the HIS format (default: our own bank)."""
    path = Path(path) if path is not None else DEFAULT_SCENARIOS
    data = read_json_file(path, "scenario file", ScenarioError)
    if isinstance(data, dict) and "scenarios" in data:
        scenarios = _native(data["scenarios"], path)
    elif isinstance(data, dict) and data and all(isinstance(v, dict) and "NPC_prompt" in v for v in data.values()):
        scenarios = _his(data, path)
    else:
        raise ScenarioError(f"{path}: expected {{'scenarios': [...]}} (our format) or an object of scenarios keyed "
                            "by factor or profession with Scenario/NPC_Setting/NPC_prompt/Interaction (HIS format)")
    if not scenarios:
        raise ScenarioError(f"{path}: no scenarios in the file")
    ids = [s.id for s in scenarios]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ScenarioError(f"{path}: scenario id(s) used twice: {', '.join(duplicates)}")
    return scenarios


def _native(entries, path: Path) -> list[Scenario]:
    if not isinstance(entries, list):
        raise ScenarioError(f"{path}: 'scenarios' must be a list")
    out = []
    for i, entry in enumerate(entries):
        where = f"{path}: scenario {i}"
        if not isinstance(entry, dict):
            raise ScenarioError(f"{where}: expected an object")
        values = {}
        for name in NATIVE_FIELDS:
            value = entry.get(name)
            if not isinstance(value, str) or not value.strip():
                raise ScenarioError(f"{where} ({entry.get('id', '?')}): field {name!r} missing or empty")
            values[name] = value.strip()
        out.append(_scenario(values, where))
    return out


def _his(data: dict, path: Path) -> list[Scenario]:
    out = []
    for key, entry in data.items():
        where = f"{path}: scenario {key!r}"
        values = {"id": str(key).strip().lower().replace(" ", "-"), "target": key}
        for his_name, name in HIS_FIELDS.items():
            value = entry.get(his_name)
            if not isinstance(value, str) or not value.strip():
                raise ScenarioError(f"{where}: field {his_name!r} missing or empty")
            values[name] = value.strip()
        out.append(_scenario(values, where))
    return out


def _scenario(values: dict, where: str) -> Scenario:
    try:
        values["target"] = target_code(values["target"])
    except ValueError as err:
        raise ScenarioError(f"{where}: {err}") from None
    return Scenario(**values)


def select(scenarios: list[Scenario], wanted: str | None) -> list[Scenario]:
    """The scenarios named by a comma list of ids or targets (None: all)."""
    if not wanted:
        return scenarios
    chosen = []
    for name in (w.strip() for w in wanted.split(",") if w.strip()):
        matches = [s for s in scenarios if s.id == name]
        if not matches:
            try:
                code = target_code(name)
            except ValueError:
                code = None
            matches = [s for s in scenarios if s.target == code]
        if not matches:
            raise ScenarioError(f"no scenario {name!r}; ids: {', '.join(s.id for s in scenarios)}")
        chosen += [s for s in matches if s not in chosen]
    return chosen

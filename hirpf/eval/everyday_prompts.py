"""Our everyday prompts (`hirpf/data/everyday_prompts.json`): questions and openers a visitor might put to a
character, for the discrimination evaluation (`python -m hirpf.eval discriminate`).

The split is fixed in the file and follows one rule, checked on loading: 16 topics (work, weekend, a
conflict, a plan, a worry, advice, an opinion, ...), three prompts each, written in that order before any
reply was generated; the third prompt of every topic is `held_out`, the other two `dev`. Held-out prompts
are for reports only: training, synthesis and every tuning decision (the judge's descriptions included)
may use `dev` prompts only. `training_prompts()` is what such code reads, and `refuse_held_out(texts)` is
the guard it calls on any prompts it is about to use: it raises when one of them is held out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..paths import read_json_file
from .common import EvalError

PROMPTS_FILE = Path(__file__).resolve().parent.parent / "data" / "everyday_prompts.json"
SPLITS = ("dev", "held_out")
PROMPTS_PER_TOPIC = 3
HELD_OUT_POSITION = 3  # the third prompt of each topic


@dataclass(frozen=True)
class EverydayPrompt:
    id: str  # "<topic>-<position>"
    topic: str
    text: str
    split: str


class HeldOutPromptError(EvalError):
    """A held-out prompt reached code that must never see one (training, synthesis, tuning)."""


def load_prompts(split: str | None = None, path: Path = PROMPTS_FILE) -> list[EverydayPrompt]:
    """The prompts of `split` ("dev", "held_out"; None: all), in file order; the split rule is checked."""
    if split is not None and split not in SPLITS:
        raise EvalError(f"unknown prompt split {split!r}; choose one of: {', '.join(SPLITS)}")
    document = read_json_file(path, "prompts file", EvalError)
    prompts, positions = [], {}
    for index, entry in enumerate(document.get("prompts", [])):
        try:
            prompt = EverydayPrompt(entry["id"], entry["topic"], entry["text"], entry["split"])
        except (KeyError, TypeError):
            raise EvalError(f"{path}: prompt {index} needs id, topic, text and split") from None
        positions[prompt.topic] = positions.get(prompt.topic, 0) + 1
        expected = "held_out" if positions[prompt.topic] == HELD_OUT_POSITION else "dev"
        if prompt.split != expected or positions[prompt.topic] > PROMPTS_PER_TOPIC:
            raise EvalError(f"{path}: prompt {prompt.id!r} breaks the split rule (position "
                            f"{positions[prompt.topic]} of topic {prompt.topic!r} must be {expected!r}, at most "
                            f"{PROMPTS_PER_TOPIC} per topic)")
        prompts.append(prompt)
    if not prompts:
        raise EvalError(f"{path}: no prompts")
    return [p for p in prompts if split is None or p.split == split]


def training_prompts() -> list[str]:
    """The prompt texts training, synthesis and tuning may use: the dev split only."""
    return [p.text for p in load_prompts("dev")]


def refuse_held_out(texts: Iterable[str]) -> None:
    """Raise `HeldOutPromptError` when any of `texts` is a held-out prompt (compared without case and outer
    whitespace): call it before training on, synthesising from or tuning with a list of prompts."""
    held_out = {_key(p.text): p.id for p in load_prompts("held_out")}
    found = sorted({held_out[_key(t)] for t in texts if _key(t) in held_out})
    if found:
        raise HeldOutPromptError(f"held-out prompts must not be used for training, synthesis or tuning: "
                                 f"{', '.join(found)}")


def _key(text: str) -> str:
    return " ".join(str(text).split()).lower()

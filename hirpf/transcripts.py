"""The two derived views of a dialogue that evaluation needs, both deterministic functions of the original.

- `anonymize`: what an annotator or a referee model sees. System turns (the identity prompt) are removed,
  the speakers become X and Y, and names that would give the system away (model names, our identity
  codes) are redacted from the text. Who is X depends only on who spoke first, never on roles.
  A name is found wherever no letter or digit touches it, so `_` and `-` do not hide it (`lora_AGR_high`,
  `experts-OPE_low`), and the whole identifier it sits in goes: a model id or path such as
  `HuggingFaceTB/SmolLM2-135M-Instruct` would still give away the organisation and the size.
- `reverse`: user and assistant swapped, as the paper's interviewer model sees a transcript (its own
  questions become the assistant's turns, so it can continue as itself).

A transcript is a list of `{"role": "system"|"user"|"assistant", "content": str}` turns.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

from .identities import ALIASES, ALL_IDENTITIES

SPEAKERS = ("X", "Y")
REDACTED = "[redacted]"
# Names that identify the system that produced a dialogue. Identity codes (AGR_high, EMS_low) are ours;
# the plain words a persona may say ("I'm a doctor") are the behaviour being judged and stay.
SYSTEM_NAMES = ("HIRPF", "SmolLM2", "SmolLM", "Llama-2", "Llama", "ChatGPT", "GPT-4o", "GPT-4", "GPT-3.5", "GPT",
                "OpenAI", "Hugging Face", "HuggingFace", "Mistral", "Qwen")
_CODES = tuple(n for n in ALL_IDENTITIES + tuple(ALIASES) if "_" in n)


# An identifier around a name: letters, digits and the joints of ids, paths and URLs (`_ - . / \ :`).
_IDENTIFIER_CHARS = re.compile(r"[\w./\\:-]")
_TRAILING_PUNCTUATION = ".:-/\\"  # a sentence's full stop or colon is not part of the id before it


def _redaction_pattern(extra: Iterable[str]) -> re.Pattern:
    terms = sorted(set(SYSTEM_NAMES) | set(_CODES) | {t for t in extra if t}, key=len, reverse=True)
    # [^\W_] is a letter or a digit: `_` and `-` count as separators around a name, letters do not.
    return re.compile(r"(?<![^\W_])(?:" + "|".join(re.escape(t) for t in terms) + r")(?![^\W_])", re.IGNORECASE)


def _redact(text: str, pattern: re.Pattern) -> str:
    """Every identifier that contains a name, replaced whole."""
    spans: list[list[int]] = []
    for match in pattern.finditer(text):
        start, end = match.start(), match.end()
        while start > 0 and _IDENTIFIER_CHARS.match(text[start - 1]):
            start -= 1
        while end < len(text) and _IDENTIFIER_CHARS.match(text[end]):
            end += 1
        while end > match.end() and text[end - 1] in _TRAILING_PUNCTUATION:
            end -= 1
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    for start, end in reversed(spans):
        text = text[:start] + REDACTED + text[end:]
    return text


def _conversation(turns: Sequence[dict]) -> list[dict]:
    out = []
    for i, turn in enumerate(turns):
        role, content = turn.get("role"), turn.get("content")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"turn {i}: unknown role {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"turn {i}: content must be text")
        if role != "system":
            out.append({"role": role, "content": content})
    if not out:
        raise ValueError("the dialogue has no turns")
    return out


def speaker_of(turns: Sequence[dict], role: str) -> str:
    """Which anonymous speaker (X or Y) a role becomes: X is whoever speaks first."""
    first = _conversation(turns)[0]["role"]
    return SPEAKERS[0] if role == first else SPEAKERS[1]


def anonymize(turns: Sequence[dict], redact: Iterable[str] = ()) -> list[dict]:
    """`[{"speaker": "X"|"Y", "text": ...}]`; `redact` adds names (e.g. a model's id) to hide."""
    conversation = _conversation(turns)
    pattern = _redaction_pattern(redact)
    first = conversation[0]["role"]
    return [{"speaker": SPEAKERS[0] if t["role"] == first else SPEAKERS[1],
             "text": _redact(t["content"], pattern)} for t in conversation]


def reverse(turns: Sequence[dict]) -> list[dict]:
    """User and assistant swapped; system turns dropped (the reader brings its own)."""
    swap = {"user": "assistant", "assistant": "user"}
    return [{"role": swap[t["role"]], "content": t["content"]} for t in _conversation(turns)]


def as_text(anonymized: Sequence[dict]) -> str:
    """`X: ...` / `Y: ...` lines, the form a referee model reads."""
    return "\n".join(f"{t['speaker']}: {t['text']}" for t in anonymized)

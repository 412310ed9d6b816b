"""Sending a debate to human evaluation: what the Debate tab stores, one identity dialogue per agent."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import gradio as gr

from annotation.store import StoreError, prepare_dialogue
from hirpf.identities import IdentityError, IdentitySet

from .evaluation_store import EVALUATION_TITLE, open_store


def send_to_evaluation(turns: Sequence[Mapping], target_a, target_b, system: str, *,
                       data_dir: str | Path | None = None) -> str:
    """Store a two-agent conversation (a debate) for human evaluation: one identity dialogue per agent, with
    that agent's statements as the assistant's turns and the other's as the user's, so annotators judge
    each agent on its own. `turns`: `{"speaker": "A"|"B", "content": str}` in speaking order. Both
    dialogues are checked before either is stored; `gr.Error` names what is wrong."""
    title = EVALUATION_TITLE
    try:
        targets = {"A": IdentitySet.parse(target_a), "B": IdentitySet.parse(target_b)}
    except IdentityError as err:
        raise gr.Error(f"Cannot send to human evaluation: {err}", title=title, print_exception=False) from None
    statements = []
    for i, turn in enumerate(turns or []):
        speaker = turn.get("speaker") if isinstance(turn, Mapping) else None
        if speaker not in targets or not isinstance(turn.get("content"), str):
            raise gr.Error(f"Cannot send to human evaluation: turn {i} needs speaker A or B and text content",
                           title=title, print_exception=False)
        statements.append((speaker, turn["content"]))
    dialogues = []
    for agent in ("A", "B"):
        transcript = [{"role": "assistant" if speaker == agent else "user", "content": text}
                      for speaker, text in statements]
        try:
            prepare_dialogue(transcript, targets[agent], source="app", system=system)  # check both first
        except StoreError as err:
            raise gr.Error(f"Cannot send agent {agent}'s side to human evaluation: {err}", title=title,
                           print_exception=False) from None
        dialogues.append((transcript, targets[agent]))
    store = open_store(data_dir)
    added = [store.add_dialogue(t, target, source="app", system=system).created for t, target in dialogues]
    if all(added):
        return "Sent to human evaluation: 2 dialogues added (one per agent)."
    if not any(added):
        return "These dialogues are already stored for human evaluation."
    return "Sent to human evaluation: 1 dialogue added, 1 already stored."

"""What several tabs share, so that no tab imports another: the process's evaluation stores, the assignment
policy (its text form and where it is kept), sending dialogues to human evaluation, and whether Hugging Face
sign-in is on.

The assignment policy lives in the database (`annotation.study_settings`): whatever an admin applies, in
whichever app process, is what every process hands tasks out with. `HIRPF_ASSIGNMENT` is the policy until an
admin applies one.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Mapping, Sequence

import gradio as gr
from gradio.utils import get_space

from annotation.assignment import AssignmentPolicy
from annotation.store import Store, StoreError, prepare_dialogue
from annotation.study_settings import store_policy, stored_policy
from db.connection import Database, database_url
from hirpf import environment
from hirpf.identities import TRAIT_WORDS, IdentityError, IdentitySet
from hirpf.labels import PROFESSION_SLOT

POLICY_ENV = "HIRPF_ASSIGNMENT"
SIGN_IN_ENV = "HIRPF_SIGN_IN"
EVALUATION_TITLE = "Human evaluation"
# The six slots in words, as annotators and the admin read them.
SLOT_TITLES = {**{t: w.capitalize() for t, w in TRAIT_WORDS.items()}, PROFESSION_SLOT: "Profession"}


# --- the stores -----------------------------------------------------------------------------------------
_stores: dict[str, Store] = {}
_stores_guard = threading.Lock()


def evaluation_database_url(data_dir: str | Path | None = None) -> str:
    """`DATABASE_URL` when set, else the SQLite file in `data_dir` (None: the default data directory)."""
    return database_url(directory=data_dir)


def open_store(data_dir: str | Path | None = None) -> Store:
    """The process's store for that database (opened, and migrated, on first use; then shared by the tabs),
    with the assignment policy the database holds now (another process's admin may have changed it)."""
    url = evaluation_database_url(data_dir)
    with _stores_guard:
        if url not in _stores:
            _stores[url] = Store(Database(url), start_policy())
        store = _stores[url]
    store.policy = stored_policy(store.db) or start_policy()
    return store


def apply_policy(store: Store, policy: AssignmentPolicy) -> None:
    """The admin's policy, for every process on the store's database, from the next task handed out."""
    store_policy(store.db, policy)
    store.policy = policy


# --- the assignment policy as text ------------------------------------------------------------------------
_POLICY_KEYS = {"overlap": "overlap", "cap": "cap", "shared": "shared_fraction", "batch": "batch", "seed": "seed"}


def start_policy() -> AssignmentPolicy:
    """`HIRPF_ASSIGNMENT`, the policy until an admin applies one."""
    return policy_from_text(environment.HIRPF_ASSIGNMENT)


def policy_from_text(text: str) -> AssignmentPolicy:
    """An assignment policy from `overlap=2,cap=3,shared=0.2,batch=20,seed=7` (any of them; empty: defaults).
    Raises ValueError naming the bad part."""
    values: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, raw = part.partition("=")
        key = _POLICY_KEYS.get(name.strip())
        if not sep or key is None:
            raise ValueError(f"{POLICY_ENV}: {part!r} is not one of {', '.join(k + '=...' for k in _POLICY_KEYS)}")
        try:
            values[key] = float(raw) if key == "shared_fraction" else int(raw)
        except ValueError:
            raise ValueError(f"{POLICY_ENV}: {part!r}: {raw.strip()!r} is not a number") from None
    return AssignmentPolicy(**values)


def policy_as_text(policy: AssignmentPolicy) -> str:
    cap = f",cap={policy.cap}" if policy.cap is not None else ""
    return (f"overlap={policy.overlap}{cap},shared={policy.shared_fraction:g},batch={policy.batch},"
            f"seed={policy.seed}")


# --- signing in -----------------------------------------------------------------------------------------
def oauth_configured() -> bool:
    """Hugging Face sign-in: on a Space with `hf_oauth: true` (which sets `OAUTH_CLIENT_ID`). Elsewhere
    Gradio would mock the login with the machine's own Hugging Face token, or refuse to start."""
    return bool(os.environ.get("OAUTH_CLIENT_ID")) and get_space() is not None


def sign_in_mode() -> str:
    """`HIRPF_SIGN_IN`: "name" (default) or "hf" (Hugging Face accounts only, which needs OAuth)."""
    mode = environment.HIRPF_SIGN_IN  # name or hf, checked there
    if mode == "hf" and not oauth_configured():
        raise ValueError(f"{SIGN_IN_ENV}=hf needs Hugging Face sign-in (`hf_oauth: true` on a Space)")
    return mode


# --- from other tabs ------------------------------------------------------------------------------------
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

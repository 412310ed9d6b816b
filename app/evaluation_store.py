"""The process's human-evaluation stores, and the assignment policy they hand tasks out with: what every
evaluation tab (and the Chat tab's send to a study) opens.

The assignment policy lives in the database (`annotation.study_settings`): whatever an admin applies, in
whichever app process, is what every process hands tasks out with. `HIRPF_ASSIGNMENT` is the policy until an
admin applies one.
"""
from __future__ import annotations

import threading
from pathlib import Path

from annotation.assignment import AssignmentPolicy
from annotation.store import Store
from annotation.study_settings import store_policy, stored_policy
from db.connection import Database, database_url
from hirpf import environment
from hirpf.identities import TRAIT_WORDS
from hirpf.labels import PROFESSION_SLOT

POLICY_ENV = "HIRPF_ASSIGNMENT"
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

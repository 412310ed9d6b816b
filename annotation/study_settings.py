"""Study settings the admin changes while the app runs, kept in the database (`study_settings`, migration 5)
so that every app process on that database follows the same ones: the assignment policy and the study
access code (its hash). Each is one JSON value under a key; a missing key means "not set"."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.connection import Database
from db.models import StudySetting, utcnow

from .assignment import AssignmentPolicy

POLICY_KEY = "assignment_policy"
ACCESS_CODE_KEY = "access_code_hash"


def read_setting(db: Database, key: str) -> Any:
    """The stored value of `key`, None when it is not set."""
    with db.read() as session:
        return session.scalar(select(StudySetting.value).where(StudySetting.key == key))


def write_setting(db: Database, key: str, value: Any) -> None:
    """Set `key` to `value` (JSON), or remove it with None."""
    def run(session: Session) -> None:
        db.serialize(session, f"study_settings:{key}")  # two processes setting it at once: one row
        found = session.get(StudySetting, key)
        if value is None:
            if found is not None:
                session.delete(found)
        elif found is None:
            session.add(StudySetting(key=key, value=value, updated_at=utcnow()))
        else:
            found.value, found.updated_at = value, utcnow()

    db.write(run)


def stored_policy(db: Database) -> AssignmentPolicy | None:
    """The assignment policy the admin applied, None when none was."""
    value = read_setting(db, POLICY_KEY)
    if not isinstance(value, dict):
        return None
    return AssignmentPolicy(**{**value, "kinds": tuple(value.get("kinds") or AssignmentPolicy().kinds)})


def store_policy(db: Database, policy: AssignmentPolicy) -> None:
    write_setting(db, POLICY_KEY, {**asdict(policy), "kinds": list(policy.kinds)})

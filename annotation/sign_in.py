"""Name sign-in with a secret: knowing an annotator's name is not enough to resume as them.

- The first sign-in with a name creates the annotator and hands out a **resume code**, shown once; the
  database keeps only its salted hash. Signing in again with that name needs the code.
- A **study access code** (set by the admin, stored hashed in `study_settings`) may be required to create an
  annotator at all, so that only people the study invited can join.

Hugging Face sign-ins need neither: the account is the secret. Codes are compared through scrypt, slow on
purpose: a study access code is chosen by a person and may be short.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import NamedTuple

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.connection import Database
from db.models import Annotator

from .store import MAX_NAME_CHARS, Store, StoreError, checked_text
from .study_settings import ACCESS_CODE_KEY, read_setting, write_setting

NAME_PREFIX = "name:"  # external id of a name sign-in: "name:" + the case-folded name
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I: codes are read off a screen and typed
CODE_GROUPS, CODE_GROUP_LENGTH = 3, 4  # 12 characters of 32: 60 random bits
MIN_ACCESS_CODE_CHARS = 6
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class SignInRefused(StoreError):
    """A name sign-in without the secret it needs; the message says which."""


class NameSignIn(NamedTuple):
    annotator: str  # public id
    new_resume_code: str | None  # set on the first sign-in only: show it once


def new_resume_code() -> str:
    chars = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUPS * CODE_GROUP_LENGTH))
    return "-".join(chars[i:i + CODE_GROUP_LENGTH] for i in range(0, len(chars), CODE_GROUP_LENGTH))


def normalized_code(code: str | None) -> str:
    """What a typed code means: case, spaces and dashes do not matter."""
    return "".join(c for c in str(code or "").upper() if c.isalnum())


def hash_code(code: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(normalized_code(code).encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def code_matches(code: str | None, stored: str | None) -> bool:
    """`code` against a `hash_code` value (in constant time); an empty code or hash never matches."""
    if not stored or not normalized_code(code):
        return False
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    attempt = hashlib.scrypt(normalized_code(code).encode(), salt=bytes.fromhex(salt), **_SCRYPT)
    return hmac.compare_digest(attempt.hex(), digest)


# --- the study access code ------------------------------------------------------------------------------
def access_code_required(db: Database) -> bool:
    return bool(read_setting(db, ACCESS_CODE_KEY))


def set_access_code(db: Database, code: str | None) -> None:
    """Require `code` to join the study from now on; None or empty removes the requirement."""
    if code is not None and normalized_code(code) and len(normalized_code(code)) < MIN_ACCESS_CODE_CHARS:
        raise StoreError(f"a study access code needs at least {MIN_ACCESS_CODE_CHARS} letters or digits")
    write_setting(db, ACCESS_CODE_KEY, hash_code(code) if normalized_code(code) else None)


# --- signing in by name ---------------------------------------------------------------------------------
def sign_in_by_name(store: Store, name: str, code: str | None) -> NameSignIn:
    """The annotator for `name` (already tidied), creating them on first use. `code`: the resume code of an
    existing annotator, or the study access code for a new one (when the study has one). Raises
    SignInRefused when the code is missing or wrong, StoreError when the name cannot be stored."""
    name = checked_text(name, "display name", MAX_NAME_CHARS, required=True)  # before it reaches a query
    external = NAME_PREFIX + name.casefold()
    found = _by_external_id(store.db, external)
    if found is None:
        required = read_setting(store.db, ACCESS_CODE_KEY)
        if required and not code_matches(code, required):
            raise SignInRefused("This study needs its access code to join: type the code the study gave you "
                                "in the Code box." if not normalized_code(code) else
                                "That is not this study's access code.")
        annotator = store.register_annotator(name, external_id=external)
        fresh = claim_resume_code(store.db, annotator)
        if fresh is not None:
            return NameSignIn(annotator, fresh)
        found = _by_external_id(store.db, external)  # somebody claimed the name a moment earlier
    public_id, code_hash = found
    if code_hash is None:
        # Its browser once held the annotator's id, which is no credential any more (ids appear in old
        # exports); so nothing can hand this name a code, and nobody can resume it.
        raise SignInRefused("This name was registered before resume codes existed and cannot be resumed: sign "
                            "in with another name (the answers already given stay stored).")
    if not code_matches(code, code_hash):
        raise SignInRefused("This name is taken. If it is yours, type the resume code you were given in the "
                            "Code box; if you are new, choose another name." if not normalized_code(code) else
                            "Wrong resume code for this name.")
    return NameSignIn(public_id, None)


def claim_resume_code(db: Database, annotator: str) -> str | None:
    """Give a name annotator without a resume code one, returned to be shown once; None when they have one
    already (or are not a name sign-in). Only one of two racing calls gets the code."""
    code = new_resume_code()
    hashed = hash_code(code)

    def run(session: Session) -> int:
        return session.execute(update(Annotator).where(
            Annotator.public_id == annotator, Annotator.resume_code_hash.is_(None),
            Annotator.external_id.startswith(NAME_PREFIX)).values(resume_code_hash=hashed)).rowcount

    return code if db.write(run) == 1 else None


def _by_external_id(db: Database, external: str) -> tuple[str, str | None] | None:
    with db.read() as session:
        row = session.execute(select(Annotator.public_id, Annotator.resume_code_hash)
                              .where(Annotator.external_id == external)).first()
        return None if row is None else (row[0], row[1])

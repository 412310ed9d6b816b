"""Annotator sessions: what a browser holds after a sign-in, instead of the annotator's id.

A sign-in (`start`) hands out a random token (256 bits) and stores only its SHA-256 hash with an expiry.
Every annotation call names the annotator by that token (`annotator_of`); the annotator's public id is
never accepted from outside, so an id printed somewhere (an export, a report) signs nobody in. A session
ends at `SESSION_TTL`, at sign-out (`end`), or when the same annotator signs in again (one live session
per annotator: a new sign-in revokes the old token, wherever it is kept).
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.connection import Database
from db.models import Annotator, AnnotatorSession, utcnow

from .store import StoreError

SESSION_TTL = timedelta(hours=12)  # a working day; then the name and resume code sign in again
MAX_TOKEN_CHARS = 100  # a token is 64; anything much longer is not one (and is not hashed)


class SessionEnded(StoreError):
    """No live session for that token: never issued, signed out, replaced by a newer sign-in, or expired."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def start(db: Database, annotator: str, ttl: timedelta = SESSION_TTL) -> str:
    """A new session token for the annotator with public id `annotator`; their earlier sessions end."""
    # Hex: 256 random bits that can spell no word (no identity name ever shows up in what a browser holds).
    token = secrets.token_hex(32)
    now = utcnow()

    def run(session: Session) -> None:
        found = session.scalar(select(Annotator.id).where(Annotator.public_id == annotator))
        if found is None:
            raise StoreError(f"no annotator {annotator!r:.50}")
        session.execute(delete(AnnotatorSession).where(
            (AnnotatorSession.annotator_id == found) | (AnnotatorSession.expires_at <= now)))
        session.add(AnnotatorSession(token_hash=_digest(token), annotator_id=found, created_at=now,
                                     expires_at=now + ttl))

    db.write(run)
    return token


def annotator_of(db: Database, token: object) -> str:
    """The public id of the annotator whose live session `token` is; `SessionEnded` otherwise."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise SessionEnded("not signed in")
    with db.read() as session:
        row = session.execute(select(Annotator.public_id, AnnotatorSession.expires_at).join(
            Annotator, Annotator.id == AnnotatorSession.annotator_id)
            .where(AnnotatorSession.token_hash == _digest(token))).first()
    if row is None or _aware(row[1]) <= utcnow():
        raise SessionEnded("this sign-in has ended (signed out, signed in elsewhere, or expired)")
    return row[0]


def end(db: Database, token: object) -> None:
    """End the session `token` (nothing happens for an unknown one)."""
    if isinstance(token, str) and token and len(token) <= MAX_TOKEN_CHARS:
        db.write(lambda session: session.execute(
            delete(AnnotatorSession).where(AnnotatorSession.token_hash == _digest(token))))

"""Annotator sessions on SQLite and PostgreSQL: a sign-in's token, never the annotator's id, names the
annotator; sign-out, a newer sign-in and time end it."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from annotation import sessions
from annotation.store import Store
from db.models import AnnotatorSession


def test_a_token_names_its_annotator_until_sign_out_or_a_newer_sign_in(database):
    store = Store(database)
    ada, bo = store.register_annotator("Ada"), store.register_annotator("Bo")
    first = sessions.start(database, ada)
    mine = sessions.start(database, bo)
    assert sessions.annotator_of(database, first) == ada and sessions.annotator_of(database, mine) == bo
    # Only a hash is stored: a copy of the database holds no token.
    with database.read() as session:
        stored = list(session.scalars(select(AnnotatorSession.token_hash)))
    assert len(stored) == 2 and first not in stored and mine not in stored

    second = sessions.start(database, ada)  # a new sign-in ends the earlier one, wherever it is kept
    with pytest.raises(sessions.SessionEnded):
        sessions.annotator_of(database, first)
    assert sessions.annotator_of(database, second) == ada
    sessions.end(database, second)  # sign-out
    with pytest.raises(sessions.SessionEnded):
        sessions.annotator_of(database, second)
    assert sessions.annotator_of(database, mine) == bo  # nobody else's session ended

    # The annotator's id is no token, nor is anything else a browser might send.
    for not_a_token in (ada, None, "", 42, {"annotator": ada}, "x" * 10_000, "\x00"):
        with pytest.raises(sessions.SessionEnded):
            sessions.annotator_of(database, not_a_token)


def test_a_session_expires(database):
    store = Store(database)
    ada = store.register_annotator("Ada")
    expired = sessions.start(database, ada, ttl=timedelta(seconds=-1))
    with pytest.raises(sessions.SessionEnded, match="expired"):
        sessions.annotator_of(database, expired)
    live = sessions.start(database, ada)
    assert sessions.annotator_of(database, live) == ada
    with database.read() as session:  # the expired row went when the next session started
        assert len(list(session.scalars(select(AnnotatorSession.id)))) == 1

"""What the Human evaluation tab's browser holds for a sign-in (`{"token": ..., "name": ...}`), read back
into the annotator it stands for. Shared by the slot-task panel and the pair panel."""
from __future__ import annotations

from typing import Mapping

from annotation import sessions
from db import Database


def session_token(who: Mapping | None) -> str | None:
    """The session token of the browser's stored sign-in, None when signed out (or stored by a version
    before sessions, which kept the annotator's id: that is no credential any more)."""
    if isinstance(who, Mapping) and isinstance(who.get("token"), str) and who["token"]:
        return who["token"]
    return None


def signed_in_annotator(db: Database, who: Mapping | None) -> str | None:
    """The public id of the annotator whose live session the sign-in holds; None when there is none."""
    try:
        return sessions.annotator_of(db, session_token(who))
    except sessions.SessionEnded:
        return None

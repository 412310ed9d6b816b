"""How annotators sign in (`HIRPF_SIGN_IN`, Hugging Face accounts where OAuth is on) and what the Human
evaluation tab's browser holds for a sign-in (`{"token": ..., "name": ...}`), read back into the annotator
it stands for. Shared by the slot-task panel, the pair panel and the admin tab."""
from __future__ import annotations

import os
from typing import Mapping

from gradio.utils import get_space

from annotation import sessions
from db import Database
from hirpf import environment

SIGN_IN_ENV = "HIRPF_SIGN_IN"


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



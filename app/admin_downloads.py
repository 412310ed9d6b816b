"""Unblinded files (exports, agreement reports) handed out to the admin session that asked for them, and to
nobody else.

Gradio serves a `gr.File` output from its cache to anyone holding the link, as a world-readable copy
that stays on disk. These files never touch the disk instead: the content is made in memory when the
admin asks for it and served by one route of our own, `GET hirpf/download/<ticket>`, which answers only
when the request carries the cookie of the admin session that made the ticket. Unlocking the admin view
opens such a session (its cookie is set by the page); the session closes, and its tickets with it, when
the page is closed (Gradio's unload event) or after `session_ttl_s`. A ticket also expires after
`ticket_ttl_s`. Versions before this one left exports in `<tmp>/hirpf-admin-*` folders: removed at start-up.
"""
from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fastapi import Request  # at module level: FastAPI resolves the route's annotations here
from fastapi.responses import PlainTextResponse, Response

ROUTE = "hirpf/download"  # relative to the app's root, as the page links it
LEFTOVER_FOLDERS = "hirpf-admin-*"  # where earlier versions wrote exports


@dataclass(frozen=True)
class Download:
    filename: str
    media_type: str
    content: bytes


@dataclass
class _Ticket:
    session: str
    download: Download
    expires: float


class AdminDownloads:
    def __init__(self, *, ticket_ttl_s: float = 900.0, session_ttl_s: float = 8 * 3600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.ticket_ttl_s, self.session_ttl_s, self.clock = ticket_ttl_s, session_ttl_s, clock
        # One cookie name per app process: two apps on one host (ports share cookies) keep theirs apart.
        self.cookie = f"hirpf_admin_{secrets.token_hex(4)}"
        self._sessions: dict[str, float] = {}  # token -> expiry
        self._tickets: dict[str, _Ticket] = {}
        self._lock = threading.Lock()

    def open_session(self) -> str:
        """A new admin session's token (the page keeps it as a cookie)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[token] = self.clock() + self.session_ttl_s
        return token

    def is_open(self, token: str | None) -> bool:
        """Whether `token` is an admin session that has not ended."""
        with self._lock:
            self._prune()
            return bool(token) and token in self._sessions

    def cookie_for(self, token: str) -> str:
        """`document.cookie` text that hands `token` to this app only, never to another site's requests."""
        return f"{self.cookie}={token}; path=/; SameSite=Strict"

    def close_session(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)
            for ticket in [t for t, v in self._tickets.items() if v.session == token]:
                del self._tickets[ticket]

    def offer(self, token: str, download: Download) -> str:
        """A link (relative to the app's root) to `download` for the session `token`."""
        ticket = secrets.token_urlsafe(24)
        with self._lock:
            self._prune()
            if token not in self._sessions:
                raise PermissionError("the admin session has ended: open the admin view again")
            self._tickets[ticket] = _Ticket(token, download, self.clock() + self.ticket_ttl_s)
        return f"{ROUTE}/{ticket}"

    def fetch(self, ticket: str, token: str | None) -> Download | None:
        """The download behind `ticket` when `token` is the session that made it, else None."""
        with self._lock:
            self._prune()
            found = self._tickets.get(ticket)
            if found is None or not token or not secrets.compare_digest(found.session, token):
                return None
            return found.download

    def _prune(self) -> None:
        now = self.clock()
        for token in [t for t, expiry in self._sessions.items() if expiry <= now]:
            del self._sessions[token]
        for ticket in [t for t, v in self._tickets.items() if v.expires <= now or v.session not in self._sessions]:
            del self._tickets[ticket]

    def install(self, app) -> None:
        """Add the download route to Gradio's FastAPI app (after launch: Gradio creates it there)."""
        def download(ticket: str, request: Request):
            found = self.fetch(ticket, request.cookies.get(self.cookie))
            if found is None:
                return PlainTextResponse("Not found, expired, or not your admin session: open the admin view and "
                                         "ask for the file again.", status_code=404)
            return Response(found.content, media_type=found.media_type, headers={
                "Content-Disposition": f'attachment; filename="{found.filename}"',
                "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

        app.add_api_route(f"/{ROUTE}/{{ticket}}", download, methods=["GET"], include_in_schema=False)


def remove_leftover_export_folders(root: str | Path | None = None) -> int:
    """Remove the export folders earlier versions left in the temporary directory; returns how many."""
    removed = 0
    for folder in Path(root or tempfile.gettempdir()).glob(LEFTOVER_FOLDERS):
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed

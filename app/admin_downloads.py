"""Unblinded files (exports, agreement reports) handed out to the admin session that asked for them, and to
nobody else.

Gradio serves a `gr.File` output from its cache to anyone holding the link, as a world-readable copy
that stays on disk. These files never touch the disk instead: the content is made in memory when the
admin asks for it and served by one route of our own, `GET hirpf/download/<ticket>`, which answers only
when the request carries the cookie of the admin session that made the ticket. A ticket also expires
after `ticket_ttl_s`.

The cookie is set by the server, so that no script can read it: unlocking the admin view opens a session
and hands the page a one-time claim (`claim_for`, good for `claim_ttl_s`), which the page posts to
`POST hirpf/admin/cookie`; the answer sets the cookie HttpOnly, SameSite=Strict, and Secure when the page
was served over HTTPS. The session closes, and its tickets with it, when the page goes away (the page
sends `POST hirpf/admin/close` as a beacon on `pagehide`; the cookie comes with it), when Gradio drops
the page's state, or after `session_ttl_s`.

Versions before this one left exports in `<tmp>/hirpf-admin-*` folders: removed at start-up.
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
COOKIE_ROUTE = "hirpf/admin/cookie"  # POST a claim: the answer sets the admin session's cookie
CLOSE_ROUTE = "hirpf/admin/close"  # POST (a beacon when the page goes away): ends the cookie's session
MAX_CLAIM_CHARS = 100
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
                 claim_ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.ticket_ttl_s, self.session_ttl_s, self.clock = ticket_ttl_s, session_ttl_s, clock
        self.claim_ttl_s = claim_ttl_s
        # One cookie name per app process: two apps on one host (ports share cookies) keep theirs apart.
        self.cookie = f"hirpf_admin_{secrets.token_hex(4)}"
        self._sessions: dict[str, float] = {}  # token -> expiry
        self._tickets: dict[str, _Ticket] = {}
        self._claims: dict[str, tuple[str, float]] = {}  # one-time claim -> (session token, expiry)
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

    def claim_for(self, token: str) -> str:
        """A one-time claim the page exchanges for the session's cookie (`POST COOKIE_ROUTE`): the page never
        holds the token itself, and a claim seen later (in a log, a browser's storage) is spent."""
        claim = secrets.token_urlsafe(24)
        with self._lock:
            self._prune()
            self._claims[claim] = (token, self.clock() + self.claim_ttl_s)
        return claim

    def redeem(self, claim: object) -> str | None:
        """The session token behind an unspent, unexpired `claim` (spending it), else None."""
        if not isinstance(claim, str) or not claim or len(claim) > MAX_CLAIM_CHARS:
            return None
        with self._lock:
            self._prune()
            found = self._claims.pop(claim, None)
            return found[0] if found is not None and found[0] in self._sessions else None

    def close_session(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)
            for ticket in [t for t, v in self._tickets.items() if v.session == token]:
                del self._tickets[ticket]
            for claim in [c for c, (session, _) in self._claims.items() if session == token]:
                del self._claims[claim]

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
        for claim in [c for c, (session, expiry) in self._claims.items()
                      if expiry <= now or session not in self._sessions]:
            del self._claims[claim]

    def install(self, app) -> None:
        """Add the download, cookie and close routes to Gradio's FastAPI app (after launch: Gradio creates it
        there)."""
        def download(ticket: str, request: Request):
            found = self.fetch(ticket, request.cookies.get(self.cookie))
            if found is None:
                return PlainTextResponse("Not found, expired, or not your admin session: open the admin view and "
                                         "ask for the file again.", status_code=404)
            return Response(found.content, media_type=found.media_type, headers={
                "Content-Disposition": f'attachment; filename="{found.filename}"',
                "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

        async def set_cookie(request: Request):
            token = self.redeem((await request.body()).decode("utf-8", "replace").strip())
            if token is None:
                return PlainTextResponse("No such claim, or spent: open the admin view again.", status_code=404)
            response = Response(status_code=204, headers={"Cache-Control": "no-store"})
            # Secure when the page came over HTTPS, directly or through a proxy that says so (Spaces).
            https = request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"
            response.set_cookie(self.cookie, token, path="/", httponly=True, samesite="strict", secure=https)
            return response

        def close(request: Request):
            self.close_session(request.cookies.get(self.cookie))
            response = Response(status_code=204)
            response.delete_cookie(self.cookie, path="/", httponly=True, samesite="strict")
            return response

        app.add_api_route(f"/{ROUTE}/{{ticket}}", download, methods=["GET"], include_in_schema=False)
        app.add_api_route(f"/{COOKIE_ROUTE}", set_cookie, methods=["POST"], include_in_schema=False)
        app.add_api_route(f"/{CLOSE_ROUTE}", close, methods=["POST"], include_in_schema=False)


def remove_leftover_export_folders(root: str | Path | None = None) -> int:
    """Remove the export folders earlier versions left in the temporary directory; returns how many."""
    removed = 0
    for folder in Path(root or tempfile.gettempdir()).glob(LEFTOVER_FOLDERS):
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed

"""Who may do what only an admin may, for every tab that does such a thing.

`AdminAccess` is the rule, from the environment: the password in `HIRPF_ADMIN_PASSWORD`, or the Hugging Face
users listed in `HIRPF_ADMIN_USERS`. `AdminSession` is one app's unlocks: a `gr.State` per browser session
holding that session's admin token once the admin tab was opened with the rule (`app.admin_tab`), checked
server side by every event that reads or writes admin data - the admin tab's, and the Chat tab's "send to a
study", which writes to the annotation store.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

import gradio as gr

from hirpf import environment

from .admin_downloads import AdminDownloads

PASSWORD_ENV, USERS_ENV = "HIRPF_ADMIN_PASSWORD", "HIRPF_ADMIN_USERS"
LOCKED_TEXT = "Open the admin view first (admin password or an allowed Hugging Face account)."


@dataclass(frozen=True)
class AdminAccess:
    """Who may open the admin tab."""

    password: str | None = None
    users: frozenset[str] = frozenset()  # Hugging Face usernames, case-folded

    @classmethod
    def from_env(cls) -> "AdminAccess":
        return cls(environment.HIRPF_ADMIN_PASSWORD, frozenset(u.casefold() for u in environment.HIRPF_ADMIN_USERS))

    @property
    def enabled(self) -> bool:
        return bool(self.password or self.users)

    def admits(self, password: str | None, username: str | None) -> bool:
        if username and username.casefold() in self.users:
            return True
        # Compared in constant time; an empty attempt never matches.
        return bool(self.password and password) and hmac.compare_digest(password.encode(), self.password.encode())


class AdminSession:
    """The admin unlocks of one app. Make it inside the Blocks: `token` is a `gr.State` (per browser
    session: the admin session's token once unlocked, None before), given as an input to every event that
    needs the unlock. When Gradio drops a page's state, its admin session and download links end with it."""

    def __init__(self, access: AdminAccess | None = None, downloads: AdminDownloads | None = None):
        self.access = access or AdminAccess.from_env()
        self.downloads = downloads or AdminDownloads()
        self.token = gr.State(None, delete_callback=self.downloads.close_session)

    def is_open(self, token: str | None) -> bool:
        return self.downloads.is_open(token)

    def require(self, token: str | None, title: str) -> None:
        """`gr.Error` unless `token` is an open admin session."""
        if not self.is_open(token):
            raise gr.Error(LOCKED_TEXT, title=title, print_exception=False)

    def may_write(self, token: str | None) -> bool:
        """Whether a model tab may write to the annotation store: with admin access configured, only an
        unlocked admin session may; without (a local app nobody can unlock), anybody with the page may, as
        anybody may send a debate to human evaluation."""
        return not self.access.enabled or self.is_open(token)

"""Online backups of the SQLite store (the sqlite3 backup API: a consistent copy while annotators write).

    python -m annotation backup data/backups/hirpf.sqlite3                 # once
    python -m annotation backup data/backups/ --every 600 --keep 24        # every 10 minutes, newest 24

The copy is written beside the destination and renamed into place, so a reader of the backup never sees
half a file. PostgreSQL has its own tools (`pg_dump`); this refuses other databases.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

from db import Database

PAGES_PER_STEP = 1024  # copy in steps so writers get the lock in between


def backup_sqlite(database: Database, destination: str | Path) -> Path:
    """Copy the database to `destination` (a file, or a folder to put a timestamped file in)."""
    if not database.is_sqlite:
        raise ValueError(f"{database.display_url} is not SQLite: back it up with the server's tools (pg_dump)")
    destination = Path(destination)
    if destination.is_dir() or str(destination).endswith(os.sep):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        destination = destination / f"{Path(database.url.database).stem}-{stamp}.sqlite3"
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    source = sqlite3.connect(database.url.database, timeout=30)
    target = sqlite3.connect(partial)
    try:
        source.backup(target, pages=PAGES_PER_STEP)
    finally:
        target.close()
        source.close()
    os.replace(partial, destination)
    return destination


def prune(folder: str | Path, keep: int, stem: str) -> list[Path]:
    """Delete all but the newest `keep` timestamped backups of `stem` in `folder`; returns the deleted."""
    backups = sorted(Path(folder).glob(f"{stem}-*.sqlite3"))
    doomed = backups[:-keep] if keep > 0 else []
    for path in doomed:
        path.unlink()
    return doomed


class PeriodicBackup:
    """A daemon thread that backs the database up into `folder` every `every` seconds (for an app on a
    host without a persistent disk: point `folder` at one that persists or is synced elsewhere)."""

    def __init__(self, database: Database, folder: str | Path, every: float, keep: int = 24):
        if every <= 0:
            raise ValueError("every must be > 0 seconds")
        self.database, self.folder, self.every, self.keep = database, Path(folder), every, keep
        self.last: Path | None = None
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-backup", daemon=True)

    def start(self) -> "PeriodicBackup":
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.last = backup_sqlite(self.database, self.folder)
                prune(self.folder, self.keep, Path(self.database.url.database).stem)
                self.error = None
            except Exception as error:  # keep trying: a full disk now may be free later
                self.error = error

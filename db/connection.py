"""Where the database is, how to connect, and the one path every write takes.

SQLite (the default) is set up the way concurrent annotators need it:

- `foreign_keys=ON`, `journal_mode=WAL` (readers never block the writer; needs a local disk, because WAL
  uses shared memory), `synchronous=NORMAL` (safe with WAL: a power cut may lose the last commits, never
  corrupt the file), `busy_timeout` (another *process* holding the write lock is waited for, not failed).
- One writer: every write transaction goes through `Database.write`, which holds a process-wide lock per
  database file and opens the transaction with `BEGIN IMMEDIATE` on a single writer connection (after
  datasette's `database.py`). Threads queue on the lock instead of racing for SQLite's lock, and a write never
  starts as a read and fails to upgrade - the two ways SQLite says "database is locked".

Any other database comes from `DATABASE_URL` (or `--database`); PostgreSQL is the one we test. There writes
run concurrently, and a transaction that loses a race (unique violation, serialization failure, deadlock) is
retried as a whole, which is why `write` takes a function rather than handing out a session.
"""
from __future__ import annotations

import os
import threading
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from hirpf import environment

T = TypeVar("T")

DEFAULT_FILE = "hirpf.sqlite3"
BUSY_TIMEOUT_MS = 30_000
WRITE_RETRIES = 5
# PostgreSQL SQLSTATEs of a transaction that lost a race and may simply run again.
_RETRYABLE_SQLSTATES = {"23505": "unique violation", "40001": "serialization failure", "40P01": "deadlock"}

_write_locks: dict[str, threading.Lock] = {}
_write_locks_guard = threading.Lock()
_in_write = threading.local()


def data_dir(explicit: str | Path | None = None) -> Path:
    """`explicit` (a `--data_dir` option), else `HIRPF_DATA_DIR`, else `data/` in the checkout (git-ignored)."""
    return Path(explicit or environment.HIRPF_DATA_DIR)


def database_url(explicit: str | None = None, *, directory: str | Path | None = None) -> str:
    """`explicit` (a `--database` option), else `DATABASE_URL`, else the SQLite file in `data_dir(directory)`.

    `postgres://` and `postgresql://` URLs (as hosting services hand them out) get the installed driver,
    psycopg 3."""
    url = explicit or environment.DATABASE_URL or f"sqlite:///{data_dir(directory) / DEFAULT_FILE}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class Database:
    """An open database, migrated to the latest schema unless `migrate=False`."""

    def __init__(self, url: str | None = None, *, migrate: bool = True):
        self.url: URL = make_url(database_url(url))
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            path = self.url.database
            if not path or path == ":memory:" or path.startswith("file:"):
                raise ValueError(f"SQLite needs a database file, not {self.url}: each connection of an "
                                 "in-memory database would see its own empty database")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._reader = create_engine(self.url, pool_size=8, max_overflow=24)
            self._writer = create_engine(self.url, pool_size=1, max_overflow=0)
            _configure_sqlite(self._reader, begin="BEGIN")
            _configure_sqlite(self._writer, begin="BEGIN IMMEDIATE")
            self._write_lock: threading.Lock | None = _write_lock_for(path)
        else:
            self._reader = self._writer = create_engine(self.url, pool_size=8, max_overflow=24,
                                                        pool_pre_ping=True)
            self._write_lock = None
        self._read_sessions = sessionmaker(self._reader, expire_on_commit=False, autoflush=False)
        self._write_sessions = sessionmaker(self._writer, expire_on_commit=False)
        event.listen(self._read_sessions, "before_flush", _refuse_flush)
        if migrate:
            from db.migrations import migrate as apply_migrations

            apply_migrations(self)

    def __repr__(self) -> str:
        return f"Database({self.display_url!r})"

    @property
    def display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading; it refuses to flush changes (writes go through `write`)."""
        with self._read_sessions() as session:
            yield session

    def write(self, fn: Callable[[Session], T]) -> T:
        """Run `fn(session)` in one transaction, committed when it returns, rolled back when it raises.

        `fn` may run more than once on PostgreSQL (a lost race is retried), so it must not have side
        effects outside the session. Writes cannot nest."""
        if getattr(_in_write, "active", False):
            raise RuntimeError("Database.write called inside another write: do the work in the outer one")
        _in_write.active = True
        try:
            for attempt in range(WRITE_RETRIES + 1):
                try:
                    with self._writer_turn(), self._write_sessions() as session, session.begin():
                        return fn(session)
                except DBAPIError as error:
                    if self.is_sqlite or attempt == WRITE_RETRIES or not _retryable(error):
                        raise
            raise AssertionError("unreachable")
        finally:
            _in_write.active = False

    def serialize(self, session: Session, name: str) -> None:
        """Inside `write`: let one transaction at a time past this point for `name` (on SQLite every
        write already runs alone; on PostgreSQL a transaction-scoped advisory lock)."""
        if not self.is_sqlite:
            session.execute(select(func.pg_advisory_xact_lock(zlib.crc32(name.encode()))))

    def close(self) -> None:
        self._reader.dispose()
        self._writer.dispose()

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        if self._write_lock is None:
            yield
            return
        with self._write_lock:
            yield


def _configure_sqlite(engine: Engine, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        # SQLAlchemy emits BEGIN itself (below): the sqlite3 module's own transaction handling would start
        # every write transaction as a deferred read one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        connection.exec_driver_sql(begin)


def _write_lock_for(path: str) -> threading.Lock:
    key = os.path.realpath(path)
    with _write_locks_guard:
        return _write_locks.setdefault(key, threading.Lock())


def _retryable(error: DBAPIError) -> bool:
    return getattr(error.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES


def _refuse_flush(session, _context, _instances):
    raise RuntimeError("this session is read-only: write through Database.write")

"""Database fixtures: every database test runs against SQLite (a real file) and PostgreSQL (a real server).

PostgreSQL: `HIRPF_TEST_POSTGRES_URL` (a server where the user may CREATE DATABASE), else a throwaway
cluster started from the Debian binaries (`/usr/lib/postgresql/*/bin`) on a unix socket in a temporary
folder, stopped at the end of the session. As root (CI), the cluster runs as the `postgres` user, which
PostgreSQL requires. Without the binaries the PostgreSQL cases skip, saying why.

A pytest plugin (listed in conftest.py's `pytest_plugins`): `database_url` (a fresh empty database on each
engine, by URL), `database` (the same, opened as a `db.Database`) and `postgres_server`. sqlalchemy and the
project's `db` are imported inside the fixtures: conftest.py loads this module on the GPU check's machine
too, which has neither.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

BACKENDS = ("sqlite", "postgresql")


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _as_cluster_owner(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--", *args] if runuser else ["su", "postgres", "-c", " ".join(args)]


@pytest.fixture(scope="session")
def postgres_server():
    """A URL of a PostgreSQL server (psycopg driver) whose user may create databases."""
    url = os.environ.get("HIRPF_TEST_POSTGRES_URL")
    if url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)
        return
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL not available: set HIRPF_TEST_POSTGRES_URL or install the Debian package "
                    "`postgresql` (no /usr/lib/postgresql/*/bin/initdb)")
    root = Path(tempfile.mkdtemp(prefix="hirpf-pg-"))
    data, socket_dir, log = root / "data", root / "socket", root / "server.log"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(socket_dir, "postgres")
    run = dict(check=True, capture_output=True, text=True)
    subprocess.run(_as_cluster_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                      "--no-sync", "-E", "UTF8", "--locale", "C"]), **run)
    # fsync off: a throwaway cluster; the kill test kills the client, never the server.
    options = f"-k {socket_dir} -c listen_addresses='' -c fsync=off -c max_connections=200"
    try:
        subprocess.run(_as_cluster_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                                          "-o", options, "start"]), **run)
    except subprocess.CalledProcessError as error:
        server_log = log.read_text() if log.exists() else ''
        raise RuntimeError(f"PostgreSQL did not start: {error.stderr}\n{server_log}") from error
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={socket_dir}"
    finally:
        subprocess.run(_as_cluster_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                          "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    """A URL of a fresh, empty database: a SQLite file in tmp, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.sqlite3'}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(request.getfixturevalue("postgres_server"))
    name = f"hirpf_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield server.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def database(database_url):
    """A fresh empty database on each engine, opened (and closed after the test)."""
    from db import Database

    opened = Database(database_url)
    yield opened
    opened.close()

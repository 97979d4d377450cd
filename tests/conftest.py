"""Shared fixtures: a throwaway PostgreSQL server on loopback for the database tests.

``postgres_url`` starts one cluster per test session (initdb + pg_ctl in a temp
dir, a free 127.0.0.1 port, trust auth, fsync off) and stops it at the end.
Set ``CONSORTIUM_TEST_POSTGRES_URL`` to use a server you already run instead.
Without the server binaries the PostgreSQL tests are skipped locally, but fail
when ``CI`` is set: CI installs them (``.ci/postgres.sh``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

EXTERNAL_URL_ENV = "CONSORTIUM_TEST_POSTGRES_URL"
_SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sockets}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
shared_buffers = 32MB
"""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: $PG_BINDIR if set, else PATH, else Debian's layout."""
    if os.environ.get("PG_BINDIR"):
        candidates = [Path(os.environ["PG_BINDIR"])]  # an explicit choice: no fallback
    else:
        on_path = shutil.which("initdb")
        candidates = [Path(on_path).resolve().parent] if on_path else []
        # Debian and Ubuntu keep the server binaries off PATH, one folder per major version
        versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
        candidates += sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One throwaway PostgreSQL cluster; runs as an unprivileged user when we are root."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="consortium-pg-", dir=_shared_tmp()))
        self.data = self.root / "data"
        self.port = 0
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:  # initdb refuses to run as root
            user = _unprivileged_user()
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C", "LANG": "C", "PGTZ": "UTC"},
            **self._run_as,
        )

    def start(self) -> None:
        init = self._pg("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--no-locale", "--no-sync")  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write(_SETTINGS.format(sockets=self.root))
        log = self.root / "server.log"
        for _ in range(5):  # another process may grab the free port before the server does
            self.port = _free_port()
            started = self._pg("pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "60",
                               "-o", f"-p {self.port}", "start")  # fmt: skip
            if started.returncode == 0:
                return
        raise RuntimeError(f"pg_ctl start failed:\n{started.stderr}\n{log.read_text()[-4000:]}")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _shared_tmp() -> str:
    # pytest's tmp_path lives under a root-only folder the postgres user cannot enter
    return "/tmp" if os.geteuid() == 0 and os.path.isdir("/tmp") else tempfile.gettempdir()


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs a PostgreSQL server (see postgres_url)")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL server for this test session (superuser, trust auth)."""
    external = os.environ.get(EXTERNAL_URL_ENV)
    if external:
        yield external
        return
    bindir = find_postgres_bindir()
    if bindir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found; run .ci/postgres.sh"
        if _in_ci():
            pytest.fail(f"CI is set but {reason}", pytrace=False)
        pytest.skip(reason)
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def postgres_db_url(postgres_url: str) -> Iterator[str]:
    """A URL whose connections see only a fresh, empty schema; dropped after the test.

    A schema (via ``search_path``) instead of a database: creating a database
    copies a template and costs about a second on a busy machine, a schema a
    millisecond.
    """
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    server = make_url(postgres_url)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    schema = sql.Identifier(name := f"t_{uuid.uuid4().hex[:16]}")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    try:
        url = server.update_query_dict({"options": f"-csearch_path={name}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))

"""A throwaway PostgreSQL cluster for tests and benchmarks.

:func:`postgres_cluster` makes a cluster in a temporary folder (``initdb``), starts it on a free
port of 127.0.0.1 (``pg_ctl``), and stops and deletes it at the end; :meth:`PostgresCluster.new_database`
gives a fresh, empty database and its ``postgresql+asyncpg://`` URL (CREATE DATABASE copies a
template: milliseconds). PostgreSQL refuses to run as root, so as root the cluster belongs to the
``postgres`` user (``runuser``). Durability is switched off (``fsync=off``): a test cluster
never outlives its run.

In pytest (the test kit's plugin) the cluster starts once per test run, on first use, and each test
that asks for ``postgres_url`` gets a database of its own::

    async def test_on_postgres(postgres_url):
        db = Database(postgres_url)

Without PostgreSQL installed those tests skip; in CI (``BOTS_REQUIRE_SERVERS=1``) they fail.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bots.testing.servers import free_port

# Debian's packages (PostgreSQL is on the CI image) keep the server programs off PATH
PG_BIN_CANDIDATES = tuple(f"/usr/lib/postgresql/{v}/bin" for v in (17, 16, 15, 14, 13))
SUPERUSER = "postgres"


def find_initdb() -> str | None:
    """The ``initdb`` to use: on PATH, else in Debian's versioned folder; None when absent."""
    found = shutil.which("initdb")
    if found:
        return found
    return next((f"{d}/initdb" for d in PG_BIN_CANDIDATES if Path(d, "initdb").is_file()), None)


@dataclass
class PostgresCluster:
    """A running cluster: ``url(name)`` for an existing database, ``new_database()`` for a fresh one."""

    bin_dir: Path
    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def url(self, database: str = "postgres", driver: str = "asyncpg") -> str:
        """The SQLAlchemy URL of ``database`` (``driver``: asyncpg, or psycopg for blocking code)."""
        return f"postgresql+{driver}://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql (over the Unix socket in the data folder); its output."""
        command = [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        command += ["-h", str(self.data_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", database]
        done = subprocess.run([*command, "-c", sql], capture_output=True, text=True, timeout=60, check=False)
        if done.returncode:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def new_database(self, prefix: str = "test") -> str:
        """A fresh empty database; its asyncpg URL."""
        with self._lock:
            name = f"{prefix}_{next(self._names)}"
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL's server programs refuse root: run them as the ``postgres`` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", SUPERUSER, "--", *command]
    return command


@contextlib.contextmanager
def postgres_cluster(initdb: str | None = None, *, max_connections: int = 300) -> Iterator[PostgresCluster]:
    """Create, start, yield, then stop and delete a cluster (see the module's doc)."""
    initdb = initdb or find_initdb()
    if initdb is None:
        raise FileNotFoundError("PostgreSQL's initdb is not installed (Debian: postgresql)")
    bin_dir = Path(initdb).resolve().parent  # psql and pg_ctl beside it (PATH may hold a link)
    # not under pytest's tmp_path: the postgres user must be able to reach the folder
    data_dir = Path(tempfile.mkdtemp(prefix="bots-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data_dir, SUPERUSER, SUPERUSER)
    port = free_port()
    log_file = data_dir / "server.log"
    started = False
    try:
        try:
            subprocess.run(
                _as_postgres(
                    [initdb, "-D", str(data_dir / "db"), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                     "--locale=C.UTF-8", "--no-sync"]
                ),
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            options = (
                f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1"
                f" -c max_connections={max_connections}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            subprocess.run(
                _as_postgres(
                    [str(bin_dir / "pg_ctl"), "-D", str(data_dir / "db"), "-l", str(log_file), "-o",
                     options, "-w", "-t", "60", "start"]
                ),
                check=True, capture_output=True, timeout=90,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or b"").decode(errors="replace").strip()
            if log_file.exists():
                detail += "\n" + log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"could not start a test PostgreSQL: {exc}\n{detail}") from exc
        started = True
        yield PostgresCluster(bin_dir, data_dir, port)
    finally:
        if started:
            subprocess.run(
                _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data_dir / "db"), "-m", "immediate",
                              "-w", "stop"]),
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        shutil.rmtree(data_dir, ignore_errors=True)

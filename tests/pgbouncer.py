"""A throwaway PgBouncer in transaction mode in front of the tests' PostgreSQL, started and
stopped by the test like the PostgreSQL of ``tests.postgres``."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import sqlalchemy as sa

from tests.processes import free_ports

BINARY = "pgbouncer"
START_TIMEOUT = 15.0


def missing() -> list[str]:
    """For ``tests.debian.require``: the package to install, if its program is not here."""
    return [] if shutil.which(BINARY) or Path(f"/usr/sbin/{BINARY}").exists() else ["pgbouncer"]


@dataclass(frozen=True)
class Pooler:
    port: int
    #: Where its log goes, for a failing test to show.
    log: Path

    def url(self, database_url: str) -> str:
        """``database_url`` (the same database, user and password) through the pooler."""
        direct = sa.make_url(database_url)
        query = {k: v for k, v in direct.query.items() if k != "host"}
        through = direct.set(host="127.0.0.1", port=self.port, query=query)
        return through.render_as_string(hide_password=False)

    def show(self, what: str) -> list[dict[str, object]]:
        """The admin console's ``SHOW <what>`` (``POOLS``, ``DATABASES``...), as rows."""
        admin = f"host=127.0.0.1 port={self.port} dbname=pgbouncer user=postgres"
        with psycopg.connect(admin, autocommit=True, prepare_threshold=None) as conn:
            cursor = conn.execute(f"SHOW {what}")
            names = [column.name for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@contextmanager
def transaction_pooler(server_url: str, *, server_connections: int) -> Iterator[Pooler]:
    """PgBouncer on a free port, in transaction mode, trusting every client as PostgreSQL
    here does, and holding at most ``server_connections`` to the server per database: far
    fewer than the service's pools, so that client connections must share them, one
    transaction at a time."""
    program = shutil.which(BINARY) or f"/usr/sbin/{BINARY}"
    server = sa.make_url(server_url)
    host = server.query.get("host") or server.host or "127.0.0.1"
    if isinstance(host, tuple):
        host = host[0]
    (port,) = free_ports(1)
    workdir = Path(tempfile.mkdtemp(prefix="tokenbank-pgbouncer-"))
    config = workdir / "pgbouncer.ini"
    (workdir / "users.txt").write_text(f'"{server.username or "postgres"}" ""\n')
    config.write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={host} port={server.port or 5432}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {workdir / 'users.txt'}",
                f"admin_users = {server.username or 'postgres'}",
                "pool_mode = transaction",
                f"default_pool_size = {server_connections}",
                "max_client_conn = 1000",
                # Each test uses a database of its own name: let the pooler forget them.
                "autodb_idle_timeout = 60",
                f"logfile = {workdir / 'log'}",
                "",
            ]
        )
    )
    demote: dict[str, object] = {}
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        nobody = pwd.getpwnam("nobody")
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        demote = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    process = subprocess.Popen(  # type: ignore[call-overload]
        [program, str(config)],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        **demote,
    )
    pooler = Pooler(port, workdir / "log")
    try:
        _wait_until_up(pooler, process)
        yield pooler
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_until_up(pooler: Pooler, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited {process.returncode}: {_tail(pooler.log)}")
        try:
            pooler.show("VERSION")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer not up: {_tail(pooler.log)}") from None
            time.sleep(0.05)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"

"""A throwaway PostgreSQL server and scratch databases for the tests."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa


class PostgresUnavailable(Exception):
    pass


def find_bindir() -> str:
    candidates = []
    if pg_ctl := shutil.which("pg_ctl"):
        candidates.append(os.path.dirname(pg_ctl))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    raise PostgresUnavailable(
        "no PostgreSQL binaries (initdb, pg_ctl) found on PATH or under /usr/lib/postgresql;"
        " install PostgreSQL or set TOKENBANK_TEST_DATABASE_URL"
    )


@dataclass
class LocalPostgres:
    """A private PostgreSQL server the tests started, which they may also restart."""

    url: str
    run: Callable[..., None]
    data: str

    def restart(self, mode: str = "immediate") -> None:
        """``pg_ctl restart -m immediate``: every connection dies, the server comes back.
        (Its log goes to the file, as at start: otherwise the server would hold our pipe.)"""
        log = os.path.join(os.path.dirname(self.data), "log")
        self.run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-l", log, "restart")


@contextmanager
def ephemeral_postgres() -> Iterator[str]:
    """The URL of a private server (see ``local_postgres``)."""
    with local_postgres() as server:
        yield server.url


@contextmanager
def local_postgres() -> Iterator[LocalPostgres]:
    """Start a private server on a Unix socket; PostgreSQL refuses root, so demote."""
    bindir = find_bindir()
    workdir = tempfile.mkdtemp(prefix="tokenbank-pg-")
    data = os.path.join(workdir, "data")
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(workdir, nobody.pw_uid, nobody.pw_gid)
        run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    os.chmod(workdir, 0o700)

    def run(*args: str) -> None:
        try:
            subprocess.run(
                [os.path.join(bindir, args[0]), *args[1:]],
                check=True,
                capture_output=True,
                cwd=workdir,
                **run_as,
            )
        except subprocess.CalledProcessError as exc:
            raise PostgresUnavailable(
                f"{args[0]} failed: {exc.stderr.decode(errors='replace')[-500:]}"
            ) from exc

    try:
        run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-k {workdir} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
            " -c max_connections=200"
        )
        run("pg_ctl", "-D", data, "-w", "-l", os.path.join(workdir, "log"), "-o", options, "start")
        try:
            yield LocalPostgres(f"postgresql://postgres@/postgres?host={workdir}", run, data)
        finally:
            run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """Create a uniquely named database on the server, and drop it afterwards."""
    url = sa.make_url(server_url).set(drivername="postgresql")
    name = f"tokenbank_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = url.render_as_string(hide_password=False)
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise PostgresUnavailable(f"cannot reach PostgreSQL at {url!r}: {exc}") from exc
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_backends(url: sa.URL | str) -> None:
    """What ``pg_terminate_backend`` (or a server restart) does to every other connection
    to the database at ``url``: they are gone."""
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
    finally:
        admin.dispose()

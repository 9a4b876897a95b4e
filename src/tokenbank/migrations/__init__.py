"""Alembic migrations, shipped inside the package; run them with ``tokenbank db upgrade``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from tokenbank.db import Database
from tokenbank.errors import InvalidArgument, SchemaOutOfDate


def alembic_config(db: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["database"] = db
    return config


def upgrade(db: Database, revision: str = "head") -> None:
    """Apply migrations up to ``revision``; ``InvalidArgument`` for one no migration has."""
    config = alembic_config(db)
    if not revision.strip():
        raise InvalidArgument("revision", "name a revision, or head")
    try:
        ScriptDirectory.from_config(config).get_revision(revision)
    except (CommandError, ValueError) as exc:  # alembic's resolution errors are both kinds
        raise InvalidArgument("revision", f"no such revision: {exc}") from None
    command.upgrade(config, revision)


def check(db: Database) -> None:
    """Raise if the database is not at head, or if the tables and the migrations disagree."""
    command.check(alembic_config(db))


def head_revision(db: Database) -> str | None:
    return ScriptDirectory.from_config(alembic_config(db)).get_current_head()


def current_revision(db: Database) -> str | None:
    with db.read() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_current(db: Database, head: str | None = None) -> bool:
    """Whether the database is at ``head`` (default: the newest revision shipped)."""
    return current_revision(db) == (head or head_revision(db))


def require_current(db: Database) -> None:
    """Refuse to serve a database behind this version's migrations (``SchemaOutOfDate``):
    every route touching a new table or column would fail. A database *ahead* of this
    version (a newer version migrated it during a rolling upgrade) is accepted: migrations
    only ever add what older code can ignore."""
    current = current_revision(db)
    head = head_revision(db)
    if current == head:
        return
    known = {
        script.revision
        for script in ScriptDirectory.from_config(alembic_config(db)).walk_revisions()
    }
    if current is None or current in known:
        raise SchemaOutOfDate(
            f"the database is at revision {current or 'none'}; this version needs {head}:"
            " run `tokenbank db upgrade` first"
        )

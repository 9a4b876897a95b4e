from __future__ import annotations

import warnings
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from tokenbank.db import Database
from tokenbank.models import metadata

db: Database = context.config.attributes["database"]


def for_this_dialect(item: Any, _name: Any, kind: str, _reflected: bool, _other: Any) -> bool:
    """An index the models create on one dialect only (``info["dialect"]``, with its
    ``ddl_if``) is compared on that dialect only."""
    if kind != "index" or item is None:
        return True
    return item.info.get("dialect", db.dialect) == db.dialect  # type: ignore[no-any-return]


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite rebuilds tables for ALTER
        compare_type=True,
        include_object=for_this_dialect,
    )
    with warnings.catch_warnings():
        # Alembic says so of every expression index before asking ``for_this_dialect``,
        # even of one the models keep off this dialect (the user search's, on SQLite).
        warnings.filterwarnings(
            "ignore", "autogenerate skipping metadata-specified expression-based index"
        )
        context.run_migrations()


if db.dialect == "sqlite":
    # Rebuilding a table that others reference drops it first, which foreign keys forbid:
    # they are off while migrating (the pragma only works outside a transaction) and every
    # reference is checked before the migration commits.
    with db.engine.connect() as connection:
        driver = connection.connection.driver_connection
        assert driver is not None
        driver.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                run(connection)
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
        finally:
            driver.execute("PRAGMA foreign_keys=ON")
else:
    with db.transaction() as connection:
        run(connection)

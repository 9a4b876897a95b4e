from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from tokenbank.db import Database
from tokenbank.models import metadata

db: Database = context.config.attributes["database"]


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite rebuilds tables for ALTER
        compare_type=True,
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

from __future__ import annotations

from alembic import context

from tokenbank.db import Database
from tokenbank.models import metadata

db: Database = context.config.attributes["database"]

with db.transaction() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite rebuilds tables for ALTER
        compare_type=True,
    )
    context.run_migrations()

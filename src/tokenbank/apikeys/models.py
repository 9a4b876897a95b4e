from __future__ import annotations

import sqlalchemy as sa

from tokenbank.columns import Id, UtcDateTime
from tokenbank.db import metadata

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    # The first characters of the key, to recognise it in lists and logs; never enough to use.
    sa.Column("prefix", sa.String(16), nullable=False),
    # SHA-256 of the whole key: keys are 256 random bits, so a fast hash is enough.
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("scopes", sa.String(64), nullable=False),  # space-separated
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
    sa.CheckConstraint("scopes <> ''", name="scopes_present"),
)

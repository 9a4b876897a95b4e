from __future__ import annotations

import sqlalchemy as sa

from tokenbank.columns import UtcDateTime
from tokenbank.db import metadata
from tokenbank.ledger.models import MAX_KEY_LENGTH

#: The languages the pages are translated into, as BCP 47 tags.
LANGUAGES = ("en", "zh-CN")

users = sa.Table(
    "users",
    metadata,
    # The host app's own id for the user; the wallet is keyed by the same string.
    sa.Column("id", sa.String(MAX_KEY_LENGTH), sa.ForeignKey("accounts.user_id"), primary_key=True),
    sa.Column("email", sa.String(320), nullable=True, unique=True),  # stored lower-cased
    sa.Column("name", sa.String(200), nullable=True),
    # Only users who sign in to the pages with a password have one (argon2id, PHC string).
    sa.Column("password_hash", sa.String(255), nullable=True),
    sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()),
    # The language the user chose for the pages; none: the browser's Accept-Language decides.
    sa.Column("language", sa.String(16), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint(
        f"language IN ({', '.join(repr(tag) for tag in LANGUAGES)})", name="language"
    ),
)

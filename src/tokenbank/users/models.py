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
    # The address as typed (trimmed), where mail goes; users/emails.py explains the forms.
    sa.Column("email", sa.String(320), nullable=True, unique=True),
    # How the address is looked up: one account per canonical form, and per skeleton (one
    # per group of addresses that look alike). None without an email, and for an account
    # whose address collided with an older one's when the forms were introduced (0008).
    sa.Column("email_canonical", sa.String(320), nullable=True, unique=True),
    sa.Column("email_skeleton", sa.String(1000), nullable=True, unique=True),
    # When the owner of the address followed a link sent to it (or the host app, which
    # created the user through the API, vouched for it).
    sa.Column("email_verified_at", UtcDateTime, nullable=True),
    sa.Column("name", sa.String(200), nullable=True),
    # Only users who sign in to the pages with a password have one (argon2id, PHC string).
    sa.Column("password_hash", sa.String(255), nullable=True),
    sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()),
    # The language the user chose for the pages; none: the browser's Accept-Language decides.
    sa.Column("language", sa.String(16), nullable=True),
    # The IANA time zone the pages show times in (the browser's at sign-up, changeable on
    # the account page); none: the browser's, as it says on each visit, else UTC.
    sa.Column("time_zone", sa.String(64), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint(
        f"language IN ({', '.join(repr(tag) for tag in LANGUAGES)})", name="language"
    ),
)

# The admin's user search (``users.find_users``) asks for ids and addresses that start with
# what was typed. text_pattern_ops lets PostgreSQL serve ``LIKE 'x%'`` from an index
# whatever the database's collation; without them the search read the whole table.
# (SQLite's LIKE ignores case, and uses no index for it either way.)
sa.Index(
    "ix_users_id_prefix",
    users.c.id,
    postgresql_ops={"id": "text_pattern_ops"},
    info={"dialect": "postgresql"},
).ddl_if(dialect="postgresql")
sa.Index(
    "ix_users_email_prefix",
    sa.func.lower(users.c.email).label("email_lower"),
    postgresql_ops={"email_lower": "text_pattern_ops"},
    info={"dialect": "postgresql"},
).ddl_if(dialect="postgresql")

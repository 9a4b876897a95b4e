from __future__ import annotations

import sqlalchemy as sa

from tokenbank.columns import UtcDateTime
from tokenbank.db import metadata
from tokenbank.ledger.models import MAX_KEY_LENGTH

#: Signed-in browsers. The cookie holds a random token; only its SHA-256 is stored, so a
#: leaked table signs nobody in. Revoking is setting ``revoked_at``.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(MAX_KEY_LENGTH), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("via", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
    sa.CheckConstraint("via IN ('password', 'registration', 'portal')", name="via_known"),
    sa.CheckConstraint("expires_at > created_at", name="expires_after_creation"),
    sa.Index("ix_sessions_user_id", "user_id"),
)

#: One-time sign-in links a host app hands to its users (``portal-sessions``).
portal_links = sa.Table(
    "portal_links",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # SHA-256 of the token in the link
    sa.Column("user_id", sa.String(MAX_KEY_LENGTH), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("next_path", sa.String(500), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("used_at", UtcDateTime, nullable=True),
    sa.CheckConstraint("expires_at > created_at", name="expires_after_creation"),
    sa.Index("ix_portal_links_expires_at", "expires_at"),
)

#: Fixed-window counters for the ``limits`` library, shared by every process.
rate_limits = sa.Table(
    "rate_limits",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("hits", sa.Integer, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.CheckConstraint("hits >= 0", name="hits_not_negative"),
)

#: Links sent by mail: confirm an address, reset a password, change the address. The link
#: carries 256 random bits; only their SHA-256 is stored. ``email`` is the address the link
#: was sent to (it must still be the account's, or the new one for a change);
#: ``password_stamp`` binds a reset link to the password it replaces, and a change of
#: address to the password and the address the account had (``links.move_stamp``).
email_links = sa.Table(
    "email_links",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("purpose", sa.String(16), nullable=False),
    sa.Column("user_id", sa.String(MAX_KEY_LENGTH), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("password_stamp", sa.String(64), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("used_at", UtcDateTime, nullable=True),
    sa.CheckConstraint("purpose IN ('verify', 'reset', 'email')", name="purpose_known"),
    sa.CheckConstraint("expires_at > created_at", name="expires_after_creation"),
    sa.CheckConstraint("purpose <> 'reset' OR password_stamp IS NOT NULL", name="reset_stamped"),
    sa.Index("ix_email_links_user_id", "user_id"),
    sa.Index("ix_email_links_expires_at", "expires_at"),
)

from __future__ import annotations

import sqlalchemy as sa

from tokenbank.columns import Id, Json, UtcDateTime
from tokenbank.db import metadata
from tokenbank.ledger.models import MAX_KEY_LENGTH

STATUSES = ("pending", "sent", "failed", "dropped")

#: Mail to send: written in the same transaction as the change it tells of, sent after it
#: commits, by whichever process claims it first. A row says what to write (``kind`` and
#: ``params``, no secret: a link's token is made when the mail is sent), not the text.
#: ``kept`` holds the message as delivered when no SMTP server is configured (development).
outbox = sa.Table(
    "mail_outbox",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("to_address", sa.String(320), nullable=False),
    sa.Column("user_id", sa.String(MAX_KEY_LENGTH), nullable=True),
    sa.Column("language", sa.String(16), nullable=False),
    sa.Column("params", Json, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    # A sender that claimed the row owns it until then; one that died lets it go.
    sa.Column("claimed_until", UtcDateTime, nullable=True),
    sa.Column("sent_at", UtcDateTime, nullable=True),
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.Column("message_id", sa.String(255), nullable=True),
    sa.Column("kept", sa.Text, nullable=True),
    sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="status_known"),
    sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    sa.CheckConstraint("(status = 'sent') = (sent_at IS NOT NULL)", name="sent_when_sent"),
    sa.Index("ix_mail_outbox_due", "status", "next_attempt_at"),
    sa.Index("ix_mail_outbox_created_at", "created_at"),
)

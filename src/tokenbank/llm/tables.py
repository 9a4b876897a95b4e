"""The gateway's tables: end users' model keys, and every model call with what it cost."""

from __future__ import annotations

import enum

import sqlalchemy as sa

from tokenbank.columns import Id, Json, UtcDateTime
from tokenbank.db import metadata


class CallStatus(enum.StrEnum):
    PENDING = "pending"  # admitted: its hold is pending, the upstream is answering
    OK = "ok"
    ABORTED = "aborted"  # the client went away mid-call
    FAILED = "failed"  # the upstream failed (before any output: nothing charged)
    REFUSED = "refused"  # not admitted: too few tokens, or the key's cap for the day


def _in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


llm_keys = sa.Table(
    "llm_keys",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column(
        "user_id", sa.String(255), sa.ForeignKey("accounts.user_id"), nullable=False, index=True
    ),
    sa.Column("name", sa.String(100), nullable=False),
    # The first characters of the key, to recognise it in lists; never enough to use.
    sa.Column("prefix", sa.String(16), nullable=False),
    # SHA-256 of the whole key: keys are 256 random bits, so a fast hash is enough.
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    # The most the key may spend a day (UTC), in tokens; NULL: no cap of its own.
    sa.Column("daily_cap", sa.BigInteger, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
    sa.CheckConstraint("daily_cap IS NULL OR daily_cap > 0", name="daily_cap"),
)

llm_calls = sa.Table(
    "llm_calls",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_id", sa.String(255), sa.ForeignKey("accounts.user_id"), nullable=False),
    # The user's model key, or NULL for a call the host app made with its service key.
    sa.Column("key_id", Id, sa.ForeignKey("llm_keys.id"), nullable=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    # The caller's Idempotency-Key: a retried call is charged once.
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    # The SHA-256 of the request a key was first used with (``calls.request_digest``): the
    # same key with another request is a conflict, not a replay. NULL without a key.
    sa.Column("request_digest", sa.String(64), nullable=True),
    # Attempts under one key: a retry after a call that charged nothing tries again.
    sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
    sa.Column("hold_id", Id, sa.ForeignKey("holds.id"), nullable=True),
    # The upper bound held before the call: the input estimate and the output cap.
    sa.Column("held", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("input_estimate", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("output_cap", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("input_tokens", sa.BigInteger, nullable=True),
    sa.Column("output_tokens", sa.BigInteger, nullable=True),
    # Where the token counts came from: the upstream's usage, or counted by the gateway
    # (a stream cut before its usage arrived).
    sa.Column("usage_source", sa.String(16), nullable=True),
    sa.Column("charged", sa.BigInteger, nullable=False, server_default="0"),
    # What the call cost beyond what the wallet had (recorded as debt).
    sa.Column("shortfall", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("latency_ms", sa.Integer, nullable=True),
    sa.Column("first_token_ms", sa.Integer, nullable=True),
    sa.Column("error", sa.String(200), nullable=True),
    # A finished call's reply (a JSON body, or a stream's events), returned to a retry
    # with the same idempotency key; NULL when there is none or it was too large.
    sa.Column("reply", Json, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.CheckConstraint(_in("status", CallStatus), name="status"),
    sa.CheckConstraint(
        "held >= 0 AND charged >= 0 AND shortfall >= 0 AND input_estimate >= 0"
        " AND output_cap >= 0 AND attempt >= 1"
        " AND (input_tokens IS NULL OR input_tokens >= 0)"
        " AND (output_tokens IS NULL OR output_tokens >= 0)",
        name="amounts",
    ),
    sa.CheckConstraint("(status = 'pending') = (finished_at IS NULL)", name="finished"),
    sa.CheckConstraint("status <> 'refused' OR charged = 0", name="refused_free"),
    sa.CheckConstraint(
        "usage_source IS NULL OR usage_source IN ('upstream', 'counted')", name="usage_source"
    ),
    sa.Index(
        "ix_llm_calls_idempotency",
        "user_id",
        "idempotency_key",
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    ),
    sa.Index("ix_llm_calls_user_created", "user_id", "created_at"),
    sa.Index("ix_llm_calls_key_created", "key_id", "created_at"),
    sa.Index("ix_llm_calls_created", "created_at"),
)

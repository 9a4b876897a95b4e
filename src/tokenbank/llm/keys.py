"""End users' model keys (``tbu_...``): what an end user, or the host app for one, gives
the ``openai`` SDK to call the gateway. A key acts for its user alone, may carry a cap per
day, and is shown once: only its SHA-256 is kept."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.columns import utcnow
from tokenbank.errors import InvalidApiKey, InvalidArgument, UnknownLlmKey, UnknownUser
from tokenbank.ledger import wallet_exists
from tokenbank.llm.tables import llm_keys

KEY_PREFIX = "tbu_"
#: The characters of a key kept to recognise it (the prefix and 6 more).
SHOWN = len(KEY_PREFIX) + 6
MAX_DAILY_CAP = 10**15


@dataclass(frozen=True, slots=True)
class LlmKey:
    id: int
    user_id: str
    name: str
    prefix: str
    daily_cap: int | None
    created_at: datetime
    revoked_at: datetime | None


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_columns = (
    llm_keys.c.id,
    llm_keys.c.user_id,
    llm_keys.c.name,
    llm_keys.c.prefix,
    llm_keys.c.daily_cap,
    llm_keys.c.created_at,
    llm_keys.c.revoked_at,
)


def _to_key(row: Any) -> LlmKey:
    return LlmKey(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        prefix=row.prefix,
        daily_cap=row.daily_cap,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def check_daily_cap(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DAILY_CAP:
        raise InvalidArgument("daily_cap", f"a whole number of tokens, 1 to {MAX_DAILY_CAP}")
    return value


def create_key(
    conn: Connection,
    *,
    user_id: str,
    name: str,
    daily_cap: int | None = None,
    now: datetime | None = None,
) -> tuple[LlmKey, str]:
    """A new key for ``user_id``, with its secret: returned once, never stored."""
    if not isinstance(name, str) or not name or len(name) > 100 or not name.isprintable():
        raise InvalidArgument("name", "must be 1 to 100 printable characters")
    cap = check_daily_cap(daily_cap)
    if not wallet_exists(conn, user_id=user_id):
        raise UnknownUser(user_id)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = conn.execute(
        sa.insert(llm_keys)
        .values(
            user_id=user_id,
            name=name,
            prefix=secret[:SHOWN],
            key_hash=hash_key(secret),
            daily_cap=cap,
            created_at=now or utcnow(),
        )
        .returning(*_columns)
    ).one()
    return _to_key(row), secret


def list_keys(conn: Connection, *, user_id: str) -> list[LlmKey]:
    """The user's keys, newest first, revoked ones included (they say when)."""
    rows = conn.execute(
        sa.select(*_columns).where(llm_keys.c.user_id == user_id).order_by(llm_keys.c.id.desc())
    )
    return [_to_key(row) for row in rows]


def revoke_key(
    conn: Connection, *, user_id: str, key_id: int, now: datetime | None = None
) -> LlmKey:
    """Revoke one of the user's keys; revoking it again changes nothing. Every process
    refuses it from its next call: keys are read per call, not cached."""
    conn.execute(
        sa.update(llm_keys)
        .where(
            llm_keys.c.id == key_id,
            llm_keys.c.user_id == user_id,
            llm_keys.c.revoked_at.is_(None),
        )
        .values(revoked_at=now or utcnow())
    )
    row = conn.execute(
        sa.select(*_columns).where(llm_keys.c.id == key_id, llm_keys.c.user_id == user_id)
    ).first()
    if row is None:
        raise UnknownLlmKey(key_id)
    return _to_key(row)


def find_key(conn: Connection, *, secret: str) -> LlmKey:
    """The live key with this secret, or ``InvalidApiKey``. Not locked: a call's units
    lock its wallet, which serialises the key's calls (``calls``)."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 100:
        raise InvalidApiKey
    query = sa.select(*_columns).where(
        llm_keys.c.key_hash == hash_key(secret), llm_keys.c.revoked_at.is_(None)
    )
    row = conn.execute(query).first()
    if row is None:
        raise InvalidApiKey
    return _to_key(row)

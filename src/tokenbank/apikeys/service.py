from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tokenbank.apikeys.models import api_keys
from tokenbank.columns import utcnow
from tokenbank.errors import InvalidApiKey, InvalidArgument, UnknownApiKey

KEY_PREFIX = "tb_"


class Scope(enum.StrEnum):
    READ = "read"  # balances, history
    SPEND = "spend"  # spend, holds, refunds; implies read
    ADMIN = "admin"  # grants, users, everything; implies spend and read


IMPLIED: dict[Scope, frozenset[Scope]] = {
    Scope.READ: frozenset({Scope.READ}),
    Scope.SPEND: frozenset({Scope.SPEND, Scope.READ}),
    Scope.ADMIN: frozenset(Scope),
}


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    name: str
    prefix: str
    scopes: frozenset[Scope]
    created_at: datetime
    revoked_at: datetime | None

    def allows(self, scope: Scope) -> bool:
        return any(scope in IMPLIED[granted] for granted in self.scopes)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _to_key(row: sa.Row[*tuple[Any, ...]]) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=frozenset(Scope(s) for s in row.scopes.split()),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


_columns = (
    api_keys.c.id,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.scopes,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


def create_key(
    conn: Connection, *, name: str, scopes: Iterable[Scope | str], now: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key; returns it with its secret, which is shown once and never stored."""
    if not name or len(name) > 100 or not name.isprintable():
        raise InvalidArgument("name", "must be 1 to 100 printable characters")
    try:
        chosen = frozenset(Scope(s) for s in scopes)
    except ValueError:
        raise InvalidArgument("scope", f"one of {', '.join(Scope)}") from None
    if not chosen:
        raise InvalidArgument("scope", "at least one scope")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = conn.execute(
        sa.insert(api_keys)
        .values(
            name=name,
            prefix=secret[: len(KEY_PREFIX) + 6],
            key_hash=hash_key(secret),
            scopes=" ".join(sorted(chosen)),
            created_at=now or utcnow(),
        )
        .returning(*_columns)
    ).one()
    return _to_key(row), secret


def list_keys(conn: Connection) -> list[ApiKey]:
    return [_to_key(row) for row in conn.execute(sa.select(*_columns).order_by(api_keys.c.id))]


def revoke_key(conn: Connection, *, key_id: int, now: datetime | None = None) -> ApiKey:
    """Revoke a key; revoking it again changes nothing."""
    conn.execute(
        sa.update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
    )
    row = conn.execute(sa.select(*_columns).where(api_keys.c.id == key_id)).first()
    if row is None:
        raise UnknownApiKey(key_id)
    return _to_key(row)


def authenticate(conn: Connection, *, secret: str) -> ApiKey:
    """The live key with this secret, or ``InvalidApiKey``."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 100:
        raise InvalidApiKey
    row = conn.execute(
        sa.select(*_columns).where(
            api_keys.c.key_hash == hash_key(secret), api_keys.c.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        raise InvalidApiKey
    return _to_key(row)

"""Holds: tokens reserved before work whose cost is not known yet (a streaming model call).

A hold raises the wallet's ``held`` amount and moves nothing; it reserves its tokens in the
wallet's buckets in the order of use (``buckets``). It ends exactly once:
posted (a spend of at most the held amount, the rest released), voided, or expired at its
deadline. Every change to a hold happens while its wallet row is locked, so a hold's status
and the wallet's ``held`` total always change together; every change is several statements,
so each runs in ``atomic``.

A hold's ``kind`` says who may end it: a ``freeze`` (``clawbacks.freeze``) is never posted,
never expires, and is only voided by the caller that made it (``unfreeze=True``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from itertools import groupby
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from tokenbank.columns import utcnow
from tokenbank.db import Batch, Statement, after_commit, atomic, driver_datetime, json_dumps
from tokenbank.errors import (
    HoldFrozen,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidArgument,
    UnknownHold,
)
from tokenbank.ledger import buckets
from tokenbank.ledger.accounts import available_tokens, wallet_id
from tokenbank.ledger.idempotency import KeyPurpose, reserved_key
from tokenbank.ledger.inputs import (
    check_amount,
    check_description,
    check_feature,
    check_key,
    check_metadata,
    check_user_id,
)
from tokenbank.ledger.journal import Receipt, log_spent, record_transfer
from tokenbank.ledger.models import (
    HoldKind,
    HoldStatus,
    SystemAccount,
    TransferKind,
    accounts,
    entries,
    holds,
)

log = structlog.get_logger("tokenbank.ledger")

AnyRow = Row[*tuple[Any, ...]]

DEFAULT_TTL_SECONDS = 900
MAX_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Hold:
    id: int
    user_id: str
    amount: int
    status: HoldStatus
    idempotency_key: str
    description: str | None
    metadata: dict[str, Any] | None
    expires_at: datetime
    created_at: datetime
    resolved_at: datetime | None
    posted_amount: int | None
    transfer_id: int | None
    kind: HoldKind = HoldKind.HOLD
    feature: str | None = None
    quantity: int | None = None
    replayed: bool = False


_hold_columns = (
    holds.c.id,
    accounts.c.user_id,
    holds.c.account_id,
    holds.c.amount,
    holds.c.status,
    holds.c.idempotency_key,
    holds.c.description,
    holds.c.metadata,
    holds.c.expires_at,
    holds.c.created_at,
    holds.c.resolved_at,
    holds.c.posted_amount,
    holds.c.transfer_id,
    holds.c.kind,
    holds.c.feature,
    holds.c.quantity,
)
_select_hold = sa.select(*_hold_columns).join(accounts, accounts.c.id == holds.c.account_id)


def _to_hold(row: AnyRow, *, replayed: bool = False) -> Hold:
    return Hold(
        id=row.id,
        user_id=row.user_id,
        amount=row.amount,
        status=HoldStatus(row.status),
        idempotency_key=row.idempotency_key,
        description=row.description,
        metadata=row.metadata,
        expires_at=row.expires_at,
        created_at=row.created_at,
        resolved_at=row.resolved_at,
        posted_amount=row.posted_amount,
        transfer_id=row.transfer_id,
        kind=HoldKind(row.kind),
        feature=row.feature,
        quantity=row.quantity,
        replayed=replayed,
    )


def get_hold(conn: Connection, *, hold_id: int) -> Hold:
    row = conn.execute(_select_hold.where(holds.c.id == hold_id)).first()
    if row is None:
        raise UnknownHold(hold_id)
    return _to_hold(row)


_insert_hold = {
    name: dialect.insert(holds)
    .on_conflict_do_nothing(index_elements=["idempotency_key"])
    .returning(holds.c.id)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def check_ttl(ttl_seconds: object) -> None:
    """A hold's time to live: whole seconds, 1 to ``MAX_TTL_SECONDS``."""
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise InvalidArgument("ttl_seconds", "must be a whole number of seconds")
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidArgument("ttl_seconds", f"must be between 1 and {MAX_TTL_SECONDS}")


def hold(
    conn: Connection,
    *,
    user_id: str,
    amount: int,
    idempotency_key: str,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
    feature: str | None = None,
    quantity: int | None = None,
) -> Hold:
    """Reserve ``amount`` tokens of ``user_id`` until ``ttl_seconds`` from now; ``feature``
    and ``quantity`` say what for, and go on to the spend that posts it."""
    user_id = check_user_id(user_id)
    amount = check_amount(amount)
    key = check_key(idempotency_key)
    check_ttl(ttl_seconds)
    description = check_description(description)
    metadata = check_metadata(metadata)
    feature, quantity = check_feature(feature, quantity)
    now = now or utcnow()

    return reserve(
        conn,
        user_id=user_id,
        amount=amount,
        key=key,
        kind=HoldKind.HOLD,
        expires_at=now + timedelta(seconds=ttl_seconds),
        description=description,
        metadata=metadata,
        now=now,
        feature=feature,
        quantity=quantity,
    )


def hold_call(
    conn: Connection,
    *,
    user_id: str,
    amount: int,
    call: str,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Hold:
    """``hold`` for a model call the gateway admits: its key is reserved
    (``@call:{call}``), so no API caller can take it first, and repeating it replays the
    hold it made."""
    user_id = check_user_id(user_id)
    amount = check_amount(amount)
    check_ttl(ttl_seconds)
    description = check_description(description)
    metadata = check_metadata(metadata)
    now = now or utcnow()
    return reserve(
        conn,
        user_id=user_id,
        amount=amount,
        key=call_hold_key(call),
        kind=HoldKind.HOLD,
        expires_at=now + timedelta(seconds=ttl_seconds),
        description=description,
        metadata=metadata,
        now=now,
    )


def reserve(
    conn: Connection,
    *,
    user_id: str,
    amount: int,
    key: str,
    kind: HoldKind,
    expires_at: datetime,
    description: str | None,
    metadata: dict[str, Any] | None,
    now: datetime,
    feature: str | None = None,
    quantity: int | None = None,
) -> Hold:
    """Create a hold of ``kind`` from checked values, or replay the one ``key`` made.

    Shared by ``hold`` and ``clawbacks.freeze``, which differ in who may end the hold and
    how its key is made, not in how tokens are reserved.
    """
    with atomic(conn):
        return _reserve(
            conn,
            user_id=user_id,
            amount=amount,
            key=key,
            kind=kind,
            expires_at=expires_at,
            description=description,
            metadata=metadata,
            now=now,
            feature=feature,
            quantity=quantity,
        )


def _reserve(
    conn: Connection,
    *,
    user_id: str,
    amount: int,
    key: str,
    kind: HoldKind,
    expires_at: datetime,
    description: str | None,
    metadata: dict[str, Any] | None,
    now: datetime,
    feature: str | None = None,
    quantity: int | None = None,
) -> Hold:
    account_id = wallet_id(conn, user_id, lock=True)
    if conn.dialect.name == "postgresql" and kind is HoldKind.HOLD:
        made = _reserve_at_once(
            conn,
            account_id=account_id,
            user_id=user_id,
            amount=amount,
            key=key,
            expires_at=expires_at,
            description=description,
            metadata=metadata,
            now=now,
            feature=feature,
            quantity=quantity,
        )
        if made is not None:
            return made
    existing = conn.execute(_select_hold.where(holds.c.idempotency_key == key)).first()
    if existing is not None:
        # A feature's amount is its price when the key was first used (see ``replay``).
        priced = feature is not None and existing.feature is not None
        # A caller's hold is asked for a lifetime: a retry comes later, and asks for as
        # long. (A freeze's deadline is fixed, whenever it is asked.)
        lifetime = kind is HoldKind.HOLD
        asked = (
            *(user_id, amount, kind.value, description, metadata, feature, quantity),
            expires_at - now if lifetime else None,
        )
        stored = (
            existing.user_id,
            amount if priced else existing.amount,
            existing.kind,
            existing.description,
            existing.metadata,
            existing.feature,
            existing.quantity,
            existing.expires_at - existing.created_at if lifetime else None,
        )
        if asked != stored:
            raise IdempotencyConflict(key, "a hold with other parameters")
        return _to_hold(existing, replayed=True)

    reserve = (
        sa.update(accounts)
        .where(accounts.c.id == account_id, accounts.c.balance - accounts.c.held >= amount)
        .values(held=accounts.c.held + amount)
        .returning(accounts.c.held)
    )
    # Tokens past their expiry count for nothing: move them out first (rarely any).
    buckets.expire_due(conn, account_id=account_id, now=now)
    reserved = conn.execute(reserve).first() is not None or (
        # Holds past their deadline still count until released; release them and retry.
        release_expired(conn, account_id=account_id, now=now) > 0
        and conn.execute(reserve).first() is not None
    )
    if not reserved:
        raise InsufficientTokens(
            user_id, requested=amount, available=available_tokens(conn, account_id)
        )
    hold_id = conn.execute(
        _insert_hold[conn.dialect.name],
        {
            "idempotency_key": key,
            "account_id": account_id,
            "amount": amount,
            "status": HoldStatus.PENDING.value,
            "kind": kind.value,
            "description": description,
            "metadata": metadata,
            "expires_at": expires_at,
            "created_at": now,
            "feature": feature,
            "quantity": quantity,
        },
    ).scalar()
    if hold_id is None:
        raise IdempotencyConflict(key, "the key belongs to another wallet's hold")
    buckets.draw(
        conn,
        account_id=account_id,
        amount=amount,
        now=now,
        hold_id=hold_id,
        paid_first=kind is HoldKind.FREEZE,
    )
    return get_hold(conn, hold_id=hold_id)


#: A hold made in one PostgreSQL statement, once the wallet is locked (so the statement's
#: snapshot is the wallet as it is: every writer of its buckets locks it first), in the
#: common case only: its key unused, no bucket of the wallet past its expiry with free
#: tokens (those must expire first), and enough free tokens. ``w`` reserves the amount on
#: the wallet; ``o`` orders its live buckets (``buckets.ORDER``) with what comes before
#: each; ``u`` reserves in the first ones what the hold needs, as ``buckets.draw`` does.
#: Otherwise it writes nothing and returns no row, and the long way decides (a replay, an
#: expiry first, a refusal with what is available). A key another wallet's hold takes at
#: this very moment returns the wallet's row without a hold: the unit of work then ends
#: with ``IdempotencyConflict``, as the long way's would. ``x`` also holds the caller's
#: ``Guard``, if one (``hold_call_in``).
_RESERVE_TEMPLATE = """
WITH x AS (
    SELECT 1 AS ok
     WHERE NOT EXISTS (SELECT 1 FROM holds WHERE idempotency_key = :key)
       AND NOT EXISTS (
           SELECT 1 FROM buckets
            WHERE account_id = CAST(:account_id AS BIGINT) AND remaining > 0
              AND remaining > held AND expires_at <= :now){guard}
), w AS (
    UPDATE accounts
       SET held = held + CAST(:amount AS BIGINT)
     WHERE id = CAST(:account_id AS BIGINT) AND balance - held >= CAST(:amount AS BIGINT)
       AND EXISTS (SELECT 1 FROM x)
 RETURNING id
), h AS (
    INSERT INTO holds (idempotency_key, account_id, amount, status, kind, description,
                       metadata, expires_at, created_at, feature, quantity)
    SELECT :key, w.id, CAST(:amount AS BIGINT), 'pending', 'hold', :description,
           CAST(:metadata AS JSONB), :expires_at, :now, :feature, CAST(:quantity AS BIGINT)
      FROM w
        ON CONFLICT (idempotency_key) DO NOTHING
 RETURNING id
), o AS (
    SELECT k.id, k.remaining - k.held AS free,
           SUM(k.remaining - k.held) OVER (
               ORDER BY k.expires_at IS NULL, k.expires_at, k.paid, k.id
               ROWS UNBOUNDED PRECEDING) - (k.remaining - k.held) AS before
      FROM buckets k JOIN w ON k.account_id = w.id
     WHERE k.remaining > 0 AND k.remaining > k.held
       AND (k.expires_at IS NULL OR k.expires_at > :now)
), u AS (
    UPDATE buckets k
       SET held = k.held + LEAST(o.free, CAST(:amount AS BIGINT) - o.before)
      FROM o, h
     WHERE k.id = o.id AND o.before < CAST(:amount AS BIGINT)
 RETURNING k.id, h.id AS hold_id, LEAST(o.free, CAST(:amount AS BIGINT) - o.before) AS taken
), d AS (
    INSERT INTO draws (bucket_id, hold_id, amount) SELECT id, hold_id, taken FROM u
)
SELECT h.id, (SELECT COALESCE(SUM(taken), 0) FROM u) FROM w LEFT JOIN h ON true
"""
_RESERVE_AT_ONCE = Statement(sa.text(_RESERVE_TEMPLATE.format(guard="")))


@dataclass(frozen=True, slots=True)
class _Reservation:
    """The values of ``_RESERVE_AT_ONCE``, and the hold its rows say it made."""

    account_id: int
    user_id: str
    amount: int
    key: str
    expires_at: datetime
    description: str | None
    metadata: dict[str, Any] | None
    now: datetime
    feature: str | None = None
    quantity: int | None = None

    def params(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "amount": self.amount,
            "key": self.key,
            "description": self.description,
            "metadata": None if self.metadata is None else json_dumps(self.metadata),
            "expires_at": driver_datetime("postgresql", self.expires_at),
            "now": driver_datetime("postgresql", self.now),
            "feature": self.feature,
            "quantity": self.quantity,
        }

    def hold(self, rows: list[tuple[Any, ...]]) -> Hold | None:
        """The hold made, or None when the long way must decide."""
        if not rows:
            return None
        hold_id, reserved = rows[0]
        if hold_id is None:  # the key was taken at this moment, for another wallet's hold
            raise IdempotencyConflict(self.key, "the key belongs to another wallet's hold")
        if reserved != self.amount:
            # The wallet row promised tokens its buckets do not hold: refuse the whole unit
            # of work rather than write a hold drawn in part (as ``buckets.draw`` does).
            raise RuntimeError(
                f"account {self.account_id}: its buckets lack {self.amount - reserved} tokens"
            )
        return Hold(
            id=hold_id,
            user_id=self.user_id,
            amount=self.amount,
            status=HoldStatus.PENDING,
            idempotency_key=self.key,
            description=self.description,
            metadata=self.metadata,
            expires_at=self.expires_at,
            created_at=self.now,
            resolved_at=None,
            posted_amount=None,
            transfer_id=None,
            kind=HoldKind.HOLD,
            feature=self.feature,
            quantity=self.quantity,
        )


def _reserve_at_once(
    conn: Connection,
    *,
    account_id: int,
    user_id: str,
    amount: int,
    key: str,
    expires_at: datetime,
    description: str | None,
    metadata: dict[str, Any] | None,
    now: datetime,
    feature: str | None,
    quantity: int | None,
) -> Hold | None:
    """``_RESERVE_AT_ONCE``: the hold, or None when the long way must decide."""
    reservation = _Reservation(
        account_id=account_id,
        user_id=user_id,
        amount=amount,
        key=key,
        expires_at=expires_at,
        description=description,
        metadata=metadata,
        now=now,
        feature=feature,
        quantity=quantity,
    )
    return reservation.hold(_RESERVE_AT_ONCE.rows(conn, reservation.params()))


def call_hold_key(call: str) -> str:
    """The idempotency key of the hold ``hold_call`` makes for ``call``: the caller's own
    record of the call can name its hold by it in the same round trip (``hold_call_in``)."""
    return reserved_key(KeyPurpose.CALL, call)


@dataclass(frozen=True, slots=True)
class Guard:
    """A condition of the caller's, in SQL, that a hold made in a ``Batch`` needs: decided
    by the hold's own statement, under the wallet's lock, so that it sees what the
    wallet's last writer committed (a model key's spending for the day, an idempotency
    key's first use). Its values are named ``guard_*``; its text is one of a few fixed
    ones (each compiled once)."""

    sql: str
    params: Mapping[str, Any]

    def __post_init__(self) -> None:
        if any(not name.startswith("guard_") for name in self.params):
            raise ValueError("a guard's values are named guard_*")


_LOCK_WALLET = Statement(
    sa.text("SELECT id FROM accounts WHERE id = CAST(:account_id AS BIGINT) FOR UPDATE")
)
_GUARDED: dict[str, Statement] = {}


def _guarded(guard: Guard | None) -> Statement:
    if guard is None:
        return _RESERVE_AT_ONCE
    found = _GUARDED.get(guard.sql)
    if found is None:
        found = _GUARDED[guard.sql] = Statement(
            sa.text(_RESERVE_TEMPLATE.format(guard=f"\n       AND ({guard.sql})"))
        )
    return found


def hold_call_in(
    batch: Batch,
    *,
    account_id: int,
    user_id: str,
    amount: int,
    call: str,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    guard: Guard | None = None,
    now: datetime | None = None,
) -> Callable[[], Hold | None]:
    """``hold_call`` sent in ``batch`` (PostgreSQL, asyncio), in the common case only, and
    only if ``guard`` holds: the wallet (``account_id``, of ``user_id``) is locked, then the
    hold made in one statement. Both run in the caller's transaction (its ``BEGIN`` comes
    before, its ``COMMIT`` after), so the caller can record the hold in the same round trip
    (by ``call_hold_key``). The function returned reads, once the batch is sent, the hold,
    or None when none was made: then the hold wrote nothing, and ``hold_call`` (in a unit
    of work of its own) decides."""
    check_ttl(ttl_seconds)
    now = now or utcnow()
    reservation = _Reservation(
        account_id=account_id,
        user_id=check_user_id(user_id),
        amount=check_amount(amount),
        key=call_hold_key(call),
        expires_at=now + timedelta(seconds=ttl_seconds),
        description=check_description(description),
        metadata=check_metadata(metadata),
        now=now,
    )
    batch.add(_LOCK_WALLET, {"account_id": account_id})
    params = reservation.params()
    if guard is not None:
        params.update(guard.params)
    rows = batch.add(_guarded(guard), params)
    return lambda: reservation.hold(rows())


def cover(
    conn: Connection,
    *,
    user_id: str,
    amount: int,
    idempotency_key: str,
    feature: str,
    quantity: int,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    posted: bool = False,
    now: datetime | None = None,
) -> Hold:
    """A covered hold of ``quantity`` units of ``feature`` (``amount``: what they would
    cost in tokens): it reserves nothing, since something outside the wallet pays for it
    (a plan's unlimited feature), and is only the record of the use. ``posted``: the use is
    done (a spend), so it is posted at once. A repeat of the key replays it. The caller
    decided that the use is covered; it serialises that decision (a plan's fair-use cap)
    by locking what it counts."""
    user_id = check_user_id(user_id)
    amount = check_amount(amount)
    key = check_key(idempotency_key)
    check_ttl(ttl_seconds)
    checked_feature, checked_quantity = check_feature(feature, quantity)
    description = check_description(description)
    metadata = check_metadata(metadata)
    now = now or utcnow()
    with atomic(conn):
        account_id = wallet_id(conn, user_id, lock=True)
        existing = find_hold(conn, idempotency_key=key)
        if existing is not None:
            return _replayed_cover(existing, user_id, checked_feature, checked_quantity, posted)
        hold_id = conn.execute(
            _insert_hold[conn.dialect.name],
            {
                "idempotency_key": key,
                "account_id": account_id,
                "amount": amount,
                "status": HoldStatus.POSTED.value if posted else HoldStatus.PENDING.value,
                "kind": HoldKind.COVERED.value,
                "description": description,
                "metadata": metadata,
                "expires_at": now + timedelta(seconds=ttl_seconds),
                "created_at": now,
                "resolved_at": now if posted else None,
                "posted_amount": amount if posted else None,
                "feature": checked_feature,
                "quantity": checked_quantity,
            },
        ).scalar()
        if hold_id is None:
            raise IdempotencyConflict(key, "the key belongs to another wallet's hold")
        return get_hold(conn, hold_id=hold_id)


def _replayed_cover(
    existing: Hold, user_id: str, feature: str | None, quantity: int | None, posted: bool
) -> Hold:
    """The first answer of a covered hold's key, if the repeat asks the same."""
    spent = existing.status is HoldStatus.POSTED and existing.resolved_at == existing.created_at
    asked = (user_id, HoldKind.COVERED, feature, quantity, posted)
    stored = (existing.user_id, existing.kind, existing.feature, existing.quantity, spent)
    if asked != stored:
        raise IdempotencyConflict(existing.idempotency_key, "a hold with other parameters")
    return replace(existing, replayed=True)


def find_hold(conn: Connection, *, idempotency_key: str) -> Hold | None:
    row = conn.execute(_select_hold.where(holds.c.idempotency_key == idempotency_key)).first()
    return None if row is None else _to_hold(row)


def post_covered(
    conn: Connection, *, hold_id: int, amount: int, now: datetime | None = None
) -> Hold:
    """Post a covered hold: the use is done, and nothing leaves the wallet. ``amount`` (at
    most the hold's) is kept as what the use would have cost. Repeating it replays."""
    amount = check_amount(amount)
    now = now or utcnow()
    with atomic(conn):
        current = _lock_hold(conn, hold_id)
        if current.kind != HoldKind.COVERED:
            raise InvalidArgument("hold_id", "this hold reserves tokens: post it with post_hold")
        status = HoldStatus(current.status)
        if status is HoldStatus.POSTED:
            if current.posted_amount != amount:
                raise IdempotencyConflict(
                    current.idempotency_key,
                    f"hold {hold_id} was posted for {current.posted_amount}",
                )
            return _to_hold(current, replayed=True)
        if status is not HoldStatus.PENDING:
            raise HoldNotPending(hold_id, status.value)
        if current.expires_at <= now:
            raise HoldNotPending(hold_id, HoldStatus.EXPIRED.value)
        if amount > current.amount:
            raise InvalidArgument("amount", f"must be at most the {current.amount} tokens held")
        conn.execute(
            sa.update(holds)
            .where(holds.c.id == hold_id)
            .values(status=HoldStatus.POSTED.value, posted_amount=amount, resolved_at=now)
        )
        return get_hold(conn, hold_id=hold_id)


def _lock_hold(conn: Connection, hold_id: int) -> AnyRow:
    """Lock the hold's wallet, then read the hold: its status can only change under that lock."""
    account_id = conn.execute(sa.select(holds.c.account_id).where(holds.c.id == hold_id)).scalar()
    if account_id is None:
        raise UnknownHold(hold_id)
    conn.execute(sa.select(accounts.c.id).where(accounts.c.id == account_id).with_for_update())
    return conn.execute(_select_hold.where(holds.c.id == hold_id)).one()


def post_hold(
    conn: Connection,
    *,
    hold_id: int,
    amount: int,
    now: datetime | None = None,
    log_from: int = 0,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Receipt:
    """Spend ``amount`` (at most the held amount) and release the rest of the hold.

    Posting the same hold again with the same amount returns the first result. A posting of
    at least ``log_from`` tokens (0: none) is logged (``tokens_spent``) once the caller's
    unit of work commits it, as a spend is. ``description`` and ``metadata`` replace the
    hold's on the spend, for what is known only now (a model call's usage).
    """
    amount = check_amount(amount)
    described = (check_description(description), check_metadata(metadata))
    now = now or utcnow()
    with atomic(conn):
        receipt = None
        if conn.dialect.name == "postgresql":
            receipt = _post_at_once(
                conn, hold_id=hold_id, amount=amount, now=now, described=described
            )
        if receipt is None:
            receipt = _post(conn, hold_id=hold_id, amount=amount, now=now, described=described)
    if not receipt.replayed and 0 < log_from <= receipt.amount:
        after_commit(conn, partial(log_spent, receipt))
    return receipt


#: A hold posted in one PostgreSQL statement, in the common case only: a pending hold of
#: kind ``hold`` (not a freeze or a covered hold), within its deadline, posted for at most
#: what it holds, none of whose buckets is past its expiry. ``a`` locks the wallet first,
#: as every other writer of its holds does; the update of ``h`` then re-reads the hold as
#: the last writer left it (PostgreSQL re-checks an updated row's conditions on its newest
#: version), so a hold posted, voided or expired meanwhile is left alone and nothing else
#: happens. The transfer's id is taken from its sequence first, so the hold row is written
#: once, whole (a row cannot be changed twice in one statement). ``r`` orders the hold's
#: draws as they were made; of each, the part within the amount leaves its bucket and the
#: whole leaves the bucket's ``held``, as ``buckets.settle_hold`` does. Any other case, a
#: replay included, writes nothing and returns no row: ``_post`` then decides it the long
#: way, in the same unit of work.
_POST_AT_ONCE = Statement(
    sa.text("""
WITH a AS (
    SELECT k.id FROM accounts k JOIN holds x ON x.account_id = k.id
     WHERE x.id = CAST(:hold_id AS BIGINT)
       FOR UPDATE OF k
), n AS (
    SELECT nextval(pg_get_serial_sequence('transfers', 'id')) AS id
), h AS (
    UPDATE holds
       SET status = 'posted', posted_amount = CAST(:amount AS BIGINT), resolved_at = :now,
           transfer_id = (SELECT id FROM n)
     WHERE id = CAST(:hold_id AS BIGINT) AND account_id = (SELECT id FROM a)
       AND status = 'pending' AND kind = 'hold' AND expires_at > :now
       AND amount >= CAST(:amount AS BIGINT)
       AND NOT EXISTS (
           SELECT 1 FROM draws d JOIN buckets b ON b.id = d.bucket_id
            WHERE d.hold_id = CAST(:hold_id AS BIGINT) AND b.expires_at <= :now)
 RETURNING id, account_id, amount, description, metadata, feature, quantity
), w AS (
    UPDATE accounts k
       SET balance = k.balance - CAST(:amount AS BIGINT), held = k.held - h.amount,
           total_spent = k.total_spent + CAST(:amount AS BIGINT)
      FROM h
     WHERE k.id = h.account_id
 RETURNING k.id, k.user_id, k.balance
), t AS (
    INSERT INTO transfers (id, idempotency_key, kind, debit_account_id, credit_account_id,
                           amount, description, metadata, feature, quantity, event_at,
                           created_at)
    SELECT (SELECT id FROM n), :key, 'spend', w.id, CAST(:system_id AS BIGINT),
           CAST(:amount AS BIGINT), COALESCE(CAST(:description AS VARCHAR), h.description),
           COALESCE(CAST(:metadata AS JSONB), h.metadata), h.feature, h.quantity, :now, :now
      FROM w, h
 RETURNING id
), e AS (
    INSERT INTO entries (transfer_id, account_id, kind, amount, balance_after, created_at)
    SELECT t.id, w.id, 'spend', -CAST(:amount AS BIGINT), w.balance, :now FROM t, w
     UNION ALL
    SELECT t.id, CAST(:system_id AS BIGINT), 'spend', CAST(:amount AS BIGINT), NULL, :now
      FROM t
), r AS (
    SELECT d.bucket_id, d.amount,
           LEAST(d.amount, GREATEST(0, CAST(:amount AS BIGINT) - (
               SUM(d.amount) OVER (ORDER BY d.id ROWS UNBOUNDED PRECEDING) - d.amount
           ))) AS taken
      FROM draws d JOIN h ON d.hold_id = h.id
), u AS (
    UPDATE buckets b
       SET held = b.held - r.amount, remaining = b.remaining - r.taken
      FROM r
     WHERE b.id = r.bucket_id
 RETURNING b.id, r.taken
), d AS (
    INSERT INTO draws (bucket_id, transfer_id, amount)
    SELECT u.id, t.id, u.taken FROM u, t WHERE u.taken > 0
)
SELECT t.id, w.user_id, w.balance, h.feature, h.quantity FROM t, w, h
""")
)


def post_hold_in(
    batch: Batch,
    *,
    hold_id: int,
    amount: int,
    now: datetime,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Callable[[], Receipt | None]:
    """``post_hold`` sent in ``batch`` (PostgreSQL, asyncio), in the common case only (see
    ``_POST_AT_ONCE``). The function returned reads, once the batch is sent, the receipt, or
    None when nothing was written: then ``post_hold`` decides. The hold is posted with
    ``resolved_at = now``, by which a later statement of the batch can tell it was."""
    amount = check_amount(amount)
    rows = batch.add(
        _POST_AT_ONCE,
        _post_params(
            hold_id=hold_id,
            amount=amount,
            now=now,
            described=(check_description(description), check_metadata(metadata)),
        ),
    )
    return lambda: _posted(rows(), amount)


def _post_params(
    *,
    hold_id: int,
    amount: int,
    now: datetime,
    described: tuple[str | None, dict[str, Any] | None],
) -> dict[str, Any]:
    description, metadata = described
    return {
        "hold_id": hold_id,
        "amount": amount,
        "now": driver_datetime("postgresql", now),
        "key": reserved_key(KeyPurpose.POST, f"hold:{hold_id}"),
        "system_id": int(SystemAccount.CONSUMPTION),
        "description": description,
        "metadata": None if metadata is None else json_dumps(metadata),
    }


def _posted(rows: list[tuple[Any, ...]], amount: int) -> Receipt | None:
    if not rows:
        return None
    transfer_id, user_id, balance, feature, quantity = rows[0]
    return Receipt(
        transfer_id=transfer_id,
        kind=TransferKind.SPEND,
        user_id=user_id,
        amount=amount,
        balance=balance,
        feature=feature,
        quantity=quantity,
    )


def _post_at_once(
    conn: Connection,
    *,
    hold_id: int,
    amount: int,
    now: datetime,
    described: tuple[str | None, dict[str, Any] | None],
) -> Receipt | None:
    """``_POST_AT_ONCE``: the receipt, or None when the long way must decide."""
    params = _post_params(hold_id=hold_id, amount=amount, now=now, described=described)
    return _posted(_POST_AT_ONCE.rows(conn, params), amount)


def _post(
    conn: Connection,
    *,
    hold_id: int,
    amount: int,
    now: datetime,
    described: tuple[str | None, dict[str, Any] | None] = (None, None),
) -> Receipt:
    current = _lock_hold(conn, hold_id)
    if current.kind == HoldKind.FREEZE:
        raise HoldFrozen(hold_id)
    if current.kind == HoldKind.COVERED:
        raise InvalidArgument(
            "hold_id", "a covered hold spends no tokens: post it with post_covered"
        )
    status = HoldStatus(current.status)
    if status is HoldStatus.POSTED:
        if current.posted_amount != amount:
            raise IdempotencyConflict(
                current.idempotency_key, f"hold {hold_id} was posted for {current.posted_amount}"
            )
        balance_after = conn.execute(
            sa.select(entries.c.balance_after).where(
                entries.c.transfer_id == current.transfer_id,
                entries.c.account_id == current.account_id,
            )
        ).scalar_one()
        return Receipt(
            transfer_id=current.transfer_id,
            kind=TransferKind.SPEND,
            user_id=current.user_id,
            amount=amount,
            balance=balance_after,
            replayed=True,
            feature=current.feature,
            quantity=current.quantity,
        )
    if status is not HoldStatus.PENDING:
        raise HoldNotPending(hold_id, status.value)
    if current.expires_at <= now:
        raise HoldNotPending(hold_id, HoldStatus.EXPIRED.value)
    if amount > current.amount:
        raise InvalidArgument("amount", f"must be at most the {current.amount} tokens held")

    balance = conn.execute(
        sa.update(accounts)
        .where(accounts.c.id == current.account_id)
        .values(
            balance=accounts.c.balance - amount,
            held=accounts.c.held - current.amount,
            total_spent=accounts.c.total_spent + amount,
        )
        .returning(accounts.c.balance)
    ).scalar_one()
    transfer_id = record_transfer(
        conn,
        key=reserved_key(KeyPurpose.POST, f"hold:{hold_id}"),
        kind=TransferKind.SPEND,
        debit_account_id=current.account_id,
        credit_account_id=SystemAccount.CONSUMPTION,
        amount=amount,
        wallet_id=current.account_id,
        wallet_balance=balance,
        description=described[0] if described[0] is not None else current.description,
        metadata=described[1] if described[1] is not None else current.metadata,
        event_at=now,
        now=now,
        feature=current.feature,
        quantity=current.quantity,
    )
    buckets.settle_hold(conn, hold_id=hold_id, spent=amount, transfer_id=transfer_id, now=now)
    # What the hold freed in a bucket that expired meanwhile expires now, by a transfer of
    # its own: the receipt's balance is this transfer's, the one a replay returns.
    buckets.expire_due(conn, account_id=current.account_id, now=now)
    conn.execute(
        sa.update(holds)
        .where(holds.c.id == hold_id)
        .values(
            status=HoldStatus.POSTED.value,
            posted_amount=amount,
            transfer_id=transfer_id,
            resolved_at=now,
        )
    )
    return Receipt(
        transfer_id=transfer_id,
        kind=TransferKind.SPEND,
        user_id=current.user_id,
        amount=amount,
        balance=balance,
        feature=current.feature,
        quantity=current.quantity,
    )


def void_hold(
    conn: Connection, *, hold_id: int, now: datetime | None = None, unfreeze: bool = False
) -> Hold:
    """Release a pending hold in full.

    Voiding is "make sure these tokens are free again": a hold already voided or expired is
    returned unchanged, and a pending hold past its deadline ends as expired. A freeze
    (``clawbacks.freeze``) is only released with ``unfreeze``.
    """
    now = now or utcnow()
    with atomic(conn):
        current = _lock_hold(conn, hold_id)
        if current.kind == HoldKind.FREEZE and not unfreeze:
            raise HoldFrozen(hold_id)
        status = HoldStatus(current.status)
        if status in (HoldStatus.VOIDED, HoldStatus.EXPIRED):
            return _to_hold(current, replayed=True)
        if status is not HoldStatus.PENDING:
            raise HoldNotPending(hold_id, status.value)
        ending = HoldStatus.EXPIRED if current.expires_at <= now else HoldStatus.VOIDED
        _release(conn, [current], status=ending, now=now)
        return get_hold(conn, hold_id=hold_id)


def _release(conn: Connection, pending: list[AnyRow], *, status: HoldStatus, now: datetime) -> int:
    """End pending holds of one locked wallet without spending; returns how many ended.

    An expiry is logged (``hold_expired``) once the caller's unit of work commits it: a
    line for a release that is then rolled back would report tokens freed that were not.
    """
    released = conn.execute(
        sa.update(holds)
        .where(holds.c.id.in_([h.id for h in pending]), holds.c.status == HoldStatus.PENDING.value)
        .values(status=status.value, resolved_at=now)
        .returning(holds.c.id, holds.c.amount, holds.c.kind)
    ).all()
    if not released:
        return 0
    account_id = pending[0].account_id
    # A covered hold reserved nothing: it frees nothing.
    freed = [(hold_id, amount) for hold_id, amount, kind in released if kind != HoldKind.COVERED]
    user_id = conn.execute(
        sa.update(accounts)
        .where(accounts.c.id == account_id)
        .values(held=accounts.c.held - sum(amount for _, amount in freed))
        .returning(accounts.c.user_id)
    ).scalar_one()
    for hold_id, _ in freed:
        buckets.settle_hold(conn, hold_id=hold_id, spent=0, transfer_id=None, now=now)
    # What came back to a bucket that expired meanwhile expires now.
    buckets.expire_due(conn, account_id=account_id, now=now)
    if status is HoldStatus.EXPIRED:
        for hold_id, amount, _ in released:
            after_commit(
                conn,
                partial(log.info, "hold_expired", hold_id=hold_id, user_id=user_id, amount=amount),
            )
    return len(released)


# A freeze never expires here (it ends with its dispute): its deadline is FROZEN_UNTIL.
_stale = (
    sa.select(holds.c.id, holds.c.account_id)
    .where(holds.c.status == HoldStatus.PENDING.value, holds.c.expires_at <= sa.bindparam("now"))
    .order_by(holds.c.account_id, holds.c.id)
)


def release_expired(conn: Connection, *, account_id: int, now: datetime) -> int:
    """Expire the wallet's holds whose deadline has passed.

    A step of a larger change (a spend, a hold or a clawback that needs the tokens): the
    caller has locked the wallet inside its ``atomic`` step, so the release commits, or
    not, together with what it was made for.
    """
    stale = list(conn.execute(_stale.where(holds.c.account_id == account_id), {"now": now}))
    return _release(conn, stale, status=HoldStatus.EXPIRED, now=now) if stale else 0


def expire_holds(conn: Connection, *, now: datetime | None = None, limit: int = 1000) -> int:
    """Expire up to ``limit`` holds past their deadline; returns how many were expired.

    Each wallet's holds are released in a step of their own (``atomic``): on an autocommit
    unit one wallet's expiry commits without waiting for the others, and a failure leaves
    the wallets already done released. Wallets are locked in ascending id order, the same
    order everyone else uses, so this sweep cannot deadlock with spends or with another
    sweep.
    """
    now = now or utcnow()
    stale = list(conn.execute(_stale.limit(limit), {"now": now}))
    expired = 0
    for account_id, group in groupby(stale, key=lambda row: row.account_id):
        with atomic(conn):
            conn.execute(
                sa.select(accounts.c.id).where(accounts.c.id == account_id).with_for_update()
            )
            expired += _release(conn, list(group), status=HoldStatus.EXPIRED, now=now)
    return expired

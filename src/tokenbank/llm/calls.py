"""A model call's two units of work: its admission (a hold of the most it may cost, before
anything is forwarded) and its settlement (the exact cost posted, the rest released).

Nothing here talks to a model, and no upstream is called while rows are locked: the
gateway (``llm/gateway.py``) admits, forwards with nothing locked, then settles.

Each unit of work of a call locks the user's wallet before any row of the calls or of the
ledger, as the ledger's own operations do; what may lock one of those rows first (the
worker ending abandoned calls, a rate-limit counter counted in the admission's
transaction) never then waits for a wallet. So a call's units never deadlock, with each
other or with the ledger's. The wallet's lock is what serialises a user's calls: a key
belongs to one wallet, so its cap for the day is counted by one call at a time, and a key
revoked is refused by every process from its next call.

Admission runs in one transaction on the user's wallet: the user's key is read, a retried
``Idempotency-Key`` is recognised, the call is recorded and its hold made. Too few
tokens, or a key past its cap, records the call as refused and raises after the commit.

On PostgreSQL, ``try_admit`` and ``try_settle`` do the common case in one round trip
each, on the event loop's asyncio connection (``db.Batch``); anything else writes nothing
there (but the rate-limit hit) and is left to ``admit`` and ``settle``, which decide it.

Settlement runs in one transaction on the same wallet, once per call (its row is claimed
and must still be pending): the cost, rounded up once per call (``Model.cost``), is posted
from the hold. A cost beyond the hold (an estimate that fell short) is spent from what
the wallet has, and what it has not is recorded as debt (``ledger.overrun``): the wallet
never goes negative. A cost of 0 voids the hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

import psycopg
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from tokenbank import ledger
from tokenbank.columns import utcnow
from tokenbank.db import BEGIN, COMMIT, Batch, Database, Statement, json_dumps
from tokenbank.errors import (
    CallInProgress,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientTokens,
    KeyCapReached,
    TokenbankError,
)
from tokenbank.identity.throttle import Counter
from tokenbank.ledger.accounts import wallet_id
from tokenbank.ledger.holds import call_hold_key
from tokenbank.ledger.models import HoldStatus, holds
from tokenbank.llm.estimate import Bound
from tokenbank.llm.keys import LlmKey, find_key, hash_key
from tokenbank.llm.models import Model
from tokenbank.llm.tables import CallStatus, llm_calls

log = structlog.get_logger("tokenbank.llm")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a user's key (``secret``), or the host app for ``user_id``."""

    user_id: str | None = None
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    call_id: int
    user_id: str
    key_id: int | None
    hold_id: int | None
    held: int
    #: The stored reply of a finished call with the same idempotency key (then nothing
    #: is held and nothing forwarded).
    replay: Any = None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    #: ``upstream`` (its ``usage``) or ``counted`` (a stream cut before its usage).
    source: str


@dataclass(frozen=True, slots=True)
class Settled:
    call_id: int
    user_id: str
    status: CallStatus
    charged: int
    shortfall: int
    balance: int | None
    replayed: bool = False


def day_start(now: datetime) -> datetime:
    return datetime.combine(now.date(), time(), tzinfo=now.tzinfo)


def _used_today(conn: Connection, key: LlmKey, now: datetime) -> int:
    """What the key spent today (UTC) and holds for calls still running (``_GUARD_KEY``
    sums the same in SQL)."""
    used = sa.func.coalesce(
        sa.func.sum(
            sa.case(
                (llm_calls.c.status == CallStatus.PENDING.value, llm_calls.c.held),
                else_=llm_calls.c.charged,
            )
        ),
        0,
    )
    return int(
        conn.execute(
            sa.select(used).where(
                llm_calls.c.key_id == key.id, llm_calls.c.created_at >= day_start(now)
            )
        ).scalar_one()
    )


def _cost_bound(model: Model, bound: Bound) -> int:
    return max(1, model.cost(input_tokens=bound.input_tokens, output_tokens=bound.output_tokens))


@dataclass(frozen=True, slots=True)
class Payer:
    """Who pays for a caller's calls: never changes for a key or a user (a key is
    revoked, never moved), so the gateway keeps it between calls (``find_payer``); a key
    revoked since is refused by ``try_admit`` all the same."""

    user_id: str
    account_id: int
    key_id: int | None = None


_PAYER_BY_KEY = Statement(
    sa.text("""
SELECT k.user_id, a.id, k.id FROM llm_keys k JOIN accounts a ON a.user_id = k.user_id
 WHERE k.key_hash = :key_hash AND k.revoked_at IS NULL""")
)
_PAYER_BY_USER = Statement(
    sa.text("SELECT user_id, id, CAST(NULL AS BIGINT) FROM accounts WHERE user_id = :user_id")
)


async def find_payer(conn: psycopg.AsyncConnection[Any], caller: Caller) -> Payer | None:
    """Who pays for ``caller``'s calls, if anyone: None for a key that is not live, or a
    user without a wallet (``admit`` then says why)."""
    if caller.secret is not None:
        rows = await _PAYER_BY_KEY.rows_async(conn, {"key_hash": hash_key(caller.secret)})
    else:
        rows = await _PAYER_BY_USER.rows_async(conn, {"user_id": caller.user_id})
    return Payer(*rows[0]) if rows else None


#: What ``try_admit`` needs of the call, decided by the hold's own statement under the
#: wallet's lock (``ledger.Guard``): the key still live, and under its cap for the day
#: counting what it holds for calls running; the idempotency key not used before by the
#: user; the rate-limit counter, counted just before in the same transaction, within its
#: limit. The key's spending for the day is ``_used_today``'s sum, in SQL: change both.
_GUARD_KEY = """EXISTS (
           SELECT 1 FROM llm_keys k
            WHERE k.id = CAST(:guard_key_id AS BIGINT) AND k.revoked_at IS NULL
              AND (k.daily_cap IS NULL OR k.daily_cap >= CAST(:guard_cost AS BIGINT) + (
                   SELECT COALESCE(SUM(CASE WHEN c.status = 'pending' THEN c.held
                                            ELSE c.charged END), 0)
                     FROM llm_calls c
                    WHERE c.key_id = k.id AND c.created_at >= :guard_day)))"""
_GUARD_IDEMPOTENCY = """NOT EXISTS (
           SELECT 1 FROM llm_calls
            WHERE user_id = :guard_user_id AND idempotency_key = :guard_idempotency_key)"""
_GUARD_RATE = """(SELECT hits FROM rate_limits WHERE key = :guard_rate_key)
           <= CAST(:guard_most AS BIGINT)"""

#: The call's row, pending on the hold sent just before it (none: no row).
_RECORD_CALL = Statement(
    sa.text("""
INSERT INTO llm_calls (user_id, key_id, model, stream, status, request_id, idempotency_key,
                       request_digest, hold_id, held, input_estimate, output_cap, created_at)
SELECT :user_id, CAST(:key_id AS BIGINT), :model, :stream, 'pending', :request_id,
       :idempotency_key, :request_digest, h.id, h.amount, CAST(:input_estimate AS BIGINT),
       CAST(:output_cap AS BIGINT), :now
  FROM holds h
 WHERE h.idempotency_key = :hold_key AND h.status = 'pending'
RETURNING id""")
)


def _guard(
    payer: Payer,
    *,
    cost: int,
    idempotency_key: str | None,
    counter: Counter | None,
    now: datetime,
) -> ledger.Guard | None:
    conditions: list[str] = []
    params: dict[str, Any] = {}
    if payer.key_id is not None:
        conditions.append(_GUARD_KEY)
        params |= {"guard_key_id": payer.key_id, "guard_cost": cost, "guard_day": day_start(now)}
    if idempotency_key is not None:
        conditions.append(_GUARD_IDEMPOTENCY)
        params |= {"guard_user_id": payer.user_id, "guard_idempotency_key": idempotency_key}
    if counter is not None:
        conditions.append(_GUARD_RATE)
        params |= {"guard_rate_key": counter.key, "guard_most": counter.most}
    if not conditions:
        return None
    return ledger.Guard(sql="\n       AND ".join(conditions), params=params)


async def try_admit(
    conn: psycopg.AsyncConnection[Any],
    *,
    payer: Payer,
    model: Model,
    bound: Bound,
    request_id: str,
    stream: bool,
    idempotency_key: str | None = None,
    request_digest: str | None = None,
    ttl_seconds: int,
    counter: Counter | None = None,
    now: datetime | None = None,
) -> Admission | None:
    """``admit`` on PostgreSQL's asyncio connection, in one round trip (``Batch``), in the
    common case only: a live key under its cap, an idempotency key not used before, the
    rate limit not reached, and the tokens there. One transaction counts the rate-limit
    hit (``counter``), makes the hold if the ``_guard`` allows it (``ledger.hold_call_in``),
    records the call and commits. Otherwise nothing is written but the hit, and it returns
    None: then ``admit`` decides, in a thread, without counting the hit again.

    Past the rate limit: ``RateLimited``, the hit counted, as ``Throttle.hit`` does."""
    now = now or utcnow()
    cost = _cost_bound(model, bound)
    call = uuid.uuid4().hex
    batch = Batch(conn)
    batch.add(BEGIN)
    counted = counter.count_in(batch, now) if counter is not None else None
    hold = ledger.hold_call_in(
        batch,
        account_id=payer.account_id,
        user_id=payer.user_id,
        amount=cost,
        call=call,
        ttl_seconds=ttl_seconds,
        description=f"{model.id}: a model call",
        metadata={"model": model.id},
        guard=_guard(payer, cost=cost, idempotency_key=idempotency_key, counter=counter, now=now),
        now=now,
    )
    recorded = batch.add(
        _RECORD_CALL,
        {
            "user_id": payer.user_id,
            "key_id": payer.key_id,
            "model": model.id,
            "stream": stream,
            "request_id": request_id,
            "idempotency_key": idempotency_key,
            "request_digest": request_digest,
            "input_estimate": bound.input_tokens,
            "output_cap": bound.output_tokens,
            "now": now,
            "hold_key": call_hold_key(call),
        },
    )
    batch.add(COMMIT)
    await batch.send()
    if counted is not None:
        counted()  # raises past the limit
    made = hold()
    if made is None:
        return None
    ((call_id,),) = recorded()
    return Admission(
        call_id=call_id,
        user_id=payer.user_id,
        key_id=payer.key_id,
        hold_id=made.id,
        held=made.amount,
    )


def admit(
    db: Database,
    *,
    caller: Caller,
    model: Model,
    bound: Bound,
    request_id: str,
    stream: bool,
    idempotency_key: str | None = None,
    request_digest: str | None = None,
    ttl_seconds: int,
    now: datetime | None = None,
) -> Admission:
    """Record the call and hold the most it may cost, or raise why not (see the module).

    The hold comes first (its key a random reference, so that the call's row is written
    once, whole): a wallet that does not exist is ``UnknownUser`` before anything is
    written."""
    now = now or utcnow()
    cost = _cost_bound(model, bound)
    refusal: TokenbankError | None = None
    with db.transaction(wallet=caller.user_id) as conn:
        key = None
        if caller.secret is not None:
            key = find_key(conn, secret=caller.secret)
        user_id = key.user_id if key is not None else caller.user_id
        assert user_id is not None
        wallet_id(conn, user_id, lock=True)  # first, as every unit of a call (see the module)
        earlier = None
        if idempotency_key is not None:
            earlier, replay = _earlier(
                conn,
                user_id,
                idempotency_key,
                model=model,
                stream=stream,
                request_digest=request_digest,
            )
            if replay is not None:
                return replay
        if key is not None and key.daily_cap is not None:
            used = _used_today(conn, key, now)
            if used + cost > key.daily_cap:
                refusal = KeyCapReached(cap=key.daily_cap, used=used, requested=cost)
        hold = None
        if refusal is None:
            try:
                hold = ledger.hold_call(
                    conn,
                    user_id=user_id,
                    amount=cost,
                    call=uuid.uuid4().hex,
                    ttl_seconds=ttl_seconds,
                    description=f"{model.id}: a model call",
                    metadata={"model": model.id},
                    now=now,
                )
            except InsufficientTokens as exc:
                refusal = exc
        values = {
            "user_id": user_id,
            "key_id": key.id if key else None,
            "model": model.id,
            "stream": stream,
            "request_id": request_id,
            "input_estimate": bound.input_tokens,
            "output_cap": bound.output_tokens,
            "created_at": now,
            "status": CallStatus.PENDING.value if hold else CallStatus.REFUSED.value,
            "hold_id": hold.id if hold else None,
            "held": hold.amount if hold else 0,
            "error": refusal.code if refusal else None,
            "finished_at": None if hold else now,
        }
        if earlier is None:
            call_id = conn.execute(
                sa.insert(llm_calls)
                .values(**values, idempotency_key=idempotency_key, request_digest=request_digest)
                .returning(llm_calls.c.id)
            ).scalar_one()
        else:
            call_id = earlier.id
            conn.execute(
                sa.update(llm_calls)
                .where(llm_calls.c.id == call_id)
                .values(**values, **_RESET, attempt=earlier.attempt + 1)
            )
    if refusal is not None or hold is None:
        log.info(
            "llm_call_refused", call_id=call_id, user_id=user_id, code=refusal and refusal.code
        )
        raise refusal or InsufficientTokens(user_id, requested=cost, available=0)
    return Admission(
        call_id=call_id,
        user_id=user_id,
        key_id=key.id if key else None,
        hold_id=hold.id,
        held=hold.amount,
    )


def request_digest(body: dict[str, Any]) -> str:
    """What identifies a request under an idempotency key: its JSON, keys sorted, so that
    the same request sent again, however its keys were ordered, is the same one."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


#: What a new attempt under an idempotency key clears of the one before.
_RESET = {
    "input_tokens": None,
    "output_tokens": None,
    "usage_source": None,
    "charged": 0,
    "shortfall": 0,
    "latency_ms": None,
    "first_token_ms": None,
    "reply": None,
}


def _earlier(
    conn: Connection,
    user_id: str,
    idempotency_key: str,
    *,
    model: Model,
    stream: bool,
    request_digest: str | None,
) -> tuple[Any, Admission | None]:
    """The call an earlier attempt with this key made, locked, and its replay when it
    finished having charged something; one that charged nothing (refused, or failed
    before any output) is tried again; one still running is ``CallInProgress``. Another
    request under the key is ``IdempotencyConflict``: replaying the first one's answer
    to it would answer a question it did not ask."""
    earlier = conn.execute(
        sa.select(llm_calls)
        .where(llm_calls.c.user_id == user_id, llm_calls.c.idempotency_key == idempotency_key)
        .with_for_update()
    ).first()
    if earlier is None:
        return None, None
    if earlier.model != model.id or earlier.stream != stream:
        raise IdempotencyConflict(idempotency_key, "it named another model or mode")
    if earlier.request_digest is not None and earlier.request_digest != request_digest:
        raise IdempotencyConflict(idempotency_key, "it was used for another request")
    if earlier.status == CallStatus.PENDING.value:
        raise CallInProgress(idempotency_key)
    if earlier.charged > 0 or earlier.status == CallStatus.OK.value:
        return earlier, Admission(
            call_id=earlier.id,
            user_id=user_id,
            key_id=earlier.key_id,
            hold_id=earlier.hold_id,
            held=0,
            replay=earlier.reply,
        )
    return earlier, None


def settle(
    db: Database,
    *,
    admission: Admission,
    model: Model,
    status: CallStatus,
    usage: Usage | None,
    latency_ms: int,
    first_token_ms: int | None = None,
    reply: Any = None,
    error: str | None = None,
    now: datetime | None = None,
) -> Settled:
    """Charge the call what it used (see the module); once per call."""
    now = now or utcnow()
    cost = 0
    if usage is not None:
        cost = model.cost(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
    with db.transaction(wallet=admission.user_id) as conn:
        wallet_id(conn, admission.user_id, lock=True)  # first (see the module)
        # The claim: the call goes from pending to its outcome once, with what it is
        # expected to be charged (the whole cost, from its hold: nearly always so).
        claimed = conn.execute(
            sa.update(llm_calls)
            .where(
                llm_calls.c.id == admission.call_id,
                llm_calls.c.status == CallStatus.PENDING.value,
            )
            .values(
                status=status.value,
                input_tokens=usage.input_tokens if usage else None,
                output_tokens=usage.output_tokens if usage else None,
                usage_source=usage.source if usage else None,
                charged=cost,
                latency_ms=latency_ms,
                first_token_ms=first_token_ms,
                error=error[:200] if error else None,
                reply=reply,
                finished_at=now,
            )
            .returning(llm_calls.c.id)
        ).first()
        if claimed is None:
            row = conn.execute(
                sa.select(llm_calls.c.status, llm_calls.c.charged, llm_calls.c.shortfall).where(
                    llm_calls.c.id == admission.call_id
                )
            ).one()
            return Settled(
                call_id=admission.call_id,
                user_id=admission.user_id,
                status=CallStatus(row.status),
                charged=row.charged,
                shortfall=row.shortfall,
                balance=None,
                replayed=True,
            )
        charged, shortfall, balance = _charge(
            conn, admission=admission, model=model, usage=usage, cost=cost, now=now
        )
        if (charged, shortfall) != (cost, 0):  # an overrun the wallet could not cover
            conn.execute(
                sa.update(llm_calls)
                .where(llm_calls.c.id == admission.call_id)
                .values(charged=charged, shortfall=shortfall)
            )
    _log_settled(admission, model, status, usage, charged=charged, shortfall=shortfall)
    return Settled(
        call_id=admission.call_id,
        user_id=admission.user_id,
        status=status,
        charged=charged,
        shortfall=shortfall,
        balance=balance,
    )


#: The claim of ``try_settle``, sent after the hold's posting in one transaction: the call
#: goes from pending to its outcome only if its hold was posted by that very statement
#: (``resolved_at`` is this settlement's time). A posting without its claim cannot happen
#: (only the call's settlement posts its hold), and would fail the whole transaction.
_CLAIM = Statement(
    sa.text("""
WITH p AS (
    SELECT 1 FROM holds
     WHERE id = CAST(:hold_id AS BIGINT) AND status = 'posted' AND resolved_at = :now
), c AS (
    UPDATE llm_calls
       SET status = :status, input_tokens = CAST(:input_tokens AS BIGINT),
           output_tokens = CAST(:output_tokens AS BIGINT), usage_source = :usage_source,
           charged = CAST(:charged AS BIGINT), latency_ms = CAST(:latency_ms AS INTEGER),
           first_token_ms = CAST(:first_token_ms AS INTEGER), error = :error,
           reply = CAST(:reply AS JSONB), finished_at = :now
     WHERE id = CAST(:call_id AS BIGINT) AND status = 'pending' AND EXISTS (SELECT 1 FROM p)
 RETURNING id
)
SELECT 1 / CASE WHEN (SELECT count(*) FROM c) = (SELECT count(*) FROM p) THEN 1 ELSE 0 END
""")
)


async def try_settle(
    conn: psycopg.AsyncConnection[Any],
    *,
    admission: Admission,
    model: Model,
    status: CallStatus,
    usage: Usage | None,
    latency_ms: int,
    first_token_ms: int | None = None,
    reply: Any = None,
    error: str | None = None,
    now: datetime | None = None,
) -> Settled | None:
    """``settle`` on PostgreSQL's asyncio connection, in one round trip (``Batch``), in the
    common case only: a cost within the hold, posted from it in one statement
    (``ledger.post_hold_in``), and the call's claim. Otherwise (nothing to charge, an
    overrun, a hold that needs the long way) nothing is written and it returns None: then
    ``settle`` decides."""
    if usage is None or admission.hold_id is None:
        return None
    cost = model.cost(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
    if not 0 < cost <= admission.held:
        return None
    now = now or utcnow()
    batch = Batch(conn)
    batch.add(BEGIN)
    posted = ledger.post_hold_in(
        batch,
        hold_id=admission.hold_id,
        amount=cost,
        now=now,
        description=_described(model, usage),
        metadata=_charge_metadata(admission, model, usage),
    )
    batch.add(
        _CLAIM,
        {
            "hold_id": admission.hold_id,
            "call_id": admission.call_id,
            "status": status.value,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "usage_source": usage.source,
            "charged": cost,
            "latency_ms": latency_ms,
            "first_token_ms": first_token_ms,
            "error": error[:200] if error else None,
            "reply": None if reply is None else json_dumps(reply),
            "now": now,
        },
    )
    batch.add(COMMIT)
    try:
        await batch.send()
    except psycopg.errors.DivisionByZero:
        return None  # posted but not claimed: rolled back whole (see ``_CLAIM``)
    receipt = posted()
    if receipt is None:
        return None
    _log_settled(admission, model, status, usage, charged=cost, shortfall=0)
    return Settled(
        call_id=admission.call_id,
        user_id=admission.user_id,
        status=status,
        charged=cost,
        shortfall=0,
        balance=receipt.balance,
    )


def _log_settled(
    admission: Admission,
    model: Model,
    status: CallStatus,
    usage: Usage | None,
    *,
    charged: int,
    shortfall: int,
) -> None:
    log.info(
        "llm_call_settled",
        call_id=admission.call_id,
        user_id=admission.user_id,
        model=model.id,
        status=status.value,
        input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
        held=admission.held,
        charged=charged,
        shortfall=shortfall,
    )


def _described(model: Model, usage: Usage) -> str:
    return f"{model.id}: {usage.input_tokens} in / {usage.output_tokens} out"


def _charge_metadata(admission: Admission, model: Model, usage: Usage) -> dict[str, Any]:
    return {
        "llm_call": admission.call_id,
        "model": model.id,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    }


def _charge(
    conn: Connection,
    *,
    admission: Admission,
    model: Model,
    usage: Usage | None,
    cost: int,
    now: datetime,
) -> tuple[int, int, int | None]:
    """Post ``cost`` from the call's hold; returns what was charged, the shortfall recorded
    as debt, and the balance after."""
    assert admission.hold_id is not None
    if cost == 0:
        with contextlib.suppress(HoldNotPending):  # expired meanwhile: nothing is held
            ledger.void_hold(conn, hold_id=admission.hold_id, now=now)
        return 0, 0, None
    assert usage is not None
    description = _described(model, usage)
    metadata = _charge_metadata(admission, model, usage)
    posted = 0
    balance: int | None = None
    try:
        receipt = ledger.post_hold(
            conn,
            hold_id=admission.hold_id,
            amount=min(cost, admission.held),
            now=now,
            description=description,
            metadata=metadata,
        )
        posted, balance = receipt.amount, receipt.balance
    except HoldNotPending:
        # The hold outlived its time to live (a call longer than it): the whole cost is
        # then an overrun, spent from what the wallet has.
        pass
    if cost == posted:
        return posted, 0, balance
    over = ledger.overrun(
        conn,
        user_id=admission.user_id,
        amount=cost - posted,
        reference=f"hold:{admission.hold_id}",
        description=description,
        metadata=metadata,
        now=now,
    )
    if over.debt:
        log.warning(
            "llm_call_overrun",
            call_id=admission.call_id,
            user_id=admission.user_id,
            held=admission.held,
            cost=cost,
            debt=over.debt,
        )
    return posted + over.taken, over.debt, over.balance


def end_abandoned(conn: Connection, *, now: datetime | None = None, limit: int = 500) -> int:
    """Record as failed, charged nothing, the calls still pending whose hold has ended
    without them: the process serving the call stopped before settling it, and the hold
    expired (its tokens went back to the wallet). Returns how many it ended."""
    now = now or utcnow()
    abandoned = (
        sa.select(llm_calls.c.id)
        .join(holds, holds.c.id == llm_calls.c.hold_id)
        .where(
            llm_calls.c.status == CallStatus.PENDING.value,
            holds.c.status.in_([HoldStatus.EXPIRED.value, HoldStatus.VOIDED.value]),
        )
        .limit(limit)
    )
    ids = [row.id for row in conn.execute(abandoned)]
    if not ids:
        return 0
    ended = conn.execute(
        sa.update(llm_calls)
        .where(llm_calls.c.id.in_(ids), llm_calls.c.status == CallStatus.PENDING.value)
        .values(
            status=CallStatus.FAILED.value,
            error="abandoned: its hold ended before the call was settled",
            finished_at=now,
        )
    ).rowcount
    if ended:
        log.warning("llm_calls_abandoned", calls=ended)
    return int(ended)

"""A model call's admission and settlement on PostgreSQL's asyncio connection
(``calls.try_admit``, two round trips; ``calls.try_settle``, one): in the common case they
leave the very rows the long way (``admit``, ``settle``) leaves; in every other case they
write nothing but the rate-limit hit and hand over to the long way, which decides as it
always did; and the hit is counted once either way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
import pytest
import sqlalchemy as sa

from tests.llm.test_calls import BODY, MODEL
from tokenbank import ledger
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.errors import (
    CallInProgress,
    InsufficientTokens,
    InvalidApiKey,
    KeyCapReached,
    RateLimited,
)
from tokenbank.identity.models import rate_limits
from tokenbank.identity.throttle import DatabaseStorage, Throttle
from tokenbank.ledger.models import accounts, buckets, draws, holds, transfers
from tokenbank.llm import calls
from tokenbank.llm.calls import Admission, Caller, Payer, Settled, Usage
from tokenbank.llm.estimate import bound
from tokenbank.llm.keys import create_key, revoke_key
from tokenbank.llm.tables import CallStatus, llm_calls
from tokenbank.users import create_user

T = TypeVar("T")

#: Only PostgreSQL has the asyncio path; SQLite always takes the long way.
pytestmark = pytest.mark.parametrize("backend", ["postgresql"])

LIMIT = {"llm_key": "3/minute"}


def _on_loop(db: Database, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    """Run ``work`` on an asyncio connection, in an event loop of its own thread (the
    browser tests may leave one running in this one)."""

    async def main() -> T:
        await db.open_async()
        try:
            async with db.async_autocommit() as conn:
                return await work(conn)
        finally:
            await db.close_async()

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(lambda: asyncio.run(main())).result()


def _ann(db: Database, tokens: int = 1000, *, daily_cap: int | None = None) -> str:
    """Ann's wallet, and a model key of hers."""
    with db.transaction() as conn:
        create_user(conn, user_id="ann")
        ledger.credit(
            conn, user_id="ann", amount=tokens, kind=ledger.TransferKind.GRANT, idempotency_key="g"
        )
        return create_key(conn, user_id="ann", name="k", daily_cap=daily_cap)[1]


def _payer(db: Database, caller: Caller) -> Payer | None:
    return _on_loop(db, lambda conn: calls.find_payer(conn, caller))


def _try_admit(
    db: Database,
    caller: Caller,
    *,
    payer: Payer | None = None,
    throttle: Throttle | None = None,
    **options: Any,
) -> Admission | None:
    """``try_admit`` as the gateway calls it, for a payer found before (as it keeps them)."""
    payer = payer or _payer(db, caller)
    assert payer is not None
    counter = throttle.counter("llm_key", caller.secret or "") if throttle else None

    async def admit(conn: psycopg.AsyncConnection[Any]) -> Admission | None:
        return await calls.try_admit(
            conn,
            payer=payer,
            model=MODEL,
            bound=bound(BODY, max_output_tokens=40),
            request_id="r",
            stream=False,
            ttl_seconds=60,
            counter=counter,
            **options,
        )

    return _on_loop(db, admit)


def _try_settle(db: Database, admission: Admission, **options: Any) -> Settled | None:
    async def settle(conn: psycopg.AsyncConnection[Any]) -> Settled | None:
        return await calls.try_settle(
            conn, admission=admission, model=MODEL, latency_ms=3, **options
        )

    return _on_loop(db, settle)


def _admit(db: Database, caller: Caller, **options: Any) -> Admission:
    return calls.admit(
        db,
        caller=caller,
        model=MODEL,
        bound=bound(BODY, max_output_tokens=40),
        request_id="r",
        stream=False,
        ttl_seconds=60,
        **options,
    )


def _rows(conn: Any, query: sa.Select[Any]) -> list[tuple[Any, ...]]:
    return sorted((tuple(row) for row in conn.execute(query)), key=repr)


def _written(db: Database) -> dict[str, Any]:
    """What the ledger and the calls hold, without ids and times: two calls made alike
    leave the same."""
    with db.read() as conn:
        wallet = ledger.balance(conn, user_id="ann")
        return {
            "wallet": (wallet.balance, wallet.held, wallet.total_spent),
            "calls": _rows(
                conn,
                sa.select(
                    llm_calls.c.status,
                    llm_calls.c.key_id,
                    llm_calls.c.held,
                    llm_calls.c.charged,
                    llm_calls.c.input_tokens,
                    llm_calls.c.output_tokens,
                    llm_calls.c.usage_source,
                    llm_calls.c.attempt,
                    llm_calls.c.idempotency_key,
                ),
            ),
            "holds": _rows(
                conn, sa.select(holds.c.status, holds.c.amount, holds.c.posted_amount, holds.c.kind)
            ),
            "transfers": _rows(
                conn, sa.select(transfers.c.kind, transfers.c.amount, transfers.c.description)
            ),
            "buckets": _rows(conn, sa.select(buckets.c.remaining, buckets.c.held)),
            "draws": conn.execute(sa.select(sa.func.count()).select_from(draws)).scalar(),
        }


def _hits(db: Database) -> int:
    with db.read() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(rate_limits.c.hits), 0))
            ).scalar_one()
        )


def test_the_common_case_leaves_what_the_long_way_leaves(fresh_database: Any) -> None:
    """One call admitted, settled, then admitted and settled again with an idempotency
    key, on each path; both databases end alike."""
    results = []
    for fast in (True, False):
        db = fresh_database()
        secret = _ann(db)
        caller = Caller(secret=secret)
        usage = Usage(7, 11, "upstream")
        settled_by: list[Any] = []
        for key in (None, "again"):
            if fast:
                admission = _try_admit(db, caller, idempotency_key=key)
                assert admission is not None
                settled = _try_settle(
                    db,
                    admission,
                    status=CallStatus.OK,
                    usage=usage,
                    reply={"id": "x"} if key else None,
                )
            else:
                admission = _admit(db, caller, idempotency_key=key)
                settled = calls.settle(
                    db,
                    admission=admission,
                    model=MODEL,
                    status=CallStatus.OK,
                    usage=usage,
                    latency_ms=3,
                    reply={"id": "x"} if key else None,
                )
            assert settled is not None
            settled_by.append((settled.status, settled.charged, settled.shortfall, settled.balance))
        # Settling once more changes nothing, and the stored reply replays.
        assert admission is not None
        assert _try_settle(db, admission, status=CallStatus.OK, usage=usage) is None
        assert _admit(db, caller, idempotency_key="again").replay == {"id": "x"}
        results.append((settled_by, _written(db)))
        with db.read() as conn:
            assert ledger.verify(conn).ok
        db.dispose()
    assert results[0] == results[1]
    assert results[0][0] == [(CallStatus.OK, 18, 0, 982), (CallStatus.OK, 18, 0, 964)]


def test_only_a_live_key_or_a_wallet_has_a_payer(db: Database) -> None:
    secret = _ann(db)
    with db.transaction() as conn:
        revoked, revoked_secret = create_key(conn, user_id="ann", name="old")
        revoke_key(conn, user_id="ann", key_id=revoked.id)
    ann = _payer(db, Caller(user_id="ann"))
    assert ann is not None and (ann.user_id, ann.key_id) == ("ann", None)
    key = _payer(db, Caller(secret=secret))
    assert key is not None and key.account_id == ann.account_id and key.key_id is not None
    for nobody in (
        Caller(secret="tbu_" + "x" * 43),
        Caller(secret="not a key"),
        Caller(secret=revoked_secret),
        Caller(user_id="nobody"),
    ):
        assert _payer(db, nobody) is None


def test_every_other_case_writes_nothing_but_the_hit_and_goes_the_long_way(
    db: Database,
) -> None:
    """Each case the one round trip leaves to ``admit``, for a payer the gateway found
    before (a key since revoked is one): it writes nothing but the rate-limit hit."""
    secret = _ann(db)
    with db.transaction() as conn:
        revoked, revoked_secret = create_key(conn, user_id="ann", name="old")
        create_user(conn, user_id="poor")
        _, capped_secret = create_key(conn, user_id="ann", name="capped", daily_cap=60)
    cases: dict[str, tuple[Caller, Payer | None, dict[str, Any]]] = {
        "a key revoked since": (Caller(secret=revoked_secret), None, {}),
        "a key past its cap": (Caller(secret=capped_secret), None, {}),
        "a wallet short of tokens": (Caller(user_id="poor"), None, {}),
        "an idempotency key used": (Caller(secret=secret), None, {"idempotency_key": "used"}),
    }
    cases = {name: (c, _payer(db, c), options) for name, (c, _, options) in cases.items()}
    with db.transaction() as conn:
        revoke_key(conn, user_id="ann", key_id=revoked.id)
    # The capped key's day: one call held (53 of its 60), so the next does not fit.
    assert _try_admit(db, Caller(secret=capped_secret)) is not None
    first = _admit(db, Caller(secret=secret), idempotency_key="used")
    calls.settle(
        db,
        admission=first,
        model=MODEL,
        status=CallStatus.OK,
        usage=Usage(1, 1, "upstream"),
        latency_ms=1,
    )
    throttle = Throttle(DatabaseStorage(db), {"llm_key": "100/minute"})
    for name, (caller, payer, options) in cases.items():
        before, hits = _written(db), _hits(db)
        assert _try_admit(db, caller, payer=payer, throttle=throttle, **options) is None, name
        assert _written(db) == before, name
        assert _hits(db) == hits + 1, name
    # Tokens past their expiry must expire first: the long way does it.
    with db.transaction() as conn:
        ledger.credit(
            conn,
            user_id="poor",
            amount=500,
            kind=ledger.TransferKind.GRANT,
            idempotency_key="promo",
            source=ledger.Source.PROMO,
            expires_at=utcnow() - timedelta(seconds=1),
            now=utcnow() - timedelta(days=1),
        )
    with db.read() as conn:  # the wallet's row still counts them, until they expire
        balance = sa.select(accounts.c.balance).where(accounts.c.user_id == "poor")
        assert conn.execute(balance).scalar_one() == 500
    before = _written(db)
    assert _try_admit(db, Caller(user_id="poor")) is None
    assert _written(db) == before
    with pytest.raises(InsufficientTokens):
        _admit(db, Caller(user_id="poor"))


def test_the_settlement_leaves_the_long_way_what_it_does_not_handle(db: Database) -> None:
    """Nothing to charge (the hold is voided), a cost beyond the hold (an overrun), a
    hold past its time to live: nothing written, then ``settle`` charges as it did."""
    secret = _ann(db, 5000)
    caller = Caller(secret=secret)
    for usage, status, expected in (
        (None, CallStatus.FAILED, 0),
        (Usage(500, 500, "upstream"), CallStatus.OK, 1000),
        (Usage(1, 1, "upstream"), CallStatus.OK, 2),
    ):
        late = expected == 2
        admission = _try_admit(db, caller, now=utcnow() - timedelta(minutes=5) if late else None)
        assert admission is not None
        before = _written(db)
        assert _try_settle(db, admission, status=status, usage=usage) is None
        assert _written(db) == before
        settled = calls.settle(
            db, admission=admission, model=MODEL, status=status, usage=usage, latency_ms=1
        )
        assert settled.charged + settled.shortfall == expected


def test_the_rate_limit_counts_each_call_once_and_refuses_past_it(db: Database) -> None:
    secret = _ann(db)
    throttle = Throttle(DatabaseStorage(db), LIMIT)
    for _ in range(3):
        assert _try_admit(db, Caller(secret=secret), throttle=throttle) is not None
    before = _written(db)
    with pytest.raises(RateLimited) as refused:
        _try_admit(db, Caller(secret=secret), throttle=throttle)
    assert 1 <= refused.value.retry_after <= 61
    assert _written(db) == before
    assert _hits(db) == 4
    # The long way's own counter (``Throttle.hit``) agrees: the window is used up.
    with pytest.raises(RateLimited):
        throttle.hit("llm_key", secret)


def test_every_path_at_once_on_one_wallet_never_deadlocks(db: Database) -> None:
    """The class of failure a deadlock is: every way a call's units and the ledger's own
    take locks, at once on one wallet, for a few seconds: admissions and settlements in
    one round trip and the long way (an overrun, nothing to charge, idempotent retries, a
    key with a cap, a key revoked midway), spends and holds through the ledger, and the
    worker's jobs. Only business refusals may come back; never a deadlock or any other
    database error; the wallet never goes negative and the ledger verifies."""
    secret = _ann(db, 20_000)
    with db.transaction() as conn:
        revoked, revoked_secret = create_key(conn, user_id="ann", name="doomed")
        _, capped_secret = create_key(conn, user_id="ann", name="capped", daily_cap=2_000)
    refusals = (InsufficientTokens, KeyCapReached, CallInProgress, InvalidApiKey)
    unexpected: list[BaseException] = []
    deadline = time.monotonic() + 3

    def long_way(n: int) -> None:
        caller = Caller(secret=(secret, capped_secret, revoked_secret)[n % 3])
        try:
            admission = _admit(db, caller, idempotency_key=f"k{n % 7}")
            if admission.held:
                usage = (None, Usage(100, 100, "upstream"), Usage(1, 1, "upstream"))[n % 3]
                calls.settle(
                    db,
                    admission=admission,
                    model=MODEL,
                    status=CallStatus.OK if usage else CallStatus.FAILED,
                    usage=usage,
                    latency_ms=1,
                )
        except refusals:
            pass
        if n % 5 == 0:
            with db.transaction() as conn:
                ledger.spend(conn, user_id="ann", amount=3, idempotency_key=f"s{n}")
                held = ledger.hold(conn, user_id="ann", amount=5, idempotency_key=f"h{n}")
                ledger.void_hold(conn, hold_id=held.id)
        if n % 9 == 0:
            with db.autocommit() as conn:
                ledger.expire_holds(conn)
                calls.end_abandoned(conn)
        if n == 20:
            with db.transaction() as conn:
                revoke_key(conn, user_id="ann", key_id=revoked.id)

    async def fast_way(conn: psycopg.AsyncConnection[Any], caller: Caller) -> None:
        payer = await calls.find_payer(conn, caller)
        if payer is None:
            return
        admission = await calls.try_admit(
            conn,
            payer=payer,
            model=MODEL,
            bound=bound(BODY, max_output_tokens=40),
            request_id="r",
            stream=True,
            ttl_seconds=60,
        )
        if admission is not None:
            await calls.try_settle(
                conn,
                admission=admission,
                model=MODEL,
                status=CallStatus.OK,
                usage=Usage(2, 2, "upstream"),
                latency_ms=1,
            )

    async def main() -> None:
        await db.open_async()

        async def fast_loop(caller: Caller) -> None:
            while time.monotonic() < deadline:
                try:
                    async with db.async_autocommit() as conn:
                        await fast_way(conn, caller)
                except BaseException as exc:
                    unexpected.append(exc)
                    return

        async def long_loop(start: int) -> None:
            n = start
            while time.monotonic() < deadline:
                try:
                    await asyncio.to_thread(long_way, n)
                except BaseException as exc:
                    unexpected.append(exc)
                    return
                n += 4

        try:
            callers = [Caller(secret=secret), Caller(secret=capped_secret), Caller(user_id="ann")]
            await asyncio.gather(
                *(fast_loop(callers[i % 3]) for i in range(6)),
                *(long_loop(i) for i in range(4)),
            )
        finally:
            await db.close_async()

    with ThreadPoolExecutor(1) as thread:
        thread.submit(lambda: asyncio.run(main())).result()
    assert unexpected == []
    with db.read() as conn:
        wallet = ledger.balance(conn, user_id="ann")
        assert wallet.balance >= 0 and wallet.available >= 0
        assert ledger.verify(conn).ok
        done = conn.execute(
            sa.select(sa.func.count()).where(llm_calls.c.status == CallStatus.OK.value)
        ).scalar_one()
    assert done > 20  # the loops did run, on both ways

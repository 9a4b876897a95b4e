"""A big, consistent ledger written straight into a migrated PostgreSQL database with COPY.

``bench/big_ledger.py`` needs millions of transfers to see how the service's queries behave
on a ledger that has been in use for years; making them through the ledger's functions
would take hours. This module plays a ledger's history forward in Python instead, in time
order, keeping each wallet's buckets in the order of use exactly as the ledger does, and
writes the rows the ledger would have written:

* purchases (some with a bonus) into paid buckets that never expire; grants (trial, promo,
  admin) into buckets that expire after 30 days, or never (some admin grants);
* spends, drawn on the live buckets in the order of use (soonest-expiring first,
  promotional before paid, oldest first), one draw per bucket;
* holds reserved in those buckets, then posted for part or all of what they hold (a spend
  with key ``@post:hold:{id}``), voided, or expired; a few still pending at the end;
* refunds of a wallet's latest spend, given back to the bucket it drew on;
* the worker's expiry sweep: what is left of each expiring bucket leaves 30 seconds after
  its expiry, by an ``@expiry:bucket:{id}`` transfer.

Each transfer has its two entries with the wallet's running balance; the wallets' balances,
holds and totals, and the buckets' ``remaining`` and ``held`` are their final values. One
wallet (the first) takes a fifth of all transfers (21 %: over a million history lines at
5,000,000), a long-lived team account whose history is the deep one. Wallets top up when
they run low, so most hold one to four buckets with tokens left.

The rows go straight into the migrated tables, indexes and constraints in place: each
table through one COPY on a connection of its own, fed by a thread from a queue, so
PostgreSQL takes the rows in while the history is still being played. Foreign keys are
not checked row by row during the COPY (``session_replication_role = replica``, as
``pg_restore --disable-triggers`` loads data); ``check_references`` checks every one of
them afterwards. Ids come from counters in time order, as the sequences would have given
them; the sequences are moved past them afterwards.
"""

from __future__ import annotations

import heapq
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tokenbank.ledger import HoldKind, HoldStatus, Source, SystemAccount, TransferKind
from tokenbank.users import emails

#: The heavy wallet's share of the transfers: over a million history lines at 5,000,000.
HEAVY_SHARE = 0.21
#: The history spans two years, ending when the load starts.
SPAN = timedelta(days=730)
GRANT_LIFETIME = timedelta(days=30)
#: The worker's sweep runs every minute: a bucket's rest leaves this long after its expiry.
SWEEP_DELAY = timedelta(seconds=30)
PACKS = (1_000, 5_000, 20_000, 100_000)
PACK_WEIGHTS = (40, 35, 20, 5)
FIRST_WALLET_ID = 1000
CHUNK = 20_000  # rows buffered per table before they are sent
NAMES = ("ann", "bo", "chen", "dara", "eli", "fatima", "goran", "hana", "ines", "jun", "kofi")
FEATURES = ("chat", "image", "summary")
MODELS = ("small", "medium", "large")

# A bucket is a list (mutable, small): [id, remaining, held, expires_us or None, paid].
B_ID, B_REMAINING, B_HELD, B_EXPIRES, B_PAID = range(5)


def user_id_of(n: int) -> str:
    """The host app's id of wallet ``n`` (0 is the heavy one)."""
    return f"u{n:06d}"


def email_of(n: int) -> str | None:
    """Most users have an address; some were made by their host app without one."""
    return None if n % 7 == 3 else f"{NAMES[n % len(NAMES)]}.{n}@example.com"


def wallet_id_of(n: int) -> int:
    return FIRST_WALLET_ID + n


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stamp(us: int) -> str:
    """A timestamp as PostgreSQL reads it in COPY text, from microseconds since 1970."""
    return (EPOCH + timedelta(microseconds=us)).isoformat()


def text(value: object) -> str:
    """One COPY text field: ``\\N`` for NULL; our values hold no tabs, newlines or
    backslashes."""
    return "\\N" if value is None else str(value)


class Table:
    """Rows of one table on their way into it: buffered here, sent by a thread of its own
    through one COPY on one connection, so PostgreSQL takes each table in while the history
    is still being played (and the tables side by side, on the other core)."""

    def __init__(self, url: str, name: str, *columns: str) -> None:
        self.name = name
        self.columns = columns
        self.rows = 0
        self.bytes = 0
        self._parts: list[str] = []
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._copy, args=(url,), daemon=True)
        self._thread.start()

    def add(self, *values: object) -> None:
        """A row of values (``None`` is NULL); the busiest rows use ``line`` instead."""
        self.line("\t".join(["\\N" if v is None else str(v) for v in values]) + "\n")

    def line(self, line: str) -> None:
        """A row already in COPY text, newline included."""
        self._parts.append(line)
        self.rows += 1
        if len(self._parts) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._failure is not None:
            raise self._failure
        block = "".join(self._parts).encode()
        self._parts.clear()
        self.bytes += len(block)
        self._queue.put(block)

    def close(self) -> None:
        """Send the rest, end the COPY and commit."""
        self.flush()
        self._queue.put(None)
        self._thread.join()
        if self._failure is not None:
            raise self._failure

    def _copy(self, url: str) -> None:
        try:
            with psycopg.connect(url) as conn:
                conn.execute("SET synchronous_commit = off")
                # Foreign keys are not checked row by row during the load (pg_restore's
                # --disable-triggers): the rows satisfy them by construction, and
                # ``check_references`` checks them all once the load is done.
                conn.execute("SET session_replication_role = replica")
                columns = ", ".join(self.columns)
                with (
                    conn.cursor() as cursor,
                    cursor.copy(f"COPY {self.name} ({columns}) FROM STDIN") as copy,
                ):
                    while (block := self._queue.get()) is not None:
                        copy.write(block)
        except BaseException as exc:  # raised in the generating thread, at its next flush
            self._failure = exc
            while self._queue.get() is not None:  # let the generator finish
                pass


@dataclass
class Wallet:
    """What the ledger keeps of a wallet while its history is played forward."""

    n: int
    balance: int = 0
    held: int = 0
    purchased: int = 0
    granted: int = 0
    spent: int = 0
    created_us: int = 0
    expiring: deque[list[Any]] = field(default_factory=deque)  # soonest-expiring first
    unpaid: deque[list[Any]] = field(default_factory=deque)  # never expire, promotional
    paid: deque[list[Any]] = field(default_factory=deque)  # never expire, bought
    #: The latest spend, while it can be refunded whole: (transfer id, amount, bucket).
    last_spend: tuple[int, int, list[Any]] | None = None

    @property
    def id(self) -> int:
        return wallet_id_of(self.n)


@dataclass(frozen=True)
class Loaded:
    """What was loaded, and how long each part took."""

    transfers: int
    wallets: int
    rows: dict[str, int]
    megabytes: float  # of COPY text
    seconds: float
    heavy_user: str


class History:
    """Plays the ledger's history forward and writes its rows."""

    def __init__(self, url: str, *, wallets: int, transfers: int, end: datetime) -> None:
        self.rng = random.Random(20261207)
        self.target = transfers
        self.wallets = [Wallet(n) for n in range(wallets)]
        self.end_us = int((end - EPOCH).total_seconds() * 1_000_000)
        self.start_us = self.end_us - int(SPAN.total_seconds() * 1_000_000)
        self.step_us = max(1, (self.end_us - self.start_us) // max(1, int(transfers * 1.05)))
        self.sweeps: list[tuple[int, int, int]] = []  # (due, bucket id, wallet n)
        self.expiring: dict[int, list[Any]] = {}  # the buckets those are, by id
        self.buckets: list[tuple[list[Any], int, int | None, str, int, str, str | None]] = []
        self.next_transfer = self.next_entry = self.next_bucket = 1
        self.next_hold = self.next_draw = 1
        self.purchases = 0

        def table(name: str, *columns: str) -> Table:
            return Table(url, name, *columns)

        self.transfers = table(
            "transfers",
            "id",
            "idempotency_key",
            "kind",
            "debit_account_id",
            "credit_account_id",
            "amount",
            "description",
            "metadata",
            "refund_of_id",
            "event_at",
            "created_at",
            "feature",
            "quantity",
        )
        self.entries = table(
            "entries", "id", "transfer_id", "account_id", "kind", "amount", "balance_after",
            "created_at",
        )  # fmt: skip
        self.holds = table(
            "holds",
            "id",
            "idempotency_key",
            "account_id",
            "amount",
            "status",
            "description",
            "metadata",
            "expires_at",
            "created_at",
            "resolved_at",
            "posted_amount",
            "transfer_id",
            "kind",
            "feature",
            "quantity",
        )
        self.draws = table("draws", "id", "bucket_id", "transfer_id", "hold_id", "amount")
        self.bucket_rows = table(
            "buckets", "id", "account_id", "transfer_id", "source", "paid", "amount",
            "remaining", "held", "expires_at", "expired_at", "created_at",
        )  # fmt: skip
        self.accounts = table(
            "accounts", "id", "kind", "user_id", "balance", "held", "total_purchased",
            "total_granted", "total_spent", "debt", "created_at",
        )  # fmt: skip
        self.users = table(
            "users", "id", "email", "email_canonical", "email_skeleton", "email_verified_at",
            "name", "created_at", "updated_at",
        )  # fmt: skip

    # --- writing a transfer ---------------------------------------------------------------

    def transfer(
        self,
        wallet: Wallet,
        kind: TransferKind,
        amount: int,
        key: str,
        at: str,
        *,
        description: str | None = None,
        metadata: str | None = None,
        refund_of: int | None = None,
        feature: str | None = None,
        quantity: int | None = None,
    ) -> int:
        """A transfer and its two entries; the caller has changed ``wallet.balance``."""
        tid = self.next_transfer
        self.next_transfer += 1
        system = SYSTEM_OF[kind]
        name = kind.value
        debit_after: object
        credit_after: object
        if kind in CREDITS:
            debit, credit, debit_after, credit_after = system, wallet.id, "\\N", wallet.balance
        else:
            debit, credit, debit_after, credit_after = wallet.id, system, wallet.balance, "\\N"
        self.transfers.line(
            f"{tid}\t{key}\t{name}\t{debit}\t{credit}\t{amount}\t{text(description)}"
            f"\t{text(metadata)}\t{text(refund_of)}\t{at}\t{at}\t{text(feature)}"
            f"\t{text(quantity)}\n"
        )
        eid = self.next_entry
        self.next_entry += 2
        self.entries.line(f"{eid}\t{tid}\t{debit}\t{name}\t{-amount}\t{debit_after}\t{at}\n")
        self.entries.line(f"{eid + 1}\t{tid}\t{credit}\t{name}\t{amount}\t{credit_after}\t{at}\n")
        return tid

    def draw(
        self, bucket: list[Any], amount: int, *, transfer: int | None, hold: int | None
    ) -> None:
        self.draws.line(
            f"{self.next_draw}\t{bucket[B_ID]}\t{text(transfer)}\t{text(hold)}\t{amount}\n"
        )
        self.next_draw += 1

    def fill(
        self,
        wallet: Wallet,
        transfer: int,
        source: Source,
        amount: int,
        *,
        at_us: int,
        expires_us: int | None,
    ) -> list[Any]:
        paid = source in (Source.PURCHASE, Source.SUBSCRIPTION)
        bucket: list[Any] = [self.next_bucket, amount, 0, expires_us, paid]
        self.next_bucket += 1
        if expires_us is not None:
            wallet.expiring.append(bucket)
            self.expiring[bucket[B_ID]] = bucket
            due = expires_us + int(SWEEP_DELAY.total_seconds() * 1e6)
            heapq.heappush(self.sweeps, (due, bucket[B_ID], wallet.n))
        else:
            (wallet.paid if paid else wallet.unpaid).append(bucket)
        self.buckets.append(
            (bucket, wallet.id, transfer, source.value, amount, stamp(at_us),
             None if expires_us is None else stamp(expires_us))
        )  # fmt: skip
        return bucket

    def live(self, wallet: Wallet) -> Iterable[list[Any]]:
        """The wallet's buckets with free tokens, in the order of use."""
        for kept in (wallet.expiring, wallet.unpaid, wallet.paid):
            while kept and kept[0][B_REMAINING] == 0:
                kept.popleft()
            for bucket in kept:
                if bucket[B_REMAINING] > bucket[B_HELD]:
                    yield bucket

    def take(self, wallet: Wallet, amount: int) -> list[tuple[list[Any], int]]:
        """Which buckets ``amount`` free tokens come from, in the order of use."""
        taken = []
        for bucket in self.live(wallet):
            n = min(amount, bucket[B_REMAINING] - bucket[B_HELD])
            taken.append((bucket, n))
            amount -= n
            if amount == 0:
                return taken
        raise AssertionError("the wallet's buckets hold less than its balance")

    # --- what happens to a wallet -----------------------------------------------------------

    def purchase(self, wallet: Wallet, at_us: int, at: str) -> None:
        self.purchases += 1
        pack = self.rng.choices(PACKS, PACK_WEIGHTS)[0]
        reference = f"purchase:{self.purchases}"
        wallet.balance += pack
        wallet.purchased += pack
        tid = self.transfer(
            wallet, TransferKind.PURCHASE, pack, f"@purchase:{reference}", at,
            description=f"{pack:,} tokens", metadata=f'{{"purchase_id": {self.purchases}}}',
        )  # fmt: skip
        self.fill(wallet, tid, Source.PURCHASE, pack, at_us=at_us, expires_us=None)
        if pack >= 20_000 and self.rng.random() < 0.5:
            bonus = pack // 10
            wallet.balance += bonus
            wallet.purchased += bonus
            tid = self.transfer(
                wallet, TransferKind.BONUS, bonus, f"@bonus:{reference}", at,
                description="bonus tokens",
            )  # fmt: skip
            self.fill(wallet, tid, Source.PURCHASE, bonus, at_us=at_us, expires_us=None)

    def grant(self, wallet: Wallet, at_us: int, at: str) -> None:
        source = self.rng.choice((Source.TRIAL, Source.PROMO, Source.PROMO, Source.ADMIN))
        amount = self.rng.choice((100, 250, 500, 1_000, 2_000))
        lasting = source is Source.ADMIN and self.rng.random() < 0.5
        expires = None if lasting else at_us + int(GRANT_LIFETIME.total_seconds() * 1e6)
        wallet.balance += amount
        wallet.granted += amount
        tid = self.transfer(
            wallet, TransferKind.GRANT, amount, f"grant-{self.rng.getrandbits(64):016x}", at,
            description=f"{source.value} tokens",
        )  # fmt: skip
        self.fill(wallet, tid, source, amount, at_us=at_us, expires_us=expires)

    def spend(self, wallet: Wallet, at: str) -> None:
        available = wallet.balance - wallet.held
        amount = min(available, int(self.rng.expovariate(1 / 40)) + 1)
        feature = quantity = description = metadata = None
        roll = self.rng.random()
        if roll < 0.3:
            feature, quantity = self.rng.choice(FEATURES), 1
        elif roll < 0.6:
            description = "chat completion"
            metadata = f'{{"model": "{self.rng.choice(MODELS)}"}}'
        taken = self.take(wallet, amount)
        wallet.balance -= amount
        wallet.spent += amount
        tid = self.transfer(
            wallet, TransferKind.SPEND, amount, f"{self.rng.getrandbits(128):032x}", at,
            description=description, metadata=metadata, feature=feature, quantity=quantity,
        )  # fmt: skip
        for bucket, n in taken:
            bucket[B_REMAINING] -= n
            self.draw(bucket, n, transfer=tid, hold=None)
        wallet.last_spend = (tid, amount, taken[0][0]) if len(taken) == 1 else None

    def refund(self, wallet: Wallet, at: str) -> None:
        assert wallet.last_spend is not None
        spend_id, amount, bucket = wallet.last_spend
        wallet.last_spend = None
        bucket[B_REMAINING] += amount
        if bucket[B_EXPIRES] is not None:  # back in the queue it may have left, in order
            queue = wallet.expiring
        else:
            queue = wallet.paid if bucket[B_PAID] else wallet.unpaid
        if bucket not in queue:
            queue.appendleft(bucket)
        wallet.balance += amount
        wallet.spent -= amount
        tid = self.transfer(
            wallet, TransferKind.REFUND, amount, f"refund-{self.rng.getrandbits(64):016x}", at,
            description="the answer failed", refund_of=spend_id,
        )  # fmt: skip
        self.draw(bucket, -amount, transfer=tid, hold=None)

    def hold(self, wallet: Wallet, at_us: int, at: str, end: HoldStatus) -> None:
        """A model call's hold, ended as ``end`` seconds later (pending: still running)."""
        available = wallet.balance - wallet.held
        amount = min(available, self.rng.choice((200, 500, 1_000, 2_000)))
        hid = self.next_hold
        self.next_hold += 1
        reserved = self.take(wallet, amount)
        for bucket, n in reserved:
            self.draw(bucket, n, transfer=None, hold=hid)
        key = f"@call:{self.rng.getrandbits(96):024x}:1"
        ttl_us = 120_000_000
        resolved_us = at_us + self.rng.randrange(500_000, 30_000_000)
        posted = transfer = None
        resolved: str | None = stamp(resolved_us)
        if end is HoldStatus.PENDING:
            ttl_us = int(timedelta(days=2).total_seconds() * 1e6)  # a long batch job
            resolved = None
            for bucket, n in reserved:
                bucket[B_HELD] += n
            wallet.held += amount
        elif end is HoldStatus.EXPIRED:
            resolved = stamp(at_us + ttl_us)
        elif end is HoldStatus.POSTED:
            posted = self.rng.randint(max(1, amount // 4), amount)
            wallet.balance -= posted
            wallet.spent += posted
            transfer = self.transfer(
                wallet, TransferKind.SPEND, posted, f"@post:hold:{hid}", stamp(resolved_us),
                description="chat completion",
            )  # fmt: skip
            left = posted
            for bucket, reserved_there in reserved:
                n = min(reserved_there, left)
                if n:
                    bucket[B_REMAINING] -= n
                    self.draw(bucket, n, transfer=transfer, hold=None)
                    left -= n
            wallet.last_spend = None
        self.holds.add(
            hid, key, wallet.id, amount, end.value, None, None, stamp(at_us + ttl_us), at,
            resolved, posted, transfer, HoldKind.HOLD.value, None, None,
        )  # fmt: skip

    def sweep(self, until_us: int) -> None:
        """The worker's expiry sweep: what is left of each bucket past its expiry leaves."""
        while self.sweeps and self.sweeps[0][0] <= until_us:
            due, bucket_id, n = heapq.heappop(self.sweeps)
            bucket = self.expiring.pop(bucket_id)
            wallet = self.wallets[n]
            left = bucket[B_REMAINING] - bucket[B_HELD]
            if bucket in wallet.expiring:
                wallet.expiring.remove(bucket)
            bucket.append(stamp(due))  # expired_at
            if left <= 0:
                continue
            bucket[B_REMAINING] -= left
            wallet.balance -= left
            if wallet.last_spend is not None and wallet.last_spend[2] is bucket:
                wallet.last_spend = None
            at = stamp(due)
            tid = self.transfer(
                wallet, TransferKind.EXPIRY, left, f"@expiry:bucket:{bucket[B_ID]}", at
            )
            self.draw(bucket, left, transfer=tid, hold=None)

    # --- the whole history ----------------------------------------------------------------

    def play(self) -> None:
        rng = self.rng
        count = len(self.wallets)
        others = max(1, count - 1)
        now_us = self.start_us
        for wallet in self.wallets:  # wallets open over the first months
            wallet.created_us = self.start_us - rng.randrange(1, 90 * 86_400) * 1_000_000
        while self.next_transfer <= self.target:
            now_us += self.step_us
            self.sweep(now_us)
            if count == 1 or rng.random() < HEAVY_SHARE:
                wallet = self.wallets[0]
            else:
                wallet = self.wallets[1 + int(others * rng.random() ** 1.5)]
            at = stamp(now_us)
            available = wallet.balance - wallet.held
            roll = rng.random()
            if available < 300 or roll < 0.005:  # running low (or topping up early)
                self.purchase(wallet, now_us, at)
            elif roll < 0.04:
                self.grant(wallet, now_us, at)
            elif roll < 0.21:
                self.hold(wallet, now_us, at, HoldStatus.POSTED)
            elif roll < 0.235:
                self.hold(wallet, now_us, at, HoldStatus.VOIDED)
            elif roll < 0.24:
                self.hold(wallet, now_us, at, HoldStatus.EXPIRED)
            elif roll < 0.25 and wallet.last_spend is not None:
                self.refund(wallet, at)
            else:
                self.spend(wallet, at)
        self.sweep(now_us)
        for wallet in self.wallets[1 :: max(1, count // 1000)]:  # calls still running
            if wallet.balance - wallet.held >= 200:
                now_us += self.step_us
                self.hold(wallet, now_us, stamp(now_us), HoldStatus.PENDING)

    def finish(self) -> None:
        """The final rows of what changes (wallets, buckets) and the users."""
        for bucket, account, transfer, source, amount, created, expires in self.buckets:
            expired = bucket[5] if len(bucket) > 5 else None
            self.bucket_rows.add(
                bucket[B_ID], account, transfer, source, "t" if bucket[B_PAID] else "f", amount,
                bucket[B_REMAINING], bucket[B_HELD], expires, expired, created,
            )  # fmt: skip
        for wallet in self.wallets:
            created = stamp(wallet.created_us)
            self.accounts.add(
                wallet.id, "wallet", user_id_of(wallet.n), wallet.balance, wallet.held,
                wallet.purchased, wallet.granted, wallet.spent, 0, created,
            )  # fmt: skip
            address = email_of(wallet.n)
            forms = emails.forms(address) if address is not None else None
            self.users.add(
                user_id_of(wallet.n), address, forms.canonical if forms else None,
                forms.skeleton if forms else None, created if forms else None,
                NAMES[wallet.n % len(NAMES)].title(), created, created,
            )  # fmt: skip
        for each in self.tables():
            each.close()

    def tables(self) -> list[Table]:
        return [
            self.accounts,
            self.users,
            self.transfers,
            self.entries,
            self.bucket_rows,
            self.holds,
            self.draws,
        ]


SYSTEM_OF = {
    TransferKind.PURCHASE: int(SystemAccount.PURCHASES),
    TransferKind.BONUS: int(SystemAccount.BONUSES),
    TransferKind.GRANT: int(SystemAccount.GRANTS),
    TransferKind.SPEND: int(SystemAccount.CONSUMPTION),
    TransferKind.REFUND: int(SystemAccount.CONSUMPTION),
    TransferKind.EXPIRY: int(SystemAccount.EXPIRY),
}
CREDITS = frozenset(
    {TransferKind.PURCHASE, TransferKind.BONUS, TransferKind.GRANT, TransferKind.REFUND}
)

#: Sequences moved past the ids the load used.
SEQUENCES = ("accounts", "transfers", "entries", "buckets", "holds", "draws")

#: Every foreign key of the loaded tables: (table, column, referenced table, its column).
REFERENCES = (
    ("users", "id", "accounts", "user_id"),
    ("transfers", "debit_account_id", "accounts", "id"),
    ("transfers", "credit_account_id", "accounts", "id"),
    ("transfers", "refund_of_id", "transfers", "id"),
    ("entries", "transfer_id", "transfers", "id"),
    ("entries", "account_id", "accounts", "id"),
    ("buckets", "account_id", "accounts", "id"),
    ("buckets", "transfer_id", "transfers", "id"),
    ("holds", "account_id", "accounts", "id"),
    ("holds", "transfer_id", "transfers", "id"),
    ("draws", "bucket_id", "buckets", "id"),
    ("draws", "transfer_id", "transfers", "id"),
    ("draws", "hold_id", "holds", "id"),
)


def load(url: str, *, transfers: int, wallets: int) -> Loaded:
    """Fill the migrated, empty ledger at ``url`` with ``transfers`` transfers over
    ``wallets`` wallets (and their users)."""
    began = time.perf_counter()
    history = History(url, wallets=wallets, transfers=transfers, end=datetime.now(UTC))
    history.play()
    history.finish()
    with psycopg.connect(url, autocommit=True) as conn:
        for name in SEQUENCES:
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{name}', 'id'),"
                f" (SELECT max(id) FROM {name}))"
            )
    return Loaded(
        transfers=history.next_transfer - 1,
        wallets=wallets,
        rows={t.name: t.rows for t in history.tables()},
        megabytes=sum(t.bytes for t in history.tables()) / 1e6,
        seconds=time.perf_counter() - began,
        heavy_user=user_id_of(0),
    )


def check_references(url: str) -> list[str]:
    """Each foreign key the load did not have checked row by row, checked now: the
    references that point at no row (none, or the load is wrong)."""
    dangling = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET work_mem = '256MB'")
        for table, column, target, key in REFERENCES:
            row = conn.execute(
                f"SELECT count(*) FROM {table} x WHERE x.{column} IS NOT NULL AND NOT EXISTS"
                f" (SELECT 1 FROM {target} y WHERE y.{key} = x.{column})"
            ).fetchone()
            if row is not None and row[0]:
                dangling.append(f"{table}.{column}: {row[0]} rows point at no {target}")
    return dangling


def vacuum(url: str) -> float:
    """VACUUM (ANALYZE) the loaded tables, as autovacuum would have long since done on a
    ledger this old (and would otherwise start in the middle of the measurements)."""
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        for name in ("accounts", "users", "transfers", "entries", "buckets", "holds", "draws"):
            conn.execute(f"VACUUM (ANALYZE) {name}")
    return time.perf_counter() - began

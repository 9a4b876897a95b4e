"""``verify``: recompute the ledger's invariants from its rows and report every breach.

The code and the database constraints keep these true; verify is the independent check an
operator runs (``tokenbank ledger verify``) and every test suite runs after its work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    description: str
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checks: list[Check]
    accounts: int
    transfers: int
    entries: int

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


# Each check is a query that returns one row per breach, and how to describe the row.
_CHECKS: list[tuple[str, str, str, str]] = [
    (
        "wallet_balances",
        "each wallet's balance equals the sum of its entries",
        """
        SELECT a.user_id, a.balance, COALESCE(s.total, 0) AS total
          FROM accounts a
          LEFT JOIN (SELECT account_id, SUM(amount) AS total FROM entries GROUP BY account_id) s
                 ON s.account_id = a.id
         WHERE a.kind = 'wallet' AND a.balance <> COALESCE(s.total, 0)
        """,
        "wallet {user_id}: balance {balance}, entries sum to {total}",
    ),
    (
        "running_balances",
        "each wallet entry records the balance right after it",
        """
        SELECT * FROM (
            SELECT e.id, e.balance_after,
                   SUM(e.amount) OVER (PARTITION BY e.account_id ORDER BY e.id) AS running
              FROM entries e JOIN accounts a ON a.id = e.account_id
             WHERE a.kind = 'wallet') r
         WHERE r.balance_after IS NULL OR r.balance_after <> r.running
        """,
        "entry {id}: balance_after {balance_after}, running sum {running}",
    ),
    (
        "transfers_balance",
        "every transfer is two entries: -amount on its debit account, +amount on its credit",
        """
        SELECT t.id, COUNT(e.id) AS n
          FROM transfers t LEFT JOIN entries e ON e.transfer_id = t.id
         GROUP BY t.id, t.amount, t.debit_account_id, t.credit_account_id
        HAVING COUNT(e.id) <> 2
            OR SUM(CASE WHEN e.account_id = t.debit_account_id AND e.amount = -t.amount
                        THEN 1 ELSE 0 END) <> 1
            OR SUM(CASE WHEN e.account_id = t.credit_account_id AND e.amount = t.amount
                        THEN 1 ELSE 0 END) <> 1
        """,
        "transfer {id}: {n} entries that do not mirror it",
    ),
    (
        "ledger_sums_to_zero",
        "all entries together sum to zero",
        "SELECT total FROM (SELECT COALESCE(SUM(amount), 0) AS total FROM entries) s"
        " WHERE total <> 0",
        "entries sum to {total}",
    ),
    (
        "wallets_not_negative",
        "no wallet below zero, nor holding more than it has, nor owing less than nothing",
        """
        SELECT user_id, balance, held, debt FROM accounts
         WHERE kind = 'wallet' AND (balance < 0 OR held < 0 OR held > balance OR debt < 0)
        """,
        "wallet {user_id}: balance {balance}, held {held}, debt {debt}",
    ),
    (
        "holds_consistent",
        "each wallet's held amount equals the sum of its pending holds (covered ones reserve"
        " nothing)",
        """
        SELECT a.user_id, a.held, COALESCE(h.pending, 0) AS pending
          FROM accounts a
          LEFT JOIN (SELECT account_id, SUM(amount) AS pending FROM holds
                      WHERE status = 'pending' AND kind <> 'covered'
                      GROUP BY account_id) h ON h.account_id = a.id
         WHERE a.kind = 'wallet' AND a.held <> COALESCE(h.pending, 0)
        """,
        "wallet {user_id}: held {held}, pending holds sum to {pending}",
    ),
    (
        "posted_holds",
        "each posted hold is one spend of its posted amount from its wallet (a covered one"
        " spends nothing)",
        """
        SELECT h.id, h.posted_amount, t.amount, t.kind
          FROM holds h LEFT JOIN transfers t ON t.id = h.transfer_id
         WHERE h.status = 'posted' AND h.kind <> 'covered'
           AND (t.id IS NULL OR t.kind <> 'spend' OR t.amount <> h.posted_amount
                OR t.debit_account_id <> h.account_id)
        """,
        "hold {id}: posted {posted_amount}, transfer {kind} of {amount}",
    ),
    (
        "refunds_within_spends",
        "no spend is refunded for more than it took",
        """
        SELECT s.id, s.amount, SUM(r.amount) AS refunded
          FROM transfers s JOIN transfers r ON r.refund_of_id = s.id
         GROUP BY s.id, s.amount, s.kind, s.debit_account_id
        HAVING SUM(r.amount) > s.amount OR s.kind <> 'spend'
            OR MIN(r.credit_account_id) <> s.debit_account_id
            OR MAX(r.credit_account_id) <> s.debit_account_id
        """,
        "spend {id} of {amount}: refunded {refunded}",
    ),
    (
        "wallet_totals",
        "each wallet's purchased, granted and spent totals match its transfers",
        """
        SELECT a.user_id, a.total_purchased, a.total_granted, a.total_spent,
               COALESCE(x.purchased, 0) AS purchased, COALESCE(x.granted, 0) AS granted,
               COALESCE(x.spent, 0) AS spent
          FROM accounts a
          LEFT JOIN (
              SELECT e.account_id,
                     SUM(CASE WHEN e.kind IN ('purchase', 'bonus') THEN e.amount ELSE 0 END)
                         AS purchased,
                     SUM(CASE WHEN e.kind = 'grant' THEN e.amount ELSE 0 END) AS granted,
                     SUM(CASE WHEN e.kind IN ('spend', 'refund') THEN -e.amount ELSE 0 END)
                         AS spent
                FROM entries e GROUP BY e.account_id) x ON x.account_id = a.id
         WHERE a.kind = 'wallet'
           AND (a.total_purchased <> COALESCE(x.purchased, 0)
                OR a.total_granted <> COALESCE(x.granted, 0)
                OR a.total_spent <> COALESCE(x.spent, 0))
        """,
        "wallet {user_id}: totals {total_purchased}/{total_granted}/{total_spent},"
        " transfers say {purchased}/{granted}/{spent}",
    ),
    (
        "buckets_sum",
        "each wallet's balance and held amount equal the sums of its buckets'",
        """
        SELECT a.user_id, a.balance, a.held, COALESCE(b.remaining, 0) AS remaining,
               COALESCE(b.held, 0) AS bucket_held
          FROM accounts a
          LEFT JOIN (SELECT account_id, SUM(remaining) AS remaining, SUM(held) AS held
                       FROM buckets GROUP BY account_id) b ON b.account_id = a.id
         WHERE a.kind = 'wallet'
           AND (a.balance <> COALESCE(b.remaining, 0) OR a.held <> COALESCE(b.held, 0))
        """,
        "wallet {user_id}: balance {balance}, held {held};"
        " buckets hold {remaining}, reserve {bucket_held}",
    ),
    (
        "buckets_drawn",
        "each bucket holds what it was filled with less what was drawn from it, and reserves"
        " what its pending holds reserve",
        """
        SELECT b.id, b.amount, b.remaining, b.held,
               COALESCE(d.drawn, 0) AS drawn, COALESCE(h.reserved, 0) AS reserved
          FROM buckets b
          LEFT JOIN (SELECT bucket_id, SUM(amount) AS drawn FROM draws
                      WHERE transfer_id IS NOT NULL GROUP BY bucket_id) d ON d.bucket_id = b.id
          LEFT JOIN (SELECT dr.bucket_id, SUM(dr.amount) AS reserved
                       FROM draws dr JOIN holds ho ON ho.id = dr.hold_id
                      WHERE ho.status = 'pending' GROUP BY dr.bucket_id) h
                 ON h.bucket_id = b.id
         WHERE b.remaining <> b.amount - COALESCE(d.drawn, 0)
            OR b.held <> COALESCE(h.reserved, 0)
        """,
        "bucket {id}: filled {amount}, drawn {drawn}, remaining {remaining};"
        " held {held}, pending holds reserve {reserved}",
    ),
    (
        "transfers_drawn",
        "each credit filled one bucket of its amount, and each spend, clawback or expiry drew"
        " its amount on the wallet's buckets, and each refund gave its amount back to them"
        " (transfers from before buckets existed, migration 0010, aside)",
        """
        SELECT t.id, t.kind, t.amount, COALESCE(d.drawn, 0) AS drawn,
               COALESCE(f.filled, 0) AS filled
          FROM transfers t
          JOIN accounts w ON w.kind = 'wallet'
                         AND w.id IN (t.debit_account_id, t.credit_account_id)
          LEFT JOIN (SELECT account_id, MIN(created_at) AS since FROM buckets
                      WHERE transfer_id IS NULL GROUP BY account_id) c ON c.account_id = w.id
          LEFT JOIN (SELECT transfer_id, SUM(amount) AS drawn FROM draws
                      WHERE transfer_id IS NOT NULL GROUP BY transfer_id) d
                 ON d.transfer_id = t.id
          LEFT JOIN (SELECT transfer_id, SUM(amount) AS filled FROM buckets
                      WHERE transfer_id IS NOT NULL GROUP BY transfer_id) f
                 ON f.transfer_id = t.id
         WHERE (c.since IS NULL OR t.created_at > c.since)
           AND CASE WHEN t.kind IN ('purchase', 'bonus', 'grant', 'restore')
                    THEN COALESCE(f.filled, 0) <> t.amount OR COALESCE(d.drawn, 0) <> 0
                    WHEN t.kind = 'refund'
                    THEN COALESCE(f.filled, 0) - COALESCE(d.drawn, 0) <> t.amount
                    ELSE COALESCE(d.drawn, 0) <> t.amount OR COALESCE(f.filled, 0) <> 0
               END
        """,
        "transfer {id} ({kind} of {amount}): drew {drawn}, filled {filled}",
    ),
    (
        "buckets_of_their_wallet",
        "a draw takes from a bucket of the wallet its transfer or hold belongs to",
        """
        SELECT d.id, d.bucket_id, b.account_id
          FROM draws d
          JOIN buckets b ON b.id = d.bucket_id
          LEFT JOIN transfers t ON t.id = d.transfer_id
          LEFT JOIN holds h ON h.id = d.hold_id
         WHERE (t.id IS NOT NULL
                AND b.account_id NOT IN (t.debit_account_id, t.credit_account_id))
            OR (h.id IS NOT NULL AND b.account_id <> h.account_id)
        """,
        "draw {id} on bucket {bucket_id} of account {account_id}: another wallet's",
    ),
]


def verify(conn: Connection) -> VerifyReport:
    checks = []
    for name, description, query, template in _CHECKS:
        # The server counts the breaches and sends only those shown: a ledger broken in
        # millions of rows is reported in the memory of a sound one. Numbered, not LIMITed:
        # a LIMIT makes the planner pick plans that find a first row fast, and a sound
        # ledger has none, so they read everything slowly (4 to 7 times slower at 5M).
        shown = (
            "SELECT * FROM (SELECT *, COUNT(*) OVER () AS breaches_,"  # noqa: S608 - its own checks
            f" ROW_NUMBER() OVER () AS shown_ FROM ({query}) AS found) AS counted"
            " WHERE shown_ <= :shown"
        )
        rows = conn.execute(sa.text(shown), {"shown": MAX_PROBLEMS_SHOWN}).mappings().all()
        checks.append(
            Check(
                name=name,
                description=description,
                problems=[template.format(**row) for row in rows],
                problem_count=rows[0]["breaches_"] if rows else 0,
            )
        )
    counts = conn.execute(
        sa.text(
            "SELECT (SELECT COUNT(*) FROM accounts) AS accounts,"
            " (SELECT COUNT(*) FROM transfers) AS transfers,"
            " (SELECT COUNT(*) FROM entries) AS entries"
        )
    ).one()
    return VerifyReport(
        checks=checks, accounts=counts.accounts, transfers=counts.transfers, entries=counts.entries
    )

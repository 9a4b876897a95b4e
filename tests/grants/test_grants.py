"""``grants.grant``, the one way free tokens are given, on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from tokenbank import audit, grants, ledger, users
from tokenbank.db import Database


def _user(db: Database, user_id: str = "ann") -> None:
    with db.transaction(wallet=user_id) as conn:
        users.create_user(conn, user_id=user_id, email=f"{user_id}@example.com")


def test_a_grant_credits_once_is_audited_and_logged(db: Database) -> None:
    _user(db)
    with capture_logs() as lines:
        first = grants.grant(
            db, user_id="ann", amount=50, reason=" welcome ", idempotency_key="g1", actor="cli:op"
        )
        again = grants.grant(
            db, user_id="ann", amount=50, reason="welcome", idempotency_key="g1", actor="cli:op"
        )
    assert (first.amount, first.balance, first.replayed) == (50, 50, False)
    assert again.replayed and again.transfer_id == first.transfer_id
    with db.read() as conn:
        actions = audit.actions_about(conn, subject="user:ann")
        item = ledger.history(conn, user_id="ann", limit=1).items[0]
    assert [(a.actor, a.action, a.reason) for a in actions] == [("cli:op", "grant", "welcome")]
    assert item.description == "welcome" and item.metadata is None
    credited = [line for line in lines if line["event"] == "grant_credited"]
    assert credited == [
        {
            "event": "grant_credited",
            "log_level": "info",
            "user_id": "ann",
            "tokens": 50,
            "transfer_id": first.transfer_id,
            "actor": "cli:op",
            "source": "admin",
            "expires_at": None,
        }
    ]


@pytest.mark.parametrize(
    "reason", ["", "   ", "x" * 501, "a\x00b", "\u200b", "\u3000\u200d", "\x07"]
)
def test_a_grant_needs_a_reason(db: Database, reason: str) -> None:
    _user(db)
    with pytest.raises(ledger.InvalidArgument) as refused:
        grants.grant(
            db, user_id="ann", amount=5, reason=reason, idempotency_key="g", actor="cli:op"
        )
    assert refused.value.field == "reason"
    with db.read() as conn:
        assert ledger.balance(conn, user_id="ann").total_granted == 0
        assert audit.actions_about(conn, subject="user:ann") == []


def test_a_grant_goes_only_to_a_known_user(db: Database) -> None:
    with pytest.raises(ledger.UnknownUser):
        grants.grant(db, user_id="typo", amount=5, reason="r", idempotency_key="g", actor="cli:op")
    with db.read() as conn:
        assert audit.actions_about(conn, subject="user:typo") == []


def test_a_key_reused_for_another_grant_changes_nothing(db: Database) -> None:
    _user(db)
    grants.grant(db, user_id="ann", amount=5, reason="r", idempotency_key="g", actor="cli:op")
    with pytest.raises(ledger.IdempotencyConflict):
        grants.grant(db, user_id="ann", amount=6, reason="r", idempotency_key="g", actor="cli:op")
    with db.read() as conn:
        assert ledger.balance(conn, user_id="ann").total_granted == 5
        assert len(audit.actions_about(conn, subject="user:ann")) == 1


def test_racing_grants_with_one_key_grant_once(db: Database) -> None:
    _user(db)

    def attempt(_: int) -> ledger.Receipt:
        return grants.grant(
            db, user_id="ann", amount=7, reason="race", idempotency_key="same", actor="cli:op"
        )

    with ThreadPoolExecutor(8) as pool:
        receipts = list(pool.map(attempt, range(16)))
    assert len({r.transfer_id for r in receipts}) == 1
    assert sum(not r.replayed for r in receipts) == 1
    with db.read() as conn:
        assert ledger.balance(conn, user_id="ann").total_granted == 7
        assert len(audit.actions_about(conn, subject="user:ann")) == 1


def test_a_retry_by_another_actor_is_a_replay(db: Database) -> None:
    """Who grants is audited, not compared: a rotated admin key retrying a grant (or a form
    sent again by another admin) finds the first one."""
    _user(db)
    first = grants.grant(
        db, user_id="ann", amount=9, reason="r", idempotency_key="g", actor="api_key:1"
    )
    again = grants.grant(
        db, user_id="ann", amount=9, reason="r", idempotency_key="g", actor="api_key:2"
    )
    assert again.replayed and again.transfer_id == first.transfer_id
    with db.read() as conn:
        assert [a.actor for a in audit.actions_about(conn, subject="user:ann")] == ["api_key:1"]


NOW = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)


def test_a_grant_may_expire_and_be_a_promotion(db: Database) -> None:
    _user(db)
    expires_at = grants.expiry(days=30, now=NOW)
    assert expires_at == NOW + timedelta(days=30)
    given = grants.grant(
        db,
        user_id="ann",
        amount=40,
        reason="launch week",
        idempotency_key="promo-1",
        actor="cli:op",
        source=ledger.Source.PROMO,
        expires_at=expires_at,
        now=NOW,
    )
    assert (given.source, given.expires_at, given.replayed) == (
        ledger.Source.PROMO,
        expires_at,
        False,
    )
    # A retry that asks other terms is still the first grant, and says the first's terms.
    again = grants.grant(
        db,
        user_id="ann",
        amount=40,
        reason="launch week",
        idempotency_key="promo-1",
        actor="cli:op",
        expires_at=NOW + timedelta(days=31),
        now=NOW,
    )
    assert again.replayed and (again.source, again.expires_at) == (ledger.Source.PROMO, expires_at)
    with db.read() as conn:
        balance = ledger.balance(conn, user_id="ann", now=NOW)
        (action,) = audit.actions_about(conn, subject="user:ann")
    assert [(e.amount, e.expires_at, e.source) for e in balance.expiring] == [
        (40, expires_at, ledger.Source.PROMO)
    ]
    assert action.details == {
        "amount": 40,
        "transfer_id": given.transfer_id,
        "source": "promo",
        "expires_at": expires_at.isoformat(),
    }
    with db.read() as conn:  # a day after it expired, the tokens are no longer there to use
        later = ledger.balance(conn, user_id="ann", now=expires_at + timedelta(days=1))
    assert later.available == 0


def test_a_grant_retried_after_it_expired_is_its_replay(db: Database) -> None:
    """The same request, sent again once its expires_at has passed (a queue that retried
    late): the first grant, not a refusal of a time in the past."""
    _user(db)
    asked = {
        "user_id": "ann",
        "amount": 10,
        "reason": "launch week",
        "idempotency_key": "promo-late",
        "actor": "cli:op",
        "source": ledger.Source.PROMO,
        "expires_at": NOW + timedelta(days=1),
    }
    first = grants.grant(db, now=NOW, **asked)  # type: ignore[arg-type]
    again = grants.grant(db, now=NOW + timedelta(days=2), **asked)  # type: ignore[arg-type]
    assert again.replayed and (again.transfer_id, again.expires_at) == (
        first.transfer_id,
        first.expires_at,
    )
    # A new key with a time in the past is still refused.
    with pytest.raises(ledger.InvalidArgument):
        grants.grant(
            db,
            now=NOW + timedelta(days=2),
            **{**asked, "idempotency_key": "promo-new"},  # type: ignore[arg-type]
        )


@pytest.mark.parametrize(
    ("terms", "field"),
    [
        ({"expires_at": NOW}, "expires_at"),  # not in the future
        ({"expires_at": NOW - timedelta(seconds=1)}, "expires_at"),
        ({"expires_at": NOW + timedelta(days=3651)}, "expires_at"),
        ({"expires_at": NOW.replace(tzinfo=None) + timedelta(days=1)}, "expires_at"),
        ({"source": "trial"}, "source"),  # the trial's own path gives those
        ({"source": "purchase"}, "source"),
    ],
)
def test_a_grant_with_bad_terms_changes_nothing(
    db: Database, terms: dict[str, object], field: str
) -> None:
    _user(db)
    with pytest.raises(ledger.InvalidArgument) as refused:
        grants.grant(
            db,
            user_id="ann",
            amount=5,
            reason="r",
            idempotency_key="g",
            actor="cli:op",
            now=NOW,
            **terms,  # type: ignore[arg-type]
        )
    assert refused.value.field == field
    with db.read() as conn:
        assert ledger.balance(conn, user_id="ann").total_granted == 0
        assert audit.actions_about(conn, subject="user:ann") == []


@pytest.mark.parametrize("days", [0, -1, 3651, True])
def test_an_expiry_is_one_to_ten_years_of_days(days: int) -> None:
    with pytest.raises(ledger.InvalidArgument) as refused:
        grants.expiry(days=days, now=NOW)
    assert refused.value.field == "expires_in_days"
    assert grants.expiry(days=3650, now=NOW) == NOW + timedelta(days=3650)

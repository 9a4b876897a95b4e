"""Pricing features from the catalog, and the entitlement check, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.ledger.factories import wallet
from tokenbank import entitlements, ledger
from tokenbank.billing.catalog import Catalog, Feature, load_catalog
from tokenbank.db import Database
from tokenbank.entitlements import MAX_QUANTITY, cost_of, price_feature
from tokenbank.errors import InvalidArgument, UnknownFeature, UnknownUser
from tokenbank.ledger.inputs import MAX_AMOUNT
from tokenbank.ledger.models import entries, holds, transfers

CATALOG = load_catalog(Path("catalogs/default.toml"))
BUY = "https://tokens.example/pricing"


def test_a_feature_costs_its_catalog_price_per_unit() -> None:
    assert price_feature(CATALOG, "image", 3) == 120
    assert price_feature(CATALOG, "chat_message", 1) == 5
    assert cost_of(CATALOG, feature="image") == 40  # one unit unless told
    assert cost_of(CATALOG, amount=7) == 7


@pytest.mark.parametrize("catalog", [CATALOG, None])
def test_a_feature_the_catalog_does_not_price_is_unknown(catalog: Catalog | None) -> None:
    with pytest.raises(UnknownFeature) as caught:
        price_feature(catalog, "video", 1)
    assert (caught.value.code, caught.value.feature) == ("unknown_feature", "video")


@pytest.mark.parametrize("quantity", [0, -1, MAX_QUANTITY + 1, 1.5, True, "3"])
def test_a_quantity_is_a_whole_number_within_limits(quantity: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        price_feature(CATALOG, "image", quantity)  # type: ignore[arg-type]
    assert caught.value.field == "quantity"


def test_a_quantity_that_costs_more_than_one_operation_may_move_is_refused() -> None:
    dear = load_catalog(Path("catalogs/default.toml"))
    costly = Catalog(
        packages=dear.packages,
        currency=dear.currency,
        source="test",
        features=(Feature(id="film", name={"en": "Film"}, tokens=MAX_AMOUNT),),
    )
    assert price_feature(costly, "film", 1) == MAX_AMOUNT
    with pytest.raises(InvalidArgument) as caught:
        price_feature(costly, "film", 2)
    assert caught.value.field == "quantity"


@pytest.mark.parametrize(
    ("asked", "field"),
    [
        ({}, "feature"),
        ({"amount": 40, "feature": "image"}, "feature"),  # no naming a feature's price
        ({"amount": 40, "quantity": 2}, "quantity"),
        ({"amount": 0}, "amount"),
    ],
)
def test_a_cost_is_an_amount_or_a_feature_never_both(asked: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        cost_of(CATALOG, **asked)  # type: ignore[arg-type]
    assert caught.value.field == field


def _rows(db: Database) -> dict[str, int]:
    with db.read() as conn:
        return {
            table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in (transfers, entries, holds)
        }


def test_check_answers_and_changes_nothing(db: Database) -> None:
    wallet(db, "alice", tokens=100)
    with db.autocommit(wallet="alice") as conn:
        ledger.hold(conn, user_id="alice", amount=30, idempotency_key="h")
    before = _rows(db)
    with db.read() as conn:
        enough = entitlements.check(
            conn, catalog=CATALOG, user_id="alice", buy_url=BUY, feature="image"
        )
        short = entitlements.check(
            conn, catalog=CATALOG, user_id="alice", buy_url=BUY, feature="image", quantity=3
        )
        exact = entitlements.check(conn, catalog=CATALOG, user_id="alice", buy_url=BUY, amount=70)
    assert (enough.allowed, enough.cost, enough.available, enough.short_by) == (True, 40, 70, 0)
    assert (short.allowed, short.cost, short.available, short.short_by) == (False, 120, 70, 50)
    assert (exact.allowed, exact.short_by, exact.buy_url) == (True, 0, BUY)
    assert enough.expires_soonest is None  # a grant without an expiry
    assert _rows(db) == before
    with db.read() as conn, pytest.raises(UnknownUser):
        entitlements.check(conn, catalog=CATALOG, user_id="nobody", buy_url=BUY, amount=1)
    with db.read() as conn, pytest.raises(UnknownFeature):
        entitlements.check(conn, catalog=CATALOG, user_id="alice", buy_url=BUY, feature="x")
    assert _rows(db) == before


def test_check_names_the_tokens_that_expire_first_and_leaves_out_expired_ones(
    db: Database,
) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    wallet(db, "alice")
    with db.transaction(wallet="alice") as conn:
        for key, amount, days in (("late", 50, 30), ("soon", 20, 3), ("gone", 500, -1)):
            ledger.credit(
                conn,
                user_id="alice",
                amount=amount,
                kind=ledger.TransferKind.GRANT,
                idempotency_key=key,
                source=ledger.Source.PROMO,
                expires_at=now + timedelta(days=days),
                event_at=now - timedelta(days=5),
                now=now - timedelta(days=5),
            )
    before = _rows(db)
    with db.read() as conn:
        answer = entitlements.check(
            conn,
            catalog=CATALOG,
            user_id="alice",
            buy_url=BUY,
            feature="image",
            quantity=2,
            now=now,
        )
    # The 500 past their expiry are not available, though not yet moved out.
    assert (answer.allowed, answer.cost, answer.available, answer.short_by) == (False, 80, 70, 10)
    assert answer.expires_soonest == ledger.Expiring(
        amount=20, expires_at=now + timedelta(days=3), source=ledger.Source.PROMO
    )
    assert _rows(db) == before

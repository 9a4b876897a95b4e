"""``demo.fill`` against the test emulator, with tokenbank served beside it taking the
emulator's webhooks (as ``make run`` does), on SQLite and PostgreSQL: what every page reads
is there, a second run adds nothing, and anything that could be real money is refused."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.billing.conftest import Store, open_store
from tests.stripe_emulator import SECRET_KEY, WEBHOOK_SECRET, EmulatorServer
from tests.web.conftest import PASSWORDS
from tokenbank import billing, demo, identity, ledger, mail
from tokenbank.audit.models import admin_actions
from tokenbank.billing.models import disputes, payment_refunds, purchases, stripe_customers
from tokenbank.config import Settings
from tokenbank.db import Database
from tokenbank.errors import (
    ConfigurationError,
    PaymentProviderUnavailable,
    PaymentsNotConfigured,
)
from tokenbank.ledger.models import HoldKind, HoldStatus, TransferKind, accounts, holds, transfers
from tokenbank.mail.models import outbox
from tokenbank.users.models import users

#: Strong enough for the pages' rules, and known, so a test can sign in with them.
KNOWN_PASSWORDS = (
    "violet-harbour-lantern-47",
    "copper-meadow-whistle-83",
    "silent-orchard-compass-19",
)
SITE = "https://tokens.example"


def known_passwords() -> Callable[[], str]:
    left = iter(KNOWN_PASSWORDS)
    return lambda: next(left)


@pytest.fixture
def store(db: Database, emulator_server: EmulatorServer) -> Iterator[Store]:
    with open_store(db, emulator_server) as opened:
        yield opened


@pytest.fixture
def helpers(store: Store) -> Iterator[demo.EmulatorHelpers]:
    with httpx.Client(base_url=store.emulator.url, timeout=10) as http:
        yield demo.EmulatorHelpers(http=http, secret_key=SECRET_KEY)


def fill(store: Store, helpers: demo.EmulatorHelpers) -> demo.Filled:
    filled = demo.fill(
        store.db,
        seller=store.seller,
        emulator=helpers,
        passwords=PASSWORDS,
        public_url=SITE,
        actor="cli:tester",
        new_password=known_passwords(),
    )
    store.emulator.settle()  # the served tokenbank has had every webhook
    return filled


def snapshot(db: Database) -> dict[str, Any]:
    """Every row the demo makes, and what the wallets say."""
    tables = (
        users,
        purchases,
        payment_refunds,
        disputes,
        stripe_customers,
        transfers,
        holds,
        outbox,
        admin_actions,
    )
    with db.read() as conn:
        found: dict[str, Any] = {
            table.name: conn.execute(sa.select(table).order_by(*table.primary_key.columns)).all()
            for table in tables
        }
        found["balances"] = [ledger.balance(conn, user_id=person.user_id) for person in demo.PEOPLE]
    return found


def balance(db: Database, user_id: str) -> ledger.Balance:
    with db.read() as conn:
        return ledger.balance(conn, user_id=user_id)


def test_fill_gives_every_page_something_to_show(
    store: Store, helpers: demo.EmulatorHelpers
) -> None:
    filled = fill(store, helpers)
    db = store.db

    # Users to sign in as, each with the password printed for them; one of them an admin.
    assert [(u.user_id, u.admin, u.password) for u in filled.users] == [
        ("demo-ada", True, KNOWN_PASSWORDS[0]),
        ("demo-ben", False, KNOWN_PASSWORDS[1]),
        ("demo-chen", False, KNOWN_PASSWORDS[2]),
    ]
    for user in filled.users:
        assert user.password is not None
        token = identity.sign_in(
            db,
            email=user.email,
            password=user.password,
            passwords=PASSWORDS,
            session_ttl=timedelta(hours=1),
        )
        with db.read() as conn:
            signed_in = identity.session_user(conn, token=token)
        assert signed_in is not None
        assert (signed_in.user_id, signed_in.is_admin) == (user.user_id, user.admin)
        assert signed_in.email_verified  # may buy at once
        assert signed_in.language == ("zh-CN" if user.user_id == "demo-chen" else None)
    with db.read() as conn:
        letters = mail.recent(conn)
    assert sorted((m.kind, m.to_address, m.language) for m in letters) == [
        ("welcome", "ada@demo.example.com", "en"),
        ("welcome", "ben@demo.example.com", "en"),
        ("welcome", "chen@demo.example.com", "zh-CN"),
    ]

    # The dashboards' balances: purchases credited, spends, a refunded spend, a posted and an
    # open hold, a purchase refunded at Stripe (clawed back) and one disputed (frozen).
    ada, ben, chen = (balance(db, person.user_id) for person in demo.PEOPLE)
    assert (ada.available, ada.held, ada.total_purchased, ada.total_granted) == (
        3050,
        0,
        2200,
        1000,
    )
    # 1000 + 2200 - 250 - 120 - 400 + 100 - 412, of which 300 held
    assert (ben.available, ben.held, ben.balance) == (1818, 300, 2118)
    # 500 + 500 + 2200 - 200 - 300 - 500 clawed back, of which 1100 frozen
    assert (chen.available, chen.held, chen.balance) == (1100, 1100, 2200)
    assert all(b.debt == 0 for b in (ada, ben, chen))

    # Purchases in every state the pages word differently.
    with db.read() as conn:
        bought = billing.list_purchases(conn, limit=100)
        ben_holds = conn.execute(
            sa.select(holds.c.kind, holds.c.status, holds.c.amount, holds.c.posted_amount)
            .join(accounts, accounts.c.id == holds.c.account_id)
            .where(accounts.c.user_id == "demo-ben")
            .order_by(holds.c.id)
        ).all()
        opened = conn.execute(sa.select(disputes)).one()
        refunded_at_stripe = conn.execute(sa.select(payment_refunds)).one()
        ben_history = ledger.history(conn, user_id="demo-ben", limit=50).items
        granted = conn.execute(
            sa.select(admin_actions.c.actor, admin_actions.c.action, admin_actions.c.subject)
        ).all()
    assert Counter(p.status for p in bought) == {
        billing.PurchaseStatus.PAID: 4,
        billing.PurchaseStatus.FAILED: 1,
        billing.PurchaseStatus.PENDING: 1,
    }
    (declined,) = (p for p in bought if p.status is billing.PurchaseStatus.FAILED)
    assert (declined.user_id, declined.package_id, declined.failure_code) == (
        "demo-ben",
        "pro",
        "generic_decline",
    )
    (pending,) = (p for p in bought if p.status is billing.PurchaseStatus.PENDING)
    assert (pending.user_id, pending.checkout_session_id is not None) == ("demo-ben", True)
    session = store.seller.stripe.checkout_session(pending.checkout_session_id or "")
    assert session.status == "open"  # Continue paying still works
    (refunded,) = (p for p in bought if p.refunded_amount)
    assert (refunded.user_id, refunded.package_id) == ("demo-chen", "starter")
    assert (refunded.refunded_amount, refunded.clawed_back_tokens) == (500, 500)
    assert (refunded_at_stripe.purchase_id, refunded_at_stripe.taken) == (refunded.id, 500)
    disputed = next(p for p in bought if p.id == opened.purchase_id)
    assert (disputed.user_id, disputed.package_id, disputed.status) == (
        "demo-chen",
        "plus",
        billing.PurchaseStatus.PAID,
    )
    assert (opened.status, opened.amount, opened.tokens) == ("open", 1000, 1100)
    assert ben_holds == [
        (HoldKind.HOLD.value, HoldStatus.POSTED.value, 600, 412),
        (HoldKind.HOLD.value, HoldStatus.PENDING.value, 300, None),
    ]
    assert Counter(item.kind for item in ben_history) == {
        TransferKind.GRANT: 1,
        TransferKind.PURCHASE: 1,
        TransferKind.BONUS: 1,
        TransferKind.SPEND: 4,  # three spends and the posted hold
        TransferKind.REFUND: 1,
    }
    assert sorted(granted) == [
        ("cli:tester", "grant", "user:demo-ada"),
        ("cli:tester", "grant", "user:demo-ben"),
        ("cli:tester", "grant", "user:demo-chen"),
    ]
    assert Counter(filled.made) == {
        demo.Made.USER: 3,
        demo.Made.GRANT: 3,
        demo.Made.PAID: 4,
        demo.Made.DECLINED: 1,
        demo.Made.PENDING: 1,
        demo.Made.SPEND: 6,
        demo.Made.SPEND_REFUND: 1,
        demo.Made.HOLD_POSTED: 1,
        demo.Made.HOLD_OPEN: 1,
        demo.Made.STRIPE_REFUND: 1,
        demo.Made.DISPUTE: 1,
    }


def test_a_second_run_adds_nothing(store: Store, helpers: demo.EmulatorHelpers) -> None:
    first = fill(store, helpers)
    assert not first.already_there
    before = snapshot(store.db)
    events = len(store.emulator.events())

    again = fill(store, helpers)

    assert again.already_there and again.made == []
    assert [u.password for u in again.users] == [None, None, None]  # never shown twice
    assert snapshot(store.db) == before
    assert len(store.emulator.events()) == events  # nothing new bought, refunded, disputed


def test_a_second_run_after_the_emulator_forgot_its_account_adds_nothing(
    store: Store, helpers: demo.EmulatorHelpers
) -> None:
    """``make run``'s emulator state file removed, the database kept: what is done stays."""
    fill(store, helpers)
    before = snapshot(store.db)
    store.emulator.reset(webhook_url=None)

    again = fill(store, helpers)

    assert again.already_there
    assert snapshot(store.db) == before
    assert store.emulator.events() == []


def test_a_run_that_stopped_half_way_is_finished_by_the_next(
    store: Store, helpers: demo.EmulatorHelpers
) -> None:
    """Stopped after paying at Stripe, before settling (and with no service taking the
    webhooks): the next run settles that purchase and goes on, paying nothing twice."""
    store.emulator.configure(url=None)
    passwords = known_passwords()

    class Stopped(Exception):
        pass

    class StopsAfterPaying(demo.EmulatorHelpers):
        def pay(self, session_id: str, *, card: str) -> bool:
            super().pay(session_id, card=card)
            raise Stopped

    stopping = StopsAfterPaying(http=helpers.http, secret_key=SECRET_KEY)
    with pytest.raises(Stopped):
        demo.fill(
            store.db,
            seller=store.seller,
            emulator=stopping,
            passwords=PASSWORDS,
            public_url=SITE,
            actor="cli:tester",
            new_password=passwords,
        )
    with store.db.read() as conn:
        (stopped,) = billing.list_purchases(conn)
    assert stopped.status is billing.PurchaseStatus.PENDING  # paid at Stripe, not here yet
    finished = demo.fill(
        store.db,
        seller=store.seller,
        emulator=helpers,
        passwords=PASSWORDS,
        public_url=SITE,
        actor="cli:tester",
        new_password=passwords,
    )
    assert demo.Made.USER not in finished.made
    assert Counter(finished.made)[demo.Made.PAID] == 4
    assert len(store.emulator.events("charge.succeeded")) == 4
    assert balance(store.db, "demo-ada").available == 3050


@pytest.mark.parametrize(
    ("changes", "refusal", "said"),
    [
        ({"env": "production"}, ConfigurationError, "TOKENBANK_ENV=production"),
        ({"stripe_secret_key": None}, PaymentsNotConfigured, "STRIPE_SECRET_KEY"),
        ({"stripe_secret_key": "sk_live_0123456789abcdef"}, ConfigurationError, "live key"),
        ({"stripe_api_base": None}, ConfigurationError, "real Stripe"),
        ({"stripe_api_base": "https://api.stripe.com"}, ConfigurationError, "real Stripe"),
        ({"public_url": "https://tokens.example"}, ConfigurationError, "this machine"),
        (
            {"database_url": "postgresql://tb@db.internal:5432/tokenbank"},
            ConfigurationError,
            "db.internal",
        ),
    ],
    ids=[
        "production",
        "no-key",
        "live-key",
        "no-emulator",
        "stripe-itself",
        "public-site",
        "remote-database",
    ],
)
def test_refuses_production_and_real_stripe(
    changes: dict[str, Any], refusal: type[Exception], said: str
) -> None:
    emulated: dict[str, Any] = {
        "stripe_secret_key": "sk_test_local_emulator",
        "stripe_webhook_secret": WEBHOOK_SECRET,
        "stripe_api_base": "http://127.0.0.1:12111",
    }
    settings = Settings(**(emulated | changes))
    asked: list[httpx.Request] = []

    def anything(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, json={"ok": True})

    with (
        pytest.raises(refusal, match=said),
        demo.open_emulator(settings, transport=httpx.MockTransport(anything)),
    ):
        pass
    assert asked == []  # refused from the settings alone


def test_refuses_a_server_that_is_not_the_emulator() -> None:
    settings = Settings(
        stripe_secret_key="sk_test_local_emulator", stripe_api_base="https://payments.internal"
    )

    def not_the_emulator(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "Unrecognized request URL"}})

    with (
        pytest.raises(ConfigurationError, match="does not answer as tokenbank's Stripe emulator"),
        demo.open_emulator(settings, transport=httpx.MockTransport(not_the_emulator)),
    ):
        pass


def test_an_emulator_that_is_not_running_is_unavailable() -> None:
    settings = Settings(
        stripe_secret_key="sk_test_local_emulator", stripe_api_base="http://127.0.0.1:12111"
    )

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with (
        pytest.raises(PaymentProviderUnavailable, match="is `make run` running"),
        demo.open_emulator(settings, transport=httpx.MockTransport(refused)),
    ):
        pass

"""``tokenbank.client.TokenBank`` against the service over real HTTP (uvicorn, loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from tests.processes import free_ports
from tests.servers import serving
from tests.stripe_emulator import EmulatorServer, make_billing
from tests.web.conftest import PASSWORDS, SETTINGS, make_key
from tokenbank.apikeys import Scope
from tokenbank.client import (
    ApiError,
    Forbidden,
    IdempotencyConflict,
    InsufficientTokens,
    InvalidRequest,
    NoSubscription,
    NotFound,
    Package,
    Purchase,
    ServiceUnavailable,
    Subscription,
    SubscriptionCheckout,
    SubscriptionExists,
    TokenBank,
    Unauthorized,
    UnknownFeature,
)
from tokenbank.db import Database
from tokenbank.web.app import create_app


def _bank(db: Database, live_url: str, scope: Scope = Scope.ADMIN, **options: object) -> TokenBank:
    secret = make_key(db, scope)["Authorization"].removeprefix("Bearer ")
    return TokenBank(live_url, secret, **options)  # type: ignore[arg-type]


@pytest.fixture
def live_url(db: Database) -> Iterator[str]:
    """The app served by uvicorn on a free port: the client speaks real HTTP."""
    with serving(create_app(SETTINGS, db=db, passwords=PASSWORDS)) as url:
        yield url


@pytest.fixture
def bank(db: Database, live_url: str) -> Iterator[TokenBank]:
    with _bank(db, live_url) as bank:
        bank.upsert_user("alice", email="alice@example.com")
        bank.grant("alice", 1000, reason="welcome", idempotency_key="welcome-alice")
        yield bank


def test_promotional_tokens_that_expire_are_listed_and_used_first(bank: TokenBank) -> None:
    bank.grant("alice", 50, reason="launch", source="promo", expires_in_days=7)
    balance = bank.balance("alice")
    assert balance.available == 1050
    ((amount, source),) = [(e.amount, e.source) for e in balance.expiring]
    assert (amount, source) == (50, "promo")
    assert balance.expiring[0].expires_at - datetime.now(UTC) > timedelta(days=6)
    bank.spend("alice", 30, idempotency_key="first-use")
    assert [e.amount for e in bank.balance("alice").expiring] == [20]  # the promo's first


def test_spend_balance_refund_history(bank: TokenBank) -> None:
    receipt = bank.spend("alice", 300, idempotency_key="chat-1", description="chat")
    assert (receipt.kind, receipt.amount, receipt.balance, receipt.replayed) == (
        "spend",
        300,
        700,
        False,
    )
    assert bank.spend("alice", 300, idempotency_key="chat-1", description="chat").replayed
    with pytest.raises(IdempotencyConflict):
        bank.spend("alice", 301, idempotency_key="chat-1")
    assert receipt.transfer_id is not None
    refund = bank.refund(receipt.transfer_id, amount=100, reason="failed generation")
    assert refund.balance == 800
    balance = bank.balance("alice")
    assert (balance.available, balance.total_granted, balance.total_spent) == (800, 1000, 200)
    page = bank.history("alice", limit=2)
    assert [item.kind for item in page.items] == ["refund", "spend"]
    assert page.next_cursor is not None
    everything = list(bank.iter_history("alice", page_size=1))
    assert [item.kind for item in everything] == ["refund", "spend", "grant"]
    assert [item.kind for item in bank.iter_history("alice", kinds=["grant"])] == ["grant"]


def test_errors_are_typed(bank: TokenBank, db: Database, live_url: str) -> None:
    with pytest.raises(InsufficientTokens) as short:
        bank.spend("alice", 5000)
    assert (short.value.status, short.value.available, short.value.requested) == (402, 1000, 5000)
    assert short.value.buy_url == "https://tokens.example/pricing"
    with pytest.raises(NotFound):
        bank.balance("nobody")
    with pytest.raises(InvalidRequest):
        bank.spend("alice", 0)
    with pytest.raises(Unauthorized), TokenBank(live_url, "tb_wrong") as stranger:
        stranger.balance("alice")
    with _bank(db, live_url, Scope.READ) as reader:
        assert reader.balance("alice").available == 1000
        with pytest.raises(Forbidden):
            reader.spend("alice", 1)
    assert isinstance(short.value, ApiError) and short.value.code == "insufficient_tokens"


def test_hold_posts_what_the_work_cost(bank: TokenBank) -> None:
    with bank.hold("alice", 400, idempotency_key="gen-1") as hold:
        assert bank.balance("alice").held == 400
        receipt = hold.post(250)
    assert receipt.amount == 250
    balance = bank.balance("alice")
    assert (balance.available, balance.held) == (750, 0)


def test_hold_is_voided_when_the_block_raises(bank: TokenBank) -> None:
    class ModelDown(Exception):
        pass

    with pytest.raises(ModelDown), bank.hold("alice", 400) as hold:
        assert bank.balance("alice").held == 400
        raise ModelDown
    assert hold.state is not None and hold.state.status == "voided"
    balance = bank.balance("alice")
    assert (balance.available, balance.held) == (1000, 0)


def test_hold_without_a_post_is_released(bank: TokenBank) -> None:
    with bank.hold("alice", 100) as hold:
        pass
    assert hold.state is not None and hold.state.status == "voided"
    assert bank.balance("alice").held == 0


def test_hold_refused_when_short(bank: TokenBank) -> None:
    ran = False
    with pytest.raises(InsufficientTokens), bank.hold("alice", 10_000):
        ran = True
    assert not ran


def test_features_are_priced_by_the_server(bank: TokenBank) -> None:
    listed = {f.id: f for f in bank.features()}
    assert (listed["image"].tokens, listed["image"].name["zh-CN"]) == (40, "图片")
    assert set(listed) == {"chat_message", "image", "document_summary"}
    receipt = bank.spend("alice", feature="image", quantity=3, idempotency_key="img-1")
    assert (receipt.amount, receipt.balance, receipt.feature, receipt.quantity) == (
        120,
        880,
        "image",
        3,
    )
    assert bank.spend("alice", feature="image", quantity=3, idempotency_key="img-1").replayed
    with pytest.raises(UnknownFeature) as unknown:
        bank.spend("alice", feature="video")
    assert isinstance(unknown.value, InvalidRequest) and unknown.value.code == "unknown_feature"
    with pytest.raises(InvalidRequest):
        bank.spend("alice", 40, feature="image")  # the price is the server's to name
    with bank.hold("alice", feature="document_summary", quantity=2) as hold:
        assert (hold.amount, hold.state and hold.state.feature) == (50, "document_summary")
        hold.post(30)
    (last, *_) = bank.history("alice").items
    assert (last.amount, last.feature, last.quantity) == (-30, "document_summary", 2)


def test_check_advises_and_changes_nothing(bank: TokenBank) -> None:
    image = bank.check("alice", feature="image")
    assert (image.allowed, image.cost, image.available, image.short_by) == (True, 40, 1000, 0)
    assert image.expires_soonest is None
    assert image.buy_url == "https://tokens.example/pricing"
    many = bank.check("alice", feature="image", quantity=30)
    assert (many.allowed, many.cost, many.short_by) == (False, 1200, 200)
    assert bank.check("alice", amount=1000).allowed
    assert bank.balance("alice").available == 1000
    assert [item.kind for item in bank.history("alice").items] == ["grant"]
    with pytest.raises(NotFound):
        bank.check("nobody", amount=1)


class DropFirst(httpx.HTTPTransport):
    """Loses the first answer after the server has acted: the case retries exist for."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if self.dropped == 0:
            self.dropped += 1
            response.close()
            raise httpx.ReadError("connection reset", request=request)
        return response


def test_a_lost_answer_is_retried_with_the_same_key(db: Database, live_url: str) -> None:
    transport = DropFirst()
    secret = make_key(db, Scope.SPEND)["Authorization"].removeprefix("Bearer ")
    with _bank(db, live_url) as admin, httpx.Client(transport=transport) as http:
        admin.upsert_user("bob")
        admin.grant("bob", 100, reason="welcome")
        receipt = TokenBank(live_url, secret, http=http).spend("bob", 30)
        assert transport.dropped == 1
        assert receipt.replayed  # the retry found the first spend
        assert admin.balance("bob").available == 70  # spent once


def test_portal_url(bank: TokenBank) -> None:
    url = bank.portal_url("alice", return_path="/account")
    assert url.startswith("https://tokens.example/portal/")


def test_user_ids_are_sent_as_one_path_segment(bank: TokenBank) -> None:
    odd = "team?a#b%c&d"
    bank.upsert_user(odd)
    bank.grant(odd, 5, reason="r")
    assert bank.balance(odd).available == 5
    assert bank.spend(odd, 2).user_id == odd


def test_a_service_that_does_not_answer_is_one_error(db: Database) -> None:
    """A connection refused, after the retries, is ``ServiceUnavailable``, not httpx's."""
    (port,) = free_ports(1)
    with (
        TokenBank(f"http://127.0.0.1:{port}", "tb_nothing", retries=1) as bank,
        pytest.raises(ServiceUnavailable) as caught,
    ):
        bank.balance("alice")
    assert caught.value.status == 503 and caught.value.code == "unreachable"
    assert isinstance(caught.value, ApiError)


def test_a_503_is_service_unavailable(bank: TokenBank) -> None:
    with pytest.raises(ServiceUnavailable) as caught:  # this service sells nothing
        bank.packages()
    assert caught.value.code == "payments_not_configured"


def test_packages_and_purchases_are_typed(db: Database, emulator_server: EmulatorServer) -> None:
    emulator_server.reset()
    app = create_app(SETTINGS, db=db, passwords=PASSWORDS, seller=make_billing(emulator_server.url))
    with serving(app) as url, _bank(db, url) as bank:
        packages = bank.packages()
        assert all(isinstance(p, Package) for p in packages)
        plus = next(p for p in packages if p.id == "plus")
        assert (plus.total_tokens, plus.price, plus.currency) == (2200, 2000, "usd")
        assert isinstance(plus.price_per_token, Decimal)
        assert plus.price_per_token == Decimal("0.0090909091")  # ten places
        bank.upsert_user("alice")
        started = bank.checkout("alice", "plus", idempotency_key="typed-1")
        purchase = bank.purchase(started.purchase_id)
        assert isinstance(purchase, Purchase)
        assert (purchase.status, purchase.tokens + purchase.bonus_tokens) == ("pending", 2200)
        assert purchase.created_at.tzinfo is not None and purchase.paid_at is None


def test_subscriptions_are_typed(db: Database, emulator_server: EmulatorServer) -> None:
    app = create_app(SETTINGS, db=db, passwords=PASSWORDS, seller=make_billing(emulator_server.url))
    with serving(app) as url, _bank(db, url) as bank:
        emulator_server.reset(webhook_url=f"{url}/webhooks/stripe")
        bank.upsert_user("alice")
        with pytest.raises(NoSubscription):
            bank.subscription("alice")
        started = bank.subscribe("alice", "basic", idempotency_key="sub-1")
        assert isinstance(started, SubscriptionCheckout) and started.url.startswith("http")
        assert bank.subscribe("alice", "basic", idempotency_key="sub-1") == started  # a retry
        assert emulator_server.pay(started.checkout_session_id).status_code == 200
        emulator_server.settle()
        found = bank.subscription("alice")
        assert isinstance(found, Subscription)
        assert (found.plan_id, found.interval, found.status) == ("basic", "month", "active")
        assert found.allowance.granted == found.allowance.left == 1000
        assert found.current_period_end is not None and found.current_period_end.tzinfo
        with pytest.raises(SubscriptionExists):
            bank.subscribe("alice", "pro")
        cancelled = bank.cancel_subscription("alice")
        assert cancelled.cancel_at_period_end and cancelled.ends_at == found.current_period_end
        changed = bank.change_subscription("alice", "studio")
        assert changed.plan_id == "studio"
        emulator_server.reset()

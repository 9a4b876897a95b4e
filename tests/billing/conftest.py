"""The whole purchase path, running: tokenbank served on a real port, the Stripe emulator
beside it delivering signed webhooks to it, and helpers to drive both."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.servers import serving
from tests.stripe_emulator import EmulatorServer, make_billing
from tests.web.conftest import PASSWORDS, SETTINGS, make_key
from tokenbank.apikeys import Scope
from tokenbank.billing import Billing
from tokenbank.db import Database
from tokenbank.web.app import create_app


@dataclass
class Store:
    db: Database
    api: httpx.Client
    emulator: EmulatorServer
    seller: Billing

    def user(self, user_id: str = "alice") -> str:
        self.api.put(f"/api/v1/users/{user_id}", json={"email": f"{user_id}@example.com"})
        return user_id

    def balance(self, user_id: str = "alice") -> dict[str, Any]:
        answer = self.api.get(f"/api/v1/users/{user_id}/balance")
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def purchase(self, purchase_id: int) -> dict[str, Any]:
        answer = self.api.get(f"/api/v1/purchases/{purchase_id}")
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def checkout(self, package_id: str = "plus", user_id: str = "alice") -> dict[str, Any]:
        answer = self.api.post(
            f"/api/v1/users/{user_id}/checkout-sessions", json={"package_id": package_id}
        )
        assert answer.status_code == 201, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def paid_checkout(self, package_id: str = "plus", user_id: str = "alice") -> dict[str, Any]:
        started = self.checkout(package_id, user_id)
        paid = self.emulator.pay(started["checkout_session_id"])
        assert paid.status_code == 200, paid.text
        self.emulator.settle()
        return started

    def spend(self, amount: int, key: str, user_id: str = "alice") -> httpx.Response:
        return self.api.post(
            f"/api/v1/users/{user_id}/spend", json={"amount": amount, "idempotency_key": key}
        )


OpenStore = Callable[..., Any]


@contextmanager
def open_store(
    db: Database,
    emulator: EmulatorServer,
    *,
    webhook_settle_slots: int = SETTINGS.webhook_settle_slots,
    **options: Any,
) -> Iterator[Store]:
    seller = make_billing(emulator.url, **options)
    # No access log: the server shares this process's stdout with the CLI under test.
    settings = SETTINGS.model_copy(
        update={"log_level": "warning", "webhook_settle_slots": webhook_settle_slots}
    )
    app = create_app(settings, db=db, passwords=PASSWORDS, seller=seller)
    headers = make_key(db, Scope.ADMIN)
    with serving(app) as url, httpx.Client(base_url=url, headers=headers, timeout=20) as api:
        emulator.reset(webhook_url=f"{url}/webhooks/stripe")
        try:
            yield Store(db=db, api=api, emulator=emulator, seller=seller)
        finally:
            emulator.reset()  # no delivery outlives the test


@pytest.fixture
def store(db: Database, emulator_server: EmulatorServer) -> Iterator[Store]:
    with open_store(db, emulator_server) as opened:
        opened.user()
        yield opened

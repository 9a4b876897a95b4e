"""The built-in Stripe emulator as tests use it: one server for the session, emptied before
each test, and tokenbank's own ``Stripe`` pointed at it."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import serving
from tokenbank.billing import Billing, PriceBook, PurchaseFlow, load_catalog
from tokenbank.billing.catalog import Catalog
from tokenbank.emulator import create_app
from tokenbank.payments.stripe import Stripe

SECRET_KEY = "sk_test_tokenbank_tests"
PUBLISHABLE_KEY = "pk_test_tokenbank_tests"
WEBHOOK_SECRET = "whsec_tokenbank_tests_0123456789abcdef"
CATALOG = load_catalog(Path("catalogs/default.toml"))


@dataclass
class EmulatorServer:
    url: str
    http: httpx.Client

    def reset(self, *, webhook_url: str | None = None) -> None:
        self.http.post("/_emulator/reset").raise_for_status()
        self.configure(url=webhook_url, secret=WEBHOOK_SECRET)

    def configure(self, **config: Any) -> dict[str, Any]:
        answer = self.http.post("/_emulator/webhooks/config", json=config)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def deliveries(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.http.get("/_emulator/webhooks/deliveries").json()
        return found

    def settle(self, timeout: float = 15) -> list[dict[str, Any]]:
        """Wait until no delivery is pending (being sent or waiting for a retry)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.deliveries()
            if not any(d["state"] == "pending" for d in found):
                return found
            assert time.monotonic() < deadline, f"deliveries still pending: {found}"
            time.sleep(0.05)

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, str | int] = {"limit": 100}
        if type:
            params["type"] = type
        answer = self.http.get(
            "/v1/events", params=params, headers={"Authorization": f"Bearer {SECRET_KEY}"}
        )
        answer.raise_for_status()
        data: list[dict[str, Any]] = answer.json()["data"]
        return data

    def pay(self, session_id: str, card: str = "4242424242424242", **extra: Any) -> httpx.Response:
        return self.http.post(
            f"/_emulator/checkout_sessions/{session_id}/pay", json={"card": card, **extra}
        )


def signed(payload: bytes, *, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    """A ``Stripe-Signature`` header, computed the way Stripe documents it."""
    timestamp = int(time.time()) if at is None else at
    digest = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256
    ).hexdigest()
    return f"t={timestamp},v1={digest}"


def event_bytes(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def make_billing(
    url: str,
    *,
    catalog: Catalog = CATALOG,
    policy: str = "debt",
    flow: PurchaseFlow = PurchaseFlow.CHECKOUT,
    secret_key: str = SECRET_KEY,
    webhook_secret: str | None = WEBHOOK_SECRET,
    timeout_seconds: float = 10,
) -> Billing:
    stripe = Stripe(
        secret_key=secret_key,
        webhook_secret=webhook_secret,
        api_base=url,
        max_network_retries=0,
        timeout_seconds=timeout_seconds,
    )
    return Billing(
        stripe=stripe,
        catalog=catalog,
        prices=PriceBook(stripe, catalog),
        policy=policy,  # type: ignore[arg-type]
        flow=flow,
        publishable_key=PUBLISHABLE_KEY,
    )


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    app = create_app(
        webhook_secret=WEBHOOK_SECRET, api_key=None, retry_delays=(0.05, 0.1, 0.2, 0.4, 0.8)
    )
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        yield EmulatorServer(url=url, http=http)

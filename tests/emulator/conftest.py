"""One emulator and one webhook receiver, served by uvicorn in threads for the whole session.

Each test starts from an empty emulator (``/_emulator/reset``) and an empty receiver, and
drives the emulator through the official ``stripe`` SDK the way tokenbank does.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import stripe
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tokenbank.emulator import Emulator, create_app

SECRET = "whsec_emulator_tests"
RETRY_DELAYS = (0.05, 0.05, 0.05)


def plain(value: object) -> Any:
    """A nested SDK value as plain dicts (StripeObject compares equal to nothing else)."""
    assert isinstance(value, stripe.StripeObject)
    return value.to_dict()


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """Run ``app`` on a free local port in a background thread; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass(kw_only=True)
class Receiver:
    """A webhook endpoint that verifies signatures with the SDK and can fail on purpose."""

    secret: str
    events: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    requests: int = 0
    fail_next: int = 0
    bad_signatures: int = 0

    def reset(self) -> None:
        self.events.clear()
        self.headers.clear()
        self.requests = self.fail_next = self.bad_signatures = 0

    async def webhook(self, request: Request) -> Response:
        body = await request.body()
        self.requests += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            return PlainTextResponse("failing on purpose", status_code=500)
        try:
            stripe.Webhook.construct_event(
                body, request.headers.get("stripe-signature"), self.secret, tolerance=300
            )
        except stripe.SignatureVerificationError:
            self.bad_signatures += 1
            return PlainTextResponse("bad signature", status_code=400)
        self.events.append(json.loads(body))
        self.headers.append(dict(request.headers))
        return PlainTextResponse("ok")

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]


@dataclass(frozen=True, kw_only=True)
class Harness:
    """The emulator as a test sees it: its URL, its state, an SDK client and a plain client."""

    url: str
    emulator: Emulator
    client: stripe.StripeClient
    http: httpx.Client
    receiver: Receiver
    webhook_url: str

    def wait_quiet(self, *, at_least: int = 0, timeout: float = 5) -> list[dict[str, Any]]:
        """Delivery records once none is pending (and at least ``at_least`` exist)."""
        deadline = time.monotonic() + timeout
        while True:
            records: list[dict[str, Any]] = self.http.get("/_emulator/webhooks/deliveries").json()
            if len(records) >= at_least and all(r["state"] != "pending" for r in records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"deliveries still pending: {records}")
            time.sleep(0.02)

    def control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.post(f"/_emulator/{path}", json=body or {})
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="session")
def receiver() -> Receiver:
    return Receiver(secret=SECRET)


@pytest.fixture(scope="session")
def receiver_url(receiver: Receiver) -> Iterator[str]:
    app = Starlette(routes=[Route("/webhook", receiver.webhook, methods=["POST"])])
    with serving(app) as url:
        yield f"{url}/webhook"


@pytest.fixture(scope="session")
def emulator_app(receiver_url: str) -> Starlette:
    return create_app(webhook_url=receiver_url, webhook_secret=SECRET, retry_delays=RETRY_DELAYS)


@pytest.fixture(scope="session")
def emulator_url(emulator_app: Starlette) -> Iterator[str]:
    with serving(emulator_app) as url:
        yield url


@pytest.fixture
def emu(
    emulator_app: Starlette, emulator_url: str, receiver: Receiver, receiver_url: str
) -> Iterator[Harness]:
    """A freshly reset emulator with its webhook pointing at the (reset) receiver."""
    emulator: Emulator = emulator_app.state.emulator
    with httpx.Client(base_url=emulator_url, timeout=10) as http:
        assert http.post("/_emulator/reset").json() == {"ok": True}
        receiver.reset()
        emulator.webhook_url, emulator.webhook_secret = receiver_url, SECRET
        emulator.api_key, emulator.public_url = None, None
        emulator.retry_delays = RETRY_DELAYS
        client = stripe.StripeClient("sk_test_emulator", base_addresses={"api": emulator_url})
        yield Harness(
            url=emulator_url,
            emulator=emulator,
            client=client,
            http=http,
            receiver=receiver,
            webhook_url=receiver_url,
        )
        http.post("/_emulator/reset")

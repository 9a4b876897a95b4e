"""The part of the demo that plays everyone but tokenbank: the buyer paying on Stripe's page,
the merchant refunding from the Stripe Dashboard, the bank opening a chargeback. Real Stripe
has no buttons for those, so the demo only ever runs against the built-in emulator, whose
test helpers (``/_emulator/``) are those buttons.

Everything that could reach real money is refused here, before anything is written: a
production configuration, a public address or a database that is not on this machine, a
live key, no emulator address, an address that is Stripe's, and an address where something
other than the emulator answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx

from tokenbank.config import LOCAL_HOSTS, Settings
from tokenbank.db import normalize_url
from tokenbank.errors import (
    ConfigurationError,
    PaymentProviderError,
    PaymentProviderUnavailable,
    PaymentsNotConfigured,
)

#: Stripe's test card that pays, and the one its issuer declines ("generic_decline").
PAYING_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"
LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")
HEALTH_PATH = "/_emulator/health"


def emulator_address(settings: Settings) -> str:
    """The emulator's base URL from the settings, or an error saying why the demo may not
    run here. Checked from the settings alone, so a refusal writes nothing anywhere."""
    if settings.env == "production":
        raise ConfigurationError(
            "tokenbank demo makes up users and payments for a development database;"
            " TOKENBANK_ENV=production refuses it"
        )
    # Production is also what is not on this machine, whatever TOKENBANK_ENV says: a shell
    # with a production database's URL and a leftover var/.env must not get demo users.
    site = (urlsplit(settings.public_url).hostname or "").lower()
    if site not in LOCAL_HOSTS:
        raise ConfigurationError(
            f"TOKENBANK_PUBLIC_URL is {settings.public_url}: tokenbank demo only fills a"
            " development instance on this machine (127.0.0.1 or localhost)"
        )
    database = normalize_url(settings.database_url)
    if database.get_backend_name() != "sqlite" and (database.host or "localhost") not in (
        LOCAL_HOSTS
    ):
        raise ConfigurationError(
            f"TOKENBANK_DATABASE_URL names a database on {database.host}: tokenbank demo"
            " only fills a development database on this machine"
        )
    key = settings.stripe_secret_key.get_secret_value() if settings.stripe_secret_key else ""
    if not key:
        raise PaymentsNotConfigured(
            "no STRIPE_SECRET_KEY: tokenbank demo buys through the built-in Stripe emulator;"
            " start `make run` (it writes the emulator's settings to var/.env), then run it again"
        )
    if key.startswith(LIVE_KEY_PREFIXES):
        raise ConfigurationError(
            "STRIPE_SECRET_KEY is a live key: tokenbank demo never buys through real Stripe"
        )
    base = (settings.stripe_api_base or "").strip().rstrip("/")
    if not base:
        raise ConfigurationError(
            "STRIPE_API_BASE is not set, which means real Stripe: tokenbank demo only buys"
            " through the built-in emulator (`make run` starts one and writes its address"
            " to var/.env)"
        )
    host = (urlsplit(base).hostname or "").lower()
    if host == "stripe.com" or host.endswith(".stripe.com"):
        raise ConfigurationError(
            f"STRIPE_API_BASE is {base}, which is real Stripe: tokenbank demo only buys"
            " through the built-in emulator"
        )
    return base


@contextmanager
def open_emulator(
    settings: Settings, *, transport: httpx.BaseTransport | None = None
) -> Iterator[EmulatorHelpers]:
    """The emulator the settings name, once it has answered as the emulator: another server
    at that address (real Stripe, a proxy to it, some other service) is refused.
    ``transport``: where the requests go instead of the network (tests)."""
    base = emulator_address(settings)
    assert settings.stripe_secret_key is not None  # emulator_address refuses a missing key
    with httpx.Client(
        base_url=base, timeout=settings.stripe_timeout_seconds, transport=transport
    ) as http:
        helpers = EmulatorHelpers(
            http=http, secret_key=settings.stripe_secret_key.get_secret_value()
        )
        helpers.check()
        yield helpers


class EmulatorHelpers:
    """The emulator's test helpers, and the one Stripe API call tokenbank itself never
    makes (a merchant's refund), over plain HTTP: ``tokenbank.payments`` speaks only what
    tokenbank does in production."""

    def __init__(self, *, http: httpx.Client, secret_key: str) -> None:
        self.http = http
        self.secret_key = secret_key

    @property
    def url(self) -> str:
        return str(self.http.base_url).rstrip("/")

    def check(self) -> None:
        """Refuse a server that is not the emulator: only it answers this path so."""
        answer = self._send("GET", HEALTH_PATH, what="answer")
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.status_code != 200 or body != {"ok": True}:
            raise ConfigurationError(
                f"{self.url} does not answer as tokenbank's Stripe emulator"
                f" (GET {HEALTH_PATH}: {answer.status_code}); tokenbank demo only buys"
                " through the emulator (`make run` starts one)"
            )

    def pay(self, session_id: str, *, card: str) -> bool:
        """Pay a Checkout Session as its hosted page would; False when the card is declined
        (what a declined card is for)."""
        answer = self._send(
            "POST",
            f"/_emulator/checkout_sessions/{session_id}/pay",
            what=f"pay session {session_id}",
            json={"card": card},
        )
        if answer.status_code == 402:
            return False
        self._raise_for(answer, f"pay session {session_id}")
        return True

    def refund(self, *, payment_intent_id: str) -> None:
        """A full refund, as the merchant would make it in the Stripe Dashboard. The key is
        the payment's own, so a second call is Stripe's replay of the first."""
        answer = self._send(
            "POST",
            "/v1/refunds",
            what=f"refund {payment_intent_id}",
            data={"payment_intent": payment_intent_id, "reason": "requested_by_customer"},
            headers={
                "Authorization": f"Bearer {self.secret_key}",
                "Idempotency-Key": f"tokenbank-demo-refund-{payment_intent_id}",
            },
        )
        self._raise_for(answer, f"refund {payment_intent_id}")

    def dispute(self, *, payment_intent_id: str, amount: int) -> None:
        """A chargeback of ``amount`` (minor units), as the buyer's bank would open it."""
        answer = self._send(
            "POST",
            "/_emulator/disputes",
            what=f"dispute {payment_intent_id}",
            json={"payment_intent": payment_intent_id, "amount": amount},
        )
        self._raise_for(answer, f"dispute {payment_intent_id}")

    def _send(self, method: str, path: str, *, what: str, **options: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **options)
        except httpx.TransportError as exc:
            raise PaymentProviderUnavailable(
                f"the Stripe emulator at {self.url} did not {what}"
                f" ({type(exc).__name__}): is `make run` running? Run tokenbank demo again"
                " once it is"
            ) from None

    def _raise_for(self, answer: httpx.Response, what: str) -> None:
        if answer.status_code < 400:
            return
        if answer.status_code >= 500 or answer.status_code == 429:
            raise PaymentProviderUnavailable(
                f"the Stripe emulator failed to {what} ({answer.status_code})"
            )
        try:
            message = answer.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = answer.text[:200]
        raise PaymentProviderError(f"the Stripe emulator refused to {what}: {message}")

"""``Runtime``: the parts the service was built with, made once by ``create_app`` from the
settings and reached by every route through ``web/deps.py`` (never through globals)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, cast

from fastapi import Request

if TYPE_CHECKING:
    from tokenbank.billing import Billing
    from tokenbank.billing.catalog import Catalog
    from tokenbank.db import Database
    from tokenbank.faults import Faults
    from tokenbank.grants import Trial
    from tokenbank.identity import Passwords, Throttle
    from tokenbank.llm.gateway import Gateway
    from tokenbank.mail import Sender
    from tokenbank.web.auth import KeyCache
    from tokenbank.web.browser import Browsers
    from tokenbank.web.observe import Metrics
    from tokenbank.web.render import Pages


@dataclass(slots=True)
class SettlingSlots:
    """How many Stripe deliveries this process settles in their own request at once. A
    delivery that finds none free is stored and answered, and ``tokenbank worker`` settles
    it: a burst then costs a store per delivery, not 3 or 4 reads from Stripe each. Taken
    and given back on the event loop only, so a count needs no lock."""

    free: int

    def take(self) -> bool:
        if self.free <= 0:
            return False
        self.free -= 1
        return True

    def give(self) -> None:
        self.free += 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Runtime:
    db: Database
    metrics: Metrics
    keys: KeyCache
    browsers: Browsers
    pages: Pages
    passwords: Passwords
    throttle: Throttle
    #: How tokens are sold; None when no Stripe key is configured (nothing can be bought).
    billing: Billing | None
    faults: Faults
    #: This service's address as the outside world sees it, without a trailing slash.
    public_url: str
    default_hold_ttl: int
    portal_link_ttl: timedelta
    #: Hosts a purchase's return URLs may point at, besides ``public_url``'s.
    return_hosts: frozenset[str]
    #: A spend of at least this many tokens is logged (0: none).
    large_spend: int
    #: The newest migration this version ships (read once: it does not change).
    schema_head: str | None
    #: The buying pages' headers (a CSP that lets Stripe's origins in).
    buying_headers: dict[str, str]
    #: Whether a new account confirms its address before it may buy.
    verify_email: bool
    #: The free trial a new person gets once (docs/grants.md); None: no trial.
    trial: Trial | None = None
    #: Sends the outbox from this process (None: ``tokenbank worker`` does).
    mail: Sender | None
    #: The development mailbox at /_dev/mail (never in production).
    dev_mail: bool
    #: What is configured to work only in part, said at start-up and by /readyz.
    warnings: tuple[str, ...] = ()
    #: The catalog: the packages (when selling) and the features spends are priced from;
    #: None for a service that sells nothing and has no catalog file.
    catalog: Catalog | None = None
    #: The model gateway; None when no models file is found (its routes answer 503).
    gateway: Gateway | None = None
    #: Stripe deliveries settled in their request at once (``TOKENBANK_WEBHOOK_SETTLE_SLOTS``).
    webhook_slots: SettlingSlots

    @property
    def buy_url(self) -> str:
        """The pricing page: where a user short of tokens can buy more."""
        return f"{self.public_url}/pricing"

    def return_urls(self) -> tuple[str, str]:
        """Where Stripe Checkout sends a buyer back: this site's success and cancel pages."""
        return (
            f"{self.public_url}/purchase/success?session_id={{CHECKOUT_SESSION_ID}}",
            f"{self.public_url}/purchase/cancel"
            "?purchase={PURCHASE_ID}&reference={PURCHASE_REFERENCE}",
        )

    def subscription_urls(self) -> tuple[str, str]:
        """Where a subscription's Checkout sends the user back: the page that waits for
        Stripe's word, and the pricing page."""
        return (
            f"{self.public_url}/subscription/success?session_id={{CHECKOUT_SESSION_ID}}",
            f"{self.public_url}/pricing",
        )


def runtime(request: Request) -> Runtime:
    """The running service's parts. The two hottest API routes call this directly: a plain
    attribute read, where resolving a FastAPI dependency costs more per request."""
    return cast("Runtime", request.app.state.runtime)

"""``fill``: a development database with something on every page, made the way real use
makes it. Accounts go through the services registration uses, grants through ``grants``,
purchases through Checkout at the emulator and settle as reconcile settles them, spends and
holds through the ledger. Nothing is inserted behind a service's back, so what the pages
show is what they would show after real use, and ``ledger verify`` holds.

Every step has a fixed idempotency key, or looks first for what an earlier run made, so a
second run (or one after a run that stopped half way) adds only what is missing.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenbank import billing, grants, identity, ledger, mail, users
from tokenbank.billing import Billing, Package, Purchase, PurchaseStatus
from tokenbank.db import Database
from tokenbank.demo.emulator import DECLINED_CARD, PAYING_CARD, EmulatorHelpers
from tokenbank.errors import (
    ConfigurationError,
    PaymentMismatch,
    StripeObjectMissing,
    UnknownUser,
    UserExists,
)
from tokenbank.identity.passwords import check_password
from tokenbank.ledger.holds import MAX_TTL_SECONDS
from tokenbank.users import emails


@dataclass(frozen=True, slots=True)
class Person:
    """A demo user as the script knows them; the id is fixed, so a second run finds them."""

    user_id: str
    email: str
    name: str
    language: str
    welcome_tokens: int
    admin: bool = False


#: The admin, who sees everyone's purchases; a buyer with a bit of everything on the
#: dashboard; a buyer whose pages are in Chinese, with a refunded and a disputed purchase.
ADA = Person("demo-ada", "ada@demo.example.com", "Ada Admin", "en", 1000, admin=True)
BEN = Person("demo-ben", "ben@demo.example.com", "Ben Buyer", "en", 1000)
CHEN = Person("demo-chen", "chen@demo.example.com", "陈晨", "zh-CN", 500)
PEOPLE = (ADA, BEN, CHEN)


class Made(enum.StrEnum):
    """What one step added; a step that found its work done adds nothing."""

    USER = "user"
    GRANT = "welcome grant"
    PAID = "paid purchase"
    DECLINED = "declined purchase"
    PENDING = "pending purchase"
    SPEND = "spend"
    SPEND_REFUND = "refunded spend"
    HOLD_POSTED = "posted hold"
    HOLD_OPEN = "open hold"
    STRIPE_REFUND = "Stripe refund"
    DISPUTE = "dispute"


@dataclass(frozen=True, slots=True)
class DemoUser:
    user_id: str
    email: str
    name: str
    admin: bool
    language: str
    #: Only when this run made the user: it is stored hashed, so it can never be shown again.
    password: str | None


@dataclass(slots=True)
class Filled:
    users: list[DemoUser] = field(default_factory=list)
    made: list[Made] = field(default_factory=list)

    @property
    def already_there(self) -> bool:
        return not self.made


def new_password() -> str:
    """Random rather than well known: a development server is sometimes reachable from
    elsewhere, and a published demo password would open its admin pages."""
    return secrets.token_urlsafe(12)


def fill(
    db: Database,
    *,
    seller: Billing,
    emulator: EmulatorHelpers,
    passwords: identity.Passwords,
    public_url: str,
    actor: str,
    new_password: Callable[[], str] = new_password,
) -> Filled:
    """Demo users (one an admin), their welcome grants, purchases that were paid, declined,
    left pending, refunded at Stripe and disputed, spends, a refunded spend, a posted and
    an open hold. ``actor``: who is recorded in the audit log as granting the welcome
    tokens. Returns the users (with passwords for those made now) and what was added."""
    script = _Script(
        db=db,
        seller=seller,
        emulator=emulator,
        passwords=passwords,
        public_url=public_url.rstrip("/"),
        actor=actor,
        new_password=new_password,
    )
    small, medium, large = _packages(seller.catalog)
    script.filled.users = [script.person(person) for person in PEOPLE]
    for person in PEOPLE:
        script.welcome(person)

    script.purchase(ADA, "paid", medium, PurchaseStatus.PAID)
    script.spend(ADA, 150, "chat-1", "Chat completion")

    script.purchase(BEN, "declined", large, PurchaseStatus.FAILED)
    script.purchase(BEN, "paid", medium, PurchaseStatus.PAID)
    script.spend(BEN, 250, "chat-1", "Chat completion")
    script.spend(BEN, 120, "caption-1", "Image caption")
    summary = script.spend(BEN, 400, "summary-1", "Document summary")
    script.refund_spend(BEN, summary, 100, "summary-1-refund", "The summary was cut short")
    script.hold(BEN, 600, "stream-1", "Streaming chat completion", post=412)
    script.hold(BEN, 300, "batch-1", "Batch job, still running", post=None)
    # Last, so it is among the dashboard's recent purchases, with Continue paying.
    script.purchase(BEN, "pending", small, PurchaseStatus.PENDING)

    refunded = script.purchase(CHEN, "refunded", small, PurchaseStatus.PAID)
    script.spend(CHEN, 200, "chat-1", "Chat completion")
    disputed = script.purchase(CHEN, "disputed", medium, PurchaseStatus.PAID)
    script.spend(CHEN, 300, "translation-1", "Translation")
    script.refund_at_stripe(refunded)
    script.dispute(disputed)
    return script.filled


def _packages(catalog: billing.Catalog) -> tuple[Package, Package, Package]:
    """The three cheapest packages on sale (repeated when the catalog has fewer)."""
    on_sale = sorted(catalog.on_sale, key=lambda package: (package.price, package.id))
    if not on_sale:
        raise ConfigurationError(f"{catalog.source}: no package is on sale, so none can be bought")
    return on_sale[0], on_sale[min(1, len(on_sale) - 1)], on_sale[min(2, len(on_sale) - 1)]


@dataclass(slots=True)
class _Script:
    db: Database
    seller: Billing
    emulator: EmulatorHelpers
    passwords: identity.Passwords
    public_url: str
    actor: str
    new_password: Callable[[], str]
    filled: Filled = field(default_factory=Filled)

    # --- people ------------------------------------------------------------------------

    def person(self, person: Person) -> DemoUser:
        """The user with a confirmed address, a password, and the welcome letter that
        registration sends (so the development mailbox shows it)."""
        made = DemoUser(
            user_id=person.user_id,
            email=person.email,
            name=person.name,
            admin=person.admin,
            language=person.language,
            password=None,
        )
        if self._exists(person.user_id):
            return made
        password = check_password(self.new_password(), personal=(person.email, person.name))
        hashed = self.passwords.hash(password)  # slow on purpose: before any transaction
        try:
            with self.db.transaction() as conn:
                users.create_user(
                    conn,
                    user_id=person.user_id,
                    email=person.email,
                    name=person.name,
                    email_verified=True,
                )
                identity.set_password(conn, user_id=person.user_id, password_hash=hashed)
                if person.language != "en":
                    identity.set_language(conn, user_id=person.user_id, language=person.language)
                if person.admin:
                    identity.set_admin(conn, user_id=person.user_id, admin=True)
                mail.enqueue(
                    conn,
                    kind="welcome",
                    to=emails.mailbox(person.email),
                    language=person.language,
                    user_id=person.user_id,
                )
        except UserExists:  # another run made them meanwhile; its password stands
            return made
        self.filled.made.append(Made.USER)
        return DemoUser(
            user_id=made.user_id,
            email=made.email,
            name=made.name,
            admin=made.admin,
            language=made.language,
            password=password,
        )

    def _exists(self, user_id: str) -> bool:
        with self.db.read() as conn:
            try:
                users.get_user(conn, user_id=user_id)
            except UnknownUser:
                return False
        return True

    def welcome(self, person: Person) -> None:
        receipt = grants.grant(
            self.db,
            user_id=person.user_id,
            amount=person.welcome_tokens,
            reason="Welcome tokens",
            idempotency_key=f"{person.user_id}-welcome",
            actor=self.actor,
        )
        self._count(Made.GRANT, receipt.replayed)

    # --- purchases -----------------------------------------------------------------------

    def purchase(
        self, person: Person, role: str, package: Package, ending: PurchaseStatus
    ) -> Purchase:
        """A Checkout purchase that ends ``ending``: paid with the test card that pays,
        failed with the one that is declined, or pending, never paid."""
        key = f"{person.user_id}-{role}"
        found = self._purchase_with_key(person.user_id, key)
        if found is not None and (
            found.status is not PurchaseStatus.PENDING or ending is PurchaseStatus.PENDING
        ):
            return found
        started = billing.start_checkout(
            self.db,
            self.seller.stripe,
            self.seller.catalog,
            user_id=person.user_id,
            package_id=package.id,
            # The pages' own return links (web/runtime.py), should anyone open the session.
            success_url=f"{self.public_url}/purchase/success?session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=(
                f"{self.public_url}/purchase/cancel"
                "?purchase={PURCHASE_ID}&reference={PURCHASE_REFERENCE}"
            ),
            locale=person.language,
            prices=self.seller.prices,
            idempotency_key=key,
        )
        if ending is PurchaseStatus.PENDING:
            self._count(Made.PENDING)
            return started.purchase
        session_id = started.checkout_session_id
        # Paid already, by a run that stopped before settling: pay no second time.
        if self.seller.stripe.checkout_session(session_id).status == "open":
            card = PAYING_CARD if ending is PurchaseStatus.PAID else DECLINED_CARD
            self.emulator.pay(session_id, card=card)
        purchase = self._settle(started.purchase).purchase
        assert purchase is not None  # _settle refuses a payment that names none
        self._count(Made.PAID if purchase.status is PurchaseStatus.PAID else Made.DECLINED)
        return purchase

    def _purchase_with_key(self, user_id: str, key: str) -> Purchase | None:
        with self.db.read() as conn:
            found = billing.list_purchases(conn, user_id=user_id, limit=500)
        return next((purchase for purchase in found if purchase.idempotency_key == key), None)

    def _settle(self, purchase: Purchase) -> billing.Outcome:
        """As reconcile settles a payment: from Stripe's current objects, whatever the
        webhooks (delivered to a running service meanwhile) did or did not do already."""
        outcome = billing.settle_from_stripe(
            self.db,
            self.seller.stripe,
            session_id=purchase.checkout_session_id,
            payment_intent_id=purchase.payment_intent_id,
            policy=self.seller.policy,
            source="reconcile",
        )
        if outcome.purchase is None:
            raise PaymentMismatch(f"Stripe's payment does not name purchase {purchase.id}")
        return outcome

    def _current(self, purchase: Purchase) -> Purchase:
        with self.db.read() as conn:
            return billing.get_purchase(conn, purchase_id=purchase.id)

    def refund_at_stripe(self, purchase: Purchase) -> None:
        """The whole payment refunded at Stripe: settling claws its tokens back."""
        current = self._current(purchase)
        intent = current.payment_intent_id
        if current.status is not PurchaseStatus.PAID or intent is None:
            return
        if current.refunded_amount > 0:
            return
        if not self.seller.stripe.refunds_of(intent):
            self.emulator.refund(payment_intent_id=intent)
        self._settle(current)
        self._count(Made.STRIPE_REFUND)

    def dispute(self, purchase: Purchase) -> None:
        """A chargeback of half the payment, left open: settling freezes its share of the
        tokens, which the dashboard shows as held until the dispute closes."""
        current = self._current(purchase)
        intent = current.payment_intent_id
        if current.status is not PurchaseStatus.PAID or intent is None:
            return
        try:
            payment = billing.fetch_payment(
                self.seller.stripe,
                session_id=current.checkout_session_id,
                payment_intent_id=intent,
            )
        except StripeObjectMissing:
            return  # the emulator forgot its account (its state file went): nothing to add
        opened = not payment.disputes
        if opened:
            self.emulator.dispute(payment_intent_id=intent, amount=max(current.amount // 2, 1))
        # Not opened now: an earlier run did, and stopped before settling it, or it is done.
        settled = self._settle(current)
        self._count(Made.DISPUTE, replayed=not (opened or settled.events))

    # --- the wallet ------------------------------------------------------------------------

    def spend(self, person: Person, amount: int, key: str, description: str) -> ledger.Receipt:
        with self.db.transaction(wallet=person.user_id) as conn:
            receipt = ledger.spend(
                conn,
                user_id=person.user_id,
                amount=amount,
                idempotency_key=f"{person.user_id}-{key}",
                description=description,
            )
        self._count(Made.SPEND, receipt.replayed)
        return receipt

    def refund_spend(
        self, person: Person, spent: ledger.Receipt, amount: int, key: str, reason: str
    ) -> None:
        with self.db.transaction(wallet=person.user_id) as conn:
            receipt = ledger.refund(
                conn,
                transfer_id=spent.transfer_id,
                amount=amount,
                idempotency_key=f"{person.user_id}-{key}",
                description=reason,
            )
        self._count(Made.SPEND_REFUND, receipt.replayed)

    def hold(
        self, person: Person, amount: int, key: str, description: str, *, post: int | None
    ) -> None:
        """A hold around a call whose cost is known afterwards: posted for what it used, or
        (``post`` None) still open for as long as a hold may be, for the dashboard to show."""
        with self.db.transaction(wallet=person.user_id) as conn:
            held = ledger.hold(
                conn,
                user_id=person.user_id,
                amount=amount,
                idempotency_key=f"{person.user_id}-{key}",
                ttl_seconds=3600 if post is not None else MAX_TTL_SECONDS,
                description=description,
            )
        if post is None:
            self._count(Made.HOLD_OPEN, held.replayed)
            return
        with self.db.transaction(wallet=person.user_id) as conn:
            receipt = ledger.post_hold(conn, hold_id=held.id, amount=post)
        self._count(Made.HOLD_POSTED, receipt.replayed)

    def _count(self, made: Made, replayed: bool = False) -> None:
        if not replayed:
            self.filled.made.append(made)

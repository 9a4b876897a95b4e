"""A typed Python client for tokenbank's HTTP API.

    bank = TokenBank("https://tokens.example.com", api_key="tb_...")
    with bank.hold("user-42", 2_000) as hold:   # reserve the most a call may cost
        reply = call_the_model(...)
        hold.post(reply.usage.total_tokens)     # spend what it did cost, release the rest

Every write carries an idempotency key (one is made up when you pass none), so the client
retries a request whose answer was lost without risking a second effect.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

__all__ = [
    "Allowance",
    "ApiError",
    "Balance",
    "Checkout",
    "Entitlement",
    "Expiring",
    "Feature",
    "Forbidden",
    "HistoryPage",
    "Hold",
    "IdempotencyConflict",
    "InsufficientTokens",
    "InvalidRequest",
    "NoSubscription",
    "NotFound",
    "Package",
    "Purchase",
    "RateLimited",
    "Receipt",
    "ServiceUnavailable",
    "Subscription",
    "SubscriptionCheckout",
    "SubscriptionExists",
    "TokenBank",
    "Transaction",
    "TransactionPage",
    "Transfer",
    "Unauthorized",
    "UnknownFeature",
]

RETRY_STATUSES = frozenset({502, 503, 504})


# --- errors ------------------------------------------------------------------------------


class ApiError(Exception):
    """A problem+json answer: ``status``, the stable ``code`` and the ``detail`` text."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body


class InsufficientTokens(ApiError):
    """402: nothing was spent. ``buy_url`` is where the user can buy more."""

    @property
    def available(self) -> int:
        return int(self.body.get("available", 0))

    @property
    def requested(self) -> int:
        return int(self.body.get("requested", 0))

    @property
    def buy_url(self) -> str | None:
        return self.body.get("buy_url")


class IdempotencyConflict(ApiError):
    """409: the key was used before with other parameters."""


class NotFound(ApiError):
    pass


class Unauthorized(ApiError):
    """401: missing, unknown or revoked API key."""


class Forbidden(ApiError):
    """403: the key lacks the scope."""


class RateLimited(ApiError):
    pass


class InvalidRequest(ApiError):
    """422: the request breaks a rule (an amount of zero, a key too long...)."""


class UnknownFeature(InvalidRequest):
    """422: the catalog prices no such feature (nothing was spent or held)."""


class SubscriptionExists(ApiError):
    """The user has a subscription already: change its plan instead."""


class NoSubscription(NotFound):
    """The user has no subscription."""


class ServiceUnavailable(ApiError):
    """The service could not be reached, or answered 503 (its database or Stripe away, a
    migration pending), after the client's retries: nothing is known to have happened, and
    the same call (the same idempotency key) may be made again later."""


_ERRORS: dict[str, type[ApiError]] = {
    "insufficient_tokens": InsufficientTokens,
    "idempotency_conflict": IdempotencyConflict,
    "not_found": NotFound,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "rate_limited": RateLimited,
    "validation_error": InvalidRequest,
    "unknown_feature": UnknownFeature,
    "subscription_exists": SubscriptionExists,
    "no_subscription": NoSubscription,
}


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expiring:
    amount: int
    expires_at: datetime
    source: str


@dataclass(frozen=True, slots=True)
class Balance:
    user_id: str
    available: int
    held: int
    balance: int
    total_purchased: int
    total_granted: int
    total_spent: int
    debt: int = 0
    #: What will expire unless used first, soonest first.
    expiring: tuple[Expiring, ...] = ()


@dataclass(frozen=True, slots=True)
class Package:
    id: str
    #: By language tag ("en", "zh-CN"): what the pages call it.
    name: dict[str, str]
    features: dict[str, list[str]]
    tokens: int
    bonus_tokens: int
    total_tokens: int
    #: In the currency's minor unit (cents, fen).
    price: int
    currency: str
    #: Major units per token, bonus included.
    price_per_token: Decimal
    savings_percent: int
    badge: str | None
    #: Days its tokens stay usable after the purchase; None: they never expire.
    expires_after_days: int | None = None


@dataclass(frozen=True, slots=True)
class Feature:
    """Something the app sells by the unit, priced in tokens by the server's catalog."""

    id: str
    #: By language tag ("en", "zh-CN").
    name: dict[str, str]
    #: Tokens per unit.
    tokens: int


@dataclass(frozen=True, slots=True)
class Purchase:
    purchase_id: int
    user_id: str
    package_id: str
    #: pending, paid, failed, expired, canceled or needs_review.
    status: str
    flow: str
    tokens: int
    bonus_tokens: int
    amount: int
    currency: str
    checkout_session_id: str | None
    payment_intent_id: str | None
    failure_code: str | None
    failure_message: str | None
    refunded_amount: int
    clawed_back_tokens: int
    created_at: datetime
    paid_at: datetime | None


@dataclass(frozen=True, slots=True)
class Checkout:
    purchase_id: int
    checkout_session_id: str
    url: str


@dataclass(frozen=True, slots=True)
class SubscriptionCheckout:
    subscription_id: int
    checkout_session_id: str
    url: str


@dataclass(frozen=True, slots=True)
class Allowance:
    tokens_per_month: int
    #: Granted for the current month (rollover and upgrades included), and what is left.
    granted: int
    left: int
    month_ends_at: datetime | None


@dataclass(frozen=True, slots=True)
class Subscription:
    subscription_id: int
    user_id: str
    plan_id: str
    #: month or year.
    interval: str
    #: trialing, active, past_due, unpaid, paused, canceled, incomplete, incomplete_expired.
    status: str
    amount: int
    currency: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    trial_end: datetime | None
    #: It ends at ``ends_at`` instead of renewing.
    cancel_at_period_end: bool
    ends_at: datetime | None
    allowance: Allowance
    next_allowance_at: datetime | None


@dataclass(frozen=True, slots=True)
class Receipt:
    #: None when the user's plan covered the spend (``covered``): no transfer was made.
    transfer_id: int | None
    kind: str
    user_id: str
    amount: int
    balance: int
    replayed: bool
    #: The feature and units a spend bought, when it named one (the server priced it).
    feature: str | None = None
    quantity: int | None = None
    #: The user's plan makes the feature unlimited: the use was recorded, no tokens taken.
    covered: bool = False


@dataclass(frozen=True, slots=True)
class Transfer:
    transfer_id: int
    kind: str
    amount: int
    balance_after: int
    description: str | None
    metadata: dict[str, Any] | None
    refund_of: int | None
    idempotency_key: str
    event_at: datetime
    created_at: datetime
    feature: str | None = None
    quantity: int | None = None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[Transfer]
    next_cursor: str | None


#: The earlier names of ``Transfer`` and ``HistoryPage``, kept for code that imports them.
Transaction = Transfer
TransactionPage = HistoryPage


@dataclass(frozen=True, slots=True)
class HoldState:
    hold_id: int
    user_id: str
    amount: int
    status: str
    expires_at: datetime
    posted_amount: int | None
    transfer_id: int | None
    feature: str | None = None
    quantity: int | None = None
    #: The user's plan covers it: it reserves no tokens, and posting it takes none.
    covered: bool = False


@dataclass(frozen=True, slots=True)
class Entitlement:
    """What ``TokenBank.check`` answers: advice for a page (grey out a button), not a
    promise; the spend or hold that follows decides."""

    allowed: bool
    cost: int
    available: int
    short_by: int
    expires_soonest: Expiring | None
    buy_url: str
    #: "subscription": the user's plan covers this use of an unlimited feature (cost 0);
    #: "tokens": it takes tokens.
    source: str = "tokens"
    #: With "subscription" and a fair-use cap: units still covered this month after it.
    covered_left: int | None = None


def _receipt(body: dict[str, Any]) -> Receipt:
    values: dict[str, Any] = {name: body.get(name) for name in Receipt.__slots__}
    return Receipt(**values | {"covered": bool(body.get("covered"))})


def _hold_state(body: dict[str, Any]) -> HoldState:
    return HoldState(
        hold_id=body["hold_id"],
        user_id=body["user_id"],
        amount=body["amount"],
        status=body["status"],
        expires_at=datetime.fromisoformat(body["expires_at"]),
        posted_amount=body["posted_amount"],
        transfer_id=body["transfer_id"],
        feature=body.get("feature"),
        quantity=body.get("quantity"),
        covered=bool(body.get("covered")),
    )


def _transfer(body: dict[str, Any]) -> Transfer:
    return Transfer(
        transfer_id=body["transfer_id"],
        kind=body["kind"],
        amount=body["amount"],
        balance_after=body["balance_after"],
        description=body["description"],
        metadata=body["metadata"],
        refund_of=body["refund_of"],
        idempotency_key=body["idempotency_key"],
        event_at=datetime.fromisoformat(body["event_at"]),
        created_at=datetime.fromisoformat(body["created_at"]),
        feature=body.get("feature"),
        quantity=body.get("quantity"),
    )


def _expiring(body: dict[str, Any]) -> Expiring:
    return Expiring(
        amount=body["amount"],
        expires_at=datetime.fromisoformat(body["expires_at"]),
        source=body["source"],
    )


def _entitlement(body: dict[str, Any]) -> Entitlement:
    soonest = body["expires_soonest"]
    return Entitlement(
        allowed=body["allowed"],
        cost=body["cost"],
        available=body["available"],
        short_by=body["short_by"],
        expires_soonest=None if soonest is None else _expiring(soonest),
        buy_url=body["buy_url"],
        source=body.get("source", "tokens"),
        covered_left=body.get("covered_left"),
    )


# --- holds -------------------------------------------------------------------------------


class Hold:
    """Tokens reserved for work whose cost is not known yet.

    As a context manager: the hold is placed on entry; ``post(actual)`` spends what the
    work cost and releases the rest; if the block raises (or ends without posting), the
    hold is voided and every token comes back.
    """

    def __init__(
        self, bank: TokenBank, user_id: str, amount: int | None, key: str, body: dict[str, Any]
    ) -> None:
        self._bank = bank
        self.user_id = user_id
        #: The tokens held; for a feature, known once placed (the server prices it).
        self.amount = amount
        self.idempotency_key = key
        self._body = body
        self.state: HoldState | None = None
        self.receipt: Receipt | None = None

    @property
    def hold_id(self) -> int:
        if self.state is None:
            raise RuntimeError("the hold is placed when the with block starts")
        return self.state.hold_id

    def place(self) -> HoldState:
        self.state = _hold_state(
            self._bank._request("POST", f"/users/{_id(self.user_id)}/holds", json=self._body)
        )
        self.amount = self.state.amount
        return self.state

    def post(self, amount: int) -> Receipt:
        """Spend ``amount`` (at most the held amount) and release the rest."""
        self.receipt = _receipt(
            self._bank._request("POST", f"/holds/{self.hold_id}/post", json={"amount": amount})
        )
        return self.receipt

    def void(self) -> HoldState:
        """Release the hold in full."""
        self.state = _hold_state(self._bank._request("POST", f"/holds/{self.hold_id}/void"))
        return self.state

    def __enter__(self) -> Self:
        self.place()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.receipt is not None:
            return
        if exc is None:
            self.void()
            return
        # The block's own error matters more; a hold left behind expires at its deadline.
        with contextlib.suppress(ApiError, httpx.HTTPError):
            self.void()


# --- the client --------------------------------------------------------------------------


class TokenBank:
    """tokenbank's API, for a host app's server. Thread-safe; reuse one per process."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        http: httpx.Client | None = None,
    ) -> None:
        self._retries = retries
        self._http = http or httpx.Client(timeout=timeout)
        self._owns_http = http is None
        self._base = base_url.rstrip("/") + "/api/v1"
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # users and balances

    def upsert_user(
        self, user_id: str, *, email: str | None = None, name: str | None = None
    ) -> dict[str, Any]:
        """Create the user and their wallet, or update email and name. Safe to repeat."""
        body = {k: v for k, v in (("email", email), ("name", name)) if v is not None}
        return self._request("PUT", f"/users/{_id(user_id)}", json=body)

    def balance(self, user_id: str) -> Balance:
        body = self._request("GET", f"/users/{_id(user_id)}/balance")
        values = {name: body[name] for name in Balance.__slots__ if name != "expiring"}
        return Balance(**values, expiring=tuple(_expiring(e) for e in body.get("expiring", [])))

    def portal_url(self, user_id: str, *, return_path: str = "/dashboard") -> str:
        """A one-time link, valid for minutes, that signs the user in to the pages."""
        body = self._request(
            "POST", f"/users/{_id(user_id)}/portal-sessions", json={"return_path": return_path}
        )
        return str(body["url"])

    # buying tokens

    def packages(self) -> list[Package]:
        """The packages on sale (tokens, bonus, price in minor units, savings, badge)."""
        return [_package(body) for body in self._request("GET", "/packages")["packages"]]

    def features(self) -> list[Feature]:
        """What the tokens buy: the features ``spend``, ``hold`` and ``check`` take, and
        their price in tokens per unit."""
        return [
            Feature(id=body["id"], name=body["name"], tokens=body["tokens"])
            for body in self._request("GET", "/features")["features"]
        ]

    def checkout(
        self,
        user_id: str,
        package_id: str,
        *,
        success_url: str | None = None,
        cancel_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Checkout:
        """Start a purchase on Stripe Checkout: send the user's browser to ``url``. A lost
        answer is retried under the same idempotency key (one is made up when you pass
        none), so it returns the same purchase and session, never a second one."""
        body = {
            "package_id": package_id,
            "success_url": success_url,
            "cancel_url": cancel_url,
            "idempotency_key": idempotency_key or _new_key("checkout"),
        }
        answer = self._request("POST", f"/users/{_id(user_id)}/checkout-sessions", json=body)
        return Checkout(**{name: answer[name] for name in Checkout.__slots__})

    def subscribe(
        self,
        user_id: str,
        plan_id: str,
        *,
        interval: str = "month",
        success_url: str | None = None,
        cancel_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> SubscriptionCheckout:
        """Start a subscription on Stripe Checkout: send the user's browser to ``url``.
        Raises ``SubscriptionExists`` when the user has one (change its plan instead)."""
        body = {
            "plan_id": plan_id,
            "interval": interval,
            "success_url": success_url,
            "cancel_url": cancel_url,
            "idempotency_key": idempotency_key or _new_key("subscribe"),
        }
        answer = self._request("POST", f"/users/{_id(user_id)}/subscriptions", json=body)
        return SubscriptionCheckout(
            **{name: answer[name] for name in SubscriptionCheckout.__slots__}
        )

    def subscription(self, user_id: str) -> Subscription:
        """The user's subscription (the current one, else the last that ended); raises
        ``NoSubscription`` when there is none."""
        return _subscription(self._request("GET", f"/users/{_id(user_id)}/subscription"))

    def cancel_subscription(self, user_id: str) -> Subscription:
        """Cancel at the end of the period paid for (asking again changes nothing)."""
        path = f"/users/{_id(user_id)}/subscription/cancel"
        return _subscription(self._request("POST", path))

    def change_subscription(
        self, user_id: str, plan_id: str, *, interval: str = "month"
    ) -> Subscription:
        """Switch plan or interval with Stripe's proration (docs/stripe.md, "Plans")."""
        body = {"plan_id": plan_id, "interval": interval}
        path = f"/users/{_id(user_id)}/subscription/change"
        return _subscription(self._request("POST", path, json=body))

    def purchase(self, purchase_id: int) -> Purchase:
        """A purchase and its status: pending, paid, failed, expired or canceled."""
        return _purchase(self._request("GET", f"/purchases/{int(purchase_id)}"))

    # tokens

    def spend(
        self,
        user_id: str,
        amount: int | None = None,
        *,
        feature: str | None = None,
        quantity: int | None = None,
        idempotency_key: str | None = None,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Receipt:
        """Spend now: ``amount`` tokens, or ``quantity`` units (default 1) of ``feature``,
        which the server prices from its catalog. ``InsufficientTokens`` when the user has
        too few, ``UnknownFeature`` for a feature the catalog does not price (nothing is
        spent either way)."""
        body = {
            "amount": amount,
            "feature": feature,
            "quantity": quantity,
            "idempotency_key": idempotency_key or _new_key("spend"),
            "description": description,
            "metadata": metadata,
        }
        return _receipt(self._request("POST", f"/users/{_id(user_id)}/spend", json=body))

    def grant(
        self,
        user_id: str,
        amount: int,
        *,
        reason: str,
        idempotency_key: str | None = None,
        expires_in_days: int | None = None,
        source: str = "admin",
    ) -> Receipt:
        """Give free tokens (the key needs the ``admin`` scope): an operator's (``admin``)
        or a promotion's (``promo``), usable for ``expires_in_days`` days (None: for good).
        Expiring tokens are used before others (docs/grants.md)."""
        body: dict[str, Any] = {
            "amount": amount,
            "reason": reason,
            "idempotency_key": idempotency_key or _new_key("grant"),
            "source": source,
        }
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        return _receipt(self._request("POST", f"/users/{_id(user_id)}/grants", json=body))

    def refund(
        self,
        transfer_id: int,
        *,
        amount: int | None = None,
        idempotency_key: str | None = None,
        reason: str | None = None,
    ) -> Receipt:
        """Give back all (no ``amount``) or part of a spend."""
        body = {
            "amount": amount,
            "idempotency_key": idempotency_key or _new_key("refund"),
            "reason": reason,
        }
        return _receipt(self._request("POST", f"/transfers/{transfer_id}/refund", json=body))

    def hold(
        self,
        user_id: str,
        amount: int | None = None,
        *,
        feature: str | None = None,
        quantity: int | None = None,
        idempotency_key: str | None = None,
        ttl_seconds: int | None = None,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Hold:
        """A hold to use as a context manager (see ``Hold``): of ``amount`` tokens, or of
        what ``quantity`` units (default 1) of ``feature`` cost at the server's prices."""
        key = idempotency_key or _new_key("hold")
        body = {
            "amount": amount,
            "feature": feature,
            "quantity": quantity,
            "idempotency_key": key,
            "ttl_seconds": ttl_seconds,
            "description": description,
            "metadata": metadata,
        }
        return Hold(self, user_id, amount, key, body)

    def check(
        self,
        user_id: str,
        *,
        feature: str | None = None,
        quantity: int | None = None,
        amount: int | None = None,
    ) -> Entitlement:
        """Whether the user could spend ``amount`` tokens, or ``quantity`` units of
        ``feature``, now: the cost, what is available and missing, where to buy more.
        Changes nothing; it is advice (to grey out a button), and the spend or hold that
        follows is what decides."""
        body = {"amount": amount, "feature": feature, "quantity": quantity}
        return _entitlement(self._request("POST", f"/users/{_id(user_id)}/check", json=body))

    # history

    def history(
        self,
        user_id: str,
        *,
        kinds: Sequence[str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> HistoryPage:
        """One page of the wallet's transfers, newest first; pass ``next_cursor`` back for
        older ones."""
        params: list[tuple[str, str | int | float | bool | None]] = [("limit", limit)]
        params += [("kind", kind) for kind in kinds or ()]
        if cursor is not None:
            params.append(("cursor", cursor))
        body = self._request("GET", f"/users/{_id(user_id)}/history", params=params)
        return HistoryPage(
            items=[_transfer(item) for item in body["items"]],
            next_cursor=body["next_cursor"],
        )

    def iter_history(
        self, user_id: str, *, kinds: Sequence[str] | None = None, page_size: int = 200
    ) -> Iterator[Transfer]:
        """Every transfer of the wallet, newest first, fetched page by page."""
        cursor: str | None = None
        while True:
            page = self.history(user_id, kinds=kinds, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # plumbing

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: list[tuple[str, str | int | float | bool | None]] | None = None,
        retry: bool = True,
    ) -> dict[str, Any]:
        """``retry``: False for calls that are not idempotent (a repeat makes a second one)."""
        if json is not None:
            json = {key: value for key, value in json.items() if value is not None}
        retries = self._retries if retry else 0
        for attempt in range(retries + 1):
            try:
                response = self._http.request(
                    method, self._base + path, json=json, params=params, headers=self._headers
                )
            except httpx.TransportError as exc:
                if attempt == retries:
                    raise ServiceUnavailable(
                        503, "unreachable", f"{self._base} did not answer: {exc!r}", {}
                    ) from exc
            else:
                if response.status_code not in RETRY_STATUSES or attempt == retries:
                    return _answer(response)
                wait = response.headers.get("retry-after", "")
                if (
                    wait.isascii() and wait.isdigit()
                ):  # the service says when: as long as that, up to 5 s
                    time.sleep(min(int(wait), 5))
                    continue
            time.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover


def _answer(response: httpx.Response) -> dict[str, Any]:
    if response.is_success:
        body: dict[str, Any] = response.json()
        return body
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    code = str(problem.get("code", "http_error"))
    detail = str(problem.get("detail", response.reason_phrase))
    kind = _ERRORS.get(code) or (ServiceUnavailable if response.status_code == 503 else ApiError)
    raise kind(response.status_code, code, detail, problem)


def _package(body: dict[str, Any]) -> Package:
    values = {name: body[name] for name in Package.__slots__ if name in body}
    return Package(**values | {"price_per_token": Decimal(body["price_per_token"])})


def _purchase(body: dict[str, Any]) -> Purchase:
    values = {name: body[name] for name in Purchase.__slots__}
    paid_at = body["paid_at"]
    return Purchase(
        **values
        | {
            "created_at": datetime.fromisoformat(body["created_at"]),
            "paid_at": None if paid_at is None else datetime.fromisoformat(paid_at),
        }
    )


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _subscription(body: dict[str, Any]) -> Subscription:
    allowance = body["allowance"]
    times = (
        "current_period_start",
        "current_period_end",
        "trial_end",
        "ends_at",
        "next_allowance_at",
    )
    values = {name: body[name] for name in Subscription.__slots__ if name not in times}
    return Subscription(
        **values
        | {name: _time(body[name]) for name in times}
        | {
            "allowance": Allowance(
                tokens_per_month=allowance["tokens_per_month"],
                granted=allowance["granted"],
                left=allowance["left"],
                month_ends_at=_time(allowance["month_ends_at"]),
            )
        }
    )


def _id(user_id: str) -> str:
    """A user id as one path segment, whatever characters the host app's ids use."""
    return quote(user_id, safe="")


def _new_key(kind: str) -> str:
    return f"{kind}-{uuid.uuid4()}"

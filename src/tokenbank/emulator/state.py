"""The emulator's in-memory world: objects by kind, events, idempotent replies, deliveries.

Everything runs on one asyncio loop and no handler awaits between reading and writing this
state, so plain dicts need no locks.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import httpx

from tokenbank.emulator import shapes
from tokenbank.emulator.cards import TestCard
from tokenbank.emulator.params import Params, integer, invalid, missing, text
from tokenbank.emulator.shapes import Obj

DEFAULT_RETRY_DELAYS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 60, 120)
DEFAULT_API_VERSION = "2026-10-28.endive"


@dataclass(frozen=True, kw_only=True)
class RequestOrigin:
    """The API request that caused an event (``event.request``); None for the hosted pages."""

    id: str | None = None
    idempotency_key: str | None = None


NO_ORIGIN = RequestOrigin()
current_origin: ContextVar[RequestOrigin | None] = ContextVar("current_origin", default=None)


@dataclass(kw_only=True)
class WebhookConfig:
    """Misbehaviours a test can switch on to check the receiver copes with real Stripe."""

    drop: int = 0
    duplicate: int = 1
    delay_ms: int = 0
    reorder: bool = False
    fail: int = 0


@dataclass(kw_only=True)
class Delivery:
    """How delivering one event went, across all its attempts and copies."""

    event_id: str
    type: str
    state: str = "pending"  # pending | delivered | failed | dropped | held
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    outstanding: int = 0
    copy_failed: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "type": self.type,
            "state": self.state,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }


@dataclass(kw_only=True)
class ApiFault:
    """Stripe's API misbehaving for the next ``times`` matching requests: answering
    ``status`` (500, 429...) or, with ``status`` 0, not answering for ``delay`` seconds.
    ``after``: the request is carried out first, then the answer is lost (a timeout or an
    error after Stripe did the work: the case idempotency keys exist for)."""

    method: str
    path: str  # an fnmatch pattern: "/v1/checkout/sessions*"
    status: int = 500
    delay: float = 0.0
    times: int = 1
    after: bool = False


@dataclass(frozen=True, kw_only=True)
class StoredReply:
    """A POST's reply kept under its Idempotency-Key, with what it was asked."""

    method: str
    path: str
    params: Params
    status: int
    body: Obj


@dataclass(kw_only=True)
class Emulator:
    """Settings (mutable at run time) and all state of one emulated Stripe account."""

    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    public_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS
    api_version: str = DEFAULT_API_VERSION

    products: dict[str, Obj] = field(default_factory=dict, repr=False)
    prices: dict[str, Obj] = field(default_factory=dict, repr=False)
    customers: dict[str, Obj] = field(default_factory=dict, repr=False)
    checkout_sessions: dict[str, Obj] = field(default_factory=dict, repr=False)
    line_items: dict[str, list[Obj]] = field(default_factory=dict, repr=False)
    payment_intents: dict[str, Obj] = field(default_factory=dict, repr=False)
    payment_methods: dict[str, Obj] = field(default_factory=dict, repr=False)
    charges: dict[str, Obj] = field(default_factory=dict, repr=False)
    refunds: dict[str, Obj] = field(default_factory=dict, repr=False)
    disputes: dict[str, Obj] = field(default_factory=dict, repr=False)
    events: dict[str, Obj] = field(default_factory=dict, repr=False)
    portal_sessions: dict[str, Obj] = field(default_factory=dict, repr=False)
    subscriptions: dict[str, Obj] = field(default_factory=dict, repr=False)
    invoices: dict[str, Obj] = field(default_factory=dict, repr=False)
    invoice_payments: dict[str, Obj] = field(default_factory=dict, repr=False)
    test_clocks: dict[str, Obj] = field(default_factory=dict, repr=False)
    # Each subscription-mode Checkout Session's subscription_data, used when it is paid.
    subscription_data: dict[str, Params] = field(default_factory=dict, repr=False)
    # Inline products and prices (from price_data), which Stripe never lists.
    hidden: set[str] = field(default_factory=set, repr=False)
    # The test card behind each payment method id.
    cards: dict[str, TestCard] = field(default_factory=dict, repr=False)
    # Each Checkout Session's payment_intent_data, used when its PaymentIntent is created.
    intent_data: dict[str, Params] = field(default_factory=dict, repr=False)
    # What the customer typed on a Checkout page whose payment waits on their authentication,
    # recorded on the session once they complete it.
    payers: dict[str, Params] = field(default_factory=dict, repr=False)
    replies: dict[str, StoredReply] = field(default_factory=dict, repr=False)

    api_faults: list[ApiFault] = field(default_factory=list, repr=False)
    #: How long after it was made a refund of a ``refund_fails`` card fails.
    refund_failure_delay: float = 0.5
    webhook_config: WebhookConfig = field(default_factory=WebhookConfig, repr=False)
    deliveries: dict[str, Delivery] = field(default_factory=dict, repr=False)
    held: list[str] = field(default_factory=list, repr=False)
    queue: asyncio.Queue[list[str]] | None = field(default=None, repr=False)
    tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    http: httpx.AsyncClient | None = field(default=None, repr=False)


_STORES = {
    "prod": "products",
    "price": "prices",
    "cus": "customers",
    "cs": "checkout_sessions",
    "pi": "payment_intents",
    "pm": "payment_methods",
    "ch": "charges",
    "re": "refunds",
    "dp": "disputes",
    "evt": "events",
    "bps": "portal_sessions",
    "sub": "subscriptions",
    "in": "invoices",
    "inpay": "invoice_payments",
    "clock": "test_clocks",
}


def stores() -> tuple[str, ...]:
    """The names of the emulator's object stores (``products``, ``prices``...)."""
    return tuple(_STORES.values())


def clear(em: Emulator) -> None:
    """Forget every object, event and idempotent reply (deliveries are stopped elsewhere)."""
    for name in {
        *_STORES.values(),
        "line_items",
        "cards",
        "intent_data",
        "payers",
        "subscription_data",
    }:
        getattr(em, name).clear()
    shapes.CLOCK.offset = 0
    em.hidden.clear()
    em.replies.clear()
    em.deliveries.clear()
    em.held.clear()
    em.api_faults.clear()
    em.webhook_config = WebhookConfig()


def lookup(em: Emulator, id: str) -> Obj | None:
    """Any stored object by id, found through its prefix."""
    store = _STORES.get(id.split("_", 1)[0])
    found: Obj | None = getattr(em, store).get(id) if store else None
    return found


def get(store: dict[str, Obj], id: str, *, kind: str, param: str | None = None) -> Obj:
    """An object from ``store`` or Stripe's "No such ..." (404; 400 when a parameter named it)."""
    found = store.get(id)
    if found is None:
        raise missing(kind, id, param=param)
    return found


def expand(em: Emulator, obj: Obj, paths: list[str]) -> Obj:
    """A copy of ``obj`` with the ids at ``paths`` (dotted; ``data.`` in lists) made objects."""
    result = copy.deepcopy(obj)
    for path in paths:
        _expand_path(em, result, path.split("."), path)
    return result


def _expand_path(em: Emulator, node: Obj, parts: list[str], path: str) -> None:
    head, rest = parts[0], parts[1:]
    if node.get("object") == "list" and head == "data":
        for item in node["data"]:
            if rest:
                _expand_path(em, item, rest, path)
        return
    if head == "line_items" and node.get("object") == "checkout.session":
        items = em.line_items.get(node["id"], [])
        node["line_items"] = {
            "object": "list",
            "data": copy.deepcopy(items),
            "has_more": False,
            "url": f"/v1/checkout/sessions/{node['id']}/line_items",
        }
    elif head not in node:
        raise invalid(f"This property cannot be expanded ({path}).", param="expand")
    value = node[head]
    if isinstance(value, str):
        target = lookup(em, value)
        if target is None:
            raise invalid(f"This property cannot be expanded ({path}).", param="expand")
        value = node[head] = copy.deepcopy(target)
    if rest and isinstance(value, dict):
        _expand_path(em, value, rest, path)


def created_matches(params: Params, name: str = "created") -> Callable[[Obj], bool]:
    """Stripe's range filter: ``created=N`` or ``created[gte|gt|lte|lt]=N``."""
    raw = params.get(name)
    if raw is None or raw == "":
        return lambda obj: True
    if isinstance(raw, str):
        exact = integer(params, name)
        return lambda obj: obj[name] == exact
    if not isinstance(raw, dict) or not set(raw) <= {"gte", "gt", "lte", "lt"}:
        raise invalid(f"Invalid {name} filter.", param=name)
    bounds = {op: integer(raw, op) for op in raw}

    def matches(obj: Obj) -> bool:
        value = obj[name]
        return all(
            bound is None
            or (op == "gte" and value >= bound)
            or (op == "gt" and value > bound)
            or (op == "lte" and value <= bound)
            or (op == "lt" and value < bound)
            for op, bound in bounds.items()
        )

    return matches


def page(em: Emulator, items: list[Obj], params: Params, *, url: str) -> Obj:
    """One page of a list, newest first, with Stripe's cursor and ``expand`` rules."""
    limit = integer(params, "limit", minimum=1)
    if limit is None:
        limit = 10
    if limit > 100:
        raise invalid("This value must be less than or equal to 100.", param="limit")
    newest_first = list(reversed(items))
    ids = [obj["id"] for obj in newest_first]
    after, before = text(params, "starting_after"), text(params, "ending_before")
    if after is not None and before is not None:
        raise invalid(
            "You may only specify one of these parameters: ending_before, starting_after."
        )
    if after is not None:
        start = _position(ids, after, "starting_after") + 1
        chosen = newest_first[start : start + limit]
        has_more = start + limit < len(newest_first)
    elif before is not None:
        end = _position(ids, before, "ending_before")
        chosen = newest_first[max(0, end - limit) : end]
        has_more = end - limit > 0
    else:
        chosen = newest_first[:limit]
        has_more = limit < len(newest_first)
    paths = [p.removeprefix("data.") for p in _expand_paths(params) if p.startswith("data.")]
    return {
        "object": "list",
        "data": [expand(em, obj, paths) for obj in chosen],
        "has_more": has_more,
        "url": url,
    }


def _position(ids: list[str], id: str, param: str) -> int:
    try:
        return ids.index(id)
    except ValueError:
        raise invalid(f"No such object: '{id}'", param=param, code="resource_missing") from None


def _expand_paths(params: Params) -> list[str]:
    raw = params.get("expand")
    if raw is None or raw == "":
        return []
    values = [raw] if isinstance(raw, str) else list(raw.values() if isinstance(raw, dict) else raw)
    if not all(isinstance(v, str) for v in values):
        raise invalid("Invalid array: expand", param="expand")
    return values


def render(em: Emulator, obj: Obj, params: Params) -> Obj:
    """An object as the API returns it: expanded as asked, never the stored dict itself."""
    return expand(em, obj, _expand_paths(params))


def listed(store: dict[str, Obj], em: Emulator) -> list[Obj]:
    """A store's objects oldest first, leaving out inline ones Stripe never lists."""
    return [obj for id, obj in store.items() if id not in em.hidden]

"""Test controls under /_emulator/: things real Stripe does on its own schedule (a customer
paying, a bank opening a dispute, webhooks misbehaving), triggered on demand. JSON, no auth."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tokenbank.emulator import billing, events, payments
from tokenbank.emulator.cards import BY_METHOD, BY_NUMBER, UNKNOWN_CARD_MESSAGE
from tokenbank.emulator.params import Params, StripeError, integer, invalid, text
from tokenbank.emulator.state import ApiFault, Emulator, WebhookConfig, clear, get, render

Handler = Callable[[Emulator, Params, dict[str, Any]], Awaitable[Any]]


def _control(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        em: Emulator = request.app.state.emulator
        try:
            raw = await request.body()
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise invalid("The body must be a JSON object.")
            result = await handler(em, body, dict(request.path_params))
        except json.JSONDecodeError:
            return JSONResponse(invalid("The body is not valid JSON.").body(), status_code=400)
        except StripeError as error:
            return JSONResponse(error.body(), status_code=error.status)
        return JSONResponse(result)

    return handle


def _as_text(body: Params, name: str) -> Params:
    """JSON numbers and booleans as the strings the parameter readers expect."""
    value = body.get(name)
    if isinstance(value, bool):
        return {name: "true" if value else "false"}
    if isinstance(value, int | float):
        return {name: str(int(value))}
    return {name: value} if isinstance(value, str) else {}


async def pay_session(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    session = get(em.checkout_sessions, path["id"], kind="checkout.session")
    raw = text(body, "card") or "4242424242424242"
    card = BY_METHOD.get(raw) or BY_NUMBER.get(re.sub(r"[\s-]", "", raw))
    if card is None:
        raise invalid(UNKNOWN_CARD_MESSAGE, param="card")
    intent = payments.pay_session(
        em,
        session,
        card=card,
        email=text(body, "email"),
        name=text(body, "name"),
        async_outcome=text(body, "async"),
        authentication=text(body, "authenticate"),
    )
    if intent is None:  # a subscription-mode session
        return {
            "checkout_session": render(em, session, {}),
            "subscription": render(em, em.subscriptions[session["subscription"]], {}),
        }
    failure = intent["last_payment_error"] or {}
    if failure.get("code") == payments.AUTHENTICATION_FAILURE:
        # Not paid, like a decline: the same 402, the session still open for another card.
        raise StripeError(
            status=402,
            code=payments.AUTHENTICATION_FAILURE,
            message=failure["message"],
            extra={"payment_intent": render(em, intent, {})},
        )
    return {
        "checkout_session": render(em, session, {}),
        "payment_intent": render(em, intent, {}),
    }


async def authenticate(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    """The customer answers a PaymentIntent's 3D Secure challenge, as on its page."""
    intent = get(em.payment_intents, path["id"], kind="payment_intent")
    outcome = text(body, "outcome")
    if outcome not in {"complete", "fail"}:
        raise invalid('outcome must be "complete" or "fail".', param="outcome")
    payments.authenticate(em, intent, completed=outcome == "complete")
    session = payments.session_paid_by(em, intent)
    return {
        "payment_intent": render(em, intent, {}),
        "checkout_session": render(em, session, {}) if session is not None else None,
    }


async def create_dispute(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    target = payments.refundable_charge(
        em, charge_id=text(body, "charge"), intent_id=text(body, "payment_intent")
    )
    amount = integer(_as_text(body, "amount"), "amount", minimum=1)
    reason = text(body, "reason") or "fraudulent"
    inquiry = body.get("inquiry") in (True, "true")
    dispute = payments.open_dispute(em, target, amount=amount, reason=reason, inquiry=inquiry)
    return render(em, dispute, {})


async def close_dispute(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    dispute = get(em.disputes, path["id"], kind="dispute")
    status = text(body, "status") or ""
    return render(em, payments.close_dispute(em, dispute, status=status), {})


async def fail_refund(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    refunded = get(em.refunds, path["id"], kind="refund")
    return render(em, payments.fail_refund(em, refunded), {})


async def set_api_faults(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    """Stripe's API misbehaving: ``{"faults": [{"method": "POST", "path":
    "/v1/checkout/sessions", "status": 500, "times": 1, "after": false, "delay": 0}]}``
    replaces the list (``[]`` clears it)."""
    raw = body.get("faults")
    if not isinstance(raw, list):
        raise invalid("faults must be a list.", param="faults")
    faults = []
    for item in raw:
        if not isinstance(item, dict):
            raise invalid("each fault must be an object.", param="faults")
        try:
            faults.append(
                ApiFault(
                    method=str(item.get("method", "*")).upper(),
                    path=str(item["path"]),
                    status=int(item.get("status", 500)),
                    delay=float(item.get("delay", 0)),
                    times=int(item.get("times", 1)),
                    after=bool(item.get("after", False)),
                )
            )
        except (KeyError, TypeError, ValueError):
            raise invalid("a fault needs a path, and numbers where numbers go.") from None
    em.api_faults = faults
    return {"faults": [vars(f) for f in em.api_faults]}


def _config(em: Emulator) -> Params:
    config = em.webhook_config
    return {
        "url": em.webhook_url,
        "secret": em.webhook_secret,
        "drop": config.drop,
        "duplicate": config.duplicate,
        "delay_ms": config.delay_ms,
        "reorder": config.reorder,
        "fail": config.fail,
        "retry_delays": list(em.retry_delays),
        "held": len(em.held),
    }


async def show_config(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    return _config(em)


async def update_config(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    config = em.webhook_config
    for name in ("drop", "duplicate", "delay_ms", "fail"):
        if name in body:
            value = body[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise invalid(f"{name} must be a non-negative integer.", param=name)
            setattr(config, name, value)
    if "reorder" in body:
        if not isinstance(body["reorder"], bool):
            raise invalid("reorder must be true or false.", param="reorder")
        config.reorder = body["reorder"]
    for name, attribute in (("url", "webhook_url"), ("secret", "webhook_secret")):
        if name in body:
            value = body[name]
            if value is not None and not isinstance(value, str):
                raise invalid(f"{name} must be a string or null.", param=name)
            setattr(em, attribute, value or None)
    return _config(em)


async def flush(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    return {"flushed": events.flush(em)}


async def redeliver(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    event = get(em.events, path["id"], kind="event")
    return events.redeliver(em, event).public()


async def deliveries(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    return [record.public() for record in em.deliveries.values()]


async def reset(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    await events.stop(em)
    clear(em)
    em.webhook_config = WebhookConfig()
    return {"ok": True}


async def health(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    return {"ok": True}


async def advance_clock(em: Emulator, body: Params, path: dict[str, Any]) -> Any:
    """Move the account's time forward ``seconds``, renewing (or failing to renew) every
    subscription whose period ends on the way, with their invoices and events."""
    seconds = integer(_as_text(body, "seconds"), "seconds", minimum=1)
    if seconds is None:
        raise invalid("seconds must be a whole number >= 1.", param="seconds")
    return {"now": billing.advance(em, seconds)}


def routes() -> list[BaseRoute]:
    table: list[tuple[str, Handler, str]] = [
        ("/_emulator/checkout_sessions/{id}/pay", pay_session, "POST"),
        ("/_emulator/payment_intents/{id}/authenticate", authenticate, "POST"),
        ("/_emulator/disputes", create_dispute, "POST"),
        ("/_emulator/disputes/{id}/close", close_dispute, "POST"),
        ("/_emulator/refunds/{id}/fail", fail_refund, "POST"),
        ("/_emulator/api_faults", set_api_faults, "POST"),
        ("/_emulator/webhooks/config", show_config, "GET"),
        ("/_emulator/webhooks/config", update_config, "POST"),
        ("/_emulator/webhooks/flush", flush, "POST"),
        ("/_emulator/webhooks/deliveries", deliveries, "GET"),
        ("/_emulator/events/{id}/redeliver", redeliver, "POST"),
        ("/_emulator/clock/advance", advance_clock, "POST"),
        ("/_emulator/reset", reset, "POST"),
        ("/_emulator/health", health, "GET"),
    ]
    return [Route(path, _control(handler), methods=[method]) for path, handler, method in table]

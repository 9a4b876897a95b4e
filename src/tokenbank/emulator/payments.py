"""Money movement: payment intents and their charges, Checkout payment, refunds, disputes.

Each function changes the stored objects the way Stripe would and emits the events Stripe
sends, in Stripe's order. A declined card raises a 402 ``StripeError`` after recording the
failed charge, so the state change survives the error reply. A card whose bank asks for
authentication is not charged when confirmed: the PaymentIntent waits in ``requires_action``
until its holder answers the challenge (``authenticate``).
"""

from __future__ import annotations

import asyncio
import copy

from tokenbank.emulator import billing, shapes
from tokenbank.emulator.cards import BY_METHOD, TestCard
from tokenbank.emulator.events import emit
from tokenbank.emulator.params import Params, StripeError, invalid, missing
from tokenbank.emulator.shapes import Obj
from tokenbank.emulator.state import Emulator, current_origin, render

CONFIRMABLE = {"requires_payment_method", "requires_confirmation", "requires_action"}
AUTHENTICATION_FAILURE = "payment_intent_authentication_failure"
#: What Stripe records on the PaymentIntent when its holder fails the challenge.
AUTHENTICATION_FAILED = (
    "The provided PaymentMethod has failed authentication. You can provide "
    "payment_method_data or a new PaymentMethod to attempt to fulfill this PaymentIntent again."
)
#: What Checkout and Stripe.js tell the customer then (the API's words are for developers).
AUTHENTICATION_FAILED_FOR_CUSTOMER = (
    "We are unable to authenticate your payment method. "
    "Please choose a different payment method and try again."
)


def create_payment_intent(
    em: Emulator,
    *,
    amount: int,
    currency: str,
    customer: str | None = None,
    description: str | None = None,
    metadata: Obj | None = None,
    payment_method_types: list[str] | None = None,
    automatic_payment_methods: bool = False,
    receipt_email: str | None = None,
) -> Obj:
    intent = shapes.payment_intent(
        amount=amount,
        currency=currency,
        customer=customer,
        description=description,
        metadata=metadata or {},
        payment_method_types=payment_method_types or ["card"],
        automatic_payment_methods=automatic_payment_methods,
        receipt_email=receipt_email,
    )
    em.payment_intents[intent["id"]] = intent
    emit(em, "payment_intent.created", intent)
    return intent


def attach_payment_method(em: Emulator, intent: Obj, *, payment_method: str) -> None:
    """Set the PaymentIntent's method from a ``pm_card_*`` test token or a stored ``pm_`` id."""
    if payment_method in em.cards:
        intent["payment_method"] = payment_method
    else:
        card = BY_METHOD.get(payment_method)
        if card is None:
            raise missing("PaymentMethod", payment_method, param="payment_method")
        method = shapes.payment_method(card=card, customer=intent["customer"])
        em.payment_methods[method["id"]] = method
        em.cards[method["id"]] = card
        intent["payment_method"] = method["id"]
    if intent["status"] in {"requires_payment_method", "requires_action"}:
        intent.update(status="requires_confirmation", next_action=None)


def confirm(em: Emulator, intent: Obj, *, payment_method: str | None, public_url: str) -> Obj:
    """Confirm with a card: it succeeds at once, is declined (402, intent reusable), or waits
    for its holder to authenticate (``public_url``: where the challenge page is served)."""
    if intent["status"] not in CONFIRMABLE:
        raise invalid(
            f"You cannot confirm this PaymentIntent because it has a status of {intent['status']}.",
            code="payment_intent_unexpected_state",
        )
    if payment_method:
        attach_payment_method(em, intent, payment_method=payment_method)
    if intent["payment_method"] is None:
        raise invalid(
            "You cannot confirm this PaymentIntent because it's missing a payment method. "
            "Update it with a payment_method, or confirm it with one.",
            code="payment_intent_unexpected_state",
        )
    card = em.cards[intent["payment_method"]]
    if card.authentication_required:
        return _require_authentication(em, intent, public_url=public_url)
    return charge(em, intent, card=card, raise_decline=True)


def _require_authentication(em: Emulator, intent: Obj, *, public_url: str) -> Obj:
    intent.update(
        status="requires_action",
        next_action=shapes.three_d_secure_action(intent_id=intent["id"], public_url=public_url),
        last_payment_error=None,
    )
    emit(em, "payment_intent.requires_action", intent)
    return intent


def authenticate(em: Emulator, intent: Obj, *, completed: bool) -> Obj:
    """The customer answers the bank's challenge. Completed, the card is charged, and a
    Checkout Session waiting on it completes; failed, nothing is charged and the
    PaymentIntent wants another payment method, as after a decline."""
    session = session_paid_by(em, intent)
    if session is not None:
        refresh_session(em, session)  # a page past its lifetime has canceled the intent
    if intent["status"] != "requires_action":
        raise invalid(
            "This PaymentIntent has no authentication to answer: its status is "
            f"{intent['status']}.",
            code="payment_intent_unexpected_state",
        )
    method = em.payment_methods[intent["payment_method"]]
    intent["next_action"] = None
    if completed:
        charge(
            em,
            intent,
            card=em.cards[method["id"]],
            raise_decline=False,
            three_d_secure=shapes.three_d_secure_result(),
        )
        if session is not None and session["status"] == "open":
            payer = em.payers.pop(session["id"], {})
            _complete(em, session, email=payer.get("email"), name=payer.get("name"), paid=True)
        return intent
    failure = StripeError(
        status=402, code=AUTHENTICATION_FAILURE, message=AUTHENTICATION_FAILED
    ).body()["error"]
    intent.update(
        status="requires_payment_method",
        payment_method=None,
        last_payment_error={**failure, "payment_method": copy.deepcopy(method)},
    )
    emit(em, "payment_intent.payment_failed", intent)
    return intent


def session_paid_by(em: Emulator, intent: Obj) -> Obj | None:
    """The Checkout Session a PaymentIntent was made for, if any."""
    for session in em.checkout_sessions.values():
        if session["payment_intent"] == intent["id"]:
            return session
    return None


def charge(
    em: Emulator,
    intent: Obj,
    *,
    card: TestCard,
    raise_decline: bool,
    three_d_secure: Obj | None = None,
) -> Obj:
    """Create the charge for a confirmed intent and settle the intent from its outcome."""
    method = em.payment_methods[intent["payment_method"]]
    created = shapes.charge(intent=intent, method=method, card=card, three_d_secure=three_d_secure)
    em.charges[created["id"]] = created
    intent["latest_charge"] = created["id"]
    if not card.declined:
        intent.update(
            status="succeeded",
            amount_received=intent["amount"],
            last_payment_error=None,
            processing=None,
        )
        emit(em, "charge.succeeded", created)
        emit(em, "payment_intent.succeeded", intent)
        return intent
    error = StripeError(
        status=402,
        type="card_error",
        code=card.error_code,
        decline_code=card.decline_code,
        message=card.message,
    )
    intent.update(
        status="requires_payment_method",
        payment_method=None,
        processing=None,
        last_payment_error={
            **error.body()["error"],
            "charge": created["id"],
            "payment_method": copy.deepcopy(method),
        },
    )
    emit(em, "charge.failed", created)
    emit(em, "payment_intent.payment_failed", intent)
    if raise_decline:
        error.extra = {
            "charge": created["id"],
            "payment_intent": render(em, intent, {}),
            "payment_method": copy.deepcopy(method),
        }
        raise error
    return intent


def cancel(em: Emulator, intent: Obj, *, reason: str | None) -> Obj:
    if intent["status"] not in CONFIRMABLE | {"requires_capture"}:
        raise invalid(
            "You cannot cancel this PaymentIntent because it has a status of "
            f"{intent['status']}. Only a PaymentIntent with one of the following statuses may "
            "be canceled: requires_payment_method, requires_capture, requires_confirmation, "
            "requires_action, processing.",
            code="payment_intent_unexpected_state",
        )
    intent.update(
        status="canceled", canceled_at=shapes.now(), cancellation_reason=reason, next_action=None
    )
    emit(em, "payment_intent.canceled", intent)
    return intent


def refresh_session(em: Emulator, session: Obj) -> Obj:
    """Expire an open session whose ``expires_at`` has passed, as Stripe does in the background."""
    if session["status"] == "open" and shapes.now() >= session["expires_at"]:
        token = current_origin.set(None)  # Stripe's own doing, not the reading request's
        try:
            expire_session(em, session)
        finally:
            current_origin.reset(token)
    return session


def expire_due(em: Emulator) -> None:
    """Expire every open session past its ``expires_at``: Stripe does it on its own and
    says so (``checkout.session.expired``) whether or not anyone reads the session."""
    for session in list(em.checkout_sessions.values()):
        refresh_session(em, session)


def expire_session(em: Emulator, session: Obj) -> Obj:
    if session["status"] != "open":
        raise invalid('Only Checkout Sessions with a status in ["open"] can be expired.')
    session["status"] = "expired"
    session["url"] = None
    intent = em.payment_intents.get(session["payment_intent"] or "")
    if intent is not None and intent["status"] in CONFIRMABLE:
        cancel(em, intent, reason="automatic")
    emit(em, "checkout.session.expired", session)
    return session


def _session_intent(em: Emulator, session: Obj) -> Obj:
    """The session's PaymentIntent, created at its first payment attempt."""
    if session["payment_intent"] is not None:
        return em.payment_intents[session["payment_intent"]]
    data: Params = em.intent_data.get(session["id"], {})
    intent = create_payment_intent(
        em,
        amount=session["amount_total"],
        currency=session["currency"],
        customer=session["customer"],
        description=data.get("description"),
        metadata=dict(data.get("metadata", {})),
        payment_method_types=list(session["payment_method_types"]),
        receipt_email=data.get("receipt_email"),
    )
    session["payment_intent"] = intent["id"]
    return intent


def pay_session(
    em: Emulator,
    session: Obj,
    *,
    card: TestCard,
    email: str | None = None,
    name: str | None = None,
    async_outcome: str | None = None,
    authentication: str | None = None,
) -> Obj | None:
    """Pay an open Checkout Session as its hosted page does; returns the PaymentIntent
    (None for a subscription: ``billing.start_from_session`` made it and its invoice).

    ``async_outcome`` ("succeeded" or "failed") plays a delayed payment method: the session
    completes unpaid first, then the outcome arrives as ``checkout.session.async_payment_*``.
    A card that asks for authentication leaves the session open and its PaymentIntent in
    ``requires_action``, unless ``authentication`` ("complete" or "fail") answers the
    challenge at once, as its holder would.
    """
    if authentication not in {None, "complete", "fail"}:
        raise invalid('authenticate must be "complete" or "fail".', param="authenticate")
    if authentication is not None and not card.authentication_required:
        raise invalid(
            "authenticate is for a card that asks for authentication, such as 4000 0025 0000 3155.",
            param="authenticate",
        )
    if async_outcome is not None and card.authentication_required:
        raise invalid("A card that asks for authentication is not a delayed method.", param="async")
    refresh_session(em, session)
    if session["status"] != "open":
        raise invalid(f"This Checkout Session is no longer active (status {session['status']}).")
    if session["mode"] == "subscription":
        if async_outcome is not None or card.authentication_required:
            raise invalid("The emulator's subscriptions are paid by card at once.", param="card")
        billing.start_from_session(em, session, card=card, email=email, name=name)
        return None
    intent = _session_intent(em, session)
    if card.authentication_required:
        em.payers[session["id"]] = {"email": email, "name": name}
        intent = confirm(
            em, intent, payment_method=card.payment_method, public_url=_public_url(session)
        )
        if authentication is None:
            return intent
        return authenticate(em, intent, completed=authentication == "complete")
    if async_outcome is None or card.declined:
        intent = confirm(
            em, intent, payment_method=card.payment_method, public_url=_public_url(session)
        )
        _complete(em, session, email=email, name=name, paid=True)
        return intent
    if async_outcome not in {"succeeded", "failed"}:
        raise invalid('async must be "succeeded" or "failed".', param="async")
    attach_payment_method(em, intent, payment_method=card.payment_method)
    intent.update(status="processing", processing={"type": "card"})
    emit(em, "payment_intent.processing", intent)
    _complete(em, session, email=email, name=name, paid=False)
    if async_outcome == "succeeded":
        charge(em, intent, card=card, raise_decline=False)
        session["payment_status"] = "paid"
        emit(em, "checkout.session.async_payment_succeeded", session)
    else:
        charge(em, intent, card=BY_METHOD["pm_card_chargeDeclined"], raise_decline=False)
        emit(em, "checkout.session.async_payment_failed", session)
    return intent


def _public_url(session: Obj) -> str:
    """Where the session's own page is served (its challenge is served beside it)."""
    return str(session["url"]).removesuffix(f"/checkout/{session['id']}")


def _complete(
    em: Emulator, session: Obj, *, email: str | None, name: str | None, paid: bool
) -> None:
    session.update(
        status="complete",
        payment_status="paid" if paid else "unpaid",
        url=None,
        customer_details=shapes.customer_details(
            email=email or session["customer_email"] or _customer_email(em, session), name=name
        ),
    )
    emit(em, "checkout.session.completed", session)


def _customer_email(em: Emulator, session: Obj) -> str | None:
    customer = em.customers.get(session["customer"] or "")
    return customer["email"] if customer else None


def refundable_charge(em: Emulator, *, charge_id: str | None, intent_id: str | None) -> Obj:
    """The charge a refund or dispute is about, named directly or through its intent."""
    if charge_id is not None:
        found = em.charges.get(charge_id)
        if found is None:
            raise missing("charge", charge_id, param="charge")
        return found
    if intent_id is None:
        raise invalid(
            "One of the following params should be provided for this request: "
            "payment_intent or charge.",
            code="parameter_missing",
        )
    intent = em.payment_intents.get(intent_id)
    if intent is None:
        raise missing("payment_intent", intent_id, param="payment_intent")
    latest = em.charges.get(intent["latest_charge"] or "")
    if intent["status"] != "succeeded" or latest is None:
        raise invalid(
            f"This PaymentIntent ({intent_id}) does not have a successful charge to refund.",
            param="payment_intent",
        )
    return latest


def refund(
    em: Emulator, target: Obj, *, amount: int | None, reason: str | None, metadata: Obj
) -> Obj:
    if target["status"] != "succeeded":
        raise invalid(f"Charge {target['id']} has not succeeded; it cannot be refunded.")
    if target["disputed"] and not any(
        d["charge"] == target["id"] and d["is_charge_refundable"] for d in em.disputes.values()
    ):
        raise invalid(
            f"Charge {target['id']} has been charged back; cannot issue a refund.",
            code="charge_disputed",
        )
    remaining = target["amount"] - target["amount_refunded"]
    if remaining <= 0:
        raise invalid(
            f"Charge {target['id']} has already been refunded.", code="charge_already_refunded"
        )
    amount = remaining if amount is None else amount
    if amount <= 0:
        raise invalid("Refund amount must be positive.", param="amount")
    if amount > remaining:
        raise invalid(
            f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})",
            param="amount",
            code="amount_too_large",
        )
    if reason not in {None, "duplicate", "fraudulent", "requested_by_customer"}:
        raise invalid(f"Invalid reason: {reason}", param="reason")
    created = shapes.refund(charge=target, amount=amount, reason=reason, metadata=metadata)
    em.refunds[created["id"]] = created
    previous: Obj = {"amount_refunded": target["amount_refunded"]}
    target["amount_refunded"] += amount
    if target["amount_refunded"] == target["amount"]:
        previous["refunded"] = False
        target["refunded"] = True
    listing = target["refunds"]
    listing["data"].insert(0, copy.deepcopy(created))
    listing["total_count"] = len(listing["data"])
    emit(em, "refund.created", created)
    emit(em, "charge.refunded", target, previous_attributes=previous)
    card = em.cards.get(target["payment_method"] or "")
    if card is not None and card.refund_fails:
        asyncio.get_running_loop().call_later(
            em.refund_failure_delay, _fail_later, em, created["id"]
        )
    return created


def _fail_later(em: Emulator, refund_id: str) -> None:
    found = em.refunds.get(refund_id)
    if found is not None and found["status"] == "succeeded":
        fail_refund(em, found)


def fail_refund(em: Emulator, refunded: Obj, *, reason: str = "expired_or_canceled_card") -> Obj:
    """The bank could not return the money after all: the refund fails, the charge counts
    it as not refunded, and Stripe says so (``refund.failed``)."""
    if refunded["status"] not in {"succeeded", "pending"}:
        raise invalid(f"Refund {refunded['id']} is {refunded['status']}; it cannot fail now.")
    previous = {"status": refunded["status"]}
    refunded.update(
        status="failed",
        failure_reason=reason,
        failure_balance_transaction=shapes.new_id("txn"),
    )
    target = em.charges[refunded["charge"]]
    target["amount_refunded"] -= refunded["amount"]
    target["refunded"] = False
    for listed in target["refunds"]["data"]:
        if listed["id"] == refunded["id"]:
            listed.update(copy.deepcopy(refunded))
    emit(em, "refund.updated", refunded, previous_attributes=previous)
    emit(em, "refund.failed", refunded)
    emit(em, "charge.refund.updated", refunded, previous_attributes=previous)
    return refunded


def open_dispute(
    em: Emulator, target: Obj, *, amount: int | None, reason: str, inquiry: bool = False
) -> Obj:
    """A chargeback (funds withdrawn, no refund possible) or, with ``inquiry``, Stripe's
    early-stage inquiry: nothing withdrawn yet and the charge can still be refunded."""
    if target["status"] != "succeeded":
        raise invalid(f"Charge {target['id']} has not succeeded; it cannot be disputed.")
    if target["disputed"]:
        raise invalid(f"Charge {target['id']} is already disputed.")
    amount = target["amount"] if amount is None else amount
    if not 0 < amount <= target["amount"]:
        raise invalid("The dispute amount must be between 1 and the charge amount.", param="amount")
    created = shapes.dispute(charge=target, amount=amount, reason=reason)
    em.disputes[created["id"]] = created
    target["disputed"] = True
    if inquiry:
        created["status"] = "warning_needs_response"
        created["is_charge_refundable"] = True
        created["payment_method_details"]["card"]["case_type"] = "inquiry"
        emit(em, "charge.dispute.created", created)
        return created
    emit(em, "charge.dispute.created", created)
    created["balance_transactions"].append(
        shapes.balance_transaction_stub(
            amount=-amount, currency=created["currency"], type="adjustment"
        )
    )
    emit(em, "charge.dispute.funds_withdrawn", created)
    return created


def close_dispute(em: Emulator, dispute: Obj, *, status: str) -> Obj:
    if status not in {"won", "lost"}:
        raise invalid('status must be "won" or "lost".', param="status")
    if dispute["status"] in {"won", "lost", "warning_closed"}:
        raise invalid(f"Dispute {dispute['id']} is already closed ({dispute['status']}).")
    previous = {"status": dispute["status"]}
    if dispute["status"].startswith("warning_"):  # an inquiry closes without a chargeback
        dispute["status"] = "warning_closed" if status == "won" else "lost"
        dispute["is_charge_refundable"] = False
        emit(em, "charge.dispute.closed", dispute, previous_attributes=previous)
        return dispute
    dispute["status"] = status
    dispute["is_charge_refundable"] = False
    if status == "won":
        dispute["balance_transactions"].append(
            shapes.balance_transaction_stub(
                amount=dispute["amount"], currency=dispute["currency"], type="adjustment"
            )
        )
        emit(em, "charge.dispute.funds_reinstated", dispute)
    emit(em, "charge.dispute.closed", dispute, previous_attributes=previous)
    return dispute

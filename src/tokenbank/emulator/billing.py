"""Stripe Billing in the emulator: subscriptions started from Checkout, their invoices, and
time moving forward to renew them.

A subscription-mode Checkout Session, paid, makes (or reuses) its customer, attaches the card,
creates the subscription (``incomplete``), its first invoice (``subscription_create``; $0 during
a trial) paid with that card, and moves the subscription to ``active`` or ``trialing``, with
Stripe's events in Stripe's order. Moving the clock (``advance``) plays every period boundary
that passes: a draft ``subscription_cycle`` invoice at the boundary, finalized and charged an
hour later (paid, or failed and the subscription ``past_due``); a subscription due to cancel
ends there instead (``customer.subscription.deleted``). Periods live on the items, as in the
current API version; invoices name their subscription under ``parent``.
"""

from __future__ import annotations

import calendar
import copy
from datetime import UTC, datetime

from tokenbank.emulator import payments, shapes
from tokenbank.emulator.cards import BY_METHOD, TestCard
from tokenbank.emulator.events import emit
from tokenbank.emulator.params import Params, StripeError, invalid
from tokenbank.emulator.shapes import Obj
from tokenbank.emulator.state import Emulator

#: How long a renewal invoice stays a draft before Stripe finalizes and charges it.
DRAFT_SECONDS = 3600
DAY = 86400


def period_end(start: int, interval: str, anchor: int) -> int:
    """The end of a period that starts at ``start``: a calendar month or year later, on the
    anchor's day of month where the month has it (Jan 31 renews on Feb 28, then Mar 31)."""
    begun = datetime.fromtimestamp(start, UTC)
    day = datetime.fromtimestamp(anchor, UTC).day
    months = 1 if interval == "month" else 12
    month_index = begun.month - 1 + months
    year, month = begun.year + month_index // 12, month_index % 12 + 1
    day = min(day, calendar.monthrange(year, month)[1])
    return int(begun.replace(year=year, month=month, day=day).timestamp())


def check_session_items(items: list[Obj]) -> None:
    """A subscription-mode session sells one recurring price, once."""
    if len(items) != 1 or items[0]["price"]["recurring"] is None:
        raise invalid(
            "The emulator's subscription-mode sessions take exactly one recurring price.",
            param="line_items",
        )
    if items[0]["quantity"] != 1:
        raise invalid("The emulator sells one of a plan.", param="line_items[0][quantity]")


def start_from_session(
    em: Emulator, session: Obj, *, card: TestCard, email: str | None, name: str | None
) -> Obj:
    """Pay a subscription-mode session on its hosted page; returns the subscription. A card
    that is declined leaves nothing behind but the declined charge's error (402)."""
    data: Params = em.subscription_data.get(session["id"], {})
    trial_days = int(data.get("trial_period_days") or 0)
    (item,) = em.line_items[session["id"]]
    price = copy.deepcopy(em.prices[item["price"]["id"]])
    if card.declined and not trial_days:
        raise StripeError(
            status=402,
            type="card_error",
            code=card.error_code,
            decline_code=card.decline_code,
            message=card.message,
        )
    customer = em.customers.get(session["customer"] or "")
    if customer is None:
        customer = shapes.customer(
            email=email or session["customer_email"],
            name=name,
            description=None,
            phone=None,
            metadata={},
        )
        em.customers[customer["id"]] = customer
        emit(em, "customer.created", customer)
    method = shapes.payment_method(card=card, customer=customer["id"])
    em.payment_methods[method["id"]] = method
    em.cards[method["id"]] = card
    emit(em, "payment_method.attached", method)
    now = shapes.now()
    trial_end = now + trial_days * DAY if trial_days else None
    sub = shapes.subscription(
        id=shapes.new_id("sub"),
        customer=customer["id"],
        currency=price["currency"],
        metadata=dict(data.get("metadata") or {}),
        default_payment_method=method["id"],
        trial_start=now if trial_days else None,
        trial_end=trial_end,
        description=data.get("description"),
    )
    end = trial_end or period_end(now, price["recurring"]["interval"], now)
    sub["items"]["data"].append(
        shapes.subscription_item(subscription=sub["id"], price=price, start=now, end=end)
    )
    em.subscriptions[sub["id"]] = sub
    emit(em, "customer.subscription.created", sub)
    amount = 0 if trial_days else price["unit_amount"]
    invoice = _invoice(em, sub, reason="subscription_create", amount=amount, start=now, end=end)
    _finalize(em, invoice)
    _collect(em, sub, invoice)
    previous = {"status": "incomplete"}
    sub["status"] = "trialing" if trial_days else "active"
    emit(em, "customer.subscription.updated", sub, previous_attributes=previous)
    session.update(
        status="complete",
        payment_status="no_payment_required" if amount == 0 else "paid",
        url=None,
        customer=customer["id"],
        subscription=sub["id"],
        invoice=invoice["id"],
        customer_details=shapes.customer_details(email=customer["email"], name=name),
    )
    emit(em, "checkout.session.completed", session)
    return sub


def _invoice(em: Emulator, sub: Obj, *, reason: str, amount: int, start: int, end: int) -> Obj:
    """An invoice of one line: the period bought at the item's price."""
    item = sub["items"]["data"][0]
    return _invoice_of(
        em, sub, reason=reason, lines=[(item, amount, start, end, False)], period_start=start
    )


#: One line of an invoice: the item (its price), amount, period start and end, proration.
Line = tuple[Obj, int, int, int, bool]


def _invoice_of(
    em: Emulator, sub: Obj, *, reason: str, lines: list[Line], period_start: int
) -> Obj:
    id = shapes.new_id("in")
    made = []
    for item, amount, start, end, proration in lines:
        product = em.products.get(item["price"]["product"], {})
        name = product.get("name", "Plan")
        made.append(
            shapes.invoice_line(
                invoice=id,
                subscription=sub,
                item=item,
                amount=amount,
                start=start,
                end=end,
                proration=proration,
                description=(
                    f"{'Unused time on' if amount < 0 else 'Remaining time on'} {name}"
                    if proration
                    else f"1 x {name}"
                ),
            )
        )
    customer = em.customers[sub["customer"]]
    invoice = shapes.invoice(
        id=id,
        subscription=sub,
        customer=customer,
        billing_reason=reason,
        lines=made,
        # The invoice's own period: the creation instant for the first, the period that
        # ended for a renewal (the line has the period bought).
        period_start=period_start if reason != "subscription_cycle" else _previous_start(sub),
        period_end=period_start,
    )
    if invoice["amount_due"] < 0:
        # Stripe credits the customer's balance with what an invoice owes back.
        invoice.update(amount_due=0, amount_remaining=0, total=invoice["amount_due"])
    em.invoices[id] = invoice
    sub["latest_invoice"] = id
    emit(em, "invoice.created", invoice)
    return invoice


def _previous_start(sub: Obj) -> int:
    return int(sub["items"]["data"][0]["current_period_start"])


def _finalize(em: Emulator, invoice: Obj) -> None:
    invoice["status"] = "open"
    invoice["number"] = f"EMU-{len(em.invoices):04d}"
    invoice["status_transitions"]["finalized_at"] = shapes.now()
    invoice["effective_at"] = shapes.now()
    invoice["automatically_finalizes_at"] = None
    emit(em, "invoice.finalized", invoice)


def _collect(em: Emulator, sub: Obj, invoice: Obj) -> bool:
    """Charge an open invoice with the subscription's card; True when it is paid."""
    if invoice["amount_due"] == 0:
        _paid(em, invoice)
        return True
    method_id = sub["default_payment_method"]
    card = em.cards.get(method_id or "")
    invoice["attempted"] = True
    invoice["attempt_count"] += 1
    intent = payments.create_payment_intent(
        em,
        amount=invoice["amount_due"],
        currency=invoice["currency"],
        customer=sub["customer"],
        description="Subscription renewal"
        if invoice["billing_reason"] == "subscription_cycle"
        else "Subscription creation",
    )
    payment = shapes.invoice_payment(invoice=invoice, intent=intent)
    em.invoice_payments[payment["id"]] = payment
    if method_id is not None and card is not None:
        payments.attach_payment_method(em, intent, payment_method=method_id)
        payments.charge(em, intent, card=card, raise_decline=False)
    if intent["status"] != "succeeded":
        invoice["next_payment_attempt"] = shapes.now() + 3 * DAY
        emit(em, "invoice.payment_failed", invoice)
        return False
    payment["amount_paid"] = invoice["amount_due"]
    _paid(em, invoice, payment=payment)
    return True


def _paid(em: Emulator, invoice: Obj, *, payment: Obj | None = None) -> None:
    paid_at = shapes.now()
    invoice.update(
        status="paid",
        amount_paid=invoice["amount_due"],
        amount_remaining=0,
        next_payment_attempt=None,
    )
    invoice["status_transitions"]["paid_at"] = paid_at
    if payment is not None:
        payment["status"] = "paid"
        payment["status_transitions"]["paid_at"] = paid_at
    emit(em, "invoice.paid", invoice)
    emit(em, "invoice.payment_succeeded", invoice)


def advance(em: Emulator, seconds: int) -> int:
    """Move the account's time forward ``seconds`` and play every subscription's period
    boundaries on the way, in time order; returns the new time."""
    if seconds < 1:
        raise invalid("seconds must be a whole number >= 1.", param="seconds")
    target = shapes.now() + seconds
    while True:
        due = _next_boundary(em, target)
        if due is None:
            break
        when, sub = due
        shapes.CLOCK.offset += max(0, when - shapes.now())
        _boundary(em, sub)
    shapes.CLOCK.offset += max(0, target - shapes.now())
    return shapes.now()


def _next_boundary(em: Emulator, target: int) -> tuple[int, Obj] | None:
    """The soonest thing due by ``target``: a period end, or a draft invoice to charge."""
    found: tuple[int, Obj] | None = None
    for sub in em.subscriptions.values():
        when = _due_at(em, sub)
        if when is not None and when <= target and (found is None or when < found[0]):
            found = (when, sub)
    return found


def _due_at(em: Emulator, sub: Obj) -> int | None:
    if sub["status"] in {"canceled", "incomplete", "incomplete_expired"}:
        return None
    draft = em.invoices.get(sub["latest_invoice"] or "")
    if draft is not None and draft["status"] == "draft":
        return int(draft["created"]) + DRAFT_SECONDS
    end = int(sub["items"]["data"][0]["current_period_end"])
    if sub["cancel_at"] is not None and int(sub["cancel_at"]) <= end:
        return int(sub["cancel_at"])
    return end


def _boundary(em: Emulator, sub: Obj) -> None:
    draft = em.invoices.get(sub["latest_invoice"] or "")
    if draft is not None and draft["status"] == "draft":
        _finalize(em, draft)
        if not _collect(em, sub, draft) and sub["status"] != "past_due":
            previous = {"status": sub["status"]}
            sub["status"] = "past_due"
            emit(em, "customer.subscription.updated", sub, previous_attributes=previous)
        elif draft["status"] == "paid" and sub["status"] == "past_due":
            sub["status"] = "active"
            emit(
                em, "customer.subscription.updated", sub, previous_attributes={"status": "past_due"}
            )
        return
    if sub["cancel_at_period_end"] or sub["cancel_at"] is not None:
        end_now(em, sub)
        return
    item = sub["items"]["data"][0]
    start = int(item["current_period_end"])
    end = period_end(start, item["price"]["recurring"]["interval"], sub["billing_cycle_anchor"])
    changes: Obj = {
        "items": copy.deepcopy(sub["items"]),
        "latest_invoice": sub["latest_invoice"],
    }
    if sub["status"] == "trialing":
        changes["status"] = "trialing"
        sub["status"] = "active"
    item["current_period_start"], item["current_period_end"] = start, end
    _invoice(
        em,
        sub,
        reason="subscription_cycle",
        amount=int(item["price"]["unit_amount"]),
        start=start,
        end=end,
    )
    emit(em, "customer.subscription.updated", sub, previous_attributes=changes)


def end_now(em: Emulator, sub: Obj) -> Obj:
    """Cancel at once (a DELETE, or the end of a period due to cancel)."""
    if sub["status"] == "canceled":
        return sub
    now = shapes.now()
    sub.update(status="canceled", ended_at=now, canceled_at=sub["canceled_at"] or now)
    for invoice in em.invoices.values():
        parent = invoice["parent"]["subscription_details"] or {}
        if parent.get("subscription") == sub["id"] and invoice["status"] in {"draft", "open"}:
            invoice["status"] = "void"
            invoice["status_transitions"]["voided_at"] = now
            emit(em, "invoice.voided", invoice)
    emit(em, "customer.subscription.deleted", sub)
    return sub


def pay_invoice(em: Emulator, invoice: Obj, *, payment_method: str | None) -> Obj:
    """``POST /v1/invoices/{id}/pay``: charge an open invoice now (a customer who fixed
    their card); a subscription that was ``past_due`` is active again once it is paid."""
    if invoice["status"] == "paid":
        raise invalid("Invoice is already paid.", code="invoice_already_paid")
    if invoice["status"] != "open":
        raise invalid(
            f"You can only pay an open invoice; this one is {invoice['status']}.",
            code="invoice_not_open",
        )
    sub_id = (invoice["parent"]["subscription_details"] or {}).get("subscription")
    sub = em.subscriptions[str(sub_id)]
    if payment_method is not None:
        set_payment_method(em, sub, payment_method)
    if not _collect(em, sub, invoice):
        raise StripeError(
            status=402, type="card_error", code="card_declined", message="Your card was declined."
        )
    if sub["status"] == "past_due":
        sub["status"] = "active"
        emit(em, "customer.subscription.updated", sub, previous_attributes={"status": "past_due"})
    return invoice


def set_payment_method(em: Emulator, sub: Obj, payment_method: str) -> None:
    """Make a card the subscription's default: a stored ``pm_`` id or a ``pm_card_*`` token
    (which attaches to the customer even when its charges will fail, as 0341's do)."""
    if payment_method not in em.payment_methods:
        card = BY_METHOD.get(payment_method)
        if card is None:
            raise invalid(
                f"No such PaymentMethod: '{payment_method}'", param="default_payment_method"
            )
        method = shapes.payment_method(card=card, customer=sub["customer"])
        em.payment_methods[method["id"]] = method
        em.cards[method["id"]] = card
        emit(em, "payment_method.attached", method)
        payment_method = method["id"]
    sub["default_payment_method"] = payment_method


PRORATIONS = ("none", "always_invoice", "create_prorations")


def change_price(em: Emulator, sub: Obj, price: Obj, *, proration: str) -> Obj:
    """Switch the subscription's one item to ``price`` (``items[0][price]``), as Stripe does:

    - another interval: the period restarts now, invoiced at once (the new price, less
      the unused time of the old one unless ``proration_behavior=none``);
    - the same interval with ``always_invoice``: an invoice of two proration lines now
      (the new price's remaining time, less the old one's), paid with the card;
    - ``none``: the new price from the next renewal, nothing invoiced now.

    ``create_prorations`` within an interval (proration items waiting for the next
    invoice) is not emulated and is refused, rather than billed differently.
    A change during a trial ends nothing and charges nothing until the trial ends.
    """
    if proration not in PRORATIONS:
        raise invalid(
            f"Invalid proration_behavior: must be one of {', '.join(PRORATIONS)}",
            param="proration_behavior",
        )
    item = sub["items"]["data"][0]
    old = item["price"]
    if price["currency"] != old["currency"]:
        raise invalid("The price's currency must match the subscription's currency.", param="items")
    interval = price["recurring"]["interval"]
    moved = interval != old["recurring"]["interval"]
    if proration == "create_prorations" and not moved:
        raise invalid(
            "The emulator supports proration_behavior none and always_invoice for a change"
            " within the same interval.",
            param="proration_behavior",
        )
    previous = {"items": copy.deepcopy(sub["items"])}
    now = shapes.now()
    start, end = int(item["current_period_start"]), int(item["current_period_end"])
    unused = (end - now) / (end - start) if end > start else 0.0
    old_item = copy.deepcopy(item)
    item["price"] = copy.deepcopy(price)
    item["plan"] = shapes.plan_of(price)
    trialing = sub["status"] == "trialing"
    lines: list[Line] = []
    if moved and not trialing:
        new_end = period_end(now, interval, now)
        if proration != "none":
            credit = round(int(old["unit_amount"]) * unused)
            if credit:
                lines.append((old_item, -credit, now, end, True))
        item["current_period_start"], item["current_period_end"] = now, new_end
        sub["billing_cycle_anchor"] = now
        lines.append((item, int(price["unit_amount"]), now, new_end, False))
    elif proration == "always_invoice" and not trialing:
        lines.append((old_item, -round(int(old["unit_amount"]) * unused), now, end, True))
        lines.append((item, round(int(price["unit_amount"]) * unused), now, end, True))
    emit(em, "customer.subscription.updated", sub, previous_attributes=previous)
    if lines:
        invoice = _invoice_of(em, sub, reason="subscription_update", lines=lines, period_start=now)
        _finalize(em, invoice)
        if not _collect(em, sub, invoice) and sub["status"] != "past_due":
            before = {"status": sub["status"]}
            sub["status"] = "past_due"
            emit(em, "customer.subscription.updated", sub, previous_attributes=before)
    return sub


def update(em: Emulator, sub: Obj, params: Params) -> Obj:
    """``POST /v1/subscriptions/{id}``: schedule or undo a cancel, change the card or the
    metadata. Plan changes go through ``change_price``."""
    if sub["status"] == "canceled":
        raise invalid(
            "A canceled subscription can only update its cancellation_details and metadata."
        )
    previous: Obj = {}
    if "cancel_at_period_end" in params:
        wanted = params["cancel_at_period_end"] in (True, "true")
        if wanted != sub["cancel_at_period_end"]:
            previous["cancel_at_period_end"] = sub["cancel_at_period_end"]
            sub["cancel_at_period_end"] = wanted
            sub["canceled_at"] = shapes.now() if wanted else None
    if "cancel_at" in params:
        raw = params["cancel_at"]
        previous["cancel_at"] = sub["cancel_at"]
        if raw in ("", None):
            sub["cancel_at"] = None
        elif raw in {"max_period_end", "min_period_end"}:
            sub["cancel_at"] = sub["items"]["data"][0]["current_period_end"]
        else:
            try:
                sub["cancel_at"] = int(raw)
            except (TypeError, ValueError):
                raise invalid("Invalid integer: cancel_at", param="cancel_at") from None
    if "default_payment_method" in params:
        previous["default_payment_method"] = sub["default_payment_method"]
        set_payment_method(em, sub, str(params["default_payment_method"]))
    if "metadata" in params and isinstance(params["metadata"], dict):
        previous["metadata"] = dict(sub["metadata"])
        sub["metadata"].update(params["metadata"])
    if previous:
        emit(em, "customer.subscription.updated", sub, previous_attributes=previous)
    return sub

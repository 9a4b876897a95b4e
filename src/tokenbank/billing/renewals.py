"""Bringing a subscription in line with Stripe, and granting its tokens exactly once.

Every way news of a subscription arrives (its webhook events, ``reconcile``, the API's own
cancel and change) ends here, in the two steps purchases use:

1. ``fetch_renewal``: Stripe's current subscription, its invoices and, for a refund, the
   refunds of the payment, with no database row locked.
2. ``apply_renewal``: in one transaction, lock the subscription's row, copy Stripe's view
   forward (``subscriptions.apply_view``), then grant what each paid invoice bought and
   is not granted yet, and claw back each refund's share once.

The guards of "exactly once" are rows, not checks made before the transaction: a grant
row is unique per paid invoice and per month of a subscription, written in the same
transaction as its ledger credit, whose reserved key is unique too. So ten copies of
``invoice.paid`` at once, reordered with ``customer.subscription.updated``, grant once.

What a paid invoice grants (see docs/stripe.md, "Plans"):

- its first month (a monthly invoice's whole period; a trial's period), expiring at the
  month's end plus ``GRACE``. With ``reset``, what is left of the months before expires
  in the same step; with ``rollover``, up to the plan's cap of it stays.
- a yearly invoice grants its later months one at a time, when each begins
  (``grant_due_months``, a worker job), never twelve at once;
- an upgrade's invoice (proration lines only) grants the difference between the new
  plan's allowance and what the month already granted, for the rest of the month.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from tokenbank import ledger
from tokenbank.billing.catalog import Catalog
from tokenbank.billing.models import (
    GrantKind,
    SubscriptionStatus,
    invoice_refunds,
    subscription_grants,
    subscriptions,
)
from tokenbank.billing.plans import Interval, Plan
from tokenbank.billing.subscriptions import (
    GRACE,
    Subscription,
    apply_view,
    lock_subscription,
    plan_of,
)
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.payments.stripe import CheckoutSession, Invoice, Refund, Stripe
from tokenbank.payments.stripe import Subscription as StripeSubscription

log = structlog.get_logger("tokenbank.subscriptions")


@dataclass(frozen=True, slots=True)
class Renewal:
    """Stripe's current view of one subscription (or of the checkout that starts one)."""

    session: CheckoutSession | None = None
    subscription: StripeSubscription | None = None
    invoices: tuple[Invoice, ...] = ()
    #: Refunds of one invoice's payment, with that invoice's id.
    refunds: tuple[tuple[str, Refund], ...] = ()
    #: The plans of the invoices' lines (by price id), for an invoice of an earlier plan.
    plans: dict[str, tuple[Plan, Interval]] = field(default_factory=dict)


@dataclass
class RenewalOutcome:
    subscription: Subscription | None
    changes: list[str] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def record(self, name: str, text: str, **fields: Any) -> None:
        self.changes.append(text)
        self.events.append((name, fields))

    def log_changes(self, source: str, **context: Any) -> None:
        """One line per money event; call it once the transaction has committed."""
        if self.subscription is None:
            return
        for name, fields in self.events:
            log.info(
                name,
                subscription_id=self.subscription.id,
                user_id=self.subscription.user_id,
                source=source,
                **context,
                **fields,
            )

    def __str__(self) -> str:
        if self.subscription is None:
            return "not a tokenbank subscription"
        what = "; ".join(self.changes) if self.changes else "already up to date, nothing to do"
        return f"subscription {self.subscription.id}: {what}"


def fetch_renewal(
    stripe: Stripe,
    catalog: Catalog | None,
    *,
    subscription_id: str | None = None,
    session_id: str | None = None,
    refunds_of: tuple[str, str] | None = None,
) -> Renewal:
    """Step 1, nothing locked. ``refunds_of``: (invoice id, PaymentIntent id) of a refund."""
    session = stripe.checkout_session(session_id) if session_id else None
    subscription_id = subscription_id or (session.subscription_id if session else None)
    if subscription_id is None:
        return Renewal(session=session)
    seen = stripe.subscription(subscription_id)
    invoices = tuple(
        i for i in stripe.invoices_of(subscription_id) if i.subscription_id == subscription_id
    )
    plans: dict[str, tuple[Plan, Interval]] = {}
    if catalog is not None:
        current = plan_of(catalog, seen)
        if current is not None and seen.price is not None:
            plans[seen.price.id] = current
        for invoice in invoices:
            for line in invoice.lines:
                if line.price_id and line.price_id not in plans and invoice.status == "paid":
                    price = stripe.price(line.price_id)
                    found = catalog.plan_for_lookup_key(price.lookup_key)
                    if found is not None:
                        plans[line.price_id] = found
    refunds: tuple[tuple[str, Refund], ...] = ()
    if refunds_of is not None:
        invoice_id, intent_id = refunds_of
        refunds = tuple((invoice_id, r) for r in stripe.refunds_of(intent_id))
    return Renewal(
        session=session, subscription=seen, invoices=invoices, refunds=refunds, plans=plans
    )


def fetch_refunded_invoice(
    stripe: Stripe, catalog: Catalog | None, intent_id: str
) -> Renewal | None:
    """A refunded payment that is no purchase's may be a subscription invoice's: then its
    subscription's view, with the payment's refunds; else None."""
    invoice_id = stripe.invoice_of_payment(intent_id)
    if invoice_id is None:
        return None
    invoice = stripe.invoice(invoice_id)
    if invoice.subscription_id is None:
        return None
    return fetch_renewal(
        stripe,
        catalog,
        subscription_id=invoice.subscription_id,
        refunds_of=(invoice_id, intent_id),
    )


def _locate(conn: Connection, renewal: Renewal) -> int | None:
    """The subscription row this view is about: by Stripe's ids, or by the metadata's row
    id and reference together (a hint that must match)."""
    lookups = []
    seen, session = renewal.subscription, renewal.session
    if seen is not None:
        lookups.append(subscriptions.c.stripe_subscription_id == seen.id)
    if session is not None:
        lookups.append(subscriptions.c.checkout_session_id == session.id)
    for metadata in (seen and seen.metadata, session and session.metadata):
        row_id = (metadata or {}).get("tokenbank_subscription_id", "")
        reference = (metadata or {}).get("tokenbank_reference", "")
        if row_id.isascii() and row_id.isdigit() and reference:
            lookups.append(
                sa.and_(
                    subscriptions.c.id == int(row_id),
                    subscriptions.c.stripe_idempotency_key == reference,
                )
            )
    if not lookups:
        return None
    found = conn.execute(sa.select(subscriptions.c.id).where(sa.or_(*lookups))).scalars().all()
    return min(found) if found else None


def apply_renewal(
    conn: Connection,
    renewal: Renewal,
    *,
    catalog: Catalog | None,
    now: datetime | None = None,
) -> RenewalOutcome:
    """Step 2, in the caller's transaction (see the module docstring)."""
    now = now or utcnow()
    found = _locate(conn, renewal)
    if found is None:
        return RenewalOutcome(subscription=None)
    row = lock_subscription(conn, subscription_id=found)
    outcome = RenewalOutcome(subscription=row)
    seen = renewal.subscription
    if seen is None:
        session = renewal.session
        if (
            session is not None
            and session.status == "expired"
            and row.status is SubscriptionStatus.PENDING
        ):
            conn.execute(
                sa.update(subscriptions)
                .where(subscriptions.c.id == row.id)
                .values(status=SubscriptionStatus.EXPIRED.value, updated_at=now)
            )
            outcome.record("subscription_checkout_expired", "checkout expired unpaid")
    else:
        plan = renewal.plans.get(seen.price.id) if seen.price is not None else None
        for note in apply_view(conn, row, seen, plan=plan or plan_of(catalog, seen), now=now):
            outcome.record("subscription_updated", note, changes=note)
        row = lock_subscription(conn, subscription_id=row.id)
        for invoice in sorted(renewal.invoices, key=lambda i: (i.created, i.id)):
            if invoice.status == "paid":
                _grant_invoice(
                    conn, row, invoice=invoice, renewal=renewal, outcome=outcome, now=now
                )
        invoices = {invoice.id: invoice for invoice in renewal.invoices}
        for invoice_id, refund in renewal.refunds:
            if invoice_id in invoices:
                _claw_back(
                    conn, row, invoice=invoices[invoice_id], refund=refund, outcome=outcome, now=now
                )
    outcome.subscription = lock_subscription(conn, subscription_id=row.id)
    return outcome


def add_months(start: datetime, months: int, *, day: int) -> datetime:
    """``months`` calendar months after ``start``, on ``day`` where the month has it (as
    Stripe renews: Jan 31, Feb 28, Mar 31)."""
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    return start.replace(year=year, month=month, day=min(day, calendar.monthrange(year, month)[1]))


def _month_end(period_start: datetime, period_end: datetime, month_start: datetime) -> datetime:
    """The end of the month of a period that starts at ``month_start``."""
    months = 0
    while add_months(period_start, months, day=period_start.day) <= month_start:
        months += 1
    return min(add_months(period_start, months, day=period_start.day), period_end)


def _when(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _granted(conn: Connection, invoice_id: str) -> bool:
    return (
        conn.execute(
            sa.select(subscription_grants.c.id).where(
                subscription_grants.c.invoice_id == invoice_id,
                subscription_grants.c.kind != GrantKind.MONTH.value,
            )
        ).first()
        is not None
    )


def _grant_invoice(
    conn: Connection,
    row: Subscription,
    *,
    invoice: Invoice,
    renewal: Renewal,
    outcome: RenewalOutcome,
    now: datetime,
) -> None:
    if _granted(conn, invoice.id):
        return
    period = invoice.period
    if period is None:
        _grant_upgrade(conn, row, invoice=invoice, renewal=renewal, outcome=outcome, now=now)
        return
    line_price = next((line.price_id for line in invoice.lines if not line.proration), None)
    plan = renewal.plans.get(line_price or "")
    tokens = plan[0].tokens_per_month if plan is not None else row.tokens_per_month
    plan_id = plan[0].id if plan is not None else row.plan_id
    start, end = _when(period[0]), _when(period[1])
    if end <= start:
        return  # no service period: nothing was bought
    month_end = _month_end(start, end, start)
    grant_month(
        conn,
        row,
        kind=GrantKind.INVOICE,
        invoice_id=invoice.id,
        plan_id=plan_id,
        tokens=tokens,
        amount_paid=invoice.amount_paid,
        period=(start, end),
        month=(start, month_end),
        outcome=outcome,
        now=now,
    )


def grant_month(
    conn: Connection,
    row: Subscription,
    *,
    kind: GrantKind,
    invoice_id: str,
    plan_id: str,
    tokens: int,
    amount_paid: int,
    period: tuple[datetime, datetime],
    month: tuple[datetime, datetime],
    outcome: RenewalOutcome,
    now: datetime,
) -> None:
    """Grant one month's allowance of ``tokens`` (the caller holds the subscription's row
    lock). A month paid after it ended (a renewal paid late) still grants it, usable for
    the grace from now; a plan with no allowance records the month with nothing granted."""
    month_start, month_end = month
    exists = conn.execute(
        sa.select(subscription_grants.c.id).where(
            subscription_grants.c.subscription_id == row.id,
            subscription_grants.c.month_start == month_start,
            subscription_grants.c.kind != GrantKind.UPGRADE.value,
        )
    ).first()
    if exists is not None:
        return
    later = conn.execute(
        sa.select(sa.func.count()).where(
            subscription_grants.c.subscription_id == row.id,
            subscription_grants.c.month_start > month_start,
        )
    ).scalar_one()
    expires_at = max(month_end, now) + GRACE
    transfer_id, carried, expired, granted = None, 0, 0, tokens
    if tokens > 0:
        # A month older than one already granted (news that came late) touches nothing of
        # the months after it.
        earlier = (
            []
            if later
            else [
                t
                for (t,) in conn.execute(
                    sa.select(subscription_grants.c.transfer_id).where(
                        subscription_grants.c.subscription_id == row.id,
                        subscription_grants.c.transfer_id.is_not(None),
                        subscription_grants.c.month_start < month_start,
                    )
                )
            ]
        )
        given = ledger.grant_allowance(
            conn,
            user_id=row.user_id,
            reference=f"subscription:{row.id}:{int(month_start.timestamp())}",
            amount=tokens,
            expires_at=expires_at,
            earlier=earlier,
            keep=0 if row.unused == "reset" else row.rollover_cap,
            description=f"Plan {plan_id}: the month from {month_start:%Y-%m-%d}",
            metadata={"subscription_id": row.id, "invoice_id": invoice_id, "plan_id": plan_id},
            now=now,
        )
        transfer_id, carried, expired = given.receipt.transfer_id, given.carried, given.expired
    else:
        granted = 0
    conn.execute(
        sa.insert(subscription_grants).values(
            subscription_id=row.id,
            kind=kind.value,
            invoice_id=invoice_id,
            plan_id=plan_id,
            period_start=period[0],
            period_end=period[1],
            month_start=month_start,
            month_end=month_end,
            tokens=granted,
            monthly=tokens,
            amount_paid=amount_paid,
            carried=carried,
            expired=expired,
            transfer_id=transfer_id,
            created_at=now,
        )
    )
    note = f"granted {granted} tokens for the month from {month_start:%Y-%m-%d}"
    if carried:
        note += f", {carried} carried over"
    if expired:
        note += f", {expired} of the month before expired"
    if not granted:
        note = f"month from {month_start:%Y-%m-%d}: the plan grants no tokens"
    outcome.record(
        "subscription_granted",
        note,
        invoice_id=invoice_id,
        plan_id=plan_id,
        tokens=granted,
        carried=carried,
        expired=expired,
        month_start=month_start.isoformat(),
    )


def _grant_upgrade(
    conn: Connection,
    row: Subscription,
    *,
    invoice: Invoice,
    renewal: Renewal,
    outcome: RenewalOutcome,
    now: datetime,
) -> None:
    """An invoice of proration lines only (a plan change in the same interval): the new
    plan's allowance less what this month already granted, once, until the month ends."""
    charged = [line for line in invoice.lines if line.amount > 0]
    if not charged:
        return
    plan = renewal.plans.get(charged[0].price_id or "")
    if plan is None:
        return
    month = conn.execute(
        sa.select(subscription_grants)
        .where(
            subscription_grants.c.subscription_id == row.id,
            subscription_grants.c.kind != GrantKind.UPGRADE.value,
            subscription_grants.c.month_start <= _when(invoice.created),
        )
        .order_by(subscription_grants.c.month_start.desc())
        .limit(1)
    ).first()
    if month is None or month.month_end + GRACE <= now:
        return
    so_far = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(subscription_grants.c.tokens), 0)).where(
            subscription_grants.c.subscription_id == row.id,
            subscription_grants.c.month_start == month.month_start,
        )
    ).scalar_one()
    # The rest of the month, as Stripe prorates the charge: the difference for the share of
    # the month left when the change was invoiced.
    length = (month.month_end - month.month_start).total_seconds()
    left = max(0.0, (month.month_end - _when(invoice.created)).total_seconds())
    share = min(1.0, left / length) if length > 0 else 0.0
    difference = round((plan[0].tokens_per_month - int(so_far)) * share)
    transfer_id = None
    if difference > 0:
        given = ledger.grant_allowance(
            conn,
            user_id=row.user_id,
            reference=f"subscription:{row.id}:upgrade:{invoice.id}",
            amount=difference,
            expires_at=month.month_end + GRACE,
            keep=None,
            description=f"Upgrade to plan {plan[0].id}: {difference} more tokens this month",
            metadata={
                "subscription_id": row.id,
                "invoice_id": invoice.id,
                "plan_id": plan[0].id,
                "upgrade": True,
            },
            now=now,
        )
        transfer_id = given.receipt.transfer_id
    conn.execute(
        sa.insert(subscription_grants).values(
            subscription_id=row.id,
            kind=GrantKind.UPGRADE.value,
            invoice_id=invoice.id,
            plan_id=plan[0].id,
            period_start=month.period_start,
            period_end=month.period_end,
            month_start=month.month_start,
            month_end=month.month_end,
            tokens=max(0, difference),
            monthly=plan[0].tokens_per_month,
            amount_paid=invoice.amount_paid,
            transfer_id=transfer_id,
            created_at=now,
        )
    )
    outcome.record(
        "subscription_upgrade_granted",
        f"upgrade to {plan[0].id}: granted {max(0, difference)} more tokens this month",
        invoice_id=invoice.id,
        plan_id=plan[0].id,
        tokens=max(0, difference),
    )


def _claw_back(
    conn: Connection,
    row: Subscription,
    *,
    invoice: Invoice,
    refund: Refund,
    outcome: RenewalOutcome,
    now: datetime,
) -> None:
    """A succeeded refund of a subscription invoice takes back its share of what that
    invoice granted (shares on the cumulative amount, as for packs), once per refund."""
    if refund.status != "succeeded" or invoice.amount_paid <= 0:
        return
    if conn.execute(
        sa.select(invoice_refunds.c.id).where(invoice_refunds.c.refund_id == refund.id)
    ).first():
        return
    granted = int(
        conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(subscription_grants.c.tokens), 0)).where(
                subscription_grants.c.invoice_id == invoice.id
            )
        ).scalar_one()
    )
    earlier = int(
        conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(invoice_refunds.c.amount), 0)).where(
                invoice_refunds.c.invoice_id == invoice.id
            )
        ).scalar_one()
    )
    owed_before = int(
        conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(invoice_refunds.c.tokens), 0)).where(
                invoice_refunds.c.invoice_id == invoice.id
            )
        ).scalar_one()
    )
    refunded = min(invoice.amount_paid, earlier + refund.amount)
    owed = max(0, granted * refunded // invoice.amount_paid - owed_before)
    taken = debt = 0
    transfer_id = None
    if owed > 0:
        clawback = ledger.claw_back(
            conn,
            user_id=row.user_id,
            amount=owed,
            reference=f"refund:{refund.id}",
            description=f"Refund {refund.id} of invoice {invoice.id}",
            metadata={"subscription_id": row.id, "invoice_id": invoice.id, "refund_id": refund.id},
            now=now,
        )
        taken, debt, transfer_id = clawback.taken, clawback.debt, clawback.transfer_id
    conn.execute(
        sa.insert(invoice_refunds).values(
            refund_id=refund.id,
            subscription_id=row.id,
            invoice_id=invoice.id,
            amount=refund.amount,
            tokens=owed,
            taken=taken,
            debt=debt,
            transfer_id=transfer_id,
            created_at=now,
        )
    )
    outcome.record(
        "refund_clawed_back",
        f"refund {refund.id}: clawed back {taken} tokens" + (f", {debt} as debt" if debt else ""),
        refund_id=refund.id,
        invoice_id=invoice.id,
        refund_amount=refund.amount,
        tokens=owed,
        taken=taken,
        debt=debt,
    )


def sync_from_stripe(
    db: Database,
    stripe: Stripe,
    catalog: Catalog | None,
    *,
    subscription_id: str | None = None,
    session_id: str | None = None,
    refunds_of: tuple[str, str] | None = None,
    source: str,
) -> RenewalOutcome:
    """Both steps for one subscription; the money events are logged once it committed."""
    renewal = fetch_renewal(
        stripe,
        catalog,
        subscription_id=subscription_id,
        session_id=session_id,
        refunds_of=refunds_of,
    )
    with db.transaction() as conn:
        outcome = apply_renewal(conn, renewal, catalog=catalog)
    outcome.log_changes(source)
    return outcome


def _due(conn: Connection, now: datetime, limit: int) -> list[Any]:
    """Months of a paid period (a yearly invoice's) that have begun and are not granted:
    of a subscription that ran into that month, and whose period no later invoice replaced
    (a yearly plan switched to monthly starts a new period)."""
    later = subscription_grants.alias("later")
    newer = subscription_grants.alias("newer")
    query = (
        sa.select(
            subscription_grants.c.subscription_id,
            subscription_grants.c.invoice_id,
            subscription_grants.c.plan_id,
            subscription_grants.c.period_start,
            subscription_grants.c.period_end,
            subscription_grants.c.month_end,
            subscription_grants.c.monthly,
            subscription_grants.c.amount_paid,
        )
        .join(subscriptions, subscriptions.c.id == subscription_grants.c.subscription_id)
        .where(
            subscription_grants.c.kind != GrantKind.UPGRADE.value,
            subscription_grants.c.month_end < subscription_grants.c.period_end,
            subscription_grants.c.month_end <= now,
            sa.or_(
                subscriptions.c.ended_at.is_(None),
                subscriptions.c.ended_at > subscription_grants.c.month_end,
            ),
            ~sa.exists().where(
                later.c.subscription_id == subscription_grants.c.subscription_id,
                later.c.month_start == subscription_grants.c.month_end,
                later.c.kind != GrantKind.UPGRADE.value,
            ),
            ~sa.exists().where(
                newer.c.subscription_id == subscription_grants.c.subscription_id,
                newer.c.kind == GrantKind.INVOICE.value,
                newer.c.period_start > subscription_grants.c.period_start,
                newer.c.period_start <= subscription_grants.c.month_end,
            ),
        )
        .order_by(subscription_grants.c.subscription_id, subscription_grants.c.month_end)
        .limit(limit)
    )
    return list(conn.execute(query).all())


def grant_due_months(
    db: Database, *, now: datetime | None = None, limit: int = 500
) -> list[RenewalOutcome]:
    """The worker's job: grant each yearly invoice's next month once it has begun, once
    per (subscription, month), each month expiring or carrying the one before as a
    renewal would. A subscription several months behind (the worker was down) catches up
    month by month in one run. Returns the outcomes, logged."""
    now = now or utcnow()
    outcomes: list[RenewalOutcome] = []
    skipped: set[tuple[int, datetime]] = set()
    for _ in range(13):  # at most a year's months behind, and the one beginning now
        with db.read() as conn:
            due = [
                d for d in _due(conn, now, limit) if (d.subscription_id, d.month_end) not in skipped
            ]
        if not due:
            break
        for item in due:
            with db.transaction() as conn:
                row = lock_subscription(conn, subscription_id=item.subscription_id)
                refunded = conn.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(invoice_refunds.c.amount), 0)).where(
                        invoice_refunds.c.invoice_id == item.invoice_id
                    )
                ).scalar_one()
                if int(refunded) > 0 and int(refunded) >= item.amount_paid:
                    # Refunded in full: its remaining months are not owed.
                    skipped.add((item.subscription_id, item.month_end))
                    continue
                outcome = RenewalOutcome(subscription=row)
                start = item.month_end
                grant_month(
                    conn,
                    row,
                    kind=GrantKind.MONTH,
                    invoice_id=item.invoice_id,
                    plan_id=item.plan_id,
                    tokens=item.monthly,  # the paying plan's, whatever the plan is now
                    amount_paid=item.amount_paid,
                    period=(item.period_start, item.period_end),
                    month=(start, _month_end(item.period_start, item.period_end, start)),
                    outcome=outcome,
                    now=now,
                )
            outcome.log_changes("worker")
            outcomes.append(outcome)
    return outcomes

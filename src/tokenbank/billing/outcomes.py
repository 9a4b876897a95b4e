"""What a settle (or a review, or the reconciler) changed about a purchase: a sentence for
the operator (the webhook inbox's outcome, reconcile's report) and one structured log line
per money event.

The lines are written by whoever commits the transaction, after it commits: a line written
inside it could tell of a credit that was then rolled back. Every line carries the
purchase and user ids, ``source`` (``webhook``, ``success_page``, ``reconcile``,
``review``) and the event's own ids and integer amounts; docs/stripe.md lists them. Values
are ids, codes and numbers only, never a key, a client secret or an email, so the lines
can be shipped anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from tokenbank.billing.purchases import Purchase

#: What a money event's fields may hold.
LogValue = int | str | None

log = structlog.get_logger("tokenbank.billing")


@dataclass(frozen=True, slots=True)
class MoneyEvent:
    #: Stable, snake_case: dashboards and alerts match on it.
    name: str
    #: For people: joined into the outcome's sentence.
    text: str
    fields: dict[str, LogValue] = field(default_factory=dict)
    #: Something an operator should look at (a purchase flagged, an expiry by reconcile).
    warning: bool = False


@dataclass(slots=True)
class Outcome:
    purchase: Purchase | None
    events: list[MoneyEvent] = field(default_factory=list)
    #: Why the purchase was flagged for an admin by this settle, if it was.
    flagged: str | None = None

    @property
    def changes(self) -> list[str]:
        return [event.text for event in self.events]

    def record(self, name: str, text: str, *, warning: bool = False, **fields: LogValue) -> None:
        self.events.append(MoneyEvent(name=name, text=text, fields=fields, warning=warning))

    def log_changes(self, source: str, **context: LogValue) -> None:
        """One line per money event; call it once the transaction has committed."""
        if self.purchase is None:
            return
        for event in self.events:
            (log.warning if event.warning else log.info)(
                event.name,
                purchase_id=self.purchase.id,
                user_id=self.purchase.user_id,
                source=source,
                **context,
                **event.fields,
            )

    def __str__(self) -> str:
        if self.purchase is None:
            return "not a tokenbank payment"
        what = "; ".join(self.changes) if self.changes else "already up to date, nothing to do"
        return f"purchase {self.purchase.id}: {what}"

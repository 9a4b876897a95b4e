"""Sending what the outbox holds: claim, write, send, record; again later if it failed.

Any number of processes may send at once. A sender claims a few due rows in one short
transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, SQLite's single writer elsewhere),
setting ``claimed_until``; it then writes and sends each with no transaction open, and
records the outcome. A sender killed in between leaves its claim to lapse, and the mail is
sent again then: delivery is at least once, never zero times. Every copy carries the same
``Message-ID``, by which a mail client shows a repeat as one message.

A failure the server calls temporary (or no answer at all) is tried again after 1, 2, 4...
minutes, at most an hour apart, for ``MAX_AGE``; a refusal for good (no such mailbox) is
not. Without an SMTP server (development) a mail is "delivered" into the outbox itself,
``kept``, for the development mailbox at ``/_dev/mail``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage

import sqlalchemy as sa
import structlog

from tokenbank.columns import utcnow
from tokenbank.db import Database, unavailable
from tokenbank.mail.models import outbox
from tokenbank.mail.outbox import NEW_MAIL, Letter, letter
from tokenbank.mail.smtp import MailRejected, MailUnavailable, Smtp

log = structlog.get_logger("tokenbank.mail")

#: How long a claim lasts: longer than the SMTP conversations of one batch may take (each
#: step of one waits at most ``Smtp.timeout``).
CLAIM = timedelta(minutes=5)
#: How long a mail is tried before it is given up as failed.
MAX_AGE = timedelta(days=3)
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=1)

#: Writes a letter; None when it is no longer needed (the address was confirmed meanwhile).
Compose = Callable[[Letter], EmailMessage | None]


@dataclass(frozen=True, slots=True)
class Outcome:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    dropped: int = 0


def backoff(attempts: int) -> timedelta:
    """The wait before attempt ``attempts + 1``, with a fifth of jitter either way so
    senders that failed together do not retry together."""
    # Doubled at most 16 times (past an hour already): a mail tried all day must not
    # overflow ``timedelta``.
    doublings = min(max(attempts - 1, 0), 16)
    wait: timedelta = min(FIRST_RETRY * 2**doublings, LONGEST_RETRY)
    jitter = random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret
    return wait * jitter


@dataclass
class Sender:
    db: Database
    compose: Compose
    #: None: keep each mail in the outbox (development, no SMTP server).
    smtp: Smtp | None
    domain: str = "tokenbank.localhost"
    #: Mails claimed at a time: one by default, so that a claim covers one conversation
    #: with the server, and another sender takes the rest meanwhile.
    batch: int = 1
    _stopping: threading.Event = field(default_factory=threading.Event)
    _passing: threading.Lock = field(default_factory=threading.Lock)

    def send_due(self, *, now: datetime | None = None) -> Outcome:
        """One pass: every mail due now, in batches, until none is left (or ``stop()``
        was called: the batch in hand is finished, the rest left to the next sender).

        One pass at a time per sender: a caller asking for one while the mail thread is in
        its own (the development mailbox, before it shows what was just committed) waits
        for that pass to end, so the mail it claimed is written when the call returns."""
        totals = Outcome()
        with self._passing:
            while not self._stopping.is_set():
                claimed = self._claim(now or utcnow())
                if not claimed:
                    return totals
                for item in claimed:
                    totals = _add(totals, self._send(item, now))
        return totals

    def _claim(self, now: datetime) -> list[Letter]:
        ready = sa.and_(
            outbox.c.status == "pending",
            outbox.c.next_attempt_at <= now,
            sa.or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until <= now),
        )
        # A look first, without a write: an idle sender polls often, and on SQLite a
        # write transaction takes the one write lock.
        with self.db.read() as conn:
            if conn.execute(sa.select(outbox.c.id).where(ready).limit(1)).first() is None:
                return []
        due = (
            sa.select(outbox.c.id)
            .where(ready)
            .order_by(outbox.c.id)
            .limit(self.batch)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        with self.db.transaction() as conn:
            rows = conn.execute(
                sa.update(outbox)
                .where(outbox.c.id.in_(due))
                .values(claimed_until=now + CLAIM, attempts=outbox.c.attempts + 1)
                .returning(*outbox.c)
            ).all()
        return sorted((letter(row) for row in rows), key=lambda item: item.id)

    def _send(self, item: Letter, now: datetime | None) -> Outcome:
        try:
            message = self.compose(item)
        except Exception as exc:
            if unavailable(exc) is not None:  # the database went away: try later
                return self._later(item, f"database unavailable: {type(exc).__name__}", now)
            # A letter this process cannot write (a kind only a newer version knows, a
            # bug): tried again later, and the rest of the claimed mail goes now.
            log.exception("mail_compose_error", mail_id=item.id, kind=item.kind)
            return self._later(item, f"compose failed: {type(exc).__name__}", now)
        if message is None:
            self._record(item, status="dropped", last_error="no longer needed")
            log.info("mail_dropped", mail_id=item.id, kind=item.kind, user_id=item.user_id)
            return Outcome(dropped=1)
        message["Message-ID"] = f"<tokenbank.mail.{item.id}@{self.domain}>"
        kept = None
        try:
            if self.smtp is None:
                kept = message.as_string()
            else:
                self.smtp.deliver(message, to=item.to)
        except MailRejected as exc:
            self._record(item, status="failed", last_error=str(exc))
            log.warning("mail_failed", mail_id=item.id, kind=item.kind, error=str(exc))
            return Outcome(failed=1)
        except MailUnavailable as exc:
            return self._later(item, str(exc), now)
        self._record(
            item,
            status="sent",
            sent_at=utcnow(),
            message_id=message["Message-ID"],
            kept=kept,
            last_error=None,
        )
        log.info(
            "mail_sent",
            mail_id=item.id,
            kind=item.kind,
            user_id=item.user_id,
            attempts=item.attempts,
            kept=kept is not None,
        )
        return Outcome(sent=1)

    def _later(self, item: Letter, error: str, now: datetime | None) -> Outcome:
        # The pass's own time when it was given one: a retry planned from the clock
        # instead could fall due again within the same pass, and the pass never end.
        now = now or utcnow()
        if now - item.created_at >= MAX_AGE:
            self._record(item, status="failed", last_error=error)
            log.warning("mail_failed", mail_id=item.id, kind=item.kind, error=error)
            return Outcome(failed=1)
        retry_at = now + backoff(item.attempts)
        self._record(item, status="pending", next_attempt_at=retry_at, last_error=error)
        log.info(
            "mail_retry",
            mail_id=item.id,
            kind=item.kind,
            attempts=item.attempts,
            retry_at=retry_at.isoformat(),
            error=error,
        )
        return Outcome(retried=1)

    def _record(self, item: Letter, **values: object) -> None:
        """The outcome, if this sender's claim still stands: one that lapsed (the sender
        was too slow) belongs to whichever sender claimed the mail since, and records."""
        last_error = values.get("last_error")
        if isinstance(last_error, str):
            values["last_error"] = last_error[:500]
        with self.db.transaction() as conn:
            recorded = conn.execute(
                sa.update(outbox)
                .where(
                    outbox.c.id == item.id,
                    outbox.c.status == "pending",
                    outbox.c.claimed_until == item.claimed_until,
                )
                .values(claimed_until=None, **values)
            ).rowcount
        if not recorded:
            log.warning("mail_claim_lost", mail_id=item.id, kind=item.kind)

    # --- the loop ------------------------------------------------------------------------

    def run(self, *, poll: float = 5.0) -> None:
        """Send until ``stop()``: at once when this process commits mail, else every
        ``poll`` seconds (mail from other processes, retries that came due)."""
        while not self._stopping.is_set():
            NEW_MAIL.clear()
            try:
                self.send_due()
            except Exception as exc:
                if unavailable(exc) is None:
                    log.exception("mail_sender_error")
                else:
                    log.warning("mail_sender_waiting", error=type(exc).__name__)
            NEW_MAIL.wait(poll)

    def stop(self) -> None:
        self._stopping.set()
        NEW_MAIL.set()

    def start(self, *, poll: float = 5.0) -> threading.Thread:
        thread = threading.Thread(
            target=self.run, kwargs={"poll": poll}, name="tokenbank-mail", daemon=True
        )
        thread.start()
        return thread


def _add(a: Outcome, b: Outcome) -> Outcome:
    return Outcome(
        sent=a.sent + b.sent,
        retried=a.retried + b.retried,
        failed=a.failed + b.failed,
        dropped=a.dropped + b.dropped,
    )


def retry(db: Database, *, mail_id: int) -> bool:
    """Send a failed or dropped mail again (an operator fixed the cause)."""
    now = utcnow()
    with db.transaction() as conn:
        changed = conn.execute(
            sa.update(outbox)
            .where(outbox.c.id == mail_id, outbox.c.status.in_(("failed", "dropped")))
            .values(status="pending", next_attempt_at=now, claimed_until=None)
        ).rowcount
    if changed:
        NEW_MAIL.set()
    return bool(changed)

"""Sending the outbox over SMTP, to a real server on a socket: delivered once, tried again
after an outage, given up when refused for good or too old, dropped when no longer needed;
two senders at once share the work without sending anything twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from email.message import EmailMessage

import pytest

from tests.mail.conftest import (
    compose,
    enqueue,
    enqueue_many,
    make_sender,
    message_id,
    row,
    rows,
)
from tests.smtp import SmtpServer
from tokenbank import mail
from tokenbank.columns import utcnow
from tokenbank.db import Database, connect
from tokenbank.mail import Letter, Outcome, backoff
from tokenbank.mail.sender import CLAIM, FIRST_RETRY, LONGEST_RETRY, MAX_AGE

ALICE = "alice@example.com"


def assert_waits(moved_to: datetime, now: datetime, attempts: int) -> None:
    """``moved_to`` is ``now`` plus the backoff after ``attempts``, jitter included."""
    wait = min(FIRST_RETRY * 2 ** (attempts - 1), LONGEST_RETRY)
    assert now + wait * 0.8 <= moved_to <= now + wait * 1.2, (moved_to - now, wait)


# --- delivered once ------------------------------------------------------------------------


def test_committed_mail_is_delivered_once_with_its_message_id(
    db: Database, smtp_server: SmtpServer
) -> None:
    sender = make_sender(db, smtp_server)
    mail_id = enqueue(db, ALICE, greeting="hello")
    before = utcnow()

    assert sender.send_due() == Outcome(sent=1)

    (received,) = smtp_server.to(ALICE)
    assert received.recipients == [ALICE]
    assert received.message["Message-ID"] == message_id(mail_id)
    assert received.message["Subject"] == f"notice #{mail_id}"
    assert "{'greeting': 'hello'}" in received.text
    found = row(db, mail_id)
    assert (found.status, found.attempts, found.message_id) == ("sent", 1, message_id(mail_id))
    assert before <= found.sent_at <= utcnow()
    assert (found.claimed_until, found.last_error, found.kept) == (None, None, None)

    assert sender.send_due() == Outcome()
    assert sender.send_due(now=utcnow() + timedelta(days=30)) == Outcome()
    assert len(smtp_server.received) == 1


def test_every_due_mail_goes_in_one_pass_batch_after_batch(
    db: Database, smtp_server: SmtpServer
) -> None:
    addresses = [f"user{n}@example.com" for n in range(7)]
    ids = enqueue_many(db, addresses)
    assert make_sender(db, smtp_server, batch=3).send_due() == Outcome(sent=7)
    assert sorted(smtp_server.message_ids()) == sorted(message_id(i) for i in ids)
    assert {r.status for r in rows(db)} == {"sent"}


def test_mail_not_yet_due_waits(db: Database, smtp_server: SmtpServer) -> None:
    later = utcnow() + timedelta(minutes=5)
    mail_id = enqueue(db, ALICE, now=later)
    sender = make_sender(db, smtp_server)
    assert sender.send_due() == Outcome()
    assert sender.send_due(now=later) == Outcome(sent=1)
    assert smtp_server.message_ids() == [message_id(mail_id)]


# --- an outage -----------------------------------------------------------------------------


def test_backoff_doubles_from_a_minute_to_an_hour_with_a_fifth_of_jitter() -> None:
    # 80: about as many as three days of hourly retries make (MAX_AGE).
    expected = {0: 1, 1: 1, 2: 2, 3: 4, 4: 8, 5: 16, 6: 32, 7: 60, 8: 60, 20: 60, 80: 60, 1000: 60}
    for attempts, minutes in expected.items():
        waits = [backoff(attempts) for _ in range(200)]
        base = timedelta(minutes=minutes)
        assert all(base * 0.8 <= wait <= base * 1.2 for wait in waits), attempts
        # Jittered: not one fixed wait, and spread over both sides of the base.
        assert min(waits) < base * 0.95 and max(waits) > base * 1.05, attempts


def test_an_outage_is_waited_out_and_the_mail_arrives_once(
    db: Database, smtp_server: SmtpServer
) -> None:
    sender = make_sender(db, smtp_server)
    mail_id = enqueue(db, ALICE)

    # The server is down: nothing answers on its port.
    smtp_server.stop()
    now = utcnow()
    assert sender.send_due(now=now) == Outcome(retried=1)
    found = row(db, mail_id)
    assert (found.status, found.attempts, found.claimed_until) == ("pending", 1, None)
    assert "ConnectionRefusedError" in found.last_error
    assert_waits(found.next_attempt_at, now, attempts=1)
    # Not due again before its time.
    assert sender.send_due(now=found.next_attempt_at - timedelta(seconds=1)) == Outcome()
    assert row(db, mail_id).attempts == 1

    # Back, but answering "try again later".
    smtp_server.start()
    smtp_server.handler.defer = True
    for attempts in (2, 3, 4):
        now = found.next_attempt_at
        assert sender.send_due(now=now) == Outcome(retried=1)
        found = row(db, mail_id)
        assert (found.status, found.attempts) == ("pending", attempts)
        assert found.last_error == "recipient deferred: 451"
        assert_waits(found.next_attempt_at, now, attempts=attempts)
    assert smtp_server.received == []

    # Well again: sent at its next turn, not before, and once.
    smtp_server.handler.defer = False
    assert sender.send_due(now=found.next_attempt_at - timedelta(seconds=1)) == Outcome()
    assert sender.send_due(now=found.next_attempt_at) == Outcome(sent=1)
    assert smtp_server.message_ids() == [message_id(mail_id)]
    found = row(db, mail_id)
    assert (found.status, found.attempts, found.last_error) == ("sent", 5, None)
    assert sender.send_due(now=found.next_attempt_at + timedelta(days=1)) == Outcome()
    assert len(smtp_server.received) == 1


def test_a_pass_ahead_of_the_clock_tries_each_mail_once(
    db: Database, smtp_server: SmtpServer
) -> None:
    """The time a pass is given is the time its retries are planned from: a mail that
    failed is not due again in the same pass, however far ahead of the clock it runs."""
    sender = make_sender(db, smtp_server)
    mail_id = enqueue(db, ALICE)
    smtp_server.handler.defer = True
    ahead = utcnow() + timedelta(hours=6)
    assert sender.send_due(now=ahead) == Outcome(retried=1)
    found = row(db, mail_id)
    assert found.attempts == 1
    assert_waits(found.next_attempt_at, ahead, attempts=1)


# --- refused for good ----------------------------------------------------------------------


def test_a_refused_recipient_fails_for_good_until_retried(
    db: Database, smtp_server: SmtpServer
) -> None:
    sender = make_sender(db, smtp_server)
    gone = "gone@example.com"
    smtp_server.handler.refuse.add(gone)
    mail_id = enqueue(db, gone)
    other = enqueue(db, ALICE)

    assert sender.send_due() == Outcome(sent=1, failed=1)
    found = row(db, mail_id)
    assert (found.status, found.attempts, found.sent_at) == ("failed", 1, None)
    assert found.last_error == "recipient refused: 550"
    assert row(db, other).status == "sent"
    # Not tried again, however long one waits.
    assert sender.send_due(now=utcnow() + timedelta(days=2)) == Outcome()
    assert smtp_server.to(gone) == []

    # The mailbox exists now: the operator sends it again, and it arrives once.
    smtp_server.handler.refuse.clear()
    mail.NEW_MAIL.clear()
    assert mail.retry(db, mail_id=mail_id)
    assert mail.NEW_MAIL.is_set()
    assert row(db, mail_id).status == "pending"
    assert sender.send_due() == Outcome(sent=1)
    (received,) = smtp_server.to(gone)
    assert received.message["Message-ID"] == message_id(mail_id)
    found = row(db, mail_id)
    assert (found.status, found.attempts, found.last_error) == ("sent", 2, None)
    assert sender.send_due() == Outcome()


def test_only_failed_or_dropped_mail_is_retried(db: Database, smtp_server: SmtpServer) -> None:
    sent = enqueue(db, ALICE)
    pending = enqueue(db, ALICE, now=utcnow() + timedelta(hours=1))
    make_sender(db, smtp_server).send_due()
    assert row(db, sent).status == "sent"
    assert not mail.retry(db, mail_id=sent)
    assert not mail.retry(db, mail_id=pending)
    assert not mail.retry(db, mail_id=pending + 1)
    assert row(db, sent).status == "sent"
    assert len(smtp_server.received) == 1


def test_a_refused_message_fails_and_a_deferred_one_waits(
    db: Database, smtp_server: SmtpServer
) -> None:
    sender = make_sender(db, smtp_server)
    refused = enqueue(db, ALICE)
    smtp_server.handler.data_reply = "554 5.6.0 message content refused"
    assert sender.send_due() == Outcome(failed=1)
    assert (row(db, refused).status, row(db, refused).last_error) == (
        "failed",
        "message refused: 554",
    )

    deferred = enqueue(db, ALICE)
    smtp_server.handler.data_reply = "452 4.3.1 insufficient system storage"
    assert sender.send_due() == Outcome(retried=1)
    assert (row(db, deferred).status, row(db, deferred).last_error) == (
        "pending",
        "message deferred: 452",
    )
    assert smtp_server.received == []


# --- too old -------------------------------------------------------------------------------


def test_mail_older_than_max_age_that_cannot_be_sent_is_given_up(
    db: Database, smtp_server: SmtpServer
) -> None:
    sender = make_sender(db, smtp_server)
    old = enqueue(db, ALICE, now=utcnow() - MAX_AGE - timedelta(minutes=1))
    smtp_server.stop()
    assert sender.send_due() == Outcome(failed=1)
    found = row(db, old)
    assert (found.status, found.attempts) == ("failed", 1)
    assert "ConnectionRefusedError" in found.last_error
    smtp_server.start()
    assert sender.send_due(now=utcnow() + timedelta(days=1)) == Outcome()
    assert smtp_server.received == []


def test_mail_is_tried_for_max_age_from_when_it_was_written(
    db: Database, smtp_server: SmtpServer
) -> None:
    sender = make_sender(db, smtp_server)
    written = utcnow()
    mail_id = enqueue(db, ALICE, now=written)
    smtp_server.handler.defer = True
    assert sender.send_due(now=written + MAX_AGE - timedelta(minutes=1)) == Outcome(retried=1)
    assert row(db, mail_id).status == "pending"
    assert sender.send_due(now=written + MAX_AGE + timedelta(minutes=1)) == Outcome(failed=1)
    found = row(db, mail_id)
    assert (found.status, found.attempts, found.last_error) == (
        "failed",
        2,
        "recipient deferred: 451",
    )


def test_old_mail_that_can_be_sent_is_sent(db: Database, smtp_server: SmtpServer) -> None:
    old = enqueue(db, ALICE, now=utcnow() - MAX_AGE - timedelta(days=1))
    assert make_sender(db, smtp_server).send_due() == Outcome(sent=1)
    assert row(db, old).status == "sent"
    assert smtp_server.message_ids() == [message_id(old)]


# --- no longer needed, or not written ------------------------------------------------------


def test_a_letter_no_longer_needed_is_dropped_unsent(db: Database, smtp_server: SmtpServer) -> None:
    asked: list[int] = []

    def not_needed(letter: Letter) -> EmailMessage | None:
        asked.append(letter.id)
        return None

    mail_id = enqueue(db, ALICE, kind="verify")
    sender = make_sender(db, smtp_server, compose=not_needed)
    assert sender.send_due() == Outcome(dropped=1)
    found = row(db, mail_id)
    assert (found.status, found.attempts, found.sent_at) == ("dropped", 1, None)
    assert found.last_error == "no longer needed"
    assert sender.send_due(now=utcnow() + timedelta(days=1)) == Outcome()
    assert asked == [mail_id]
    assert smtp_server.received == []


def test_a_letter_that_cannot_be_written_holds_back_no_other(
    db: Database, smtp_server: SmtpServer
) -> None:
    """A letter whose ``compose`` raises (a kind this version does not know, say) is tried
    again later like one the server deferred; the mail claimed with it still goes now."""

    def compose_or_fail(letter: Letter) -> EmailMessage | None:
        if letter.kind == "unknown":
            raise KeyError(letter.kind)
        return compose(letter)

    broken = enqueue(db, "first@example.com", kind="unknown")
    others = enqueue_many(db, [f"user{n}@example.com" for n in range(3)])
    sender = make_sender(db, smtp_server, compose=compose_or_fail)

    now = utcnow()
    assert sender.send_due(now=now) == Outcome(sent=3, retried=1)
    assert sorted(smtp_server.message_ids()) == sorted(message_id(i) for i in others)
    found = row(db, broken)
    assert (found.status, found.attempts, found.claimed_until) == ("pending", 1, None)
    assert "KeyError" in found.last_error
    assert_waits(found.next_attempt_at, now, attempts=1)


# --- two senders at once -------------------------------------------------------------------


def test_two_senders_at_once_deliver_each_mail_exactly_once(
    db: Database, smtp_server: SmtpServer
) -> None:
    """Two senders, each with a database connection pool of its own (as two processes
    have), claim mail at the same moment: each mail goes out once, claimed once."""
    count = 40
    ids = enqueue_many(db, [f"user{n}@example.com" for n in range(count)])
    other_db = connect(db.url.render_as_string(hide_password=False), pool_size=3)
    names = ("one", "two")
    composing = {name: threading.Event() for name in names}

    def composer(name: str, other: str) -> mail.Compose:
        def write(letter: Letter) -> EmailMessage | None:
            # Each holds its first claim until the other holds one too.
            composing[name].set()
            assert composing[other].wait(10), f"sender {other} claimed nothing"
            return compose(letter)

        return write

    senders = {
        "one": make_sender(db, smtp_server, batch=3, compose=composer("one", "two")),
        "two": make_sender(other_db, smtp_server, batch=3, compose=composer("two", "one")),
    }
    outcomes: dict[str, Outcome] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(names))

    def run(name: str) -> None:
        try:
            start.wait(10)
            outcomes[name] = senders[name].send_due()
        except BaseException as exc:
            errors.append(exc)
            composing[name].set()  # do not keep the other waiting

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        other_db.dispose()
    assert not errors, errors
    assert all(outcome.sent > 0 for outcome in outcomes.values()), outcomes
    assert sum(outcome.sent for outcome in outcomes.values()) == count
    assert all(outcome.retried == outcome.failed == 0 for outcome in outcomes.values())

    delivered = Counter(smtp_server.message_ids())
    assert delivered == Counter({message_id(i): 1 for i in ids})
    assert [(r.status, r.attempts) for r in rows(db)] == [("sent", 1)] * count


def test_a_lapsed_claim_is_taken_over(db: Database, smtp_server: SmtpServer) -> None:
    """A sender that claimed mail and died holds it until its claim lapses; then another
    sends it (at least once: the same Message-ID if the dead one had sent it)."""
    mail_id = enqueue(db, ALICE)
    died = make_sender(db, smtp_server)
    claimed_at = utcnow()
    (claimed,) = died._claim(claimed_at)  # claims, then dies before it sends
    assert claimed.id == mail_id
    assert row(db, mail_id).claimed_until == claimed_at + CLAIM

    survivor = make_sender(db, smtp_server)
    assert survivor.send_due(now=claimed_at + CLAIM - timedelta(seconds=1)) == Outcome()
    assert survivor.send_due(now=claimed_at + CLAIM) == Outcome(sent=1)
    assert smtp_server.message_ids() == [message_id(mail_id)]
    assert (row(db, mail_id).status, row(db, mail_id).attempts) == ("sent", 2)


# --- without a server, and on a thread -----------------------------------------------------


def test_without_smtp_the_message_is_kept_in_the_outbox(
    db: Database, smtp_server: SmtpServer
) -> None:
    mail_id = enqueue(db, ALICE)
    assert make_sender(db, None).send_due() == Outcome(sent=1)
    found = row(db, mail_id)
    assert found.status == "sent"
    assert f"Message-ID: {message_id(mail_id)}" in found.kept
    assert f"Subject: notice #{mail_id}" in found.kept
    assert smtp_server.received == []


def test_the_sender_thread_wakes_for_new_mail_and_stops(
    db: Database, smtp_server: SmtpServer
) -> None:
    sender = make_sender(db, smtp_server)
    # A poll far longer than the wait below: only the commit's wake-up can send in time.
    thread = sender.start(poll=120)
    try:
        first = enqueue(db, ALICE)
        smtp_server.wait_for(ALICE, 1, timeout=10)
        second = enqueue(db, ALICE)
        smtp_server.wait_for(ALICE, 2, timeout=10)
    finally:
        sender.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert smtp_server.message_ids() == [message_id(first), message_id(second)]
    assert [r.status for r in rows(db)] == ["sent", "sent"]


def test_a_pass_asked_for_while_the_thread_sends_returns_once_that_mail_is_written(
    db: Database,
) -> None:
    """The development mailbox asks for a pass before it shows what was just committed.
    If the mail thread has already claimed that mail, the pass waits for the thread's
    own to end: the mail is written when it returns, not still being composed."""
    composing = threading.Event()

    def slow(letter: Letter) -> EmailMessage:
        composing.set()
        time.sleep(0.3)
        return compose(letter)

    sender = make_sender(db, None, compose=slow)
    thread = sender.start(poll=120)
    try:
        mail_id = enqueue(db, ALICE)  # wakes the thread, which claims it
        assert composing.wait(10)
        sender.send_due()
        assert row(db, mail_id).status == "sent"
    finally:
        sender.stop()
        thread.join(10)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_sender_thread_outlives_a_failing_pass(db: Database, smtp_server: SmtpServer) -> None:
    """A pass that raises is logged, and the loop goes on with the next."""
    sender = make_sender(db, smtp_server)
    real_send_due = sender.send_due
    failed = threading.Event()

    def first_fails(*, now: datetime | None = None) -> Outcome:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("the first pass fails")
        return real_send_due(now=now)

    sender.send_due = first_fails  # type: ignore[method-assign]
    thread = sender.start(poll=120)
    try:
        assert failed.wait(10)
        mail_id = enqueue(db, ALICE)
        smtp_server.wait_for(ALICE, 1, timeout=10)
    finally:
        sender.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert smtp_server.message_ids() == [message_id(mail_id)]


def test_a_sender_whose_claim_lapsed_leaves_the_outcome_to_the_one_that_took_over(
    db: Database, smtp_server: SmtpServer
) -> None:
    """A sender too slow for its claim: another claims the mail and sends it. The slow
    one's late outcome is not recorded over the other's (and does not fail the pass)."""
    mail_id = enqueue(db, "ann@example.com")
    other = make_sender(db, smtp_server)

    def slow(letter: Letter) -> EmailMessage:
        # While this sender writes, its claim lapses and the other sender takes the mail.
        later = utcnow() + CLAIM + timedelta(seconds=1)
        assert other.send_due(now=later) == Outcome(sent=1)
        return compose(letter)

    assert make_sender(db, smtp_server, compose=slow).send_due() == Outcome(sent=1)
    found = row(db, mail_id)
    assert (found.status, found.attempts, found.claimed_until) == ("sent", 2, None)
    # Both sent it (at least once, never lost): the same Message-ID, shown once.
    assert smtp_server.message_ids() == [message_id(mail_id)] * 2

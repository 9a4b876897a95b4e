"""The outbox: mail exists if and only if the unit of work that wrote it committed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.mail.conftest import enqueue, enqueue_many, row, rows
from tokenbank import mail
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.mail.models import outbox


class Changed(Exception):
    """The change the mail would have told of failed."""


def test_mail_written_in_a_unit_that_rolls_back_does_not_exist(db: Database) -> None:
    mail.NEW_MAIL.clear()
    with pytest.raises(Changed), db.transaction() as conn:
        mail.enqueue(conn, kind="notice", to="alice@example.com", language="en")
        raise Changed
    assert rows(db) == []
    assert not mail.NEW_MAIL.is_set(), "no sender is woken for mail that does not exist"


def test_mail_written_in_a_unit_that_commits_is_pending_and_wakes_the_sender(
    db: Database,
) -> None:
    mail.NEW_MAIL.clear()
    before = utcnow()
    with db.transaction() as conn:
        mail_id = mail.enqueue(
            conn,
            kind="notice",
            to="alice@example.com",
            language="zh-CN",
            user_id="alice",
            params={"email": "new@example.com"},
        )
        assert not mail.NEW_MAIL.is_set(), "woken before the commit: the sender finds nothing"
    assert mail.NEW_MAIL.is_set()
    found = row(db, mail_id)
    assert (found.kind, found.to_address, found.language, found.user_id) == (
        "notice",
        "alice@example.com",
        "zh-CN",
        "alice",
    )
    assert found.params == {"email": "new@example.com"}
    assert (found.status, found.attempts, found.sent_at, found.claimed_until) == (
        "pending",
        0,
        None,
        None,
    )
    assert before <= found.created_at == found.next_attempt_at <= utcnow()


def test_recent_lists_the_newest_first_and_filters(db: Database) -> None:
    first, second, third = enqueue_many(db, ["a@example.com", "b@example.com", "a@example.com"])
    with db.transaction() as conn:
        conn.execute(
            outbox.update()
            .where(outbox.c.id == second)
            .values(status="failed", last_error="recipient refused: 550")
        )
    with db.read() as conn:
        assert [r.id for r in mail.recent(conn)] == [third, second, first]
        assert [r.id for r in mail.recent(conn, limit=2)] == [third, second]
        assert [r.id for r in mail.recent(conn, to="a@example.com")] == [third, first]
        assert [r.id for r in mail.recent(conn, status="failed")] == [second]
        assert mail.recent(conn, status="sent") == []
        assert mail.find(conn, mail_id=third + 1) is None


def test_mail_may_be_written_for_a_given_moment(db: Database) -> None:
    then = utcnow() - timedelta(days=1)
    found = row(db, enqueue(db, "alice@example.com", now=then))
    assert found.created_at == found.next_attempt_at == then

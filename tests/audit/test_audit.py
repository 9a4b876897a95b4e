"""The audit log is append-only and every line gives a reason, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tokenbank import audit, ledger
from tokenbank.audit.models import admin_actions
from tokenbank.db import Database


def test_lines_are_kept_newest_first_per_subject(db: Database) -> None:
    with db.transaction() as conn:
        audit.record(conn, actor="user:a", action="grant", subject="user:x", reason="first")
        audit.record(conn, actor="cli:op", action="grant", subject="user:x", reason="second")
        audit.record(conn, actor="cli:op", action="grant", subject="user:y", reason="other")
    with db.read() as conn:
        found = audit.actions_about(conn, subject="user:x")
    assert [(a.actor, a.reason) for a in found] == [("cli:op", "second"), ("user:a", "first")]


@pytest.mark.parametrize("reason", ["", " \t ", "x" * 501, "nul\x00"])
def test_a_line_without_a_usable_reason_is_refused(db: Database, reason: str) -> None:
    with pytest.raises(ledger.InvalidArgument), db.transaction() as conn:
        audit.record(conn, actor="cli:op", action="grant", subject="user:x", reason=reason)


@pytest.mark.parametrize("change", ["update", "delete"])
def test_the_database_refuses_to_change_a_line(db: Database, change: str) -> None:
    with db.transaction() as conn:
        audit.record(conn, actor="cli:op", action="grant", subject="user:x", reason="why")
    statement = (
        sa.update(admin_actions).values(reason="rewritten")
        if change == "update"
        else sa.delete(admin_actions)
    )
    with pytest.raises(sa.exc.DatabaseError), db.transaction() as conn:
        conn.execute(statement)
    with db.read() as conn:
        assert [a.reason for a in audit.actions_about(conn, subject="user:x")] == ["why"]

"""``tokenbank worker`` and ``tokenbank mail``, run as an operator runs them: a worker killed
with ``kill -9`` in the middle of its work loses no mail, and one stopped with SIGTERM
exits cleanly."""

from __future__ import annotations

import secrets
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from tests.faults.conftest import wait_for
from tests.mail.conftest import (
    MAIL_FROM,
    PUBLIC_URL,
    SECRET_KEY,
    enqueue,
    message_id,
    row,
    rows,
    settings_for,
)
from tests.processes import STOP_TIMEOUT, Process, clean_env
from tests.smtp import SmtpServer
from tokenbank.cli import app
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.mail import Outcome
from tokenbank.mail.models import outbox
from tokenbank.web.letters import mail_sender

# --- the worker process --------------------------------------------------------------------


def worker_env(db: Database, server: SmtpServer, directory: Path) -> dict[str, str]:
    return clean_env(
        {
            "TOKENBANK_DATABASE_URL": db.url.render_as_string(hide_password=False),
            "TOKENBANK_SMTP_URL": server.url,
            "TOKENBANK_SECRET_KEY": secrets.token_urlsafe(48),
            "TOKENBANK_MAIL_FROM": MAIL_FROM,
            "TOKENBANK_PUBLIC_URL": PUBLIC_URL,
            "TOKENBANK_VAR_DIR": str(directory / "var"),
            "TOKENBANK_LOG_LEVEL": "info",
            "TOKENBANK_DATABASE_POOL_SIZE": "4",
        }
    )


def start_worker(name: str, env: dict[str, str], directory: Path) -> Process:
    return Process.start(name, ("worker", "--poll", "0.2"), env=env, directory=directory)


def terminate(worker: Process) -> int:
    """SIGTERM, as a service manager stops it: the exit status."""
    worker.popen.send_signal(signal.SIGTERM)
    code = worker.popen.wait(STOP_TIMEOUT)
    worker.stop()
    return code


def test_a_worker_killed_mid_way_loses_no_mail(
    db: Database, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    count = 12
    ids = [
        enqueue(
            db,
            f"user{n}@example.com",
            kind="registered_again" if n % 2 else "look_alike",
            language="zh-CN" if n % 3 else "en",
        )
        for n in range(count)
    ]
    env = worker_env(db, smtp_server, tmp_path)
    # A slow server: the worker is still at it when it is killed.
    smtp_server.handler.delay = 0.25

    first = start_worker("worker-1", env, tmp_path)
    try:
        smtp_server.wait_count(3, timeout=30)
    finally:
        assert first.kill() == -signal.SIGKILL, first.output()

    # Killed mid-way: some mail is recorded as sent, the rest is still there to send, the
    # one in hand claimed by the dead worker. None is lost, none given up.
    left = [r for r in rows(db) if r.status != "sent"]
    assert {r.status for r in rows(db)} <= {"sent", "pending"}
    assert 0 < len(left) < count, first.output()
    in_hand = [r for r in left if r.claimed_until is not None]
    assert len(in_hand) <= 1 and all(r.claimed_until > utcnow() for r in in_hand)
    sent_by_first = {r.id for r in rows(db) if r.status == "sent"}
    # Another sender sends the rest at once, but not the mail the dead worker held...
    settings = settings_for(db, smtp_server)
    smtp_server.handler.delay = 0
    assert mail_sender(settings, db).send_due() == Outcome(sent=len(left) - len(in_hand))
    # ...until its claim lapses: moved back here rather than waited for.
    with db.transaction() as conn:
        conn.execute(
            sa.update(outbox)
            .where(outbox.c.claimed_until.is_not(None))
            .values(claimed_until=utcnow())
        )

    smtp_server.handler.delay = 0
    second = start_worker("worker-2", env, tmp_path)
    try:
        wait_for(
            lambda: all(r.status == "sent" for r in rows(db)),
            timeout=30,
            what=f"every mail sent\n{second.output()}",
        )
    finally:
        code = terminate(second)
    assert code == 0, second.output()

    delivered = Counter(smtp_server.message_ids())
    domain = "tokens.example"
    for mail_id in ids:
        copies = delivered[message_id(mail_id, domain)]
        # At least once; exactly once for what the first worker had recorded as sent.
        assert copies >= 1, mail_id
        if mail_id in sent_by_first:
            assert copies == 1, mail_id
    assert set(delivered) == {message_id(mail_id, domain) for mail_id in ids}
    for n in range(count):
        smtp_server.wait_for(f"user{n}@example.com", 1, timeout=1)
    assert all(r.claimed_until is None and r.sent_at is not None for r in rows(db))


def test_sigterm_stops_an_idle_worker_cleanly(
    db: Database, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    worker = start_worker("worker", worker_env(db, smtp_server, tmp_path), tmp_path)
    try:
        # It says so once it handles SIGTERM, before it first looks at the outbox.
        wait_for(
            lambda: "sending the mail outbox" in worker.output() or worker.popen.poll() is not None,
            timeout=30,
            what="the worker to start",
        )
        mail_id = enqueue(db, "alice@example.com", kind="registered_again")
        smtp_server.wait_for("alice@example.com", 1, timeout=30)
        wait_for(lambda: row(db, mail_id).status == "sent", timeout=10, what="the mail sent")
    finally:
        code = terminate(worker)
    assert code == 0, worker.output()
    assert smtp_server.message_ids() == [message_id(mail_id)]


# --- tokenbank mail ------------------------------------------------------------------------

runner = CliRunner()
Run = Callable[..., str]


def cli(db: Database, server: SmtpServer) -> Run:
    env = {
        "TOKENBANK_DATABASE_URL": db.url.render_as_string(hide_password=False),
        "TOKENBANK_SMTP_URL": server.url,
        "TOKENBANK_SECRET_KEY": SECRET_KEY,
        "TOKENBANK_MAIL_FROM": MAIL_FROM,
        "TOKENBANK_PUBLIC_URL": PUBLIC_URL,
        "COLUMNS": "200",
    }

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, result.output
        return result.output

    return run


def test_mail_send_list_and_retry(db: Database, smtp_server: SmtpServer) -> None:
    run = cli(db, smtp_server)
    smtp_server.handler.refuse.add("gone@example.com")
    gone = enqueue(db, "gone@example.com", kind="registered_again")
    fine = enqueue(db, "fine@example.com", kind="look_alike", language="zh-CN")

    assert "sent 1, to retry 0, failed 1, not needed 0" in run("mail", "send")
    assert "sent 0, to retry 0, failed 0, not needed 0" in run("mail", "send")
    listed = run("mail", "list")
    assert "gone@example.com" in listed and "fine@example.com" in listed
    failed = run("mail", "list", "--status", "failed")
    assert "gone@example.com" in failed and "recipient refused: 550" in failed
    assert "fine@example.com" not in failed
    assert "fine@example.com" in run("mail", "list", "--to", "fine@example.com")
    assert "must be one of" in run("mail", "list", "--status", "lost", code=2)

    assert f"no failed mail {fine}" in run("mail", "retry", str(fine), code=3)
    smtp_server.handler.refuse.clear()
    assert f"mail {gone} will be sent again" in run("mail", "retry", str(gone))
    assert "sent 1, to retry 0, failed 0, not needed 0" in run("mail", "send")
    assert sorted(smtp_server.message_ids()) == sorted(
        message_id(mail_id) for mail_id in (gone, fine)
    )
    assert row(db, gone).status == row(db, fine).status == "sent"

"""What the mail tests share: a plain ``compose`` that writes each letter from its row, the
outbox rows as they stand, and settings naming the test SMTP server."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from email.message import EmailMessage
from typing import Any

from tests.smtp import SmtpServer, smtp_server
from tokenbank import mail
from tokenbank.config import Settings
from tokenbank.db import Database
from tokenbank.mail import Letter, Sender, Smtp

__all__ = ["smtp_server"]  # a fixture

DOMAIN = "tokens.example"
PUBLIC_URL = f"https://{DOMAIN}"
MAIL_FROM = "tokenbank <no-reply@tokens.example>"
SECRET_KEY = "test-only-key-0123456789abcdef0123456789"


def compose(letter: Letter) -> EmailMessage:
    """A letter that says which row it came from (the real ones: tests/mail/test_letters.py)."""
    message = EmailMessage()
    message["From"] = MAIL_FROM
    message["To"] = letter.to
    message["Subject"] = f"{letter.kind} #{letter.id}"
    message.set_content(f"{letter.kind} for {letter.to}: {dict(letter.params)}\n")
    return message


def message_id(mail_id: int, domain: str = DOMAIN) -> str:
    return f"<tokenbank.mail.{mail_id}@{domain}>"


def make_sender(db: Database, server: SmtpServer | None, **options: Any) -> Sender:
    smtp = None if server is None else Smtp.from_url(server.url, timeout=10)
    return Sender(
        db=db, compose=options.pop("compose", compose), smtp=smtp, domain=DOMAIN, **options
    )


def enqueue(
    db: Database,
    to: str,
    *,
    kind: str = "notice",
    language: str = "en",
    user_id: str | None = None,
    now: datetime | None = None,
    **params: Any,
) -> int:
    """One mail, in a unit of work of its own that commits."""
    with db.transaction() as conn:
        return mail.enqueue(
            conn, kind=kind, to=to, language=language, user_id=user_id, params=params, now=now
        )


def enqueue_many(db: Database, addresses: Iterable[str], *, kind: str = "notice") -> list[int]:
    with db.transaction() as conn:
        return [mail.enqueue(conn, kind=kind, to=to, language="en") for to in addresses]


def row(db: Database, mail_id: int) -> Any:
    with db.read() as conn:
        found = mail.find(conn, mail_id=mail_id)
    assert found is not None, f"no mail {mail_id}"
    return found


def rows(db: Database) -> list[Any]:
    with db.read() as conn:
        return sorted(mail.recent(conn, limit=1000), key=lambda r: r.id)


def settings_for(db: Database, server: SmtpServer | None) -> Settings:
    return Settings(
        database_url=db.url.render_as_string(hide_password=False),
        public_url=PUBLIC_URL,
        secret_key=SECRET_KEY,
        smtp_url=None if server is None else server.url,
        mail_from=MAIL_FROM,
    )

"""Reading what the identity functions mail: the outbox's rows, and the letters as the
sender writes them (kept in the outbox, as in development, with no SMTP server)."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from tests.letters import link_in, text_of
from tokenbank import mail
from tokenbank.db import Database
from tokenbank.mail import Outcome, Sender
from tokenbank.web.letters import Letters

PUBLIC_URL = "https://tokens.example"
MAIL_FROM = "tokenbank <no-reply@tokens.example>"


def letters(db: Database) -> Letters:
    return Letters(db=db, public_url=PUBLIC_URL, sender=MAIL_FROM)


def sender(db: Database) -> Sender:
    return Sender(db=db, compose=letters(db).compose, smtp=None, domain="tokens.example")


def send(db: Database) -> Outcome:
    """Write and "deliver" every mail due (each kept in its outbox row)."""
    return sender(db).send_due()


def outbox(db: Database) -> list[Any]:
    """Every mail in the outbox, oldest first."""
    with db.read() as conn:
        return sorted(mail.recent(conn, limit=1000), key=lambda row: row.id)


def kinds(db: Database) -> list[tuple[str, str]]:
    """(kind, to) of every mail, oldest first."""
    return [(row.kind, row.to_address) for row in outbox(db)]


@dataclass(frozen=True)
class Mail:
    kind: str
    to: str
    message: EmailMessage

    @property
    def text(self) -> str:
        return text_of(self.message)

    def token(self, prefix: str) -> str:
        """The token at the end of this mail's link whose path starts with ``prefix``."""
        return link_in(self.message, prefix).removeprefix(prefix)


def delivered(db: Database, kind: str | None = None) -> list[Mail]:
    """Send what is due, then every mail kept so far (of ``kind``), oldest first."""
    send(db)
    found = []
    for row in outbox(db):
        if row.kept is None or (kind is not None and row.kind != kind):
            continue
        message = email.message_from_string(row.kept, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        found.append(Mail(row.kind, row.to_address, message))
    return found


def last_token(db: Database, kind: str, prefix: str) -> str:
    """The token of the newest mail of ``kind`` (sending what is due first)."""
    mails = delivered(db, kind)
    assert mails, f"no {kind} mail was sent"
    return mails[-1].token(prefix)

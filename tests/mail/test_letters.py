"""tokenbank's own letters, sent by the sender the settings describe (``mail_sender``):
what arrives at a real SMTP server, in English and in Chinese."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from tests.mail.conftest import (
    MAIL_FROM,
    PUBLIC_URL,
    SECRET_KEY,
    enqueue,
    message_id,
    row,
    settings_for,
)
from tests.smtp import Received, SmtpServer
from tokenbank import identity, users
from tokenbank.columns import utcnow
from tokenbank.db import Database
from tokenbank.mail import Outcome
from tokenbank.web.letters import mail_sender

SUBJECT = "Someone tried to sign up with your address"


def urls(text: str) -> set[str]:
    return {url.rstrip(".") for url in re.findall(r"https?://[^\s\"<>]+", text)}


def send_registered_again(db: Database, server: SmtpServer, language: str) -> tuple[int, Received]:
    to = f"{language.lower()}@example.com"
    mail_id = enqueue(db, to, kind="registered_again", language=language)
    assert mail_sender(settings_for(db, server), db).send_due() == Outcome(sent=1)
    (received,) = server.to(to)
    return mail_id, received


@pytest.mark.parametrize("language", ["en", "zh-CN"])
def test_a_letter_arrives_as_text_and_html(
    db: Database, smtp_server: SmtpServer, language: str
) -> None:
    mail_id, received = send_registered_again(db, smtp_server, language)
    message = received.message
    assert message["From"] == MAIL_FROM
    assert received.sender == "no-reply@tokens.example"
    assert message["To"] == f"{language.lower()}@example.com"
    assert message["Message-ID"] == message_id(mail_id, "tokens.example")
    assert message["Content-Language"] == language
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"]
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == [
        "text/plain",
        "text/html",
    ]
    assert f'<html lang="{language}">' in received.html

    # A letter without a link of its own: it points at the sign-in and reset pages only,
    # and holds no secret of the service.
    for body in (received.text, received.html):
        assert urls(body) == {
            f"{PUBLIC_URL}/login",
            f"{PUBLIC_URL}/password/forgot",
            PUBLIC_URL,
        }
    assert received.link("/login") == "/login"
    raw = message.as_string()
    assert SECRET_KEY not in raw and smtp_server.url not in raw

    found = row(db, mail_id)
    assert (found.status, found.message_id, found.kept) == ("sent", message_id(mail_id), None)


def test_the_english_letter_says_what_happened(db: Database, smtp_server: SmtpServer) -> None:
    _, received = send_registered_again(db, smtp_server, "en")
    assert received.message["Subject"] == SUBJECT
    assert "It already has one, so no account was opened." in " ".join(received.text.split())
    assert "Sign in: https://tokens.example/login" in received.text
    assert ">Sign in</a>" in received.html


def test_the_chinese_letter_is_in_chinese(db: Database, smtp_server: SmtpServer) -> None:
    _, received = send_registered_again(db, smtp_server, "zh-CN")
    assert received.message["Subject"] == "有人尝试用你的地址注册"
    assert "登录: https://tokens.example/login" in received.text
    assert "此邮件由 https://tokens.example 上的 tokenbank 发送。" in received.text
    assert ">登录</a>" in received.html
    text = received.message.get_body(("plain",))
    assert text is not None and text.get_content_charset() == "utf-8"


def test_without_smtp_the_letter_is_kept_in_the_outbox(
    db: Database, smtp_server: SmtpServer
) -> None:
    mail_id = enqueue(db, "en@example.com", kind="look_alike", language="en")
    assert mail_sender(settings_for(db, None), db).send_due() == Outcome(sent=1)
    kept = row(db, mail_id).kept
    assert "Subject: This address cannot open an account" in kept
    assert f"Message-ID: {message_id(mail_id)}" in kept
    assert smtp_server.received == []


def test_a_link_is_made_when_the_letter_is_written_and_works(
    db: Database, smtp_server: SmtpServer
) -> None:
    with db.transaction() as conn:
        users.create_user(conn, user_id="alice", email="alice@example.com", email_verified=False)
    mail_id = enqueue(db, "alice@example.com", kind="verify", user_id="alice")
    assert row(db, mail_id).params == {}, "the outbox holds no token"
    assert mail_sender(settings_for(db, smtp_server), db).send_due() == Outcome(sent=1)
    (received,) = smtp_server.to("alice@example.com")
    path = received.link("/verify/")
    assert urlsplit(f"{PUBLIC_URL}{path}").path == path
    assert identity.verify_email(db, token=path.removeprefix("/verify/")) == "alice"


def test_a_letter_that_lost_its_point_is_dropped(db: Database, smtp_server: SmtpServer) -> None:
    """A confirmation link for an account that is not there (or no longer needs one)."""
    with db.transaction() as conn:
        users.create_user(conn, user_id="bob", email="bob@example.com", email_verified=True)
    nobody = enqueue(db, "nobody@example.com", kind="verify", user_id="nobody")
    confirmed = enqueue(db, "bob@example.com", kind="verify", user_id="bob")
    sender = mail_sender(settings_for(db, smtp_server), db)
    assert sender.send_due() == Outcome(dropped=2)
    assert row(db, nobody).status == row(db, confirmed).status == "dropped"
    assert sender.send_due(now=utcnow()) == Outcome()
    assert smtp_server.received == []

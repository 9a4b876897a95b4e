"""The SMTP transport: its URL, and what each answer of a real server on a socket means
(sent, refused for good, try again later)."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from tests.smtp import SmtpServer, free_port
from tokenbank.errors import ConfigurationError
from tokenbank.mail import MailRejected, MailUnavailable, Smtp


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port"),
    [
        ("smtp://mail.example", "smtp", "mail.example", 25),
        ("smtp+starttls://mail.example", "smtp+starttls", "mail.example", 587),
        ("smtps://mail.example", "smtps", "mail.example", 465),
        ("smtp://127.0.0.1:2525", "smtp", "127.0.0.1", 2525),
        ("smtp+starttls://mail.example:25", "smtp+starttls", "mail.example", 25),
        ("smtps://[::1]:4465", "smtps", "::1", 4465),
        ("SMTP://Mail.Example", "smtp", "mail.example", 25),
    ],
)
def test_scheme_host_and_default_port(url: str, scheme: str, host: str, port: int) -> None:
    smtp = Smtp.from_url(url)
    assert (smtp.scheme, smtp.host, smtp.port) == (scheme, host, port)
    assert (smtp.username, smtp.password) == (None, None)


def test_user_and_password_are_percent_decoded_and_not_shown() -> None:
    smtp = Smtp.from_url(
        "smtp+starttls://mailer%40tokens.example:p%40ss%3Aw%2Frd%25+1@mail.example", timeout=7
    )
    assert (smtp.username, smtp.password) == ("mailer@tokens.example", "p@ss:w/rd%+1")
    assert (smtp.host, smtp.port, smtp.timeout) == ("mail.example", 587, 7)
    assert "p@ss" not in repr(smtp) and "w/rd" not in repr(smtp)


def test_a_user_without_a_password() -> None:
    smtp = Smtp.from_url("smtps://apikey@mail.example:2465")
    assert (smtp.username, smtp.password, smtp.port) == ("apikey", None, 2465)


@pytest.mark.parametrize(
    "url",
    [
        "http://mail.example",
        "smtp+ssl://mail.example",
        "lmtp://mail.example",
        "mail.example:25",
        "mail.example",
        "",
        "smtp://",
        "smtp:///path",
        "smtp://user:password@",
    ],
)
def test_a_bad_scheme_or_no_host_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="smtp://, smtp\\+starttls:// or smtps://"):
        Smtp.from_url(url)


@pytest.mark.parametrize(
    "url", ["smtp://mail.example:smtp", "smtp://mail.example:65536", "smtps://mail.example:-1"]
)
def test_a_bad_port_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="port"):
        Smtp.from_url(url)


# --- talking to a server -------------------------------------------------------------------


def message(to: str = "alice@example.com") -> EmailMessage:
    made = EmailMessage()
    made["From"] = "tokenbank <no-reply@tokens.example>"
    made["To"] = to
    made["Subject"] = "Grüße, 你好"
    made.set_content("Ünïcode über SMTP: 你好\n")
    return made


def test_a_message_is_delivered(smtp_server: SmtpServer) -> None:
    Smtp.from_url(smtp_server.url, timeout=5).deliver(message())
    (received,) = smtp_server.to("alice@example.com")
    assert received.sender == "no-reply@tokens.example"
    assert received.message["Subject"] == "Grüße, 你好"
    assert received.text.strip() == "Ünïcode über SMTP: 你好"


def test_a_refused_recipient_is_rejected(smtp_server: SmtpServer) -> None:
    smtp_server.handler.refuse.add("gone@example.com")
    with pytest.raises(MailRejected, match="recipient refused: 550"):
        Smtp.from_url(smtp_server.url, timeout=5).deliver(message("gone@example.com"))
    assert smtp_server.received == []


def test_a_deferred_recipient_is_unavailable(smtp_server: SmtpServer) -> None:
    smtp_server.handler.defer = True
    with pytest.raises(MailUnavailable, match="recipient deferred: 451"):
        Smtp.from_url(smtp_server.url, timeout=5).deliver(message())
    assert smtp_server.received == []


@pytest.mark.parametrize(
    ("reply", "error", "said"),
    [
        ("554 5.6.0 content refused", MailRejected, "message refused: 554"),
        ("452 4.3.1 insufficient system storage", MailUnavailable, "message deferred: 452"),
    ],
)
def test_the_message_refused_or_deferred(
    smtp_server: SmtpServer, reply: str, error: type[Exception], said: str
) -> None:
    smtp_server.handler.data_reply = reply
    with pytest.raises(error, match=said):
        Smtp.from_url(smtp_server.url, timeout=5).deliver(message())
    assert smtp_server.received == []


def test_no_server_is_unavailable() -> None:
    with pytest.raises(MailUnavailable, match="ConnectionRefusedError"):
        Smtp.from_url(f"smtp://127.0.0.1:{free_port()}", timeout=5).deliver(message())


def test_a_server_back_from_an_outage_takes_mail_again(smtp_server: SmtpServer) -> None:
    smtp = Smtp.from_url(smtp_server.url, timeout=5)
    smtp_server.stop()
    with pytest.raises(MailUnavailable):
        smtp.deliver(message())
    smtp_server.start()
    smtp.deliver(message())
    assert len(smtp_server.received) == 1


def test_starttls_is_never_skipped(smtp_server: SmtpServer) -> None:
    """A server that does not offer STARTTLS gets nothing in the clear."""
    url = smtp_server.url.replace("smtp://", "smtp+starttls://")
    with pytest.raises(MailUnavailable, match="STARTTLS"):
        Smtp.from_url(url, timeout=5).deliver(message())
    assert smtp_server.received == []


def test_smtps_to_a_server_without_tls_sends_nothing(smtp_server: SmtpServer) -> None:
    url = smtp_server.url.replace("smtp://", "smtps://")
    with pytest.raises(MailUnavailable):
        Smtp.from_url(url, timeout=5).deliver(message())
    assert smtp_server.received == []


def test_a_login_the_server_does_not_offer_sends_nothing(smtp_server: SmtpServer) -> None:
    """This server offers AUTH only after TLS: a login configured for it is not skipped."""
    url = smtp_server.url.replace("smtp://", "smtp://mailer:secret@")
    with pytest.raises(MailUnavailable, match="AUTH"):
        Smtp.from_url(url, timeout=5).deliver(message())
    assert smtp_server.received == []

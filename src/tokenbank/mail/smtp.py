"""Sending through an SMTP server named by a URL (``TOKENBANK_SMTP_URL``).

``smtp://host:25`` sends in the clear (a relay on the same host or network),
``smtp+starttls://user:password@host:587`` upgrades to TLS first, ``smtps://...:465``
speaks TLS from the start. TLS certificates are verified against the system's CAs. User
and password are percent-encoded in the URL as usual.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from tokenbank.errors import ConfigurationError

PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


class MailRejected(Exception):
    """The server refused the message for good (no such mailbox, content refused): sending
    it again would only be refused again."""


class MailUnavailable(Exception):
    """The server could not be reached or answered "try later": send again later."""


@dataclass(frozen=True)
class Smtp:
    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 20.0

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 20.0) -> Smtp:
        parts = urlsplit(url)
        if parts.scheme not in PORTS or not parts.hostname:
            raise ConfigurationError(
                "TOKENBANK_SMTP_URL: use smtp://, smtp+starttls:// or smtps://, with a host"
            )
        try:
            port = parts.port or PORTS[parts.scheme]
        except ValueError:
            raise ConfigurationError("TOKENBANK_SMTP_URL: the port is not a number") from None
        return cls(
            scheme=parts.scheme,
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            timeout=timeout,
        )

    def deliver(self, message: EmailMessage, *, to: str | None = None) -> None:
        """Send ``message`` to ``to`` (else to its To header); ``MailRejected`` or
        ``MailUnavailable`` if it was not. The envelope names ``to`` alone, whatever a
        header might be read to say."""
        context = ssl.create_default_context()
        try:
            client: smtplib.SMTP
            if self.scheme == "smtps":
                client = smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=context
                )
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with client:
                if self.scheme == "smtp+starttls":
                    client.starttls(context=context)
                if self.username:
                    client.login(self.username, self.password or "")
                client.send_message(message, to_addrs=None if to is None else [to])
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if codes and all(code >= 500 for code in codes):
                raise MailRejected(f"recipient refused: {_said(exc.recipients)}") from None
            raise MailUnavailable(f"recipient deferred: {_said(exc.recipients)}") from None
        except smtplib.SMTPDataError as exc:
            if exc.smtp_code >= 500:
                raise MailRejected(f"message refused: {exc.smtp_code}") from None
            raise MailUnavailable(f"message deferred: {exc.smtp_code}") from None
        except smtplib.SMTPNotSupportedError as exc:
            if "SMTPUTF8" in str(exc):  # this address, never by this server: no retry helps
                raise MailRejected(f"not supported by the server: {exc}"[:300]) from None
            # STARTTLS or AUTH not offered: a configuration to fix, the mail waits for it.
            raise MailUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from None
        except smtplib.SMTPResponseException as exc:
            raise MailUnavailable(f"server answered {exc.smtp_code}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise MailUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from None


def _said(recipients: dict[str, tuple[int, bytes]]) -> str:
    return ", ".join(str(code) for code, _ in recipients.values())

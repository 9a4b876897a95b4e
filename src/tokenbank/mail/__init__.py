"""Mail: a durable outbox written with the change it tells of, and senders that deliver it
through SMTP after the commit, again and again until the server takes it. Knows nothing of
what the letters say: the caller passes a ``compose`` function that writes each one."""

from tokenbank.mail.outbox import NEW_MAIL, Letter, enqueue, find, recent
from tokenbank.mail.sender import Compose, Outcome, Sender, backoff, retry
from tokenbank.mail.smtp import MailRejected, MailUnavailable, Smtp

__all__ = [
    "NEW_MAIL",
    "Compose",
    "Letter",
    "MailRejected",
    "MailUnavailable",
    "Outcome",
    "Sender",
    "Smtp",
    "backoff",
    "enqueue",
    "find",
    "recent",
    "retry",
]

"""Reading a mail the way its reader does: its text and HTML parts, and the link in it."""

from __future__ import annotations

import re
from email.message import EmailMessage
from urllib.parse import urlsplit


def text_of(message: EmailMessage) -> str:
    return _part(message, "plain")


def html_of(message: EmailMessage) -> str:
    return _part(message, "html")


def link_in(message: EmailMessage, prefix: str) -> str:
    """The path of the link in ``message`` that starts with ``prefix`` (``/verify/``)."""
    for url in re.findall(r"https?://\S+?(?=[.,;:!?)]*(?:\s|$))", text_of(message)):
        path = str(urlsplit(url).path)
        if path.startswith(prefix):
            return path
    raise AssertionError(f"no {prefix} link in {text_of(message)!r}")


def _part(message: EmailMessage, kind: str) -> str:
    body = message.get_body(preferencelist=(kind,))
    assert body is not None, f"no {kind} part"
    return str(body.get_content())

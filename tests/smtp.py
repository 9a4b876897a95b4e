"""A real SMTP server for the tests (aiosmtpd, on a thread of its own): what tokenbank sends
arrives here over TCP, as it would at any mail server. It can refuse recipients for good,
defer everything for a while, or be stopped and started again on the same port."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.letters import html_of, link_in, text_of


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        return text_of(self.message)

    @property
    def html(self) -> str:
        return html_of(self.message)

    def link(self, prefix: str) -> str:
        """The path of this mail's link that starts with ``prefix``."""
        return link_in(self.message, prefix)


@dataclass
class Handler:
    received: list[Received] = field(default_factory=list)
    #: Recipients answered 550 (no such mailbox).
    refuse: set[str] = field(default_factory=set)
    #: While set, every recipient is answered 451 (try again later).
    defer: bool = False
    #: While set, the message itself is answered with this reply ("554 ...", "452 ...")
    #: instead of being accepted.
    data_reply: str | None = None
    #: Seconds the server thinks before it answers a message: a slow server.
    delay: float = 0.0
    arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.defer:
            return "451 4.3.0 try again later"
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.data_reply is not None:
            return self.data_reply
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.arrived:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), parsed))
            self.arrived.notify_all()
        return "250 Message accepted"


class SmtpServer:
    """An SMTP server on 127.0.0.1:``port``; ``stop()`` and ``start()`` simulate an outage."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.handler = Handler()
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def start(self) -> None:
        self._controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=True
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.recipients]

    def wait_for(self, address: str, count: int = 1, timeout: float = 20.0) -> list[Received]:
        """The mail to ``address`` once ``count`` of them arrived; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.handler.arrived:
            while len(self.to(address)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self.to(address))} of {count} mails to {address} arrived"
                    )
                self.handler.arrived.wait(left)
        return self.to(address)

    def wait_count(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Every mail received, once at least ``count`` arrived (to anyone)."""
        deadline = time.monotonic() + timeout
        with self.handler.arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.received)} of {count} mails arrived")
                self.handler.arrived.wait(left)
            return list(self.received)

    def message_ids(self) -> list[str]:
        """The Message-ID of every mail received, in the order they arrived."""
        return [str(r.message["Message-ID"]) for r in self.received]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()

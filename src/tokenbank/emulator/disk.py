"""The emulated account kept in a file, as a real Stripe account outlives a restart.

Without it, ``make run`` restarted would leave every checkout link a 404 and every purchase
unknown to Stripe. The file is JSON, rewritten whole (aside, then renamed into place) after
each request that may change the account and whenever a delayed change (a refund that fails
later, an expired checkout page, a webhook delivery) has happened since, and flushed to the
disk before the rename, so a crash leaves the old file or the new one, never half of one.
Test misbehaviours (API faults, webhook settings) are not kept: a restart starts without
them. Events still on their way when the emulator stopped are sent again when it starts,
as Stripe goes on retrying; held ones stay held. A file that cannot be read is moved aside
with a warning and the emulator starts empty, rather than not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tokenbank.emulator import events, shapes
from tokenbank.emulator.cards import BY_NUMBER
from tokenbank.emulator.state import Delivery, Emulator, StoredReply, clear, stores

log = logging.getLogger("tokenbank.emulator")

FORMAT = 1
#: How often delayed changes are looked for.
SAVE_EVERY_SECONDS = 1.0

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]


def snapshot(em: Emulator) -> str:
    """The account as JSON: what a restarted emulator needs to go on where it was."""
    kept: dict[str, Any] = {"format": FORMAT}
    for name in (*stores(), "line_items", "intent_data", "payers", "subscription_data"):
        kept[name] = getattr(em, name)
    kept["clock_offset"] = shapes.CLOCK.offset
    kept["hidden"] = sorted(em.hidden)
    kept["cards"] = {method: card.number for method, card in em.cards.items()}
    kept["replies"] = {key: asdict(reply) for key, reply in em.replies.items()}
    kept["deliveries"] = {id: asdict(delivery) for id, delivery in em.deliveries.items()}
    kept["held"] = list(em.held)
    return json.dumps(kept, separators=(",", ":"), sort_keys=True)


def restore(em: Emulator, text: str) -> None:
    """Load a ``snapshot`` into an empty account."""
    kept = json.loads(text)
    if kept.get("format") != FORMAT:
        raise ValueError(f"unknown emulator state format: {kept.get('format')!r}")
    for name in (*stores(), "line_items", "intent_data", "payers", "subscription_data"):
        getattr(em, name).update(kept.get(name, {}))
    shapes.CLOCK.offset = int(kept.get("clock_offset", 0))
    em.hidden.update(kept.get("hidden", []))
    em.cards.update({method: BY_NUMBER[number] for method, number in kept["cards"].items()})
    em.replies.update({key: StoredReply(**reply) for key, reply in kept["replies"].items()})
    for id, delivery in kept["deliveries"].items():
        delivery["outstanding"] = 0  # no attempt outlives the process: ``resume`` sends again
        em.deliveries[id] = Delivery(**delivery)
    em.held.extend(kept.get("held", []))


def resume(em: Emulator) -> list[str]:
    """Send again the events that were still on their way when the emulator stopped (in the
    running loop); returns their ids."""
    unsent = [
        id
        for id, delivery in em.deliveries.items()
        if delivery.state == "pending" and id in em.events and id not in em.held
    ]
    for id in unsent:
        events.redeliver(em, em.events[id])
    return unsent


class Keeper:
    """Writes the account to ``path`` when it changed since the last write."""

    def __init__(self, em: Emulator, path: Path) -> None:
        self.em = em
        self.path = path
        self.written = ""

    def load(self) -> None:
        if not self.path.exists():
            return
        try:
            text = self.path.read_text(encoding="utf-8")
            restore(self.em, text)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.unreadable")
            log.warning(
                "the saved account %s cannot be read (%s): moved to %s, starting empty",
                self.path,
                exc,
                aside,
            )
            self.path.replace(aside)
            clear(self.em)  # whatever the cut-off file got in
            return
        self.written = text

    def save(self) -> None:
        text = snapshot(self.em)
        if text == self.written:
            return
        draft = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with draft.open("w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(draft, self.path)
        self.written = text

    def save_or_warn(self) -> None:
        """``save``, for the background: a full disk is said, and tried again next time."""
        try:
            self.save()
        except OSError as exc:
            log.warning("the account could not be saved to %s: %s", self.path, exc)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Save delayed changes while the app runs, and once more when it stops."""

        async def watch() -> None:
            while True:
                await asyncio.sleep(SAVE_EVERY_SECONDS)
                self.save_or_warn()

        resume(self.em)
        task = asyncio.get_running_loop().create_task(watch())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.save_or_warn()


class SaveAfterWrites:
    """ASGI middleware: the account is saved after every request that is not a read."""

    def __init__(self, app: ASGI, *, keeper: Keeper) -> None:
        self.app = app
        self.keeper = keeper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
                self.keeper.save_or_warn()

"""The emulated account kept in a file, as a real Stripe account outlives a restart.

Without it, ``make run`` restarted would leave every checkout link a 404 and every purchase
unknown to Stripe. The file is JSON, rewritten whole (aside, then renamed into place) after
each request that may change the account and whenever a delayed change (a refund that fails
later, an expired checkout page, a webhook delivery) has happened since. Test misbehaviours
(API faults, webhook settings) are not kept: a restart starts without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tokenbank.emulator.cards import BY_NUMBER
from tokenbank.emulator.state import Delivery, Emulator, StoredReply, stores

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
    for name in (*stores(), "line_items", "intent_data", "payers"):
        kept[name] = getattr(em, name)
    kept["hidden"] = sorted(em.hidden)
    kept["cards"] = {method: card.number for method, card in em.cards.items()}
    kept["replies"] = {key: asdict(reply) for key, reply in em.replies.items()}
    kept["deliveries"] = {id: asdict(delivery) for id, delivery in em.deliveries.items()}
    return json.dumps(kept, separators=(",", ":"), sort_keys=True)


def restore(em: Emulator, text: str) -> None:
    """Load a ``snapshot`` into an empty account."""
    kept = json.loads(text)
    if kept.get("format") != FORMAT:
        raise ValueError(f"unknown emulator state format: {kept.get('format')!r}")
    for name in (*stores(), "line_items", "intent_data", "payers"):
        getattr(em, name).update(kept.get(name, {}))
    em.hidden.update(kept.get("hidden", []))
    em.cards.update({method: BY_NUMBER[number] for method, number in kept["cards"].items()})
    em.replies.update({key: StoredReply(**reply) for key, reply in kept["replies"].items()})
    for id, delivery in kept["deliveries"].items():
        # One still on its way when the emulator stopped is not retried: reconcile finds it.
        if delivery["state"] == "pending":
            delivery["state"] = "failed"
            delivery["last_error"] = "the emulator stopped before delivering it"
        delivery["outstanding"] = 0
        em.deliveries[id] = Delivery(**delivery)


class Keeper:
    """Writes the account to ``path`` when it changed since the last write."""

    def __init__(self, em: Emulator, path: Path) -> None:
        self.em = em
        self.path = path
        self.written = ""

    def load(self) -> None:
        if self.path.exists():
            self.written = self.path.read_text(encoding="utf-8")
            restore(self.em, self.written)

    def save(self) -> None:
        text = snapshot(self.em)
        if text == self.written:
            return
        draft = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        draft.write_text(text, encoding="utf-8")
        os.replace(draft, self.path)
        self.written = text

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Save delayed changes while the app runs, and once more when it stops."""

        async def watch() -> None:
            while True:
                await asyncio.sleep(SAVE_EVERY_SECONDS)
                self.save()

        task = asyncio.get_running_loop().create_task(watch())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.save()


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
                self.keeper.save()

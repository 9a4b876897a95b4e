"""Fault points: places where a test can make the process die, to prove recovery.

A process dies between two steps in real life (kill -9, a crash, a power cut), and the
steps that matter most are those around a commit or a call to Stripe. Each named point
below is such a place; when the process was started with it armed, reaching it ends the
process at once (``os._exit(137)``, as kill -9 would: no cleanup, no answer sent).

Points are armed only when ``TOKENBANK_FAULT_INJECTION=1`` and never in production (the
settings refuse it); ``tests/faults`` restarts the service after each death and checks that
retries end with exactly one effect.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tokenbank.config import Settings

#: Every point the code declares, and where it is.
POINTS = {
    "spend.committed": "a spend is committed; its answer is not sent yet",
    "webhook.committed": "a webhook's effects (a credit...) are committed; no 200 sent yet",
    "purchase.opened": "a purchase's row is committed; Stripe is not called yet",
    "purchase.created": "Stripe created the purchase's session or payment; its id is not stored",
}


class Faults:
    """The points armed in this process (none by default)."""

    __slots__ = ("_armed",)

    def __init__(self, armed: Iterable[str] = ()) -> None:
        armed = frozenset(armed)
        unknown = armed - POINTS.keys()
        if unknown:
            raise ValueError(f"unknown fault points: {', '.join(sorted(unknown))}")
        self._armed = armed

    def __bool__(self) -> bool:
        return bool(self._armed)

    def point(self, name: str) -> None:
        """Die here if ``name`` is armed."""
        if name in self._armed:
            sys.stdout.flush()
            sys.stderr.write(f"fault point {name}: exiting\n")
            sys.stderr.flush()
            os._exit(137)


NONE = Faults()


def from_settings(settings: Settings) -> Faults:
    """The points ``TOKENBANK_FAULT_POINTS`` arms, if ``TOKENBANK_FAULT_INJECTION`` allows
    it (``with_secrets`` refuses it in production)."""
    if not settings.fault_injection:
        return NONE
    return Faults(p.strip() for p in settings.fault_points.split(",") if p.strip())

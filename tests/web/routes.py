"""The app's routes as the tests walk them: every one, the included routers' too, and a
value for each path parameter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi.routing import APIRoute

#: A value for each path parameter, so every route can be reached.
PATH_VALUES = {
    "user_id": "alice",
    "hold_id": "1",
    "transfer_id": "1",
    "purchase_id": "1",
    "package_id": "plus",
    "plan_id": "basic",
    "event_id": "evt_1",
    "token": "x",
    "mail_id": "1",
    "key_id": "1",
}


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every route of the app, the included routers' too (mounted without a prefix)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from api_routes(included.routes)

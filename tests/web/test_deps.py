"""No route pays a thread hand-off for a dependency that never blocks.

FastAPI runs a plain ``def`` dependency in its thread pool; for one that only reads the
service's parts (``web.deps``) that hand-off costs more than the read. The rule is swept
over every route the app serves, pages and API alike: each dependency in each route's
tree is ``async def``. A dependency that must block (a database read) belongs in the route
body, in one ``run_in_threadpool`` with the rest of its blocking work."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

from fastapi.dependencies.models import Dependant
from fastapi.testclient import TestClient

from tests.web.routes import api_routes


def _tree(dependant: Dependant) -> Iterator[Dependant]:
    for each in dependant.dependencies:
        yield each
        yield from _tree(each)


def test_every_dependency_of_every_route_runs_on_the_event_loop(client: TestClient) -> None:
    routes = list(api_routes(client.app.routes))  # type: ignore[attr-defined]
    assert len(routes) > 50
    blocking = sorted(
        {
            f"{route.path}: {getattr(each.call, '__qualname__', each.call)}"
            for route in routes
            for each in _tree(route.dependant)
            if each.call is not None
            and not inspect.iscoroutinefunction(each.call)
            and not inspect.iscoroutinefunction(getattr(each.call, "__call__", None))  # noqa: B004
        }
    )
    assert blocking == []

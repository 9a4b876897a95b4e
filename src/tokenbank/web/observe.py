"""Per-request plumbing, as one pure ASGI middleware: a request id on every log line and
response, an access log line, Prometheus metrics by route, and a cap on body size."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from tokenbank.logs import REQUEST_ID

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tokenbank_http_requests_total",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tokenbank_http_request_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.spends = Counter(
            "tokenbank_spends_total",
            "Successful spends (replays excluded).",
            registry=self.registry,
        )
        self.tokens_spent = Counter(
            "tokenbank_tokens_spent_total", "Tokens spent.", registry=self.registry
        )
        self.credits = Counter(
            "tokenbank_credits_total", "Credits by kind.", ["kind"], registry=self.registry
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.refusals = Counter(
            "tokenbank_refusals_total",
            "Requests refused with a domain error, by code.",
            ["code"],
            registry=self.registry,
        )
        self.purchases_started = Counter(
            "tokenbank_purchases_started_total",
            "Purchases started, by flow.",
            ["flow"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "tokenbank_webhook_events_total",
            "Stripe events received and settled (processed) or seen before (duplicate).",
            ["result"],
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count a request and its latency (label lookups cached: they are per request)."""
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            if len(self._children) < 1000:  # clients choose methods; keep this bounded
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


def _given_id(value: bytes) -> str | None:
    """The caller's own request id, if it is one we can echo and log safely."""
    candidate = value.decode("latin-1")
    return candidate if 0 < len(candidate) <= 64 and candidate.isprintable() else None


# Unique per process start and request, without a system call per request (uuid4 reads
# os.urandom: a measurable share of a request's CPU).
_PROCESS = uuid.uuid4().hex[:20]
_SERIAL = itertools.count()


def _too_large(max_body: int) -> tuple[Message, Message]:
    body = json.dumps(
        {
            "type": "about:blank#payload_too_large",
            "title": "Request too large",
            "status": 413,
            "code": "payload_too_large",
            "detail": f"the body must be at most {max_body} bytes",
        }
    ).encode()
    start = {
        "type": "http.response.start",
        "status": 413,
        "headers": [(b"content-type", b"application/problem+json")],
    }
    return start, {"type": "http.response.body", "body": body}


#: Routes whose path carries a secret, never written to the access log.
SECRET_ROUTES = frozenset({"/portal/{token}"})


class BodyTooLarge(Exception):
    pass


class Observe:
    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, max_body: int, access_log: AccessLog | None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = None
        length = None
        body = False
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = _given_id(value)
            elif name == b"content-length":
                length, body = value, True
            elif name == b"transfer-encoding":
                body = True
        if request_id is None:
            request_id = f"{_PROCESS}{next(_SERIAL):012x}"
        REQUEST_ID.set(request_id)  # this request's own context: no reset needed
        status = 500
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._reject(send_with_id)
            self._record(scope, request_id, 413, started)
            return
        received = 0

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge
            return message

        try:
            # No body announced (a GET): nothing to count.
            await self.app(scope, receive_capped if body else receive, send_with_id)
        except BodyTooLarge:
            await self._reject(send_with_id)
        finally:
            self._record(scope, request_id, status, started)

    async def _reject(self, send: Send) -> None:
        start, body = _too_large(self.max_body)
        await send(start)
        await send(body)

    def _record(self, scope: Scope, request_id: str, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = getattr(scope.get("route"), "path", "unmatched")
        method = scope["method"]
        self.metrics.observe(method, route, status, elapsed)
        if self.access_log is not None:
            self.access_log.write(
                request_id=request_id,
                method=method,
                # A portal link's path is a one-time sign-in token: log the route instead.
                path=route if route in SECRET_ROUTES else scope["path"],
                route=route,
                status=status,
                ms=round(elapsed * 1000, 2),
            )


_json = json.JSONEncoder(ensure_ascii=True).encode


class AccessLog:
    """One JSON line per request, in the shape of structlog's lines (event, level,
    timestamp, request_id), buffered and written out in batches.

    Writing and flushing a line per request cost as much CPU as the rest of a balance
    read; batching makes it one write every ``interval`` (or every ``batch`` lines). A line
    reaches the log at most ``interval`` late; lines still buffered at shutdown are flushed.
    """

    def __init__(self, *, interval: float = 0.1, batch: int = 512) -> None:
        self._lines: list[str] = []
        self._interval = interval
        self._batch = batch
        self._second = -1
        self._stamp = ""

    def write(
        self, *, request_id: str, method: str, path: str, route: str, status: int, ms: float
    ) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # the date and time to the second, formatted once a second
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        # Client-controlled strings go through json.dumps; the rest is known to be plain.
        self._lines.append(
            f'{{"request_id": {_json(request_id)}, "method": {_json(method)}, '
            f'"path": {_json(path)}, "route": {_json(route)}, "status": {status}, '
            f'"ms": {ms}, "event": "request", "level": "info", '
            f'"timestamp": "{self._stamp}.{int((now - second) * 1e6):06d}Z"}}'
        )
        if len(self._lines) >= self._batch:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()

    async def run(self) -> None:
        """Flush every ``interval`` until cancelled (the app's lifespan runs it)."""
        try:
            while True:
                await asyncio.sleep(self._interval)
                self.flush()
        finally:
            self.flush()

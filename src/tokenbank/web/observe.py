"""Per-request plumbing, as one pure ASGI middleware: a request id on every log line and
response, an access log line, Prometheus metrics by route, and a cap on body size."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = structlog.get_logger("tokenbank.http")


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
        self.refusals = Counter(
            "tokenbank_refusals_total",
            "Requests refused with a domain error, by code.",
            ["code"],
            registry=self.registry,
        )


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = str(value.decode("latin-1"))
            if 0 < len(candidate) <= 64 and candidate.isprintable():
                return candidate
    return f"{_PROCESS}{next(_SERIAL):012x}"


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


class BodyTooLarge(Exception):
    pass


class Observe:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await self._reject(send_with_id)
                self._record(scope, 413, started)
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
            await self.app(scope, receive_capped, send_with_id)
        except BodyTooLarge:
            await self._reject(send_with_id)
        finally:
            self._record(scope, status, started)

    async def _reject(self, send: Send) -> None:
        start, body = _too_large(self.max_body)
        await send(start)
        await send(body)

    def _record(self, scope: Scope, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = getattr(scope.get("route"), "path", "unmatched")
        method = scope["method"]
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.latency.labels(method, route).observe(elapsed)
        log.info(
            "request",
            method=method,
            path=scope["path"],
            route=route,
            status=status,
            ms=round(elapsed * 1000, 2),
        )

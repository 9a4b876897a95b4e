"""Per-request plumbing, as one pure ASGI middleware: a request id on every log line and
response, an access log line, Prometheus metrics by route, and a cap on body size."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Connection

from tokenbank.billing.purchases import count_awaiting_review
from tokenbank.billing.webhooks import count_unsettled
from tokenbank.db import Database
from tokenbank.logs import REQUEST_ID
from tokenbank.mail import retention
from tokenbank.mail.models import STATUSES
from tokenbank.web.problems import OPENAI_PATHS, openai_body
from tokenbank.worker import states

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
            "Stripe deliveries: settled in their request (processed), stored for the worker"
            " to settle (queued), or of an event seen before (duplicate).",
            ["result"],
            registry=self.registry,
        )

        self.llm_calls = Counter(
            "tokenbank_llm_calls_total",
            "Model calls through the gateway, by model and outcome.",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.llm_tokens = Counter(
            "tokenbank_llm_tokens_total",
            "Model tokens used (input, output) and tokenbank tokens charged, by model.",
            ["model", "kind"],
            registry=self.registry,
        )
        self.llm_first_token = Histogram(
            "tokenbank_llm_first_token_seconds",
            "Time from a call's admission to its first output, by model.",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )

    def observe_call(
        self,
        model: str,
        outcome: str,
        used: tuple[int, int] | None,
        charged: int,
        first_ms: int | None,
    ) -> None:
        """Count a settled model call (refusals are counted by ``refused_call``)."""
        self.llm_calls.labels(model, outcome).inc()
        if used is not None:
            self.llm_tokens.labels(model, "input").inc(used[0])
            self.llm_tokens.labels(model, "output").inc(used[1])
        self.llm_tokens.labels(model, "charged").inc(charged)
        if first_ms is not None:
            self.llm_first_token.labels(model).observe(first_ms / 1000)

    def watch_reviews(self, db: Database) -> None:
        """Purchases waiting for an admin (a payment that does not match its purchase, or
        credited here and not paid at Stripe), counted when scraped: alert on > 0."""

        def count() -> float:
            try:
                with db.read() as conn:
                    return float(count_awaiting_review(conn))
            except Exception:  # a scrape must not fail because the database does
                return float("nan")

        Gauge(
            "tokenbank_purchases_awaiting_review",
            "Purchases flagged for an admin's decision.",
            registry=self.registry,
        ).set_function(count)

    def watch_mail(self, db: Database) -> None:
        """Mail in the outbox by state, counted when scraped: alert on ``failed`` > 0, and
        on ``pending`` that keeps growing (the SMTP server is away)."""
        self._count_by_state(
            db,
            name="tokenbank_mail",
            documentation="Mails in the outbox, by state.",
            label="status",
            states=STATUSES,
            counts=retention.counts,
        )

    def watch_inbox(self, db: Database) -> None:
        """Stripe events stored but not settled, counted when scraped: ``waiting`` that
        keeps growing means no worker settles them; ``failed`` > 0, that settling fails
        (``tokenbank webhooks list --failed`` says why)."""
        self._count_by_state(
            db,
            name="tokenbank_webhook_events_unsettled",
            documentation="Stripe events stored and not settled yet, by state.",
            label="state",
            states=("waiting", "failed"),
            counts=count_unsettled,
        )

    def _count_by_state(
        self,
        db: Database,
        *,
        name: str,
        documentation: str,
        label: str,
        states: Iterable[str],
        counts: Callable[[Connection], Mapping[str, int]],
    ) -> None:
        """A gauge with one child per state, each reading ``counts`` when scraped."""
        gauge = Gauge(name, documentation, [label], registry=self.registry)

        def counter(state: str) -> Callable[[], float]:
            def count() -> float:
                try:
                    with db.read() as conn:
                        return float(counts(conn)[state])
                except Exception:  # a scrape must not fail because the database does
                    return float("nan")

            return count

        for state in states:
            gauge.labels(state).set_function(counter(state))

    def watch_jobs(self, db: Database) -> None:
        """The worker's timed jobs as every worker recorded them in the database, read when
        scraped, so that any number of workers report here and none needs a port: alert on
        a last success too long ago, or on failures that grow."""
        self.registry.register(JobsCollector(db))

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


class JobsCollector(Collector):
    """``tokenbank_job_*{job}``, one sample per row of the ``jobs`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> Iterable[Metric]:
        # The families without samples: registering must not read the database.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        try:
            with self.db.read() as conn:
                found = states(conn)
        except Exception:  # a scrape must not fail because the database does
            return families
        success, failure, runs, failures, items = families
        for job in found:
            success.add_metric(
                [job.name], job.last_success_at.timestamp() if job.last_success_at else 0.0
            )
            failure.add_metric(
                [job.name], job.last_failure_at.timestamp() if job.last_failure_at else 0.0
            )
            runs.add_metric([job.name], job.runs)
            failures.add_metric([job.name], job.failures)
            items.add_metric([job.name], job.items)
        return families

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
    ]:
        return (
            GaugeMetricFamily(
                "tokenbank_job_last_success_timestamp_seconds",
                "When a run of the job last succeeded (0: never).",
                labels=["job"],
            ),
            GaugeMetricFamily(
                "tokenbank_job_last_failure_timestamp_seconds",
                "When a run of the job last failed (0: never).",
                labels=["job"],
            ),
            CounterMetricFamily(
                "tokenbank_job_runs", "Runs of the job started, by all workers.", labels=["job"]
            ),
            CounterMetricFamily(
                "tokenbank_job_failures", "Runs of the job that failed.", labels=["job"]
            ),
            CounterMetricFamily(
                "tokenbank_job_items",
                "What the job's runs handled: holds or buckets expired, payments fixed, rows"
                " swept.",
                labels=["job"],
            ),
        )


def _given_id(value: bytes) -> str | None:
    """The caller's own request id, if it is one we can echo and log safely."""
    candidate = value.decode("latin-1")
    return candidate if 0 < len(candidate) <= 64 and candidate.isprintable() else None


# Unique per process start and request, without a system call per request (uuid4 reads
# os.urandom: a measurable share of a request's CPU).
_PROCESS = uuid.uuid4().hex[:20]
_SERIAL = itertools.count()


def _problem(
    status: int, code: str, title: str, detail: str, request_id: str, *, path: str
) -> tuple[Message, Message]:
    """A problem answer (RFC 9457) written by the middleware itself, for what it refuses
    before the app runs and for the app's own crashes; under the model gateway's paths, an
    error in OpenAI's shape, which its SDK reads."""
    if path.startswith(OPENAI_PATHS):
        kind = b"application/json"
        found = openai_body(status, code, detail, request_id=request_id)
    else:
        kind = b"application/problem+json"
        found = {
            "type": f"about:blank#{code}",
            "title": title,
            "status": status,
            "code": code,
            "detail": detail,
            "request_id": request_id,
        }
    body = json.dumps(found).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", kind),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


#: Routes whose path carries a secret, never written to the access log.
SECRET_ROUTES = frozenset(
    {"/portal/{token}", "/verify/{token}", "/password/reset/{token}", "/account/email/{token}"}
)

#: Sent with every answer that does not set its own (pages set a richer CSP, and
#: X-Frame-Options for browsers older than CSP's frame-ancestors): nothing may frame, sniff
#: or run it, and no URL leaks to another site.
BASE_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
)
#: Browsers must only ever reach a production deployment over HTTPS (two years).
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
NO_STORE = (b"cache-control", b"no-store")


class BodyTooLarge(Exception):
    pass


CRASHED = (
    "something went wrong on our side. Whatever was committed stays committed and nothing"
    " is half done: retry with the same idempotency key to learn the outcome."
)


log = structlog.get_logger("tokenbank.web")


def _read_headers(scope: Scope) -> tuple[str, bytes | None, bool]:
    """The request id (the caller's, or a new one), the Content-Length, and whether a body
    is announced at all (a length, or chunks)."""
    request_id = length = None
    body = False
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            request_id = _given_id(value)
        elif name == b"content-length":
            length, body = value, True
        elif name == b"transfer-encoding":
            body = True
    return request_id or f"{_PROCESS}{next(_SERIAL):012x}", length, body


class Observe:
    """The outermost layer of the app: it also refuses what no route should see (a body
    over the limit, announced or chunked; a NUL in the URL), adds the security headers to
    every answer, and turns a crash into a 500 problem answer on a connection that stays
    usable (the server would otherwise close it)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body: int,
        access_log: AccessLog | None,
        hsts: bool = False,
        gateway_body: int | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        #: The model gateway's limit (/v1/): prompts, with their images, are bigger.
        self.gateway_body = gateway_body or max_body
        self.access_log = access_log
        self.headers = (*BASE_HEADERS, HSTS) if hsts else BASE_HEADERS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: PLR0915 - one request's whole path
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id, length, body = _read_headers(scope)
        REQUEST_ID.set(request_id)  # this request's own context: no reset needed
        status = 500
        answered = False  # a response start reached the client
        too_large = False  # the body went over the limit: the app's own answer is dropped
        extra = (*self.headers, (b"x-request-id", request_id.encode()))
        path: str = scope["path"]
        static = path.startswith("/static/")
        max_body = self.gateway_body if path.startswith(OPENAI_PATHS) else self.max_body

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if too_large:
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                answered = True
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [h for h in extra if h[0] not in present]
                if b"cache-control" not in present and not static:
                    headers.append(NO_STORE)
                message["headers"] = headers
            await send(message)

        async def answer(start: Message, end: Message) -> None:
            """Our own answer, when the app has not answered (or its answer is dropped)."""
            nonlocal too_large
            too_large = False
            if not answered:
                await send_with_id(start)
                await send_with_id(end)

        if length is not None and length.isascii() and length.isdigit() and int(length) > max_body:
            await answer(*self._too_large(request_id, max_body, path))
            self._record(scope, request_id, 413, started)
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"].lower():
            detail = "the URL holds a NUL character"
            await answer(
                *_problem(400, "invalid_request", "Bad request", detail, request_id, path=path)
            )
            self._record(scope, request_id, 400, started)
            return
        received = 0

        async def receive_capped() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    too_large = True
                    raise BodyTooLarge
            return message

        try:
            # No body announced (a GET): nothing to count.
            await self.app(scope, receive_capped if body else receive, send_with_id)
        except BodyTooLarge:
            pass
        except Exception:
            route = getattr(scope.get("route"), "path", None)
            shown = route if route in SECRET_ROUTES else path  # no token in the log
            log.exception("unhandled_error", path=shown, method=scope["method"])
            if not too_large:
                await answer(
                    *_problem(
                        500, "internal_error", "Internal error", CRASHED, request_id, path=path
                    )
                )
        finally:
            if too_large:
                await answer(*self._too_large(request_id, max_body, path))
            self._record(scope, request_id, status, started)

    def _too_large(self, request_id: str, max_body: int, path: str) -> tuple[Message, Message]:
        return _problem(
            413,
            "payload_too_large",
            "Request too large",
            f"the body must be at most {max_body} bytes",
            request_id,
            path=path,
        )

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

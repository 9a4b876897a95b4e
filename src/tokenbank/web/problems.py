"""Errors as ``application/problem+json`` (RFC 9457), each with a stable ``code``.

The one table from ``tokenbank.errors`` to HTTP statuses lives here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import sqlalchemy as sa
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from tokenbank import errors, migrations
from tokenbank.db import Database, connection_lost, unavailable
from tokenbank.errors import (
    DatabaseUnavailable,
    SchemaOutOfDate,
    TokenbankError,
    Unavailable,
)

PROBLEM = "application/problem+json"
#: Paths whose callers are programs: their errors are problem+json, never a page.
MACHINE_PATHS = ("/api/", "/webhooks/", "/readyz", "/healthz", "/metrics", "/openapi.json")

log = structlog.get_logger("tokenbank.web")


#: Each error of ``tokenbank.errors`` -> its HTTP status. Every class is listed, the bases
#: too (tests/test_errors.py checks it): a new error gets a status by decision, not by
#: falling through to a default.
STATUS: dict[type[TokenbankError], int] = {
    errors.TokenbankError: 500,
    errors.ConfigurationError: 500,
    errors.CatalogError: 500,
    errors.NotConfigured: 503,
    errors.PaymentsNotConfigured: 503,
    errors.WebhooksNotConfigured: 503,
    errors.Unavailable: 503,
    errors.DatabaseUnavailable: 503,
    errors.SchemaOutOfDate: 503,
    errors.PaymentProviderUnavailable: 503,
    errors.InvalidArgument: 422,
    errors.MixedScriptEmail: 422,
    errors.WeakPassword: 422,
    errors.UnknownPackage: 422,
    errors.UnknownPlan: 422,
    errors.UnknownFeature: 422,
    errors.NotFound: 404,
    errors.UnknownUser: 404,
    errors.UnknownTransfer: 404,
    errors.UnknownHold: 404,
    errors.UnknownApiKey: 404,
    errors.UnknownPurchase: 404,
    errors.UnknownEvent: 404,
    errors.NoSubscription: 404,
    errors.UnknownModel: 404,
    errors.UnknownLlmKey: 404,
    errors.Conflict: 409,
    errors.IdempotencyConflict: 409,
    errors.NotRefundable: 409,
    errors.RefundExceedsSpend: 409,
    errors.HoldNotPending: 409,
    errors.HoldFrozen: 409,
    errors.UserExists: 409,
    errors.EmailTaken: 409,
    errors.PaymentMismatch: 409,
    errors.PurchaseClosed: 409,
    errors.SubscriptionExists: 409,
    errors.SubscriptionEnded: 409,
    errors.NothingToReview: 409,
    errors.InsufficientTokens: 402,
    errors.KeyCapReached: 402,
    errors.CallInProgress: 409,
    errors.Unauthenticated: 401,
    errors.InvalidApiKey: 401,
    errors.InvalidCredentials: 401,
    errors.Forbidden: 403,
    errors.EmailNotVerified: 403,
    errors.RateLimited: 429,
    errors.InvalidPortalLink: 400,
    errors.InvalidEmailLink: 400,
    errors.InvalidSignature: 400,
    errors.InvalidEvent: 400,
    errors.PaymentProviderError: 502,
    errors.StripeObjectMissing: 502,
    errors.UpstreamError: 502,
    errors.UpstreamTimeout: 504,
    errors.ProcessingFailed: 500,
}

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Insufficient tokens",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    502: "Bad gateway",
    504: "Gateway timeout",
    503: "Service unavailable",
}


def problem(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {
        "type": f"about:blank#{code}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


#: The model gateway's paths: their errors have OpenAI's shape, so its SDK reads them.
OPENAI_PATHS = ("/v1/",)
#: OpenAI's error ``type`` by status (its SDK picks the exception class by status).
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_body(
    status: int, code: str, message: str, *, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The body of an OpenAI-shaped error with this status (``openai_error``; the request
    middleware writes it too, for what it answers itself under ``OPENAI_PATHS``)."""
    kind = _OPENAI_TYPES.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code, **extra}}


def openai_error(
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}``: an error as OpenAI's API and
    SDK have it. A bad value is a 400 there (OpenAI's own status for one), not a 422."""
    status = 400 if status == 422 else status
    body = openai_body(status, code, message, param=param, **extra)
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return JSONResponse(body, status_code=status, headers=headers)


def status_of(exc: TokenbankError) -> int:
    """The status of the nearest class of ``exc`` in ``STATUS``."""
    return errors.nearest(STATUS, exc)


def _openai_for(exc: TokenbankError, extra: dict[str, Any]) -> Response:
    headers = extra.pop("headers", None)
    param = extra.pop("field", None)
    if isinstance(exc, errors.UpstreamError):
        # The SDK retries a 5xx: a failure before any output charged nothing.
        headers = {"x-should-retry": "true"}
    return openai_error(status_of(exc), exc.code, str(exc), param=param, headers=headers, **extra)


UnavailablePage = Callable[[Request, Unavailable], Awaitable[Response]]


def install(
    app: FastAPI,
    *,
    buy_url: str,
    on_refusal: Callable[[str], None],
    page: UnavailablePage | None = None,
    db: Database | None = None,
    head: str | None = None,
) -> None:
    """Register the handlers; ``buy_url`` is where a user short of tokens can buy more,
    ``on_refusal`` counts each domain error by code, and ``page`` renders "unavailable"
    for a browser (a program gets problem+json)."""

    async def respond(request: Request, exc: Unavailable) -> Response:
        on_refusal(exc.code)
        retry = {"Retry-After": str(exc.retry_after)}
        if request.url.path.startswith(OPENAI_PATHS):
            return openai_error(503, exc.code, str(exc), headers=retry)
        if page is not None and not request.url.path.startswith(MACHINE_PATHS):
            return await page(request, exc)
        return problem(503, exc.code, str(exc), headers={"Retry-After": str(exc.retry_after)})

    async def domain(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TokenbankError)
        if isinstance(exc, Unavailable):
            return await respond(request, exc)
        on_refusal(exc.code)
        extra: dict[str, Any] = {}
        if isinstance(exc, errors.InsufficientTokens):
            extra = {"available": exc.available, "requested": exc.requested, "buy_url": buy_url}
        elif isinstance(exc, errors.InvalidArgument):
            extra = {"field": exc.field}
        elif isinstance(exc, errors.RateLimited):
            extra = {"headers": {"Retry-After": str(exc.retry_after)}}
        if request.url.path.startswith(OPENAI_PATHS):
            return _openai_for(exc, extra)
        return problem(status_of(exc), exc.code, str(exc), **extra)

    async def database_failed(request: Request, exc: Exception) -> Response:
        """A database error that means "not now" (see ``db.unavailable``) is a 503; any
        other is a bug, and goes on to be a 500."""
        found = unavailable(exc)
        if found is None:
            raise exc
        if isinstance(found, SchemaOutOfDate):
            if db is None:
                raise exc
            try:
                current = await run_in_threadpool(migrations.is_current, db, head)
            except Exception:  # the database failing again: it is down
                found = DatabaseUnavailable("the database is unavailable")
            else:
                if current:
                    raise exc  # the schema is right: the query is wrong, a bug
        elif db is not None and connection_lost(exc):
            await db.recover()
        log.warning("unavailable", code=found.code, detail=str(found), error=type(exc).__name__)
        return await respond(request, found)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if request.url.path.startswith(OPENAI_PATHS):
            first: dict[str, Any] = next(iter(exc.errors()), {})
            where = [str(p) for p in first.get("loc", ()) if p not in ("body", "header")]
            return openai_error(
                400, "invalid_value", str(first.get("msg", "not valid")), param=".".join(where)
            )
        errors = [
            {
                "location": list(e.get("loc", ())),
                # An unreadable body says why (a repeated key, unstorable text...).
                "message": e.get("msg", "")
                + (f": {e['ctx']['error']}" if e.get("type") == "json_invalid" else ""),
            }
            for e in exc.errors()
        ]
        return problem(422, "validation_error", "the request is not valid", errors=errors)

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "bad_request"
        )
        if request.url.path.startswith(OPENAI_PATHS):
            return openai_error(exc.status_code, code, str(exc.detail))
        return problem(exc.status_code, code, str(exc.detail))

    app.add_exception_handler(TokenbankError, domain)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http)
    for failure in (sa.exc.SQLAlchemyError, psycopg.Error, sqlite3.Error):
        app.add_exception_handler(failure, database_failed)

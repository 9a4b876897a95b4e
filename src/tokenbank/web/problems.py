"""Errors as ``application/problem+json`` (RFC 9457), each with a stable ``code``.

The one table from domain errors to HTTP statuses lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tokenbank import billing, identity, ledger, users
from tokenbank.apikeys.service import InvalidApiKey, UnknownApiKey
from tokenbank.errors import TokenbankError
from tokenbank.payments.stripe import InvalidSignature, PaymentProviderError, WebhooksNotConfigured

PROBLEM = "application/problem+json"


class Forbidden(TokenbankError):
    code = "forbidden"


#: Domain error -> HTTP status. The first matching class (in order) wins.
STATUS: list[tuple[type[TokenbankError], int]] = [
    (InvalidApiKey, 401),
    (identity.InvalidCredentials, 401),
    (Forbidden, 403),
    (ledger.InsufficientTokens, 402),
    (ledger.NotFound, 404),
    (UnknownApiKey, 404),
    (ledger.InvalidArgument, 422),
    (ledger.IdempotencyConflict, 409),
    (ledger.RefundExceedsSpend, 409),
    (ledger.NotRefundable, 409),
    (ledger.HoldNotPending, 409),
    (ledger.HoldFrozen, 409),
    (users.UserExists, 409),
    (users.EmailTaken, 409),
    (identity.InvalidPortalLink, 400),
    (identity.RateLimited, 429),
    (billing.UnknownPackage, 422),
    (billing.UnknownPurchase, 404),
    (billing.PaymentMismatch, 409),
    (InvalidSignature, 400),
    (PaymentProviderError, 502),
    (billing.PaymentsNotConfigured, 503),
    (billing.ProcessingFailed, 500),
    (WebhooksNotConfigured, 503),
]

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Insufficient tokens",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request too large",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    502: "Payment provider error",
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


def status_of(exc: TokenbankError) -> int:
    return next((status for kind, status in STATUS if isinstance(exc, kind)), 400)


def install(app: FastAPI, *, buy_url: str, on_refusal: Callable[[str], None]) -> None:
    """Register the handlers; ``buy_url`` is where a user short of tokens can buy more, and
    ``on_refusal`` counts each domain error by code."""

    async def domain(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TokenbankError)
        on_refusal(exc.code)
        extra: dict[str, Any] = {}
        if isinstance(exc, ledger.InsufficientTokens):
            extra = {"available": exc.available, "requested": exc.requested, "buy_url": buy_url}
        elif isinstance(exc, ledger.InvalidArgument):
            extra = {"field": exc.field}
        elif isinstance(exc, identity.RateLimited):
            extra = {"headers": {"Retry-After": str(exc.retry_after)}}
        return problem(status_of(exc), exc.code, str(exc), **extra)

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"location": list(e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()
        ]
        return problem(422, "validation_error", "the request is not valid", errors=errors)

    async def http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "bad_request"
        )
        return problem(exc.status_code, code, str(exc.detail))

    app.add_exception_handler(TokenbankError, domain)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http)

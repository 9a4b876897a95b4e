"""What every /v1 request goes through: keys, parameters, Idempotency-Key replay, replies.

Kept apart from the endpoints so each of them is a plain function of its parameters.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tokenbank.emulator.forms import FormError, decode_form
from tokenbank.emulator.params import Params, StripeError, invalid
from tokenbank.emulator.shapes import Obj, new_id
from tokenbank.emulator.state import (
    ApiFault,
    Emulator,
    RequestOrigin,
    StoredReply,
    current_origin,
)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": (
        "Authorization, Content-Type, Idempotency-Key, Stripe-Version, Stripe-Account"
    ),
    "Access-Control-Expose-Headers": "Request-Id, Idempotency-Key, Idempotent-Replayed",
    "Access-Control-Max-Age": "300",
}


@dataclass(frozen=True, kw_only=True)
class Call:
    """One authenticated API call as an endpoint sees it."""

    em: Emulator
    params: Params
    path: dict[str, Any]
    public_url: str
    publishable: bool


Endpoint = Callable[[Call], Obj | tuple[int, Obj]]


def public_base(request: Request) -> str:
    """Where browsers reach the hosted pages: the configured URL or the one asked."""
    em: Emulator = request.app.state.emulator
    return (em.public_url or str(request.base_url)).rstrip("/")


def api(
    endpoint: Endpoint, *, publishable: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an endpoint in Stripe's request handling (``publishable``: Stripe.js may call it)."""

    async def handle(request: Request) -> Response:
        em: Emulator = request.app.state.emulator
        request_id = new_id("req")
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=CORS_HEADERS)
        fault = _take_fault(em, request)
        if fault is not None and not fault.after:
            return await _misbehave(em, fault, request_id)
        response = await carried_out(request, em, request_id)
        if fault is not None:
            return await _misbehave(em, fault, request_id)
        return response

    async def carried_out(request: Request, em: Emulator, request_id: str) -> Response:
        key = request.headers.get("idempotency-key") if request.method == "POST" else None
        try:
            params = await _read_params(request)
            is_publishable = authenticate(em, request, params, publishable=publishable)
        except StripeError as error:
            return reply(em, error.status, error.body(), request_id=request_id)
        if key:
            stored = em.replies.get(key)
            if stored is not None:
                return _replay(em, stored, request, params, key=key, request_id=request_id)
        token = current_origin.set(RequestOrigin(id=request_id, idempotency_key=key))
        try:
            result = endpoint(
                Call(
                    em=em,
                    params=params,
                    path=dict(request.path_params),
                    public_url=public_base(request),
                    publishable=is_publishable,
                )
            )
            status, body = result if isinstance(result, tuple) else (200, result)
        except StripeError as error:
            status, body = error.status, error.body()
        finally:
            current_origin.reset(token)
        if key and (status < 400 or status == 402):  # Stripe keeps results that executed
            em.replies[key] = StoredReply(
                method=request.method,
                path=request.url.path,
                params=params,
                status=status,
                body=body,
            )
        return reply(em, status, body, request_id=request_id, idempotency_key=key)

    return handle


def _take_fault(em: Emulator, request: Request) -> ApiFault | None:
    for fault in em.api_faults:
        if (
            fault.times > 0
            and fault.method in ("*", request.method)
            and fnmatch.fnmatchcase(request.url.path, fault.path)
        ):
            fault.times -= 1
            return fault
    return None


async def _misbehave(em: Emulator, fault: ApiFault, request_id: str) -> Response:
    """Answer as Stripe does when it fails: late, or with an error body of the status."""
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.status == 429:
        error = StripeError(
            status=429,
            type="invalid_request_error",
            code="rate_limit",
            message="Too many requests hit the API too quickly.",
        )
    else:
        error = StripeError(
            status=fault.status or 500,
            type="api_error",
            message="An unexpected error occurred (the emulator was asked to fail).",
        )
    return reply(em, error.status, error.body(), request_id=request_id)


def _replay(
    em: Emulator,
    stored: StoredReply,
    request: Request,
    params: Params,
    *,
    key: str,
    request_id: str,
) -> Response:
    if stored.method != request.method or stored.path != request.url.path:
        error = StripeError(
            status=400,
            type="idempotency_error",
            message=(
                "Keys for idempotent requests can only be used for the same endpoint they were "
                f"first used for ('{stored.method} {stored.path}' vs "
                f"'{request.method} {request.url.path}'). Try using a key other than '{key}' if "
                "you meant to execute a different request."
            ),
        )
        return reply(em, 400, error.body(), request_id=request_id)
    if stored.params != params:
        error = StripeError(
            status=400,
            type="idempotency_error",
            message=(
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request."
            ),
        )
        return reply(em, 400, error.body(), request_id=request_id)
    return reply(
        em, stored.status, stored.body, request_id=request_id, idempotency_key=key, replayed=True
    )


def reply(
    em: Emulator,
    status: int,
    body: Obj,
    *,
    request_id: str,
    idempotency_key: str | None = None,
    replayed: bool = False,
) -> Response:
    headers = {**CORS_HEADERS, "Request-Id": request_id, "Stripe-Version": em.api_version}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    if status >= 400:
        headers["Stripe-Should-Retry"] = "false"
    return JSONResponse(body, status_code=status, headers=headers)


async def _read_params(request: Request) -> Params:
    try:
        if request.method == "POST":
            body = (await request.body()).decode("utf-8")
            content_type = request.headers.get("content-type", "")
            if body and "json" in content_type:
                raise invalid(
                    "Invalid request: v1 endpoints take form-encoded parameters, not JSON."
                )
            return decode_form(body)
        return decode_form(request.url.query)
    except FormError as error:
        raise invalid(str(error)) from None
    except UnicodeDecodeError:
        raise invalid("Invalid request: the body is not UTF-8.") from None


def authenticate(em: Emulator, request: Request, params: Params, *, publishable: bool) -> bool:
    """Check the API key like Stripe; True when it is a publishable key (Stripe.js)."""
    key = _presented_key(request.headers.get("authorization", ""))
    if key is None and isinstance(params.get("key"), str):
        key = params["key"]  # Stripe.js sends its publishable key as a parameter
    if not key:
        raise _unauthorized(
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
            "YOUR_SECRET_KEY')."
        )
    if key.startswith("pk_test_"):
        if not publishable:
            raise _unauthorized(
                "This API call cannot be made with a publishable API key. Please use a secret "
                "API key."
            )
        return True
    accepted = key == em.api_key if em.api_key else key.startswith(("sk_test_", "rk_test_"))
    if not accepted:
        raise _unauthorized(f"Invalid API Key provided: {_redact(key)}")
    return False


def _presented_key(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode().split(":", 1)[0] or None
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


def _redact(key: str) -> str:
    prefix = key.split("_", 2)
    shown = "_".join(prefix[:2]) + "_" if len(prefix) == 3 else ""
    return f"{shown}{'*' * 12}{key[-4:]}"


def _unauthorized(message: str) -> StripeError:
    return StripeError(status=401, message=message)


async def unknown_url(request: Request) -> Response:
    em: Emulator = request.app.state.emulator
    if request.method == "OPTIONS":
        return Response(status_code=204, headers=CORS_HEADERS)
    error = StripeError(
        status=404,
        message=(
            f"Unrecognized request URL ({request.method}: {request.url.path}). The emulator "
            "serves only the part of Stripe's API that tokenbank uses."
        ),
    )
    return reply(em, 404, error.body(), request_id=new_id("req"))

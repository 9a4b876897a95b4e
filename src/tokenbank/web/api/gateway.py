"""The model gateway: ``POST /v1/chat/completions`` and ``GET /v1/models``, compatible
with the OpenAI API so the official SDK works unchanged with ``base_url`` pointed here;
and, under /api/v1, the host app's side: end users' model keys and their usage.

Errors under /v1 have OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``,
``web/problems.py``); short of tokens is a 402 with ``type: insufficient_quota``, which
the SDK does not retry.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tokenbank.apikeys import Scope
from tokenbank.errors import (
    Forbidden,
    InvalidApiKey,
    InvalidArgument,
    NotConfigured,
)
from tokenbank.llm import keys as llm_keys
from tokenbank.llm import usage as llm_usage
from tokenbank.llm.calls import Caller
from tokenbank.llm.gateway import Gateway, Reply
from tokenbank.llm.keys import KEY_PREFIX, LlmKey
from tokenbank.logs import REQUEST_ID
from tokenbank.web.api.responses import GATEWAY_ERRORS, PROBLEMS
from tokenbank.web.auth import bearer_secret
from tokenbank.web.deps import DatabaseDep, Reader, RowId, Spender, UserId
from tokenbank.web.routing import StrictRoute, loads
from tokenbank.web.runtime import Runtime, runtime
from tokenbank.web.schemas import (
    LlmKeyIn,
    LlmKeyOut,
    LlmKeysOut,
    UsageOut,
    UsageRowOut,
)

router = APIRouter(prefix="/v1", responses=GATEWAY_ERRORS, tags=["gateway"])
keys_router = APIRouter(
    prefix="/api/v1", responses=PROBLEMS, route_class=StrictRoute, tags=["gateway"]
)

IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        # An empty key is no key: it would name every call alike, and keep no reply.
        min_length=1,
        max_length=255,
        description="A retried call with the same key is charged once.",
    ),
]


def _gateway(parts: Runtime) -> Gateway:
    if parts.gateway is None:
        raise NotConfigured("no models are configured (TOKENBANK_MODELS)")
    return parts.gateway


async def caller(request: Request, parts: Runtime) -> Caller:
    """Who is calling: an end user's key (``tbu_...``), or the host app's key with the
    ``spend`` scope and ``X-Tokenbank-User``."""
    header = request.headers.get("authorization")
    if header is None:
        raise InvalidApiKey("missing API key: send 'Authorization: Bearer <key>'")
    secret = bearer_secret(header.encode("latin-1", "replace"))
    if secret.startswith(KEY_PREFIX):
        if request.headers.get("x-tokenbank-user") is not None:
            raise InvalidArgument("X-Tokenbank-User", "a user's key acts for its user alone")
        return Caller(secret=secret)
    key = await parts.keys.verify(header.encode("latin-1", "replace"), request.scope.get("client"))
    if not key.allows(Scope.SPEND):
        raise Forbidden("this API key lacks the 'spend' scope")
    user = request.headers.get("x-tokenbank-user")
    if not user or len(user) > 255 or not user.isprintable() or "/" in user or " " in user:
        raise InvalidArgument("X-Tokenbank-User", "name the user to charge (the host app's id)")
    return Caller(user_id=user)


@router.get("/models")
async def list_models(request: Request) -> JSONResponse:
    """The models, each with its price in tokens per million input and output tokens
    (``pricing``). Any valid key may list them."""
    parts = runtime(request)
    gateway = _gateway(parts)
    who = await caller(request, parts)
    if who.secret is not None:
        try:
            await run_in_threadpool(_check_key, parts, who.secret)
        except InvalidApiKey:  # counted as on every route: keys are not guessed here either
            await _wrong_key(request, parts)
            raise
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {
                    "id": model.id,
                    "object": "model",
                    "created": 0,
                    "owned_by": model.upstream.id,
                    "name": model.name.get("en", model.id),
                    "max_output_tokens": model.max_output_tokens,
                    "pricing": {
                        "unit": "tokenbank tokens per million model tokens",
                        "input_per_million": model.input_per_million,
                        "output_per_million": model.output_per_million,
                    },
                }
                for model in gateway.catalog.models
            ],
        }
    )


async def _wrong_key(request: Request, parts: Runtime) -> None:
    """Count a wrong model key against its address (``RateLimited`` past the limit)."""
    client = request.scope.get("client")
    await run_in_threadpool(parts.throttle.hit, "api_key_ip", client[0] if client else "?")


def _check_key(parts: Runtime, secret: str) -> LlmKey:
    with parts.db.read() as conn:
        return llm_keys.find_key(conn, secret=secret)


@router.post("/chat/completions")
async def chat_completions(request: Request, idempotency_key: IdempotencyHeader = None) -> Response:
    """A chat completion, streamed or not, as OpenAI's: the most it may cost is held first
    (402 ``insufficient_tokens`` when the wallet cannot cover it, nothing forwarded), and
    what it used is charged after (docs/gateway.md)."""
    parts = runtime(request)
    gateway = _gateway(parts)
    who = await caller(request, parts)
    try:
        # Strictly, as every API body: no repeated keys, no text a database cannot store.
        body = loads(await request.body())
    except ValueError as exc:
        raise InvalidArgument("body", f"must be JSON: {exc}") from None
    try:
        reply = await gateway.complete(
            caller=who,
            body=body,
            request_id=REQUEST_ID.get() or "",
            idempotency_key=idempotency_key,
        )
    except InvalidApiKey:
        await _wrong_key(request, parts)
        raise
    if isinstance(reply, Reply):
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)
    return StreamingResponse(
        reply.events,
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no", **reply.headers},
    )


def _key_out(key: LlmKey, secret: str | None = None) -> LlmKeyOut:
    return LlmKeyOut(
        id=key.id,
        user_id=key.user_id,
        name=key.name,
        prefix=key.prefix,
        daily_cap=key.daily_cap,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        key=secret,
    )


@keys_router.post("/users/{user_id}/llm-keys", status_code=201)
def create_llm_key(user_id: UserId, body: LlmKeyIn, _: Spender, db: DatabaseDep) -> LlmKeyOut:
    """A model key for the user, to give the ``openai`` SDK: ``key`` is in this answer
    only. It spends the user's tokens alone, at most ``daily_cap`` a day."""
    with db.transaction() as conn:
        key, secret = llm_keys.create_key(
            conn, user_id=user_id, name=body.name, daily_cap=body.daily_cap
        )
    return _key_out(key, secret)


@keys_router.get("/users/{user_id}/llm-keys")
def list_llm_keys(user_id: UserId, _: Reader, db: DatabaseDep) -> LlmKeysOut:
    """The user's model keys, newest first (by prefix; never the whole key)."""
    with db.read() as conn:
        return LlmKeysOut(keys=[_key_out(k) for k in llm_keys.list_keys(conn, user_id=user_id)])


@keys_router.post("/users/{user_id}/llm-keys/{key_id}/revoke")
def revoke_llm_key(user_id: UserId, key_id: RowId, _: Spender, db: DatabaseDep) -> LlmKeyOut:
    """Revoke a model key: every process refuses it from its next call. Repeating it is
    safe."""
    with db.transaction() as conn:
        return _key_out(llm_keys.revoke_key(conn, user_id=user_id, key_id=key_id))


@keys_router.get("/users/{user_id}/usage")
def user_usage(
    user_id: UserId,
    _: Reader,
    db: DatabaseDep,
    group_by: Annotated[Literal["model", "day"], Query()] = "model",
    since: Annotated[date | None, Query(description="First day (UTC), included.")] = None,
    until: Annotated[date | None, Query(description="Last day (UTC), included.")] = None,
) -> UsageOut:
    """The user's model calls summed by model or by day: calls by outcome, input and
    output tokens, tokens charged."""
    with db.read() as conn:
        rows = llm_usage.usage(conn, group_by=group_by, user_id=user_id, since=since, until=until)
    return UsageOut(
        user_id=user_id,
        group_by=group_by,
        rows=[UsageRowOut.model_validate(row, from_attributes=True) for row in rows],
    )

"""The model gateway's pages: a signed-in user's model keys (made, listed by prefix,
revoked), the example chat page that spends their tokens through the gateway, and the
admin's usage page (by model, by day, top users).

The chat page works without JavaScript (the form posts, the answer comes whole); with it,
``static/chat.js`` posts the same form to ``/chat/stream`` and shows the answer as it
streams, then its cost and the new balance.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tokenbank.columns import utcnow
from tokenbank.errors import InsufficientTokens, InvalidArgument, TokenbankError
from tokenbank.llm import keys as llm_keys
from tokenbank.llm import usage as llm_usage
from tokenbank.llm.calls import Caller
from tokenbank.llm.gateway import Gateway, Reply
from tokenbank.logs import REQUEST_ID
from tokenbank.web.deps import Lang, PageAdmin, PageUser, RowId, RuntimeDep
from tokenbank.web.i18n import Language
from tokenbank.web.problems import status_of
from tokenbank.web.render import redirect
from tokenbank.web.routing import PageRoute, loads
from tokenbank.web.runtime import Runtime
from tokenbank.web.texts import error_text

router = APIRouter(
    include_in_schema=False, default_response_class=HTMLResponse, route_class=PageRoute
)
#: The most of a conversation the chat page sends back with each prompt.
MAX_CONVERSATION = 20
MAX_PROMPT = 8_000


def _models(gateway: Gateway | None, lang: Language) -> list[dict[str, Any]]:
    if gateway is None:
        return []
    return [
        {
            "id": model.id,
            "name": model.name.get(lang.tag, model.name.get("en", model.id)),
            "input": model.input_per_million,
            "output": model.output_per_million,
        }
        for model in gateway.catalog.models
    ]


@router.get("/keys")
async def keys_page(
    request: Request, user: PageUser, parts: RuntimeDep, revoked: int | None = None
) -> Response:
    return await _keys(request, parts, user.user_id, notice_revoked=bool(revoked))


async def _keys(
    request: Request,
    parts: Runtime,
    user_id: str,
    *,
    created: tuple[llm_keys.LlmKey, str] | None = None,
    notice_revoked: bool = False,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    def read() -> list[llm_keys.LlmKey]:
        with parts.db.read() as conn:
            return llm_keys.list_keys(conn, user_id=user_id)

    lang = await parts.pages.language(request)
    return await parts.pages.render(
        request,
        "keys.html",
        status_code,
        keys=await run_in_threadpool(read),
        created=created,
        error=error,
        notice=lang.gettext("The key is revoked.") if notice_revoked else None,
        base_url=f"{parts.public_url}/v1",
        gateway=parts.gateway is not None,
    )


@router.post("/keys")
async def create_key(
    request: Request,
    user: PageUser,
    parts: RuntimeDep,
    lang: Lang,
    *,
    name: Annotated[str, Form(max_length=200)],
    daily_cap: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """A new key, shown on the page this once (only its hash is kept)."""
    try:
        cap = None
        if daily_cap.strip():
            if not (daily_cap.strip().isascii() and daily_cap.strip().isdigit()):
                raise InvalidArgument("daily_cap", "a whole number of tokens")
            cap = int(daily_cap.strip())

        def make() -> tuple[llm_keys.LlmKey, str]:
            with parts.db.transaction() as conn:
                return llm_keys.create_key(
                    conn, user_id=user.user_id, name=name.strip(), daily_cap=cap
                )

        created = await run_in_threadpool(make)
    except TokenbankError as exc:
        return await _keys(
            request,
            parts,
            user.user_id,
            error=error_text(lang, exc),
            status_code=status_of(exc),
        )
    return await _keys(request, parts, user.user_id, created=created)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: RowId, user: PageUser, parts: RuntimeDep) -> Response:
    def revoke() -> None:
        with parts.db.transaction() as conn:
            llm_keys.revoke_key(conn, user_id=user.user_id, key_id=key_id)

    await run_in_threadpool(revoke)
    return redirect("/keys?revoked=1")


@router.get("/chat")
async def chat_page(request: Request, _: PageUser, parts: RuntimeDep, lang: Lang) -> Response:
    return await parts.pages.render(
        request, "chat.html", models=_models(parts.gateway, lang), gateway=parts.gateway
    )


def _conversation(model: str, prompt: str, history: str) -> dict[str, Any]:
    """The request the chat page sends the gateway: the conversation so far (as the page
    kept it, checked here), then the new prompt."""
    if not prompt.strip():
        raise InvalidArgument("prompt", "write a message")
    messages: list[dict[str, str]] = []
    if history.strip():
        try:  # as strictly as any body: no repeated keys, no unstorable text, no deep nesting
            earlier = loads(history.encode("utf-8", "surrogatepass"))
        except ValueError:
            earlier = None
        if not isinstance(earlier, list) or not all(
            isinstance(m, dict)
            and m.get("role") in ("user", "assistant")
            and isinstance(m.get("content"), str)
            for m in earlier
        ):
            raise InvalidArgument("history", "the conversation could not be read")
        messages = [{"role": m["role"], "content": m["content"]} for m in earlier]
    messages = [*messages[-MAX_CONVERSATION:], {"role": "user", "content": prompt}]
    return {"model": model, "messages": messages}


ChatForm = Annotated[str, Form(max_length=MAX_PROMPT)]


@router.post("/chat")
async def chat_send(
    request: Request,
    user: PageUser,
    parts: RuntimeDep,
    lang: Lang,
    *,
    model: Annotated[str, Form(max_length=128)],
    prompt: ChatForm,
    history: Annotated[str, Form(max_length=200_000)] = "",
) -> Response:
    """Without JavaScript: the answer comes whole, with its cost."""
    models = _models(parts.gateway, lang)
    try:
        reply = await _complete(parts, user.user_id, _conversation(model, prompt, history))
        assert isinstance(reply, Reply)
    except TokenbankError as exc:
        return await parts.pages.render(
            request,
            "chat.html",
            status_of(exc),
            models=models,
            gateway=parts.gateway,
            error=error_text(lang, exc),
            short=isinstance(exc, InsufficientTokens),
            prompt=prompt,
            chosen=model,
        )
    answer = None
    if reply.status == 200 and isinstance(reply.body, dict):
        choices = reply.body.get("choices") or [{}]
        answer = (choices[0].get("message") or {}).get("content")
    return await parts.pages.render(
        request,
        "chat.html",
        models=models,
        gateway=parts.gateway,
        prompt=prompt,
        answer=answer,
        charged=reply.headers.get("x-tokenbank-charged"),
        chosen=model,
    )


async def _complete(parts: Runtime, user_id: str, body: dict[str, Any]) -> Any:
    if parts.gateway is None:
        raise InvalidArgument("model", "no models are configured here")
    return await parts.gateway.complete(
        caller=Caller(user_id=user_id), body=body, request_id=REQUEST_ID.get() or ""
    )


@router.post("/chat/stream")
async def chat_stream(
    user: PageUser,
    parts: RuntimeDep,
    lang: Lang,
    *,
    model: Annotated[str, Form(max_length=128)],
    prompt: ChatForm,
    history: Annotated[str, Form(max_length=200_000)] = "",
) -> Response:
    """For ``chat.js``: the gateway's stream as it comes; a refusal is JSON with the
    page's sentence (and ``buy_url`` when the tokens ran out)."""
    try:
        body = {**_conversation(model, prompt, history), "stream": True}
        reply = await _complete(parts, user.user_id, body)
    except TokenbankError as exc:
        found: dict[str, Any] = {"code": exc.code, "message": error_text(lang, exc)}
        if isinstance(exc, InsufficientTokens):
            found["buy_url"] = "/pricing"
        return JSONResponse(found, status_code=status_of(exc))
    if isinstance(reply, Reply):  # the upstream refused the request
        return JSONResponse(
            {"code": "upstream_refused", "message": lang.gettext("The model refused this.")},
            status_code=reply.status,
        )
    return StreamingResponse(
        reply.events, media_type="text/event-stream", headers={"cache-control": "no-store"}
    )


@router.get("/admin/usage")
async def admin_usage(request: Request, _: PageAdmin, parts: RuntimeDep) -> Response:
    """Model calls over the last 30 days: by model, by day, and the users who spent most."""
    since = (utcnow() - timedelta(days=29)).date()

    def read() -> dict[str, list[llm_usage.UsageRow]]:
        with parts.db.read() as conn:
            usage = partial(llm_usage.usage, conn, since=since)
            return {
                "by_model": usage(group_by="model"),
                "by_day": usage(group_by="day"),
                "by_user": usage(group_by="user", limit=20),
            }

    found = await run_in_threadpool(read)
    return await parts.pages.render(
        request,
        "admin/usage.html",
        since=since,
        by_model=found["by_model"],
        by_day=found["by_day"],
        by_user=found["by_user"],
    )

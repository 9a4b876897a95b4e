"""The baseline for ``bench.gateway``: the least an OpenAI-compatible proxy can do.

Starlette on uvicorn, one ``aiohttp`` client session to the upstream (the gateway's own
client, for a like-for-like comparison), the request body and the answer passed through
as bytes: no keys, no database, no parsing, no logs, no metrics. Run as:

    BENCH_UPSTREAM=http://127.0.0.1:12112/v1 uvicorn bench.proxy_app:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

UPSTREAM = os.environ["BENCH_UPSTREAM"].rstrip("/")
SESSION: list[aiohttp.ClientSession] = []  # made in the server's event loop


async def chat(request: Request) -> Response:
    answer = await SESSION[0].post(
        f"{UPSTREAM}/chat/completions",
        data=await request.body(),
        headers={"content-type": "application/json"},
    )
    kind = answer.headers.get("content-type", "application/json")
    if kind.startswith("text/event-stream"):
        return StreamingResponse(
            answer.content.iter_any(), media_type=kind, background=BackgroundTask(answer.close)
        )
    content = await answer.read()
    answer.close()
    return Response(content, status_code=answer.status, media_type=kind)


async def health(_: Request) -> Response:
    return Response("ok")


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    SESSION.append(
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=4),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600),
        )
    )
    yield
    await SESSION.pop().close()


app = Starlette(
    routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)],
    lifespan=lifespan,
)

"""The baseline for ``bench.gateway``: the least an OpenAI-compatible proxy can do.

Starlette on uvicorn, one ``httpx.AsyncClient`` to the upstream, the request body and the
answer passed through as bytes: no keys, no database, no parsing, no logs, no metrics.
Run as:

    BENCH_UPSTREAM=http://127.0.0.1:12112/v1 uvicorn bench.proxy_app:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

UPSTREAM = os.environ["BENCH_UPSTREAM"].rstrip("/")
client = httpx.AsyncClient(
    timeout=httpx.Timeout(600, connect=10),
    limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
    trust_env=False,
)


async def chat(request: Request) -> Response:
    upstream = client.build_request(
        "POST",
        f"{UPSTREAM}/chat/completions",
        content=await request.body(),
        headers={"content-type": "application/json"},
    )
    answer = await client.send(upstream, stream=True)
    kind = answer.headers.get("content-type", "application/json")
    if kind.startswith("text/event-stream"):
        return StreamingResponse(
            answer.aiter_raw(), media_type=kind, background=BackgroundTask(answer.aclose)
        )
    content = await answer.aread()
    await answer.aclose()
    return Response(content, status_code=answer.status_code, media_type=kind)


async def health(_: Request) -> Response:
    return Response("ok")


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    yield
    await client.aclose()


app = Starlette(
    routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)],
    lifespan=lifespan,
)

"""The gateway's HTTP client to its upstreams: aiohttp against httpx, in one run.

    python -m bench.upstream_client [--seconds 6] [--streams 32]

The model emulator (``tokenbank llm-emulator``, no delay) answers streamed chat
completions of 50 chunks; each client makes them from ``--streams`` concurrent tasks, its
connections kept alive, reading every answer to its end, as the gateway does. Printed: calls
per second and this process's CPU time per call for each client, and their ratio, twice
over, interleaved. ``llm/gateway.py`` took aiohttp on these figures (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import httpx

from bench.gateway import BIN, process
from bench.http import free_port

BODY = json.dumps(
    {
        "model": "bench",
        "stream": True,
        "max_tokens": 50,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "[[tokens=50]]"}],
    }
).encode()
HEADERS = {"content-type": "application/json"}


async def with_httpx(url: str, streams: int, seconds: float) -> int:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    calls = 0
    async with httpx.AsyncClient(timeout=60, limits=limits, trust_env=False) as client:

        async def stream() -> None:
            nonlocal calls
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                request = client.build_request("POST", url, content=BODY, headers=HEADERS)
                answer = await client.send(request, stream=True)
                async for _ in answer.aiter_raw():
                    pass
                await answer.aclose()
                calls += 1

        await asyncio.gather(*(stream() for _ in range(streams)))
    return calls


async def with_aiohttp(url: str, streams: int, seconds: float) -> int:
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=4)
    calls = 0
    async with aiohttp.ClientSession(connector=connector) as session:

        async def stream() -> None:
            nonlocal calls
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                async with session.post(url, data=BODY, headers=HEADERS) as answer:
                    async for _ in answer.content.iter_any():
                        pass
                calls += 1

        await asyncio.gather(*(stream() for _ in range(streams)))
    return calls


Client = Callable[[str, int, float], Coroutine[Any, Any, int]]


def measure(client: Client, url: str, streams: int, seconds: float) -> tuple[float, float]:
    """Calls per second, and CPU milliseconds per call."""
    cpu, wall = time.process_time(), time.perf_counter()
    calls: int = asyncio.run(client(url, streams, seconds))
    return calls / (time.perf_counter() - wall), (time.process_time() - cpu) / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--streams", type=int, default=32)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(BIN / "tokenbank"), "llm-emulator", "--port", str(port)]
    with process(command, {}, f"{base}/_emulator/health"):
        url = f"{base}/v1/chat/completions"
        print(f"{args.streams} concurrent streams of 50 chunks, {args.seconds:g} s per client")
        for _ in range(2):
            results = {}
            for name, client in (("httpx", with_httpx), ("aiohttp", with_aiohttp)):
                rate, cpu = results[name] = measure(client, url, args.streams, args.seconds)
                print(f"  {name:<8} {rate:6.0f} calls/s  CPU per call {cpu:5.2f} ms")
            print(
                "  aiohttp against httpx: throughput"
                f" {results['aiohttp'][0] / results['httpx'][0]:.2f}x,"
                f" CPU per call {results['aiohttp'][1] / results['httpx'][1]:.2f}x"
            )


if __name__ == "__main__":
    main()

"""Events and their signed webhook deliveries, with Stripe's retries and a test's mischief.

First attempts go out one event at a time in event order from a single worker task, so a
healthy receiver sees events in the order they happened; a failed attempt retries in its own
task on ``retry_delays`` without holding up later events (as with Stripe, order is then lost).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import time
from collections.abc import Coroutine
from typing import Any

import httpx

from tokenbank.emulator import shapes
from tokenbank.emulator.shapes import Obj
from tokenbank.emulator.state import NO_ORIGIN, Delivery, Emulator, current_origin

USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"


def emit(em: Emulator, type: str, obj: Obj, *, previous_attributes: Obj | None = None) -> Obj:
    """Record an event holding a snapshot of ``obj`` and, with a webhook URL, send it."""
    origin = current_origin.get() or NO_ORIGIN
    deliver = em.webhook_url is not None
    event = shapes.event(
        type=type,
        object=copy.deepcopy(obj),
        previous_attributes=copy.deepcopy(previous_attributes),
        api_version=em.api_version,
        request_id=origin.id,
        idempotency_key=origin.idempotency_key,
        pending_webhooks=1 if deliver else 0,
    )
    em.events[event["id"]] = event
    if deliver:
        _schedule(em, event)
    return event


def _schedule(em: Emulator, event: Obj) -> None:
    record = Delivery(event_id=event["id"], type=event["type"])
    em.deliveries[event["id"]] = record
    config = em.webhook_config
    if config.drop > 0:
        config.drop -= 1
        record.state = "dropped"
        event["pending_webhooks"] = 0
    elif config.reorder:
        record.state = "held"
        em.held.append(event["id"])
    else:
        _enqueue(em, [event["id"]])


def flush(em: Emulator) -> list[str]:
    """Send the held events, newest first; returns their ids in sending order."""
    ids = list(reversed(em.held))
    em.held.clear()
    for id in ids:
        em.deliveries[id].state = "pending"
    if ids:
        _enqueue(em, ids)
    return ids


def redeliver(em: Emulator, event: Obj) -> Delivery:
    """Send an event once more (with retries), as the Dashboard's "Resend" does."""
    record = em.deliveries.get(event["id"])
    if record is None:
        record = em.deliveries[event["id"]] = Delivery(event_id=event["id"], type=event["type"])
    record.state = "pending"
    record.copy_failed = False
    record.outstanding += 1
    _spawn(em, _deliver_copy(em, event, record))
    return record


def _enqueue(em: Emulator, ids: list[str]) -> None:
    if em.queue is None:
        em.queue = asyncio.Queue()
        _spawn(em, _first_attempts(em, em.queue))
    em.queue.put_nowait(ids)


def _spawn(em: Emulator, work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    em.tasks.add(task)
    task.add_done_callback(em.tasks.discard)


async def _first_attempts(em: Emulator, queue: asyncio.Queue[list[str]]) -> None:
    while True:
        for id in await queue.get():
            event, record = em.events.get(id), em.deliveries.get(id)
            if event is None or record is None:
                continue
            if em.webhook_config.delay_ms > 0:
                await asyncio.sleep(em.webhook_config.delay_ms / 1000)
            copies = max(1, em.webhook_config.duplicate)
            record.outstanding += copies
            await asyncio.gather(*(_deliver_copy(em, event, record) for _ in range(copies)))


async def _deliver_copy(em: Emulator, event: Obj, record: Delivery) -> None:
    """One attempt now; on failure the retries continue in a task of their own."""
    if await _attempt(em, event, record):
        _finish(event, record, ok=True)
    else:
        _spawn(em, _retry(em, event, record))


async def _retry(em: Emulator, event: Obj, record: Delivery) -> None:
    for delay in em.retry_delays:
        await asyncio.sleep(delay)
        if await _attempt(em, event, record):
            _finish(event, record, ok=True)
            return
    _finish(event, record, ok=False)


def _finish(event: Obj, record: Delivery, *, ok: bool) -> None:
    record.outstanding -= 1
    record.copy_failed = record.copy_failed or not ok
    if record.outstanding <= 0:
        record.outstanding = 0
        record.state = "failed" if record.copy_failed else "delivered"
        event["pending_webhooks"] = 0


def signature_header(*, payload: bytes, secret: str, timestamp: int) -> str:
    """``Stripe-Signature`` as Stripe computes it: HMAC-SHA256 of ``"{t}.{payload}"``."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


async def _attempt(em: Emulator, event: Obj, record: Delivery) -> bool:
    record.attempts += 1
    url, secret = em.webhook_url, em.webhook_secret
    if url is None:
        record.last_status, record.last_error = None, "no webhook_url configured"
        return False
    payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}
    if secret:
        headers["Stripe-Signature"] = signature_header(
            payload=payload, secret=secret, timestamp=int(time.time())
        )
    if em.http is None:
        em.http = httpx.AsyncClient(timeout=10)
    try:
        response = await em.http.post(url, content=payload, headers=headers)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        record.last_status, record.last_error = None, f"{type(exc).__name__}: {exc}"
        return False
    record.last_status = response.status_code
    ok = 200 <= response.status_code < 300
    record.last_error = None if ok else f"HTTP {response.status_code}"
    return ok


async def stop(em: Emulator) -> None:
    """Cancel every delivery in flight and wait for the tasks to end."""
    tasks = list(em.tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    em.tasks.clear()
    em.queue = None


async def close(em: Emulator) -> None:
    """Stop deliveries and release the HTTP client (on shutdown)."""
    await stop(em)
    if em.http is not None:
        await em.http.aclose()
        em.http = None

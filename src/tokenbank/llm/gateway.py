"""The OpenAI-compatible gateway: admit a call (``calls.admit``), forward it to the model's
upstream with nothing locked, and settle what it used (``calls.settle``).

Streams: the upstream is always asked for its usage chunk (``stream_options.include_usage``);
the client gets that chunk only if it asked for it. The call is settled when the upstream
says ``[DONE]``, before the client gets ``[DONE]``: a comment line just before it
(``: tokenbank charged=N balance=M``, which SSE clients ignore) tells the cost. When the
client goes away, Starlette cancels the stream: the relay then closes the upstream
connection (which cancels the upstream's call), and the settlement runs shielded from
the cancellation. A stream read to its end leaves its connection to the next call.

A stream cut before its usage arrived (the client went away, the upstream failed) is
charged what it used as far as the gateway can count: the input at the bound held for it
(no tokenizer is known for an arbitrary upstream; see ``estimate``), and one output token
per forwarded chunk that carried output (content, refusal, tool-call arguments or
reasoning) per choice, as OpenAI-compatible servers stream one token per chunk.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import aiohttp
import anyio
import psycopg

from tokenbank.db import Database
from tokenbank.errors import IdempotencyConflict, UnknownModel, UpstreamError, UpstreamTimeout
from tokenbank.identity.throttle import Counter
from tokenbank.llm import calls
from tokenbank.llm.calls import Admission, Caller, Payer, Settled, Usage
from tokenbank.llm.estimate import Bound, bound, check_request
from tokenbank.llm.keys import hash_key
from tokenbank.llm.models import Model, ModelCatalog
from tokenbank.llm.tables import CallStatus

#: The most of a streamed reply kept for an idempotent retry to replay.
MAX_STORED_REPLY = 1_000_000
#: How long the end of an upstream stream, after its ``[DONE]``, is waited for.
DRAIN_SECONDS = 1.0
#: The payers kept (``Gateway._payer``): about 100 bytes each.
MAX_PAYERS = 100_000

#: Told each settled call: the model, its outcome, usage, tokens charged, first token ms.
Observer = Callable[[str, CallStatus, Usage | None, int, int | None], None]


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole answer: the status and JSON body to send, and headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamReply:
    events: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


def _usage(raw: object, source: str = "upstream") -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (prompt, completion)
    ):
        return None
    assert isinstance(prompt, int) and isinstance(completion, int)
    return Usage(input_tokens=prompt, output_tokens=completion, source=source)


def _payer_key(caller: Caller) -> str:
    # A key's hash: secrets are not kept in memory beyond the request.
    return hash_key(caller.secret) if caller.secret is not None else f"user:{caller.user_id}"


def _error_event(message: str, code: str) -> bytes:
    body = {"error": {"message": message, "type": "api_error", "param": None, "code": code}}
    return f"data: {json.dumps(body)}\n\n".encode()


#: How long an idle upstream connection is kept: less than the 5 s after which uvicorn
#: (and other servers) close one, so that a call never takes a connection the upstream is
#: closing at that moment (a failed call, 502).
KEEPALIVE_SECONDS = 4.0
#: An upstream that could not be reached, went away, or did not answer in time.
UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError)


class Upstreams:
    """One HTTP client for every upstream, its connections kept alive: ``timeout_seconds``
    is the longest wait for a byte (connecting: 10 s at most). A session belongs to the
    event loop that made it: one per loop, made at its first call.

    aiohttp, not httpx (used elsewhere): relaying a streamed answer of 50 chunks cost its
    client 0.6 ms of CPU against httpx's 2.5 ms, measured side by side
    (docs/benchmarks.md), and with many connections kept alive httpx's pool does work on
    every request in proportion to their number."""

    def __init__(self, timeout_seconds: float) -> None:
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(10.0, timeout_seconds), sock_read=timeout_seconds
        )
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """The answer, once its headers came; its body is read, released or closed by the
        caller."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = self._sessions[loop] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=1000, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS
                ),
                timeout=self.timeout,
            )
        return await session.post(url, data=body, headers=headers)

    async def close(self) -> None:
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()


class Gateway:
    """The gateway's parts: the models, one HTTP client for every upstream, the database."""

    def __init__(
        self,
        *,
        db: Database,
        catalog: ModelCatalog,
        client: Upstreams,
        hold_ttl: int,
        observe: Observer | None = None,
        limit: Callable[[str], None] | None = None,
        counter: Callable[[str], Counter | None] | None = None,
        threads: int = 16,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.client = client
        self.hold_ttl = hold_ttl
        self.observe = observe
        #: Counts a call against its key's (or user's) rate limit; raises past it.
        self.limit = limit
        #: The same hit, for the admission to count in its own round trip, when the
        #: counters are in the database (``Throttle.counter``).
        self.counter = counter
        # Admissions and settlements the long way (SQLite, and PostgreSQL's uncommon
        # cases) run in threads of their own, no more at once than the database pool has
        # connections: a thread never waits there for one, and fewer threads contend for
        # the interpreter with the streams being relayed.
        self._threads = anyio.CapacityLimiter(threads)
        self._payers: dict[str, Payer] = {}
        #: Settlements under way, for ``finish`` to wait for.
        self._settling = 0
        self._settled = asyncio.Event()
        self._settled.set()

    async def finish(self, timeout: float) -> None:
        """Wait, ``timeout`` seconds at most, for the settlements under way: at shutdown,
        the streams cancelled past the grace settle what they streamed before the database
        is closed (uvicorn cancels them and goes on with the shutdown without awaiting
        them)."""
        for _ in range(3):  # the cancelled streams reach their settlement first
            await asyncio.sleep(0)
        with anyio.move_on_after(timeout):
            await self._settled.wait()

    def model(self, model_id: str) -> Model:
        found = self.catalog.find(model_id)
        if found is None:
            raise UnknownModel(model_id)
        return found

    async def complete(
        self,
        *,
        caller: Caller,
        body: dict[str, Any],
        request_id: str,
        idempotency_key: str | None = None,
    ) -> Reply | StreamReply:
        """One chat completion: admitted, forwarded, settled (see the module)."""
        model_id, _ = check_request(body)
        model = self.model(model_id)
        limit = bound(body, max_output_tokens=model.max_output_tokens)
        stream = bool(body.get("stream"))
        admission = await self._admit(
            caller=caller,
            model=model,
            limit=limit,
            stream=stream,
            request_id=request_id,
            idempotency_key=idempotency_key,
            digest=None if idempotency_key is None else calls.request_digest(body),
        )
        if admission.held == 0:
            return _replay(admission, stream)
        upstream_body = self._upstream_body(body, model, limit)
        started = time.perf_counter()
        if stream:
            return await self._stream(
                admission=admission,
                model=model,
                limit=limit,
                upstream_body=upstream_body,
                body=body,
                started=started,
                idempotency_key=idempotency_key,
            )
        return await self._whole(
            admission=admission,
            model=model,
            limit=limit,
            upstream_body=upstream_body,
            started=started,
            idempotency_key=idempotency_key,
        )

    async def _admit(
        self,
        *,
        caller: Caller,
        model: Model,
        limit: Bound,
        stream: bool,
        request_id: str,
        idempotency_key: str | None,
        digest: str | None,
    ) -> Admission:
        """The call admitted, its rate-limit hit counted once.

        On PostgreSQL the common case stays on the event loop, in one round trip
        (``calls.try_admit``; a payer not seen before costs one more, ``_payer``); the
        rest, and SQLite, take a thread (``calls.admit``). The admission is shielded: a
        client gone away meanwhile leaves no half-made call (a call made is then settled,
        as aborted, when forwarding it meets the cancellation)."""
        who = caller.secret or f"user:{caller.user_id}"
        counted = False
        admission = None
        if self.db.has_async:
            counter = self.counter(who) if self.counter is not None else None
            if counter is None and self.limit is not None:
                # Counters kept elsewhere (memory, Redis...): limits' synchronous storages
                # answer in well under a millisecond.
                self.limit(who)
            counted = True
            with anyio.CancelScope(shield=True):
                async with self.db.async_autocommit() as conn:
                    payer = await self._payer(conn, caller)
                    if payer is not None:
                        admission = await calls.try_admit(
                            conn,
                            payer=payer,
                            model=model,
                            bound=limit,
                            request_id=request_id,
                            stream=stream,
                            idempotency_key=idempotency_key,
                            request_digest=digest,
                            ttl_seconds=self.hold_ttl,
                            counter=counter,
                        )
                    elif counter is not None:
                        counted = False  # nothing was sent: ``admit`` counts it
            if admission is None and payer is not None:
                # A key revoked, a wallet short of tokens...: found again next time.
                self._payers.pop(_payer_key(caller), None)
        if admission is not None:
            return admission

        def admit() -> Admission:
            if self.limit is not None and not counted:
                self.limit(who)
            return calls.admit(
                self.db,
                caller=caller,
                model=model,
                bound=limit,
                request_id=request_id,
                stream=stream,
                idempotency_key=idempotency_key,
                request_digest=digest,
                ttl_seconds=self.hold_ttl,
            )

        return await anyio.to_thread.run_sync(admit, limiter=self._threads)

    async def _payer(self, conn: psycopg.AsyncConnection[Any], caller: Caller) -> Payer | None:
        """Who pays for ``caller``'s calls: kept for the next ones (it never changes)."""
        key = _payer_key(caller)
        payer = self._payers.get(key)
        if payer is None:
            payer = await calls.find_payer(conn, caller)
            if payer is not None:
                if len(self._payers) >= MAX_PAYERS:
                    self._payers.pop(next(iter(self._payers)))  # the oldest
                self._payers[key] = payer
        return payer

    def _upstream_body(self, body: dict[str, Any], model: Model, limit: Bound) -> dict[str, Any]:
        forwarded = {**body, "model": model.upstream_model}
        if limit.default_cap:
            forwarded[model.upstream.cap_field] = limit.output_cap
        if body.get("stream"):
            forwarded["stream_options"] = {
                **(body.get("stream_options") or {}),
                "include_usage": True,
            }
        return forwarded

    async def _send(self, model: Model, body: dict[str, Any]) -> aiohttp.ClientResponse:
        headers = {"content-type": "application/json"}
        if model.upstream.api_key:
            headers["authorization"] = f"Bearer {model.upstream.api_key}"
        return await self.client.post(
            f"{model.upstream.base_url}/chat/completions",
            json.dumps(body, ensure_ascii=False).encode(),
            headers,
        )

    async def _settle(
        self,
        admission: Admission,
        model: Model,
        status: CallStatus,
        usage: Usage | None,
        started: float,
        *,
        first_token: float | None = None,
        reply: Any = None,
        error: str | None = None,
    ) -> Settled:
        """Settle shielded: a client gone away cancels the request, never its charge."""
        latency = int((time.perf_counter() - started) * 1000)
        first = None if first_token is None else int((first_token - started) * 1000)
        self._settling += 1
        self._settled.clear()
        try:
            with anyio.CancelScope(shield=True):
                settled = await self._settle_shielded(
                    admission,
                    model,
                    status,
                    usage,
                    latency=latency,
                    first=first,
                    reply=reply,
                    error=error,
                )
        finally:
            self._settling -= 1
            if not self._settling:
                self._settled.set()
        return settled

    async def _settle_shielded(
        self,
        admission: Admission,
        model: Model,
        status: CallStatus,
        usage: Usage | None,
        *,
        latency: int,
        first: int | None,
        reply: Any,
        error: str | None,
    ) -> Settled:
        """``_settle``'s work: the common case in one round trip on PostgreSQL, else the
        long way in a thread."""
        settled: Settled | None = None
        if self.db.has_async:  # PostgreSQL: the common case in one round trip
            async with self.db.async_autocommit() as conn:
                settled = await calls.try_settle(
                    conn,
                    admission=admission,
                    model=model,
                    status=status,
                    usage=usage,
                    latency_ms=latency,
                    first_token_ms=first,
                    reply=reply,
                    error=error,
                )
        if settled is None:
            settled = await anyio.to_thread.run_sync(
                lambda: calls.settle(
                    self.db,
                    admission=admission,
                    model=model,
                    status=status,
                    usage=usage,
                    latency_ms=latency,
                    first_token_ms=first,
                    reply=reply,
                    error=error,
                ),
                limiter=self._threads,
            )
        if self.observe is not None and not settled.replayed:
            self.observe(model.id, status, usage, settled.charged, first)
        return settled

    async def _failed_before_output(
        self, admission: Admission, model: Model, started: float, exc: BaseException
    ) -> NoReturn:
        timeout = isinstance(exc, TimeoutError)
        await self._settle(
            admission,
            model,
            CallStatus.FAILED,
            None,
            started,
            error=f"{type(exc).__name__}: {exc}"[:200],
        )
        if timeout:
            raise UpstreamTimeout(f"the upstream of {model.id} did not answer in time") from None
        raise UpstreamError(f"the upstream of {model.id} could not be reached") from None

    async def _refused_upstream(
        self, admission: Admission, model: Model, started: float, status: int, content: bytes
    ) -> Reply:
        """The upstream answered with an error status before any output: nothing is
        charged. Its 4xx body goes to the client as it is (the request was wrong); a 5xx
        becomes a 502."""
        await self._settle(
            admission,
            model,
            CallStatus.FAILED,
            None,
            started,
            error=f"upstream status {status}",
        )
        if status >= 500:
            raise UpstreamError(f"the upstream of {model.id} failed with status {status}")
        try:
            body = json.loads(content)
        except (ValueError, RecursionError):  # not JSON, or nested past reading
            body = {
                "error": {
                    "message": content.decode("utf-8", "replace")[:500],
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        return Reply(status=status, body=body)

    async def _whole(
        self,
        *,
        admission: Admission,
        model: Model,
        limit: Bound,
        upstream_body: dict[str, Any],
        started: float,
        idempotency_key: str | None,
    ) -> Reply:
        try:
            async with await self._send(model, upstream_body) as response:
                status, content = response.status, await response.read()
        except UPSTREAM_ERRORS as exc:
            await self._failed_before_output(admission, model, started, exc)
        except BaseException:
            await self._settle(admission, model, CallStatus.ABORTED, None, started)
            raise
        if status != 200:
            return await self._refused_upstream(admission, model, started, status, content)
        try:
            body = json.loads(content)
        except (ValueError, RecursionError):  # not JSON, or nested past reading
            body = None
        if not isinstance(body, dict) or "choices" not in body:
            await self._settle(
                admission, model, CallStatus.FAILED, None, started, error="unreadable reply"
            )
            raise UpstreamError(f"the upstream of {model.id} sent an unreadable reply")
        usage = _usage(body.get("usage"))
        if usage is None:  # no usage: the bound, which is all that is known
            usage = Usage(limit.input_tokens, limit.output_tokens, "counted")
        settled = await self._settle(
            admission,
            model,
            CallStatus.OK,
            usage,
            started,
            first_token=time.perf_counter(),
            reply=body if idempotency_key else None,
        )
        return Reply(status=200, body=body, headers=_charge_headers(settled))

    async def _stream(
        self,
        *,
        admission: Admission,
        model: Model,
        limit: Bound,
        upstream_body: dict[str, Any],
        body: dict[str, Any],
        started: float,
        idempotency_key: str | None,
    ) -> Reply | StreamReply:
        try:
            response = await self._send(model, upstream_body)
        except UPSTREAM_ERRORS as exc:
            await self._failed_before_output(admission, model, started, exc)
        except BaseException:
            await self._settle(admission, model, CallStatus.ABORTED, None, started)
            raise
        if response.status != 200:
            try:
                content = await response.read()
            except UPSTREAM_ERRORS:
                content = b""
            finally:
                response.close()
            return await self._refused_upstream(admission, model, started, response.status, content)
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        relay = _Relay(
            gateway=self,
            admission=admission,
            model=model,
            limit=limit,
            response=response,
            started=started,
            wants_usage=wants_usage,
            keep=idempotency_key is not None,
        )
        return StreamReply(events=relay.events())


@dataclass(slots=True, kw_only=True)
class _Relay:
    """One stream, from the upstream to the client, counting what it carries."""

    gateway: Gateway
    admission: Admission
    model: Model
    limit: Bound
    response: aiohttp.ClientResponse
    started: float
    wants_usage: bool
    keep: bool
    usage: Usage | None = None
    counted: int = 0
    first_token: float | None = None
    kept: list[str] | None = None
    kept_size: int = 0

    def _keep(self, event: bytes) -> None:
        if not self.keep:
            return
        if self.kept is None:
            self.kept = []
        self.kept_size += len(event)
        if self.kept_size > MAX_STORED_REPLY:
            self.keep, self.kept = False, None
            return
        self.kept.append(event.decode())

    def _counted(self) -> Usage:
        return self.usage or Usage(self.limit.input_tokens, self.counted, "counted")

    async def events(self) -> AsyncIterator[bytes]:
        """The client's events. The call is settled before the client hears how it ended
        (``[DONE]``, or an error event), so a client that reads the end finds the charge
        made; a client gone away ends it here, in ``finally``."""
        settled = False

        async def settle(status: CallStatus, error: str | None = None) -> Settled:
            nonlocal settled
            settled = True
            return await self.gateway._settle(
                self.admission,
                self.model,
                status,
                self._counted(),
                self.started,
                first_token=self.first_token,
                reply=self.kept if status is CallStatus.OK else None,
                error=error,
            )

        upstream = _data(self.response)
        try:
            async for data in upstream:
                if data == b"[DONE]":
                    yield _charge_comment(await settle(CallStatus.OK))
                    yield b"data: [DONE]\n\n"
                    # The end of the body, read so that the upstream connection is kept
                    # for the next call (closed half-read, it would be dropped: a new
                    # connection, and TLS handshake, per call).
                    with anyio.move_on_after(DRAIN_SECONDS):
                        async for _ in upstream:
                            pass
                    return
                event, failed = self._relay(data)
                if failed:
                    await settle(CallStatus.FAILED, "an error event mid-stream")
                    yield b"data: " + data + b"\n\n"
                    return
                if event is not None:
                    self._keep(event)
                    yield event
            await settle(CallStatus.FAILED, "the stream ended before [DONE]")
            yield _error_event("the model's stream ended early", "upstream_error")
        except UPSTREAM_ERRORS as exc:
            await settle(CallStatus.FAILED, f"{type(exc).__name__}: {exc}")
            yield _error_event("the model's stream failed", "upstream_error")
        finally:
            # Read to its end, the connection goes back to the pool; otherwise it is
            # closed, which is how the upstream learns that its call was cancelled.
            self.response.close()
            if not settled:
                await settle(CallStatus.ABORTED)

    def _relay(self, data: bytes) -> tuple[bytes | None, bool]:
        """What to send the client for one upstream event: the event as it came, or
        nothing (the usage chunk the client did not ask for); and whether it said the
        upstream failed.

        A chunk is parsed only when it may hold an error or the usage: the others (nearly
        all of a stream) are counted by a pattern and passed on as they came, which keeps
        the gateway's work per chunk small."""
        if b'"error"' in data or _USAGE.search(data):
            try:
                chunk = json.loads(data)
            except (ValueError, RecursionError):
                return None, False
            if not isinstance(chunk, dict):
                return None, False
            if "error" in chunk:
                return None, True
            usage = _usage(chunk.get("usage"))
            if usage is not None:
                self.usage = usage
                if not chunk.get("choices") and not self.wants_usage:
                    return None, False
        output = len(_OUTPUT.findall(data))
        if output:
            self.counted += output
            if self.first_token is None:
                self.first_token = time.perf_counter()
        return b"data: " + data + b"\n\n", False


#: A chunk that carries a usage object (not ``"usage": null``).
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
#: Output in a chunk's choice: text, a refusal, reasoning, or a tool call's arguments.
_OUTPUT = re.compile(
    rb'"(?:content|refusal|reasoning|reasoning_content)"\s*:\s*"(?!")'
    rb'|"tool_calls"\s*:\s*\[\s*\{'
)


async def _data(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The ``data`` of each server-sent event, as bytes (its lines joined by newlines, as
    the SSE rules say); comments and other fields are dropped."""
    buffer = b""
    async for piece in response.content.iter_any():
        buffer += piece.replace(b"\r\n", b"\n") if b"\r" in piece else piece
        while (end := buffer.find(b"\n\n")) >= 0:
            event, buffer = buffer[:end], buffer[end + 2 :]
            if event.startswith(b"data:") and b"\n" not in event:  # the usual: one line
                yield event[5:].strip()
                continue
            lines = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
            if lines:
                yield b"\n".join(lines)
    if buffer.strip().startswith(b"data:"):
        yield b"\n".join(
            line[5:].strip() for line in buffer.split(b"\n") if line.startswith(b"data:")
        )


def _charge_headers(settled: Settled) -> dict[str, str]:
    headers = {"x-tokenbank-charged": str(settled.charged)}
    if settled.balance is not None:
        headers["x-tokenbank-balance"] = str(settled.balance)
    return headers


def _charge_comment(settled: Settled) -> bytes:
    balance = "" if settled.balance is None else f" balance={settled.balance}"
    return f": tokenbank charged={settled.charged}{balance}\n\n".encode()


def _replay(admission: Admission, stream: bool) -> Reply | StreamReply:
    """A finished call's stored reply, for a retry with its idempotency key."""
    headers = {"idempotent-replayed": "true"}
    stored = admission.replay
    if stored is None:
        raise IdempotencyConflict(
            f"call {admission.call_id}",
            "the call was already made and charged; its reply is not kept",
        )
    if not stream:
        return Reply(status=200, body=stored, headers=headers)

    async def events() -> AsyncIterator[bytes]:
        for event in stored:
            yield event.encode()
        yield b"data: [DONE]\n\n"

    return StreamReply(events=events(), headers=headers)

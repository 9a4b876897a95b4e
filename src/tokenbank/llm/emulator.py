"""An OpenAI-compatible model for development and tests: ``tokenbank llm-emulator``.

It answers ``POST /v1/chat/completions`` (streaming or not) and ``GET /v1/models`` as an
OpenAI-compatible upstream does, so the official ``openai`` SDK, and tokenbank's gateway,
talk to it unchanged. What it does is deterministic, so tests can state exact figures:

- **Tokens** are whitespace-separated words. A prompt's ``prompt_tokens`` is the words of
  every message's text plus ``PER_MESSAGE`` per message (never more than its UTF-8 bytes).
  The reply is ``"Echo: "`` and the last user message's words; a message holding
  ``[[tokens=N]]`` asks for a reply of exactly N words (``w1 w2 ...``) instead.
- ``max_tokens`` or ``max_completion_tokens`` caps the reply (``finish_reason: "length"``);
  ``n`` makes that many identical choices, their tokens summed in ``completion_tokens`` as
  OpenAI counts them.
- **Streaming**: a first chunk with the role, one chunk per word, a last chunk with the
  ``finish_reason``, with ``stream_options.include_usage`` a usage chunk (``choices: []``),
  then ``data: [DONE]``.
- **Time**: a delay before the first word and between words (``--first-token-ms``,
  ``--token-ms``; per request, headers ``X-Emulator-First-Token-Ms`` and
  ``X-Emulator-Token-Ms``).
- **Failures**, per request (header ``X-Emulator-Fault``) or for the next calls
  (``POST /_emulator/faults``): ``fail_before`` (a 500 before any output),
  ``fail_mid`` (words, then an error event, with ``after`` words first), ``hang`` (no
  answer, until the caller gives up).
- Every call is recorded (``GET /_emulator/calls``): what was asked, what was answered,
  whether the caller went away mid-stream (``aborted``), and the caller's address and
  port (``peer``), so a test can check what a gateway forwarded, that it cancelled an
  upstream call, and that it kept its connection for the next.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

#: What a message costs beyond its words, as chat formats add a few tokens per message.
PER_MESSAGE = 3
FAULTS = ("fail_before", "fail_mid", "hang")
#: The models ``/v1/models`` lists; any other name is answered too.
MODELS = ("emulator-small", "emulator-large")
_ASKED = re.compile(r"\[\[tokens=(\d{1,6})\]\]")
HANG_SECONDS = 3600.0


@dataclass
class Fault:
    kind: str
    times: int = 1
    #: fail_mid: the words sent before the error.
    after: int = 1


@dataclass
class Call:
    """One call as the emulator saw it."""

    id: str
    model: str
    stream: bool
    max_tokens: int | None
    include_usage: bool
    prompt_tokens: int
    completion_tokens: int = 0
    #: Words sent so far (streaming), or all of them.
    sent: int = 0
    outcome: str = "ok"  # ok, failed, aborted, hanging
    fault: str | None = None
    #: The caller's address and port: calls on one kept-alive connection share them.
    peer: str | None = None
    body: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class State:
    first_token_ms: float = 0.0
    token_ms: float = 0.0
    api_key: str | None = None
    faults: list[Fault] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)


def words(text: str) -> list[str]:
    return text.split()


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(words(_text(m.get("content")))) + PER_MESSAGE for m in messages)


def reply_words(messages: list[dict[str, Any]]) -> list[str]:
    """The deterministic reply: N words when a message asks for them, else an echo."""
    for message in reversed(messages):
        if (asked := _ASKED.search(_text(message.get("content")))) is not None:
            return [f"w{i + 1}" for i in range(int(asked.group(1)))]
    last = next(
        (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    return ["Echo:", *words(last)]


def _error(status: int, message: str, *, type: str, code: str | None = None) -> JSONResponse:
    """An error in OpenAI's shape, which the SDK turns into its typed exceptions."""
    body = {"error": {"message": message, "type": type, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def _cap(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            return int(value)
    return None


def _checked(body: Any) -> str | None:
    """What is wrong with a request body, in OpenAI's words, or None."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    messages = body.get("messages")
    checks = [
        (
            isinstance(body.get("model"), str) and bool(body["model"]),
            "you must provide a model parameter",
        ),
        (isinstance(messages, list) and bool(messages), "'messages' must be a non-empty array"),
        (
            isinstance(messages, list)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages),
            "each message must be an object with a role",
        ),
        (
            body.get("stream_options") is None or bool(body.get("stream")),
            "stream_options is only allowed when stream is true",
        ),
    ]
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(name)
        whole = not isinstance(value, bool) and isinstance(value, int) and value >= 1
        checks.append((value is None or whole, f"'{name}' must be an integer >= 1"))
    return next((message for ok, message in checks if not ok), None)


def _fault(state: State, request: Request) -> Fault | None:
    asked = request.headers.get("x-emulator-fault")
    if asked in FAULTS:
        after = request.headers.get("x-emulator-fault-after", "1")
        return Fault(kind=asked, after=int(after) if after.isascii() and after.isdigit() else 1)
    if state.faults:
        fault = state.faults[0]
        fault.times -= 1
        if fault.times <= 0:
            state.faults.pop(0)
        return fault
    return None


def _delay(request: Request, header: str, default: float) -> float:
    raw = request.headers.get(header)
    try:
        return max(0.0, float(raw)) / 1000 if raw is not None else default / 1000
    except ValueError:
        return default / 1000


async def _request_body(request: Request, state: State) -> dict[str, Any] | Response:
    """The checked body, or the error answer (a wrong key, a body that is not a request)."""
    if state.api_key is not None and request.headers.get("authorization") != (
        f"Bearer {state.api_key}"
    ):
        return _error(
            401, "Incorrect API key provided.", type="invalid_request_error", code="invalid_api_key"
        )
    try:
        body = json.loads(await request.body())
    except ValueError:
        return _error(
            400, "We could not parse the JSON body of your request.", type="invalid_request_error"
        )
    if (problem := _checked(body)) is not None:
        return _error(400, problem, type="invalid_request_error")
    checked: dict[str, Any] = body
    return checked


async def chat_completions(request: Request) -> Response:
    state: State = request.app.state.llm
    body = await _request_body(request, state)
    if isinstance(body, Response):
        return body
    messages: list[dict[str, Any]] = body["messages"]
    cap = _cap(body)
    reply = reply_words(messages)
    finish = "stop"
    if cap is not None and len(reply) > cap:
        reply, finish = reply[:cap], "length"
    n = int(body.get("n") or 1)
    stream = bool(body.get("stream"))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    call = Call(
        id=f"chatcmpl-{secrets.token_hex(12)}",
        model=body["model"],
        stream=stream,
        max_tokens=cap,
        include_usage=include_usage,
        prompt_tokens=prompt_tokens(messages),
        peer=f"{request.client.host}:{request.client.port}" if request.client else None,
        body=body,
    )
    state.calls.append(call)
    fault = _fault(state, request)
    call.fault = fault.kind if fault else None
    first = _delay(request, "x-emulator-first-token-ms", state.first_token_ms)
    each = _delay(request, "x-emulator-token-ms", state.token_ms)
    if fault is not None and fault.kind == "hang":
        return await _hang(request, call)
    if fault is not None and fault.kind == "fail_before":
        call.outcome = "failed"
        return _error(500, "The model failed before answering.", type="server_error")
    if not stream:
        await asyncio.sleep(first + each * max(0, len(reply) - 1))
        call.sent = len(reply)
        call.completion_tokens = len(reply) * n
        return JSONResponse(_completion(call, reply, finish, n))
    return StreamingResponse(
        _stream(call, reply, finish, n, first=first, each=each, fault=fault),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def _hang(request: Request, call: Call) -> Response:
    """No answer until the caller gives up (then the call is recorded as aborted), or
    ``HANG_SECONDS`` pass."""
    call.outcome = "hanging"
    deadline = time.monotonic() + HANG_SECONDS
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            call.outcome = "aborted"
            break
        await asyncio.sleep(0.05)
    return _error(504, "The model did not answer in time.", type="server_error")


def _usage(call: Call) -> dict[str, Any]:
    return {
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens,
        "total_tokens": call.prompt_tokens + call.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _completion(call: Call, reply: list[str], finish: str, n: int) -> dict[str, Any]:
    return {
        "id": call.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": " ".join(reply), "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
            for i in range(n)
        ],
        "usage": _usage(call),
        "system_fingerprint": "fp_tokenbank_emulator",
    }


def _chunk(call: Call, choices: list[dict[str, Any]], usage: Any = None) -> bytes:
    data = {
        "id": call.id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": call.model,
        "system_fingerprint": "fp_tokenbank_emulator",
        "choices": choices,
    }
    if call.include_usage:
        data["usage"] = usage
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _stream(
    call: Call,
    reply: list[str],
    finish: str,
    n: int,
    *,
    first: float,
    each: float,
    fault: Fault | None,
) -> AsyncIterator[bytes]:
    """The chunks; when the caller goes away, the generator is cancelled and the call
    recorded as aborted with the words sent so far."""
    try:
        role = [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            for i in range(n)
        ]
        yield _chunk(call, role)
        await asyncio.sleep(first)
        for position, word in enumerate(reply):
            if fault is not None and fault.kind == "fail_mid" and position >= fault.after:
                call.outcome = "failed"
                error = {
                    "error": {
                        "message": "The model failed mid-stream.",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
                yield f"data: {json.dumps(error)}\n\n".encode()
                return
            if position:
                await asyncio.sleep(each)
            text = word if position == 0 else f" {word}"
            yield _chunk(
                call,
                [{"index": i, "delta": {"content": text}, "finish_reason": None} for i in range(n)],
            )
            call.sent = position + 1
            call.completion_tokens = call.sent * n
        yield _chunk(call, [{"index": i, "delta": {}, "finish_reason": finish} for i in range(n)])
        if call.include_usage:
            yield _chunk(call, [], usage=_usage(call))
        yield b"data: [DONE]\n\n"
    except asyncio.CancelledError:
        call.outcome = "aborted"
        raise


async def models(request: Request) -> Response:
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "tokenbank-emulator"}
                for model in MODELS
            ],
        }
    )


async def list_calls(request: Request) -> Response:
    state: State = request.app.state.llm
    return JSONResponse(
        [
            {k: v for k, v in asdict(call).items() if k != "body"} | {"body": call.body}
            for call in state.calls
        ]
    )


async def set_faults(request: Request) -> Response:
    """``{"faults": [{"kind": "fail_mid", "times": 2, "after": 3}]}``: the next calls fail."""
    state: State = request.app.state.llm
    try:
        body = json.loads(await request.body())
        faults = [
            Fault(kind=str(f["kind"]), times=int(f.get("times", 1)), after=int(f.get("after", 1)))
            for f in body.get("faults", [])
        ]
    except (ValueError, TypeError, KeyError, AttributeError):
        return _error(400, "faults: a list of {kind, times?, after?}", type="invalid_request_error")
    if any(f.kind not in FAULTS or f.times < 1 or f.after < 0 for f in faults):
        return _error(400, f"kind is one of {', '.join(FAULTS)}", type="invalid_request_error")
    state.faults = faults
    return JSONResponse({"faults": [asdict(f) for f in faults]})


async def configure(request: Request) -> Response:
    """``{"first_token_ms": 200, "token_ms": 20}``: the pace of every later call."""
    state: State = request.app.state.llm
    try:
        body = json.loads(await request.body())
        for name in ("first_token_ms", "token_ms"):
            if name in body:
                value = float(body[name])
                if not 0 <= value <= 60_000:
                    raise ValueError(name)
                setattr(state, name, value)
    except (ValueError, TypeError, AttributeError):
        return _error(400, "first_token_ms and token_ms: 0-60000", type="invalid_request_error")
    return JSONResponse({"first_token_ms": state.first_token_ms, "token_ms": state.token_ms})


async def reset(request: Request) -> Response:
    state: State = request.app.state.llm
    state.faults.clear()
    state.calls.clear()
    return JSONResponse({"ok": True})


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


def create_app(
    *, first_token_ms: float = 0.0, token_ms: float = 0.0, api_key: str | None = None
) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/_emulator/calls", list_calls, methods=["GET"]),
            Route("/_emulator/faults", set_faults, methods=["POST"]),
            Route("/_emulator/config", configure, methods=["POST"]),
            Route("/_emulator/reset", reset, methods=["POST"]),
            Route("/_emulator/health", health, methods=["GET"]),
        ]
    )
    app.state.llm = State(first_token_ms=first_token_ms, token_ms=token_ms, api_key=api_key)
    return app

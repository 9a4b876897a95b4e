"""The model emulator through the official ``openai`` SDK, unchanged: deterministic
replies and exact usage, streaming with and without the usage chunk, the output cap, the
pace, and the failures it injects."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.servers import serving
from tokenbank.llm.emulator import PER_MESSAGE, create_app


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serving(create_app()) as base:
        yield base


@pytest.fixture
def client(url: str) -> Iterator[openai.OpenAI]:
    httpx.post(f"{url}/_emulator/reset").raise_for_status()
    httpx.post(f"{url}/_emulator/config", json={"first_token_ms": 0, "token_ms": 0})
    with openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def _calls(url: str) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = httpx.get(f"{url}/_emulator/calls").json()
    return calls


def test_a_reply_and_its_usage_are_exact(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="emulator-small",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there model"},
        ],
    )
    assert reply.choices[0].message.content == "Echo: hello there model"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 2 + 3 + 2 * PER_MESSAGE
    assert (reply.usage.completion_tokens, reply.usage.total_tokens) == (4, 4 + 11)
    models = [m.id for m in client.models.list()]
    assert "emulator-small" in models


def test_the_cap_and_n_are_honoured(client: openai.OpenAI) -> None:
    asked: list[ChatCompletionMessageParam] = [{"role": "user", "content": "[[tokens=50]]"}]
    capped = client.chat.completions.create(model="m", messages=asked, max_completion_tokens=7, n=3)
    assert [c.message.content for c in capped.choices] == ["w1 w2 w3 w4 w5 w6 w7"] * 3
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None and capped.usage.completion_tokens == 21
    legacy = client.chat.completions.create(model="m", messages=asked, max_tokens=2)
    assert legacy.usage is not None and legacy.usage.completion_tokens == 2


def test_a_stream_sends_words_then_the_usage_chunk_when_asked(client: openai.OpenAI) -> None:
    asked: list[ChatCompletionMessageParam] = [{"role": "user", "content": "[[tokens=5]]"}]
    chunks = list(
        client.chat.completions.create(
            model="m", messages=asked, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w1 w2 w3 w4 w5"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 5
    plain = list(client.chat.completions.create(model="m", messages=asked, stream=True))
    assert all(c.choices for c in plain) and all(c.usage is None for c in plain)


def test_the_pace_is_as_configured(client: openai.OpenAI, url: str) -> None:
    httpx.post(f"{url}/_emulator/config", json={"first_token_ms": 150, "token_ms": 20})
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "[[tokens=6]]"}], stream=True
    )
    arrivals = [
        time.monotonic() - started for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert arrivals[0] >= 0.14 and arrivals[-1] >= 0.14 + 5 * 0.02
    faster = client.with_options(default_headers={"X-Emulator-First-Token-Ms": "0"})
    started = time.monotonic()
    faster.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < 0.5


def test_failures_before_and_mid_stream(client: openai.OpenAI, url: str) -> None:
    asked: list[ChatCompletionMessageParam] = [{"role": "user", "content": "[[tokens=10]]"}]
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="m", messages=asked, extra_headers={"X-Emulator-Fault": "fail_before"}
        )
    httpx.post(f"{url}/_emulator/faults", json={"faults": [{"kind": "fail_mid", "after": 3}]})
    received = []
    with pytest.raises(openai.APIError, match="mid-stream"):
        for chunk in client.chat.completions.create(model="m", messages=asked, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert "".join(received) == "w1 w2 w3"
    assert [c["outcome"] for c in _calls(url)] == ["failed", "failed"]
    client.chat.completions.create(model="m", messages=asked)  # the fault was for one call
    assert _calls(url)[-1]["outcome"] == "ok"


def test_a_caller_that_goes_away_is_recorded_as_aborted(client: openai.OpenAI, url: str) -> None:
    httpx.post(f"{url}/_emulator/config", json={"token_ms": 50})
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "[[tokens=100]]"}], stream=True
    )
    for n, _ in enumerate(stream):
        if n == 3:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while _calls(url)[-1]["outcome"] != "aborted":
        assert time.monotonic() < deadline, _calls(url)
        time.sleep(0.05)
    assert 0 < _calls(url)[-1]["sent"] < 100


def test_a_hung_call_ends_when_the_caller_gives_up(url: str) -> None:
    httpx.post(f"{url}/_emulator/reset").raise_for_status()
    with (
        openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=0.5) as sdk,
        pytest.raises(openai.APITimeoutError),
    ):
        sdk.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Emulator-Fault": "hang"},
        )
    deadline = time.monotonic() + 5
    while _calls(url)[-1]["outcome"] != "aborted":
        assert time.monotonic() < deadline, _calls(url)
        time.sleep(0.05)


def test_bad_requests_and_keys_get_openai_errors(url: str) -> None:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError, match="messages"):
            sdk.chat.completions.create(model="m", messages=[])
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], max_tokens=0
            )
    with (
        serving(create_app(api_key="right")) as other,
        openai.OpenAI(base_url=f"{other}/v1", api_key="wrong", max_retries=0) as sdk,
        pytest.raises(openai.AuthenticationError),
    ):
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    raw = httpx.post(f"{url}/v1/chat/completions", content=b"{not json")
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"


def test_concurrent_streams_are_independent(url: str) -> None:
    httpx.post(f"{url}/_emulator/reset").raise_for_status()
    httpx.post(f"{url}/_emulator/config", json={"first_token_ms": 0, "token_ms": 5})
    texts: list[str] = []

    def one(n: int) -> None:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as sdk:
            stream = sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"[[tokens={n}]]"}], stream=True
            )
            texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(1, 17)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(t.split()) for t in texts) == list(range(1, 17))

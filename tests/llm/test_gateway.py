"""The gateway as an app developer meets it: the official ``openai`` SDK, unchanged but for
``base_url``, against ``tokenbank serve`` and the model emulator, both real processes, on
both databases. Every charge is checked against the usage the emulator reported, and the
ledger must verify after every test (the ``db`` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from openai.types.chat import ChatCompletionMessageParam
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.processes import REPO, Process, clean_env, free_ports, model_emulator, wait_until_up
from tests.servers import serving
from tests.web.test_sweep import HOSTILE_JSON
from tokenbank import apikeys, ledger
from tokenbank.apikeys import Scope
from tokenbank.db import Database
from tokenbank.llm.estimate import PER_MESSAGE, REPLY_PRIMING
from tokenbank.llm.tables import llm_calls

# One token per input token, two per output token: a call costs input + 2 x output.
MODELS = """
[upstreams.emulator]
base_url = "{emulator}/v1"

[models.test-model]
upstream = "emulator"
input_per_million = 1000000
output_per_million = 2000000
max_output_tokens = 50
"""


def cost(usage: Any) -> int:
    return int(usage.prompt_tokens + 2 * usage.completion_tokens)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with model_emulator(tmp_path_factory.mktemp("llm-emulator"), instant=False) as url:
        yield url


@dataclass
class Service:
    url: str
    db: Database
    emulator: str
    admin: dict[str, str]
    process: Process

    def sdk(self, key: str, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, **options)

    def user(self, user_id: str, tokens: int) -> str:
        """A user with ``tokens``, and a model key of theirs."""
        made = httpx.put(f"{self.url}/api/v1/users/{user_id}", json={}, headers=self.admin)
        assert made.status_code in (200, 201), made.text
        if tokens:
            granted = httpx.post(
                f"{self.url}/api/v1/users/{user_id}/grants",
                json={"amount": tokens, "reason": "test", "idempotency_key": f"g-{user_id}"},
                headers=self.admin,
            )
            assert granted.status_code == 201, granted.text
        return self.key(user_id)

    def key(self, user_id: str, **body: Any) -> str:
        made = httpx.post(
            f"{self.url}/api/v1/users/{user_id}/llm-keys",
            json={"name": "test", **body},
            headers=self.admin,
        )
        assert made.status_code == 201, made.text
        secret: str = made.json()["key"]
        assert secret.startswith("tbu_") and made.json()["prefix"] == secret[:10]
        return secret

    def balance(self, user_id: str) -> int:
        with self.db.read() as conn:
            return ledger.balance(conn, user_id=user_id).balance

    def calls(self, user_id: str) -> list[Any]:
        with self.db.read() as conn:
            return list(
                conn.execute(
                    sa.select(llm_calls)
                    .where(llm_calls.c.user_id == user_id)
                    .order_by(llm_calls.c.id)
                )
            )

    def emulated(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = httpx.get(f"{self.emulator}/_emulator/calls").json()
        return found


@pytest.fixture
def service(db: Database, emulator: str, tmp_path: Path) -> Iterator[Service]:
    with _serve(db, emulator, tmp_path) as running:
        yield running


@contextmanager
def _serve(db: Database, emulator: str, tmp_path: Path, **settings: str) -> Iterator[Service]:
    """``tokenbank serve`` on ``db``, its models on ``emulator``; ``settings`` added to its
    environment."""
    httpx.post(f"{emulator}/_emulator/reset").raise_for_status()
    httpx.post(f"{emulator}/_emulator/config", json={"first_token_ms": 0, "token_ms": 0})
    models = tmp_path / "models.toml"
    models.write_text(MODELS.format(emulator=emulator))
    (port,) = free_ports(1)
    env = clean_env(
        {
            "TOKENBANK_DATABASE_URL": db.url.render_as_string(hide_password=False),
            "TOKENBANK_SECRET_KEY": "test-only-key-0123456789abcdef0123456789",
            "TOKENBANK_MODELS": str(models),
            "TOKENBANK_CATALOG": str(REPO / "catalogs" / "default.toml"),
            "TOKENBANK_VAR_DIR": str(tmp_path / "var"),
            "TOKENBANK_LOG_LEVEL": "warning",
            "TOKENBANK_API_KEY_CACHE_SECONDS": "0",
            "TOKENBANK_LLM_TIMEOUT_SECONDS": "3",
            **settings,
        }
    )
    process = Process.start(
        "tokenbank", ["serve", "--port", str(port)], env=env, directory=tmp_path
    )
    url = f"http://127.0.0.1:{port}"
    try:
        problem = wait_until_up(f"{url}/healthz", [process], timeout=60)
        assert problem is None, f"{problem}\n{process.output()}"
        with db.transaction() as conn:
            _, secret = apikeys.create_key(conn, name="app", scopes=[Scope.ADMIN])
        yield Service(url, db, emulator, {"Authorization": f"Bearer {secret}"}, process)
    finally:
        process.stop()


ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "[[tokens=12]]"}]
#: The bound held for ASK with a cap of 12: its bytes and formatting, then the output.
ASK_INPUT_BOUND = REPLY_PRIMING + PER_MESSAGE + len("user") + len("[[tokens=12]]")


def test_a_call_is_charged_its_usage_and_the_history_says_so(service: Service) -> None:
    key = service.user("ada", 1_000)
    with service.sdk(key) as sdk:
        reply = sdk.chat.completions.create(model="test-model", messages=ASK)
        models = sdk.models.list()
    assert reply.choices[0].message.content == " ".join(f"w{i}" for i in range(1, 13))
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    assert service.balance("ada") == 1_000 - cost(reply.usage)
    (call,) = service.calls("ada")
    assert (call.status, call.charged, call.usage_source) == ("ok", cost(reply.usage), "upstream")
    # No cap asked: the model's default went upstream, and bounded the hold.
    assert service.emulated()[-1]["max_tokens"] == 50
    assert call.held == ASK_INPUT_BOUND + 2 * 50
    listed = {m.id: m for m in models}
    assert listed["test-model"].model_extra is not None
    assert listed["test-model"].model_extra["pricing"]["output_per_million"] == 2_000_000
    history = httpx.get(f"{service.url}/api/v1/users/ada/history", headers=service.admin).json()
    spend = history["items"][0]
    assert spend["description"] == f"test-model: {reply.usage.prompt_tokens} in / 12 out"
    usage = httpx.get(
        f"{service.url}/api/v1/users/ada/usage?group_by=day", headers=service.admin
    ).json()
    (row,) = usage["rows"]
    assert (row["calls"], row["ok"], row["charged"]) == (1, 1, cost(reply.usage))
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'tokenbank_llm_calls_total{model="test-model",outcome="ok"} 1.0' in metrics


def test_a_stream_is_charged_its_usage_with_or_without_the_usage_chunk(
    service: Service,
) -> None:
    key = service.user("bo", 1_000)
    with service.sdk(key) as sdk:
        plain = list(
            sdk.chat.completions.create(
                model="test-model",
                messages=ASK,
                stream=True,
                max_completion_tokens=12,
            )
        )
        asked = list(
            sdk.chat.completions.create(
                model="test-model",
                messages=ASK,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    # The client that did not ask for usage gets none (every chunk has choices).
    assert all(chunk.choices for chunk in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain).split() == [
        f"w{i}" for i in range(1, 13)
    ]
    last = asked[-1]
    assert last.choices == [] and last.usage is not None
    first, second = service.calls("bo")
    assert first.usage_source == second.usage_source == "upstream"
    assert first.charged == second.charged == cost(last.usage)
    assert service.balance("bo") == 1_000 - 2 * cost(last.usage)
    # The gateway asked the upstream for usage both times, on one connection: each stream
    # is read to its end, so its connection is kept for the next call (no new connection,
    # and with a real upstream no new TLS handshake, per call).
    emulated = service.emulated()
    assert all(c["include_usage"] for c in emulated)
    assert emulated[0]["peer"] == emulated[1]["peer"] is not None


def test_too_few_tokens_is_a_402_and_nothing_is_forwarded(service: Service) -> None:
    key = service.user("cy", 20)
    with service.sdk(key, max_retries=2) as sdk, pytest.raises(openai.APIStatusError) as refused:
        sdk.chat.completions.create(model="test-model", messages=ASK, stream=True)
    assert refused.value.status_code == 402
    body = refused.value.body
    assert isinstance(body, dict)
    assert (body["type"], body["code"]) == ("insufficient_quota", "insufficient_tokens")
    assert body["buy_url"].endswith("/pricing")
    assert service.emulated() == []  # not forwarded, and not retried by the SDK
    (call,) = service.calls("cy")
    assert (call.status, call.charged, call.hold_id) == ("refused", 0, None)
    assert service.balance("cy") == 20


def test_concurrent_streams_never_overspend(service: Service) -> None:
    """100 streaming calls at once on a wallet that affords about 10 of their bounds."""
    held = ASK_INPUT_BOUND + 2 * 12
    key = service.user("dee", held * 10)
    httpx.post(f"{service.emulator}/_emulator/config", json={"token_ms": 5})

    async def one(sdk: openai.AsyncOpenAI) -> str:
        try:
            stream = await sdk.chat.completions.create(
                model="test-model",
                messages=ASK,
                stream=True,
                max_completion_tokens=12,
            )
            async for _ in stream:
                pass
        except openai.APIStatusError as exc:
            return str(exc.status_code)
        return "ok"

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=f"{service.url}/v1",
            api_key=key,
            max_retries=0,
            timeout=60,
        ) as sdk:
            return await asyncio.gather(*(one(sdk) for _ in range(100)))

    # In a thread of its own: the browser tests' Playwright may keep an event loop
    # running in this one.
    with ThreadPoolExecutor(1) as thread:
        outcomes = thread.submit(asyncio.run, run()).result()
    assert set(outcomes) <= {"ok", "402"}, outcomes
    calls = service.calls("dee")
    done = [c for c in calls if c.status == "ok"]
    assert len(done) == outcomes.count("ok") >= 10
    assert outcomes.count("402") == len([c for c in calls if c.status == "refused"]) > 0
    charged = sum(c.charged for c in calls)
    assert charged == sum(c.input_tokens + 2 * c.output_tokens for c in done)
    assert service.balance("dee") == held * 10 - charged >= 0


def test_a_client_that_goes_away_pays_the_input_and_what_was_streamed(
    service: Service,
) -> None:
    key = service.user("eve", 1_000)
    # 100 words, 50 ms apart: the client goes away long before the end.
    httpx.post(f"{service.emulator}/_emulator/config", json={"token_ms": 50})
    with service.sdk(key) as sdk:
        stream = sdk.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "[[tokens=100]]"}],
            stream=True,
            max_completion_tokens=100,
        )
        seen = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen += 1
            if seen == 5:
                break
        stream.close()
    for _ in range(100):
        (call,) = service.calls("eve")
        if call.status != "pending":
            break
        time.sleep(0.05)
    bound = REPLY_PRIMING + PER_MESSAGE + len("user") + len("[[tokens=100]]")
    assert (call.status, call.usage_source, call.input_tokens) == ("aborted", "counted", bound)
    # What the gateway forwarded before it saw the client go: at least what was read.
    assert 5 <= call.output_tokens < 100
    assert call.charged == bound + 2 * call.output_tokens
    assert service.balance("eve") == 1_000 - call.charged
    for _ in range(100):  # the upstream call was cut short too
        if service.emulated()[-1]["outcome"] == "aborted":
            break
        time.sleep(0.05)
    assert service.emulated()[-1]["outcome"] == "aborted"


def test_an_upstream_failure_before_output_charges_nothing(service: Service) -> None:
    key = service.user("fay", 1_000)
    faults = {"faults": [{"kind": "fail_before", "times": 1}, {"kind": "hang", "times": 1}]}
    httpx.post(f"{service.emulator}/_emulator/faults", json=faults).raise_for_status()
    with service.sdk(key, max_retries=0) as sdk:
        with pytest.raises(openai.InternalServerError) as failed:
            sdk.chat.completions.create(model="test-model", messages=ASK)
        assert failed.value.status_code == 502
        with pytest.raises(openai.InternalServerError) as hung:
            sdk.chat.completions.create(model="test-model", messages=ASK, stream=True)
        assert hung.value.status_code == 504
    assert [(c.status, c.charged) for c in service.calls("fay")] == [("failed", 0)] * 2
    assert service.balance("fay") == 1_000


def test_an_upstream_failure_mid_stream_charges_what_was_streamed(service: Service) -> None:
    key = service.user("gil", 1_000)
    faults = {"faults": [{"kind": "fail_mid", "times": 1, "after": 4}]}
    httpx.post(f"{service.emulator}/_emulator/faults", json=faults).raise_for_status()
    words = []
    with service.sdk(key) as sdk, pytest.raises(openai.APIError):
        for chunk in sdk.chat.completions.create(
            model="test-model",
            messages=ASK,
            stream=True,
            max_completion_tokens=12,
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                words.append(chunk.choices[0].delta.content)
    assert len(words) == 4
    (call,) = service.calls("gil")
    assert (call.status, call.output_tokens, call.input_tokens) == ("failed", 4, ASK_INPUT_BOUND)
    assert call.charged == ASK_INPUT_BOUND + 2 * 4
    assert service.balance("gil") == 1_000 - call.charged


def test_a_retried_call_with_an_idempotency_key_is_charged_once(service: Service) -> None:
    key = service.user("hal", 1_000)
    once = {"Idempotency-Key": "call-1"}
    streamed = {"Idempotency-Key": "call-2"}
    with service.sdk(key) as sdk:
        first = sdk.chat.completions.create(model="test-model", messages=ASK, extra_headers=once)
        again = sdk.chat.completions.with_raw_response.create(
            model="test-model",
            messages=ASK,
            extra_headers=once,
        )
        texts = []
        for _ in range(2):
            chunks = sdk.chat.completions.create(
                model="test-model",
                messages=ASK,
                stream=True,
                extra_headers=streamed,
            )
            texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
    assert again.headers["idempotent-replayed"] == "true"
    assert again.parse().choices[0].message.content == first.choices[0].message.content
    assert texts[0] == texts[1] and texts[0]
    assert len(service.emulated()) == 2  # each forwarded once
    assert len(service.calls("hal")) == 2
    assert service.balance("hal") == 1_000 - sum(c.charged for c in service.calls("hal"))


def test_an_idempotency_key_names_one_request(service: Service) -> None:
    """The same key with another request is a conflict, not the first call's answer (keys
    of the body in any order are the same request); an empty key is a 400, not a key that
    every call shares."""
    key = service.user("kit", 1_000)
    with service.sdk(key, max_retries=0) as sdk:
        sdk.chat.completions.create(
            model="test-model", messages=ASK, extra_headers={"Idempotency-Key": "k-1"}
        )
        with pytest.raises(openai.ConflictError) as conflict:
            sdk.chat.completions.create(
                model="test-model",
                messages=[{"role": "user", "content": "something else"}],
                extra_headers={"Idempotency-Key": "k-1"},
            )
        assert conflict.value.code == "idempotency_conflict"
        for _ in range(2):
            with pytest.raises(openai.BadRequestError):
                sdk.chat.completions.create(
                    model="test-model", messages=ASK, extra_headers={"Idempotency-Key": ""}
                )
    reordered = json.dumps({"messages": ASK, "model": "test-model"})
    again = httpx.post(
        f"{service.url}/v1/chat/completions",
        content=reordered,
        headers={
            "Authorization": f"Bearer {key}",
            "Idempotency-Key": "k-1",
            "content-type": "application/json",
        },
    )
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert len(service.emulated()) == 1 and len(service.calls("kit")) == 1


def test_keys_revoked_capped_or_for_another_user_are_refused(service: Service) -> None:
    key = service.user("ivy", 1_000)
    service.user("jon", 1_000)
    capped = service.key("ivy", daily_cap=ASK_INPUT_BOUND + 2 * 50 + 10)
    with service.sdk(capped) as sdk:
        sdk.chat.completions.create(model="test-model", messages=ASK)
        with pytest.raises(openai.APIStatusError) as over:
            sdk.chat.completions.create(model="test-model", messages=ASK)
    assert over.value.status_code == 402 and over.value.code == "key_cap_reached"
    # A user's key acts for its user alone.
    with service.sdk(key) as sdk, pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(
            model="test-model",
            messages=ASK,
            extra_headers={"X-Tokenbank-User": "jon"},
        )
    assert service.calls("jon") == []
    keys = httpx.get(f"{service.url}/api/v1/users/ivy/llm-keys", headers=service.admin).json()
    first = next(k for k in keys["keys"] if key.startswith(k["prefix"]) and k["daily_cap"] is None)
    assert all("key" not in k or k["key"] is None for k in keys["keys"])
    revoked = httpx.post(
        f"{service.url}/api/v1/users/ivy/llm-keys/{first['id']}/revoke", headers=service.admin
    )
    assert revoked.json()["revoked_at"] is not None
    # Another user's key id is not this user's to revoke.
    assert (
        httpx.post(
            f"{service.url}/api/v1/users/jon/llm-keys/{first['id']}/revoke", headers=service.admin
        ).status_code
        == 404
    )
    with service.sdk(key) as sdk, pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model="test-model", messages=ASK)
    with service.sdk("tbu_not-a-key") as sdk, pytest.raises(openai.AuthenticationError):
        sdk.models.list()


def test_the_host_app_calls_for_a_user_with_its_own_key(service: Service) -> None:
    service.user("kim", 1_000)
    app_key = service.admin["Authorization"].removeprefix("Bearer ")
    with service.sdk(app_key, default_headers={"X-Tokenbank-User": "kim"}) as sdk:
        reply = sdk.chat.completions.create(model="test-model", messages=ASK)
        with pytest.raises(openai.NotFoundError) as unknown:
            sdk.chat.completions.create(model="no-such-model", messages=ASK)
    assert unknown.value.code == "model_not_found"
    assert reply.usage is not None
    assert service.balance("kim") == 1_000 - cost(reply.usage)
    with service.sdk(app_key) as sdk, pytest.raises(openai.BadRequestError) as nobody:
        sdk.chat.completions.create(model="test-model", messages=ASK)
    assert nobody.value.param == "X-Tokenbank-User"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"model": "test-model"},
        {"model": "test-model", "messages": []},
        {"model": "test-model", "messages": "hi"},
        {"model": 5, "messages": ASK},
        {"model": "test-model", "messages": ASK, "max_tokens": 0},
        {"model": "test-model", "messages": ASK, "max_completion_tokens": "9"},
        {"model": "test-model", "messages": ASK, "n": 500},
        {"model": "test-model", "messages": ASK, "stream": "yes"},
        {"model": "test-model", "messages": ASK, "stream_options": {"include_usage": True}},
        [1, 2],
    ],
)
def test_bad_requests_are_400s_in_openai_shape(service: Service, body: Any) -> None:
    key = service.user("lee", 1_000)
    answer = httpx.post(
        f"{service.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"]
    assert service.balance("lee") == 1_000 and service.emulated() == []


def test_a_call_without_a_key_is_a_401_in_openai_shape(service: Service) -> None:
    answer = httpx.post(f"{service.url}/v1/chat/completions", json={})
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "authentication_error"
    garbled = textwrap.dedent("not json at all")
    key = service.user("max", 10)
    answer = httpx.post(
        f"{service.url}/v1/chat/completions",
        content=garbled,
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "body"


def test_no_hostile_field_reaches_a_500(service: Service) -> None:
    """Every field of a call, each hostile value in turn, and broken bodies: a 4xx in
    OpenAI's shape, or a call charged as any other (never a 5xx, never a negative wallet)."""
    key = service.user("ned", 100_000)
    base: dict[str, Any] = {
        "model": "test-model",
        "messages": [{"role": "user", "content": "hi", "name": "n"}],
        "max_tokens": 5,
        "max_completion_tokens": 5,
        "n": 1,
        "stream": False,
        "tools": [],
        "stream_options": None,
    }
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    bodies = [json.dumps({**base, name: value}).encode() for name in base for value in HOSTILE_JSON]
    bodies += [
        json.dumps({**base, "messages": [{"role": value, "content": value}]}).encode()
        for value in HOSTILE_JSON
    ]
    bodies += [
        b"",
        b"null",
        b"{",
        b'{"model": "test-model", "model": "x", "messages": []}',
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
        b'{"model": "test-model", "messages": [{"role": "user", "content": "\\ud800"}]}',
    ]
    with httpx.Client(base_url=service.url, headers=headers, timeout=30) as client:
        for body in bodies:
            answer = client.post("/v1/chat/completions", content=body)
            assert answer.status_code < 500, (body[:200], answer.text[:300])
            if answer.status_code >= 400:
                error = answer.json()["error"]  # the gateway's, or the upstream's 4xx as it was
                assert "code" in error and error["type"] and error["message"], answer.text
    calls = service.calls("ned")
    assert all(c.status != "pending" for c in calls)
    assert service.balance("ned") == 100_000 - sum(c.charged for c in calls) >= 0


def test_wrong_model_keys_from_one_address_are_limited(service: Service) -> None:
    """Past TOKENBANK_API_KEY_FAILURE_LIMIT_PER_IP (20 a minute) wrong keys get 429, on
    both routes; a right key from the same address still works."""
    key = service.user("oz", 1_000)
    statuses = []
    for n in range(22):
        wrong = {"Authorization": f"Bearer tbu_wrong{n}"}
        if n % 2:
            answer = httpx.get(f"{service.url}/v1/models", headers=wrong)
        else:
            answer = httpx.post(
                f"{service.url}/v1/chat/completions",
                json={"model": "test-model", "messages": ASK},
                headers=wrong,
            )
        statuses.append(answer.status_code)
    assert statuses[:20] == [401] * 20 and statuses[20:] == [429, 429]
    assert answer.json()["error"]["type"] == "rate_limit_error"
    with service.sdk(key) as sdk:
        assert sdk.models.list().data


@pytest.mark.parametrize("storage", ["database", "memory://"])
def test_a_key_past_its_rate_limit_gets_429_and_each_call_counts_once(
    db: Database, emulator: str, tmp_path: Path, storage: str
) -> None:
    """TOKENBANK_LLM_LIMIT_PER_KEY, with the counters in the database (counted in the
    admission's own round trip on PostgreSQL) or elsewhere: every call counts once,
    whichever way it is admitted (a refusal for too few tokens too), and past the limit
    the key gets 429 with Retry-After while another key of the same user does not."""
    settings = {"TOKENBANK_LLM_LIMIT_PER_KEY": "4/minute", "TOKENBANK_RATE_LIMIT_STORAGE": storage}
    with _serve(db, emulator, tmp_path, **settings) as service:
        key = service.user("rae", 1_000)
        other = httpx.post(
            f"{service.url}/api/v1/users/rae/llm-keys", json={"name": "b"}, headers=service.admin
        ).json()["key"]
        statuses = []
        for n in range(6):
            answer = httpx.post(
                f"{service.url}/v1/chat/completions",
                json={
                    "model": "test-model",
                    "messages": ASK,
                    # The third asks for more than the wallet has: a 402, the long way.
                    "max_tokens": 10**6 if n == 2 else 12,
                },
                headers={"Authorization": f"Bearer {key}"},
            )
            statuses.append(answer.status_code)
        assert statuses == [200, 200, 402, 200, 429, 429], statuses
        assert 1 <= int(answer.headers["retry-after"]) <= 61
        assert answer.json()["error"]["type"] == "rate_limit_error"
        fine = httpx.post(
            f"{service.url}/v1/chat/completions",
            json={"model": "test-model", "messages": ASK, "max_tokens": 12},
            headers={"Authorization": f"Bearer {other}"},
        )
        assert fine.status_code == 200
        assert [c.status for c in service.calls("rae")] == ["ok", "ok", "refused", "ok", "ok"]


#: A streamed chunk's word (the emulator's words are w1, w2...).
WORD = re.compile(r'"content"\s*:\s*" ?w\d')


def test_a_stream_still_running_at_shutdown_is_cancelled_after_the_grace_and_charged(
    db: Database, emulator: str, tmp_path: Path
) -> None:
    """SIGTERM with a stream running: the stream may finish within
    TOKENBANK_SHUTDOWN_GRACE_SECONDS; past it, it is cancelled, charged the input and what
    it streamed (its hold ends with it), and the process exits."""
    with _serve(db, emulator, tmp_path, TOKENBANK_SHUTDOWN_GRACE_SECONDS="1") as service:
        key = service.user("sol", 1_000)
        # 100 words, 100 ms apart: 10 s, far past the grace.
        httpx.post(f"{service.emulator}/_emulator/config", json={"token_ms": 100})
        body = {
            "model": "test-model",
            "messages": [{"role": "user", "content": "[[tokens=100]]"}],
            "stream": True,
            "max_tokens": 100,
        }
        words = 0
        stopping = None
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream(
                "POST",
                f"{service.url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            ) as answer,
        ):
            for line in answer.iter_lines():
                words += len(WORD.findall(line))
                if words == 3 and stopping is None:
                    stopping = time.monotonic()
                    service.process.popen.terminate()
        assert stopping is not None
        # uvicorn ends by raising the signal it caught again, once it has shut down.
        assert service.process.popen.wait(15) in (0, -signal.SIGTERM)
        assert time.monotonic() - stopping < 10  # not the stream's whole 10 s
        (call,) = service.calls("sol")
        assert call.status == "aborted" and call.usage_source == "counted"
        bound = REPLY_PRIMING + PER_MESSAGE + len("user") + len("[[tokens=100]]")
        assert 3 <= call.output_tokens < 100
        assert call.charged == bound + 2 * call.output_tokens
        assert service.balance("sol") == 1_000 - call.charged


def _hostile_upstream(replies: list[tuple[int, bytes, str]]) -> Starlette:
    """An upstream that answers each call with the next of ``replies`` (status, body,
    media type), whatever was asked."""
    waiting = list(replies)

    async def complete(request: Request) -> Response:
        await request.body()
        status, body, kind = waiting.pop(0)
        return Response(body, status_code=status, media_type=kind)

    async def ok(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", complete, methods=["POST"]),
            Route("/_emulator/reset", ok, methods=["POST"]),
            Route("/_emulator/config", ok, methods=["POST"]),
        ]
    )


def test_an_upstream_answering_json_nested_past_reading_costs_no_500(
    db: Database, tmp_path: Path
) -> None:
    """An upstream is read as carefully as a client: a reply, an error or a stream's chunk
    nested deeper than a parser goes is an unreadable reply (502, nothing charged), an
    error passed on as text, a chunk dropped; never a 500."""
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    usage_chunk = b'{"usage": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    stream = b"data: " + usage_chunk + b"\n\ndata: [DONE]\n\n"
    upstream = _hostile_upstream(
        [
            (200, deep, "application/json"),
            (400, deep, "application/json"),
            (200, stream, "text/event-stream"),
        ]
    )
    with serving(upstream) as url, _serve(db, url, tmp_path) as service:
        key = service.user("oz", 1_000)
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=service.url, headers=headers, timeout=30) as http:
            whole = http.post("/v1/chat/completions", json={"model": "test-model", "messages": ASK})
            refused = http.post(
                "/v1/chat/completions", json={"model": "test-model", "messages": ASK}
            )
            streamed = http.post(
                "/v1/chat/completions",
                json={"model": "test-model", "messages": ASK, "stream": True},
            )
        assert whole.status_code == 502 and whole.json()["error"]["code"], whole.text
        assert refused.status_code == 400 and refused.json()["error"]["message"], refused.text
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
        calls = service.calls("oz")
        assert all(c.status != "pending" for c in calls)
        assert service.balance("oz") == 1_000 - sum(c.charged for c in calls) >= 0

"""The edges of the HTTP service: bodies read strictly, sizes capped however they arrive,
security headers on every answer, a crash that keeps the connection, API keys that cannot
be guessed at speed. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.servers import http_request, one_connection, serving
from tests.web.api.calls import grant_tokens, problem_of, put_user
from tests.web.conftest import PASSWORDS, SETTINGS, make_key
from tests.web.routes import PATH_VALUES, api_routes
from tokenbank.apikeys import Scope
from tokenbank.db import Database
from tokenbank.web.app import MAX_BODY_BYTES, create_app
from tokenbank.web.routing import UNSAFE_METHODS, PageRoute, StrictRoute

PROBLEM = "application/problem+json"


def _body_routes(app: FastAPI) -> Iterator[tuple[str, str, bool]]:
    """Every route that reads a body: its method, a URL to it, and whether it takes a form."""
    for route in api_routes(app.routes):
        # A page's unsafe route reads a form (its CSRF token) even with no other field.
        methods = route.methods or set()
        page_form = isinstance(route, PageRoute) and bool(methods & UNSAFE_METHODS)
        if route.body_field is not None or page_form:
            assert isinstance(route, StrictRoute), f"{route.path} is not a StrictRoute"
            url = route.path.format(**PATH_VALUES)
            form = page_form or (
                route.body_field is not None
                and type(route.body_field.field_info).__name__ == "Form"
            )
            for method in route.methods or ():
                yield method, url, form


@pytest.fixture
def app(db: Database) -> FastAPI:
    return create_app(SETTINGS, db=db, passwords=PASSWORDS)


def test_every_route_with_a_body_reads_it_strictly(app: FastAPI) -> None:
    routes = list(_body_routes(app))
    assert sum(1 for _, url, form in routes if not form) >= 9  # the JSON API
    assert sum(1 for _, url, form in routes if form) >= 8  # the pages' forms
    with TestClient(app, base_url="https://tokens.example") as client:
        for method, url, form in routes:
            if form:  # a form route given JSON, or a media type it cannot read
                for content_type in ("application/json", "text/plain"):
                    answer = client.request(
                        method, url, content=b'{"a": 1}', headers={"content-type": content_type}
                    )
                    assert answer.status_code == 415, (url, content_type, answer.text)
                continue
            for content_type in (
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/xml",
            ):
                answer = client.request(
                    method, url, content=b"amount=1", headers={"content-type": content_type}
                )
                assert answer.status_code == 415, (url, content_type, answer.text)
                assert answer.headers["content-type"] == PROBLEM
                assert answer.json()["code"] == "unsupported_media_type"
            for body in (
                b'{"amount": 1, "amount": 1000, "idempotency_key": "k"}',
                b'{"package_id": "plus", "package_id": "pro"}',
                b'{"metadata": {"a": 1, "a": 2}, "amount": 1}',
                b'{"description": "\\u0000"}',
                b'{"description": "\\ud800"}',
                b'{"\\u0000": 1}',
                b'{"amount": ' + b"9" * 5000 + b"}",
                b"[" * 3000 + b"]" * 3000,
                b"\xff\xfe",
            ):
                answer = client.request(
                    method, url, content=body, headers={"content-type": "application/json"}
                )
                assert answer.status_code == 422, (url, body[:40], answer.text)
                assert answer.json()["code"] == "validation_error"


def test_a_repeated_key_is_named(client: TestClient, spender: dict[str, str]) -> None:
    answer = client.post(
        "/api/v1/users/alice/spend",
        content=b'{"amount": 1, "amount": 1000, "idempotency_key": "k"}',
        headers={**spender, "content-type": "application/json"},
    )
    assert answer.status_code == 422
    assert "'amount' appears more than once" in json.dumps(answer.json())


def test_json_media_types_are_accepted(client: TestClient, spender: dict[str, str]) -> None:
    for content_type in (
        "application/json",
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ):
        answer = client.put(
            "/api/v1/users/alice",
            content=b'{"name": "Al"}',
            headers={**spender, "content-type": content_type},
        )
        assert answer.status_code == 200, (content_type, answer.text)


def test_a_body_over_the_limit_is_413_however_it_arrives(app: FastAPI) -> None:
    with serving(app) as url, httpx.Client(base_url=url) as http:
        big = b'{"name": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(big), 4096):
                yield big[start : start + 4096]

        announced = http.put("/api/v1/users/alice", content=big)
        chunked = http.put(
            "/api/v1/users/alice", content=chunks(), headers={"content-type": "application/json"}
        )
        for answer in (announced, chunked):
            assert answer.status_code == 413, answer.text
            assert answer.json()["code"] == "payload_too_large"
        form = http.post(
            "/login",
            content=chunks(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 413


def test_security_headers_on_every_kind_of_answer(client: TestClient) -> None:
    answers = {
        "json": client.get("/healthz"),
        "problem": client.get("/nowhere"),
        "validation": client.get("/api/v1/users/%20/balance"),
        "page": client.get("/login"),
        "static": client.get("/static/tokenbank.css"),
        "docs": client.get("/docs"),
        "metrics": client.get("/metrics"),
        "openapi": client.get("/openapi.json"),
    }
    for kind, answer in answers.items():
        headers = answer.headers
        assert headers["x-content-type-options"] == "nosniff", kind
        assert headers["referrer-policy"] in {"same-origin", "no-referrer"}, kind
        assert "frame-ancestors 'none'" in headers["content-security-policy"], kind
        assert "strict-transport-security" not in headers, kind  # not in development
    assert answers["page"].headers["x-frame-options"] == "DENY"  # and older browsers too
    assert answers["json"].headers["cache-control"] == "no-store"
    assert "default-src 'none'" in answers["problem"].headers["content-security-policy"]
    # The docs page runs exactly its own inline script (by hash) and Swagger UI's files.
    docs_policy = answers["docs"].headers["content-security-policy"]
    assert "'sha256-" in docs_policy and "'unsafe-inline'" not in docs_policy


def test_production_adds_hsts_and_host_prefixed_cookies(db: Database) -> None:
    settings = SETTINGS.model_copy(update={"env": "production"})
    with TestClient(
        create_app(settings, db=db, passwords=PASSWORDS), base_url="https://tokens.example"
    ) as client:
        page = client.get("/login")
        assert page.headers["strict-transport-security"].startswith("max-age=63072000")
        assert client.get("/healthz").headers["strict-transport-security"]
        cookie = page.headers["set-cookie"]
        assert cookie.startswith("__Host-tb_csrf=") and "Secure" in cookie and "Path=/" in cookie
        assert "Domain" not in cookie


def test_a_crash_is_a_500_problem_and_keeps_the_connection(db: Database) -> None:
    app = create_app(SETTINGS, db=db, passwords=PASSWORDS)

    def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    with serving(app) as url:
        statuses = one_connection(
            url, [http_request("GET", "/broken"), http_request("GET", "/healthz")]
        )
        assert statuses == [500, 200]
        answer = httpx.get(f"{url}/broken")
    body = answer.json()
    assert answer.headers["content-type"] == PROBLEM
    assert (body["code"], body["request_id"]) == ("internal_error", answer.headers["x-request-id"])
    assert "a bug" not in answer.text  # nothing of the error leaks


def test_what_the_middleware_answers_itself_under_v1_has_openai_shape(db: Database) -> None:
    """A crash, a NUL in the URL, a body over the limit: under the model gateway's paths
    the answer is an error as OpenAI's SDK reads it, like every other answer there."""
    app = create_app(SETTINGS, db=db, passwords=PASSWORDS)

    def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/v1/broken", broken)
    with serving(app) as url, httpx.Client(base_url=url) as http:
        crashed = http.get("/v1/broken")
        nul = http.get("/v1/models%00")
        big = http.post("/v1/chat/completions", content=b"x" * (SETTINGS.llm_max_body_bytes + 1))
    for answer, status, code in (
        (crashed, 500, "internal_error"),
        (nul, 400, "invalid_request"),
        (big, 413, "payload_too_large"),
    ):
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == "application/json"
        error = answer.json()["error"]
        assert (error["code"], error["request_id"]) == (code, answer.headers["x-request-id"])
        assert error["type"] and error["message"] and "a bug" not in answer.text


def test_a_nul_in_the_url_is_a_400(client: TestClient, spender: dict[str, str]) -> None:
    for path in (
        "/api/v1/users/a%00b/balance",
        "/purchase/success?payment_intent=a%00b",
        "/purchase/success?session_id=cs_%00",
        "/history?kind=%00",
        "/login?next=%2F%00",
    ):
        answer = client.get(path, headers=spender)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["code"] == "invalid_request"


def _wrong(n: int) -> dict[str, str]:
    return {"Authorization": f"Bearer tb_wrong_{n:04d}_{'x' * 30}"}


def test_wrong_api_keys_are_limited_per_address(db: Database) -> None:
    """300 wrong keys in a row were all answered 401; now the address is held off (429 with
    Retry-After) after the limit, while a key verified recently keeps working, and another
    address is not affected."""
    settings = SETTINGS.model_copy(
        update={"api_key_cache_seconds": 60, "api_key_failure_limit_per_ip": "20/minute"}
    )
    app = create_app(settings, db=db, passwords=PASSWORDS)
    good = make_key(db, Scope.ADMIN)
    with serving(app) as url, httpx.Client(base_url=url) as http:
        assert http.put("/api/v1/users/alice", json={}, headers=good).status_code == 200
        statuses = [
            http.get("/api/v1/users/alice/balance", headers=_wrong(n)).status_code
            for n in range(25)
        ]
        assert statuses == [401] * 20 + [429] * 5
        limited = http.get("/api/v1/users/alice/balance", headers=_wrong(99))
        assert limited.json()["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert http.get("/api/v1/users/alice/balance", headers=good).status_code == 200
        elsewhere = {"X-Forwarded-For": "203.0.113.9", **_wrong(100)}
        assert http.get("/api/v1/users/alice/balance", headers=elsewhere).status_code == 401
        # A missing key is not a guess: it is not counted, and is answered 401.
        assert http.get("/api/v1/users/alice/balance").status_code == 401


def _problem(answer: httpx.Response | Any, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["code"] == code


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 0, "idempotency_key": "k"},
        {"amount": -5, "idempotency_key": "k"},
        {"amount": 1.5, "idempotency_key": "k"},
        {"amount": "10", "idempotency_key": "k"},
        {"amount": True, "idempotency_key": "k"},
        {"amount": 10**13, "idempotency_key": "k"},
        {"amount": 10**40, "idempotency_key": "k"},
        {"amount": 1},
        {"amount": 1, "idempotency_key": ""},
        {"amount": 1, "idempotency_key": "k", "surprise": 1},
        {"amount": 1, "idempotency_key": "k", "metadata": {"x": "y" * 5000}},
        [1, 2, 3],
    ],
)
def test_bad_bodies_get_422_and_change_nothing(
    client: TestClient, admin: dict[str, str], spender: dict[str, str], body: object
) -> None:
    put_user(client, spender)
    grant_tokens(client, admin, 100)
    response = client.post("/api/v1/users/alice/spend", json=body, headers=spender)
    problem_of(response, 422, "validation_error")
    balance = client.get("/api/v1/users/alice/balance", headers=spender).json()
    assert balance["available"] == 100


def test_malformed_and_oversized_bodies(client: TestClient, spender: dict[str, str]) -> None:
    put_user(client, spender)
    headers = {**spender, "content-type": "application/json"}
    malformed = client.post("/api/v1/users/alice/spend", content=b'{"amount": 1,', headers=headers)
    problem_of(malformed, 422, "validation_error")
    huge = b'{"amount": 1, "idempotency_key": "' + b"k" * 70_000 + b'"}'
    problem_of(
        client.post("/api/v1/users/alice/spend", content=huge, headers=headers),
        413,
        "payload_too_large",
    )

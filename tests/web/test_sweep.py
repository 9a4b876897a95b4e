"""No input reaches a 500: every registered route, with hostile values in its path, query,
headers, form fields and JSON body, on SQLite and PostgreSQL.

Schemathesis explores the JSON API from its OpenAPI schema; this sweep covers what a schema
does not say: the pages and their forms, the webhook, headers and cookies, text no database
can store, repeated keys, wrong media types. Requests go in signed in (an admin's session
and an admin API key) and with a valid CSRF token, so each hostile value reaches as deep
into the code as it can. Every answer must be below 500; the API's 4xx answers are problem
bodies with a stable code. A new route without a base body or form here fails the test.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tests.stripe_emulator import EmulatorServer, event_bytes, make_billing, signed
from tests.web.browsing import form_token, new_user, signed_in_user
from tests.web.conftest import PASSWORDS, SETTINGS, make_key
from tests.web.routes import api_routes
from tokenbank import identity, ledger
from tokenbank.apikeys import Scope
from tokenbank.db import Database
from tokenbank.web.app import create_app
from tokenbank.web.problems import MACHINE_PATHS
from tokenbank.web.routing import UNSAFE_METHODS, PageRoute


def _nested(depth: int) -> dict[str, Any]:
    value: Any = "end"
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return {"deep": value}


#: Text an attacker tries everywhere. (Unpaired surrogates are sent percent-encoded.)
HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "é中文🙂",
    "\u202etxt.exe",
    "\r\nX-Injected: 1",
    "'; DROP TABLE users; --",
    "../../etc/passwd",
    "%",
    "%00",
    "<script>alert(1)</script>",
    "x" * 10_000,
    "-1",
    "0",
    "99999999999999999999999999",
    "1e400",
    "NaN",
    "null",
    "[]",
    # Digits that str.isdigit() takes and int() may not: superscript, full-width, Arabic.
    "²",
    "\uff11\uff12",  # full-width 12
    "٣",
    # Days at the ends of the calendar, which arithmetic on them overflows.
    "9999-12-31",
    "0001-01-01",
    # JSON inside a field: an escaped lone surrogate, nesting past any parser's patience.
    '[{"role": "user", "content": "a\\ud800b"}]',
    "[" * 5000,
]
#: Percent-encoded forms no str can carry: a lone surrogate, invalid UTF-8, a NUL.
RAW_ENCODED = ["%ED%A0%80", "%FF%FE", "%C0%80", "%00"]
#: JSON values of every wrong type and size, for each field of a body.
HOSTILE_JSON: list[Any] = [
    None,
    [],
    {},
    True,
    0,
    -1,
    2**63,
    2**64,
    10**30,
    1.5,
    1e308,
    "x" * 10_000,
    "\x00",
    "\ud800",
    "é",
    {"nested": {"deep": [1, 2, {"x": None}]}},
    # Nesting at the limits: accepted and read back (40), refused (70, 300), and deeper
    # than code walking it by recursion can go (900).
    *(_nested(depth) for depth in (40, 70, 300, 900)),
]
HOSTILE_HEADERS: list[dict[str, bytes]] = [
    {"authorization": b"Bearer \xff\xfe\x00"},
    {"authorization": b"Bearer " + b"a" * 8000},
    {"authorization": b"Basic dXNlcjpwYXNz"},
    {"authorization": "Bearer tb_é".encode()},
    {"cookie": b"tb_session=\xff\xfe; tb_csrf=\x01"},
    {"cookie": b"tb_session=" + b"z" * 4000},
    {"cookie": b"tb_lang=\xff; tb_session="},
    {"accept-language": b"\xff\xfe;q=abc, ,;;,zh-CN;q=9e9"},
    {"accept-language": b"x" * 5000},
    {"x-request-id": "é🙂".encode() + b"\xff"},
    {"x-request-id": b"r" * 5000},
    {"hx-request": b"\xff"},
    {"accept": b"application/json\xff"},
    {"stripe-signature": b"t=\xff,v1=\x00"},
    {"stripe-signature": b"t=\xb2,v1=" + b"a" * 64},  # a superscript two, in Latin-1
    {"idempotency-key": b""},
    {"idempotency-key": "é中".encode()},
    {"x-forwarded-for": b"\xff, not-an-ip"},
    {"content-type": b"application/json; charset=\xff"},
]


@dataclass
class Seeded:
    """What the sweep's requests point at: ids that exist, a signed-in admin, keys."""

    client: TestClient
    key: dict[str, str]
    csrf: str
    path_values: dict[str, str] = field(default_factory=dict)


def _seed(db: Database, emulator: EmulatorServer) -> Iterator[Seeded]:
    emulator.reset()
    seller = make_billing(emulator.url)
    # A verified key is trusted for a while: the hostile Authorization headers below count
    # as wrong keys from this address, and must not lock the sweep's own key out.
    settings = SETTINGS.model_copy(update={"api_key_cache_seconds": 600})
    app = create_app(settings, db=db, passwords=PASSWORDS, seller=seller)
    key = make_key(db, Scope.ADMIN)
    with TestClient(app, base_url="https://tokens.example") as client:
        new_user(client, "root@example.com")
        admin_id = signed_in_user(client)
        with db.transaction() as conn:
            identity.set_admin(conn, user_id=admin_id, admin=True)
        put = client.put("/api/v1/users/alice", json={"email": "alice@example.com"}, headers=key)
        assert put.status_code == 200
        grant = {"amount": 500, "reason": "seed", "idempotency_key": "seed-grant"}
        client.post("/api/v1/users/alice/grants", json=grant, headers=key)
        spent = client.post(
            "/api/v1/users/alice/spend", json={"amount": 5, "idempotency_key": "s"}, headers=key
        ).json()
        hold = client.post(
            "/api/v1/users/alice/holds", json={"amount": 5, "idempotency_key": "h"}, headers=key
        ).json()
        bought = client.post(
            "/api/v1/users/alice/checkout-sessions", json={"package_id": "plus"}, headers=key
        ).json()
        body = event_bytes(
            {
                "id": "evt_seed",
                "object": "event",
                "type": "customer.created",
                "created": 1,
                "livemode": False,
                "data": {"object": {"id": "cus_1"}},
            }
        )
        client.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": signed(body)})
        with db.transaction() as conn:
            token, _ = identity.create_portal_link(
                conn, user_id="alice", next_path="/dashboard", ttl=timedelta(minutes=5)
            )
        yield Seeded(
            client=client,
            key=key,
            csrf=form_token(client, "/account"),
            path_values={
                "user_id": "alice",
                "hold_id": str(hold["hold_id"]),
                "transfer_id": str(spent["transfer_id"]),
                "purchase_id": str(bought["purchase_id"]),
                "package_id": "plus",
                "plan_id": "basic",
                "event_id": "evt_seed",
                "token": token,
                "mail_id": "1",
                "key_id": "1",
            },
        )
    emulator.reset()


#: A valid body for every JSON route, so each field can be made hostile in turn.
BASE_BODIES: dict[str, dict[str, Any]] = {
    "/api/v1/users/{user_id}": {"email": "a@example.com", "name": "Al"},
    "/api/v1/users/{user_id}/spend": {
        "amount": 1,
        "idempotency_key": "sweep",
        "description": "d",
        "metadata": {"a": 1},
    },
    "/api/v1/users/{user_id}/portal-sessions": {"return_path": "/dashboard"},
    "/api/v1/users/{user_id}/holds": {
        "amount": 1,
        "idempotency_key": "sweep-h",
        "ttl_seconds": 60,
        "description": "d",
        "metadata": {},
    },
    "/api/v1/users/{user_id}/check": {"feature": "image", "quantity": 2},
    "/api/v1/holds/{hold_id}/post": {"amount": 1},
    "/api/v1/transfers/{transfer_id}/refund": {
        "idempotency_key": "sweep-r",
        "amount": 1,
        "reason": "r",
    },
    "/api/v1/users/{user_id}/grants": {"amount": 1, "reason": "r", "idempotency_key": "sweep-g"},
    "/api/v1/users/{user_id}/checkout-sessions": {
        "package_id": "plus",
        "success_url": "https://tokens.example/ok",
        "cancel_url": "https://tokens.example/no",
        "locale": "en",
        "idempotency_key": "sweep-c",
    },
    "/api/v1/users/{user_id}/payment-intents": {"package_id": "plus", "idempotency_key": "sp"},
    "/api/v1/users/{user_id}/billing-portal-sessions": {"return_url": "https://tokens.example/"},
    "/api/v1/users/{user_id}/subscriptions": {
        "plan_id": "basic",
        "interval": "month",
        "success_url": "https://tokens.example/ok",
        "cancel_url": "https://tokens.example/no",
        "locale": "en",
        "idempotency_key": "sweep-s",
    },
    "/api/v1/users/{user_id}/subscription/change": {"plan_id": "pro", "interval": "year"},
    "/api/v1/users/{user_id}/llm-keys": {"name": "app", "daily_cap": 1000},
}
#: The fields of every form (the CSRF token is added, valid).
BASE_FORMS: dict[str, dict[str, str]] = {
    "/login": {"email": "root@example.com", "password": "wrong password!", "next": "/"},
    "/register": {"email": "new@example.com", "password": "correct horse battery", "name": "N"},
    "/logout": {},
    "/language": {"language": "zh-CN", "next": "/pricing"},
    "/account/language": {"language": "en"},
    "/account/time-zone": {"time_zone": "Europe/Paris"},
    "/account/password": {"current_password": "nope nope nope", "new_password": "x" * 12},
    "/buy/{package_id}": {},
    "/subscribe/{plan_id}": {"interval": "month"},
    "/subscription/manage": {},
    "/admin/users/{user_id}/grants": {"amount": "1", "reason": "r", "key": "sweep-k"},
    "/admin/purchases/{purchase_id}/review": {"decision": "credit", "reason": "r"},
    "/purchases/{purchase_id}/cancel": {},
    "/admin/webhooks/{event_id}/replay": {},
    "/verify/{token}": {},
    "/account/verify": {},
    "/password/forgot": {"email": "root@example.com"},
    "/password/reset/{token}": {"new_password": "correct horse battery staple"},
    "/account/email": {"email": "other@example.com", "password": "correct horse battery"},
    "/account/email/{token}": {},
    "/keys": {"name": "laptop", "daily_cap": "100"},
    "/keys/{key_id}/revoke": {},
    "/chat": {"model": "emulator-small", "prompt": "hi", "history": "[]"},
    "/chat/stream": {"model": "emulator-small", "prompt": "hi", "history": "[]"},
}


#: Routes that may sign the browser in as someone else, or out.
SESSION_CHANGERS = frozenset(
    {
        "/register",
        "/login",
        "/logout",
        "/portal/{token}",
        "/account/password",
        "/account/language",
        "/password/reset/{token}",
    }
)


@dataclass
class Sweep:
    seeded: Seeded
    answers: int = 0
    failures: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def send(self, method: str, url: str, *, machine: bool, **options: Any) -> None:
        headers = {**self.seeded.key, **options.pop("headers", {})}
        try:
            answer = self.seeded.client.request(
                method, url, headers=headers, follow_redirects=False, **options
            )
        except Exception as exc:  # the app raised through the test client: a 500
            self.failures.append(f"{method} {url[:120]}: raised {type(exc).__name__}: {exc}")
            return
        self.answers += 1
        self.statuses[answer.status_code] += 1
        what = f"{method} {url[:120]} {str(options)[:160]}"
        if answer.status_code >= 500:
            self.failures.append(f"{what} -> {answer.status_code} {answer.text[:200]}")
        elif answer.status_code >= 400 and machine:
            kind = answer.headers.get("content-type", "")
            if url.startswith("/v1/"):  # the model gateway: OpenAI's error shape
                if "code" not in answer.json().get("error", {}):
                    self.failures.append(f"{what} -> {answer.status_code} not an OpenAI error")
            elif kind != "application/problem+json" or "code" not in answer.json():
                self.failures.append(f"{what} -> {answer.status_code} not a problem: {kind}")


def _url(route: APIRoute, values: dict[str, str], override: dict[str, str] | None = None) -> str:
    names = re.findall(r"{(\w+)}", route.path)
    filled = {name: quote(values[name], safe="") for name in names}
    filled.update(override or {})
    return route.path.format(**filled)


def _encoded(text: str) -> str:
    return quote(text, safe="")


def _sweep_route(sweep: Sweep, route: APIRoute, method: str) -> None:
    values = sweep.seeded.path_values
    machine = route.path.startswith(MACHINE_PATHS)
    base = _url(route, values)
    # A page's unsafe route reads a form with its CSRF token: send the valid one along, so
    # hostile path, query and header values get past the CSRF check to the code behind it.
    page_form = isinstance(route, PageRoute) and method in UNSAFE_METHODS
    body: dict[str, Any] = {}
    if page_form:
        body = {"data": {**BASE_FORMS[route.path], "csrf_token": sweep.seeded.csrf}}
    # Path: each parameter hostile in turn.
    for name in re.findall(r"{(\w+)}", route.path):
        for raw in [_encoded(t) for t in HOSTILE_TEXT if t] + RAW_ENCODED:
            sweep.send(method, _url(route, values, {name: raw}), machine=machine, **body)
    # Query: each declared parameter, and one nobody declared.
    names = [param.alias for param in route.dependant.query_params] + ["unexpected"]
    for name in names:
        for raw in [_encoded(t) for t in HOSTILE_TEXT] + RAW_ENCODED:
            sweep.send(method, f"{base}?{name}={raw}", machine=machine, **body)
        sweep.send(method, f"{base}?{name}=1&{name}=2&{name}", machine=machine, **body)
    # Headers and cookies.
    for headers in HOSTILE_HEADERS:
        sweep.send(method, base, machine=machine, headers=headers, **body)
    if page_form:
        _sweep_form(sweep, route, method, base)
        return
    if route.body_field is None:
        if method in {"POST", "PUT"}:  # a body nobody asked for
            sweep.send(method, base, machine=machine, content=b"\x00\xff" * 100)
        return
    if type(route.body_field.field_info).__name__ == "Form":
        _sweep_form(sweep, route, method, base)
    else:
        _sweep_json(sweep, route, method, base)


def _sweep_json(sweep: Sweep, route: APIRoute, method: str, base: str) -> None:
    assert route.path in BASE_BODIES, f"add a base body for {route.path}"
    body = BASE_BODIES[route.path]
    json_type = {"content-type": "application/json"}
    for name in body:
        for value in HOSTILE_JSON:
            text = json.dumps({**body, name: value})
            sweep.send(method, base, machine=True, content=text.encode(), headers=json_type)
        missing = {k: v for k, v in body.items() if k != name}
        sweep.send(method, base, machine=True, json=missing)
    for raw in (
        b"",
        b"[]",
        b'"text"',
        b"null",
        b"{}",
        b"{",
        json.dumps({**body, "unknown": 1}).encode(),
        b"{" + b",".join(f'"k{i}": {i}'.encode() for i in range(3000)) + b"}",
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
        json.dumps(body).encode()[:-1] + b', "' + next(iter(body)).encode() + b'": 2}',
    ):
        sweep.send(method, base, machine=True, content=raw, headers=json_type)
    for kind in ("text/plain", "application/x-www-form-urlencoded"):
        sweep.send(method, base, machine=True, content=b"a=1", headers={"content-type": kind})


def _sweep_form(sweep: Sweep, route: APIRoute, method: str, base: str) -> None:
    assert route.path in BASE_FORMS, f"add a base form for {route.path}"
    form = {**BASE_FORMS[route.path], "csrf_token": sweep.seeded.csrf}
    urlencoded = {"content-type": "application/x-www-form-urlencoded"}
    for name in form:
        for text in HOSTILE_TEXT:
            sweep.send(method, base, machine=False, data={**form, name: text})
        for raw in RAW_ENCODED:
            fields = [f"{k}={quote(v, safe='')}" for k, v in form.items() if k != name]
            body = "&".join([*fields, f"{name}={raw}"]).encode()
            sweep.send(method, base, machine=False, content=body, headers=urlencoded)
        repeated = "&".join(
            [f"{k}={quote(v, safe='')}" for k, v in form.items()] + [f"{name}=again"]
        )
        sweep.send(method, base, machine=False, content=repeated.encode(), headers=urlencoded)
        sweep.send(
            method,
            base,
            machine=False,
            data={k: v for k, v in form.items() if k != name},
        )
        sweep.send(method, base, machine=False, data=form, files={name: ("f.txt", b"\x00\xff")})
    sweep.send(method, base, machine=False, content=b"%%%&&&==\xff", headers=urlencoded)


@pytest.fixture
def seeded(db: Database, emulator_server: EmulatorServer) -> Iterator[Seeded]:
    yield from _seed(db, emulator_server)


def test_no_input_reaches_a_500(seeded: Seeded) -> None:
    sweep = Sweep(seeded)
    routes = [
        (route, method)
        for route in api_routes(seeded.client.app.routes)  # type: ignore[attr-defined]
        for method in sorted(route.methods or ())
    ]
    assert len(routes) >= 50
    # The routes that can change who is signed in (or sign out) go last.
    routes.sort(key=lambda pair: pair[0].path in SESSION_CHANGERS)
    for route, method in routes:
        _sweep_route(sweep, route, method)
    for path in ("/openapi.json", "/static/tokenbank.css", "/static/%00", "/static/..%2F.."):
        sweep.send("GET", path, machine=True)
    # Whatever the sweep got stored, every page and every read still answers: nothing
    # accepted may break a later read of it (metadata too deep to write back out, say).
    for route, method in routes:
        if method == "GET":
            sweep.send(
                method,
                _url(route, seeded.path_values),
                machine=route.path.startswith(MACHINE_PATHS),
            )
    assert not sweep.failures, "\n".join(sweep.failures[:30])
    assert sweep.answers > 4000
    # Deep enough: most requests got past authentication and CSRF to the code they aimed at.
    refused_at_the_door = sweep.statuses[401] + sweep.statuses[403]
    assert refused_at_the_door < sweep.answers * 0.15, sweep.statuses
    with seeded.client.app.state.runtime.db.read() as conn:  # type: ignore[attr-defined]
        assert ledger.verify(conn).ok

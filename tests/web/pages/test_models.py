"""The gateway's pages: model keys (shown once, listed by prefix, revoked), the chat page
with and without JavaScript (its stream, its cost, the buy dialog when tokens run out), the
history line of a call in the page's language, and the admin's usage page."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.servers import serving
from tests.web.browsing import form_token, new_user
from tests.web.conftest import PASSWORDS, SETTINGS
from tokenbank import identity, ledger
from tokenbank.db import Database
from tokenbank.llm.emulator import create_app as create_emulator
from tokenbank.web.app import create_app

MODELS = """
[upstreams.emulator]
base_url = "{url}/v1"

[models.chatty]
upstream = "emulator"
name = {{ en = "Chatty", zh-CN = "话痨" }}
input_per_million = 1000000
output_per_million = 1000000
max_output_tokens = 20
"""


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with serving(create_emulator()) as url:
        yield url


@pytest.fixture
def browser(db: Database, emulator: str, tmp_path: Path) -> Iterator[TestClient]:
    models = tmp_path / "models.toml"
    models.write_text(MODELS.format(url=emulator))
    settings = SETTINGS.model_copy(update={"models": models})
    app = create_app(settings, db=db, passwords=PASSWORDS)
    with TestClient(app, base_url="https://tokens.example") as client:
        yield client


def _tokens(db: Database, user: str, amount: int) -> None:
    with db.transaction() as conn:
        ledger.credit(
            conn, user_id=user, amount=amount, kind=ledger.TransferKind.GRANT, idempotency_key=user
        )


def test_a_key_is_shown_once_listed_by_prefix_and_revoked(browser: TestClient) -> None:
    new_user(browser)
    token = form_token(browser, "/keys")
    made = browser.post("/keys", data={"name": "laptop", "daily_cap": "500", "csrf_token": token})
    assert made.status_code == 200
    secret = re.search(r"data-secret>(tbu_[A-Za-z0-9_-]+)<", made.text)
    assert secret, made.text
    listed = browser.get("/keys")
    assert secret.group(1) not in listed.text and secret.group(1)[:10] in listed.text
    models = browser.get("/v1/models", headers={"Authorization": f"Bearer {secret.group(1)}"})
    assert models.status_code == 200 and models.json()["data"][0]["id"] == "chatty"
    key_id = re.search(r'action="/keys/(\d+)/revoke"', listed.text)
    assert key_id
    revoked = browser.post(
        f"/keys/{key_id.group(1)}/revoke", data={"csrf_token": token}, follow_redirects=True
    )
    assert "revoked" in revoked.text
    refused = browser.get("/v1/models", headers={"Authorization": f"Bearer {secret.group(1)}"})
    assert refused.status_code == 401
    for cap in ("lots", "\u00b2", "\uff11\uff12", "\u0663"):  # other digits than 0-9 too
        bad = browser.post("/keys", data={"name": "x", "daily_cap": cap, "csrf_token": token})
        assert bad.status_code == 422 and "whole number of tokens" in bad.text, cap


@pytest.mark.parametrize(
    "history",
    [
        '[{"role": "user", "content": "a\\ud800b"}]',  # an escaped lone surrogate
        '[{"role": "user", "content": "a\\u0000b"}]',  # an escaped NUL
        '[{"role": "user", "role": "assistant", "content": "x"}]',  # a repeated key
        "[" * 5000,
        '[{"role": "user", "content": ' + "[" * 100 + "]" * 100 + "}]",
    ],
)
def test_a_conversation_the_page_cannot_read_is_refused_before_any_call(
    browser: TestClient, db: Database, emulator: str, history: str
) -> None:
    """The conversation the chat page keeps comes back in a form field: it is read as
    strictly as any JSON body, and refused (422, nothing charged, nothing sent) when it is
    not what the page wrote."""
    user = new_user(browser)
    _tokens(db, user, 1_000)
    token = form_token(browser, "/chat")
    for path in ("/chat", "/chat/stream"):
        answer = browser.post(
            path,
            data={"model": "chatty", "prompt": "hi", "history": history, "csrf_token": token},
        )
        assert answer.status_code == 422, (path, answer.text[:300])
    with db.read() as conn:
        assert ledger.balance(conn, user_id=user).balance == 1_000


def test_the_chat_page_answers_charges_and_says_so_in_the_history(
    browser: TestClient, db: Database
) -> None:
    user = new_user(browser)
    _tokens(db, user, 1_000)
    page = browser.get("/chat")
    assert "Chatty" in page.text
    token = form_token(browser, "/chat")
    answer = browser.post(
        "/chat", data={"model": "chatty", "prompt": "[[tokens=7]]", "csrf_token": token}
    )
    assert answer.status_code == 200
    assert "w1 w2 w3 w4 w5 w6 w7" in answer.text
    # 1 word + 3 per message in, 7 out: 11 tokens.
    assert "This answer cost 11 tokens." in answer.text
    with db.read() as conn:
        assert ledger.balance(conn, user_id=user).balance == 989
    assert "chatty: 4 in / 7 out" in browser.get("/history").text
    with browser.stream(
        "POST",
        "/chat/stream",
        data={
            "model": "chatty",
            "prompt": "[[tokens=3]]",
            "history": json.dumps(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
            ),
            "csrf_token": token,
        },
    ) as streamed:
        assert streamed.headers["content-type"].startswith("text/event-stream")
        text = "".join(streamed.iter_text())
    assert ": tokenbank charged=" in text and "data: [DONE]" in text
    with db.read() as conn:
        assert ledger.balance(conn, user_id=user).balance < 989
    with db.transaction() as conn:
        identity.set_language(conn, user_id=user, language="zh-CN")
    assert "chatty：输入 4 / 输出 7" in browser.get("/history").text


def test_out_of_tokens_the_chat_opens_the_buy_dialog(browser: TestClient) -> None:
    new_user(browser)
    token = form_token(browser, "/chat")
    page = browser.post("/chat", data={"model": "chatty", "prompt": "hi", "csrf_token": token})
    assert page.status_code == 402
    assert re.search(r"<dialog[^>]*data-short open", page.text)
    streamed = browser.post(
        "/chat/stream", data={"model": "chatty", "prompt": "hi", "csrf_token": token}
    )
    assert streamed.status_code == 402
    assert streamed.json()["code"] == "insufficient_tokens"
    assert streamed.json()["buy_url"] == "/pricing"
    empty = browser.post("/chat", data={"model": "chatty", "prompt": " ", "csrf_token": token})
    assert empty.status_code == 422


def test_the_admin_sees_usage_by_model_day_and_user(browser: TestClient, db: Database) -> None:
    user = new_user(browser)
    _tokens(db, user, 1_000)
    token = form_token(browser, "/chat")
    browser.post("/chat", data={"model": "chatty", "prompt": "hello", "csrf_token": token})
    assert browser.get("/admin/usage").status_code == 403
    with db.transaction() as conn:
        identity.set_admin(conn, user_id=user, admin=True)
    page = browser.get("/admin/usage")
    assert page.status_code == 200
    assert "<code>chatty</code>" in page.text and f">{user}</a>" in page.text

"""``tokenbank demo`` as a newcomer runs it after ``make run``: settings from the environment
(what var/.env holds), the emulator beside a served tokenbank taking its webhooks."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tests.billing.conftest import Store, open_store
from tests.stripe_emulator import SECRET_KEY, WEBHOOK_SECRET, EmulatorServer
from tests.web.conftest import PASSWORDS
from tokenbank import billing, identity, ledger
from tokenbank.cli import app
from tokenbank.db import Database
from tokenbank.users.models import users

runner = CliRunner()
Run = Callable[..., str]
SITE = "http://127.0.0.1:8000"


@pytest.fixture
def store(db: Database, emulator_server: EmulatorServer) -> Iterator[Store]:
    with open_store(db, emulator_server) as opened:
        yield opened


@pytest.fixture
def env(store: Store) -> dict[str, str]:
    """What ``make run`` writes to var/.env, pointed at the test emulator and database."""
    return {
        "TOKENBANK_DATABASE_URL": store.db.url.render_as_string(hide_password=False),
        "TOKENBANK_PUBLIC_URL": SITE,
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": store.emulator.url,
    }


@pytest.fixture
def tokenbank(env: dict[str, str]) -> Run:
    def run(*args: str, code: int = 0, **changes: str) -> str:
        result = runner.invoke(app, list(args), env=env | changes)
        assert result.exit_code == code, result.output
        return result.output

    return run


def test_demo_prints_who_to_sign_in_as_and_where_to_look(tokenbank: Run, store: Store) -> None:
    said = tokenbank("demo")
    assert "Demo data added: 3 users, 3 welcome grants, 4 paid purchases," in said
    assert "1 declined purchase" in said and "1 pending purchase" in said
    assert "1 Stripe refund" in said and "1 dispute" in said and "1 open hold" in said
    for where in ("/login", "/dashboard", "/history", "/admin", "/admin/purchases", "/_dev/mail"):
        assert f"{SITE}{where}" in said
    printed = dict(re.findall(r"^\s+(\S+@demo\.example\.com)\s+(\S+)\s+demo-", said, re.M))
    assert sorted(printed) == [
        "ada@demo.example.com",
        "ben@demo.example.com",
        "chen@demo.example.com",
    ]
    assert re.search(r"ada@demo\.example\.com .* demo-ada \(admin\)", said)
    # The printed password signs in (hashed at the command's own cost, checked at any).
    token = identity.sign_in(
        store.db,
        email="ada@demo.example.com",
        password=printed["ada@demo.example.com"],
        passwords=PASSWORDS,
        session_ttl=timedelta(minutes=5),
    )
    with store.db.read() as conn:
        admin = identity.session_user(conn, token=token)
        found = billing.list_purchases(conn)
        held = ledger.balance(conn, user_id="demo-ben").held
    assert admin is not None and admin.is_admin
    assert {p.status.value for p in found} == {"paid", "failed", "pending"}
    assert held == 300

    store.emulator.settle()
    again = tokenbank("demo")
    assert "The demo data is already there: nothing was added." in again
    assert "(shown when it was made)" in again
    assert printed["ada@demo.example.com"] not in again  # shown once
    with store.db.read() as conn:
        assert billing.list_purchases(conn) == found


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"TOKENBANK_ENV": "production"}, "TOKENBANK_ENV=production refuses it"),
        ({"STRIPE_API_BASE": ""}, "STRIPE_API_BASE is not set, which means real Stripe"),
        ({"STRIPE_SECRET_KEY": "sk_live_0123456789abcdef"}, "is a live key"),
    ],
    ids=["production", "real-stripe", "live-key"],
)
def test_demo_refuses_production_and_real_stripe(
    tokenbank: Run, store: Store, changes: dict[str, str], said: str
) -> None:
    refused = tokenbank("demo", code=9, **changes)
    assert "configuration_error" in refused and said in " ".join(refused.split())
    _nothing_written(store)


def test_demo_refuses_a_stripe_address_where_the_emulator_does_not_answer(
    tokenbank: Run, store: Store
) -> None:
    # The served tokenbank stands in for any server that is not the emulator.
    elsewhere = str(store.api.base_url).rstrip("/")
    refused = tokenbank("demo", code=9, STRIPE_API_BASE=elsewhere)
    assert "does not answer as tokenbank's Stripe emulator" in " ".join(refused.split())
    _nothing_written(store)


def _nothing_written(store: Store) -> None:
    with store.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one() == 0
    assert store.emulator.events() == []

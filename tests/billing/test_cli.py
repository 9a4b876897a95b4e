"""The billing commands, run as operators run them, against the emulator."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tests.billing.conftest import Store
from tests.stripe_emulator import SECRET_KEY, WEBHOOK_SECRET, event_bytes, signed
from tokenbank.billing.models import purchases
from tokenbank.cli import app

runner = CliRunner()
Run = Callable[..., str]


@pytest.fixture
def tokenbank(store: Store) -> Run:
    env = {
        "TOKENBANK_DATABASE_URL": store.db.url.render_as_string(hide_password=False),
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": store.emulator.url,
    }

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, result.output
        return result.output

    return run


def test_packages_check_and_sync(tokenbank: Run, tmp_path: Path) -> None:
    checked = tokenbank("packages", "check")
    assert "4 packages, 4 on sale, 3 plans: OK" in checked and "$20.00" in checked
    assert "$290.00" in checked and "rollover" in checked  # the plans, by the year too
    assert "¥45.00" in tokenbank("packages", "check", "catalogs/cny.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text('currency = "usd"\n[[packages]]\nid = "a"\ntokens = -1\nprice = 100\n')
    assert "tokens must be a whole number" in tokenbank("packages", "check", str(broken), code=9)
    # Four packages (a product and a price each), three plans (a product and two prices).
    assert "17 would change" in tokenbank("packages", "sync", "--dry-run")
    assert "17 changed" in tokenbank("packages", "sync")
    assert "0 changed, 10 already in sync" in tokenbank("packages", "sync")


def test_webhooks_list_and_replay_and_reconcile(store: Store, tokenbank: Run) -> None:
    store.emulator.configure(drop=100)
    started = store.checkout("plus")
    purchase_id = started["purchase_id"]
    with store.db.transaction() as conn:
        conn.execute(sa.update(purchases).where(purchases.c.id == purchase_id).values(amount=1))
    store.emulator.pay(started["checkout_session_id"])
    (completed,) = store.emulator.events("checkout.session.completed")
    body = event_bytes(completed)
    answer = store.api.post(
        "/webhooks/stripe", content=body, headers={"Stripe-Signature": signed(body)}
    )
    # A payment that does not match its purchase is settled as "needs review": processed
    # (Stripe need not retry), nothing credited, an admin decides.
    assert answer.status_code == 200 and "needs review" in answer.json()["outcome"]
    assert "0 events" in tokenbank("webhooks", "list", "--failed")
    assert store.purchase(purchase_id)["status"] == "needs_review"
    assert store.balance()["available"] == 0
    assert "costs 1 usd" in tokenbank("purchases", "review")
    reconciled = tokenbank("reconcile", "--since", "1h", code=1)
    assert "1 purchases await review" in reconciled
    assert "reason" in tokenbank("purchases", "resolve", str(purchase_id), "credit", code=2)
    resolved = tokenbank(
        "purchases", "resolve", str(purchase_id), "credit", "--reason", "catalog typo"
    )
    assert "status paid" in resolved
    assert store.balance()["available"] == 2200
    assert "nothing_to_review" in tokenbank(
        "purchases", "resolve", str(purchase_id), "refuse", "--reason", "again", code=5
    )
    assert "already up to date, nothing to do" in tokenbank("webhooks", "replay", completed["id"])
    listed = tokenbank("webhooks", "list")
    assert "checkout.session.completed" in listed and "done" in listed
    assert max(len(line) for line in listed.splitlines()) <= 80, listed  # a terminal's width
    reconciled = tokenbank("reconcile", "--since", "1h")
    assert "0 fixed" in reconciled and "0 errors; 0 purchases await review" in reconciled
    assert store.balance()["available"] == 2200
    assert "unknown_event" in tokenbank("webhooks", "replay", "evt_nope", code=3)
    assert "use a number and a unit" in tokenbank("reconcile", "--since", "soon", code=2)
    assert "use a number and a unit" in tokenbank("reconcile", "--since", "\u0663d", code=2)
    for far in ("36501d", "999999d", "99999999999d", "9" * 40 + "s"):  # no clock goes there
        assert "at most 36500d" in tokenbank("reconcile", "--since", far, code=2)


def test_selling_commands_need_a_stripe_key(store: Store) -> None:
    env = {"TOKENBANK_DATABASE_URL": store.db.url.render_as_string(hide_password=False)}
    result = runner.invoke(app, ["packages", "sync"], env=env)
    assert result.exit_code == 9 and "payments_not_configured" in result.output

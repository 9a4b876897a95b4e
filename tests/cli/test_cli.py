"""The operator CLI, run as users run it: settings from the environment, real databases."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenbank import identity, ledger
from tokenbank.cli import app
from tokenbank.columns import utcnow
from tokenbank.db import Database

runner = CliRunner()
TOKENBANK = str(Path(sys.executable).with_name("tokenbank"))


@pytest.fixture
def tokenbank(db: Database) -> object:
    env = {"TOKENBANK_DATABASE_URL": db.url.render_as_string(hide_password=False)}

    def run(*args: str, code: int = 0, stdin: str | None = None) -> str:
        result = runner.invoke(app, list(args), env=env, input=stdin)
        assert result.exit_code == code, result.output
        return result.output

    return run


def test_a_tour(tokenbank: object, db: Database) -> None:
    run = tokenbank
    assert "alice" in run("users", "create", "alice", "--email", "Alice@Example.com")  # type: ignore[operator]
    assert "user_exists" in run("users", "create", "alice", code=6)  # type: ignore[operator]
    granted = run("grant", "alice", "100", "--reason", "welcome", "--key", "g1")  # type: ignore[operator]
    assert "granted 100 tokens" in granted and "balance 100" in granted
    again = run("grant", "alice", "100", "--reason", "welcome", "--key", "g1")  # type: ignore[operator]
    assert "nothing changed" in again
    assert "balance 70" in run("spend", "alice", "30", "--key", "s1", "--description", "chat")  # type: ignore[operator]
    refused = run("spend", "alice", "71", "--key", "s2", code=4)  # type: ignore[operator]
    assert "Insufficient tokens" in refused and "70 available" in refused
    balance = json.loads(run("balance", "alice", "--json"))  # type: ignore[operator]
    assert balance == {
        "user_id": "alice",
        "available": 70,
        "held": 0,
        "total_purchased": 0,
        "total_granted": 100,
        "total_spent": 30,
        "debt": 0,
        "expiring": [],
        "balance": 70,
    }
    assert "available" in run("balance", "alice")  # type: ignore[operator]
    history = json.loads(run("history", "alice", "--json"))  # type: ignore[operator]
    assert [(i["kind"], i["amount"]) for i in history["items"]] == [("spend", -30), ("grant", 100)]
    assert history["next_cursor"] is None
    assert "chat" in run("history", "alice")  # type: ignore[operator]
    spends = json.loads(run("history", "alice", "--json", "--kind", "spend"))  # type: ignore[operator]
    transfer_id = spends["items"][0]["transfer_id"]
    assert "refunded 10" in run("refund", str(transfer_id), "--key", "r1", "--amount", "10")  # type: ignore[operator]
    run("spend", "alice", "5", "--key", "s3")  # type: ignore[operator]
    # A replay changes nothing and says so, with the balance now, not the one it left then.
    again = run("refund", str(transfer_id), "--key", "r1", "--amount", "10")  # type: ignore[operator]
    assert "already refunded with this key, nothing changed; balance now 75" in again
    replayed = run("spend", "alice", "5", "--key", "s3")  # type: ignore[operator]
    assert "already spent with this key, nothing changed; balance now 75" in replayed
    assert "ledger verified" in run("ledger", "verify")  # type: ignore[operator]
    assert "expired 0 holds" in run("holds", "expire")  # type: ignore[operator]
    with db.read() as conn:
        assert ledger.balance(conn, user_id="alice").available == 75


def test_errors_have_exit_codes(tokenbank: object) -> None:
    run = tokenbank
    assert "not_found" in run("spend", "ghost", "1", "--key", "k", code=3)  # type: ignore[operator]
    assert "not_found" in run("balance", "ghost", code=3)  # type: ignore[operator]
    run("users", "create", "bob")  # type: ignore[operator]
    assert "validation_error" in run("spend", "bob", "0", "--key", "k", code=2)  # type: ignore[operator]
    run("grant", "bob", "5", "--reason", "r", "--key", "same")  # type: ignore[operator]
    assert "idempotency_conflict" in run("spend", "bob", "5", "--key", "same", code=5)  # type: ignore[operator]


def test_db_commands(tokenbank: object) -> None:
    run = tokenbank
    assert re.search(r"at revision \d{4}\b", run("db", "upgrade"))  # type: ignore[operator]
    assert "models match migrations" in run("db", "check")  # type: ignore[operator]


def test_verify_fails_with_a_report(tokenbank: object, db: Database) -> None:
    run = tokenbank
    run("users", "create", "carol")  # type: ignore[operator]
    run("grant", "carol", "5", "--reason", "r")  # type: ignore[operator]
    with db.transaction() as conn:
        conn.exec_driver_sql("UPDATE accounts SET balance = 6 WHERE user_id = 'carol'")
    report = run("ledger", "verify", code=1)  # type: ignore[operator]
    assert "FAILED" in report and "wallet carol: balance 6, entries sum to 5" in report
    with db.transaction() as conn:  # leave the ledger sound for the fixture's own check
        conn.exec_driver_sql("UPDATE accounts SET balance = 5 WHERE user_id = 'carol'")


def test_apikeys_commands(tokenbank: object) -> None:
    run = tokenbank
    created = run("apikeys", "create", "--name", "my-app", "--scope", "read", "--scope", "spend")  # type: ignore[operator]
    secret = next(line for line in created.splitlines() if line.startswith("tb_"))
    assert len(secret) > 40
    listing = run("apikeys", "list")  # type: ignore[operator]
    assert "my-app" in listing
    assert secret not in listing
    assert "revoked API key 1" in run("apikeys", "revoke", "1")  # type: ignore[operator]
    assert "not_found" in run("apikeys", "revoke", "99", code=3)  # type: ignore[operator]


def test_serve_answers_http(tmp_path: Path) -> None:
    """`tokenbank serve` as a real process, on the embedded database."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "TOKENBANK_DATABASE_URL": f"sqlite:///{tmp_path / 'tb.db'}",
        "TOKENBANK_VAR_DIR": str(tmp_path / "var"),
    }
    subprocess.run([TOKENBANK, "db", "upgrade"], env=env, check=True, capture_output=True)
    server = subprocess.Popen(
        [TOKENBANK, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as response:
                    assert json.loads(response.read())["status"] == "ready"
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    key = tmp_path / "var" / "secret_key"  # development: generated once, private
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_text().strip()) >= 32
    lines = [json.loads(line) for line in output.decode().splitlines()]
    # Start-up says what is not configured; then one access line per request.
    assert lines[0]["event"] == "configuration" and "STRIPE_SECRET_KEY" in lines[0]["detail"]
    access = next(line for line in lines if line["event"] == "request")
    assert (access["route"], access["status"]) == ("/readyz", 200)
    assert access["request_id"]


def test_production_refuses_to_serve_without_secrets(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TOKENBANK_ENV": "production",
        "TOKENBANK_DATABASE_URL": f"sqlite:///{tmp_path / 'tb.db'}",
        "TOKENBANK_SECRET_KEY": "change-me",
    }
    result = subprocess.run(
        [TOKENBANK, "serve"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 9
    assert "TOKENBANK_SECRET_KEY" in result.stderr and "STRIPE_SECRET_KEY" in result.stderr


def test_admin_users_and_sessions(tokenbank: object, db: Database) -> None:
    run = tokenbank
    created = run(  # type: ignore[operator]
        "users",
        "create",
        "root",
        "--email",
        "root@example.com",
        "--admin",
        "--password-stdin",
        stdin="a long admin password\n",
    )
    assert "created admin user root" in created
    passwords = identity.Passwords()
    token = identity.sign_in(
        db,
        email="root@example.com",
        password="a long admin password",
        passwords=passwords,
        session_ttl=timedelta(days=1),
    )
    with db.read() as conn:
        who = identity.session_user(conn, token=token)
    assert who is not None and who.is_admin
    short = run("users", "password", "root", "--password-stdin", stdin="short\n", code=2)  # type: ignore[operator]
    assert "password" in short
    changed = run("users", "password", "root", "--password-stdin", stdin="another long one\n")  # type: ignore[operator]
    assert "1 session(s) signed out" in changed
    with db.read() as conn:
        assert identity.session_user(conn, token=token) is None
    assert "no longer an admin" in run("users", "admin", "root", "--revoke")  # type: ignore[operator]
    assert "not_found" in run("users", "admin", "ghost", code=3)  # type: ignore[operator]
    assert "0 session(s) of root signed out" in run("users", "sign-out", "root")  # type: ignore[operator]
    assert "sessions" in run("sweep")  # type: ignore[operator]


def test_a_grant_may_expire_and_be_a_promotion(tokenbank: object, db: Database) -> None:
    run = tokenbank
    run("users", "create", "alice")  # type: ignore[operator]
    granted = run(  # type: ignore[operator]
        "grant", "alice", "40", "--reason", "launch", "--key", "p1",
        "--expires-in", "30", "--source", "promo",
    )  # fmt: skip
    assert "granted 40 tokens to alice (promo, expiring " in granted and "balance 40" in granted
    with db.read() as conn:
        (soonest,) = ledger.balance(conn, user_id="alice").expiring
    assert soonest.source == ledger.Source.PROMO
    assert timedelta(days=29) < soonest.expires_at - utcnow() <= timedelta(days=30)
    assert soonest.expires_at.strftime("%Y-%m-%d %H:%M") in granted
    refused = run("grant", "alice", "1", "--reason", "r", "--expires-in", "0", code=2)  # type: ignore[operator]
    assert "expires_in_days" in refused
    refused = run("grant", "alice", "1", "--reason", "r", "--source", "trial", code=2)  # type: ignore[operator]
    assert "--source" in refused


#: A row id no 64-bit column holds, and bytes that are not UTF-8 (Python reads them as lone
#: surrogates, which no database driver encodes).
TOO_BIG = str(2**63)
NOT_UTF8 = os.fsdecode(b"\xed\xa0\x80")

#: Every command that takes an id or text given to the database, with each hostile value
#: where it goes; and settings that are not valid.
HOSTILE_COMMANDS: list[tuple[list[str], dict[str, str]]] = [
    (["apikeys", "revoke", TOO_BIG], {}),
    (["mail", "retry", TOO_BIG], {}),
    (["refund", TOO_BIG, "--key", "r1"], {}),
    (["purchases", "resolve", TOO_BIG, "credit", "--reason", "x"], {}),
    (["history", "alice", "--before", TOO_BIG], {}),
    (["balance", NOT_UTF8], {}),
    (["users", "admin", NOT_UTF8], {}),
    (["users", "sign-out", NOT_UTF8], {}),
    (["webhooks", "replay", NOT_UTF8], {}),
    (["mail", "list", "--to", NOT_UTF8], {}),
    (["refund", "--key", "r9", "--of", NOT_UTF8], {}),
    (["spend", "alice", "1", "--key", "sd1", "--description", NOT_UTF8], {}),
    (["grant", "alice", "10", "--reason", "x", "--key", NOT_UTF8], {}),
    (["reconcile", "--since", "99999999999d"], {}),
    (["db", "upgrade", "--revision", "bogus"], {}),
    (["db", "upgrade", "--revision", ""], {}),
    (["balance", "alice"], {"TOKENBANK_ENV": "staging"}),
    (["balance", "alice"], {"TOKENBANK_DATABASE_POOL_SIZE": "abc"}),
    (["serve"], {"TOKENBANK_DATABASE_POOL_SIZE": "0"}),
    (["serve"], {"TOKENBANK_LOG_LEVEL": "verbose"}),
    (["packages", "check"], {"TOKENBANK_CATALOG": "/"}),
    (["models", "check"], {"TOKENBANK_MODELS": "/"}),
    (["db", "check"], {"TOKENBANK_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}),
]


@pytest.mark.parametrize(("args", "env"), HOSTILE_COMMANDS)
def test_a_hostile_argument_or_setting_is_a_clean_error(
    db: Database, tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    """Run as an operator runs it, each command refuses what it cannot take with a line
    saying why and its exit status (2 bad input, 9 configuration, 10 database), never a
    traceback, and changes nothing."""
    environ = {
        **os.environ,
        "TOKENBANK_DATABASE_URL": db.url.render_as_string(hide_password=False),
        "STRIPE_SECRET_KEY": "sk_test_unused",
        "STRIPE_API_BASE": "http://127.0.0.1:1",
        **env,
    }
    done = subprocess.run(
        [TOKENBANK, *args],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert "Traceback" not in output, output
    assert done.returncode in (2, 3, 9, 10), (done.returncode, output)
    with db.read() as conn:
        assert ledger.verify(conn).ok

"""Registration, passwords, sessions, portal links and rate-limit counters, on SQLite and
PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.identity.mailbox import kinds
from tokenbank import identity, ledger
from tokenbank.columns import utcnow
from tokenbank.db import Database, connect
from tokenbank.errors import ConfigurationError, EmailNotVerified, InvalidEmailLink
from tokenbank.identity import DatabaseStorage, Passwords, RateLimited, Throttle, links
from tokenbank.identity.models import email_links, rate_limits, sessions
from tokenbank.users import create_user
from tokenbank.users.models import users as users_table

PASSWORDS = Passwords(memory_kib=1024, passes=1)
PASSWORD = "correct horse battery"
DAY = timedelta(days=1)


def _register(db: Database, email: str = "ann@example.com") -> str | None:
    return identity.register(db, email=email, password=PASSWORD, passwords=PASSWORDS, language="en")


def _signed_up(db: Database, email: str = "ann@example.com") -> tuple[str, str]:
    """A new account and a session of it (registration opens none: the pages sign in)."""
    user_id = _register(db, email)
    assert user_id is not None
    with db.transaction() as conn:
        token = identity.open_session(conn, user_id=user_id, via="registration", ttl=DAY)
    return user_id, token


def _count(db: Database, table: sa.Table) -> int:
    with db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _who(db: Database, token: str) -> identity.SignedIn | None:
    with db.read() as conn:
        return identity.session_user(conn, token=token)


def test_register_stores_argon2id_and_opens_no_session(db: Database) -> None:
    user_id = _register(db, email=" Ann@Example.com ")
    assert user_id is not None and user_id.startswith("u_")
    with db.read() as conn:
        stored = conn.execute(
            sa.select(users_table.c.password_hash).where(users_table.c.id == user_id)
        ).scalar_one()
        assert ledger.balance(conn, user_id=user_id).available == 0  # the wallet exists
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert _count(db, sessions) == 0
    token = identity.sign_in(
        db, email="ann@example.com", password=PASSWORD, passwords=PASSWORDS, session_ttl=DAY
    )
    signed_in = _who(db, token)
    assert signed_in is not None
    assert (signed_in.user_id, signed_in.email, signed_in.has_password) == (
        user_id,
        "Ann@Example.com",  # as typed, trimmed
        True,
    )
    assert not signed_in.is_admin
    assert not signed_in.email_verified  # until the link mailed to it is followed
    assert kinds(db) == [("verify", "Ann@example.com")]


def test_register_refuses_short_password_and_taken_email(db: Database) -> None:
    with pytest.raises(ledger.InvalidArgument, match="password") as refused:
        identity.register(
            db, email="bob@example.com", password="short", passwords=PASSWORDS, language="en"
        )
    assert refused.value.field == "password"
    with pytest.raises(ledger.InvalidArgument) as refused:
        _register(db, email="not an address")
    assert refused.value.field == "email"
    assert kinds(db) == []
    first = _register(db)
    assert first is not None
    # Taken: no second account, no error to tell the visitor so; the owner hears of it.
    assert _register(db, email="ANN@example.com") is None
    assert _count(db, users_table) == 1
    assert kinds(db) == [("verify", "ann@example.com"), ("registered_again", "ann@example.com")]


def test_sign_in_same_error_for_wrong_password_and_unknown_email(db: Database) -> None:
    _register(db)
    assert _count(db, sessions) == 0
    for email, password in (
        ("ann@example.com", "wrong password"),
        ("who@x.io", "whatever1"),
        ("not an address", PASSWORD),
    ):
        with pytest.raises(identity.InvalidCredentials) as caught:
            identity.sign_in(
                db, email=email, password=password, passwords=PASSWORDS, session_ttl=DAY
            )
        assert str(caught.value) == "wrong email or password"
    assert _count(db, sessions) == 0
    for spelling in (
        " Ann@Example.com ",
        "\uff41\uff4e\uff4e@example.com",
        "an\u200bn@EXAMPLE.com",
    ):
        token = identity.sign_in(
            db, email=spelling, password=PASSWORD, passwords=PASSWORDS, session_ttl=DAY
        )
        assert _who(db, token) is not None


def test_sign_in_upgrades_an_outdated_hash(db: Database) -> None:
    user_id = _register(db)
    stronger = Passwords(memory_kib=2048, passes=1)
    identity.sign_in(
        db, email="ann@example.com", password=PASSWORD, passwords=stronger, session_ttl=DAY
    )
    with db.read() as conn:
        stored = conn.execute(
            sa.select(users_table.c.password_hash).where(users_table.c.id == user_id)
        ).scalar_one()
    assert "m=2048" in stored


def test_sessions_expire_and_are_revocable(db: Database) -> None:
    _, token = _signed_up(db)
    with db.read() as conn:
        assert identity.session_user(conn, token=token, now=utcnow() + 2 * DAY) is None
        assert identity.session_user(conn, token=token + "x") is None
        assert identity.session_user(conn, token="") is None
    signed_in = _who(db, token)
    assert signed_in is not None
    with db.transaction() as conn:
        identity.revoke_session(conn, session_id=signed_in.session_id)
    assert _who(db, token) is None


def test_change_password_signs_out_other_sessions(db: Database) -> None:
    _, first = _signed_up(db)
    second = identity.sign_in(
        db, email="ann@example.com", password=PASSWORD, passwords=PASSWORDS, session_ttl=DAY
    )
    me = _who(db, first)
    assert me is not None
    new = "plover trellis quartz"
    with pytest.raises(identity.InvalidCredentials):
        identity.change_password(
            db, signed_in=me, current="not it at all", new=new, passwords=PASSWORDS
        )
    ended = identity.change_password(
        db, signed_in=me, current=PASSWORD, new=new, passwords=PASSWORDS
    )
    assert ended == 1
    assert _who(db, first) is not None and _who(db, second) is None
    with pytest.raises(identity.InvalidCredentials):
        identity.sign_in(
            db, email="ann@example.com", password=PASSWORD, passwords=PASSWORDS, session_ttl=DAY
        )
    identity.sign_in(
        db, email="ann@example.com", password=new, passwords=PASSWORDS, session_ttl=DAY
    )


def _host_user(db: Database, user_id: str = "host-7") -> None:
    with db.transaction() as conn:
        create_user(conn, user_id=user_id, email=f"{user_id}@host.io")


def test_portal_link_is_one_time(db: Database) -> None:
    _host_user(db)
    with db.transaction() as conn:
        token, expires_at = identity.create_portal_link(
            conn, user_id="host-7", next_path="/history", ttl=timedelta(minutes=5)
        )
    assert expires_at > utcnow()
    with db.transaction() as conn:
        assert identity.redeem_portal_link(conn, token=token) == ("host-7", "/history")
    for attempt in (token, token[:-1] + ("A" if token[-1] != "A" else "B"), "", "x" * 500):
        with pytest.raises(identity.InvalidPortalLink), db.transaction() as conn:
            identity.redeem_portal_link(conn, token=attempt)


def test_portal_link_expires(db: Database) -> None:
    _host_user(db)
    with db.transaction() as conn:
        token, _ = identity.create_portal_link(
            conn, user_id="host-7", next_path="/dashboard", ttl=timedelta(seconds=30)
        )
    with pytest.raises(identity.InvalidPortalLink), db.transaction() as conn:
        identity.redeem_portal_link(conn, token=token, now=utcnow() + timedelta(seconds=31))


@pytest.mark.parametrize(
    "path", ["https://evil.example/", "//evil.example", "/\\evil", "dashboard", "/a\nb"]
)
def test_portal_link_only_goes_to_this_site(db: Database, path: str) -> None:
    _host_user(db)
    with pytest.raises(ledger.InvalidArgument), db.transaction() as conn:
        identity.create_portal_link(conn, user_id="host-7", next_path=path, ttl=DAY)


def test_portal_link_for_unknown_user(db: Database) -> None:
    with pytest.raises(ledger.UnknownUser), db.transaction() as conn:
        identity.create_portal_link(conn, user_id="ghost", next_path="/dashboard", ttl=DAY)


def test_racing_redemptions_have_one_winner(db: Database) -> None:
    _host_user(db)
    with db.transaction() as conn:
        token, _ = identity.create_portal_link(
            conn, user_id="host-7", next_path="/dashboard", ttl=DAY
        )
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def redeem() -> None:
        barrier.wait()
        try:
            with db.transaction() as conn:
                identity.redeem_portal_link(conn, token=token)
            outcomes.append("won")
        except identity.InvalidPortalLink:
            outcomes.append("refused")

    threads = [threading.Thread(target=redeem) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["won"]


def test_sweep_removes_only_what_is_dead(db: Database) -> None:
    ann, live = _signed_up(db)
    _host_user(db)
    with db.transaction() as conn:
        identity.create_portal_link(conn, user_id="host-7", next_path="/", ttl=timedelta(seconds=1))
        gone = identity.open_session(conn, user_id="host-7", via="portal", ttl=DAY)
        reset = links.issue(
            conn, purpose="reset", user_id=ann, email="ann@example.com", stamp="s" * 64
        )
        links.issue(conn, purpose="verify", user_id=ann, email="ann@example.com")
    who = _who(db, gone)
    assert who is not None
    with db.transaction() as conn:
        identity.revoke_session(conn, session_id=who.session_id)
        removed = identity.sweep(conn, now=utcnow() + timedelta(seconds=5))
    assert removed == {"portal_links": 1, "sessions": 1, "email_links": 0, "rate_limits": 0}
    with db.transaction() as conn:  # the reset link lasts 30 minutes, the other 3 days
        removed = identity.sweep(conn, now=utcnow() + timedelta(minutes=31))
        assert removed["email_links"] == 1
        with pytest.raises(InvalidEmailLink):
            links.peek(conn, purpose="reset", token=reset)
    assert _count(db, email_links) == 1
    assert _who(db, live) is not None


# --- rate limits -------------------------------------------------------------------------


def test_database_storage_counts_windows(db: Database) -> None:
    storage = DatabaseStorage(db)
    assert [storage.incr("k", 60) for _ in range(3)] == [1, 2, 3]
    assert storage.get("k") == 3 and storage.get("other") == 0
    assert storage.get_expiry("k") > time.time() + 50
    with db.transaction() as conn:  # the window ends
        conn.execute(sa.update(rate_limits).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert storage.get("k") == 0
    assert storage.incr("k", 60) == 1  # a new window starts from one
    storage.clear("k")
    assert storage.get("k") == 0 and storage.check()


def test_limits_are_shared_between_processes(db: Database) -> None:
    """Two throttles on two connection pools stand for two processes: the count is the
    database's, so a limit holds however many app processes there are."""
    other = connect(db.engine.url.render_as_string(hide_password=False), pool_size=2)
    first = Throttle(DatabaseStorage(db), {"login": "3/minute"})
    second = Throttle(DatabaseStorage(other), {"login": "3/minute"})
    first.hit("login", "ann@example.com")
    second.hit("login", "ann@example.com")
    first.hit("login", "ann@example.com")
    with pytest.raises(RateLimited) as caught:
        second.hit("login", "ann@example.com")
    assert 0 < caught.value.retry_after <= 61
    second.hit("login", "bob@example.com")  # other identities are counted apart
    with db.read() as conn:
        keys = conn.execute(sa.select(rate_limits.c.key)).scalars().all()
    assert not any("ann" in key for key in keys)  # identities are stored hashed
    other.dispose()


def test_concurrent_hits_are_all_counted(db: Database) -> None:
    storage = DatabaseStorage(db)
    barrier = threading.Barrier(10)

    def hit() -> None:
        barrier.wait()
        for _ in range(5):
            storage.incr("burst", 60)

    threads = [threading.Thread(target=hit) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert storage.get("burst") == 50


def test_unreadable_limit_is_a_configuration_error(db: Database) -> None:
    with pytest.raises(ConfigurationError):
        Throttle(DatabaseStorage(db), {"login": "often"})
    with pytest.raises(ConfigurationError):
        identity.storage_for("nonsense://", db)


def test_sessions_table_has_only_digests(db: Database) -> None:
    _, token = _signed_up(db)
    with db.read() as conn:
        ids = conn.execute(sa.select(sessions.c.id)).scalars().all()
    assert token not in ids and len(ids[0]) == 64


def test_require_verified(db: Database) -> None:
    _, token = _signed_up(db)
    me = _who(db, token)
    assert me is not None and not me.email_verified
    identity.require_verified(me, required=False)
    with pytest.raises(EmailNotVerified):
        identity.require_verified(me, required=True)
    _host_user(db)  # the host app vouches for the addresses it sets
    with db.transaction() as conn:
        host = identity.open_session(conn, user_id="host-7", via="portal", ttl=DAY)
    vouched = _who(db, host)
    assert vouched is not None and vouched.email_verified
    identity.require_verified(vouched, required=True)


def test_racing_registrations_of_one_email(db: Database) -> None:
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def register() -> None:
        barrier.wait()
        outcomes.append("taken" if _register(db, email="race@example.com") is None else "created")

    threads = [threading.Thread(target=register) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] + ["taken"] * 5
    assert _count(db, users_table) == 1
    assert sorted(kinds(db)) == [("registered_again", "race@example.com")] * 5 + [
        ("verify", "race@example.com")
    ]

"""The free trial: given once per person whatever the spelling of their address, in the
unit that creates the user or confirms their address, on SQLite and PostgreSQL; and never
twice, however many registrations race each other."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from tests.identity.mailbox import last_token
from tokenbank import audit, grants, identity, ledger, users
from tokenbank.db import Database
from tokenbank.grants.models import trials
from tokenbank.identity import Passwords
from tokenbank.users import emails

NOW = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
TRIAL = grants.Trial(tokens=120, days=14)
PASSWORDS = Passwords(memory_kib=1024, passes=1)
PASSWORD = "correct horse battery"
NEW_PASSWORD = "another horse, another battery"


def _register(db: Database, email: str, *, verify: bool, trial: grants.Trial = TRIAL) -> str:
    user_id = identity.register(
        db,
        email=email,
        password=PASSWORD,
        passwords=PASSWORDS,
        language="en",
        verify=verify,
        trial=trial,
    )
    assert user_id is not None
    return user_id


def _granted(db: Database, user_id: str) -> int:
    with db.read() as conn:
        return ledger.balance(conn, user_id=user_id).total_granted


def _put(db: Database, user_id: str, email: str, trial: grants.Trial = TRIAL) -> bool:
    """What ``PUT /api/v1/users/{id}`` does: the user, then the trial, in one unit."""
    with db.transaction(wallet=user_id) as conn:
        done = users.upsert_user(conn, user_id=user_id, email=email)
        if done.first_address is None:
            return False
        return grants.grant_trial(
            conn, user_id=user_id, address=done.first_address, trial=trial, now=NOW
        )


def _trials(db: Database) -> list[tuple[str, str]]:
    with db.read() as conn:
        rows = conn.execute(sa.select(trials.c.person, trials.c.user_id).order_by(trials.c.user_id))
        return [(row.person, row.user_id) for row in rows]


def test_a_trial_is_granted_once_expiring_audited_and_logged(db: Database) -> None:
    with capture_logs() as lines:
        assert _put(db, "ann", "Ann.Smith@gmail.com")
    expires_at = NOW + timedelta(days=14)
    with db.read() as conn:
        balance = ledger.balance(conn, user_id="ann", now=NOW)
        (item,) = ledger.history(conn, user_id="ann", limit=5).items
        (action,) = audit.actions_about(conn, subject="user:ann")
    assert (balance.available, balance.total_granted) == (120, 120)
    assert [(e.amount, e.expires_at, e.source) for e in balance.expiring] == [
        (120, expires_at, ledger.Source.TRIAL)
    ]
    assert (item.kind, item.amount, item.description) == (
        ledger.TransferKind.GRANT,
        120,
        "Free trial",
    )
    assert (action.actor, action.action) == ("system:trial", "trial")
    assert action.details == {
        "amount": 120,
        "transfer_id": item.transfer_id,
        "expires_at": expires_at.isoformat(),
    }
    assert _trials(db) == [("annsmith@gmail.com", "ann")]
    granted = [line for line in lines if line["event"] == "trial_granted"]
    assert granted == [
        {
            "event": "trial_granted",
            "log_level": "info",
            "user_id": "ann",
            "tokens": 120,
            "transfer_id": item.transfer_id,
            "expires_at": expires_at.isoformat(),
        }
    ]
    with db.read() as conn:  # unused, it is gone once it expires
        later = ledger.balance(conn, user_id="ann", now=expires_at + timedelta(seconds=1))
    assert later.available == 0


@pytest.mark.parametrize(
    "variant",
    ["annsmith@gmail.com", "a.n.n.smith+second@googlemail.com", "ANN.SMITH+x@GMAIL.COM"],
)
def test_a_second_account_of_the_same_person_gets_no_trial(db: Database, variant: str) -> None:
    assert _put(db, "ann", "Ann.Smith@gmail.com")
    assert not _put(db, "ann-2", variant)
    with db.read() as conn:
        assert ledger.balance(conn, user_id="ann-2").total_granted == 0
        assert audit.actions_about(conn, subject="user:ann-2") == []
    assert _trials(db) == [("annsmith@gmail.com", "ann")]


def test_a_user_has_one_trial_whatever_address_they_move_to(db: Database) -> None:
    assert _put(db, "ann", "ann@example.com")
    with db.transaction(wallet="ann") as conn:
        address = emails.forms("ann@elsewhere.example")
        assert not grants.grant_trial(conn, user_id="ann", address=address, trial=TRIAL)
    assert _trials(db) == [("ann@example.com", "ann")]


def test_no_trial_when_it_is_off(db: Database) -> None:
    with capture_logs() as lines:
        assert not _put(db, "ann", "ann@example.com", trial=grants.Trial(tokens=0, days=14))
    with db.read() as conn:
        assert ledger.balance(conn, user_id="ann").total_granted == 0
    assert _trials(db) == []
    assert not [line for line in lines if line["event"] == "trial_granted"]
    # Turned on later, the person's first account with an address can still have it.
    assert _put(db, "bob", "bob@example.com")


def test_a_trial_rolled_back_with_its_user_was_never_given(db: Database) -> None:
    """Given in the caller's unit: when that unit fails, neither the user nor the trial
    stands, and the person can have it later."""
    with capture_logs() as lines, pytest.raises(RuntimeError), db.transaction() as conn:
        done = users.upsert_user(conn, user_id="ann", email="ann@example.com")
        assert done.first_address is not None
        assert grants.grant_trial(conn, user_id="ann", address=done.first_address, trial=TRIAL)
        raise RuntimeError("the unit fails after the trial")
    assert not [line for line in lines if line["event"] == "trial_granted"]
    assert _trials(db) == []
    assert _put(db, "ann", "ann@example.com")


def test_racing_accounts_of_one_person_get_one_trial(db: Database) -> None:
    """Ten registrations at once, each in its own transaction, with ten spellings of one
    Gmail address: one trial, and a ledger that adds up."""
    variants = [
        "annsmith@gmail.com",
        "Ann.Smith@gmail.com",
        "ann.smith+1@gmail.com",
        "a.nnsmith@googlemail.com",
        "annsmith+x@googlemail.com",
        "ANNSMITH+2@GMAIL.COM",
        "an.nsmi.th@gmail.com",
        "annsmit.h+3@gmail.com",
        "ann.smith+4@googlemail.com",
        "a.n.n.s.m.i.t.h@gmail.com",
    ]
    start = threading.Barrier(len(variants))
    results: dict[str, str] = {}

    def register(n: int) -> None:
        start.wait()
        results[variants[n]] = _register(db, variants[n], verify=False)

    threads = [threading.Thread(target=register, args=(n,)) for n in range(len(variants))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results.values())) == len(variants)  # ten accounts
    (given,) = _trials(db)
    assert given[0] == "annsmith@gmail.com"
    with db.read() as conn:
        granted = [ledger.balance(conn, user_id=u).total_granted for u in results.values()]
        report = ledger.verify(conn)
    assert sorted(granted) == [0] * 9 + [120]
    assert report.ok, report


def test_racing_puts_of_one_user_with_two_addresses_give_one_trial(db: Database) -> None:
    """Two first addresses of one user at once are still one trial."""
    start = threading.Barrier(2)
    outcomes: list[bool] = []

    def put(email: str) -> None:
        start.wait()
        outcomes.append(_put(db, "ann", email))

    threads = [
        threading.Thread(target=put, args=(e,)) for e in ("ann@example.com", "ann@example.org")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(_trials(db)) == 1
    with db.read() as conn:
        assert ledger.balance(conn, user_id="ann").total_granted == 120
        assert ledger.verify(conn).ok


def test_racing_host_app_users_of_one_person_get_one_trial(db: Database) -> None:
    """The host app's users have no retry to fall back on (a registration looks again when
    it loses a race): ten users put at once with spellings of one address all stand, and
    exactly one has the trial."""
    variants = [f"ann.smith+{n}@gmail.com" for n in range(10)]
    start = threading.Barrier(len(variants))
    outcomes: dict[int, bool] = {}

    def put(n: int) -> None:
        start.wait()
        outcomes[n] = _put(db, f"user-{n}", variants[n])

    threads = [threading.Thread(target=put, args=(n,)) for n in range(len(variants))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()) == [False] * 9 + [True]
    (winner,) = [n for n, won in outcomes.items() if won]
    assert _trials(db) == [("annsmith@gmail.com", f"user-{winner}")]
    with db.read() as conn:
        assert ledger.verify(conn).ok


# --- on the pages: a registration, and the confirmation of its address --------------------


def test_a_registration_without_confirming_gets_the_trial_at_once(db: Database) -> None:
    ann = _register(db, "Ann.Smith@gmail.com", verify=False)
    assert _granted(db, ann) == 120
    bob = _register(db, "annsmith+again@gmail.com", verify=False)
    assert _granted(db, bob) == 0
    off = _register(db, "carol@example.com", verify=False, trial=grants.Trial(tokens=0))
    assert _granted(db, off) == 0


def test_a_registration_to_confirm_gets_the_trial_when_it_is_confirmed(db: Database) -> None:
    """Not before: an unconfirmed variant of someone's address must not take their
    trial. Whoever confirms first among one person's addresses has it."""
    squatter = _register(db, "a.nn.smith@gmail.com", verify=True)  # never confirmed
    ann = _register(db, "Ann.Smith@gmail.com", verify=True)
    assert _granted(db, squatter) == _granted(db, ann) == 0
    assert _trials(db) == []
    token = last_token(db, "verify", "/verify/")  # the newest: Ann's
    assert identity.verify_email(db, token=token, trial=TRIAL) == ann
    assert _granted(db, ann) == 120
    assert _trials(db) == [("annsmith@gmail.com", ann)]


def test_a_reset_that_confirms_the_address_gives_the_trial(db: Database) -> None:
    ann = _register(db, "ann@example.com", verify=True)
    identity.request_reset(db, email="ann@example.com", language="en")
    token = last_token(db, "reset", "/password/reset/")
    identity.reset_password(
        db, token=token, password=NEW_PASSWORD, passwords=PASSWORDS, trial=TRIAL
    )
    assert _granted(db, ann) == 120
    # Confirmed already: a second reset gives nothing more.
    identity.request_reset(db, email="ann@example.com", language="en")
    token = last_token(db, "reset", "/password/reset/")
    identity.reset_password(db, token=token, password=PASSWORD, passwords=PASSWORDS, trial=TRIAL)
    assert _granted(db, ann) == 120

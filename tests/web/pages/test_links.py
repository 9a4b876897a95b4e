"""The pages behind mail: sign-up that tells nothing, confirming an address before buying,
a forgotten password, a change of address, and the development mailbox. On SQLite and
PostgreSQL; the mail is read where development keeps it (the outbox)."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.letters import link_in, text_of
from tests.stripe_emulator import EmulatorServer, make_billing
from tests.web.browsing import (
    PASSWORD,
    confirm_address,
    follow,
    form_token,
    last_mail,
    mails_to,
    new_user,
    sign_in,
    sign_up,
    signed_in_user,
)
from tests.web.conftest import PASSWORDS, SETTINGS
from tokenbank import identity, ledger, mail
from tokenbank.columns import utcnow
from tokenbank.config import Settings
from tokenbank.db import Database
from tokenbank.identity import Passwords
from tokenbank.identity.models import email_links
from tokenbank.users.models import users as users_table
from tokenbank.web.app import create_app


def _client(db: Database, settings: Settings = SETTINGS, **options: object) -> TestClient:
    app = create_app(settings, db=db, passwords=PASSWORDS, **options)  # type: ignore[arg-type]
    return TestClient(app, base_url="https://tokens.example")


def _accounts(db: Database) -> list[str]:
    with db.read() as conn:
        return list(conn.execute(sa.select(users_table.c.email)).scalars())


def _csrf_free(html: str) -> str:
    return re.sub(r'name="csrf_token" value="[0-9a-f]+"', "", html)


# --- sign-up ---------------------------------------------------------------------------------


def test_sign_up_answers_alike_for_a_new_and_a_taken_address(client: TestClient) -> None:
    first = sign_up(client, "ann@example.com")
    again = sign_up(client, "ann@example.com")
    assert first.status_code == again.status_code == 200
    assert "Check your inbox" in first.text
    assert _csrf_free(first.text) == _csrf_free(again.text)
    assert sorted(first.headers.keys()) == sorted(again.headers.keys())
    assert "set-cookie" not in first.headers and "tb_session" not in client.cookies
    letters = mails_to(client, "ann@example.com")
    assert [m["Subject"] for m in letters] == [
        "Confirm your email address",
        "Someone tried to sign up with your address",
    ]
    assert "/password/forgot" in text_of(letters[1]) and "/verify/" not in text_of(letters[1])


@pytest.mark.parametrize("name", ["Ann\tLee", "Ann\u202eeeL", "x" * 201])
def test_a_refused_name_is_refused_alike_for_a_new_and_a_taken_address(
    client: TestClient, db: Database, name: str
) -> None:
    """Every refusal comes before the address is looked up, or it would tell them apart."""
    sign_up(client, "ann@example.com")
    answers = []
    for email in ("ann@example.com", "new@example.com"):
        token = form_token(client, "/register")
        form = {"email": email, "password": PASSWORD, "name": name, "csrf_token": token}
        answers.append(client.post("/register", data=form))
    assert [a.status_code for a in answers] == [422, 422]
    if len(name) <= 200:  # longer, the form itself refuses it
        assert "without control characters" in answers[0].text
    assert _csrf_free(answers[0].text).replace("ann@", "x@") == _csrf_free(answers[1].text).replace(
        "new@", "x@"
    )
    assert _accounts(db) == ["ann@example.com"]


def test_a_name_may_hold_an_emoji_sequence(client: TestClient, db: Database) -> None:
    token = form_token(client, "/register")
    form = {
        "email": "ann@example.com",
        "password": PASSWORD,
        "name": "Ann \U0001f469\u200d\U0001f4bb",
    }
    assert client.post("/register", data=form | {"csrf_token": token}).status_code == 200
    assert _accounts(db) == ["ann@example.com"]


def test_sign_up_takes_as_long_for_a_taken_address(db: Database) -> None:
    """The time a sign-up takes tells nothing either: real argon2id, the same work."""
    settings = SETTINGS.model_copy(
        update={"register_limit_per_ip": "1000/hour", "register_limit_per_email": "1000/hour"}
    )
    app = create_app(settings, db=db, passwords=Passwords())
    with TestClient(app, base_url="https://tokens.example") as client:
        for n in range(12):
            assert sign_up(client, f"taken{n}@example.com").status_code == 200
        token = form_token(client, "/register")

        def timed(email: str) -> float:
            form = {"email": email, "password": PASSWORD, "csrf_token": token}
            started = time.perf_counter()
            assert client.post("/register", data=form).status_code == 200
            return time.perf_counter() - started

        new, taken = [], []
        for n in range(12):  # interleaved, so load on the machine falls on both alike
            new.append(timed(f"new{n}@example.com"))
            taken.append(timed(f"taken{n}@example.com"))
    difference = abs(statistics.median(new) - statistics.median(taken))
    assert difference < max(0.015, 0.25 * statistics.median(taken)), (new, taken)


def test_look_alike_addresses_end_in_one_account(client: TestClient, db: Database) -> None:
    answers = [
        sign_up(client, address)
        for address in (
            "homoglyph@x.com",
            "\uff48omoglyph@x.com",  # a fullwidth h
            "homo\u200bglyph@x.com",  # a zero-width space
        )
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    cyrillic = sign_up(client, "h\u043emoglyph@x.com")
    assert cyrillic.status_code == 422 and "different alphabets" in cyrillic.text
    assert _accounts(db) == ["homoglyph@x.com"]
    subjects = [m["Subject"] for m in mails_to(client, "homoglyph@x.com")]
    assert subjects.count("Someone tried to sign up with your address") == 2
    assert sign_in(client, "\uff48omoglyph@X.com").status_code == 303  # the same account


def test_a_look_alike_of_a_confirmed_address_is_told_by_mail(client: TestClient) -> None:
    sign_up(client, "modern@x.com")
    confirm_address(client, "modern@x.com")
    answer = sign_up(client, "rnodern@x.com")  # "rn" looks like "m"
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    told = last_mail(client, "rnodern@x.com")
    assert told["Subject"] == "This address cannot open an account"


def test_an_unconfirmed_look_alike_keeps_nobody_out(client: TestClient, db: Database) -> None:
    """A squatter who signs up with a look-alike, and never confirms it, does not keep the
    owner of the real address out: the first address confirmed holds the look."""
    sign_up(client, "rnary@x.com")  # never confirmed
    sign_up(client, "mary@x.com")
    assert last_mail(client, "mary@x.com")["Subject"] == "Confirm your email address"
    confirm_address(client, "mary@x.com")
    late = follow(client, link_in(last_mail(client, "rnary@x.com"), "/verify/"))
    assert late.status_code == 409 and "confirmed first" in late.text
    assert sorted(_accounts(db)) == ["mary@x.com", "rnary@x.com"]
    with db.read() as conn:
        held = {
            row.email: row.email_skeleton
            for row in conn.execute(sa.select(users_table.c.email, users_table.c.email_skeleton))
        }
    assert held == {"mary@x.com": "rnary@x.com", "rnary@x.com": None}


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("password123", "most common ones"),
        ("1234567890", "most common ones"),
        ("qwertyuiop", "most common ones"),
        ("aaaaaaaaaaaa", "repeats characters"),
        ("annexample", "your email address or your name"),
    ],
)
def test_weak_passwords_are_refused_with_the_reason(
    client: TestClient, db: Database, password: str, reason: str
) -> None:
    answer = sign_up(client, "ann@example.com", password)
    assert answer.status_code == 422 and reason in answer.text, answer.text
    assert "a few unrelated words" in answer.text
    assert _accounts(db) == []


def test_weak_passwords_are_explained_in_chinese(client: TestClient) -> None:
    client.cookies.set("tb_lang", "zh-CN")
    answer = sign_up(client, "ann@example.com", "password123")
    assert answer.status_code == 422
    assert "最常见" in answer.text


def test_sign_up_mail_is_in_the_visitors_language(client: TestClient) -> None:
    client.cookies.set("tb_lang", "zh-CN")
    sign_up(client, "li@example.com")
    letter = last_mail(client, "li@example.com")
    assert letter["Content-Language"] == "zh-CN"
    assert letter["Subject"] == "确认你的电子邮件地址"
    html = letter.get_body(preferencelist=("html",))
    assert html is not None and 'lang="zh-CN"' in str(html.get_content())


# --- confirming the address before buying ------------------------------------------------------


@pytest.fixture
def shop(db: Database, emulator_server: EmulatorServer) -> Iterator[TestClient]:
    emulator_server.reset()
    with _client(db, seller=make_billing(emulator_server.url)) as client:
        yield client


def test_an_unconfirmed_account_reads_but_does_not_buy(shop: TestClient) -> None:
    sign_up(shop, "ann@example.com")
    assert sign_in(shop, "ann@example.com").status_code == 303
    dashboard = shop.get("/dashboard")
    assert dashboard.status_code == 200 and "Confirm your email address to buy" in dashboard.text
    token = form_token(shop, "/pricing")
    refused = shop.post("/buy/plus", data={"csrf_token": token}, follow_redirects=False)
    assert refused.status_code == 403 and "Confirm your email address" in refused.text
    as_json = shop.post(
        "/buy/plus", data={"csrf_token": token}, headers={"accept": "application/json"}
    )
    assert as_json.status_code == 403 and as_json.json()["code"] == "email_not_verified"
    # The link again, from the notice; then confirmed, the purchase starts.
    resent = shop.post("/account/verify", data={"csrf_token": token}, follow_redirects=False)
    assert resent.headers["location"] == "/account?changed=verify_sent"
    assert len(mails_to(shop, "ann@example.com")) == 2
    confirmed = follow(shop, link_in(last_mail(shop, "ann@example.com"), "/verify/"))
    assert confirmed.headers["location"] == "/account?changed=verified"
    assert "Confirm your email address to buy" not in shop.get("/dashboard").text
    bought = shop.post("/buy/plus", data={"csrf_token": token}, follow_redirects=False)
    assert bought.status_code == 303 and "/checkout/" in bought.headers["location"]


def test_a_confirmation_link_works_once_and_only_by_its_button(client: TestClient) -> None:
    sign_up(client, "ann@example.com")
    path = link_in(last_mail(client, "ann@example.com"), "/verify/")
    page = client.get(path)  # a mail scanner fetching the link confirms nothing
    assert page.status_code == 200 and "Confirm my address" in page.text
    assert sign_in(client, "ann@example.com").status_code == 303
    assert "Confirm your email address to buy" in client.get("/dashboard").text
    client.cookies.clear()
    first = follow(client, path)
    assert first.headers["location"] == "/login?done=verified"
    assert "Your email address is confirmed" in client.get("/login?done=verified").text
    second = follow(client, path)
    assert second.status_code == 400 and "cannot be used" in second.text


def test_resending_the_link_is_rate_limited(db: Database) -> None:
    tight = SETTINGS.model_copy(update={"mail_limit_per_user": "2/hour"})
    with _client(db, tight) as client:
        sign_up(client, "ann@example.com")
        sign_in(client, "ann@example.com")
        token = form_token(client, "/account")
        statuses = [
            client.post("/account/verify", data={"csrf_token": token}).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        assert len(mails_to(client, "ann@example.com")) == 3  # the sign-up's and two more


def test_verification_can_be_turned_off(db: Database) -> None:
    relaxed = SETTINGS.model_copy(update={"verify_email": False})
    with _client(db, relaxed) as client:
        assert sign_up(client, "ann@example.com").status_code == 200
        assert last_mail(client, "ann@example.com")["Subject"] == "Welcome to tokenbank"
        sign_in(client, "ann@example.com")
        assert "Confirm your email address" not in client.get("/dashboard").text


def test_the_trial_comes_with_the_confirmation(db: Database) -> None:
    """TOKENBANK_TRIAL_TOKENS reaches the pages: a new account's trial is given when its
    address is confirmed, and a second account of the same person gets none."""
    trial = SETTINGS.model_copy(update={"trial_tokens": 120, "trial_days": 14})
    with _client(db, trial) as client:
        sign_up(client, "Ann.Smith@gmail.com")
        with db.read() as conn:
            (ann,) = conn.execute(sa.select(users_table.c.id)).scalars()
            assert ledger.balance(conn, user_id=ann).total_granted == 0
        follow(client, link_in(last_mail(client, "Ann.Smith@gmail.com"), "/verify/"))
        sign_up(client, "annsmith+2@gmail.com")
        follow(client, link_in(last_mail(client, "annsmith+2@gmail.com"), "/verify/"))
    with db.read() as conn:
        granted = {
            row.email: ledger.balance(conn, user_id=row.id).total_granted
            for row in conn.execute(sa.select(users_table.c.id, users_table.c.email))
        }
    assert granted == {"Ann.Smith@gmail.com": 120, "annsmith+2@gmail.com": 0}


# --- a forgotten password ---------------------------------------------------------------------


def test_forgot_password_round_trip(client: TestClient, db: Database) -> None:
    user_id = new_user(client, "ann@example.com")
    with TestClient(client.app, base_url="https://tokens.example") as other:
        assert sign_in(other, "ann@example.com").status_code == 303
        client.cookies.clear()
        assert 'href="/password/forgot"' in client.get("/login").text
        token = form_token(client, "/password/forgot")
        known = client.post(
            "/password/forgot", data={"email": "ANN@example.com", "csrf_token": token}
        )
        unknown = client.post(
            "/password/forgot", data={"email": "nobody@example.com", "csrf_token": token}
        )
        assert known.status_code == unknown.status_code == 200
        assert _csrf_free(known.text).replace("ANN@example.com", "X") == _csrf_free(
            unknown.text
        ).replace("nobody@example.com", "X")
        assert mails_to(client, "nobody@example.com") == []
        with db.read() as conn:  # the same work was done, and dropped unsent
            (asked,) = mail.recent(conn, to="nobody@example.com")
        assert asked.status == "dropped" and asked.user_id is None
        letter = last_mail(client, "ann@example.com")
        assert letter["Subject"] == "Choose a new password"
        assert "30 minutes" in text_of(letter)
        path = link_in(letter, "/password/reset/")
        assert client.get(path).status_code == 200
        form = {"csrf_token": form_token(client, path)}
        weak = client.post(path, data=form | {"new_password": "password123"})
        assert weak.status_code == 422 and "most common" in weak.text
        done = client.post(
            path, data=form | {"new_password": "a brand new secret"}, follow_redirects=False
        )
        assert done.headers["location"] == "/login?done=reset"
        # Every session of the account ended, the other browser's too.
        assert other.get("/dashboard", follow_redirects=False).status_code == 303
    assert sign_in(client, "ann@example.com", PASSWORD).status_code == 401
    assert sign_in(client, "ann@example.com", "a brand new secret").status_code == 303
    assert signed_in_user(client) == user_id
    client.cookies.clear()
    reused = client.get(path)
    assert reused.status_code == 400 and "cannot be used" in reused.text


def test_a_reset_link_expires_and_is_outdated_by_a_new_password(
    client: TestClient, db: Database
) -> None:
    new_user(client, "ann@example.com")
    client.cookies.clear()
    token = form_token(client, "/password/forgot")
    for _ in range(2):
        client.post("/password/forgot", data={"email": "ann@example.com", "csrf_token": token})
    older, newer = (
        link_in(m, "/password/reset/") for m in mails_to(client, "ann@example.com")[-2:]
    )
    with db.transaction() as conn:  # the older link's half hour is over
        conn.execute(
            sa.update(email_links)
            .where(email_links.c.id == identity.links.digest(older.rsplit("/", 1)[1]))
            .values(
                created_at=utcnow() - timedelta(minutes=31),
                expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    assert client.get(older).status_code == 400
    # The password changes another way: the newer link no longer stands for it.
    sign_in(client, "ann@example.com")
    account = form_token(client, "/account")
    changed = client.post(
        "/account/password",
        data={
            "csrf_token": account,
            "current_password": PASSWORD,
            "new_password": "quite another one",
        },
        follow_redirects=False,
    )
    assert changed.status_code == 303
    assert client.get(newer).status_code == 400


def test_forgot_password_is_rate_limited_per_address_whoever_asks(db: Database) -> None:
    tight = SETTINGS.model_copy(update={"reset_limit_per_email": "2/hour"})
    with _client(db, tight) as client:
        token = form_token(client, "/password/forgot")
        statuses = [
            client.post(
                "/password/forgot", data={"email": "nobody@example.com", "csrf_token": token}
            ).status_code
            for _ in range(3)
        ]
    assert statuses == [200, 200, 429]  # an unknown address is limited like a known one


# --- a change of address ------------------------------------------------------------------------


def test_changing_the_address_needs_the_new_one_confirmed(client: TestClient, db: Database) -> None:
    user_id = new_user(client, "ann@example.com")
    token = form_token(client, "/account")
    wrong = client.post(
        "/account/email",
        data={"csrf_token": token, "email": "ann@new.example", "password": "not it at all"},
    )
    assert wrong.status_code == 401
    asked = client.post(
        "/account/email",
        data={"csrf_token": token, "email": "ann@new.example", "password": PASSWORD},
        follow_redirects=False,
    )
    assert asked.headers["location"] == "/account?changed=email_sent"
    assert _accounts(db) == ["ann@example.com"]  # nothing changes before the link
    letter = last_mail(client, "ann@new.example")
    assert letter["Subject"] == "Confirm your new email address"
    done = follow(client, link_in(letter, "/account/email/"))
    assert done.headers["location"] == "/account?changed=email"
    assert _accounts(db) == ["ann@new.example"]
    notice = last_mail(client, "ann@example.com")
    assert notice["Subject"] == "Your email address was changed"
    assert "ann@new.example" in text_of(notice)
    client.cookies.clear()
    assert sign_in(client, "ann@new.example").status_code == 303
    assert signed_in_user(client) == user_id


def test_an_address_in_use_is_told_to_its_owner_not_moved(client: TestClient, db: Database) -> None:
    new_user(client, "bob@example.com")
    client.cookies.clear()
    new_user(client, "ann@example.com")
    token = form_token(client, "/account")
    asked = client.post(
        "/account/email",
        data={"csrf_token": token, "email": "BOB@example.com", "password": PASSWORD},
        follow_redirects=False,
    )
    assert asked.headers["location"] == "/account?changed=email_sent"  # the same answer
    assert last_mail(client, "BOB@example.com")["Subject"] == "This address already has an account"
    assert sorted(_accounts(db)) == ["ann@example.com", "bob@example.com"]


# --- the development mailbox --------------------------------------------------------------------


LOCAL = SETTINGS.model_copy(update={"public_url": "http://127.0.0.1:8000"})


def test_the_development_mailbox_shows_the_mail_and_its_link(db: Database) -> None:
    with TestClient(create_app(LOCAL, db=db, passwords=PASSWORDS)) as client:
        _the_mailbox_shows(client)


def _the_mailbox_shows(client: TestClient) -> None:
    sign_up(client, "ann@example.com")
    confirm = link_in(last_mail(client, "ann@example.com"), "/verify/")
    listing = client.get("/_dev/mail")
    assert listing.status_code == 200 and "Confirm your email address" in listing.text
    mail_id = re.search(r'href="/_dev/mail/(\d+)"', listing.text)
    assert mail_id
    one = client.get(f"/_dev/mail/{mail_id.group(1)}")
    assert one.status_code == 200 and f'href="http://127.0.0.1:8000{confirm}"' in one.text
    html = client.get(f"/_dev/mail/{mail_id.group(1)}/html")
    assert html.status_code == 200 and confirm in html.text
    assert html.headers["content-security-policy"].startswith("sandbox")
    # A link that ends a sentence is shown without the sentence's full stop.
    sign_up(client, "ann@example.com")
    listing = client.get("/_dev/mail")
    newest = re.search(r'href="/_dev/mail/(\d+)"', listing.text)
    assert newest
    again = client.get(f"/_dev/mail/{newest.group(1)}").text
    assert 'href="http://127.0.0.1:8000/password/forgot"' in again
    assert 'href="http://127.0.0.1:8000/password/forgot."' not in again


@pytest.mark.parametrize(
    "changes",
    [
        {"env": "production", "smtp_url": SecretStr("smtp://127.0.0.1:9"), "mail_sender": "worker"},
        {},  # development, but reachable by others: a public address
        {"public_url": "http://127.0.0.1:8000", "smtp_url": SecretStr("smtp://127.0.0.1:9")},
    ],
)
def test_the_development_mailbox_is_only_for_development_on_this_machine(
    db: Database, changes: dict[str, object]
) -> None:
    with _client(db, SETTINGS.model_copy(update=changes)) as client:
        sign_up(client, "ann@example.com")
        for path in ("/_dev/mail", "/_dev/mail/1", "/_dev/mail/1/html"):
            assert client.get(path).status_code == 404, path


def test_link_tokens_stay_out_of_the_access_log(
    db: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    with _client(db, SETTINGS.model_copy(update={"log_level": "info"})) as client:
        sign_up(client, "ann@example.com")
        confirm_address(client, "ann@example.com")
    logged = capsys.readouterr().out
    assert '"route": "/verify/{token}"' in logged
    assert "/verify/" not in logged.replace('"/verify/{token}"', "")

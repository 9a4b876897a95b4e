"""Email addresses: the canonical form an address is looked up by, the skeleton that finds
its look-alikes, the mixed-script refusal; and one account per group of addresses that
look alike, through registration and the host app's calls alike, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.identity.mailbox import kinds, outbox
from tokenbank import identity, mail, users
from tokenbank.db import Database
from tokenbank.errors import InvalidArgument, MixedScriptEmail
from tokenbank.identity import Passwords
from tokenbank.users import emails
from tokenbank.users.models import users as users_table

PASSWORDS = Passwords(memory_kib=1024, passes=1)
PASSWORD = "correct horse battery"
DAY = timedelta(days=1)

CYRILLIC_O = "\u043e"
GREEK_ALPHA = "\u03b1"
FULLWIDTH_H = "\uff48"
#: The issue's four spellings of one address: as is, a fullwidth "h", a zero-width space,
#: a Cyrillic "o".
HOMOGLYPH = "homoglyph@x.com"
FULLWIDTH = f"{FULLWIDTH_H}omoglyph@x.com"
ZERO_WIDTH = "homo\u200bglyph@x.com"
CYRILLIC = f"h{CYRILLIC_O}moglyph@x.com"


# --- the canonical form --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("ann@example.com", "ann@example.com"),
        (" Ann@Example.COM\n", "ann@example.com"),  # trimmed, case folded
        ("\uff41\uff4e\uff4e@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com", "ann@example.com"),
        ("an\u200bn@example.com", "ann@example.com"),  # zero-width space
        ("an\u00adn@example.com", "ann@example.com"),  # soft hyphen
        ("an\u200dn@example.com", "ann@example.com"),  # zero-width joiner
        ("an\u2060n@example.com", "ann@example.com"),  # word joiner
        ("\ufeffann@example.com", "ann@example.com"),  # byte order mark
        ("an\U000e0041n@example.com", "ann@example.com"),  # a tag character
        ("an\u034fn@example.com", "ann@example.com"),  # combining grapheme joiner (Mn)
        ("an\ufe0fn@example.com", "ann@example.com"),  # variation selector (Mn)
        ("Stra\u00dfe@x.de", "strasse@x.de"),  # full case folding
        ("\ufb01@x.com", "fi@x.com"),  # a compatibility ligature
        ("ann@b\u00fccher.de", "ann@xn--bcher-kva.de"),  # the domain in its ASCII form
        ("ann@xn--bcher-kva.de", "ann@xn--bcher-kva.de"),
        ("ANN@B\u00dcCHER.DE", "ann@xn--bcher-kva.de"),
        ("ann+shop@x.com", "ann+shop@x.com"),  # sub-addresses are not folded
        ("a.nn@x.com", "a.nn@x.com"),  # nor dots
    ],
)
def test_canonical_forms(typed: str, canonical: str) -> None:
    address = emails.parse(typed)
    assert address.typed == typed.strip()
    assert address.canonical == canonical
    assert emails.canonical(typed) == canonical
    assert emails.parse(canonical).canonical == canonical


def test_forms_of_one_address_share_canonical_and_skeleton() -> None:
    spellings = [
        "ann@b\u00fccher.de",
        "ann@xn--bcher-kva.de",
        "Ann@B\u00fccher.de",
        "\uff41nn@b\u00fccher.de",
        "an\u200bn@xn--bcher-kva.de",
    ]
    forms = {(a.canonical, a.skeleton) for a in map(emails.parse, spellings)}
    assert len(forms) == 1


def test_the_mailbox_drops_what_no_mail_server_takes_and_keeps_the_case() -> None:
    assert emails.parse(" Ann@Example.com ").mailbox == "Ann@example.com"
    assert emails.parse("Ann@B\u00fccher.de").mailbox == "Ann@xn--bcher-kva.de"
    assert emails.parse("ann@example\uff0ecom.").mailbox == "ann@example.com"
    assert emails.parse(FULLWIDTH).mailbox == HOMOGLYPH
    assert emails.parse(ZERO_WIDTH).mailbox == HOMOGLYPH
    assert emails.mailbox("An\u00adn@x.com") == "Ann@x.com"


# --- skeletons -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (HOMOGLYPH, "hornoglyph@x.com"),  # "rn" looks like "m"
        ("paypal@x.com", "paypa1@x.com"),  # "1" looks like "l"
        ("i@x.com", "\u0131@x.com"),  # a dotless i
        ("ann@x.com", "\u0251nn@x.com"),  # a Latin alpha
    ],
)
def test_look_alikes_share_a_skeleton_not_a_canonical_form(one: str, other: str) -> None:
    a, b = emails.parse(one), emails.parse(other)
    assert a.canonical != b.canonical
    assert a.skeleton == b.skeleton


def test_look_alikes_are_compared_within_one_domain() -> None:
    """A look-alike domain is its registrar's business; comparing across domains would
    tell the owner of the look-alike domain who has an account at the real one."""
    real, fake = emails.parse("ann@paypal.com"), emails.parse("ann@p\u0430ypal.com")
    assert real.skeleton != fake.skeleton
    assert fake.skeleton == "ann@xn--pypal-4ve.com"


def test_different_addresses_have_different_skeletons() -> None:
    skeletons = {
        emails.parse(a).skeleton
        for a in ("ann@x.com", "anne@x.com", "bob@x.com", "ann@y.com", "ann@x.org")
    }
    assert len(skeletons) == 5


# --- scripts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    [
        CYRILLIC,  # Latin and Cyrillic
        f"p{GREEK_ALPHA}ypal@x.com",  # Latin and Greek
        f"{GREEK_ALPHA}\u0431@x.com",  # Greek and Cyrillic
        "a\u0661b@x.com",  # Latin with an Arabic-Indic digit
        "\u0438\u0432\u0430n@x.com",  # Cyrillic with a Latin "n" at the end
    ],
)
def test_a_local_part_that_mixes_scripts_is_refused(typed: str) -> None:
    with pytest.raises(MixedScriptEmail) as refused:
        emails.parse(typed)
    assert isinstance(refused.value, InvalidArgument)
    assert refused.value.field == "email"
    # It still has its forms: an address kept from before the check must be found.
    assert emails.forms(typed).typed == typed


def test_a_mixed_script_address_has_the_skeleton_of_the_one_it_imitates() -> None:
    assert emails.forms(CYRILLIC).skeleton == emails.parse(HOMOGLYPH).skeleton
    assert emails.forms(CYRILLIC).canonical != HOMOGLYPH


@pytest.mark.parametrize(
    "typed",
    [
        "\u5f20\u4e09@\u4f8b\u5b50.\u4e2d\u56fd",  # 张三@例子.中国
        "\u305f\u306a\u304b@example.jp",  # たなか@example.jp
        "\u7530\u4e2d\u305f\u306a\u304b@example.jp",  # Han and Hiragana: Japanese
        "\u5c71\u7530\u30bf\u30ed\u30a6@example.jp",  # Han and Katakana
        "\uae40\ucca0\uc218@example.kr",  # Hangul
        "\u0438\u0432\u0430\u043d@\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444",  # Cyrillic
        "\u03b1\u03bb\u03ad\u03be\u03b7\u03c2@x.gr",  # Greek
        "Jos\u00e9@x.es",
        "ann.lee+shop_1@x.com",
    ],
)
def test_single_script_addresses_are_accepted(typed: str) -> None:
    address = emails.parse(typed)
    assert address.typed == typed
    assert address.canonical.isascii() == typed.isascii()
    assert emails.parse(address.canonical).canonical == address.canonical


def test_a_chinese_domain_is_kept_in_its_ascii_form() -> None:
    address = emails.parse("\u5f20\u4e09@\u4f8b\u5b50.\u4e2d\u56fd")
    assert address.canonical == "\u5f20\u4e09@xn--fsqu00a.xn--fiqs8s"


# --- what is no address ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "ann",
        "ann@",
        "@x.com",
        "ann@x",
        "ann@@x.com",
        "a@b@x.com",
        "a\uff20b@x.com",  # a fullwidth @ becomes a second @
        "a b@x.com",
        "ann@x..com",
        "ann@.x.com",
        "ann@xn--zz.com",  # not Punycode
        "a\x00b@x.com",
        "a\ud800@x.com",  # a lone surrogate
        "a\ue000@x.com",  # a private-use character
        "a\u0378b@x.com",  # unassigned
        "a" * 65 + "@x.com",
        "ann@" + "x" * 320 + ".com",
        "\u00a8@x.com",  # NFKC makes it a space and a mark
        "t\u00b4@x.com",
        "ann@\u00b8.com",
        # NFKC makes the one character 18: the canonical form outgrows its column.
        "\ufdfa@" + ".".join(["a" * 60] * 5) + ".com",
        "ann@" + ".".join(["a" * 63] * 4) + ".com",  # a domain over DNS's 253 characters
        "an\u202en@example.com",  # a right-to-left override: shows as another address
        "an\u2066n@example.com",  # a left-to-right isolate
        "(1)ann@x.com",  # a comment: a mail header would read "ann@x.com"
        "1,ann@x.com",  # two addresses, to a mail header
        "<b>x</b>@x.com",
        '"a b"@x.com',  # a quoted string
        "a..b@x.com",
        ".ann@x.com",
        "ann@-x.com",
        "ann@x_y.com",
    ],
)
def test_garbage_is_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        emails.parse(text)
    assert refused.value.field == "email"
    assert emails.canonical(text) is None


@pytest.mark.parametrize("value", [None, 42, b"ann@x.com", ["ann@x.com"]])
def test_what_is_no_text_is_invalid_argument(value: Any) -> None:
    with pytest.raises(InvalidArgument):
        emails.parse(value)


#: Addresses that come close: a local part and a domain from the characters that matter
#: (letters of several scripts, marks, invisible and compatibility characters, digits,
#: punctuation), a domain among some that exist in several forms.
_CLOSE = st.characters(
    categories=["Ll", "Lu", "Lt", "Lm", "Lo", "Mn", "Nd", "Nl", "No", "Cf", "Pd", "Po", "Sk"]
)
_DOMAINS = st.sampled_from(
    [
        "x.com",
        "EXAMPLE.com",
        "b\u00fccher.de",
        "xn--bcher-kva.de",
        "\u4f8b\u5b50.\u4e2d\u56fd",
        "\uff45\uff58.com",
        "x.com.",
    ]
)
ADDRESSES = st.one_of(
    st.text(max_size=80),
    st.builds(lambda local, domain: f"{local}@{domain}", st.text(_CLOSE, max_size=70), _DOMAINS),
    st.builds(
        lambda local, domain, tld: f"{local}@{domain}.{tld}",
        st.text(max_size=20),
        st.text(min_size=1, max_size=20),
        st.text(min_size=1, max_size=8),
    ),
)


@settings(max_examples=400, deadline=None)
@given(ADDRESSES)
def test_any_text_is_an_address_or_invalid_argument(text: str) -> None:
    try:
        address = emails.parse(text)
    except InvalidArgument:  # nothing else: no UnicodeError, no ICU error
        return
    assert len(address.canonical) <= emails.MAX_LENGTH
    assert len(address.mailbox) <= emails.MAX_LENGTH
    assert len(address.skeleton) <= emails.MAX_SKELETON_LENGTH
    # The canonical form is its own canonical form, with the same skeleton; so is the
    # address mail is sent to.
    again = emails.parse(address.canonical)
    assert (again.canonical, again.skeleton) == (address.canonical, address.skeleton)
    mailed = emails.parse(address.mailbox)
    assert (mailed.canonical, mailed.skeleton) == (address.canonical, address.skeleton)


# --- one account per look-alike group ------------------------------------------------------


def _confirm(db: Database, user_id: str) -> None:
    """Follow the confirmation link mailed to the account."""
    with db.read() as conn:
        (row,) = [r for r in mail.recent(conn, limit=100) if r.user_id == user_id]
    with db.transaction() as conn:
        token = identity.link_token(conn, kind="verify", user_id=user_id, to=row.to_address)
    assert token is not None
    identity.verify_email(db, token=token)


def _register(db: Database, email: str) -> str | None:
    return identity.register(db, email=email, password=PASSWORD, passwords=PASSWORDS, language="en")


def _accounts(db: Database) -> list[Any]:
    with db.read() as conn:
        return list(
            conn.execute(
                sa.select(
                    users_table.c.id,
                    users_table.c.email,
                    users_table.c.email_canonical,
                    users_table.c.email_skeleton,
                )
            )
        )


def test_the_four_look_alikes_open_one_account(db: Database) -> None:
    first = _register(db, HOMOGLYPH)
    assert first is not None
    assert _register(db, FULLWIDTH) is None
    assert _register(db, ZERO_WIDTH) is None
    with pytest.raises(MixedScriptEmail):
        _register(db, CYRILLIC)
    assert [(row.id, row.email, row.email_canonical) for row in _accounts(db)] == [
        (first, HOMOGLYPH, HOMOGLYPH)
    ]
    # The owner hears of each attempt at their own address; the refused one sends nothing.
    assert kinds(db) == [
        ("verify", HOMOGLYPH),
        ("registered_again", HOMOGLYPH),
        ("registered_again", HOMOGLYPH),
    ]
    assert [row.user_id for row in outbox(db)] == [first] * 3


def test_a_look_alike_of_another_address_is_told_so_at_its_own_address(db: Database) -> None:
    owner = _register(db, "paypal@x.com")
    assert owner is not None
    _confirm(db, owner)  # a confirmed address holds its look
    assert _register(db, "paypa1@x.com") is None
    other = _register(db, "hornoglyph@x.com")  # a group of its own
    assert other is not None
    _confirm(db, other)
    assert _register(db, HOMOGLYPH) is None
    rows = outbox(db)
    assert [(row.kind, row.to_address, row.user_id) for row in rows if row.kind != "verify"] == [
        ("look_alike", "paypa1@x.com", None),  # whoever typed it, not the owner
        ("look_alike", HOMOGLYPH, None),
    ]
    assert len(_accounts(db)) == 2


def test_sign_in_finds_the_account_by_any_spelling_of_its_address(db: Database) -> None:
    _register(db, FULLWIDTH)  # kept as typed, found by its canonical form
    assert [row.email for row in _accounts(db)] == [FULLWIDTH]
    for spelling in (HOMOGLYPH, FULLWIDTH, ZERO_WIDTH, " HOMOGLYPH@X.COM"):
        identity.sign_in(
            db, email=spelling, password=PASSWORD, passwords=PASSWORDS, session_ttl=DAY
        )
    for other in ("hornoglyph@x.com", CYRILLIC):  # a look-alike is another address
        with pytest.raises(identity.InvalidCredentials):
            identity.sign_in(
                db, email=other, password=PASSWORD, passwords=PASSWORDS, session_ttl=DAY
            )


@pytest.mark.parametrize("create", ["create_user", "upsert_user"])
def test_the_host_app_cannot_give_a_look_alike_to_another_user(db: Database, create: str) -> None:
    call = getattr(users, create)
    with db.transaction() as conn:
        users.create_user(conn, user_id="ann", email=HOMOGLYPH)
    for look_alike in (FULLWIDTH, ZERO_WIDTH, "HOMOGLYPH@x.com", "hornoglyph@x.com"):
        with pytest.raises(users.EmailTaken) as taken, db.transaction() as conn:
            call(conn, user_id="bob", email=look_alike)
        assert taken.value.email == look_alike
    with pytest.raises(MixedScriptEmail), db.transaction() as conn:
        call(conn, user_id="bob", email=CYRILLIC)
    assert [row.id for row in _accounts(db)] == ["ann"]
    with db.read() as conn:
        assert users.find_users(conn, query="bob") == []
    # The owner may take another spelling of their own address.
    with db.transaction() as conn:
        users.upsert_user(conn, user_id="ann", email=FULLWIDTH)
    assert [(row.email, row.email_canonical) for row in _accounts(db)] == [(FULLWIDTH, HOMOGLYPH)]


def test_the_columns_hold_the_longest_forms(db: Database) -> None:
    """An address at the limits fits every column (PostgreSQL checks their widths)."""
    local = "\ucb94" * 64  # a Hangul syllable, whose skeleton is 7 characters
    address = emails.parse(f"{local}@x.kr")
    assert len(address.skeleton) > 64 * 6
    # 64 characters, an @ and a domain of DNS's 253: the longest canonical form.
    longest = emails.parse("a" * 64 + "@" + ".".join(["a" * 63] * 3 + ["b" * 61]))
    assert len(longest.canonical) == 318 <= emails.MAX_LENGTH
    with db.transaction() as conn:
        users.create_user(conn, user_id="ko", email=address.typed)
        users.create_user(conn, user_id="long", email=longest.typed)
    assert _register(db, f"m{'m' * 63}@x.com") is not None
    assert len(_accounts(db)) == 3


# --- the person behind an address ----------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "person"),
    [
        # Gmail ignores dots and tags, and googlemail.com is gmail.com.
        ("Ann.Smith@gmail.com", "annsmith@gmail.com"),
        ("a.n.n.s.m.i.t.h+shop@GMAIL.com", "annsmith@gmail.com"),
        ("annsmith+a+b@googlemail.com", "annsmith@gmail.com"),
        ("\uff41nnsmith@gmail.com", "annsmith@gmail.com"),  # fullwidth "a": NFKC
        ("ann\u200bsmith@gmail.com", "annsmith@gmail.com"),  # zero-width space
        # Microsoft: tags, not dots; each domain its own.
        ("ann.smith+x@outlook.com", "ann.smith@outlook.com"),
        ("Ann.Smith+y@Hotmail.com", "ann.smith@hotmail.com"),
        ("ann+z@live.com", "ann@live.com"),
        ("ann+z@msn.com", "ann@msn.com"),
        # Apple: one name on all three domains.
        ("ann+news@me.com", "ann@icloud.com"),
        ("ann@mac.com", "ann@icloud.com"),
        ("a.nn@icloud.com", "a.nn@icloud.com"),
        # Fastmail: tags, and the name as a subdomain (any local part reaches it).
        ("ann+x@fastmail.com", "ann@fastmail.com"),
        ("ann+x@fastmail.fm", "ann@fastmail.fm"),
        ("shop@ann.fastmail.com", "ann@fastmail.com"),
        ("Other.Shop+x@Ann.FastMail.fm", "ann@fastmail.fm"),
        ("shop@mail.ann.fastmail.com", "shop@mail.ann.fastmail.com"),  # not a name's
        ("shop@ann.gmail.com", "shop@ann.gmail.com"),  # Gmail has no such addresses
        # Proton: one name on every domain.
        ("ann+x@protonmail.com", "ann@proton.me"),
        ("ann@pm.me", "ann@proton.me"),
        ("ann@protonmail.ch", "ann@proton.me"),
        # Yahoo's disposable addresses: base-keyword.
        ("annbase-shop@yahoo.com", "annbase@yahoo.com"),
        ("ann.smith+x@yahoo.com", "ann.smith+x@yahoo.com"),
        # A domain not in the table is taken as typed (canonical form only).
        ("Ann.Smith+x@Example.com", "ann.smith+x@example.com"),
        ("ann.smith@mail.gmail.com", "ann.smith@mail.gmail.com"),
        # A local part that is all tag is no variant of another.
        ("+x@gmail.com", "+x@gmail.com"),
    ],
)
def test_the_person_behind_an_address(typed: str, person: str) -> None:
    assert emails.person(emails.forms(typed)) == person


def test_every_provider_keys_its_addresses_under_a_domain_of_its_own() -> None:
    """A provider's key domain is itself in the table, with the same rule: a key is
    never folded into another person's."""
    for provider in emails.MAIL_PROVIDERS.values():
        assert emails.MAIL_PROVIDERS[provider.domain] == provider

"""Email addresses as people type them, and the forms that decide whether two are the same.

Two addresses that look alike must not open two accounts: the trial of a grant is once per
person, and an attacker who registers ``paypal@x.com`` with a Cyrillic "a" next to
``paypal@x.com`` has a look-alike for phishing. Three forms are kept for an address:

- ``typed``: as the person typed it, trimmed; mail goes there.
- ``canonical``: Unicode NFKC, default-ignorable and format characters (zero-width spaces,
  joiners, soft hyphens, bidirectional controls...) removed, case folded, the domain in its
  ASCII (IDNA) form. Unique among users: it is how an address is looked up.
- ``skeleton``: the UTS #39 skeleton of the canonical form (each character replaced by its
  prototype among the characters that look like it: ``rn`` and ``m`` share one). Unique
  among users as well, so a look-alike of an existing address is refused.

A local part that mixes scripts (Latin with Cyrillic, say) is refused outright, as UTS #39's
"highly restrictive" level says: Latin, Han, Kana and Hangul may mix as Japanese and Korean
write them, nothing else. The data and the checks are ICU's (PyICU), the reference
implementation of UTS #39, kept current with each Unicode version.

Sub-addressing (``ann+shop@``) and dots in Gmail local parts are not folded: providers
differ, and mail to each form reaches whoever the provider says. What is once per person
(the trial) goes one step further, with ``person``: for the providers of ``MAIL_PROVIDERS``,
which document that they deliver every such variant to one mailbox, the variants are one
person.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache

import icu
import idna

from tokenbank.errors import InvalidArgument, MixedScriptEmail

MAX_LENGTH = 320
MAX_LOCAL_LENGTH = 64
#: The width of ``users.email_skeleton``.
MAX_SKELETON_LENGTH = 1000
_SHAPE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")

#: Default_Ignorable_Code_Point (DerivedCoreProperties.txt) outside the Cf category, which
#: is removed whole: Python's ``unicodedata`` does not carry the property.
_IGNORABLE = frozenset(
    [
        0x034F,
        0x115F,
        0x1160,
        0x17B4,
        0x17B5,
        0x3164,
        0xFFA0,
        *range(0x180B, 0x1810),  # Mongolian free variation selectors
        *range(0xFE00, 0xFE10),  # variation selectors
        *range(0x2065, 0x2070),
        *range(0xE0000, 0xE1000),  # tags, variation selectors supplement
    ]
)


@dataclass(frozen=True, slots=True)
class Address:
    typed: str
    canonical: str
    skeleton: str

    @property
    def mailbox(self) -> str:
        return mailbox(self.typed)


def mailbox(typed: str) -> str:
    """Where to send mail: the address as typed, without the invisible characters and
    compatibility forms (fullwidth letters) no mail server takes, its case kept, and its
    domain in ASCII (IDNA), which every mail server takes."""
    visible = _visible(typed)
    local, at, domain = visible.rpartition("@")
    try:
        return f"{local}@{_ascii_domain(domain)}" if at else visible
    except InvalidArgument:
        return visible


def _visible(text: str) -> str:
    kept = "".join(c for c in unicodedata.normalize("NFKC", text) if not _ignorable(c))
    return unicodedata.normalize("NFKC", kept)


#: A domain's labels once in ASCII: letters, digits and hyphens, not at either end.
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
#: Full stops that IDNA reads as dots between labels (UTS #46).
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def _ascii_domain(domain: str) -> str:
    """The domain in ASCII, lower case, without the trailing dot of a fully qualified
    name (``x.com.`` is ``x.com``); ``InvalidArgument`` for what is no domain name."""
    domain = domain.translate(_DOTS).lower()
    domain = domain[:-1] if domain.endswith(".") else domain
    try:
        # IDNA 2008 with UTS #46's mapping, not Python's IDNA 2003 codec, which maps
        # "faß.de" to "fass.de", another domain.
        ascii_domain = idna.encode(domain, uts46=True, transitional=False).decode().lower()
    except (idna.IDNAError, UnicodeError):
        raise InvalidArgument("email", "must be an email address") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise InvalidArgument("email", "must be an email address")
    return ascii_domain


def parse(text: object) -> Address:
    """The three forms of an address, or ``InvalidArgument`` (``MixedScriptEmail`` for a
    local part that mixes scripts)."""
    address = forms(text)
    if _checker().check(address.canonical.rpartition("@")[0]) != 0:
        raise MixedScriptEmail
    return address


def forms(text: object) -> Address:
    """The three forms of an address that has the shape of one, whatever its scripts (an
    address kept from before the scripts were checked still has to be found)."""
    if not isinstance(text, str):
        raise InvalidArgument("email", "must be an email address")
    typed = text.strip()
    if (
        len(typed) > MAX_LENGTH
        or not _SHAPE.match(_visible(typed).translate(_DOTS))
        or any(unicodedata.category(c) in {"Cc", "Cs", "Co", "Cn"} for c in typed)
        or any(c in BIDI_CONTROLS for c in typed)
    ):
        raise InvalidArgument("email", "must be an email address")
    typed_local, _, domain = _visible(typed).rpartition("@")
    local = _folded(typed_local)  # the domain is folded by IDNA's own rules
    if not local or len(local) > MAX_LOCAL_LENGTH or not domain or "@" in local:
        raise InvalidArgument("email", "must be an email address")
    ascii_domain = _ascii_domain(domain)
    if not _dot_atom(local):
        raise InvalidArgument("email", "must be an email address")
    # Look-alikes within one domain: a look-alike domain is its registrar's business, and
    # comparing across domains would tell the owner of "exarnple.com" who has an account
    # at "example.com".
    address = Address(
        typed=typed,
        canonical=f"{local}@{ascii_domain}",
        skeleton=f"{_checker().getSkeleton(0, local)}@{ascii_domain}",
    )
    # NFKC turns some characters into a space and a mark (U+00A8 "¨" is " \u0308") and
    # some into many ("\ufdfa" is 18 characters; the skeleton of a Hangul syllable is up
    # to 7): the forms looked up and mailed to must still have the shape of an address,
    # and every form must fit its column.
    if (
        not all(
            len(form) <= MAX_LENGTH and _SHAPE.match(form)
            for form in (address.canonical, address.mailbox)
        )
        or len(address.skeleton) > MAX_SKELETON_LENGTH
    ):
        raise InvalidArgument("email", "must be an email address")
    return address


#: What may stand in a local part besides letters, marks and digits: RFC 5322's dot-atom
#: (no quoted strings, comments or specials, which a mail header would read as more than
#: one address), with RFC 6531's letters of every script.
_ATOM_SYMBOLS = frozenset("!#$%&'*+-/=?^_`{|}~")
#: Invisible characters that reorder text on screen: an address that carries them shows
#: as another one.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _dot_atom(local: str) -> bool:
    atoms = local.split(".")
    return all(
        atom
        and all(
            c in _ATOM_SYMBOLS
            or (c.isascii() and c.isalnum())
            or (not c.isascii() and unicodedata.category(c)[0] in "LMN")
            for c in atom
        )
        for atom in atoms
    )


def canonical(text: str) -> str | None:
    """The canonical form to look ``text`` up by, or None when it is no address at all
    (sign-in answers such an address as it answers an unknown one)."""
    try:
        return forms(text).canonical
    except InvalidArgument:
        return None


def _folded(text: str) -> str:
    """NFKC_Casefold, as UTS #39 and IDNA fold identifiers."""
    kept = "".join(c for c in unicodedata.normalize("NFKC", text) if not _ignorable(c)).casefold()
    return unicodedata.normalize("NFKC", kept)


def _ignorable(char: str) -> bool:
    return unicodedata.category(char) == "Cf" or ord(char) in _IGNORABLE


@cache
def _checker() -> icu.SpoofChecker:
    # ICU documents a configured checker as safe to share between threads.
    checker = icu.SpoofChecker()
    checker.setChecks(
        icu.USpoofChecks.RESTRICTION_LEVEL
        | icu.USpoofChecks.INVISIBLE
        | icu.USpoofChecks.MIXED_NUMBERS
    )
    checker.setRestrictionLevel(icu.URestrictionLevel.HIGHLY_RESTRICTIVE)
    return checker


# --- the person behind an address ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Provider:
    """How a mail provider reads the local part of its addresses: which variants of one
    address it delivers to the same mailbox."""

    #: The domain its mailboxes are keyed under: a provider's domains that share one
    #: namespace of names (``googlemail.com`` is ``gmail.com``) are keyed under one.
    domain: str
    #: Whether dots in the local part are ignored (``a.nn`` is ``ann``).
    ignores_dots: bool
    #: The character that starts a tag (``ann+shop`` is ``ann``), or None.
    tag: str | None
    #: Whether a name may also be a subdomain, any local part then reaching it
    #: (``shop@ann.fastmail.com`` is ``ann@fastmail.com``).
    subdomains: bool = False


_GMAIL = Provider("gmail.com", ignores_dots=True, tag="+")
_ICLOUD = Provider("icloud.com", ignores_dots=False, tag="+")
_PROTON = Provider("proton.me", ignores_dots=False, tag="+")

#: The providers whose variants of an address reach one mailbox, by the domain an address
#: has (in its ASCII form, as ``Address.canonical`` has it). The list is short on purpose:
#: a provider is here only when it documents the rule for every one of its addresses. A
#: domain that is not here (a company's own, Google Workspace's, a catch-all) is taken as
#: typed: its owner decides what reaches whom, and folding what they keep apart would
#: refuse a trial to a second person. docs/grants.md has the same table.
MAIL_PROVIDERS: dict[str, Provider] = {
    "gmail.com": _GMAIL,
    "googlemail.com": _GMAIL,
    "outlook.com": Provider("outlook.com", ignores_dots=False, tag="+"),
    "hotmail.com": Provider("hotmail.com", ignores_dots=False, tag="+"),
    "live.com": Provider("live.com", ignores_dots=False, tag="+"),
    "msn.com": Provider("msn.com", ignores_dots=False, tag="+"),
    # One Apple ID's name is its name on all three.
    "icloud.com": _ICLOUD,
    "me.com": _ICLOUD,
    "mac.com": _ICLOUD,
    "fastmail.com": Provider("fastmail.com", ignores_dots=False, tag="+", subdomains=True),
    "fastmail.fm": Provider("fastmail.fm", ignores_dots=False, tag="+", subdomains=True),
    # One Proton account's name is its name on every Proton domain.
    "proton.me": _PROTON,
    "protonmail.com": _PROTON,
    "protonmail.ch": _PROTON,
    "pm.me": _PROTON,
    # Yahoo's disposable addresses are ``base-keyword@``: the base is the person's own.
    "yahoo.com": Provider("yahoo.com", ignores_dots=False, tag="-"),
}


def person(address: Address) -> str:
    """The key of the person behind ``address``: its canonical form with, for the providers
    of ``MAIL_PROVIDERS``, the variants their mailboxes ignore removed (the tag, the dots)
    and the domain the provider keys them under. Two addresses with one key reach one
    mailbox; two with different keys may still (a domain of one's own takes mail for any
    name), which is the limit of what an address can tell."""
    local, _, domain = address.canonical.rpartition("@")
    provider = MAIL_PROVIDERS.get(domain)
    if provider is None:
        name, _, parent = domain.partition(".")
        provider = MAIL_PROVIDERS.get(parent)
        if provider is None or not provider.subdomains:
            return address.canonical
        local = name  # anything@ann.fastmail.com reaches ann@fastmail.com
    if provider.tag is not None:
        # A local part that is all tag ("+x") is no variant of another: kept as it is.
        local = local.split(provider.tag, 1)[0] or local
    if provider.ignores_dots:
        local = local.replace(".", "") or local
    return f"{local}@{provider.domain}"

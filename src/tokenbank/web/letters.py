"""What tokenbank's mail says, in the reader's language: each kind of letter, written when
it is sent (``Letters.compose``, the mail sender's ``compose``), as plain text and HTML.

A letter holds no secret but its one link, and that link's token is made at the moment
the letter is written: the outbox never holds a usable token, and a letter whose link
has lost its point (the address was confirmed meanwhile) is not sent at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from tokenbank import identity
from tokenbank.config import Settings
from tokenbank.db import Database
from tokenbank.identity.links import LIFETIMES
from tokenbank.mail import Letter, Sender, Smtp
from tokenbank.web import i18n
from tokenbank.web.i18n import N_
from tokenbank.web.render import TEMPLATES


@dataclass(frozen=True, slots=True)
class Kind:
    subject: str
    lines: tuple[str, ...]
    button: str
    #: Where the button leads; ``{token}`` is the link's own token.
    path: str
    after: tuple[str, ...] = ()


IGNORE = N_("If you did not ask for this, ignore this mail: nothing changes without the link.")

KINDS: dict[str, Kind] = {
    "verify": Kind(
        subject=N_("Confirm your email address"),
        lines=(
            N_("Welcome to tokenbank."),
            N_("Confirm that this address is yours, and you can buy tokens."),
        ),
        button=N_("Confirm my address"),
        path="/verify/{token}",
        after=(N_("The link works once, for %(days)s days."), IGNORE),
    ),
    "welcome": Kind(
        subject=N_("Welcome to tokenbank"),
        lines=(N_("Your tokenbank account is ready."),),
        button=N_("Sign in"),
        path="/login",
        after=(
            N_(
                "If you did not open this account, someone used your address: choose a new"
                " password at %(forgot)s and the account is yours."
            ),
        ),
    ),
    "registered_again": Kind(
        subject=N_("Someone tried to sign up with your address"),
        lines=(
            N_(
                "Someone, perhaps you, tried to open a tokenbank account with this address."
                " It already has one, so no account was opened."
            ),
            N_("Forgot your password? Choose a new one at %(forgot)s."),
        ),
        button=N_("Sign in"),
        path="/login",
        after=(N_("If it was not you, ignore this mail: your account is unchanged."),),
    ),
    "look_alike": Kind(
        subject=N_("This address cannot open an account"),
        lines=(
            N_(
                "Someone, perhaps you, tried to open a tokenbank account with this address."
                " It looks the same as the address of an existing account, so no account was"
                " opened: two addresses that look alike would be mistaken for each other."
            ),
            N_(
                "If that account is yours, sign in with its address. Otherwise, sign up with"
                " another address."
            ),
        ),
        button=N_("Sign in"),
        path="/login",
    ),
    "reset": Kind(
        subject=N_("Choose a new password"),
        lines=(N_("Someone, perhaps you, asked to reset the password of your tokenbank account."),),
        button=N_("Choose a new password"),
        path="/password/reset/{token}",
        after=(
            N_(
                "The link works once, for %(minutes)s minutes. A new password signs the"
                " account out everywhere."
            ),
            IGNORE,
        ),
    ),
    "email_change": Kind(
        subject=N_("Confirm your new email address"),
        lines=(N_("Someone, perhaps you, asked to move a tokenbank account to this address."),),
        button=N_("Confirm this address"),
        path="/account/email/{token}",
        after=(N_("The link works once, for %(hours)s hours."), IGNORE),
    ),
    "email_in_use": Kind(
        subject=N_("This address already has an account"),
        lines=(
            N_(
                "Someone, perhaps you, asked to move a tokenbank account to this address,"
                " but another account uses it (or one that looks the same), so nothing"
                " changed."
            ),
        ),
        button=N_("Sign in"),
        path="/login",
    ),
    "email_change_asked": Kind(
        subject=N_("A change of your email address was asked for"),
        lines=(
            N_(
                "Someone signed in to your tokenbank account asked to move it to %(email)s."
                " It moves once that address confirms."
            ),
            N_(
                "If it was not you, choose a new password now: that cancels the move and"
                " signs everyone out. Then tell the operator of this service."
            ),
        ),
        button=N_("Choose a new password"),
        path="/password/forgot",
    ),
    "email_changed": Kind(
        subject=N_("Your email address was changed"),
        lines=(
            N_(
                "The address of your tokenbank account is now %(email)s: its mail goes there"
                " from now on."
            ),
            N_(
                "If you did not make this change, someone who knows your password did: tell"
                " the operator of this service at once."
            ),
        ),
        button=N_("Sign in"),
        path="/login",
    ),
}


@dataclass(frozen=True, slots=True)
class Letters:
    db: Database
    #: This service's address, without a trailing slash: the links point there.
    public_url: str
    #: The From header (``TOKENBANK_MAIL_FROM``).
    sender: str

    def compose(self, letter: Letter) -> EmailMessage | None:
        """The letter as a message, its link made now; None when it has lost its point."""
        kind = KINDS[letter.kind]
        token = None
        if "{token}" in kind.path:  # a unit of work only for a letter that carries a link
            try:
                with self.db.transaction() as conn:
                    token = identity.link_token(
                        conn, kind=letter.kind, user_id=letter.user_id, to=letter.to
                    )
            except identity.NotNeeded:
                return None
        lang = i18n.language(letter.language)
        values: dict[str, Any] = {
            "forgot": f"{self.public_url}/password/forgot",
            "days": LIFETIMES["verify"].days,
            "minutes": int(LIFETIMES["reset"].total_seconds() // 60),
            "hours": int(LIFETIMES["email"].total_seconds() // 3600),
            **letter.params,
        }
        context = {
            "subject": lang.gettext(kind.subject),
            "lines": [lang.gettext(line, **values) for line in kind.lines],
            "button": lang.gettext(kind.button),
            "link": self.public_url + kind.path.format(token=token),
            "after": [lang.gettext(line, **values) for line in kind.after],
            "footer": lang.gettext(
                "This mail was sent by tokenbank at %(site)s.", site=self.public_url
            ),
            "lang": lang.tag,
        }
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = letter.to
        message["Subject"] = context["subject"]
        message["Date"] = formatdate(usegmt=True)
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(TEMPLATES.get_template("mail/letter.txt").render(context))
        message.add_alternative(
            TEMPLATES.get_template("mail/letter.html").render(context), subtype="html"
        )
        # After the parts exist: making them moves every Content- header into the first.
        message["Content-Language"] = lang.tag
        return message


def mail_sender(settings: Settings, db: Database) -> Sender:
    """The sender of the outbox the settings describe: SMTP when a server is named, else
    keeping each mail in the outbox (development; production refuses to start without)."""
    public_url = settings.public_url.rstrip("/")
    letters = Letters(db=db, public_url=public_url, sender=settings.mail_from)
    smtp = (
        None if settings.smtp_url is None else Smtp.from_url(settings.smtp_url.get_secret_value())
    )
    domain = urlsplit(public_url).hostname or "tokenbank.localhost"
    return Sender(db=db, compose=letters.compose, smtp=smtp, domain=domain)

"""What routes depend on, in one place: the service's parts, who is asking, and the path
and query values several areas share. Routes declare these as parameters
(``db: DatabaseDep``); nothing reaches ``request.app.state`` but ``runtime()``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from tokenbank.apikeys import ApiKey, Scope
from tokenbank.billing import Billing, PaymentsNotConfigured
from tokenbank.db import Database
from tokenbank.faults import Faults
from tokenbank.identity import SignedIn
from tokenbank.ledger import TransferKind
from tokenbank.web.auth import requires
from tokenbank.web.browser import Browsers
from tokenbank.web.i18n import Language
from tokenbank.web.observe import Metrics
from tokenbank.web.render import Pages
from tokenbank.web.runtime import Runtime, runtime

# Every dependency here is ``async def``, though none awaits: FastAPI runs a plain ``def``
# dependency in its thread pool, a thread hand-off each per request for a dictionary read
# (a tenth of a webhook's CPU, profiled). tests/web/test_deps.py holds them to it.


async def _runtime(request: Request) -> Runtime:
    return runtime(request)


async def _db(request: Request) -> Database:
    return runtime(request).db


async def _metrics(request: Request) -> Metrics:
    return runtime(request).metrics


async def _pages(request: Request) -> Pages:
    return runtime(request).pages


async def _browsers(request: Request) -> Browsers:
    return runtime(request).browsers


async def _faults(request: Request) -> Faults:
    return runtime(request).faults


async def _billing(request: Request) -> Billing | None:
    return runtime(request).billing


async def _selling(request: Request) -> Billing:
    """How tokens are sold, or 503 ``payments_not_configured``."""
    billing = runtime(request).billing
    if billing is None:
        raise PaymentsNotConfigured("no Stripe key is configured (STRIPE_SECRET_KEY)")
    return billing


async def _visitor(request: Request) -> SignedIn | None:
    return await runtime(request).browsers.signed_in(request)


async def _page_user(request: Request) -> SignedIn:
    return await runtime(request).pages.require_user(request)


async def _page_admin(request: Request) -> SignedIn:
    return await runtime(request).pages.require_admin(request)


async def _language(request: Request) -> Language:
    return await runtime(request).pages.language(request)


# The service's parts.
RuntimeDep = Annotated[Runtime, Depends(_runtime)]
DatabaseDep = Annotated[Database, Depends(_db)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
PagesDep = Annotated[Pages, Depends(_pages)]
BrowsersDep = Annotated[Browsers, Depends(_browsers)]
FaultsDep = Annotated[Faults, Depends(_faults)]
#: ``Billing`` or None: for pages that say "not available" themselves.
BillingDep = Annotated[Billing | None, Depends(_billing)]
#: ``Billing``, or the request is refused with 503 ``payments_not_configured``.
Selling = Annotated[Billing, Depends(_selling)]

# Who is asking: API keys (or, where said, the browser session of the user in the path).
Reader = Annotated[ApiKey | SignedIn, Depends(requires(Scope.READ, signed_in_users=True))]
KeyReader = Annotated[ApiKey, Depends(requires(Scope.READ))]
# Without ``signed_in_users``, ``requires`` answers with an API key only.
Spender = Annotated[ApiKey, Depends(requires(Scope.SPEND))]
Admin = Annotated[ApiKey, Depends(requires(Scope.ADMIN))]
# Who is asking: pages. A page for users sends others to sign in; an admin page refuses
# other users (403).
Visitor = Annotated[SignedIn | None, Depends(_visitor)]
PageUser = Annotated[SignedIn, Depends(_page_user)]
PageAdmin = Annotated[SignedIn, Depends(_page_admin)]
Lang = Annotated[Language, Depends(_language)]

# Values in paths and queries.
UserId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=255,
        pattern=r"^[^\x00-\x20\x7f/]+$",
        description="The host app's user id.",
    ),
]
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]
#: A row id in a query string (a page cursor, a purchase): out of range is a 422, not a 500.
QueryRowId = Annotated[int | None, Query(ge=1, le=2**63 - 1)]
Kinds = Annotated[list[TransferKind] | None, Query(description="Only these kinds.")]
Cursor = Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor")]

"""Users over the API: the host app tells tokenbank who its users are, and sends them to
tokenbank's pages signed in."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from tokenbank import grants, identity, users
from tokenbank.web.api.responses import PROBLEMS
from tokenbank.web.deps import RuntimeDep, Spender, UserId
from tokenbank.web.routing import StrictRoute
from tokenbank.web.schemas import PortalIn, PortalOut, UserIn, UserOut

router = APIRouter(prefix="/api/v1", responses=PROBLEMS, route_class=StrictRoute, tags=["users"])


@router.put("/users/{user_id}")
def put_user(user_id: UserId, body: UserIn, _: Spender, parts: RuntimeDep) -> UserOut:
    """Create the user and their wallet, or update their email and name. A user given an
    address for the first time gets the free trial, when there is one, unless the person
    behind the address had it already (``trial_granted`` says which)."""
    granted = False
    # One unit: a user never stands without the trial they were due, nor a trial without
    # its user.
    with parts.db.transaction(wallet=user_id) as conn:
        done = users.upsert_user(conn, user_id=user_id, email=body.email, name=body.name)
        if done.first_address is not None and parts.trial is not None:
            granted = grants.grant_trial(
                conn, user_id=user_id, address=done.first_address, trial=parts.trial
            )
    user = done.user
    return UserOut(
        user_id=user.id,
        email=user.email,
        name=user.name,
        created_at=user.created_at,
        trial_granted=granted,
    )


@router.post("/users/{user_id}/portal-sessions", status_code=201)
def portal_session(
    user_id: UserId,
    _: Spender,
    parts: RuntimeDep,
    body: Annotated[PortalIn | None, Body()] = None,
) -> PortalOut:
    """A one-time link, valid for minutes, that signs the user in to tokenbank's pages
    (balance, history, buying tokens). Send the user's browser to ``url``."""
    with parts.db.transaction() as conn:
        token, expires_at = identity.create_portal_link(
            conn,
            user_id=user_id,
            next_path=(body or PortalIn()).return_path,
            ttl=parts.portal_link_ttl,
        )
    return PortalOut(url=f"{parts.public_url}/portal/{token}", expires_at=expires_at)

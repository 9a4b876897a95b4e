"""Users over the API: the host app tells tokenbank who its users are, and sends them to
tokenbank's pages signed in."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from tokenbank import identity, users
from tokenbank.web.api.responses import PROBLEMS
from tokenbank.web.deps import DatabaseDep, RuntimeDep, Spender, UserId
from tokenbank.web.routing import StrictRoute
from tokenbank.web.schemas import PortalIn, PortalOut, UserIn, UserOut

router = APIRouter(prefix="/api/v1", responses=PROBLEMS, route_class=StrictRoute, tags=["users"])


@router.put("/users/{user_id}")
def put_user(user_id: UserId, body: UserIn, _: Spender, db: DatabaseDep) -> UserOut:
    """Create the user and their wallet, or update their email and name."""
    with db.autocommit(wallet=user_id) as conn:
        user = users.upsert_user(conn, user_id=user_id, email=body.email, name=body.name)
    return UserOut(user_id=user.id, email=user.email, name=user.name, created_at=user.created_at)


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

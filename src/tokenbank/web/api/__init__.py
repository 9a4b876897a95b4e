"""The JSON API under /api/v1, and Stripe's webhook: each module one area, each route
parse, authorise, call one service function, answer."""

from __future__ import annotations

from fastapi import APIRouter

from tokenbank.web.api import (
    gateway,
    grants,
    holds,
    purchases,
    subscriptions,
    users,
    wallets,
    webhooks,
)

#: In the order they are matched: the wallet's routes are the busy ones.
ROUTERS: tuple[APIRouter, ...] = (
    wallets.router,
    holds.router,
    users.router,
    grants.router,
    purchases.router,
    subscriptions.router,
    webhooks.router,
    gateway.router,
    gateway.keys_router,
)

"""The pages people use in a browser, each module one area. Every page router uses
``PageRoute``: CSRF is checked for every unsafe method before a handler runs."""

from __future__ import annotations

from fastapi import APIRouter

from tokenbank.web.pages import admin, buying, devmail, links, models, plans, users, wallet

ROUTERS: tuple[APIRouter, ...] = (
    users.router,
    links.router,
    wallet.router,
    buying.router,
    plans.router,
    models.router,
    admin.router,
    devmail.router,
)

"""What operators and their tools ask: health, readiness, metrics, and the API docs."""

from __future__ import annotations

import base64
import hashlib
import re

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokenbank import migrations
from tokenbank.web.deps import MetricsDep, RuntimeDep
from tokenbank.web.problems import problem
from tokenbank.web.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", responses={503: {"description": "Not ready"}})
def readyz(parts: RuntimeDep) -> Response:
    """The database answers and its schema is the one this version expects; ``warnings``
    names what works only in part (no webhook secret: Stripe's events are refused, and
    purchases are credited only by the success page and reconcile)."""
    warnings = list(parts.warnings)
    try:
        with parts.db.read() as conn:
            conn.execute(sa.text("SELECT 1"))
        current = migrations.is_current(parts.db, parts.schema_head)
    except Exception as exc:  # any failure to answer is "not ready", never a 500
        return problem(
            503,
            "not_ready",
            f"database unreachable: {type(exc).__name__}",
            headers={"Retry-After": "5"},
            warnings=warnings,
        )
    if not current:
        return problem(
            503,
            "not_ready",
            "migrations pending: run tokenbank db upgrade",
            headers={"Retry-After": "30"},
            warnings=warnings,
        )
    return JSONResponse({"status": "ready", "warnings": warnings})


@router.get("/docs", include_in_schema=False)
def docs() -> Response:
    return Response(
        DOCS_PAGE, media_type="text/html", headers={"Content-Security-Policy": DOCS_POLICY}
    )


@router.get("/metrics", response_class=Response)
def prometheus(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _docs_page() -> tuple[str, str]:
    """The interactive API docs (Swagger UI from its CDN), and a policy that lets exactly
    that page's one inline script and the CDN's files run, nothing else."""
    page = bytes(
        get_swagger_ui_html(openapi_url="/openapi.json", title="tokenbank API").body
    ).decode()
    inline = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline
    )
    policy = (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self';"
        f" script-src https://cdn.jsdelivr.net {hashes}; style-src https://cdn.jsdelivr.net;"
        " img-src 'self' data: https://fastapi.tiangolo.com"
    )
    return page, policy


DOCS_PAGE, DOCS_POLICY = _docs_page()

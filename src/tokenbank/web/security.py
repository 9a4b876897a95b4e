"""The headers that keep the pages safe in a browser: a Content-Security-Policy (with
Stripe's origins on the buying pages only), no framing, no leaking URLs to other sites."""

from __future__ import annotations

from urllib.parse import urlsplit

from tokenbank.billing import Billing


def content_security_policy(stripe: str = "") -> str:
    """Scripts, styles and frames from this site only; ``stripe``: the origins of Stripe
    Checkout and Stripe.js (or the emulator), which the buying pages also need."""
    if not stripe:
        return "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    return (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none';"
        f" form-action 'self' {stripe}; script-src 'self' {stripe};"
        f" connect-src 'self' {stripe}; frame-src {stripe}"
    )


#: Sent with every page: no framing, no leaking URLs (portal tokens) to other sites.
PAGE_HEADERS = {
    "Content-Security-Policy": content_security_policy(),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Vary": "Cookie, Accept-Language",
}


def buying_headers(billing: Billing | None) -> dict[str, str]:
    """The buying pages' headers: their policy also lets Stripe's origins in. Made once, at
    start-up (``Runtime.buying_headers``)."""
    return {
        **PAGE_HEADERS,
        "Content-Security-Policy": content_security_policy(stripe_sources(billing)),
    }


def stripe_sources(billing: Billing | None) -> str:
    """The origins Stripe's pages and Stripe.js live on, for the buying pages' CSP."""
    if billing is None:
        return ""
    if billing.stripe.api_base:
        parts = urlsplit(billing.stripe.api_base)
        return f"{parts.scheme}://{parts.netloc}"
    # Stripe's published list: Checkout, Stripe.js and its frames, the API, 3-D Secure.
    return (
        "https://checkout.stripe.com https://js.stripe.com https://*.js.stripe.com"
        " https://api.stripe.com https://hooks.stripe.com"
    )

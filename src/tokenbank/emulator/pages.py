"""What a browser sees: the hosted Checkout page, the billing portal, a Stripe.js stand-in,
and the 3D Secure challenge a bank shows before it lets a card pay.

The Checkout page works without JavaScript (a plain form POST), so tests and people can pay
with the same test cards Stripe documents. Its challenge is a page of its own; the one the
Stripe.js stand-in opens in its frame tells the page around it when it has been answered.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from tokenbank.emulator import billing, payments
from tokenbank.emulator.cards import CARDS, CardInvalid, read_card
from tokenbank.emulator.events import emit
from tokenbank.emulator.params import StripeError
from tokenbank.emulator.shapes import Obj
from tokenbank.emulator.state import Emulator

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga"}
    | {"pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)
SYMBOLS = {
    "usd": "$",
    "eur": "€",
    "gbp": "£",
    "jpy": "¥",
    "cny": "¥",
    "inr": "₹",
    "krw": "₩",
    "cad": "CA$",
    "aud": "A$",
    "nzd": "NZ$",
    "hkd": "HK$",
    "brl": "R$",
    "mxn": "MX$",
}
#: The hosted checkout page's words in the languages a session's ``locale`` may ask for
#: (Stripe's Checkout speaks the buyer's language; card errors stay in English here).
WORDS: dict[str, dict[str, str]] = {
    "en": {
        "banner": "Test mode · Stripe emulator",
        "pay_total": "Pay {total}",
        "summary": "Order summary",
        "total": "Total due",
        "complete": "This checkout session is complete: the payment was received.",
        "continue": "Continue",
        "expired": "This checkout session has expired. Start again from the site you came from.",
        "back": "Back",
        "email": "Email (optional)",
        "card": "Card number",
        "expiry": "Expiry",
        "cvc": "CVC",
        "name": "Name on card (optional)",
        "pay": "Pay",
        "cancel": "Cancel and return",
        "cards": "Test cards (any future expiry, any CVC):",
    },
    "zh": {
        "banner": "测试模式 · Stripe 模拟器",
        "pay_total": "支付 {total}",
        "summary": "订单摘要",
        "total": "应付总额",
        "complete": "此结账已完成：已收到付款。",
        "continue": "继续",
        "expired": "此结账已过期。请回到原网站重新开始。",
        "back": "返回",
        "email": "邮箱（可选）",
        "card": "卡号",
        "expiry": "有效期",
        "cvc": "安全码",
        "name": "持卡人姓名（可选）",
        "pay": "支付",
        "cancel": "取消并返回",
        "cards": "测试卡（任意未来有效期、任意安全码）：",
    },
}


def words_for(locale: str | None) -> dict[str, str]:
    """A session's ``locale`` ("zh", "zh-TW", "auto", None...) as the page's words."""
    return WORDS.get((locale or "en").split("-")[0].lower(), WORDS["en"])


SHOWN_CARDS = (
    ("4242 4242 4242 4242", "succeeds"),
    ("4000 0000 0000 0002", "is declined"),
    ("4000 0000 0000 9995", "is declined for insufficient funds"),
    ("4000 0025 0000 3155", "asks you to authenticate (3D Secure) first"),
)
#: Tells the Stripe.js stand-in's frame that its challenge was answered (``stripe.js``).
CHALLENGE_ANSWERED = "stripe-emulator:three-d-secure-answered"
UNANSWERED = "Choose an answer to the challenge."


def format_amount(amount: int, currency: str) -> str:
    """Minor units as people read them: 2000 usd is "$20.00", 500 jpy is "¥500"."""
    code = currency.lower()
    number = f"{amount:,}" if code in ZERO_DECIMAL else f"{amount / 100:,.2f}"
    symbol = SYMBOLS.get(code)
    return f"{symbol}{number}" if symbol else f"{number} {code.upper()}"


def safe_url(url: str | None) -> str | None:
    """Only http(s) links are rendered, so a stored URL cannot become a script link."""
    if url and url.lower().startswith(("http://", "https://")):
        return url
    return None


def _page(
    template: str, *, status: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    html = TEMPLATES.get_template(template).render(**context)
    return HTMLResponse(
        html, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})}
    )


def _checkout_page(
    em: Emulator,
    session: Obj,
    *,
    status: int = 200,
    error: str | None = None,
    form: Obj | None = None,
) -> HTMLResponse:
    items = [
        {
            "name": item["description"],
            # What the product is, as Checkout shows it under the name ("2,000 tokens").
            "detail": (em.products.get(item["price"]["product"]) or {}).get("description"),
            "quantity": item["quantity"],
            "amount": format_amount(item["amount_total"], item["currency"]),
        }
        for item in em.line_items.get(session["id"], [])
    ]
    payer = em.payers.get(session["id"], {})
    return _page(
        "checkout.html",
        status=status,
        session=session,
        items=items,
        total=format_amount(session["amount_total"], session["currency"]),
        error=error or _last_failure(em, session),
        form=form
        or {
            "email": payer.get("email") or session["customer_email"] or "",
            "name": payer.get("name") or "",
        },
        cancel_url=safe_url(session["cancel_url"]),
        success_url=safe_url(_success_url(session)),
        cards=SHOWN_CARDS,
        words=words_for(session.get("locale")),
        lang="zh-CN" if session.get("locale", "") and session["locale"].startswith("zh") else "en",
    )


def _last_failure(em: Emulator, session: Obj) -> str | None:
    """Why the last attempt on an open session did not pay, as Checkout says it to the payer."""
    intent = em.payment_intents.get(session["payment_intent"] or "")
    if session["status"] != "open" or intent is None:
        return None
    failure = intent["last_payment_error"]
    if intent["status"] != "requires_payment_method" or not failure:
        return None
    if failure.get("code") == payments.AUTHENTICATION_FAILURE:
        return payments.AUTHENTICATION_FAILED_FOR_CUSTOMER
    return str(failure.get("message") or "")


def _success_url(session: Obj) -> str | None:
    url = session["success_url"]
    return url.replace("{CHECKOUT_SESSION_ID}", session["id"]) if url else None


def _not_found(what: str) -> HTMLResponse:
    return _page("message.html", status=404, title="Not found", message=f"No such {what}.")


async def checkout(request: Request) -> Response:
    em: Emulator = request.app.state.emulator
    session = em.checkout_sessions.get(request.path_params["id"])
    if session is None:
        return _not_found("checkout session")
    payments.refresh_session(em, session)
    if request.method == "GET" or session["status"] != "open":
        return _checkout_page(em, session, status=200 if request.method == "GET" else 409)
    form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
    return _submit(em, session, form)


def _submit(em: Emulator, session: Obj, form: dict[str, str]) -> Response:
    """Pay with the typed card; on any problem show the form again with the error."""
    kept = {"email": form.get("email", ""), "name": form.get("name", "")}
    email = kept["email"].strip() or None
    try:
        if email is not None and ("@" not in email or len(email) > 512):
            raise CardInvalid("Your email address is invalid.")
        card = read_card(
            number=form.get("card_number", ""),
            expiry=form.get("expiry", ""),
            cvc=form.get("cvc", ""),
        )
        intent = payments.pay_session(
            em, session, card=card, email=email, name=kept["name"].strip() or None
        )
    except CardInvalid as invalid_card:
        return _checkout_page(em, session, status=400, error=str(invalid_card), form=kept)
    except StripeError as error:
        return _checkout_page(em, session, status=error.status, error=error.message, form=kept)
    if intent is not None and intent["status"] == "requires_action":
        return RedirectResponse(f"{session['url']}/authenticate", status_code=303)
    return _paid(em, session)


def _paid(em: Emulator, session: Obj) -> Response:
    target = _success_url(session)
    if target is None:
        return _checkout_page(em, session)
    return RedirectResponse(target, status_code=303)


def _challenge(em: Emulator, intent: Obj, *, status: int = 200, **context: Any) -> HTMLResponse:
    method = em.payment_methods[intent["payment_method"]]
    return _page(
        "authenticate.html",
        status=status,
        amount=format_amount(intent["amount"], intent["currency"]),
        brand=method["card"]["brand"].capitalize(),
        last4=method["card"]["last4"],
        **context,
    )


async def _outcome(request: Request) -> str | None:
    """The challenge's answer: "complete" or "fail", None for anything else."""
    form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
    outcome = form.get("outcome")
    return outcome if outcome in {"complete", "fail"} else None


async def checkout_challenge(request: Request) -> Response:
    """Checkout's challenge for a card that asks for authentication: answered, the payment
    completes (on to the success page) or the payer is back on the checkout page, told why."""
    em: Emulator = request.app.state.emulator
    session = em.checkout_sessions.get(request.path_params["id"])
    if session is None:
        return _not_found("checkout session")
    payments.refresh_session(em, session)
    intent = em.payment_intents.get(session["payment_intent"] or "")
    if session["status"] != "open":
        return _checkout_page(em, session, status=200 if request.method == "GET" else 409)
    if intent is None or intent["status"] != "requires_action":
        return RedirectResponse(session["url"], status_code=303)
    outcome = await _outcome(request) if request.method == "POST" else None
    if outcome is None:
        error = None if request.method == "GET" else UNANSWERED
        return _challenge(em, intent, status=400 if error else 200, error=error)
    payments.authenticate(em, intent, completed=outcome == "complete")
    if intent["status"] == "succeeded":
        return _paid(em, session)
    return RedirectResponse(session["url"], status_code=303)


async def stripe_js_challenge(request: Request) -> Response:
    """The challenge the Stripe.js stand-in shows in its frame (``next_action``'s
    ``stripe_js``). Once it is answered, or when there is nothing left to answer, the page
    tells the page around it, which then reads the PaymentIntent as Stripe.js does."""
    em: Emulator = request.app.state.emulator
    intent = em.payment_intents.get(request.path_params["intent"])
    if intent is None:
        return _not_found("payment intent")
    action = (intent["next_action"] or {}).get("use_stripe_sdk") or {}
    pending = (
        intent["status"] == "requires_action"
        and action.get("source") == request.path_params["source"]
    )
    # The stand-in may answer for a customer who closed its frame: a cross-origin POST.
    cors = {"Access-Control-Allow-Origin": "*"}
    if request.method == "GET" and pending:
        return _challenge(em, intent)
    if request.method == "POST" and pending:
        outcome = await _outcome(request)
        if outcome is None:
            return _challenge(em, intent, status=400, headers=cors, error=UNANSWERED)
        payments.authenticate(em, intent, completed=outcome == "complete")
    answered = intent["status"] == "succeeded"
    return _page(
        "answered.html",
        status=409 if request.method == "POST" and not pending else 200,
        headers=cors,
        title="Authentication complete" if answered else "Authentication ended",
        message=(
            "You can close this window: the payment goes on."
            if answered
            else "This payment was not authenticated. You can close this window."
        ),
        notice={"type": CHALLENGE_ANSWERED, "payment_intent": intent["id"]},
    )


def _date(timestamp: int | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%d")


def _portal_view(em: Emulator, sub: Obj) -> dict[str, Any]:
    """What the portal shows of a subscription, and the prices it may switch to: the
    account's active recurring prices in its currency (``packages sync`` makes them)."""
    item = sub["items"]["data"][0]
    price = item["price"]
    product = em.products.get(price["product"], {})
    method = em.payment_methods.get(sub["default_payment_method"] or "")
    ends = sub["cancel_at"] or (item["current_period_end"] if sub["cancel_at_period_end"] else None)
    choices = [
        {
            "id": p["id"],
            "label": f"{em.products.get(p['product'], {}).get('name', p['product'])}"
            f" · {format_amount(p['unit_amount'], p['currency'])} / {p['recurring']['interval']}",
        }
        for p in em.prices.values()
        if p["active"]
        and p["recurring"] is not None
        and p["id"] not in em.hidden
        and p["currency"] == price["currency"]
        and p["id"] != price["id"]
    ]
    return {
        "id": sub["id"],
        "name": product.get("name", "Plan"),
        "price": format_amount(price["unit_amount"], price["currency"]),
        "interval": price["recurring"]["interval"],
        "status": sub["status"],
        "ends": _date(ends),
        "renews": _date(item["current_period_end"]),
        "card": f"{method['card']['brand']} ···· {method['card']['last4']}" if method else None,
        "choices": choices,
    }


def _portal_page(
    em: Emulator,
    session: Obj,
    *,
    status: int = 200,
    notice: str | None = None,
    error: str | None = None,
) -> HTMLResponse:
    subs = [
        _portal_view(em, sub)
        for sub in em.subscriptions.values()
        if sub["customer"] == session["customer"] and sub["status"] != "canceled"
    ]
    return _page(
        "portal.html",
        status=status,
        session=session,
        customer=em.customers.get(session["customer"]),
        return_url=safe_url(session["return_url"]),
        subscriptions=subs,
        notice=notice,
        error=error,
    )


def _monthly(price: Obj) -> float:
    amount = int(price["unit_amount"])
    return amount / 12 if price["recurring"]["interval"] == "year" else float(amount)


def _portal_action(em: Emulator, sub: Obj, form: dict[str, str]) -> str:
    """One change from the portal, as Stripe's default portal configuration makes it: a
    cancel is scheduled for the period's end (``cancel_at``, flexible billing mode), an
    upgrade or a change of interval is invoiced at once, a downgrade waits for the
    renewal, a new card becomes the subscription's and pays an invoice left open."""
    action = form.get("action")
    if action == "cancel":
        billing.update(em, sub, {"cancel_at": "max_period_end"})
        return "Your plan will be canceled at the end of the period."
    if action == "renew":
        billing.update(em, sub, {"cancel_at": "", "cancel_at_period_end": "false"})
        return "Your plan will renew."
    if action == "switch":
        price = em.prices.get(form.get("price", ""))
        if (
            price is None
            or price["recurring"] is None
            or not price["active"]
            or price["id"] in em.hidden
        ):
            raise StripeError(status=400, message="Choose a plan to switch to.")
        old = sub["items"]["data"][0]["price"]
        moved = price["recurring"]["interval"] != old["recurring"]["interval"]
        upgrade = moved or _monthly(price) > _monthly(old)
        billing.change_price(
            em, sub, dict(price), proration="always_invoice" if upgrade else "none"
        )
        return "Your plan was switched." if upgrade else "Your plan switches at the renewal."
    if action == "card":
        card = read_card(number=form.get("card_number", ""), expiry="12/40", cvc="123")
        billing.set_payment_method(em, sub, card.payment_method)
        emit(
            em,
            "customer.subscription.updated",
            sub,
            previous_attributes={"default_payment_method": None},
        )
        invoice = em.invoices.get(sub["latest_invoice"] or "")
        if invoice is not None and invoice["status"] == "open":
            billing.pay_invoice(em, invoice, payment_method=None)
            return "Your card was updated and the open invoice paid."
        return "Your card was updated."
    raise StripeError(status=400, message="Unknown action.")


async def portal(request: Request) -> Response:
    em: Emulator = request.app.state.emulator
    session = em.portal_sessions.get(request.path_params["id"])
    if session is None:
        return _not_found("billing portal session")
    if request.method == "GET":
        return _portal_page(em, session)
    form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
    sub = em.subscriptions.get(form.get("subscription", ""))
    if sub is None or sub["customer"] != session["customer"] or sub["status"] == "canceled":
        return _portal_page(em, session, status=404, error="No such subscription.")
    try:
        notice = _portal_action(em, sub, form)
    except CardInvalid as invalid_card:
        return _portal_page(em, session, status=400, error=str(invalid_card))
    except StripeError as error:
        return _portal_page(em, session, status=error.status, error=error.message)
    return _portal_page(em, session, notice=notice)


async def stripe_js(request: Request) -> Response:
    table = {card.number: card.payment_method for card in CARDS}
    script = TEMPLATES.get_template("stripe.js").render(
        cards=json.dumps(table),
        answered=json.dumps(CHALLENGE_ANSWERED),
        authentication_failed=json.dumps(payments.AUTHENTICATION_FAILED_FOR_CUSTOMER),
    )
    return Response(
        script,
        media_type="application/javascript",
        headers={"Cache-Control": "no-store", "Access-Control-Allow-Origin": "*"},
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/checkout/{id}", checkout, methods=["GET", "POST"]),
        Route("/checkout/{id}/authenticate", checkout_challenge, methods=["GET", "POST"]),
        Route("/3d_secure/{intent}/{source}", stripe_js_challenge, methods=["GET", "POST"]),
        Route("/billing_portal/{id}", portal, methods=["GET", "POST"]),
        Route("/v3", stripe_js, methods=["GET"]),
        Route("/v3/", stripe_js, methods=["GET"]),
    ]

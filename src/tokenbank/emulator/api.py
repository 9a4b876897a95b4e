"""The /v1 endpoints tokenbank calls, each a plain function of its parameters."""

from __future__ import annotations

import fnmatch
import re

from starlette.routing import BaseRoute, Route

from tokenbank.emulator import billing, payments, shapes
from tokenbank.emulator.events import emit
from tokenbank.emulator.gateway import Call, Endpoint, api, unknown_url
from tokenbank.emulator.params import (
    Params,
    StripeError,
    boolean,
    currency,
    integer,
    invalid,
    mapping,
    metadata,
    required_integer,
    required_text,
    strings,
    text,
)
from tokenbank.emulator.shapes import Obj
from tokenbank.emulator.state import Emulator, created_matches, get, listed, page, render

_PRODUCT_ID = re.compile(r"^[A-Za-z0-9_\-]{1,255}$")


def _unknown(params: Params, *names: str) -> None:
    for name in names:
        if name in params:
            raise invalid(f"Received unknown parameter: {name}", param=name)


def _matches(obj: Obj, field: str, wanted: object) -> bool:
    return wanted is None or obj.get(field) == wanted


# Products


def create_product(call: Call) -> Obj:
    em, params = call.em, call.params
    id = text(params, "id") or shapes.new_id("prod")
    if not _PRODUCT_ID.match(id):
        raise invalid("Invalid product id.", param="id")
    if id in em.products:
        raise invalid("Product already exists.", param="id", code="resource_already_exists")
    active = boolean(params, "active")
    product = shapes.product(
        id=id,
        name=required_text(params, "name"),
        description=text(params, "description"),
        active=True if active is None else active,
        metadata=metadata(params),
    )
    em.products[id] = product
    return render(em, product, params)


def retrieve_product(call: Call) -> Obj:
    return render(call.em, get(call.em.products, call.path["id"], kind="product"), call.params)


def update_product(call: Call) -> Obj:
    em, params = call.em, call.params
    product = get(em.products, call.path["id"], kind="product")
    if "name" in params:
        product["name"] = required_text(params, "name")
    if "description" in params:
        product["description"] = text(params, "description")
    if (active := boolean(params, "active")) is not None:
        product["active"] = active
    if "default_price" in params:
        price_id = text(params, "default_price")
        if price_id is not None:
            price = get(em.prices, price_id, kind="price", param="default_price")
            if price["product"] != product["id"]:
                raise invalid("The price must belong to this product.", param="default_price")
        product["default_price"] = price_id
    product["metadata"] = metadata(params, current=product["metadata"])
    product["updated"] = shapes.now()
    return render(em, product, params)


def list_products(call: Call) -> Obj:
    em, params = call.em, call.params
    active, ids = boolean(params, "active"), strings(params, "ids")
    created = created_matches(params)
    items = [
        p
        for p in listed(em.products, em)
        if _matches(p, "active", active) and (not ids or p["id"] in ids) and created(p)
    ]
    return page(em, items, params, url="/v1/products")


# Prices


def _claim_lookup_key(em: Emulator, key: str | None, *, transfer: bool, owner: str | None) -> None:
    if key is None:
        return
    for price in em.prices.values():
        if price["lookup_key"] == key and price["id"] != owner:
            if not transfer:
                raise invalid(
                    f"A price ({price['id']}) already uses that lookup key.", param="lookup_key"
                )
            price["lookup_key"] = None


def create_price(call: Call) -> Obj:
    em, params = call.em, call.params
    interval = _interval(params)
    product_id = text(params, "product")
    data = mapping(params, "product_data")
    if product_id is not None:
        get(em.products, product_id, kind="product", param="product")
    elif not data:
        raise invalid("Missing required param: product.", param="product", code="parameter_missing")
    amount, price_currency = _unit_amount(params, ""), currency(params)
    lookup_key, active = text(params, "lookup_key"), boolean(params, "active")
    nickname, price_metadata = text(params, "nickname"), metadata(params)
    if product_id is None:
        product = shapes.product(
            id=shapes.new_id("prod"),
            name=required_text(data, "name"),
            description=None,
            active=True,
            metadata=metadata(data),
        )
        em.products[product["id"]] = product
        product_id = product["id"]
    _claim_lookup_key(
        em, lookup_key, transfer=boolean(params, "transfer_lookup_key") is True, owner=None
    )
    price = shapes.price(
        product=product_id,
        unit_amount=amount,
        currency=price_currency,
        active=True if active is None else active,
        lookup_key=lookup_key,
        nickname=nickname,
        metadata=price_metadata,
        interval=interval,
    )
    em.prices[price["id"]] = price
    return render(em, price, params)


def _interval(params: Params) -> str | None:
    """``recurring[interval]`` of a new price: ``month`` or ``year``, every one of them
    (the emulator bills no other interval, count or usage type)."""
    if "recurring" not in params:
        return None
    recurring = mapping(params, "recurring")
    interval = recurring.get("interval")
    if interval not in ("day", "week", "month", "year"):
        raise invalid(
            "Invalid recurring[interval]: must be one of day, week, month, or year",
            param="recurring[interval]",
        )
    if interval not in ("month", "year") or recurring.get("interval_count", "1") not in (1, "1"):
        raise invalid(
            "The emulator bills monthly and yearly prices only.", param="recurring[interval]"
        )
    for key in sorted(set(recurring) - {"interval", "interval_count", "usage_type"}):
        raise invalid(f"The emulator does not support recurring[{key}].", param=f"recurring[{key}]")
    if recurring.get("usage_type", "licensed") != "licensed":
        raise invalid("The emulator supports licensed usage only.", param="recurring[usage_type]")
    return str(interval)


def _unit_amount(params: Params, prefix: str) -> int:
    if "unit_amount" not in params and "unit_amount_decimal" in params:
        raw = text(params, "unit_amount_decimal")
        if raw is None or not re.fullmatch(r"\d+(\.0*)?", raw):
            raise invalid(
                "The emulator supports whole unit_amount_decimal values only.",
                param=f"{prefix}unit_amount_decimal",
            )
        return int(float(raw))
    try:
        return required_integer(params, "unit_amount")
    except StripeError as error:
        error.param = f"{prefix}{error.param}"
        raise


def retrieve_price(call: Call) -> Obj:
    return render(call.em, get(call.em.prices, call.path["id"], kind="price"), call.params)


def update_price(call: Call) -> Obj:
    em, params = call.em, call.params
    price = get(em.prices, call.path["id"], kind="price")
    _unknown(params, "unit_amount", "currency", "product", "unit_amount_decimal", "recurring")
    if "lookup_key" in params:
        key = text(params, "lookup_key")
        _claim_lookup_key(
            em, key, transfer=boolean(params, "transfer_lookup_key") is True, owner=price["id"]
        )
        price["lookup_key"] = key
    if (active := boolean(params, "active")) is not None:
        price["active"] = active
    if "nickname" in params:
        price["nickname"] = text(params, "nickname")
    price["metadata"] = metadata(params, current=price["metadata"])
    return render(em, price, params)


def list_prices(call: Call) -> Obj:
    em, params = call.em, call.params
    keys = strings(params, "lookup_keys")
    active, product = boolean(params, "active"), text(params, "product")
    wanted_currency, wanted_type = text(params, "currency"), text(params, "type")
    created = created_matches(params)
    items = [
        p
        for p in listed(em.prices, em)
        if (not keys or p["lookup_key"] in keys)
        and _matches(p, "active", active)
        and _matches(p, "product", product)
        and _matches(p, "currency", wanted_currency)
        and _matches(p, "type", wanted_type)
        and created(p)
    ]
    return page(em, items, params, url="/v1/prices")


# Customers


def create_customer(call: Call) -> Obj:
    em, params = call.em, call.params
    customer = shapes.customer(
        email=text(params, "email"),
        name=text(params, "name"),
        description=text(params, "description"),
        phone=text(params, "phone"),
        metadata=metadata(params),
    )
    em.customers[customer["id"]] = customer
    return render(em, customer, params)


def retrieve_customer(call: Call) -> Obj:
    return render(call.em, get(call.em.customers, call.path["id"], kind="customer"), call.params)


def update_customer(call: Call) -> Obj:
    em, params = call.em, call.params
    customer = get(em.customers, call.path["id"], kind="customer")
    for name in ("email", "name", "description", "phone"):
        if name in params:
            customer[name] = text(params, name)
    customer["metadata"] = metadata(params, current=customer["metadata"])
    return render(em, customer, params)


def list_customers(call: Call) -> Obj:
    em, params = call.em, call.params
    email, created = text(params, "email"), created_matches(params)
    items = [c for c in listed(em.customers, em) if _matches(c, "email", email) and created(c)]
    return page(em, items, params, url="/v1/customers")


# Checkout sessions


def _line_item(em: Emulator, raw: object, index: int, *, mode: str = "payment") -> Obj:
    prefix = f"line_items[{index}]"
    if not isinstance(raw, dict):
        raise invalid("Invalid line item.", param=prefix)
    quantity = integer(raw, "quantity", minimum=1)
    if quantity is None:
        raise invalid(
            "Quantity is required. Add `quantity` to `line_items[{index}]`.",
            param=f"{prefix}[quantity]",
            code="parameter_missing",
        )
    price_id = text(raw, "price")
    if price_id is not None:
        price = get(em.prices, price_id, kind="price", param=f"{prefix}[price]")
        if not price["active"]:
            raise invalid(
                "The price specified is inactive. This field only accepts active prices.",
                param=f"{prefix}[price]",
            )
        if price["recurring"] is not None and mode == "payment":
            raise invalid(
                "You specified `payment` mode but passed a recurring price. Either switch to"
                " `subscription` mode or use only one-time prices.",
                param=f"{prefix}[price]",
            )
        return shapes.line_item(
            price=dict(price), quantity=quantity, description=em.products[price["product"]]["name"]
        )
    data = mapping(raw, "price_data")
    if not data:
        raise invalid(
            f"You must specify either `price` or `price_data` in `{prefix}`.", param=prefix
        )
    product_id = text(data, "product")
    if product_id is not None:
        product = get(
            em.products, product_id, kind="product", param=f"{prefix}[price_data][product]"
        )
    else:
        product_data = mapping(data, "product_data")
        if not product_data:
            raise invalid(
                "You must specify either `product` or `product_data` when creating a price.",
                param=f"{prefix}[price_data][product_data]",
            )
        product = shapes.product(
            id=shapes.new_id("prod"),
            name=required_text(product_data, "name"),
            description=text(product_data, "description"),
            active=False,
            metadata=metadata(product_data),
        )
        em.products[product["id"]] = product
        em.hidden.add(product["id"])
    try:
        interval = _interval(data)
    except StripeError as error:
        error.param = f"{prefix}[price_data][{(error.param or '').replace('[', '][', 1)}"
        raise
    if interval is not None and mode == "payment":
        raise invalid(
            "You specified `payment` mode but passed a recurring price. Either switch to"
            " `subscription` mode or use only one-time prices.",
            param=f"{prefix}[price_data][recurring]",
        )
    price = shapes.price(
        product=product["id"],
        unit_amount=_unit_amount(data, f"{prefix}[price_data]"),
        currency=currency(data),
        active=False,
        lookup_key=None,
        nickname=None,
        metadata={},
        interval=interval,
    )
    em.prices[price["id"]] = price
    em.hidden.add(price["id"])
    return shapes.line_item(price=dict(price), quantity=quantity, description=product["name"])


def _subscription_data(params: Params) -> Params:
    """``subscription_data`` of a subscription-mode session: metadata, description and
    ``trial_period_days`` (at least 1), used when the session is paid."""
    data = mapping(params, "subscription_data")
    for key in sorted(set(data) - {"metadata", "description", "trial_period_days"}):
        raise invalid(
            f"The emulator does not support subscription_data[{key}].",
            param=f"subscription_data[{key}]",
        )
    try:
        trial = integer(data, "trial_period_days", minimum=1)
    except StripeError as error:
        error.param = f"subscription_data[{error.param}]"
        raise
    if trial is not None and trial > 730:
        raise invalid(
            "trial_period_days must be at most 730.", param="subscription_data[trial_period_days]"
        )
    return {
        "metadata": metadata(data),
        "description": text(data, "description"),
        "trial_period_days": trial,
    }


def _method_types(params: Params) -> list[str]:
    """The methods asked for (older API versions name the list payment_method_types).

    Only cards can actually pay here; other types are recorded, not refused, as Stripe would.
    """
    return (
        strings(params, "allowed_payment_method_types")
        or strings(params, "payment_method_types")
        or ["card"]
    )


def create_checkout_session(call: Call) -> Obj:
    em, params = call.em, call.params
    mode = text(params, "mode") or "payment"
    if mode not in {"payment", "subscription"}:
        raise invalid("The emulator supports mode=payment and mode=subscription.", param="mode")
    ui_mode = text(params, "ui_mode") or "hosted_page"
    if ui_mode not in {"hosted", "hosted_page"}:
        raise invalid("The emulator supports ui_mode=hosted only.", param="ui_mode")
    raw_items = params.get("line_items")
    if not isinstance(raw_items, list) or not raw_items:
        raise invalid(
            f"You must specify `line_items` in `{mode}` mode.",
            param="line_items",
            code="parameter_missing",
        )
    items = [_line_item(em, raw, i, mode=mode) for i, raw in enumerate(raw_items)]
    if mode == "subscription":
        billing.check_session_items(items)
        if "payment_intent_data" in params:
            raise invalid(
                "You can not pass `payment_intent_data` in `subscription` mode.",
                param="payment_intent_data",
            )
    currencies = {item["currency"] for item in items}
    if len(currencies) > 1:
        raise invalid("All line items must use the same currency.", param="line_items")
    customer = text(params, "customer")
    customer_email = text(params, "customer_email")
    if customer is not None:
        get(em.customers, customer, kind="customer", param="customer")
        if customer_email is not None:
            raise invalid("You may only specify one of these parameters: customer, customer_email.")
    now = shapes.now()
    expires_at = integer(params, "expires_at")
    if expires_at is None:
        expires_at = now + 86400
    elif not now + 1800 - 5 <= expires_at <= now + 86400 + 5:
        raise invalid(
            "The `expires_at` timestamp must be between 30 minutes and 24 hours from now.",
            param="expires_at",
        )
    intent_data = mapping(params, "payment_intent_data")
    id = shapes.new_id("cs_test")
    session = shapes.checkout_session(
        id=id,
        url=f"{call.public_url}/checkout/{id}",
        amount=sum(item["amount_total"] for item in items),
        currency=items[0]["currency"],
        success_url=text(params, "success_url"),
        cancel_url=text(params, "cancel_url"),
        client_reference_id=text(params, "client_reference_id"),
        customer=customer,
        customer_email=customer_email,
        metadata=metadata(params),
        expires_at=expires_at,
        locale=text(params, "locale"),
        payment_method_types=_method_types(params),
        submit_type=text(params, "submit_type"),
        allow_promotion_codes=boolean(params, "allow_promotion_codes"),
        mode=mode,
    )
    em.checkout_sessions[id] = session
    if mode == "subscription":
        em.subscription_data[id] = _subscription_data(params)
    em.line_items[id] = items
    em.intent_data[id] = {
        "metadata": metadata(intent_data),
        "description": text(intent_data, "description"),
        "receipt_email": text(intent_data, "receipt_email"),
    }
    return render(em, session, params)


def _session(call: Call) -> Obj:
    session = get(call.em.checkout_sessions, call.path["id"], kind="checkout.session")
    return payments.refresh_session(call.em, session)


def retrieve_checkout_session(call: Call) -> Obj:
    return render(call.em, _session(call), call.params)


def expire_checkout_session(call: Call) -> Obj:
    session = _session(call)
    return render(call.em, payments.expire_session(call.em, session), call.params)


def list_checkout_sessions(call: Call) -> Obj:
    em, params = call.em, call.params
    intent, status = text(params, "payment_intent"), text(params, "status")
    customer, created = text(params, "customer"), created_matches(params)
    for session in list(em.checkout_sessions.values()):
        payments.refresh_session(em, session)
    items = [
        s
        for s in em.checkout_sessions.values()
        if _matches(s, "payment_intent", intent)
        and _matches(s, "status", status)
        and _matches(s, "customer", customer)
        and created(s)
    ]
    return page(em, items, params, url="/v1/checkout/sessions")


def list_line_items(call: Call) -> Obj:
    session = _session(call)
    items = list(reversed(call.em.line_items.get(session["id"], [])))
    return page(
        call.em, items, call.params, url=f"/v1/checkout/sessions/{session['id']}/line_items"
    )


# Payment intents


def _intent_for(call: Call) -> Obj:
    """The path's PaymentIntent; a publishable key must also present its client_secret."""
    intent = get(call.em.payment_intents, call.path["id"], kind="payment_intent")
    secret = text(call.params, "client_secret")
    if (call.publishable or secret is not None) and secret != intent["client_secret"]:
        raise invalid(
            "The client_secret provided does not match the client_secret associated with the "
            "PaymentIntent.",
            param="client_secret",
            code="payment_intent_invalid_parameter",
        )
    return intent


def _show_intent(call: Call, intent: Obj) -> Obj:
    if call.publishable:
        return {field: intent[field] for field in shapes.PUBLISHABLE_PAYMENT_INTENT_FIELDS}
    return render(call.em, intent, call.params)


def create_payment_intent(call: Call) -> Obj:
    em, params = call.em, call.params
    customer = text(params, "customer")
    if customer is not None:
        get(em.customers, customer, kind="customer", param="customer")
    automatic = mapping(params, "automatic_payment_methods")
    intent = payments.create_payment_intent(
        em,
        amount=required_integer(params, "amount", minimum=1),
        currency=currency(params),
        customer=customer,
        description=text(params, "description"),
        metadata=metadata(params),
        payment_method_types=_method_types(params),
        automatic_payment_methods=boolean(automatic, "enabled") is True,
        receipt_email=text(params, "receipt_email"),
    )
    method = text(params, "payment_method")
    if boolean(params, "confirm"):
        payments.confirm(em, intent, payment_method=method, public_url=call.public_url)
    elif method is not None:
        payments.attach_payment_method(em, intent, payment_method=method)
    return render(em, intent, params)


def retrieve_payment_intent(call: Call) -> Obj:
    return _show_intent(call, _intent_for(call))


def update_payment_intent(call: Call) -> Obj:
    em, params = call.em, call.params
    intent = _intent_for(call)
    if "description" in params:
        intent["description"] = text(params, "description")
    if (method := text(params, "payment_method")) is not None:
        payments.attach_payment_method(em, intent, payment_method=method)
    intent["metadata"] = metadata(params, current=intent["metadata"])
    return render(em, intent, params)


def confirm_payment_intent(call: Call) -> Obj:
    intent = _intent_for(call)
    try:
        payments.confirm(
            call.em,
            intent,
            payment_method=text(call.params, "payment_method"),
            public_url=call.public_url,
        )
    except StripeError as error:
        if call.publishable and "payment_intent" in error.extra:
            error.extra["payment_intent"] = _show_intent(call, intent)
        raise
    return _show_intent(call, intent)


def cancel_payment_intent(call: Call) -> Obj:
    intent = _intent_for(call)
    payments.cancel(call.em, intent, reason=text(call.params, "cancellation_reason"))
    return render(call.em, intent, call.params)


def list_payment_intents(call: Call) -> Obj:
    em, params = call.em, call.params
    customer, created = text(params, "customer"), created_matches(params)
    items = [
        i for i in em.payment_intents.values() if _matches(i, "customer", customer) and created(i)
    ]
    return page(em, items, params, url="/v1/payment_intents")


def retrieve_payment_method(call: Call) -> Obj:
    method = get(call.em.payment_methods, call.path["id"], kind="payment_method")
    return render(call.em, method, call.params)


# Charges, refunds, disputes


def retrieve_charge(call: Call) -> Obj:
    return render(call.em, get(call.em.charges, call.path["id"], kind="charge"), call.params)


def list_charges(call: Call) -> Obj:
    em, params = call.em, call.params
    intent, customer = text(params, "payment_intent"), text(params, "customer")
    created = created_matches(params)
    items = [
        c
        for c in em.charges.values()
        if _matches(c, "payment_intent", intent)
        and _matches(c, "customer", customer)
        and created(c)
    ]
    return page(em, items, params, url="/v1/charges")


def create_refund(call: Call) -> Obj:
    em, params = call.em, call.params
    target = payments.refundable_charge(
        em, charge_id=text(params, "charge"), intent_id=text(params, "payment_intent")
    )
    created = payments.refund(
        em,
        target,
        amount=integer(params, "amount", minimum=1),
        reason=text(params, "reason"),
        metadata=metadata(params),
    )
    return render(em, created, params)


def retrieve_refund(call: Call) -> Obj:
    return render(call.em, get(call.em.refunds, call.path["id"], kind="refund"), call.params)


def update_refund(call: Call) -> Obj:
    refund = get(call.em.refunds, call.path["id"], kind="refund")
    refund["metadata"] = metadata(call.params, current=refund["metadata"])
    return render(call.em, refund, call.params)


def _list_by_payment(call: Call, store: dict[str, Obj], url: str) -> Obj:
    em, params = call.em, call.params
    intent, charge = text(params, "payment_intent"), text(params, "charge")
    created = created_matches(params)
    items = [
        o
        for o in store.values()
        if _matches(o, "payment_intent", intent) and _matches(o, "charge", charge) and created(o)
    ]
    return page(em, items, params, url=url)


def list_refunds(call: Call) -> Obj:
    return _list_by_payment(call, call.em.refunds, "/v1/refunds")


def retrieve_dispute(call: Call) -> Obj:
    return render(call.em, get(call.em.disputes, call.path["id"], kind="dispute"), call.params)


def list_disputes(call: Call) -> Obj:
    return _list_by_payment(call, call.em.disputes, "/v1/disputes")


# Events


def list_events(call: Call) -> Obj:
    em, params = call.em, call.params
    pattern, types = text(params, "type"), strings(params, "types")
    if pattern is not None and types:
        raise invalid("You may only specify one of these parameters: type, types.")
    created = created_matches(params)
    items = [
        e
        for e in em.events.values()
        if (pattern is None or fnmatch.fnmatchcase(e["type"], pattern))
        and (not types or e["type"] in types)
        and created(e)
    ]
    return page(em, items, params, url="/v1/events")


def retrieve_event(call: Call) -> Obj:
    return render(call.em, get(call.em.events, call.path["id"], kind="event"), call.params)


# Subscriptions and invoices


def _subscription(call: Call) -> Obj:
    return get(call.em.subscriptions, call.path["id"], kind="subscription")


def retrieve_subscription(call: Call) -> Obj:
    return render(call.em, _subscription(call), call.params)


def update_subscription(call: Call) -> Obj:
    em, params = call.em, call.params
    _unknown(params, "billing_cycle_anchor", "trial_end")
    sub = _subscription(call)
    if "items" in params:
        if sub["status"] == "canceled":
            raise invalid("A canceled subscription can not be updated.", param="items")
        billing.change_price(
            em,
            sub,
            _new_price(em, sub, params.get("items")),
            proration=text(params, "proration_behavior") or "create_prorations",
        )
    rest = {k: v for k, v in params.items() if k not in {"items", "proration_behavior"}}
    return render(em, billing.update(em, sub, rest) if rest else sub, params)


def _new_price(em: Emulator, sub: Obj, raw: object) -> Obj:
    """``items[0]``: the subscription's item with a new ``price`` or ``price_data``."""
    if not isinstance(raw, list) or len(raw) != 1 or not isinstance(raw[0], dict):
        raise invalid("The emulator changes the one item of a subscription.", param="items")
    wanted = raw[0]
    if wanted.get("id") not in (None, sub["items"]["data"][0]["id"]):
        raise invalid("No such subscription item.", param="items[0][id]")
    price_id = text(wanted, "price")
    if price_id is not None:
        price = get(em.prices, price_id, kind="price", param="items[0][price]")
        if not price["active"] or price["recurring"] is None:
            raise invalid("The price must be an active recurring price.", param="items[0][price]")
        return dict(price)
    data = mapping(wanted, "price_data")
    if not data:
        raise invalid("Provide items[0][price] or items[0][price_data].", param="items[0]")
    product = get(
        em.products,
        required_text(data, "product"),
        kind="product",
        param="items[0][price_data][product]",
    )
    interval = _interval(data)
    if interval is None:
        raise invalid(
            "price_data needs recurring[interval].", param="items[0][price_data][recurring]"
        )
    price = shapes.price(
        product=product["id"],
        unit_amount=_unit_amount(data, "items[0][price_data]"),
        currency=currency(data),
        active=False,
        lookup_key=None,
        nickname=None,
        metadata={},
        interval=interval,
    )
    em.prices[price["id"]] = price
    em.hidden.add(price["id"])
    return price


def cancel_subscription(call: Call) -> Obj:
    return render(call.em, billing.end_now(call.em, _subscription(call)), call.params)


def list_subscriptions(call: Call) -> Obj:
    em, params = call.em, call.params
    customer, status, price = (
        text(params, "customer"),
        text(params, "status"),
        text(params, "price"),
    )
    created = created_matches(params)
    items = [
        s
        for s in em.subscriptions.values()
        if _matches(s, "customer", customer)
        and (
            status == "all"
            or (status is None and s["status"] != "canceled")
            or s["status"] == status
        )
        and (price is None or s["items"]["data"][0]["price"]["id"] == price)
        and created(s)
    ]
    return page(em, items, params, url="/v1/subscriptions")


def retrieve_invoice(call: Call) -> Obj:
    return render(call.em, get(call.em.invoices, call.path["id"], kind="invoice"), call.params)


def list_invoices(call: Call) -> Obj:
    em, params = call.em, call.params
    customer, status = text(params, "customer"), text(params, "status")
    subscription, created = text(params, "subscription"), created_matches(params)
    items = [
        i
        for i in em.invoices.values()
        if _matches(i, "customer", customer)
        and _matches(i, "status", status)
        and (
            subscription is None
            or (i["parent"]["subscription_details"] or {}).get("subscription") == subscription
        )
        and created(i)
    ]
    return page(em, items, params, url="/v1/invoices")


def pay_invoice(call: Call) -> Obj:
    invoice = get(call.em.invoices, call.path["id"], kind="invoice")
    paid = billing.pay_invoice(call.em, invoice, payment_method=text(call.params, "payment_method"))
    return render(call.em, paid, call.params)


def list_invoice_payments(call: Call) -> Obj:
    em, params = call.em, call.params
    invoice = text(params, "invoice")
    payment = mapping(params, "payment")
    intent = text(payment, "payment_intent") if payment else None
    items = [
        p
        for p in em.invoice_payments.values()
        if _matches(p, "invoice", invoice)
        and (intent is None or p["payment"].get("payment_intent") == intent)
    ]
    return page(em, items, params, url="/v1/invoice_payments")


# Billing portal


def create_portal_session(call: Call) -> Obj:
    em, params = call.em, call.params
    customer = required_text(params, "customer")
    get(em.customers, customer, kind="customer", param="customer")
    id = shapes.new_id("bps")
    session = shapes.portal_session(
        id=id,
        customer=customer,
        return_url=text(params, "return_url"),
        url=f"{call.public_url}/billing_portal/{id}",
        locale=text(params, "locale"),
    )
    em.portal_sessions[id] = session
    return render(em, session, params)


# Test clocks. The emulator keeps one clock for the whole account: advancing any test
# clock moves every subscription, not only its own customers'.


def create_test_clock(call: Call) -> Obj:
    em, params = call.em, call.params
    _unknown(params, "customer")
    frozen = required_integer(params, "frozen_time")
    if frozen < shapes.now():
        raise invalid(
            "The emulator's test clocks start now or later: its one clock only moves forward.",
            param="frozen_time",
        )
    clock = shapes.test_clock(frozen_time=frozen, name=text(params, "name"))
    em.test_clocks[clock["id"]] = clock
    if frozen > shapes.now():
        billing.advance(em, frozen - shapes.now())
    emit(em, "test_helpers.test_clock.created", clock)
    return render(em, clock, params)


def _clock(call: Call) -> Obj:
    return get(call.em.test_clocks, call.path["id"], kind="test_helpers.test_clock")


def retrieve_test_clock(call: Call) -> Obj:
    clock = _clock(call)
    clock["status"], clock["status_details"] = "ready", {}
    return render(call.em, clock, call.params)


def list_test_clocks(call: Call) -> Obj:
    return page(
        call.em, list(call.em.test_clocks.values()), call.params, url="/v1/test_helpers/test_clocks"
    )


def delete_test_clock(call: Call) -> Obj:
    clock = _clock(call)
    del call.em.test_clocks[clock["id"]]
    emit(call.em, "test_helpers.test_clock.deleted", clock)
    return {"id": clock["id"], "object": "test_helpers.test_clock", "deleted": True}


#: How far one advance may go: two intervals of the shortest subscription, or two years.
TWO_YEARS = 2 * 366 * 86400


def advance_test_clock(call: Call) -> Obj:
    """Play every boundary up to ``frozen_time`` (renewals, trials ending, cancels) and
    answer the clock ``advancing``, as Stripe does; it reads ``ready`` afterwards."""
    em, params = call.em, call.params
    clock = _clock(call)
    frozen = required_integer(params, "frozen_time")
    if frozen <= int(clock["frozen_time"]):
        raise invalid(
            "The frozen_time must be later than the test clock's current frozen_time.",
            param="frozen_time",
        )
    months = [
        31 * 86400
        if s["items"]["data"][0]["price"]["recurring"]["interval"] == "month"
        else 366 * 86400
        for s in em.subscriptions.values()
        if s["status"] != "canceled"
    ]
    limit = 2 * min(months) if months else TWO_YEARS
    if frozen - int(clock["frozen_time"]) > limit:
        raise invalid(
            "Cannot advance the test clock more than two intervals of the shortest"
            " subscription on it (or two years with none).",
            param="frozen_time",
        )
    clock["status"] = "advancing"
    clock["status_details"] = {"advancing": {"target_frozen_time": frozen}}
    emit(em, "test_helpers.test_clock.advancing", clock)
    if frozen > shapes.now():
        billing.advance(em, frozen - shapes.now())
    clock["frozen_time"] = frozen
    answer = render(em, clock, params)
    clock["status"], clock["status_details"] = "ready", {}
    emit(em, "test_helpers.test_clock.ready", clock)
    return answer


def _route(path: str, endpoint: Endpoint, method: str, *, publishable: bool = False) -> Route:
    return Route(path, api(endpoint, publishable=publishable), methods=[method, "OPTIONS"])


def routes() -> list[BaseRoute]:
    """Every /v1 route, then a catch-all answering Stripe's "Unrecognized request URL"."""
    table: list[tuple[str, Endpoint, str]] = [
        ("/v1/products", create_product, "POST"),
        ("/v1/products", list_products, "GET"),
        ("/v1/products/{id}", retrieve_product, "GET"),
        ("/v1/products/{id}", update_product, "POST"),
        ("/v1/prices", create_price, "POST"),
        ("/v1/prices", list_prices, "GET"),
        ("/v1/prices/{id}", retrieve_price, "GET"),
        ("/v1/prices/{id}", update_price, "POST"),
        ("/v1/customers", create_customer, "POST"),
        ("/v1/customers", list_customers, "GET"),
        ("/v1/customers/{id}", retrieve_customer, "GET"),
        ("/v1/customers/{id}", update_customer, "POST"),
        ("/v1/checkout/sessions", create_checkout_session, "POST"),
        ("/v1/checkout/sessions", list_checkout_sessions, "GET"),
        ("/v1/checkout/sessions/{id}", retrieve_checkout_session, "GET"),
        ("/v1/checkout/sessions/{id}/expire", expire_checkout_session, "POST"),
        ("/v1/checkout/sessions/{id}/line_items", list_line_items, "GET"),
        ("/v1/payment_intents", create_payment_intent, "POST"),
        ("/v1/payment_intents", list_payment_intents, "GET"),
        ("/v1/payment_intents/{id}/cancel", cancel_payment_intent, "POST"),
        ("/v1/payment_intents/{id}", update_payment_intent, "POST"),
        ("/v1/payment_methods/{id}", retrieve_payment_method, "GET"),
        ("/v1/charges", list_charges, "GET"),
        ("/v1/charges/{id}", retrieve_charge, "GET"),
        ("/v1/refunds", create_refund, "POST"),
        ("/v1/refunds", list_refunds, "GET"),
        ("/v1/refunds/{id}", retrieve_refund, "GET"),
        ("/v1/refunds/{id}", update_refund, "POST"),
        ("/v1/disputes", list_disputes, "GET"),
        ("/v1/disputes/{id}", retrieve_dispute, "GET"),
        ("/v1/events", list_events, "GET"),
        ("/v1/events/{id}", retrieve_event, "GET"),
        ("/v1/billing_portal/sessions", create_portal_session, "POST"),
        ("/v1/subscriptions", list_subscriptions, "GET"),
        ("/v1/subscriptions/{id}", retrieve_subscription, "GET"),
        ("/v1/subscriptions/{id}", update_subscription, "POST"),
        ("/v1/subscriptions/{id}", cancel_subscription, "DELETE"),
        ("/v1/invoices", list_invoices, "GET"),
        ("/v1/invoices/{id}", retrieve_invoice, "GET"),
        ("/v1/invoices/{id}/pay", pay_invoice, "POST"),
        ("/v1/invoice_payments", list_invoice_payments, "GET"),
        ("/v1/test_helpers/test_clocks", create_test_clock, "POST"),
        ("/v1/test_helpers/test_clocks", list_test_clocks, "GET"),
        ("/v1/test_helpers/test_clocks/{id}", retrieve_test_clock, "GET"),
        ("/v1/test_helpers/test_clocks/{id}", delete_test_clock, "DELETE"),
        ("/v1/test_helpers/test_clocks/{id}/advance", advance_test_clock, "POST"),
    ]
    result: list[BaseRoute] = [
        _route(
            "/v1/payment_intents/{id}/confirm", confirm_payment_intent, "POST", publishable=True
        ),
        _route("/v1/payment_intents/{id}", retrieve_payment_intent, "GET", publishable=True),
    ]
    result += [_route(path, endpoint, method) for path, endpoint, method in table]
    result.append(
        Route("/v1/{rest:path}", unknown_url, methods=["GET", "POST", "DELETE", "OPTIONS"])
    )
    return result

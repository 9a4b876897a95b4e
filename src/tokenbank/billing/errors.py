"""What billing refuses, each with a stable code (mapped to HTTP in ``web/problems.py``)."""

from __future__ import annotations

from tokenbank.errors import TokenbankError


class UnknownPackage(TokenbankError):
    code = "unknown_package"

    def __init__(self, package_id: str) -> None:
        self.package_id = package_id
        super().__init__(f"no package {package_id!r} is on sale")


class UnknownPurchase(TokenbankError):
    code = "unknown_purchase"

    def __init__(self, reference: str) -> None:
        super().__init__(f"no purchase {reference}")


class PaymentMismatch(TokenbankError):
    """Stripe reports a payment that does not match the purchase it names: never credited,
    kept failing in the inbox until an operator looks."""

    code = "payment_mismatch"


class UnknownEvent(TokenbankError):
    code = "unknown_event"

    def __init__(self, event_id: str) -> None:
        super().__init__(f"no event {event_id} in the inbox")


class NothingToReview(TokenbankError):
    code = "nothing_to_review"

    def __init__(self, purchase_id: int) -> None:
        super().__init__(f"purchase {purchase_id} is not waiting for a review")


class PurchaseClosed(TokenbankError):
    """A retried purchase request whose purchase can no longer be paid."""

    code = "purchase_closed"

    def __init__(self, purchase_id: int, status: str) -> None:
        super().__init__(f"purchase {purchase_id} is {status}: start a new one with a new key")
        self.purchase_id = purchase_id

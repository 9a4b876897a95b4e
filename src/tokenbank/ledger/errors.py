"""Ledger errors. Each is a business outcome with data, never a crash; the HTTP layer and
the CLI map them by ``code``."""

from __future__ import annotations

from tokenbank.errors import TokenbankError


class LedgerError(TokenbankError):
    code = "ledger_error"


class InvalidArgument(LedgerError):
    code = "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(LedgerError):
    code = "not_found"


class UnknownUser(NotFound):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"no wallet for user {user_id!r}")
        self.user_id = user_id


class UnknownTransfer(NotFound):
    def __init__(self, transfer_id: int) -> None:
        super().__init__(f"no transfer {transfer_id}")
        self.transfer_id = transfer_id


class UnknownHold(NotFound):
    def __init__(self, hold_id: int) -> None:
        super().__init__(f"no hold {hold_id}")
        self.hold_id = hold_id


class InsufficientTokens(LedgerError):
    code = "insufficient_tokens"

    def __init__(self, user_id: str, *, requested: int, available: int) -> None:
        super().__init__(
            f"insufficient tokens: user {user_id!r} has {available} available, {requested} needed"
        )
        self.user_id = user_id
        self.requested = requested
        self.available = available


class IdempotencyConflict(LedgerError):
    """The key was already used for a different operation or different parameters."""

    code = "idempotency_conflict"

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used with other parameters: {detail}"
        )
        self.key = key
        self.detail = detail


class NotRefundable(LedgerError):
    code = "not_refundable"

    def __init__(self, transfer_id: int, kind: str) -> None:
        super().__init__(f"transfer {transfer_id} is a {kind}, only spends can be refunded")
        self.transfer_id = transfer_id


class RefundExceedsSpend(LedgerError):
    code = "refund_exceeds_spend"

    def __init__(self, transfer_id: int, *, requested: int, refundable: int) -> None:
        super().__init__(
            f"transfer {transfer_id}: {requested} requested, only {refundable} left to refund"
        )
        self.transfer_id = transfer_id
        self.requested = requested
        self.refundable = refundable


class HoldNotPending(LedgerError):
    code = "hold_not_pending"

    def __init__(self, hold_id: int, status: str) -> None:
        super().__init__(f"hold {hold_id} is {status}, not pending")
        self.hold_id = hold_id
        self.status = status


class HoldFrozen(LedgerError):
    """The hold is a freeze (a disputed payment's tokens): only billing may end it."""

    code = "hold_frozen"

    def __init__(self, hold_id: int) -> None:
        super().__init__(f"hold {hold_id} freezes disputed tokens; it ends with the dispute")
        self.hold_id = hold_id

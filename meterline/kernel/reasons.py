"""Rejection reason codes (docs/reason-codes.md) and the exception that carries them.

The order of `REASONS` is the order of precedence when a record has several
defects: validation before deduplication before enrichment.
"""

from __future__ import annotations

from typing import Final

TOO_LARGE: Final = "too_large"
MALFORMED: Final = "malformed"
MISSING_FIELD: Final = "missing_field"
NOT_BILLABLE: Final = "not_billable"
INVALID_TIMESTAMP: Final = "invalid_timestamp"
FUTURE_TIMESTAMP: Final = "future_timestamp"
INVALID_QUANTITY: Final = "invalid_quantity"
UNKNOWN_ACCOUNT: Final = "unknown_account"
NO_CONTRACT_IN_EFFECT: Final = "no_contract_in_effect"
UNKNOWN_METER: Final = "unknown_meter"
NO_MATCHING_CHARGE: Final = "no_matching_charge"
PERIOD_CLOSED: Final = "period_closed"
# Anything else that raised while a stage transformed one record (detail: the error).
INTERNAL_ERROR: Final = "internal_error"

REASONS: Final = (
    TOO_LARGE,
    MALFORMED,
    MISSING_FIELD,
    NOT_BILLABLE,
    INVALID_TIMESTAMP,
    FUTURE_TIMESTAMP,
    INVALID_QUANTITY,
    UNKNOWN_ACCOUNT,
    NO_CONTRACT_IN_EFFECT,
    UNKNOWN_METER,
    NO_MATCHING_CHARGE,
    PERIOD_CLOSED,
    INTERNAL_ERROR,
)

# Reasons decided before deduplication. No rejected record holds a dedup key (only an
# accepted one does), whatever its reason, so a corrected re-send is accepted.
VALIDATION_REASONS: Final = frozenset(REASONS[:7])


class Rejected(ValueError):
    """A record that cannot be billed; carries its reason code and a detail line."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def internal_error(error: BaseException) -> Rejected:
    """The rejection of a record a stage failed on unexpectedly: the error is its detail."""
    rejection = Rejected(INTERNAL_ERROR, f"{type(error).__name__}: {error}")
    rejection.__cause__ = error  # its traceback, for the log line
    return rejection

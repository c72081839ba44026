"""What the pages are made of: rows read from the billing store, as plain values."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Draft:
    """An `invoice_drafts` row."""

    invoice_id: str
    account_id: str
    period: str
    period_start: date
    period_end: date
    currency: str
    subtotal: Decimal
    discount: Decimal
    tax: Decimal
    total: Decimal
    status: str
    issue_date: date
    due_date: date
    event_count: int
    generated_at: datetime


@dataclass(frozen=True, slots=True)
class Line:
    """An `invoice_lines` row."""

    line_no: int
    kind: str
    charge_id: str | None
    description: str
    quantity: Decimal | None
    unit: str | None
    unit_price: Decimal | None
    amount: Decimal


@dataclass(frozen=True, slots=True)
class RatedEvent:
    """A `rated_usage` row behind a usage line."""

    event_id: str
    charge_id: str
    contract_id: str
    meter: str
    event_time: datetime
    quantity: Decimal
    rated_quantity: Decimal
    amount: Decimal
    attributes: dict[str, str]


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """One meter's rated usage on one local day of the account: sum, max and count."""

    day: date
    total: Decimal
    peak: Decimal
    events: int


@dataclass(slots=True)
class Invoice:
    """One draft with everything its page shows."""

    draft: Draft
    lines: list[Line] = field(default_factory=list)
    # charge id -> the largest rated events of that usage line, largest first
    top_events: dict[str, list[RatedEvent]] = field(default_factory=dict)
    # meter -> its days with usage, in day order
    daily: dict[str, list[DailyUsage]] = field(default_factory=dict)


@dataclass(slots=True)
class AccountSite:
    """One account's invoices, latest period first."""

    account_id: str
    invoices: list[Invoice] = field(default_factory=list)

"""The contract catalog as plain, immutable values.

Pure domain model shared by every stage: meters, plans with their charges,
accounts with effective-dated contracts. Loading and validating a catalog
document lives in :mod:`meterline.kernel.catalog_file`; this module only answers
questions about a loaded catalog (which contract is in effect, which period an
instant belongs to) without any I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from functools import cache
from typing import Literal
from zoneinfo import ZoneInfo

Aggregation = Literal["sum", "count", "max", "unique_count"]
PricingModel = Literal["flat", "graduated", "volume", "package"]
RoundingMode = Literal["half_even", "half_up"]

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Meter:
    code: str
    unit: str
    aggregation: Aggregation
    # Where the quantity (or, for unique_count, the counted value) is read from.
    value_property: str = "quantity"
    # Unit the raw events are expressed in; converted to `unit` on ingest.
    source_unit: str | None = None


@dataclass(frozen=True, slots=True)
class Tier:
    # Upper bound of the tier, inclusive; None for the last, open tier.
    up_to: Decimal | None
    unit_price: Decimal
    flat_fee: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class LocalTimeWindow:
    # Weekdays as date.weekday() numbers (0 = Monday); None means every day.
    days: frozenset[int] | None
    start: time  # inclusive
    end: time  # exclusive; wraps past midnight when start > end


@dataclass(frozen=True, slots=True)
class ChargeFilters:
    # Each attribute key must hold one of the listed values.
    attributes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    destination_prefixes: tuple[str, ...] = ()
    local_time: LocalTimeWindow | None = None

    @property
    def empty(self) -> bool:
        return not self.attributes and not self.destination_prefixes and self.local_time is None


@dataclass(frozen=True, slots=True)
class EventRounding:
    """Per-event rounding (telecom): q -> max(minimum, ceil(q / increment) * increment)."""

    increment: Decimal
    minimum: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class Charge:
    id: str
    meter: str
    model: PricingModel
    included: Decimal = ZERO
    unit_price: Decimal | None = None  # flat
    tiers: tuple[Tier, ...] = ()  # graduated, volume
    package_size: Decimal | None = None  # package
    package_price: Decimal | None = None  # package
    filters: ChargeFilters = field(default_factory=ChargeFilters)
    rounding: EventRounding | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class RecurringFee:
    id: str
    amount: Decimal
    description: str


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    currency: str
    rounding: RoundingMode
    charges: tuple[Charge, ...]
    recurring: tuple[RecurringFee, ...] = ()


@dataclass(frozen=True, slots=True)
class OneTimeCharge:
    id: str
    amount: Decimal
    date: date  # local date in the account's zone
    description: str


@dataclass(frozen=True, slots=True)
class Contract:
    id: str
    account_id: str
    plan_id: str
    start: date  # local date, inclusive
    end: date | None  # local date, exclusive; None = open-ended
    discount_percent: Decimal | None = None
    minimum_commitment: Decimal | None = None
    one_time: tuple[OneTimeCharge, ...] = ()

    def in_effect_on(self, day: date) -> bool:
        return self.start <= day and (self.end is None or day < self.end)


@dataclass(frozen=True, slots=True)
class Address:
    lines: tuple[str, ...]  # one to three street lines
    city: str
    country: str  # ISO 3166-1 alpha-2
    postcode: str | None = None


@dataclass(frozen=True, slots=True)
class Seller:
    """A legal entity that bills accounts (the seller of their e-invoices)."""

    id: str
    legal_name: str
    address: Address
    vat_id: str
    iban: str


@dataclass(frozen=True, slots=True)
class Buyer:
    """An account's legal details as the buyer of its e-invoices."""

    legal_name: str
    address: Address
    vat_id: str | None = None


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    timezone: str
    contracts: tuple[Contract, ...]  # sorted by start, never overlapping
    tax_rate: Decimal | None = None  # percent
    net_terms_days: int = 30
    locale: str = "en"  # Babel locale of the account's invoice pages (amounts, dates)
    seller_id: str | None = None  # the Seller that bills the account (e-invoices)
    buyer: Buyer | None = None  # the account's legal details (e-invoices)

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.timezone)

    def local_date(self, instant: datetime) -> date:
        return instant.astimezone(self.zone).date()

    def contract_on(self, day: date) -> Contract | None:
        for contract in self.contracts:
            if contract.in_effect_on(day):
                return contract
        return None

    def contract_at(self, instant: datetime) -> Contract | None:
        """The contract in effect at an instant (start inclusive, end exclusive)."""
        return self.contract_on(self.local_date(instant))

    def period_of(self, instant: datetime) -> str:
        """Billing period `YYYY-MM`: the calendar month of the instant in the account's zone."""
        local = instant.astimezone(self.zone)
        return f"{local.year:04d}-{local.month:02d}"


@dataclass(frozen=True)
class Catalog:
    meters: Mapping[str, Meter]
    plans: Mapping[str, Plan]
    accounts: Mapping[str, Account]
    sellers: Mapping[str, Seller] = field(default_factory=dict)

    @staticmethod
    def empty() -> Catalog:
        return Catalog(meters={}, plans={}, accounts={})


@cache
def zone(name: str) -> ZoneInfo:
    """ZoneInfo objects are cached by the stdlib too; this keeps lookups off hot paths."""
    return ZoneInfo(name)


def period_bounds(period: str) -> tuple[date, date]:
    """First day of the period and first day of the next one."""
    year, month = int(period[:4]), int(period[5:7])
    first = date(year, month, 1)
    following = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return first, following


def period_start_instant(period: str, tz: str) -> datetime:
    """The UTC instant at which a period starts in a zone."""
    first, _ = period_bounds(period)
    return datetime.combine(first, time(0), tzinfo=zone(tz)).astimezone(UTC)

"""Validation and normalization of one raw usage record (docs/input-formats.md).

The format readers of :mod:`mediation.formats` find a record's fields and hand
them over as a `RawUsage`, rejecting on the spot only what makes the record
unreadable (`malformed`). `to_event` then checks the rest in the order of
precedence of the rejection reasons — missing_field, not_billable,
invalid_timestamp, future_timestamp, invalid_quantity — and builds the
normalized, un-enriched `UsageEvent`. Pure: processing time is a parameter.

JSON values arrive as orjson reads them (str, int, float, bool, None, dict,
list) or, for records read exactly, with numbers as `Decimal` (`IntLiteral` for
integer literals). Everything here treats both alike: the reading mode changes
nothing but the exactness of quantities and epoch timestamps.

Fields are read by mediation.fields and timestamps by mediation.timestamps; the
names the format readers use are importable from here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Final

from mediation.fields import attribute_text, decimal_text, flatten_attributes, identifier, payload, short
from mediation.timestamps import FIRST_INSTANT, LAST_INSTANT, TimestampStyle, parse_timestamp
from meterline.kernel import units
from meterline.kernel.catalog import Meter
from meterline.kernel.reasons import FUTURE_TIMESTAMP, INVALID_QUANTITY, MISSING_FIELD, NOT_BILLABLE, Rejected
from meterline.kernel.records import UsageEvent

__all__ = [
    "FIRST_INSTANT",
    "FUTURE_TOLERANCE",
    "LAST_INSTANT",
    "MAX_QUANTITY",
    "FieldNames",
    "RawUsage",
    "TimestampStyle",
    "attribute_text",
    "flatten_attributes",
    "identifier",
    "parse_quantity",
    "parse_timestamp",
    "payload",
    "to_event",
]

# Largest quantity a DECIMAL(38,18) column stores is just below 10^20.
MAX_QUANTITY: Final = Decimal(10) ** 20
FUTURE_TOLERANCE: Final = timedelta(hours=24)

_ONE: Final = units.quantize(Decimal(1))


@dataclass(frozen=True, slots=True)
class FieldNames:
    """What a format calls the core fields, for rejection details."""

    event_id: str
    account_id: str
    meter: str
    timestamp: str


class RawUsage:
    """A record's fields as found by a format reader, not yet validated.

    `None` (or "") means absent. `quantity` and `timestamp` are raw values; `value`
    is the counted value of a unique_count meter, already rendered as text;
    `refusal` says why a record is not billable (e.g. an unanswered call); `zone` is
    the time zone of a `cdr` timestamp (None: UTC).

    A plain class, not a dataclass: one is built per record, and mypyc compiles this
    __init__ (a dataclass's is generated at import time and stays interpreted).
    """

    __slots__ = (
        "account_id", "attributes", "catalog_meter", "event_id", "meter", "names", "quantity",
        "quantity_field", "refusal", "source_format", "timestamp", "timestamp_style", "value", "value_field",
        "zone",
    )  # fmt: skip

    def __init__(
        self,
        source_format: str,
        names: FieldNames,
        event_id: str | None,
        account_id: str | None,
        meter: str | None,
        catalog_meter: Meter | None,  # None: not in the catalog (enrichment rejects it as unknown_meter)
        timestamp: object,
        timestamp_style: TimestampStyle,
        attributes: dict[str, str],
        quantity: object = None,
        quantity_field: str = "quantity",
        value: str | None = None,
        value_field: str = "",
        refusal: str | None = None,
        zone: tzinfo | None = None,
    ) -> None:
        self.source_format = source_format
        self.names = names
        self.event_id = event_id
        self.account_id = account_id
        self.meter = meter
        self.catalog_meter = catalog_meter
        self.timestamp = timestamp
        self.timestamp_style = timestamp_style
        self.attributes = attributes
        self.quantity = quantity
        self.quantity_field = quantity_field
        self.value = value
        self.value_field = value_field
        self.refusal = refusal
        self.zone = zone


def to_event(raw: RawUsage, now: datetime) -> UsageEvent:
    """Validate a found record against the meter's needs and normalize it.

    Raises `Rejected` with the first applicable reason of docs/input-formats.md. `now` is the
    (timezone-aware) processing time, for the future-timestamp check.
    """
    names = raw.names
    event_id = _required(raw.event_id, names.event_id)
    account_id = _required(raw.account_id, names.account_id)
    meter_code = _required(raw.meter, names.meter)
    if raw.timestamp is None or raw.timestamp == "":
        raise Rejected(MISSING_FIELD, f"{names.timestamp} is missing")
    meter = raw.catalog_meter
    aggregation = meter.aggregation if meter is not None else None
    if aggregation in ("sum", "max") and (raw.quantity is None or raw.quantity == ""):
        raise Rejected(MISSING_FIELD, f"{raw.quantity_field} is missing")
    if aggregation == "unique_count" and not raw.value:
        raise Rejected(MISSING_FIELD, f"{raw.value_field} is missing")
    if raw.refusal is not None:
        raise Rejected(NOT_BILLABLE, raw.refusal)

    event_time = parse_timestamp(raw.timestamp, raw.timestamp_style, names.timestamp, raw.zone)
    if event_time - now > FUTURE_TOLERANCE:
        raise Rejected(
            FUTURE_TIMESTAMP, f"{names.timestamp} {event_time.isoformat()} is more than 24 h ahead"
        )

    if meter is None:
        # Unknown meter: quantity optional, checked when given; enrichment rejects the event anyway.
        quantity = (
            units.ZERO
            if raw.quantity is None or raw.quantity == ""
            else _stored(parse_quantity(raw.quantity, raw.quantity_field), raw.quantity_field)
        )
    elif meter.aggregation in ("count", "unique_count"):
        quantity = _ONE
    else:
        amount = parse_quantity(raw.quantity, raw.quantity_field)
        if meter.source_unit is not None and meter.source_unit != meter.unit:
            quantity = _converted(amount, meter.source_unit, meter.unit, raw.quantity_field)
        else:
            quantity = _stored(amount, raw.quantity_field)

    return UsageEvent(
        event_id=event_id,
        account_id=account_id,
        meter=meter_code,
        quantity=quantity,
        event_time=event_time,
        attributes=raw.attributes,
        value=raw.value if aggregation == "unique_count" else None,
        source_format=raw.source_format,
    )


def _required(value: str | None, name: str) -> str:
    if not value:
        raise Rejected(MISSING_FIELD, f"{name} is missing")
    return value


# --------------------------------------------------------------------------- quantity


def parse_quantity(value: object, name: str) -> Decimal:
    """A non-negative finite quantity as an exact Decimal (not yet rounded nor converted:
    the storable maximum applies to the converted quantity, see `_stored`)."""
    amount: Decimal
    if type(value) is int:
        amount = Decimal(value)
    elif type(value) is float:
        if not math.isfinite(value):
            raise Rejected(INVALID_QUANTITY, f"{name} is not finite")
        amount = Decimal(repr(value))  # exact: the reader sends long literals down the exact path
    elif isinstance(value, Decimal):
        amount = value
    elif type(value) is str:
        amount = decimal_text(value, name, INVALID_QUANTITY)
    else:
        raise Rejected(INVALID_QUANTITY, f"{name} is not a number: {short(value)}")
    if not amount.is_finite():
        raise Rejected(INVALID_QUANTITY, f"{name} is not finite")
    if amount < 0:
        raise Rejected(INVALID_QUANTITY, f"{name} is negative: {short(value)}")
    return amount


def _stored(quantity: Decimal, name: str) -> Decimal:
    """Rounded to the 18 places kept downstream; below the storable maximum (10^20)."""
    if quantity < MAX_QUANTITY:  # checked first: quantize refuses numbers of 82 digits or more
        stored = units.quantize(quantity)
        if stored < MAX_QUANTITY:
            return stored
    raise Rejected(INVALID_QUANTITY, f"{name} is too large to store (10^20 or more): {short(quantity)}")


def _converted(amount: Decimal, source_unit: str, unit: str, name: str) -> Decimal:
    """`amount` of `source_unit` in `unit`, stored; the maximum applies after conversion."""
    try:
        # The catalog loader only admits convertible units (units.is_convertible).
        converted = units.convert(amount, source_unit, unit)
    except units.UnknownConversion:
        raise
    except ValueError:  # far beyond anything storable once converted
        raise Rejected(
            INVALID_QUANTITY, f"{name} is too large to store once converted to {unit}: {short(amount)}"
        ) from None
    try:
        return _stored(converted, name)
    except Rejected:
        raise Rejected(
            INVALID_QUANTITY, f"{name} is too large to store once converted to {unit}: {short(amount)}"
        ) from None

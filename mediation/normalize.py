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
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import MAX_EMAX, MIN_EMIN, ROUND_FLOOR, Context, Decimal
from functools import lru_cache
from typing import Final, Literal
from zoneinfo import ZoneInfo

import orjson

from mediation import units
from mediation.literals import IntLiteral
from meterline.catalog import Meter
from meterline.reasons import (
    FUTURE_TIMESTAMP,
    INVALID_QUANTITY,
    INVALID_TIMESTAMP,
    MALFORMED,
    MISSING_FIELD,
    NOT_BILLABLE,
    Rejected,
)
from meterline.records import UsageEvent

# Largest quantity a DECIMAL(38,18) column stores is just below 10^20.
MAX_QUANTITY: Final = Decimal(10) ** 20
FUTURE_TOLERANCE: Final = timedelta(hours=24)

# How a format writes its timestamps:
#   iso_or_epoch: ISO-8601 text with an offset, or epoch seconds as a JSON number
#   epoch:        epoch seconds, a JSON number or a numeric string (Lago)
#   cdr:          `YYYY-MM-DD HH:MM:SS`, UTC unless the input names a cdr time zone (Asterisk)
TimestampStyle = Literal["iso_or_epoch", "epoch", "cdr"]

_ONE: Final = units.quantize(Decimal(1))
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# The instants an event may name, bounds included. Nothing earlier than the epoch is
# usage, and the margin below datetime's year 1 keeps every local time (UTC-12..+14) and
# every period computed downstream in range; the upper bound is datetime's last second.
FIRST_INSTANT: Final = _EPOCH
LAST_INSTANT: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_RANGE_TEXT: Final = "1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z"
_LAST_EPOCH: Final = 253_402_300_799  # LAST_INSTANT in epoch seconds
# Flooring context for epoch arithmetic, independent of the thread's decimal context.
_EPOCH_CONTEXT: Final = Context(prec=40, rounding=ROUND_FLOOR, Emin=MIN_EMIN, Emax=MAX_EMAX)
# Range of the integers orjson returns as int (larger ones come back as float).
_INT_RANGE: Final = range(-(2**63), 2**64)

# ASCII only: Python's \d also matches other scripts' digits.
_DECIMAL_TEXT: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# RFC 3339 shape (offset optional here only to say so when it is missing); the
# values are then read by datetime.fromisoformat, which is C-fast.
_ISO_TIME: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.,][0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
_CDR_TIME: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?")


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


# --------------------------------------------------------------------------- fields


def identifier(value: object, name: str) -> str | None:
    """An id-like field (event id, account, meter): a string, or an integer rendered as text."""
    if value is None or type(value) is str:
        return value
    if type(value) is int or type(value) is IntLiteral:
        number = int(value)
        if number in _INT_RANGE:  # orjson reads larger integers as floats: keep both modes alike
            return str(number)
    raise Rejected(MALFORMED, f"{name} must be a string, not {_json_type(value)}")


def payload(value: object, name: str) -> Mapping[str, object]:
    """A nested object (`attributes`, CloudEvents `data`, Lago `properties`); absent means empty."""
    if value is None:
        return {}
    if type(value) is dict:
        return value
    raise Rejected(MALFORMED, f"{name} must be an object, not {_json_type(value)}")


def flatten_attributes(source: Mapping[str, object], name: str, skip: str | None = None) -> dict[str, str]:
    """Attribute values as strings; null values are dropped, nested ones become compact JSON."""
    attributes: dict[str, str] = {}
    for key, value in source.items():
        if key == skip:
            continue
        text = attribute_text(value, name, key)
        if text is not None:
            attributes[key] = text
    return attributes


def attribute_text(value: object, name: str, key: str = "") -> str | None:
    """A JSON value as the string an attribute (or a unique_count value) holds.

    `name` (and `key`, inside an object) name the value in a rejection detail.
    """
    if type(value) is str:
        return value
    if value is None:
        return None
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return str(value)
    if isinstance(value, float | Decimal):
        return _number_text(value)
    try:
        return orjson.dumps(value, default=_json_number, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as exc:  # too deeply nested for orjson (JSONEncodeError is a TypeError)
        raise Rejected(MALFORMED, f"{name}.{key}: {exc}" if key else f"{name}: {exc}") from None


def _number_text(value: float | Decimal) -> str:
    # Render as orjson reading would: an int in 64-bit range, else the shortest float repr.
    number = _json_number(value)
    return str(number) if type(number) is int else repr(number)


def _json_number(value: object) -> int | float:
    if type(value) is IntLiteral and int(value) in _INT_RANGE:
        return int(value)
    if isinstance(value, float | Decimal):
        return float(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _json_type(value: object) -> str:
    if value is True or value is False:
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


_BOUNDED = reprlib.Repr()
_BOUNDED.maxlevel = 3  # a record may nest a value a thousand levels deep: str() would recurse


def _short(value: object) -> str:
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, dict | list):
        text = _BOUNDED.repr(value)
    else:
        text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
        amount = _decimal_text(value, name, INVALID_QUANTITY)
    else:
        raise Rejected(INVALID_QUANTITY, f"{name} is not a number: {_short(value)}")
    if not amount.is_finite():
        raise Rejected(INVALID_QUANTITY, f"{name} is not finite")
    if amount < 0:
        raise Rejected(INVALID_QUANTITY, f"{name} is negative: {_short(value)}")
    return amount


def _stored(quantity: Decimal, name: str) -> Decimal:
    """Rounded to the 18 places kept downstream; below the storable maximum (10^20)."""
    if quantity < MAX_QUANTITY:  # checked first: quantize refuses numbers of 82 digits or more
        stored = units.quantize(quantity)
        if stored < MAX_QUANTITY:
            return stored
    raise Rejected(INVALID_QUANTITY, f"{name} is too large to store (10^20 or more): {_short(quantity)}")


def _converted(amount: Decimal, source_unit: str, unit: str, name: str) -> Decimal:
    """`amount` of `source_unit` in `unit`, stored; the maximum applies after conversion."""
    try:
        # The catalog loader only admits convertible units (units.is_convertible).
        converted = units.convert(amount, source_unit, unit)
    except units.UnknownConversion:
        raise
    except ValueError:  # far beyond anything storable once converted
        raise Rejected(
            INVALID_QUANTITY, f"{name} is too large to store once converted to {unit}: {_short(amount)}"
        ) from None
    try:
        return _stored(converted, name)
    except Rejected:
        raise Rejected(
            INVALID_QUANTITY, f"{name} is too large to store once converted to {unit}: {_short(amount)}"
        ) from None


def _decimal_text(text: str, name: str, reason: str) -> Decimal:
    if _DECIMAL_TEXT.fullmatch(text) is None:
        raise Rejected(reason, f"{name} is not a decimal number: {_short(text)}")
    try:
        return Decimal(text)
    except ArithmeticError:  # exponent beyond what Decimal can hold
        raise Rejected(reason, f"{name} is out of range: {_short(text)}") from None


# --------------------------------------------------------------------------- timestamp


def parse_timestamp(value: object, style: TimestampStyle, name: str, zone: tzinfo | None = None) -> datetime:
    """The instant a record's timestamp names, timezone-aware in UTC (`zone`: see _cdr_time)."""
    if type(value) is str:
        if style == "iso_or_epoch":
            return _iso_time(value, name)
        if style == "cdr":
            return _cdr_time(value, name, zone)
        return _epoch_time(_decimal_text(value, name, INVALID_TIMESTAMP), name)
    if style != "cdr" and isinstance(value, int | float | Decimal) and type(value) is not bool:
        return _epoch_time(value, name)
    raise Rejected(INVALID_TIMESTAMP, f"{name} is not a timestamp: {_short(value)}")


def _iso_time(text: str, name: str) -> datetime:
    match = _ISO_TIME.fullmatch(text)
    if match is None:
        raise Rejected(INVALID_TIMESTAMP, f"{name} is not an ISO-8601 timestamp: {_short(text)}")
    if match.group(1) is None:
        raise Rejected(INVALID_TIMESTAMP, f"{name} has no UTC offset: {_short(text)}")
    try:
        # upper(): RFC 3339 allows a lowercase t and z, fromisoformat does not. Fractions
        # past microseconds are truncated, so an instant never moves into the next second.
        instant = datetime.fromisoformat(text.upper())
        if instant.tzinfo is not UTC:
            instant = instant.astimezone(UTC)
    except (ValueError, OverflowError):  # a field or offset out of range, or an instant outside years 1..9999
        raise Rejected(INVALID_TIMESTAMP, f"{name} is not a valid instant: {_short(text)}") from None
    return _in_range(instant, text, name)


def _cdr_time(text: str, name: str, zone: tzinfo | None) -> datetime:
    """An Asterisk time: UTC (`usegmtime=yes`) when `zone` is None, else local time in `zone`.

    Around a DST change a local time may name two instants or none. Ambiguous (the hour
    repeated when clocks go back): the first one, in summer time (fold=0), so a call
    answered in the repeated hour may be stamped an hour early; Asterisk's CSV keeps no
    offset to tell them apart. Nonexistent (the hour skipped when clocks go forward,
    which Asterisk never writes for a correctly configured zone): read with the offset in
    force before the change, so it lands after the gap, shifted forward by its length
    (02:30 on Paris's spring-forward day is 01:30Z, 03:30 CEST), as zoneinfo does.
    Billable usage is kept either way rather than rejected for a zone setting's sake.
    """
    if _CDR_TIME.fullmatch(text) is None:
        raise Rejected(INVALID_TIMESTAMP, f"{name} is not a `YYYY-MM-DD HH:MM:SS` time: {_short(text)}")
    try:
        local = datetime.fromisoformat(text)
        instant = local.replace(tzinfo=UTC) if zone is None else local.replace(tzinfo=zone).astimezone(UTC)
    except (ValueError, OverflowError):  # a field out of range, or a local time near year 1 or 9999
        raise Rejected(INVALID_TIMESTAMP, f"{name} is not a valid time: {_short(text)}") from None
    return _in_range(instant, text, name)


@lru_cache(maxsize=64)
def cdr_zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (e.g. `Europe/Paris`); ValueError saying why if there is none."""
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # not a key, no such zone, a folder of zones
        raise ValueError(f"{name!r} is not an IANA time zone (such as Europe/Paris or UTC)") from None


def _in_range(instant: datetime, text: str, name: str) -> datetime:
    if FIRST_INSTANT <= instant <= LAST_INSTANT:
        return instant
    raise Rejected(INVALID_TIMESTAMP, f"{name} {_short(text)} is outside {_RANGE_TEXT}")


def _epoch_time(value: int | float | Decimal, name: str) -> datetime:
    try:
        if type(value) is int:
            if 0 <= value <= _LAST_EPOCH:
                return _EPOCH + timedelta(seconds=value)
        else:
            seconds = value if isinstance(value, Decimal) else Decimal(repr(value))
            if seconds.is_finite() and 0 <= seconds <= _LAST_EPOCH:
                # Whole microseconds, floored like truncated ISO fractions.
                micros = seconds.scaleb(6, _EPOCH_CONTEXT).to_integral_value(context=_EPOCH_CONTEXT)
                return _EPOCH + timedelta(microseconds=int(micros))
    except (ArithmeticError, OverflowError):
        pass
    raise Rejected(INVALID_TIMESTAMP, f"{name} is not an epoch time within {_RANGE_TEXT}: {_short(value)}")

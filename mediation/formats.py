"""Readers of the raw usage formats of docs/input-formats.md: one raw record in, one
normalized `UsageEvent` out, or `Rejected` with the reason of its first defect.

    parse_record(raw, fmt, meters, now, max_size, cdr_zone) -> UsageEvent

Each reader only finds a record's fields (rejecting what cannot be read as
`malformed`); :mod:`mediation.normalize` validates them and builds the event.
Pure and per record: no Kafka, no clock. CloudEvents in binary content mode (attributes
in `ce_` record headers) are read by :mod:`mediation.cloudevents`.

Exact numbers: orjson reads JSON fast but into floats, which keep only 15-17
significant digits. A float is exact whenever the literal it came from had at
most 15, so a record is read again with the stdlib parser (numbers as Decimal)
when its quantity or epoch timestamp came out as a float and the record holds a
longer number-like run, or when orjson refuses a number (1e400 overflows a
double; it is an invalid quantity, not malformed JSON).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Final

import orjson

from mediation.literals import IntLiteral
from mediation.normalize import (
    FieldNames,
    RawUsage,
    TimestampStyle,
    attribute_text,
    flatten_attributes,
    identifier,
    payload,
    to_event,
)
from meterline.kernel.catalog import Meter
from meterline.kernel.reasons import MALFORMED, TOO_LARGE, Rejected
from meterline.kernel.records import UsageEvent

DEFAULT_MAX_SIZE: Final = 65_536

# CloudEvents' Kafka protocol binding, binary content mode (read by mediation.cloudevents):
# a record with this header carries its attributes in `ce_` headers, its data as value.
CE_SPECVERSION: Final = "ce_specversion"
CE_CONTENT_TYPE: Final = "content-type"

_JSON_FORMATS: Final = frozenset(("auto", "json", "cloudevents", "lago"))
_LAGO_KEYS: Final = ("transaction_id", "external_customer_id", "external_subscription_id")

_NATIVE: Final = FieldNames("event_id", "account_id", "meter", "timestamp")
_CLOUDEVENT: Final = FieldNames("id", "subject", "type", "time")
_LAGO: Final = FieldNames(
    "transaction_id", "external_customer_id or external_subscription_id", "code", "timestamp"
)
_CDR: Final = FieldNames("uniqueid", "accountcode", "meter", "answer (or start)")

VOICE_METER: Final = "voice"
BILLABLE_DISPOSITION: Final = "ANSWERED"
# cdr-csv columns, in order; an 18th, userfield, may follow.
CDR_COLUMNS: Final = (
    "accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp", "lastdata",
    "start", "answer", "end", "duration", "billsec", "disposition", "amaflags", "uniqueid",
)  # fmt: skip
_CDR_FIELD_COUNTS: Final = (len(CDR_COLUMNS), len(CDR_COLUMNS) + 1)
_ACCOUNTCODE, _DST, _START, _ANSWER, _BILLSEC, _DISPOSITION, _UNIQUEID = (
    CDR_COLUMNS.index(name)
    for name in ("accountcode", "dst", "start", "answer", "billsec", "disposition", "uniqueid")
)

# A literal with 16+ significant digits (more than a double keeps) shows up as a
# run of 16+ digits and dots; translate + `in` finds one in well under a microsecond.
_NUMBER_CHARS: Final = bytes(0x31 if chr(code) in "0123456789." else 0x20 for code in range(256))
_LONG_RUN: Final = b"1" * 16


def parse_record(
    raw: bytes,
    fmt: str,
    meters: Mapping[str, Meter],
    now: datetime,
    max_size: int = DEFAULT_MAX_SIZE,
    cdr_zone: tzinfo | None = None,
) -> UsageEvent:
    """Parse, validate and normalize one raw record of format `fmt` (one of FORMATS).

    The event's quantity is in its meter's unit, rounded to 18 places; its
    enrichment fields are empty. `now` (timezone-aware) is the processing time;
    `cdr_zone` the time zone of Asterisk times (None: UTC).
    Raises `Rejected` — and nothing else, whatever the bytes — for every defect,
    in the order of precedence of docs/input-formats.md.
    """
    if len(raw) > max_size:
        raise Rejected(TOO_LARGE, f"{len(raw)} bytes, more than {max_size}")
    if fmt == "asterisk-csv":
        found = _read_cdr(raw, meters, cdr_zone)
    elif fmt in _JSON_FORMATS:
        found = _read_json(raw, fmt, meters)
    else:  # the format may come from a record header: a bad one is the record's defect
        raise Rejected(MALFORMED, f"unknown format {fmt!r}")
    return to_event(found, now)


def account_of(raw: bytes, fmt: str, max_size: int = DEFAULT_MAX_SIZE) -> str | None:
    """The account a raw record belongs to, or None if it has none readable.

    Producers key raw records with it, so every copy of an event lands on one
    partition and mediation can deduplicate without a repartition hop. A record
    without a readable account is rejected by validation anyway, before dedup.
    """
    if len(raw) > max_size:
        return None
    try:
        if fmt == "asterisk-csv":
            return _read_cdr(raw, {}, None).account_id or None
        if fmt not in _JSON_FORMATS:
            return None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _read_json(raw, fmt, {}).account_id or None  # the exact reader decides
        return _json_account(doc, fmt)
    except Rejected:
        return None


def _json_account(doc: object, fmt: str) -> str | None:
    """The account field of a JSON record, read by the rules of _fields but nothing else.

    Producers run this for every record; a record whose other fields are invalid
    still gets its account as key, which is harmless: validation rejects it anyway.
    """
    if type(doc) is not dict:
        return None
    if fmt == "auto":
        fmt = detect_format(doc)
    if fmt == "cloudevents":
        return identifier(doc.get("subject"), "subject") or None
    if fmt == "lago":
        event = _lago_envelope(doc) or doc
        customer = identifier(event.get("external_customer_id"), "external_customer_id")
        subscription = identifier(event.get("external_subscription_id"), "external_subscription_id")
        return customer or subscription or None
    return identifier(doc.get("account_id"), "account_id") or None


def detect_format(doc: Mapping[str, object]) -> str:
    """The concrete format of a JSON record under `auto`, by its keys."""
    if "specversion" in doc:
        return "cloudevents"
    if any(key in doc for key in _LAGO_KEYS) or _lago_envelope(doc) is not None:
        return "lago"
    return "json"


# --------------------------------------------------------------------------- JSON


def _read_json(raw: bytes, fmt: str, meters: Mapping[str, Meter]) -> RawUsage:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "number" not in str(exc):
            raise Rejected(MALFORMED, f"invalid JSON: {exc}") from None
        # A number orjson cannot hold (1e400 overflows a double) is still JSON: read it exactly.
        return _fields(load_exact(raw), fmt, meters)
    found = _fields(doc, fmt, meters)
    if may_have_lost_digits(found, raw):
        found = _fields(load_exact(raw), fmt, meters)
    return found


def may_have_lost_digits(found: RawUsage, raw: bytes) -> bool:
    # Only a float quantity or epoch timestamp matters, and only if the record holds
    # a literal longer than a double keeps exactly, or a negative one that underflowed
    # to -0.0 (-1e-400 is negative, hence invalid, though orjson reads it as zero).
    quantity = found.quantity
    if type(quantity) is float and quantity == 0.0 and math.copysign(1.0, quantity) < 0:
        return True
    return (type(quantity) is float or type(found.timestamp) is float) and _LONG_RUN in raw.translate(
        _NUMBER_CHARS
    )


def load_exact(raw: bytes) -> object:
    """The record read by the stdlib parser, every number as an exact Decimal."""
    try:
        doc = json.loads(
            raw.decode("utf-8"), parse_int=IntLiteral, parse_float=_float_literal, parse_constant=_no_constant
        )
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise Rejected(MALFORMED, f"invalid JSON: {exc}") from None
    _reject_lone_surrogates(doc)
    return doc


def _float_literal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except ArithmeticError:
        # Exponent beyond Decimal's range: as good as zero, or as good as infinite.
        mantissa, _, exponent = text.lower().partition("e")
        if exponent.startswith("-"):
            return Decimal(0)
        return Decimal("-Infinity" if mantissa.startswith("-") else "Infinity")


def _no_constant(name: str) -> Decimal:
    raise ValueError(f"{name} is not JSON")


def _reject_lone_surrogates(doc: object) -> None:
    # orjson refuses "\ud800"; the stdlib parser accepts it, but such a string cannot
    # be encoded downstream. Iterative, as the document may be deeply nested.
    pending = [doc]
    while pending:
        item = pending.pop()
        if type(item) is dict:
            pending.extend(item)
            pending.extend(item.values())
        elif type(item) is list:
            pending.extend(item)
        elif type(item) is str and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise Rejected(MALFORMED, "invalid JSON: lone surrogate in a string") from None


def _fields(doc: object, fmt: str, meters: Mapping[str, Meter]) -> RawUsage:
    if type(doc) is not dict:
        raise Rejected(MALFORMED, "not a JSON object")
    if fmt == "auto":
        fmt = detect_format(doc)
    if fmt == "cloudevents":
        return _cloudevent(doc, meters)
    if fmt == "lago":
        return _lago(doc, meters)
    return _native(doc, meters)


def _native(doc: Mapping[str, object], meters: Mapping[str, Meter]) -> RawUsage:
    code = identifier(doc.get("meter"), "meter")
    meter = meters.get(code) if code else None
    attributes = flatten_attributes(payload(doc.get("attributes"), "attributes"), "attributes")
    unique = meter is not None and meter.aggregation == "unique_count"
    value_property = meter.value_property if meter is not None else "quantity"
    return RawUsage(
        source_format="json",
        names=_NATIVE,
        event_id=identifier(doc.get("event_id"), "event_id"),
        account_id=identifier(doc.get("account_id"), "account_id"),
        meter=code,
        catalog_meter=meter,
        timestamp=doc.get("timestamp"),
        timestamp_style="iso_or_epoch",
        attributes=attributes,
        # Native records carry the quantity at the top; only unique values live in attributes.
        quantity=None if unique else doc.get("quantity"),
        value=attributes.get(value_property) if unique else None,
        value_field=f"attributes.{value_property}",
    )


def _cloudevent(doc: Mapping[str, object], meters: Mapping[str, Meter]) -> RawUsage:
    code = identifier(doc.get("type"), "type")
    meter = meters.get(code) if code else None
    return measured(
        "cloudevents",
        _CLOUDEVENT,
        event_id=identifier(doc.get("id"), "id"),
        account_id=identifier(doc.get("subject"), "subject"),
        code=code,
        meter=meter,
        timestamp=doc.get("time"),
        style="iso_or_epoch",
        source=payload(doc.get("data"), "data"),
        source_name="data",
    )


def _lago(doc: Mapping[str, object], meters: Mapping[str, Meter]) -> RawUsage:
    envelope = _lago_envelope(doc)
    event = doc if envelope is None else envelope
    code = identifier(event.get("code"), "code")
    meter = meters.get(code) if code else None
    customer = identifier(event.get("external_customer_id"), "external_customer_id")
    subscription = identifier(event.get("external_subscription_id"), "external_subscription_id")
    return measured(
        "lago",
        _LAGO,
        event_id=identifier(event.get("transaction_id"), "transaction_id"),
        account_id=customer or subscription,
        code=code,
        meter=meter,
        # Required here, unlike Lago's API: a pipeline billing by period never invents an event time.
        timestamp=event.get("timestamp"),
        style="epoch",
        source=payload(event.get("properties"), "properties"),
        source_name="properties",
    )


def _lago_envelope(doc: Mapping[str, object]) -> Mapping[str, object] | None:
    # Lago's POST /events body wraps the event: {"event": {...}}.
    if len(doc) == 1:
        inner = doc.get("event")
        if type(inner) is dict:
            return inner
    return None


def measured(
    source_format: str,
    names: FieldNames,
    *,
    event_id: str | None,
    account_id: str | None,
    code: str | None,
    meter: Meter | None,
    timestamp: object,
    style: TimestampStyle,
    source: Mapping[str, object],
    source_name: str,
) -> RawUsage:
    """Fields of a format that reads the quantity (or unique value) from a payload
    at the meter's value_property; the other payload keys become attributes."""
    value_property = meter.value_property if meter is not None else "quantity"
    aggregation = meter.aggregation if meter is not None else None
    field = f"{source_name}.{value_property}"
    consumed = None if aggregation == "count" else value_property
    attributes = flatten_attributes(source, source_name, skip=consumed)
    unique = aggregation == "unique_count"
    return RawUsage(
        source_format=source_format,
        names=names,
        event_id=event_id,
        account_id=account_id,
        meter=code,
        catalog_meter=meter,
        timestamp=timestamp,
        timestamp_style=style,
        attributes=attributes,
        quantity=source.get(value_property) if consumed is not None and not unique else None,
        quantity_field=field,
        value=attribute_text(source.get(value_property), field) if unique else None,
        value_field=field,
    )


# --------------------------------------------------------------------------- Asterisk CSV


def _read_cdr(raw: bytes, meters: Mapping[str, Meter], zone: tzinfo | None) -> RawUsage:
    """One Asterisk cdr-csv Master.csv row (no header)."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
        rows = list(csv.reader((line,), strict=True))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise Rejected(MALFORMED, f"invalid CSV row: {exc}") from None
    if len(rows) != 1:
        raise Rejected(MALFORMED, "not one CSV row")
    row = rows[0]
    if len(row) not in _CDR_FIELD_COUNTS:
        raise Rejected(MALFORMED, f"{len(row)} CSV fields, expected 17 (or 18 with userfield)")

    accountcode, dst, start, answer = row[_ACCOUNTCODE], row[_DST], row[_START], row[_ANSWER]
    billsec, disposition, uniqueid = row[_BILLSEC], row[_DISPOSITION], row[_UNIQUEID]
    meter = meters.get(VOICE_METER)
    aggregation = meter.aggregation if meter is not None else None
    attributes = {"destination": dst, "disposition": disposition}
    value_property = meter.value_property if meter is not None else "quantity"
    unique = aggregation == "unique_count"
    return RawUsage(
        source_format="asterisk-csv",
        names=_CDR,
        event_id=uniqueid,
        account_id=accountcode,
        meter=VOICE_METER,
        catalog_meter=meter,
        timestamp=answer or start,  # unanswered calls have no answer time
        timestamp_style="cdr",
        attributes=attributes,
        quantity=None if unique else billsec,
        quantity_field="billsec",
        value=attributes.get(value_property) if unique else None,
        value_field=value_property,
        refusal=None if disposition == BILLABLE_DISPOSITION else f"disposition {disposition!r}",
        zone=zone,
    )

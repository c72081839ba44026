"""Avro encoding of the inter-stage records, in the Confluent wire framing.

magic byte 0 + 4-byte big-endian schema id (pinned in schemas/registry.json) +
schemaless Avro body. Decimals travel as exact decimal text. The body is written
and read by schemas/binary.py (checked against fastavro in tests/schemas);
`avro_schema()` gives the parsed .avsc files to tools and tests.
"""

from __future__ import annotations

import json
import struct
from datetime import timedelta
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any, Final

import fastavro

from meterline.records import RatedUsage, UsageEvent
from schemas.binary import (
    EPOCH,
    Reader,
    write_map,
    write_optional_string,
    write_repeated_string,
    write_repeated_strings,
    write_string,
    write_timestamp,
)

MEDIATED_SCHEMA_ID: Final = 1
RATED_SCHEMA_ID: Final = 2
_HEADER = struct.Struct(">bI")
_MEDIATED_HEADER = _HEADER.pack(0, MEDIATED_SCHEMA_ID)
_RATED_HEADER = _HEADER.pack(0, RATED_SCHEMA_ID)


class SchemaError(ValueError):
    """A value that is not a framed Avro record of the expected schema."""


@cache
def avro_schema(file: str) -> Any:
    text = resources.files("schemas").joinpath(file).read_text()
    return fastavro.parse_schema(json.loads(text))


def _event_body(event: UsageEvent) -> list[bytes]:
    """The UsageEvent fields in schema order (usage_mediated.avsc)."""
    return [
        write_string(event.event_id),
        write_repeated_string(event.account_id),
        write_repeated_string(event.meter),
        write_string(str(event.quantity)),
        write_timestamp(event.event_time),
        write_map(event.attributes),
        write_optional_string(event.value),
        write_repeated_strings(
            event.source_format, event.contract_id, event.plan_id, event.currency, event.period
        ),
    ]


def _read_event(reader: Reader) -> UsageEvent:
    event_id, account_id, meter, quantity = reader.strings(4)
    event_time = reader.timestamp()
    attributes = reader.map()
    value = reader.optional_string()
    source_format, contract_id, plan_id, currency, period = reader.strings(5)
    return UsageEvent(
        event_id,
        account_id,
        meter,
        Decimal(quantity),
        event_time,
        attributes,
        value,
        source_format,
        contract_id,
        plan_id,
        currency,
        period,
    )


def _reader(data: bytes, schema_id: int) -> Reader:
    if len(data) < 5:
        raise SchemaError("value shorter than the 5-byte Confluent header")
    if data[:5] != _HEADER.pack(0, schema_id):
        magic, found = _HEADER.unpack_from(data)
        raise SchemaError(f"expected schema id {schema_id}, found magic {magic} id {found}")
    return Reader(data, 5)


def encode_usage(event: UsageEvent) -> bytes:
    return b"".join([_MEDIATED_HEADER, *_event_body(event)])


def decode_usage(data: bytes) -> UsageEvent:
    reader = _reader(data, MEDIATED_SCHEMA_ID)
    try:
        event = _read_event(reader)
    except (ValueError, ArithmeticError) as exc:
        raise SchemaError(f"corrupt Avro body: {exc}") from exc
    if reader.pos != len(data):
        raise SchemaError("trailing bytes after the record")
    return event


def _rated_tail(rated: RatedUsage) -> list[bytes]:
    """The fields usage_rated.avsc adds after those of usage_mediated.avsc."""
    return [
        write_repeated_strings(rated.charge_id, rated.model),
        write_string(str(rated.quantity)),
        write_string(str(rated.amount)),
        write_string(str(rated.aggregate_before)),
        write_string(str(rated.aggregate_after)),
        write_repeated_string(rated.invoice_id),
    ]


def encode_rated(rated: RatedUsage) -> bytes:
    return b"".join([_RATED_HEADER, *_event_body(rated.event), *_rated_tail(rated)])


def encode_rated_after(mediated: bytes, rated: RatedUsage) -> bytes:
    """encode_rated for an event still in its mediated encoding.

    usage_rated.avsc starts with the fields of usage_mediated.avsc, and an Avro
    record is its fields one after another, so the mediated body (checked by
    decode_usage to hold exactly one record) is reused as it is.
    """
    return b"".join([_RATED_HEADER, mediated[5:], *_rated_tail(rated)])


def decode_rated(data: bytes) -> RatedUsage:
    reader = _reader(data, RATED_SCHEMA_ID)
    try:
        event = _read_event(reader)
        charge_id, model, quantity, amount, before, after, invoice_id = reader.strings(7)
        rated = RatedUsage(
            event,
            charge_id,
            model,
            Decimal(quantity),
            Decimal(amount),
            Decimal(before),
            Decimal(after),
            invoice_id,
        )
    except (ValueError, ArithmeticError) as exc:
        raise SchemaError(f"corrupt Avro body: {exc}") from exc
    if reader.pos != len(data):
        raise SchemaError("trailing bytes after the record")
    return rated


RATED_FIELDS: Final = (
    "event_id",
    "account_id",
    "meter",
    "quantity",
    "event_time",
    "attributes",
    "value",
    "source_format",
    "contract_id",
    "plan_id",
    "currency",
    "period",
    "charge_id",
    "model",
    "rated_quantity",
    "amount",
    "aggregate_before",
    "aggregate_after",
    "invoice_id",
)
"""Field names of usage_rated.avsc, in order: the positions of decode_rated_row's values."""


def decode_rated_row(data: bytes) -> list[Any]:
    """The rated record's values in RATED_FIELDS order, decimals still text, event_time in
    microseconds since the epoch.

    A list rather than a dict or an object: the sink works column-wise, and this is
    the per-event hot path of consolidation.
    """
    reader = _reader(data, RATED_SCHEMA_ID)
    try:
        row: list[Any] = reader.strings(4)
        row.append(reader.timestamp_micros())
        row.append(reader.map())
        row.append(reader.optional_string())
        row.extend(reader.strings(12))
    except ValueError as exc:
        raise SchemaError(f"corrupt Avro body: {exc}") from exc
    if reader.pos != len(data):
        raise SchemaError("trailing bytes after the record")
    return row


def decode_rated_record(data: bytes) -> dict[str, Any]:
    """The rated record as a plain dict (decimal fields still text), for tools and tests."""
    record = dict(zip(RATED_FIELDS, decode_rated_row(data), strict=True))
    record["event_time"] = EPOCH + timedelta(microseconds=record["event_time"])
    return record

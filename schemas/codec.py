"""Avro encoding of the inter-stage records, in the Confluent wire framing.

magic byte 0 + 4-byte big-endian schema id + schemaless Avro body. The ids are the
ones pinned in schemas/registry.json unless `configure()` was given a Schema
Registry's ids at startup (schemas/registry_client.py); a decoder accepts exactly
the configured id. Decimals travel as the Avro `decimal` logical type (bytes,
precision 38, scale 18), so Kafka Connect, ksqlDB, Flink or DuckDB read numbers.
The body is written and read by schemas/binary.py (checked against fastavro in
tests/schemas); `avro_schema()` gives the parsed .avsc files to tools and tests.
"""

from __future__ import annotations

import json
import struct
from datetime import timedelta
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any, Final, NamedTuple

import fastavro

from meterline.kernel.records import RatedUsage, UsageEvent
from schemas.binary import (
    EPOCH,
    Reader,
    SchemaError,
    decimal_text,
    write_decimal,
    write_map,
    write_optional_string,
    write_repeated_string,
    write_repeated_strings,
    write_string,
    write_timestamp,
)

__all__ = ["SchemaError"]  # defined beside the binary encoding, which raises it too

# Pinned ids (schemas/registry.json). 1 and 2 were the versions with decimals as text,
# whose records this version does not read.
MEDIATED_SCHEMA_ID: Final = 3
RATED_SCHEMA_ID: Final = 4
MEDIATED_FILE: Final = "usage_mediated.avsc"
RATED_FILE: Final = "usage_rated.avsc"
_HEADER = struct.Struct(">bI")


class SchemaIds(NamedTuple):
    """The schema ids written in (and expected from) the framing of each topic's values."""

    mediated: int
    rated: int


PINNED: Final = SchemaIds(MEDIATED_SCHEMA_ID, RATED_SCHEMA_ID)

# Set once at startup by configure(); the hot path only reads the packed headers.
_ids = PINNED
_mediated_header = _HEADER.pack(0, MEDIATED_SCHEMA_ID)
_rated_header = _HEADER.pack(0, RATED_SCHEMA_ID)


def configure(ids: SchemaIds) -> None:
    """Use these ids for every record encoded or decoded from now on (a Schema Registry's,
    or PINNED). Called once at startup, before any record is handled."""
    global _ids, _mediated_header, _rated_header
    for id_ in ids:
        if not 0 <= id_ < 2**32:
            raise ValueError(f"schema id {id_} does not fit the 4-byte framing")
    _ids = SchemaIds(ids[0], ids[1])
    _mediated_header = _HEADER.pack(0, ids[0])
    _rated_header = _HEADER.pack(0, ids[1])


def schema_ids() -> SchemaIds:
    """The ids configure() set (PINNED by default)."""
    return _ids


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
        write_decimal(event.quantity),
        write_timestamp(event.event_time),
        write_map(event.attributes),
        write_optional_string(event.value),
        write_repeated_strings(
            event.source_format, event.contract_id, event.plan_id, event.currency, event.period
        ),
    ]


def _read_event(reader: Reader) -> UsageEvent:
    event_id, account_id, meter = reader.strings(3)
    quantity = reader.decimal()
    event_time = reader.timestamp()
    attributes = reader.map()
    value = reader.optional_string()
    source_format, contract_id, plan_id, currency, period = reader.strings(5)
    return UsageEvent(
        event_id,
        account_id,
        meter,
        quantity,
        event_time,
        attributes,
        value,
        source_format,
        contract_id,
        plan_id,
        currency,
        period,
    )


def _reader(data: bytes, header: bytes) -> Reader:
    if not data.startswith(header):
        if len(data) < 5:
            raise SchemaError("value shorter than the 5-byte Confluent header")
        magic, found = _HEADER.unpack_from(data)
        expected = _HEADER.unpack(header)[1]
        raise SchemaError(f"expected schema id {expected}, found magic {magic} id {found}")
    return Reader(data, 5)


def encode_usage(event: UsageEvent) -> bytes:
    return b"".join([_mediated_header, *_event_body(event)])


def decode_usage(data: bytes) -> UsageEvent:
    reader = _reader(data, _mediated_header)
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
        write_decimal(rated.quantity),
        write_decimal(rated.amount),
        write_decimal(rated.aggregate_before),
        write_decimal(rated.aggregate_after),
        write_repeated_string(rated.invoice_id),
    ]


def encode_rated(rated: RatedUsage) -> bytes:
    return b"".join([_rated_header, *_event_body(rated.event), *_rated_tail(rated)])


def encode_rated_after(mediated: bytes, rated: RatedUsage) -> bytes:
    """encode_rated for an event still in its mediated encoding.

    usage_rated.avsc starts with the fields of usage_mediated.avsc, and an Avro
    record is its fields one after another, so the mediated body (checked by
    decode_usage to hold exactly one record) is reused as it is.
    """
    return b"".join([_rated_header, mediated[5:], *_rated_tail(rated)])


def decode_rated(data: bytes) -> RatedUsage:
    reader = _reader(data, _rated_header)
    try:
        event = _read_event(reader)
        charge_id, model = reader.strings(2)
        quantity, amount, before, after = reader.decimal_texts(4)
        rated = RatedUsage(
            event,
            charge_id,
            model,
            Decimal(quantity),
            Decimal(amount),
            Decimal(before),
            Decimal(after),
            reader.string(),
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
    """The rated record's values in RATED_FIELDS order, decimals as plain text with their 18
    places (binary.decimal_text), event_time in microseconds since the epoch.

    A list rather than a dict or an object: the sink works column-wise, and this is
    the per-event hot path of consolidation.
    """
    reader = _reader(data, _rated_header)
    try:
        row: list[Any] = reader.strings(3)
        row.append(decimal_text(reader.unscaled()))
        row.append(reader.timestamp_micros())
        row.append(reader.map())
        row.append(reader.optional_string())
        row.extend(reader.strings(7))
        row.extend(reader.decimal_texts(4))
        row.append(reader.string())
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

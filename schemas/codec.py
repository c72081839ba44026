"""Avro encoding of the inter-stage records, in the Confluent wire framing.

magic byte 0 + 4-byte big-endian schema id (pinned in schemas/registry.json) +
schemaless Avro body. Decimals travel as exact decimal text.
"""

from __future__ import annotations

import io
import json
import struct
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any, Final

import fastavro

from meterline.records import RatedUsage, UsageEvent

MEDIATED_SCHEMA_ID: Final = 1
RATED_SCHEMA_ID: Final = 2
_HEADER = struct.Struct(">bI")


class SchemaError(ValueError):
    """A value that is not a framed Avro record of the expected schema."""


@cache
def _schema(file: str) -> Any:
    text = resources.files("schemas").joinpath(file).read_text()
    return fastavro.parse_schema(json.loads(text))


def catalog_json_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        resources.files("schemas").joinpath("catalog.schema.json").read_text()
    )
    return loaded


def _encode(schema_id: int, file: str, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    buffer.write(_HEADER.pack(0, schema_id))
    fastavro.schemaless_writer(buffer, _schema(file), record)
    return buffer.getvalue()


def _decode(schema_id: int, file: str, data: bytes) -> dict[str, Any]:
    if len(data) < 5:
        raise SchemaError("value shorter than the 5-byte Confluent header")
    magic, found = _HEADER.unpack_from(data)
    if magic != 0 or found != schema_id:
        raise SchemaError(f"expected schema id {schema_id}, found magic {magic} id {found}")
    try:
        record: Any = fastavro.schemaless_reader(io.BytesIO(data[5:]), _schema(file), None)
    except Exception as exc:  # fastavro raises assorted types on corrupt bodies
        raise SchemaError(f"corrupt Avro body: {exc}") from exc
    if not isinstance(record, dict):
        raise SchemaError("Avro body is not a record")
    return record


def _event_fields(event: UsageEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "account_id": event.account_id,
        "meter": event.meter,
        "quantity": str(event.quantity),
        "event_time": event.event_time,
        "attributes": dict(event.attributes),
        "value": event.value,
        "source_format": event.source_format,
        "contract_id": event.contract_id,
        "plan_id": event.plan_id,
        "currency": event.currency,
        "period": event.period,
    }


def _event_from(record: dict[str, Any]) -> UsageEvent:
    return UsageEvent(
        event_id=record["event_id"],
        account_id=record["account_id"],
        meter=record["meter"],
        quantity=Decimal(record["quantity"]),
        event_time=record["event_time"],
        attributes=record["attributes"],
        value=record["value"],
        source_format=record["source_format"],
        contract_id=record["contract_id"],
        plan_id=record["plan_id"],
        currency=record["currency"],
        period=record["period"],
    )


def encode_usage(event: UsageEvent) -> bytes:
    return _encode(MEDIATED_SCHEMA_ID, "usage_mediated.avsc", _event_fields(event))


def decode_usage(data: bytes) -> UsageEvent:
    return _event_from(_decode(MEDIATED_SCHEMA_ID, "usage_mediated.avsc", data))


def encode_rated(rated: RatedUsage) -> bytes:
    record = _event_fields(rated.event)
    record.update(
        charge_id=rated.charge_id,
        model=rated.model,
        rated_quantity=str(rated.quantity),
        amount=str(rated.amount),
        aggregate_before=str(rated.aggregate_before),
        aggregate_after=str(rated.aggregate_after),
        invoice_id=rated.invoice_id,
    )
    return _encode(RATED_SCHEMA_ID, "usage_rated.avsc", record)


def decode_rated_record(data: bytes) -> dict[str, Any]:
    """The rated record as a plain dict (decimal fields still text): the sink works column-wise."""
    return _decode(RATED_SCHEMA_ID, "usage_rated.avsc", data)


def decode_rated(data: bytes) -> RatedUsage:
    record = decode_rated_record(data)
    return RatedUsage(
        event=_event_from(record),
        charge_id=record["charge_id"],
        model=record["model"],
        quantity=Decimal(record["rated_quantity"]),
        amount=Decimal(record["amount"]),
        aggregate_before=Decimal(record["aggregate_before"]),
        aggregate_after=Decimal(record["aggregate_after"]),
        invoice_id=record["invoice_id"],
    )

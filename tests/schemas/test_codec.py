"""The hand-written Avro codec is byte-compatible with fastavro, both ways."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.records import RatedUsage, UsageEvent
from schemas.binary import write_long, write_string
from schemas.codec import (
    SchemaError,
    avro_schema,
    decode_rated,
    decode_rated_record,
    decode_rated_row,
    decode_usage,
    encode_rated,
    encode_rated_after,
    encode_usage,
)

text = st.text(max_size=80)
decimals = st.decimals(min_value=Decimal("-1e15"), max_value=Decimal("1e15"), places=18, allow_nan=False)
instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=d.microsecond))
events = st.builds(
    UsageEvent,
    event_id=text,
    account_id=text,
    meter=text,
    quantity=decimals,
    event_time=instants,
    attributes=st.dictionaries(text, text, max_size=5),
    value=st.none() | text,
    source_format=text,
    contract_id=text,
    plan_id=text,
    currency=text,
    period=text,
)
rated_usages = st.builds(
    RatedUsage,
    event=events,
    charge_id=text,
    model=text,
    quantity=decimals,
    amount=decimals,
    aggregate_before=decimals,
    aggregate_after=decimals,
    invoice_id=text,
)


def fastavro_body(file: str, data: bytes) -> dict[str, Any]:
    record: dict[str, Any] = fastavro.schemaless_reader(io.BytesIO(data[5:]), avro_schema(file), None)
    return record


def fastavro_bytes(file: str, header: bytes, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, avro_schema(file), record)
    return header + buffer.getvalue()


@given(events)
def test_usage_event_round_trips_and_fastavro_agrees(event: UsageEvent) -> None:
    data = encode_usage(event)
    assert decode_usage(data) == event
    record = fastavro_body("usage_mediated.avsc", data)
    assert record["event_id"] == event.event_id
    assert Decimal(record["quantity"]) == event.quantity
    assert record["event_time"] == event.event_time
    assert record["attributes"] == dict(event.attributes)
    assert record["value"] == event.value
    assert fastavro_bytes("usage_mediated.avsc", data[:5], record) == data


@given(rated_usages)
def test_rated_usage_round_trips_and_fastavro_agrees(rated: RatedUsage) -> None:
    data = encode_rated(rated)
    assert decode_rated(data) == rated
    record = fastavro_body("usage_rated.avsc", data)
    assert Decimal(record["amount"]) == rated.amount
    assert record["invoice_id"] == rated.invoice_id
    assert decode_rated_record(data)["amount"] == record["amount"]
    assert fastavro_bytes("usage_rated.avsc", data[:5], record) == data
    assert encode_rated_after(encode_usage(rated.event), rated) == data


def test_long_values_and_big_maps_use_multi_byte_varints() -> None:
    event = UsageEvent(
        "e" * 300,
        "a",
        "m",
        Decimal("1"),
        datetime(2026, 1, 1, tzinfo=UTC) - timedelta(days=30000),
        {f"k{i}": "v" * i for i in range(70)},
    )
    data = encode_usage(event)
    assert decode_usage(data) == event
    assert fastavro_body("usage_mediated.avsc", data)["attributes"] == dict(event.attributes)


@pytest.mark.parametrize(
    "bad", [b"", b"\x00\x00\x00\x00\x01", b"\x01\x00\x00\x00\x01abc", b"\x00\x00\x00\x00\x02"]
)
def test_corrupt_values_raise_schema_error(bad: bytes) -> None:
    with pytest.raises(SchemaError):
        decode_usage(bad)


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_schema_error(tail: bytes) -> None:
    # Whatever the bytes, decoding gives a record or a SchemaError: never another exception.
    for data, decode, kind in (
        (b"\x00\x00\x00\x00\x01" + tail, decode_usage, UsageEvent),
        (b"\x00\x00\x00\x00\x02" + tail, decode_rated, RatedUsage),
        (b"\x00\x00\x00\x00\x02" + tail, decode_rated_row, list),
    ):
        try:
            decoded: object = decode(data)  # type: ignore[operator]
        except SchemaError as error:
            decoded = error
        assert isinstance(decoded, kind | SchemaError)


def rated_bytes(event_time_micros: int) -> bytes:
    """A rated record written field by field (usage_rated.avsc order), with any event time."""
    strings = ("json", "c", "p", "EUR", "2026-09", "ch", "flat", "1", "2", "0", "1", "INV")
    return b"".join(
        [
            b"\x00\x00\x00\x00\x02",
            *(write_string(value) for value in ("e", "a", "m", "1")),
            write_long(event_time_micros),
            b"\x00",  # no attributes
            b"\x00",  # value: null
            *(write_string(value) for value in strings),
        ]
    )


def test_rated_rows_hold_event_times_as_microseconds_within_datetime_range() -> None:
    micros = (datetime(2026, 9, 10, 1, 2, 3, 4, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        microseconds=1
    )
    row = decode_rated_row(rated_bytes(micros))
    assert row[4] == micros
    assert decode_rated_record(rated_bytes(micros))["event_time"] == datetime(
        2026, 9, 10, 1, 2, 3, 4, tzinfo=UTC
    )
    # The sink takes the number as is, so an instant no datetime can hold is refused here, per record.
    with pytest.raises(SchemaError, match="outside years"):
        decode_rated_row(rated_bytes(2**62))

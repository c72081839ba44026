"""The hand-written Avro codec is byte-compatible with fastavro, both ways."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from importlib import resources
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.kernel.records import RatedUsage, UsageEvent
from schemas.binary import write_decimal, write_long, write_string
from schemas.codec import (
    MEDIATED_FILE,
    PINNED,
    RATED_FIELDS,
    RATED_FILE,
    SchemaError,
    SchemaIds,
    avro_schema,
    configure,
    decode_rated,
    decode_rated_record,
    decode_rated_row,
    decode_usage,
    encode_rated,
    encode_rated_after,
    encode_usage,
    schema_ids,
)

WIDE = Context(prec=60)
MEDIATED_HEADER = struct.pack(">bI", 0, PINNED.mediated)
RATED_HEADER = struct.pack(">bI", 0, PINNED.rated)

text = st.text(max_size=80)
# Any exact value the pipeline carries: below 10^20 in absolute value, at most 18 places.
decimals = st.integers(0, 18).flatmap(
    lambda places: st.integers(-(10 ** (20 + places)) + 1, 10 ** (20 + places) - 1).map(
        lambda unscaled: Decimal(unscaled).scaleb(-places, WIDE)
    )
)
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


@pytest.fixture(autouse=True)
def pinned_ids() -> Iterator[None]:
    """Every test starts and ends with the pinned ids, whatever it configures."""
    configure(PINNED)
    yield
    configure(PINNED)


def fastavro_bytes(file: str, header: bytes, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, avro_schema(file), record)
    return header + buffer.getvalue()


@given(events)
def test_usage_event_round_trips_and_fastavro_agrees(event: UsageEvent) -> None:
    data = encode_usage(event)
    decoded = decode_usage(data)
    assert decoded == event
    assert decoded.quantity.as_tuple().exponent == -18  # decimal(38, 18), as fastavro reads it
    record = fastavro_body(MEDIATED_FILE, data)
    assert record["event_id"] == event.event_id
    assert record["quantity"] == event.quantity
    assert record["event_time"] == event.event_time
    assert record["attributes"] == dict(event.attributes)
    assert record["value"] == event.value
    assert fastavro_bytes(MEDIATED_FILE, data[:5], record) == data


@given(rated_usages)
def test_rated_usage_round_trips_and_fastavro_agrees(rated: RatedUsage) -> None:
    data = encode_rated(rated)
    assert decode_rated(data) == rated
    record = fastavro_body(RATED_FILE, data)
    assert record["amount"] == rated.amount
    assert record["invoice_id"] == rated.invoice_id
    assert decode_rated_record(data)["amount"] == format(record["amount"], "f")
    assert fastavro_bytes(RATED_FILE, data[:5], record) == data
    assert encode_rated_after(encode_usage(rated.event), rated) == data
    # The row gives consolidation plain text with the digits of the Decimals read back.
    row, back = decode_rated_row(data), decode_rated(data)
    for name, value in (
        ("quantity", back.event.quantity),
        ("rated_quantity", back.quantity),
        ("amount", back.amount),
        ("aggregate_before", back.aggregate_before),
        ("aggregate_after", back.aggregate_after),
    ):
        assert row[RATED_FIELDS.index(name)] == format(value, "f") == format(record[name], "f")
        assert Decimal(row[RATED_FIELDS.index(name)]).as_tuple() == value.as_tuple()


@given(decimals, decimals)
def test_decimals_round_trip_exactly_and_fastavro_reads_and_writes_the_same_bytes(
    quantity: Decimal, amount: Decimal
) -> None:
    rated = RatedUsage(
        UsageEvent("e", "a", "m", quantity, datetime(2026, 9, 1, tzinfo=UTC), {}),
        "ch", "flat", quantity, amount, amount.copy_negate(), amount, "INV",
    )  # fmt: skip
    data = encode_rated(rated)
    back = decode_rated(data)
    assert (back.event.quantity, back.quantity, back.amount, back.aggregate_before, back.aggregate_after) == (
        quantity, quantity, amount, amount.copy_negate(), amount,
    )  # fmt: skip
    # fastavro writes the same record (from the original Decimals) to the same bytes...
    record = {
        "event_id": "e", "account_id": "a", "meter": "m", "quantity": quantity,
        "event_time": datetime(2026, 9, 1, tzinfo=UTC), "attributes": {}, "value": None,
        "source_format": "json", "contract_id": "", "plan_id": "", "currency": "", "period": "",
        "charge_id": "ch", "model": "flat", "rated_quantity": quantity, "amount": amount,
        "aggregate_before": amount.copy_negate(), "aggregate_after": amount, "invoice_id": "INV",
    }  # fmt: skip
    assert fastavro_bytes(RATED_FILE, RATED_HEADER, record) == data
    # ...and reads the hand-written bytes back to the same numbers.
    read = fastavro_body(RATED_FILE, data)
    assert (read["quantity"], read["amount"]) == (quantity, amount)
    assert read["aggregate_before"] == amount.copy_negate()


@pytest.mark.parametrize(
    ("value", "unscaled"),
    [
        ("0", 0),
        ("-0", 0),
        ("1E-18", 1),
        ("-1E-18", -1),
        ("1.5", 15 * 10**17),
        ("0.500000000000000000", 5 * 10**17),  # exponent -18, the usual case
        ("-12.250000000000000000", -1225 * 10**16),
        ("0.000000000000000000", 0),
        ("0.000001000000000000", 10**12),
        ("0.000000100000000000", 10**11),  # written 1.00000000000E-7
        ("12E+3", 12 * 10**21),
        ("99999999999999999999.999999999999999999", 10**38 - 1),
        ("-99999999999999999999.999999999999999999", -(10**38) + 1),
        ("0.1000000000000000000000000", 10**17),  # places past 18 that are zeros lose nothing
    ],
)
def test_write_decimal_carries_the_unscaled_integer(value: str, unscaled: int) -> None:
    data = write_decimal(Decimal(value))
    size = (abs(unscaled).bit_length() + 8) // 8
    assert data == write_long(size) + unscaled.to_bytes(size, "big", signed=True)


@pytest.mark.parametrize(
    "value",
    [
        "1E-19",
        "0.1234567890123456789",
        "1E+20",
        "-1E+20",
        "NaN",
        "sNaN",
        "Infinity",
        "1E+999999",
        "100000000000000000000.000000000000000000",
        "-100000000000000000000.000000000000000000",
    ],
)
def test_decimals_that_would_need_rounding_or_do_not_fit_are_refused(value: str) -> None:
    event = UsageEvent("e", "a", "m", Decimal(value), datetime(2026, 9, 1, tzinfo=UTC), {})
    with pytest.raises(SchemaError, match=r"does not fit decimal\(38, 18\) exactly"):
        encode_usage(event)


def mediated_with_quantity_bytes(quantity: bytes) -> bytes:
    return b"".join(
        [
            MEDIATED_HEADER,
            *(write_string(value) for value in ("e", "a", "m")),
            quantity,
            write_long(0),
            b"\x00\x00",
            *(write_string(value) for value in ("json", "c", "p", "EUR", "2026-09")),
        ]
    )


def test_decimals_past_38_digits_are_read_for_the_consumer_to_refuse_and_32_bytes_is_the_limit() -> None:
    fits = (10**38 - 1).to_bytes(16, "big", signed=True)
    assert decode_usage(mediated_with_quantity_bytes(write_long(16) + fits)).quantity == Decimal(
        "99999999999999999999.999999999999999999"
    )
    # As Avro's Java and fastavro readers do; consolidation refuses the text (DECIMAL(38,18)).
    wide = (-(10**38)).to_bytes(17, "big", signed=True)
    assert decode_usage(mediated_with_quantity_bytes(write_long(17) + wide)).quantity == Decimal("-1E+20")
    widest = (10**76 - 1).to_bytes(32, "big", signed=True)
    read = decode_usage(mediated_with_quantity_bytes(write_long(32) + widest)).quantity
    assert read == Decimal(f"{10**76 - 1}E-18")
    with pytest.raises(SchemaError, match="33 bytes"):
        decode_usage(mediated_with_quantity_bytes(write_long(33) + bytes(33)))
    with pytest.raises(SchemaError, match="-2 bytes"):
        decode_usage(mediated_with_quantity_bytes(write_long(-2)))
    # Readers take any length: Java's minimal two's complement (-128 in one byte) too.
    assert decode_usage(mediated_with_quantity_bytes(b"\x02\x80")).quantity == Decimal("-128E-18")


def test_configured_ids_frame_the_records_and_only_they_decode() -> None:
    event = UsageEvent("e", "a", "m", Decimal("2.5"), datetime(2026, 9, 1, tzinfo=UTC), {})
    rated = RatedUsage(event, "ch", "flat", Decimal("2.5"), Decimal("0.25"), Decimal(0), Decimal("2.5"), "I")
    pinned = encode_usage(event)
    configure(SchemaIds(100001, 100002))
    assert schema_ids() == SchemaIds(100001, 100002)
    mediated = encode_usage(event)
    assert mediated[:5] == b"\x00" + (100001).to_bytes(4, "big")
    assert mediated[5:] == pinned[5:]
    assert decode_usage(mediated) == event
    assert encode_rated(rated)[:5] == b"\x00" + (100002).to_bytes(4, "big")
    assert encode_rated_after(mediated, rated) == encode_rated(rated)
    assert decode_rated(encode_rated(rated)) == rated
    with pytest.raises(SchemaError, match=f"expected schema id 100001, found magic 0 id {PINNED.mediated}"):
        decode_usage(pinned)
    with pytest.raises(ValueError, match="4-byte"):
        configure(SchemaIds(2**32, 1))
    configure(PINNED)
    assert decode_usage(pinned) == event


def test_registry_file_pins_the_codec_ids_to_the_schema_files() -> None:
    pinned = json.loads(resources.files("schemas").joinpath("registry.json").read_text())["schemas"]
    assert pinned == {
        str(PINNED.mediated): {"file": MEDIATED_FILE, "subject": "meterline.usage.mediated-value"},
        str(PINNED.rated): {"file": RATED_FILE, "subject": "meterline.usage.rated-value"},
    }


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
    assert fastavro_body(MEDIATED_FILE, data)["attributes"] == dict(event.attributes)


@pytest.mark.parametrize(
    "bad",
    [b"", MEDIATED_HEADER, b"\x01" + MEDIATED_HEADER[1:] + b"abc", RATED_HEADER, b"\x00\x00\x00\x00\x01"],
)
def test_corrupt_values_raise_schema_error(bad: bytes) -> None:
    with pytest.raises(SchemaError):
        decode_usage(bad)


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_schema_error(tail: bytes) -> None:
    # Whatever the bytes, decoding gives a record or a SchemaError: never another exception.
    for data, decode, kind in (
        (MEDIATED_HEADER + tail, decode_usage, UsageEvent),
        (RATED_HEADER + tail, decode_rated, RatedUsage),
        (RATED_HEADER + tail, decode_rated_row, list),
    ):
        try:
            decoded: object = decode(data)  # type: ignore[operator]
        except SchemaError as error:
            decoded = error
        assert isinstance(decoded, kind | SchemaError)


def rated_bytes(event_time_micros: int) -> bytes:
    """A rated record written field by field (usage_rated.avsc order), with any event time."""
    strings = ("json", "c", "p", "EUR", "2026-09", "ch", "flat")
    return b"".join(
        [
            RATED_HEADER,
            *(write_string(value) for value in ("e", "a", "m")),
            write_decimal(Decimal(1)),
            write_long(event_time_micros),
            b"\x00",  # no attributes
            b"\x00",  # value: null
            *(write_string(value) for value in strings),
            *(write_decimal(Decimal(value)) for value in ("1", "2", "0", "1")),
            write_string("INV"),
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

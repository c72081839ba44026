"""Parsing, normalization and validation of raw usage records (docs/input-formats.md)."""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediation.formats import account_of, detect_format, parse_record
from meterline.kernel.catalog import Meter
from meterline.kernel.headers import FORMATS
from meterline.kernel.reasons import (
    FUTURE_TIMESTAMP,
    INVALID_QUANTITY,
    INVALID_TIMESTAMP,
    MALFORMED,
    MISSING_FIELD,
    NOT_BILLABLE,
    REASONS,
    TOO_LARGE,
    VALIDATION_REASONS,
    Rejected,
)
from meterline.kernel.records import UsageEvent

DATA = Path(__file__).resolve().parent.parent / "data"
NOW = datetime(2026, 3, 31, tzinfo=UTC)

# The meters of the docs/input-formats.md example catalog.
METERS: dict[str, Meter] = {
    meter.code: meter
    for meter in (
        Meter("api_calls", "call", "sum"),
        Meter("storage", "GB-hour", "sum", value_property="gb_hours"),
        Meter("voice", "minute", "sum", source_unit="second"),
        Meter("active_users", "user", "unique_count", value_property="user_id"),
        Meter("sms", "message", "count"),
    )
}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def event(
    event_id: str,
    meter: str,
    quantity: str,
    time: str,
    attributes: Mapping[str, str] | None = None,
    value: str | None = None,
    source_format: str = "json",
) -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        account_id="acme",
        meter=meter,
        quantity=Decimal(quantity),
        event_time=at(time),
        attributes=dict(attributes or {}),
        value=value,
        source_format=source_format,
    )


def parse(record: Mapping[str, Any] | bytes | str, fmt: str = "auto", **kwargs: Any) -> UsageEvent:
    if isinstance(record, Mapping):
        raw = json.dumps(record).encode()
    elif isinstance(record, str):
        raw = record.encode()
    else:
        raw = record
    return parse_record(raw, fmt, METERS, kwargs.pop("now", NOW), **kwargs)


def rejection(record: Mapping[str, Any] | bytes | str, fmt: str = "auto", **kwargs: Any) -> Rejected:
    with pytest.raises(Rejected) as caught:
        parse(record, fmt, **kwargs)
    return caught.value


def lines(name: str) -> list[bytes]:
    return (DATA / name).read_bytes().splitlines()


def native(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": "e-1",
        "account_id": "acme",
        "meter": "api_calls",
        "quantity": 5,
        "timestamp": "2026-03-02T10:00:00Z",
    }
    record.update(fields)
    return {key: value for key, value in record.items() if value is not ...}


def cloudevent(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "specversion": "1.0",
        "id": "ce-1",
        "source": "gateway",
        "type": "api_calls",
        "subject": "acme",
        "time": "2026-03-02T10:00:00Z",
        "data": {"quantity": 5},
    }
    record.update(fields)
    return {key: value for key, value in record.items() if value is not ...}


def lago(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "transaction_id": "tx-1",
        "external_customer_id": "acme",
        "code": "api_calls",
        "timestamp": 1772445600,
        "properties": {"quantity": 5},
    }
    record.update(fields)
    return {key: value for key, value in record.items() if value is not ...}


CDR_FIELDS = (
    "accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp", "lastdata",
    "start", "answer", "end", "duration", "billsec", "disposition", "amaflags", "uniqueid",
)  # fmt: skip


def cdr(**fields: str) -> str:
    row = {
        "accountcode": "acme", "src": "1001", "dst": "4420794600123", "dcontext": "from-internal",
        "clid": '"Alice" <1001>', "channel": "PJSIP/1001-01", "dstchannel": "PJSIP/trunk-02",
        "lastapp": "Dial", "lastdata": "PJSIP/4420794600123@trunk,60", "start": "2026-03-02 09:15:01",
        "answer": "2026-03-02 09:15:05", "end": "2026-03-02 09:17:10", "duration": "129",
        "billsec": "125", "disposition": "ANSWERED", "amaflags": "DOCUMENTATION", "uniqueid": "1772442901.1",
    }  # fmt: skip
    row.update(fields)
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n").writerow([row[name] for name in CDR_FIELDS])
    return out.getvalue()


# --------------------------------------------------------------------------- sample files


def test_native_sample_file() -> None:
    expected = [
        event(
            "evt-0001",
            "api_calls",
            "120",
            "2026-03-02T09:15:01Z",
            {"endpoint": "/v1/search", "method": "GET"},
        ),
        event("evt-0002", "api_calls", "3", "2026-03-02T10:00:00Z"),
        event("evt-0003", "storage", "12.5", "2026-03-02T11:00:00.25Z", {"region": "eu-west"}),
        event("evt-0004", "storage", "0.123456789012345678", "2026-03-02T12:00:00.5Z", {"region": "us-east"}),
        event(
            "evt-0005",
            "voice",
            "2.083333333333333333",
            "2026-03-02T13:00:00Z",
            {"destination": "447700900123"},
        ),
        event(
            "evt-0006", "active_users", "1", "2026-03-02T14:00:00.123456Z", {"user_id": "u-1"}, value="u-1"
        ),
        event(
            "evt-0007", "active_users", "1", "2026-03-02T15:00:00Z", {"user_id": "42", "seat": "admin"}, "42"
        ),
        event("evt-0008", "sms", "1", "2026-03-03T11:30:00Z", {"destination": "33612345678"}),
    ]
    for fmt in ("json", "auto"):
        assert [parse(raw, fmt) for raw in lines("events.jsonl")] == expected


def test_cloudevents_sample_file() -> None:
    ce = functools.partial(event, source_format="cloudevents")

    expected = [
        ce(
            "ce-0001",
            "api_calls",
            "3",
            "2026-03-02T09:15:01.001Z",
            {"endpoint": "/v1/search", "method": "GET"},
        ),
        ce("ce-0002", "storage", "40.25", "2026-03-02T10:00:00Z", {"region": "eu-central"}),
        ce(
            "ce-0003", "voice", "1.016666666666666667", "2026-03-02T12:00:00Z", {"destination": "33142685300"}
        ),
        ce("ce-0004", "active_users", "1", "2026-03-02T13:00:00.5Z", {"plan": "pro"}, value="u-7"),
        ce("ce-0005", "sms", "1", "2026-03-03T11:30:00Z", {"destination": "447700900456"}),
    ]
    for fmt in ("cloudevents", "auto"):
        assert [parse(raw, fmt) for raw in lines("cloudevents.jsonl")] == expected


def test_lago_sample_file() -> None:
    tx = functools.partial(event, source_format="lago")

    expected = [
        tx("tx-0001", "api_calls", "250", "2026-03-02T10:00:00Z", {"endpoint": "/v1/orders"}),
        tx("tx-0002", "storage", "7.5", "2026-03-02T11:00:00.5Z", {"region": "eu-central"}),
        tx("tx-0003", "active_users", "1", "2026-03-02T12:00:00Z", value="u-9"),
        tx("tx-0004", "sms", "1", "2026-03-02T13:00:00Z"),  # in Lago's {"event": {...}} envelope
        tx("tx-0005", "voice", "1.5", "2026-03-02T14:00:00Z", {"destination": "4420794600123"}),
    ]
    for fmt in ("lago", "auto"):
        assert [parse(raw, fmt) for raw in lines("lago.jsonl")] == expected


def test_asterisk_sample_file() -> None:
    def call(event_id: str, minutes: str, answer: str, destination: str) -> UsageEvent:
        return event(
            event_id,
            "voice",
            minutes,
            answer,
            {"destination": destination, "disposition": "ANSWERED"},
            source_format="asterisk-csv",
        )

    outcomes: list[UsageEvent | str] = []
    for raw in lines("Master.csv"):
        try:
            outcomes.append(parse(raw, "asterisk-csv"))
        except Rejected as rejected:
            outcomes.append(f"{rejected.reason}: {rejected.detail}")
    assert outcomes == [
        call("1772442901.1", "2.083333333333333333", "2026-03-02T09:15:05Z", "4420794600123"),
        call("1772487600.3", "25", "2026-03-02T21:40:12Z", "33142685300"),  # with a userfield
        "not_billable: disposition 'BUSY'",
        "not_billable: disposition 'NO ANSWER'",
        "not_billable: disposition 'FAILED'",
        call("1772701198.10", "0.016666666666666667", "2026-03-05T08:59:59Z", "4420794600123"),
    ]


def test_sample_records_are_consistent_with_the_catalog() -> None:
    for name in ("events.jsonl", "cloudevents.jsonl", "lago.jsonl"):
        for raw in lines(name):
            parsed = parse(raw)
            assert parsed.account_id == "acme"
            assert parsed.meter in METERS


# --------------------------------------------------------------------------- auto detection


@pytest.mark.parametrize(
    ("doc", "fmt"),
    [
        ({"specversion": "1.0"}, "cloudevents"),
        ({"specversion": "1.0", "transaction_id": "t"}, "cloudevents"),  # specversion wins
        ({"transaction_id": "t"}, "lago"),
        ({"external_customer_id": "c"}, "lago"),
        ({"external_subscription_id": "s"}, "lago"),
        ({"event": {"code": "sms"}}, "lago"),  # Lago's API envelope
        ({"event": "x"}, "json"),
        ({"event_id": "e", "id": "i"}, "json"),
        ({}, "json"),
    ],
)
def test_detect_format(doc: dict[str, object], fmt: str) -> None:
    assert detect_format(doc) == fmt


def test_auto_detects_each_record_on_its_own() -> None:
    mixed = [lines("events.jsonl")[0], lines("cloudevents.jsonl")[0], lines("lago.jsonl")[0]]
    assert [parse(raw).source_format for raw in mixed] == ["json", "cloudevents", "lago"]


def test_auto_does_not_guess_csv() -> None:
    assert rejection(cdr(), "auto").reason == MALFORMED


def test_explicit_format_reads_by_that_format_only() -> None:
    # A CloudEvent read as native JSON lacks the native fields.
    assert rejection(cloudevent(), "json").reason == MISSING_FIELD
    assert rejection(native(), "lago").reason == MISSING_FIELD


def test_unknown_format_is_the_records_defect() -> None:
    assert rejection(native(), "xml").reason == MALFORMED


def test_formats_tuple() -> None:
    assert FORMATS == ("auto", "json", "cloudevents", "lago", "asterisk-csv")


# --------------------------------------------------------------------------- reason codes


def test_too_large() -> None:
    raw = json.dumps(native()).encode()
    assert parse(raw, max_size=len(raw)).event_id == "e-1"
    assert rejection(raw, max_size=len(raw) - 1).reason == TOO_LARGE
    assert rejection(b"x" * 65_537, "asterisk-csv").reason == TOO_LARGE  # default limit


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"\xff\xfe{}",
        b'{"event_id": "\xc3\x28"}',  # invalid UTF-8
        b"\x00\x01\x02garbage",
        b"{not json}",
        b'{"event_id": "e-1",}',
        b"[1, 2, 3]",
        b'"a string"',
        b"42",
        b"null",
        b"[" * 5000 + b"]" * 5000,  # nested too deep
        b'{"a": ' * 2000 + b"1" + b"}" * 2000,
        b'{"event_id": "e", "quantity": NaN}',  # not JSON, whatever Python's json.dumps writes
        b'{"event_id": "e", "quantity": Infinity}',
        b'{"event_id": "\\ud800"}',  # lone surrogate
        b'{"quantity": 1e400, "event_id": "\\udc00"}',  # ... also on the exact (stdlib) path
        b'{"quantity": 1e400,,}',
        b"\xef\xbb\xbf" + json.dumps(native()).encode(),  # BOM
        json.dumps(native()).encode() + b"\n" + json.dumps(native()).encode(),  # two records
    ],
)
def test_malformed_json(raw: bytes) -> None:
    for fmt in ("auto", "json", "cloudevents", "lago"):
        assert rejection(raw, fmt).reason == MALFORMED


@pytest.mark.parametrize(
    "record",
    [
        native(event_id=["e"]),
        native(account_id={"id": "acme"}),
        native(meter=True),
        native(event_id=1.5),
        native(event_id=2**70),  # beyond 64 bits orjson reads a float: refused in both reading modes
        native(attributes="region=eu"),
        native(attributes=[["region", "eu"]]),
        native(attributes={"deep": json.loads("[" * 300 + "]" * 300)}),
        cloudevent(data="quantity=5"),
        cloudevent(subject=7.0),
        lago(properties=[1]),
        lago(external_subscription_id={"x": 1}),
    ],
)
def test_malformed_fields(record: dict[str, Any]) -> None:
    assert rejection(record).reason == MALFORMED


@pytest.mark.parametrize(
    "row",
    [
        '"acme","1001"\n',
        cdr().rstrip("\n") + ',"userfield","extra"\n',  # 19 fields
        cdr().replace('"ANSWERED"', '"ANS"WERED"'),  # bad quoting
        '"acme,"1001\n',
        "",
        "\n",
        "a,b\nc,d\n",  # two rows
        b"\xff\xfe".decode("latin-1"),
    ],
)
def test_malformed_csv(row: str) -> None:
    assert rejection(row, "asterisk-csv").reason == MALFORMED


def test_malformed_csv_bytes() -> None:
    assert rejection(b'"acme",\xff' + b",x" * 15, "asterisk-csv").reason == MALFORMED  # invalid UTF-8


def test_csv_accepts_17_or_18_fields_and_crlf() -> None:
    assert parse(cdr(), "asterisk-csv").event_id == "1772442901.1"
    assert parse(cdr().rstrip("\n") + ',"userfield"\r\n', "asterisk-csv").event_id == "1772442901.1"
    unquoted = ",".join(
        ["acme", "1001", "4420794600123"]
        + ["x"] * 6
        + [
            "2026-03-02 09:15:01",
            "2026-03-02 09:15:05",
            "2026-03-02 09:17:10",
            "129",
            "60",
            "ANSWERED",
            "DOCUMENTATION",
            "u-1",
        ]
    )
    assert parse(unquoted, "asterisk-csv").quantity == Decimal(1)


@pytest.mark.parametrize(
    ("record", "missing"),
    [
        (native(event_id=...), "event_id"),
        (native(event_id=""), "event_id"),
        (native(event_id=None), "event_id"),
        (native(account_id=...), "account_id"),
        (native(meter=""), "meter"),
        (native(timestamp=...), "timestamp"),
        (native(timestamp=""), "timestamp"),
        (native(quantity=...), "quantity"),
        (native(quantity=""), "quantity"),
        (native(quantity=None), "quantity"),
        (native(meter="active_users", attributes={"seat": "x"}), "attributes.user_id"),
        (native(meter="active_users", attributes={"user_id": ""}), "attributes.user_id"),
        (native(meter="active_users", attributes={"user_id": None}), "attributes.user_id"),
        (cloudevent(id=...), "id"),
        (cloudevent(subject=""), "subject"),
        (cloudevent(type=...), "type"),
        (cloudevent(time=...), "time"),
        (cloudevent(data=...), "data.quantity"),
        (cloudevent(type="storage", data={"quantity": 5}), "data.gb_hours"),
        (cloudevent(type="active_users", data={"quantity": 5}), "data.user_id"),
        (lago(transaction_id=...), "transaction_id"),
        (lago(external_customer_id=..., external_subscription_id=""), "external_customer_id"),
        (lago(code=...), "code"),
        (lago(timestamp=...), "timestamp"),  # Lago's API would default it to now; a billing pipeline must not
        (lago(properties={}), "properties.quantity"),
        (lago(code="storage"), "properties.gb_hours"),
    ],
)
def test_missing_field(record: dict[str, Any], missing: str) -> None:
    rejected = rejection(record)
    assert rejected.reason == MISSING_FIELD
    assert rejected.detail.startswith(missing)


@pytest.mark.parametrize(
    ("row", "missing"),
    [
        (cdr(accountcode=""), "accountcode"),
        (cdr(uniqueid=""), "uniqueid"),
        (cdr(billsec=""), "billsec"),
        (cdr(answer="", start=""), "answer"),
        (cdr(accountcode="", disposition="BUSY"), "accountcode"),  # missing_field before not_billable
    ],
)
def test_missing_field_csv(row: str, missing: str) -> None:
    rejected = rejection(row, "asterisk-csv")
    assert rejected.reason == MISSING_FIELD
    assert rejected.detail.startswith(missing)


def test_optional_fields() -> None:
    # Count meters count events; their quantity is neither needed nor read.
    assert parse(native(meter="sms", quantity=...)).quantity == 1
    assert parse(native(meter="sms", quantity="not a number")).quantity == 1
    assert parse(cloudevent(type="sms", data=...)).quantity == 1
    assert parse(lago(code="sms", properties=...)).quantity == 1
    # unique_count: one per event, the counted value carries the identity.
    counted = parse(lago(code="active_users", properties={"user_id": 1234, "quantity": "x"}))
    assert (counted.quantity, counted.value, counted.attributes) == (Decimal(1), "1234", {"quantity": "x"})
    # A record with no attributes.
    assert parse(native(attributes=None)).attributes == {}
    # external_subscription_id stands in for external_customer_id.
    assert parse(lago(external_customer_id=..., external_subscription_id="acme")).account_id == "acme"


@pytest.mark.parametrize("disposition", ["BUSY", "NO ANSWER", "FAILED", "CONGESTION", "answered", ""])
def test_not_billable(disposition: str) -> None:
    rejected = rejection(cdr(disposition=disposition, answer="", billsec="0"), "asterisk-csv")
    assert rejected.reason == NOT_BILLABLE
    assert rejected.detail == f"disposition {disposition!r}"


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        (native(timestamp="2026-03-02T10:00:00"), "auto"),  # no offset
        (native(timestamp="2026-03-02 10:00:00"), "auto"),
        (native(timestamp="2026-03-02"), "auto"),
        (native(timestamp="yesterday"), "auto"),
        (native(timestamp="2026-03-02T10:00:00+0100"), "auto"),  # ±HH:MM only
        (native(timestamp="2026-03-02T24:00:00Z"), "auto"),
        (native(timestamp="2026-02-30T10:00:00Z"), "auto"),
        (native(timestamp="2026-03-02T10:00:00+24:00"), "auto"),
        (native(timestamp="0001-01-01T00:00:00+01:00"), "auto"),  # before year 1 in UTC
        (native(timestamp="２０２６-03-02T10:00:00Z"), "auto"),  # non-ASCII digits
        (native(timestamp="1772445600"), "auto"),  # epoch must be a JSON number in native JSON
        (native(timestamp=True), "auto"),
        (native(timestamp=[2026, 3, 2]), "auto"),
        (native(timestamp=10**12 * 300), "auto"),  # beyond year 9999
        (native(timestamp=-(10**12)), "auto"),
        (native(timestamp=10**30), "auto"),  # big int: the exact path
        ('{"event_id":"e","account_id":"a","meter":"api_calls","quantity":1,"timestamp":1e400}', "auto"),
        (
            '{"event_id":"e","account_id":"a","meter":"api_calls","quantity":1,"timestamp":-1e999999999999999999999}',
            "auto",
        ),
        (cloudevent(time="2026-03-02T10:00:00"), "auto"),
        (lago(timestamp="2026-03-02T10:00:00Z"), "auto"),  # Lago: epoch seconds only
        (lago(timestamp="abc"), "auto"),
        (lago(timestamp="1e999999999999999999999"), "auto"),
        (lago(timestamp={"s": 1}), "auto"),
        (cdr(answer="2026-03-02T09:15:05Z"), "asterisk-csv"),
        (cdr(answer="02/03/2026 09:15:05"), "asterisk-csv"),
        (cdr(answer="2026-13-02 09:15:05"), "asterisk-csv"),
    ],
)
def test_invalid_timestamp(record: dict[str, Any] | str, fmt: str) -> None:
    assert rejection(record, fmt).reason == INVALID_TIMESTAMP


def test_no_offset_is_named_in_the_detail() -> None:
    assert "no UTC offset" in rejection(native(timestamp="2026-03-02T10:00:00.5")).detail


def test_future_timestamp() -> None:
    limit = NOW + timedelta(hours=24)
    assert parse(native(timestamp=limit.isoformat())).event_time == limit
    assert rejection(native(timestamp=(limit + timedelta(seconds=1)).isoformat())).reason == FUTURE_TIMESTAMP
    assert rejection(native(timestamp=int(limit.timestamp()) + 1)).reason == FUTURE_TIMESTAMP
    assert rejection(lago(timestamp=str(int(limit.timestamp()) + 1))).reason == FUTURE_TIMESTAMP
    assert rejection(cdr(answer="2026-04-02 00:00:00"), "asterisk-csv").reason == FUTURE_TIMESTAMP
    # ... measured from the `now` given, never from a clock.
    assert parse(native(timestamp="2030-01-01T00:00:00Z"), now=datetime(2030, 1, 1, tzinfo=UTC)).quantity == 5


@pytest.mark.parametrize(
    "quantity",
    [
        "abc",
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "-1",
        "-0.000001",
        "1e20",
        "1e400",
        "1e999999999999999999999",
        " 12",
        "12.5.1",
        "0x10",
        "1_000",
        "١٢",
        -1,
        -0.5,
        10**20,
        10**30,
        True,
        [1],
        {"value": 1},
    ],
)
def test_invalid_quantity(quantity: object) -> None:
    assert rejection(native(quantity=quantity)).reason == INVALID_QUANTITY
    assert rejection(cloudevent(data={"quantity": quantity})).reason == INVALID_QUANTITY
    assert rejection(lago(properties={"quantity": quantity})).reason == INVALID_QUANTITY


@pytest.mark.parametrize(
    "literal", [b"1e400", b"-1e400", b"1E+999999999999999999999", b"-5", b"100000000000000000000", b"1e20"]
)
def test_invalid_quantity_json_literals(literal: bytes) -> None:
    raw = b'{"event_id":"e","account_id":"a","meter":"storage","timestamp":"2026-03-02T10:00:00Z","quantity":'
    assert rejection(raw + literal + b"}").reason == INVALID_QUANTITY


def test_invalid_quantity_csv() -> None:
    for billsec in ("abc", "-5", "1e400"):
        assert rejection(cdr(billsec=billsec), "asterisk-csv").reason == INVALID_QUANTITY


def test_quantity_too_large_once_converted() -> None:
    meters = {"transfer": Meter("transfer", "byte", "sum", source_unit="TB")}
    raw = json.dumps(native(meter="transfer", quantity="100000000000")).encode()  # 10^11 TB = 10^23 bytes
    with pytest.raises(Rejected) as caught:
        parse_record(raw, "json", meters, NOW)
    assert caught.value.reason == INVALID_QUANTITY


# Defects of a native record, one per validation reason, listed in order of precedence.
DEFECTS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    (MALFORMED, lambda record: record.update(attributes="not an object")),
    (MISSING_FIELD, lambda record: record.pop("account_id")),
    (INVALID_TIMESTAMP, lambda record: record.update(timestamp="2026-03-02T10:00:00")),
    (FUTURE_TIMESTAMP, lambda record: record.update(timestamp="2027-01-01T00:00:00Z")),
    (INVALID_QUANTITY, lambda record: record.update(quantity="-1")),
]


@pytest.mark.parametrize(
    "defects",
    [
        combo
        for size in range(1, 6)
        for combo in itertools.combinations(range(len(DEFECTS)), size)
        if not {2, 3} <= set(combo)  # both are defects of the one timestamp field
    ],
)
@pytest.mark.parametrize("too_large", [False, True])
def test_precedence(defects: tuple[int, ...], too_large: bool) -> None:
    record = native()
    for index in defects:
        DEFECTS[index][1](record)
    raw = json.dumps(record).encode()
    expected = TOO_LARGE if too_large else DEFECTS[min(defects)][0]
    assert rejection(raw, max_size=len(raw) - 1 if too_large else 65_536).reason == expected


def test_precedence_matches_reason_order() -> None:
    order = [reason for reason, _ in DEFECTS]
    assert order == [reason for reason in REASONS if reason in order]
    assert {TOO_LARGE, NOT_BILLABLE, *order} == VALIDATION_REASONS


def test_precedence_csv() -> None:
    assert rejection(cdr(disposition="BUSY", answer="garbage"), "asterisk-csv").reason == NOT_BILLABLE
    assert rejection(cdr(disposition="BUSY", billsec="-1"), "asterisk-csv").reason == NOT_BILLABLE
    assert rejection(cdr(answer="garbage", billsec="-1"), "asterisk-csv").reason == INVALID_TIMESTAMP


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2026-03-02T10:00:00Z", "2026-03-02T10:00:00+00:00"),
        ("2026-03-02T10:00:00+00:00", "2026-03-02T10:00:00+00:00"),
        ("2026-03-02T10:00:00-00:00", "2026-03-02T10:00:00+00:00"),
        ("2026-03-02T11:30:00+01:30", "2026-03-02T10:00:00+00:00"),
        ("2026-03-01T23:00:00-11:00", "2026-03-02T10:00:00+00:00"),
        ("2026-03-02t10:00:00z", "2026-03-02T10:00:00+00:00"),
        ("2026-03-02 10:00:00Z", "2026-03-02T10:00:00+00:00"),
        ("2026-03-02T10:00:00.5Z", "2026-03-02T10:00:00.500000+00:00"),
        ("2026-03-02T10:00:00,25Z", "2026-03-02T10:00:00.250000+00:00"),
        ("2026-03-02T10:00:00.123456Z", "2026-03-02T10:00:00.123456+00:00"),
        ("2026-03-02T10:00:00.123456789Z", "2026-03-02T10:00:00.123456+00:00"),  # truncated, never rounded up
        ("2026-03-02T10:59:59.9999999+01:00", "2026-03-02T09:59:59.999999+00:00"),
        (1772445600, "2026-03-02T10:00:00+00:00"),
        (1772445600.25, "2026-03-02T10:00:00.250000+00:00"),
        (0, "1970-01-01T00:00:00+00:00"),
        (0.5, "1970-01-01T00:00:00.500000+00:00"),
    ],
)
def test_timestamps(timestamp: object, expected: str) -> None:
    for record in (native(timestamp=timestamp), cloudevent(time=timestamp)):
        parsed = parse(record).event_time
        assert parsed == datetime.fromisoformat(expected)
        assert parsed.tzinfo is UTC


def test_epoch_fractions_are_exact() -> None:
    raw = (
        b'{"event_id":"e","account_id":"acme","meter":"api_calls","quantity":1.5,'
        b'"timestamp":1772445600.1234569999}'
    )
    assert parse(raw).event_time == datetime(2026, 3, 2, 10, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (1772445600, datetime(2026, 3, 2, 10, tzinfo=UTC)),
        ("1772445600", datetime(2026, 3, 2, 10, tzinfo=UTC)),
        ("1772445600.75", datetime(2026, 3, 2, 10, 0, 0, 750000, tzinfo=UTC)),
        (1772445600.5, datetime(2026, 3, 2, 10, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_lago_epoch_timestamps(timestamp: object, expected: datetime) -> None:
    assert parse(lago(timestamp=timestamp)).event_time == expected


def test_asterisk_uses_start_when_unanswered_time_is_empty() -> None:
    parsed = parse(cdr(answer=""), "asterisk-csv")
    assert parsed.event_time == datetime(2026, 3, 2, 9, 15, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("0.123456789012345678", "0.123456789012345678"),
        ("1.000000000000000001", "1.000000000000000001"),  # a float reads 1.0: the exact path must kick in
        ("0.10000000000000001", "0.10000000000000001"),
        ("99999999999999999999.999999999999999999", "99999999999999999999.999999999999999999"),
        ("18446744073709551616", "18446744073709551616"),  # > 2^64: orjson reads a float
        ("12345678901234567890", "12345678901234567890"),
        ("0.1", "0.1"),
        ("12.5", "12.5"),
        ("1e-7", "0.0000001"),
        ("1.5E+3", "1500"),
        ("0", "0"),
        ("-0", "0"),
        ("0.0000000000000000005", "0"),  # 19th place: half-even to 18 places
        ("0.0000000000000000015", "0.000000000000000002"),
        ("0.0000000000000000025", "0.000000000000000002"),
        ("1e-400", "0"),
    ],
)
def test_decimal_exactness(literal: str, expected: str) -> None:
    head = (
        '{"event_id":"e","account_id":"acme","meter":"api_calls",'
        '"timestamp":"2026-03-02T10:00:00Z","quantity":'
    )
    for raw in (head + literal + "}", head + '"' + literal + '"}'):  # JSON number and decimal string
        quantity = parse(raw).quantity
        assert quantity == Decimal(expected)
        assert quantity.as_tuple().exponent == -18
        assert not quantity.is_signed()


@given(st.decimals(min_value=0, max_value=Decimal("99999999999999999999.999999999999999999"), places=18))
def test_any_storable_quantity_survives_exactly(quantity: Decimal) -> None:
    for text in (str(quantity), format(quantity, "f")):
        raw = (
            '{"event_id":"e","account_id":"acme","meter":"api_calls","timestamp":"2026-03-02T10:00:00Z",'
            f'"quantity":{text}}}'
        )
        assert parse(raw).quantity == quantity


def test_unknown_meter_quantity_is_optional_but_checked() -> None:
    unknown = parse(native(meter="fax_pages", quantity=...))
    assert (unknown.meter, unknown.quantity, unknown.value) == ("fax_pages", Decimal(0), None)
    assert parse(native(meter="fax_pages", quantity="2.5")).quantity == Decimal("2.5")
    assert parse(cloudevent(type="fax_pages", data={"quantity": 3, "x": 1})).attributes == {"x": "1"}
    assert rejection(native(meter="fax_pages", quantity="-2")).reason == INVALID_QUANTITY
    assert rejection(lago(code="fax_pages", properties={"quantity": "abc"})).reason == INVALID_QUANTITY
    assert parse(native(meter="fax_pages", quantity=..., timestamp="2026-03-02T10:00:00Z")).quantity == 0


def test_voice_without_a_catalog_meter_keeps_seconds() -> None:
    parsed = parse_record(cdr().encode(), "asterisk-csv", {}, NOW)
    assert parsed.quantity == Decimal(125)


def test_attributes_are_flattened_to_strings() -> None:
    parsed = parse(
        native(
            attributes={
                "region": "eu-west",
                "port": 8080,
                "ratio": 0.25,
                "big": 2**70,
                "on": True,
                "off": False,
                "none": None,
                "tags": ["a", 1],
                "nested": {"b": 2, "a": [None]},
            }
        )
    )
    assert parsed.attributes == {
        "region": "eu-west",
        "port": "8080",
        "ratio": "0.25",
        "big": "1.1805916207174113e+21",
        "on": "true",
        "off": "false",
        "tags": '["a",1]',
        "nested": '{"a":[null],"b":2}',
    }


def test_reading_mode_does_not_change_attributes() -> None:
    # The second record is read exactly (its quantity has 19 digits); attributes must read the same,
    # so integers beyond 64 bits read as orjson reads them, as floats (send such values as strings).
    attributes = b'"attributes":{"n":1.50,"i":7,"big":18446744073709551616,"deep":[1.0,{"k":2}]}'
    head = b'{"event_id":"e","account_id":"acme","meter":"api_calls","timestamp":"2026-03-02T10:00:00Z",'
    fast = parse(head + attributes + b',"quantity":1.5}')
    exact = parse(head + attributes + b',"quantity":1.000000000000000001}')
    assert (
        fast.attributes
        == exact.attributes
        == {"n": "1.5", "i": "7", "big": "1.8446744073709552e+19", "deep": '[1.0,{"k":2}]'}
    )


def test_numeric_ids_are_text() -> None:
    parsed = parse(native(event_id=123, account_id="acme"))
    assert parsed.event_id == "123"


# --------------------------------------------------------------------------- robustness

REJECTED_OR_EVENT = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


def check_outcome(raw: bytes, fmt: str) -> None:
    """Parsing yields a well-formed event or a Rejected with a validation reason; nothing else."""
    try:
        parsed = parse_record(raw, fmt, METERS, NOW)
    except Rejected as rejected:
        assert rejected.reason in VALIDATION_REASONS
        return
    assert parsed.quantity.as_tuple().exponent == -18
    assert 0 <= parsed.quantity < Decimal(10) ** 20
    assert parsed.event_time.tzinfo is UTC
    assert parsed.event_time - NOW <= timedelta(hours=24)
    assert all(type(key) is str and type(value) is str for key, value in parsed.attributes.items())
    assert parsed.event_id and parsed.account_id and parsed.meter
    for text in (parsed.event_id, parsed.account_id, parsed.meter, *parsed.attributes.values()):
        text.encode("utf-8")  # encodable downstream: no lone surrogates
    assert parsed.source_format in FORMATS[1:]
    assert (parsed.value is not None) == (
        METERS.get(parsed.meter, METERS["api_calls"]).aggregation == "unique_count"
    )


@REJECTED_OR_EVENT
@given(raw=st.binary(max_size=300), fmt=st.sampled_from(FORMATS))
def test_random_bytes_only_ever_reject(raw: bytes, fmt: str) -> None:
    check_outcome(raw, fmt)


KEYS = [
    "event_id",
    "account_id",
    "meter",
    "quantity",
    "timestamp",
    "attributes",
    "specversion",
    "id",
    "subject",
    "type",
    "time",
    "data",
    "transaction_id",
    "external_customer_id",
    "external_subscription_id",
    "code",
    "properties",
    "event",
    "user_id",
    "gb_hours",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "acme",
            "api_calls",
            "storage",
            "voice",
            "active_users",
            "sms",
            "2026-03-02T10:00:00Z",
            "1772445600",
            "12.5",
            "-1",
            "NaN",
            "1e400",
            "2026-03-02T10:00:00",
        ]
    )
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


def mostly(good: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Good values seven times in eight, so that random records also reach the valid path."""
    return st.integers(0, 7).flatmap(lambda draw: other if draw == 0 else good)


ids = mostly(st.sampled_from(["acme", "e-1", "x"]), st.sampled_from(["", None]) | st.integers() | json_values)
meter_codes = mostly(st.sampled_from([*METERS, "other"]), ids)
quantities = mostly(
    st.integers(0, 10**6) | st.floats(0, 1e6) | st.decimals(0, 10**6, places=6).map(str),
    st.integers(-5, 10**25) | st.floats() | st.decimals(allow_nan=True).map(str) | json_values,
)
epochs = st.integers(1_600_000_000, 1_780_000_000)
iso_times = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
)
timestamps = mostly(
    iso_times.map(datetime.isoformat) | epochs | epochs.map(lambda seconds: seconds + 0.25),
    st.integers(-(10**12), 10**12)
    | st.floats()
    | json_values
    | st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(datetime.isoformat),
)
payloads = mostly(
    st.fixed_dictionaries(
        {"quantity": quantities, "gb_hours": quantities, "user_id": mostly(ids, quantities)},
        optional={"region": json_values},
    ),
    st.dictionaries(st.sampled_from(["quantity", "gb_hours", "user_id"]), quantities, max_size=2)
    | json_values,
)
native_records = st.fixed_dictionaries(
    {
        "event_id": ids,
        "account_id": ids,
        "meter": meter_codes,
        "timestamp": timestamps,
        "quantity": quantities,
    },
    optional={"attributes": payloads},
)
cloudevent_records = st.fixed_dictionaries(
    {
        "specversion": st.just("1.0"),
        "id": ids,
        "subject": ids,
        "type": meter_codes,
        "time": timestamps,
        "data": payloads,
    },
    optional={"source": ids},
)
lago_records = st.fixed_dictionaries(
    {
        "transaction_id": ids,
        "code": meter_codes,
        "timestamp": mostly(epochs | epochs.map(str), timestamps),
        "external_customer_id": ids,
        "properties": payloads,
    },
    optional={"external_subscription_id": ids},
)
records = st.one_of(
    native_records,
    cloudevent_records,
    lago_records,
    lago_records.map(lambda record: {"event": record}),
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8),
    json_values,
)


@REJECTED_OR_EVENT
@given(record=records, fmt=st.sampled_from(["auto", "auto", "auto", "json", "cloudevents", "lago"]))
def test_random_json_only_ever_rejects(record: object, fmt: str) -> None:
    check_outcome(json.dumps(record).encode(), fmt)  # json.dumps also writes NaN and Infinity


@REJECTED_OR_EVENT
@given(
    fields=st.lists(
        st.text(max_size=8) | st.sampled_from(["ANSWERED", "2026-03-02 09:15:05", "60", "-1", ""]),
        min_size=15,
        max_size=19,
    ),
    terminator=st.sampled_from(["", "\n", "\r\n"]),
)
def test_random_csv_rows_only_ever_reject(fields: list[str], terminator: str) -> None:
    out = io.StringIO()
    csv.writer(out, lineterminator=terminator or "\n").writerow(fields)
    check_outcome(out.getvalue().rstrip("\r\n").encode() + terminator.encode(), "asterisk-csv")


def test_random_outcomes_can_be_events() -> None:
    # Guard against a robustness test that only ever sees rejections.
    check_outcome(json.dumps(native()).encode(), "auto")
    assert parse(native()).quantity == 5


SAMPLES = [
    (raw, "auto") for name in ("events.jsonl", "cloudevents.jsonl", "lago.jsonl") for raw in lines(name)
] + [(raw, "asterisk-csv") for raw in lines("Master.csv")]


@REJECTED_OR_EVENT
@given(
    sample=st.sampled_from(SAMPLES),
    edits=st.lists(
        st.tuples(st.integers(0, 400), st.binary(max_size=3), st.integers(0, 3)), min_size=1, max_size=4
    ),
)
def test_damaged_samples_only_ever_reject(
    sample: tuple[bytes, str], edits: list[tuple[int, bytes, int]]
) -> None:
    raw, fmt = sample
    for position, inserted, removed in edits:  # splice: at a position, remove some bytes and insert others
        position %= len(raw) + 1
        raw = raw[:position] + inserted + raw[position + removed :]
    check_outcome(raw, fmt)


@REJECTED_OR_EVENT
@given(
    sample=st.sampled_from(SAMPLES),
    edits=st.lists(st.tuples(st.integers(0, 400), st.binary(max_size=3), st.integers(0, 3)), max_size=3),
    fmt=st.sampled_from(["auto", "json", "cloudevents", "lago"]),
)
def test_account_of_agrees_with_parsing(
    sample: tuple[bytes, str], edits: list[tuple[int, bytes, int]], fmt: str
) -> None:
    # Producers key raw records by account_of; every valid event must land where mediation reads its account.
    raw, sample_fmt = sample
    fmt = sample_fmt if sample_fmt == "asterisk-csv" else fmt
    for position, inserted, removed in edits:
        position %= len(raw) + 1
        raw = raw[:position] + inserted + raw[position + removed :]
    try:
        event = parse_record(raw, fmt, METERS, NOW)
    except Rejected:
        return
    assert account_of(raw, fmt) == event.account_id


@pytest.mark.parametrize(
    ("record", "fmt", "account"),
    [
        ({"event_id": "e1", "account_id": 42, "meter": "api_calls", "quantity": 1,
          "timestamp": "2026-03-01T00:00:00Z"}, "json", "42"),
        ({"specversion": "1.0", "id": "e1", "source": "s", "type": "api_calls", "subject": "acme",
          "time": "2026-03-01T00:00:00Z", "data": {"quantity": 1}}, "auto", "acme"),
        ({"transaction_id": "t1", "external_customer_id": "", "external_subscription_id": "sub-9",
          "code": "api_calls", "timestamp": 1772323200, "properties": {"quantity": 1}}, "lago", "sub-9"),
        ({"event": {"transaction_id": "t1", "external_customer_id": "cust-1", "code": "api_calls",
                    "timestamp": 1772323200, "properties": {"quantity": 1}}}, "auto", "cust-1"),
        ({"event_id": "e1", "account_id": "a", "meter": "api_calls", "quantity": 1e400,
          "timestamp": "2026-03-01T00:00:00Z"}, "json", "a"),
    ],
)  # fmt: skip
def test_account_of_reads_the_account_parsing_reads(record: dict[str, Any], fmt: str, account: str) -> None:
    raw = json.dumps(record).encode().replace(b"Infinity", b"1e400")  # a number orjson cannot hold
    assert account_of(raw, fmt) == account
    try:
        assert parse_record(raw, fmt, METERS, NOW).account_id == account
    except Rejected as rejection:  # still keyed by its account; rejected by validation, not by keying
        assert rejection.reason == "invalid_quantity", rejection

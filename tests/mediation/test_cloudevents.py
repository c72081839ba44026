"""CloudEvents in binary content mode (Kafka protocol binding): `ce_` headers carry the
attributes, the record value the data; the event is the one structured mode gives."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from mediation.cloudevents import parse_binary_cloudevent
from meterline.kernel.reasons import INVALID_TIMESTAMP, MALFORMED, MISSING_FIELD, TOO_LARGE, Rejected
from meterline.kernel.records import UsageEvent
from tests.mediation.test_formats import METERS, NOW, cloudevent, parse


def ce_headers(**attributes: str | None) -> dict[str, bytes]:
    found = {
        "ce_specversion": "1.0",
        "ce_id": "ce-1",
        "ce_source": "gateway",
        "ce_type": "api_calls",
        "ce_subject": "acme",
        "ce_time": "2026-03-02T10:00:00Z",
        "content-type": "application/json",
        **attributes,
    }
    return {name: value.encode() for name, value in found.items() if value is not None}


def binary(data: bytes | dict[str, Any], **attributes: str | None) -> UsageEvent:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return parse_binary_cloudevent(raw, ce_headers(**attributes), METERS, NOW)


def rejection(data: bytes | dict[str, Any], **attributes: str | None) -> Rejected:
    with pytest.raises(Rejected) as caught:
        binary(data, **attributes)
    return caught.value


@pytest.mark.parametrize(
    ("data", "attributes"),
    [
        ({"quantity": 5, "region": "eu"}, {}),
        ({"gb_hours": "1.000000000000000001", "tier": "hot"}, {"ce_type": "storage"}),  # exact decimals
        ({"user_id": "u-9"}, {"ce_type": "active_users", "ce_id": "ce-u"}),
        ({"seconds_billed": 1}, {"ce_type": "sms", "ce_time": "2026-03-02T11:00:00+01:00"}),
    ],
)
def test_binary_mode_gives_the_event_of_structured_mode(
    data: dict[str, Any], attributes: dict[str, str]
) -> None:
    structured = cloudevent(
        id=attributes.get("ce_id", "ce-1"),
        type=attributes.get("ce_type", "api_calls"),
        time=attributes.get("ce_time", "2026-03-02T10:00:00Z"),
        data=data,
    )
    assert binary(data, **attributes) == parse(structured)


def test_fields_map_from_headers() -> None:
    event = binary({"quantity": 5, "region": "eu"})
    assert (event.event_id, event.account_id, event.meter) == ("ce-1", "acme", "api_calls")
    assert event.event_time == datetime(2026, 3, 2, 10, tzinfo=UTC)
    assert event.quantity == Decimal(5)
    assert event.attributes == {"region": "eu"}
    assert event.source_format == "cloudevents"


def test_long_literals_in_data_are_read_exactly() -> None:
    event = binary(b'{"quantity": 0.123456789012345678}')
    assert event.quantity == Decimal("0.123456789012345678")


def test_a_count_meter_needs_no_data() -> None:
    assert binary(b"", ce_type="sms", **{"content-type": None}).quantity == Decimal(1)


@pytest.mark.parametrize(
    "content_type", [None, "application/json; charset=utf-8", "application/cloudevents+json", "text/json"]
)
def test_json_content_types_are_read(content_type: str | None) -> None:
    assert binary({"quantity": 2}, **{"content-type": content_type}).quantity == Decimal(2)


@pytest.mark.parametrize(
    ("data", "attributes", "reason", "detail"),
    [
        ({"quantity": 1}, {"ce_id": None}, MISSING_FIELD, "ce_id"),
        ({"quantity": 1}, {"ce_subject": None}, MISSING_FIELD, "ce_subject"),
        ({"quantity": 1}, {"ce_type": None}, MISSING_FIELD, "ce_type"),
        ({"quantity": 1}, {"ce_time": None}, MISSING_FIELD, "ce_time"),
        ({"quantity": 1}, {"ce_time": "2026-03-02T10:00:00"}, INVALID_TIMESTAMP, "ce_time"),
        ({"quantity": 1}, {"content-type": "application/avro"}, MALFORMED, "content-type"),
        (b"[1, 2]", {}, MALFORMED, "data must be an object"),
        (b"\xff\xfe", {}, MALFORMED, "data is not JSON"),
        ({}, {}, MISSING_FIELD, "data.quantity"),
    ],
)
def test_defects(
    data: bytes | dict[str, Any], attributes: dict[str, str | None], reason: str, detail: str
) -> None:
    found = rejection(data, **attributes)
    assert (found.reason, detail in found.detail) == (reason, True), found.detail


def test_a_header_that_is_not_utf8_is_malformed() -> None:
    headers = {**ce_headers(), "ce_id": b"\xff"}
    with pytest.raises(Rejected) as caught:
        parse_binary_cloudevent(b'{"quantity": 1}', headers, METERS, NOW)
    assert caught.value.reason == MALFORMED


def test_data_over_the_size_limit_is_too_large() -> None:
    with pytest.raises(Rejected) as caught:
        parse_binary_cloudevent(b'{"quantity": 1}', ce_headers(), METERS, NOW, max_size=10)
    assert caught.value.reason == TOO_LARGE

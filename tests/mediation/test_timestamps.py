"""mediation.timestamps, in every input format: the range of instants an event may name
(1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z, bounds included), and Asterisk times
read in a cdr time zone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediation.formats import parse_record
from meterline.kernel.headers import cdr_zone
from meterline.kernel.reasons import INVALID_TIMESTAMP, Rejected
from tests.mediation.test_formats import METERS, cdr, cloudevent, lago, native, parse, rejection

FIRST = datetime(1970, 1, 1, tzinfo=UTC)
LAST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
# A processing clock late enough that nothing in range is a future timestamp.
END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)
LAST_EPOCH = 253_402_300_799


def records(iso: str | None, epoch: str | None) -> list[tuple[bytes, str]]:
    """The instant in every format that can name it: ISO text, and epoch seconds written as
    the JSON number `epoch` (and, for Lago, as a numeric string)."""
    found: list[tuple[dict[str, Any] | str, str]] = []
    if iso is not None:
        found += [(native(timestamp=iso), "auto"), (cloudevent(time=iso), "auto")]
        if iso.endswith("Z"):  # Asterisk writes UTC times without an offset
            found.append((cdr(answer=iso[:-1].replace("T", " ")), "asterisk-csv"))
    if epoch is not None:
        found += [(native(timestamp="EPOCH"), "auto"), (cloudevent(time="EPOCH"), "auto")]
        found += [(lago(timestamp="EPOCH"), "auto"), (lago(timestamp=epoch), "auto")]
    return [
        (
            record.encode()
            if isinstance(record, str)
            else json.dumps(record).replace('"EPOCH"', epoch or "").encode(),
            fmt,
        )
        for record, fmt in found
    ]


@pytest.mark.parametrize(
    ("iso", "epoch", "expected"),
    [
        ("1970-01-01T00:00:00Z", "0", FIRST),
        ("1969-12-31T16:00:00-08:00", "0.0", FIRST),
        ("9999-12-31T23:59:59Z", str(LAST_EPOCH), LAST),
        ("9999-12-31T23:59:59+00:00", f"{LAST_EPOCH}.000000", LAST),
    ],
)
def test_the_bounds_are_valid_instants(iso: str, epoch: str, expected: datetime) -> None:
    for raw, fmt in records(iso, epoch):
        assert parse_record(raw, fmt, METERS, END_OF_TIME).event_time == expected, raw


@pytest.mark.parametrize(
    ("iso", "epoch"),
    [
        ("0001-01-01T00:00:00Z", "-62135596800"),  # the reproduced crash: year 1 is a valid datetime
        ("1969-12-31T23:59:59Z", "-1"),
        ("1969-12-31T23:59:59.999999Z", "-0.000001"),
        ("1970-01-01T00:59:59+01:00", "-1.5"),
        ("0001-01-01T00:00:00-08:00", "-62135568000"),
        ("9999-12-31T23:59:59.5Z", f"{LAST_EPOCH}.5"),
        ("9999-12-31T23:59:59.000001Z", f"{LAST_EPOCH}.000001"),
        (None, str(LAST_EPOCH + 1)),
    ],
)
def test_instants_outside_the_range_are_invalid_timestamps_in_every_format(
    iso: str | None, epoch: str
) -> None:
    for raw, fmt in records(iso, epoch):
        with pytest.raises(Rejected) as caught:
            parse_record(raw, fmt, METERS, END_OF_TIME)
        assert caught.value.reason == INVALID_TIMESTAMP, (raw, caught.value)


def test_the_detail_names_the_range() -> None:
    assert (
        "1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z"
        in rejection(native(timestamp="1969-07-20T20:17:40Z")).detail
    )
    assert "1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z" in rejection(lago(timestamp=-14182940)).detail


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)))
def test_an_instant_is_valid_exactly_when_it_is_in_range(instant: datetime) -> None:
    text = instant.isoformat().replace("+00:00", "Z")
    epoch = str(Decimal((instant - FIRST) // timedelta(microseconds=1)).scaleb(-6))
    for record in (native(timestamp=text), lago(timestamp=epoch)):
        if FIRST <= instant <= LAST:
            assert parse(record, now=END_OF_TIME).event_time == instant
        else:
            assert rejection(record, now=END_OF_TIME).reason == INVALID_TIMESTAMP


# --------------------------------------------------------------------------- Asterisk time zones


def cdr_at(answer: str, zone: str | None) -> datetime:
    found = cdr_zone(zone) if zone else None
    event = parse_record(cdr(answer=answer).encode(), "asterisk-csv", METERS, END_OF_TIME, cdr_zone=found)
    return event.event_time


def test_cdr_times_are_utc_without_a_zone() -> None:
    assert cdr_at("2026-03-31 23:30:00", None) == datetime(2026, 3, 31, 23, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("answer", "zone", "expected"),
    [
        # Last evening of March in Paris (CEST, +02:00) is still March in UTC.
        ("2026-03-31 23:30:00", "Europe/Paris", datetime(2026, 3, 31, 21, 30, tzinfo=UTC)),
        # Just after midnight local on the 1st is the previous month in UTC.
        ("2026-04-01 00:30:00", "Europe/Paris", datetime(2026, 3, 31, 22, 30, tzinfo=UTC)),
        ("2026-01-31 23:30:00", "America/New_York", datetime(2026, 2, 1, 4, 30, tzinfo=UTC)),
        ("2026-06-30 23:30:00", "UTC", datetime(2026, 6, 30, 23, 30, tzinfo=UTC)),
        # Ambiguous (clocks go back at 03:00 CEST): the first occurrence, in summer time.
        ("2026-10-25 02:30:00", "Europe/Paris", datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        # Nonexistent (clocks go forward at 02:00 CET): read with the offset before the gap.
        ("2026-03-29 02:30:00", "Europe/Paris", datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
    ],
)
def test_cdr_times_in_a_zone(answer: str, zone: str, expected: datetime) -> None:
    assert cdr_at(answer, zone) == expected


def test_a_local_cdr_time_before_the_epoch_in_utc_is_an_invalid_timestamp() -> None:
    with pytest.raises(Rejected) as caught:
        cdr_at("1970-01-01 00:30:00", "Europe/Paris")  # 1969-12-31T23:30Z
    assert caught.value.reason == INVALID_TIMESTAMP


def test_a_local_cdr_time_near_year_9999_is_an_invalid_timestamp_not_a_crash() -> None:
    with pytest.raises(Rejected) as caught:
        cdr_at("9999-12-31 23:30:00", "America/Los_Angeles")  # past datetime's last instant in UTC
    assert caught.value.reason == INVALID_TIMESTAMP


@pytest.mark.parametrize(
    "name", ["", "Europe", "Nowhere/City", "utc", "/etc/localtime", "../zoneinfo", "A\x00"]
)
def test_cdr_zone_refuses_what_is_not_an_iana_zone(name: str) -> None:
    with pytest.raises(ValueError, match="not an IANA time zone"):
        cdr_zone(name)

"""The mediation stage's transform without Kafka: containment of hostile records,
internal errors and the dead-letter copies, per record, with the rest of the batch going on."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from mediation.dedup import KEY_BYTES
from mediation.stage import MediationProcessor
from meterline.kernel.catalog import Account, Catalog, Charge, Contract, Meter, Plan
from meterline.kernel.config import RawTopic, Settings
from meterline.kernel.dlq import DEFAULT_MAX_BYTES, record_size
from meterline.kernel.headers import ORIGIN_HEADER, RAW_HEADER, TRUNCATED_HEADER
from meterline.kernel.lineage import LINEAGE_HEADER, lineage_value
from meterline.kernel.messages import InputRecord, OutputRecord
from meterline.kernel.records import UsageEvent
from meterline.kernel.topics import MEDIATED, REJECTED, REPARTITION
from meterline.runtime.tables import ContractsTable, PeriodsTable
from schemas.codec import decode_usage, encode_usage

RAW = "meterline.raw"
KEYED = "raw.keyed"
ZONES = {"la": "America/Los_Angeles", "tokyo": "Asia/Tokyo", "acme": "UTC"}


def catalog(meters: Mapping[str, Meter] | None = None) -> Catalog:
    plan = Plan("p", "EUR", "half_even", (Charge("c", "api_calls", "flat", unit_price=Decimal("0.01")),))
    return Catalog(
        meters=meters if meters is not None else {"api_calls": Meter("api_calls", "call", "sum")},
        plans={"p": plan},
        accounts={
            account: Account(
                account, account, zone, (Contract(f"{account}-k", account, "p", date(1969, 1, 1), None),)
            )
            for account, zone in ZONES.items()
        },
    )


class Contracts:
    def __init__(self, current: Catalog) -> None:
        self.catalog = current

    def poll(self) -> bool:
        return False


class Periods:
    """Closed periods, and optionally a period whose lookup fails (a fault injected into a pure view)."""

    def __init__(self, failing: str | None = None) -> None:
        self.failing = failing
        self.closed_all: set[str] = set()
        self.closed_accounts: set[tuple[str, str]] = set()

    def poll(self) -> bool:
        return False

    def is_closed(self, account_id: str, period: str) -> bool:
        if period == self.failing:
            raise RuntimeError(f"periods view broken for {period}")
        return period in self.closed_all or (period, account_id) in self.closed_accounts


def processor(current: Catalog | None = None, periods: Periods | None = None) -> MediationProcessor:
    settings = Settings(raw_topics=(RawTopic(RAW), RawTopic(KEYED, keyed_by_account=True)))
    return MediationProcessor(
        settings,
        cast(ContractsTable, Contracts(current or catalog())),
        cast(PeriodsTable, periods or Periods()),
        partitions=3,
    )


def native(event_id: str, account: str = "acme", timestamp: object = "2026-03-05T10:00:00Z") -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "account_id": account,
            "meter": "api_calls",
            "quantity": 2,
            "timestamp": timestamp,
        }
    ).encode()


def lago(event_id: str, account: str, timestamp: object) -> bytes:
    return json.dumps(
        {
            "transaction_id": event_id,
            "external_customer_id": account,
            "code": "api_calls",
            "timestamp": timestamp,
            "properties": {"quantity": 2},
        }
    ).encode()


def raw_records(topic: str, *values: bytes, headers: dict[str, bytes] | None = None) -> list[InputRecord]:
    return [
        InputRecord(topic, 0, offset, b"k", value, dict(headers or {})) for offset, value in enumerate(values)
    ]


def forwarded(outputs: list[OutputRecord]) -> Iterator[InputRecord]:
    """The repartition records of a raw batch, as the keyed step reads them back."""
    for offset, out in enumerate(o for o in outputs if o.topic == REPARTITION):
        yield InputRecord(
            REPARTITION, out.partition or 0, offset, out.key, out.value, dict(out.headers or [])
        )


def mediate(stage: MediationProcessor, *values: bytes) -> tuple[list[UsageEvent], list[dict[str, bytes]]]:
    """Both steps, through the repartition topic: the mediated events and the DLQ headers."""
    first = stage.process(raw_records(RAW, *values))
    second = stage.process(list(forwarded(first.outputs)))
    outputs = first.outputs + second.outputs
    return (
        [decode_usage(o.value or b"") for o in outputs if o.topic == MEDIATED],
        [dict(o.headers or []) for o in outputs if o.topic == REJECTED],
    )


def reasons(dead: list[dict[str, bytes]]) -> list[str]:
    return [headers["meterline.reason"].decode() for headers in dead]


# --------------------------------------------------------------------------- out-of-range instants


def test_year_one_for_an_account_west_of_utc_is_an_invalid_timestamp_not_a_crash() -> None:
    # Reproduced on c9cf9a2: OverflowError: date value out of range, out of the keyed step.
    events, dead = mediate(
        processor(),
        native("before", "la"),
        native("year-one", "la", "0001-01-01T00:00:00Z"),
        lago("lago-year-one", "la", -62135596800),
        lago("lago-year-one-text", "la", "-62135596800"),
        native("after", "la"),
    )
    assert [e.event_id for e in events] == ["before", "after"]
    assert reasons(dead) == ["invalid_timestamp"] * 3
    assert all(b"1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z" in h["meterline.detail"] for h in dead)


def test_out_of_range_instants_on_a_topic_keyed_by_account() -> None:
    result = processor().process(
        raw_records(KEYED, native("year-one", "la", "0001-01-01T00:00:00Z"), native("ok", "la"))
    )
    assert result.counts[(KEYED, 0)] == Counter(
        {"events_in": 2, "rejected.invalid_timestamp": 1, "mediated": 1}
    )


def test_an_instant_with_no_local_time_is_an_invalid_timestamp() -> None:
    # 9999-12-31T23:59:59Z is in range, but it is year 10000 in Tokyo. Validation lets it
    # through only with a clock in year 9999 (future_timestamp otherwise); a mediated record
    # carrying it must still not stop the stage.
    edge = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    records = [
        InputRecord(
            REPARTITION,
            0,
            offset,
            account.encode(),
            encode_usage(UsageEvent(f"edge-{account}", account, "api_calls", Decimal(1), edge, {})),
            {RAW_HEADER: b"original", ORIGIN_HEADER: lineage_value(RAW, 0, offset)},
        )
        for offset, account in enumerate(["tokyo", "la"])
    ]
    result = processor().process(records)
    dead = [dict(o.headers or []) for o in result.outputs if o.topic == REJECTED]
    assert reasons(dead) == ["invalid_timestamp"]
    assert b"Asia/Tokyo" in dead[0]["meterline.detail"]
    mediated = [decode_usage(o.value or b"") for o in result.outputs if o.topic == MEDIATED]
    assert [(e.event_id, e.period) for e in mediated] == [("edge-la", "9999-12")]


# --------------------------------------------------------------------------- internal errors


class FailingMeters(dict[str, Meter]):
    """A catalog view whose lookup of one meter fails unexpectedly."""

    def get(self, key: str, default: Any = None) -> Any:
        if key == "explodes":
            raise RuntimeError("meter table corrupted")
        return super().get(key, default)


def test_a_record_that_fails_in_the_raw_step_is_an_internal_error_and_the_batch_goes_on() -> None:
    meters = FailingMeters(api_calls=Meter("api_calls", "call", "sum"))
    bad = native("boom").replace(b'"api_calls"', b'"explodes"')
    with capture_logs() as logs:
        result = processor(catalog(meters)).process(raw_records(RAW, native("a"), bad, native("b")))
    [line] = [entry for entry in logs if entry["event"] == "record_failed"]
    assert line["log_level"] == "error"
    assert (line["stage"], line["topic"], line["partition"], line["offset"]) == ("mediation", RAW, 0, 1)
    assert line["error"] == "RuntimeError: meter table corrupted"
    assert result.counts[(RAW, 0)] == Counter({"events_in": 3, "forwarded": 2, "rejected.internal_error": 1})
    [dead] = [o for o in result.outputs if o.topic == REJECTED]
    headers = dict(dead.headers or [])
    assert dead.value == bad
    assert headers["meterline.detail"] == b"RuntimeError: meter table corrupted"
    assert headers["meterline.source.offset"] == b"1"


def test_a_record_that_fails_after_dedup_gives_its_key_back() -> None:
    periods = Periods(failing="2026-04")
    stage = processor(periods=periods)
    april = native("april", timestamp="2026-04-05T10:00:00Z")
    first = stage.process(raw_records(KEYED, native("march"), april, april, native("march-2")))
    counts = first.counts[(KEYED, 0)]
    # Both copies fail (the second takes the first's place, it is no duplicate); the rest is mediated.
    assert counts == Counter({"events_in": 4, "mediated": 2, "rejected.internal_error": 2})
    dead = [dict(o.headers or []) for o in first.outputs if o.topic == REJECTED]
    assert [h["meterline.detail"] for h in dead] == [b"RuntimeError: periods view broken for 2026-04"] * 2
    # Only the mediated events' keys reach the changelog.
    assert sum(len(value or b"") for _, value in first.changelog[(KEYED, 0)]) == 2 * KEY_BYTES

    periods.failing = None  # fixed: a replay of the failed record is mediated, not a duplicate
    again = stage.process([InputRecord(KEYED, 0, 4, b"k", april, {})])
    assert again.counts[(KEYED, 0)] == Counter({"events_in": 1, "mediated": 1})
    assert stage.process([InputRecord(KEYED, 0, 5, b"k", april, {})]).counts[(KEYED, 0)] == Counter(
        {"events_in": 1, "duplicates": 1}
    )


def test_a_forwarded_record_with_a_broken_origin_header_still_reaches_the_dlq() -> None:
    record = InputRecord(
        REPARTITION, 1, 7, b"k", b"not avro", {ORIGIN_HEADER: b"garbage", RAW_HEADER: b"orig"}
    )
    [dead] = processor().process([record]).outputs
    headers = dict(dead.headers or [])
    assert (dead.value, headers["meterline.reason"]) == (b"orig", b"malformed")
    assert headers["meterline.source.topic"] == REPARTITION.encode()


# --------------------------------------------------------------------------- size


def test_a_record_the_publisher_truncated_is_too_large_and_keeps_the_header() -> None:
    prefix = native("cut")[:40]
    result = processor().process(raw_records(RAW, prefix, headers={TRUNCATED_HEADER: b"1500000"}))
    [dead] = result.outputs
    headers = dict(dead.headers or [])
    assert headers["meterline.reason"] == b"too_large"
    assert headers["meterline.detail"] == b"1500000 bytes, cut by the publisher to 40"
    assert headers[TRUNCATED_HEADER] == b"1500000"
    assert dead.value == prefix


def test_the_dlq_copy_of_a_one_megabyte_line_fits_the_producer_limit() -> None:
    # Reproduced on c9cf9a2: the DLQ copy (1,000,000 bytes plus headers) exceeded message.max.bytes,
    # so every transaction of the batch failed and the worker retried it forever.
    line = native("huge")[:-1] + b', "pad": "' + b"x" * 1_000_000 + b'"}'
    result = processor().process(raw_records(RAW, line, native("fine")))
    [dead] = [o for o in result.outputs if o.topic == REJECTED]
    headers = dict(dead.headers or [])
    assert headers["meterline.reason"] == b"too_large"
    assert headers[TRUNCATED_HEADER] == str(len(line)).encode()
    assert line.startswith(dead.value or b"")
    assert record_size(dead.value or b"", dead.key, dead.headers or []) == DEFAULT_MAX_BYTES
    assert result.counts[(RAW, 0)]["forwarded"] == 1


# --------------------------------------------------------------------------- interop

PARIS_CDR = "pbx.paris"
CDR_LATE = (
    b'"acme","1001","4420794600123","from-internal","""A"" <1001>","PJSIP/1","PJSIP/2","Dial","x",'
    b'"2026-03-31 23:30:00","2026-03-31 23:30:00","2026-03-31 23:31:00",60,60,"ANSWERED",'
    b'"DOCUMENTATION","late-1"'
)


def interop_processor() -> MediationProcessor:
    settings = Settings(
        raw_topics=(
            RawTopic(RAW),
            RawTopic(PARIS_CDR, "asterisk-csv", keyed_by_account=True, cdr_timezone="Europe/Paris"),
            RawTopic("pbx.utc", "asterisk-csv", keyed_by_account=True),
        )
    )
    voice = {"voice": Meter("voice", "minute", "sum", source_unit="second")}
    plan = Plan("p", "EUR", "half_even", (Charge("c", "voice", "flat", unit_price=Decimal("0.01")),))
    accounts = {"acme": Account("acme", "acme", "UTC", (Contract("k", "acme", "p", date(2020, 1, 1), None),))}
    current = Catalog(meters=voice, plans={"p": plan}, accounts=accounts)
    return MediationProcessor(
        settings, cast(ContractsTable, Contracts(current)), cast(PeriodsTable, Periods()), partitions=3
    )


def cdr_outcome(topic: str, headers: dict[str, bytes] | None = None) -> tuple[str, str]:
    """(event time, period) of the late CDR mediated from `topic`, or ("rejected", reason)."""
    [out] = interop_processor().process(raw_records(topic, CDR_LATE, headers=headers)).outputs
    if out.topic == REJECTED:
        return "rejected", dict(out.headers or [])["meterline.reason"].decode()
    event = decode_usage(out.value or b"")
    return event.event_time.isoformat(), event.period


def test_cdr_times_are_read_in_the_zone_of_their_topic_or_header() -> None:
    assert cdr_outcome("pbx.utc") == ("2026-03-31T23:30:00+00:00", "2026-03")
    assert cdr_outcome(PARIS_CDR) == ("2026-03-31T21:30:00+00:00", "2026-03")
    # The header wins over the topic (and over UTC).
    tokyo = {"meterline.cdr_timezone": b"Asia/Tokyo"}
    assert cdr_outcome(PARIS_CDR, tokyo) == ("2026-03-31T14:30:00+00:00", "2026-03")
    new_york = {"meterline.cdr_timezone": b"America/New_York"}
    assert cdr_outcome("pbx.utc", new_york) == ("2026-04-01T03:30:00+00:00", "2026-04")


@pytest.mark.parametrize("zone", [b"Mars/Olympus", b"\xff"])
def test_a_bad_cdr_timezone_header_is_an_invalid_timestamp(zone: bytes) -> None:
    assert cdr_outcome(PARIS_CDR, {"meterline.cdr_timezone": zone}) == ("rejected", "invalid_timestamp")


def test_a_binary_mode_cloudevent_is_mediated_like_a_structured_one() -> None:
    headers = {
        "ce_specversion": b"1.0", "ce_id": b"bin-1", "ce_type": b"api_calls", "ce_subject": b"la",
        "ce_source": b"gw", "ce_time": b"2026-03-05T10:00:00Z", "content-type": b"application/json",
    }  # fmt: skip
    structured = json.dumps(
        {"specversion": "1.0", "id": "str-1", "type": "api_calls", "subject": "la", "source": "gw",
         "time": "2026-03-05T10:00:00Z", "data": {"quantity": 2, "region": "eu"}}
    ).encode()  # fmt: skip
    events, dead = mediate(processor(), structured)
    binary = processor().process(raw_records(RAW, b'{"quantity": 2, "region": "eu"}', headers=headers))
    [forwarded_event] = [decode_usage(o.value or b"") for o in binary.outputs if o.topic == REPARTITION]
    assert dead == []
    assert forwarded_event.event_id == "bin-1"
    assert (forwarded_event.account_id, forwarded_event.quantity, forwarded_event.attributes) == (
        events[0].account_id, events[0].quantity, events[0].attributes
    )  # fmt: skip
    # A record whose format header says json is not read as a binary CloudEvent.
    labelled = {**headers, "meterline.format": b"json"}
    as_json = processor().process(raw_records(RAW, b'{"quantity": 2}', headers=labelled))
    assert reasons([dict(o.headers or []) for o in as_json.outputs]) == ["missing_field"]


def test_with_a_topic_prefix_mediation_reads_and_writes_the_prefixed_topics() -> None:
    raw = (RawTopic(RAW), RawTopic(KEYED, keyed_by_account=True))
    settings = Settings(topic_prefix="blue.", raw_topics=raw)
    stage = MediationProcessor(
        settings, cast(ContractsTable, Contracts(catalog())), cast(PeriodsTable, Periods()), partitions=3
    )
    first = stage.process(raw_records("blue." + RAW, native("a")) + raw_records("blue." + KEYED, native("b")))
    assert sorted(o.topic for o in first.outputs) == ["blue." + MEDIATED, "blue." + REPARTITION]
    assert first.counts[("blue." + RAW, 0)]["events_in"] == 1
    [out] = [o for o in first.outputs if o.topic == "blue." + REPARTITION]
    again = InputRecord(out.topic, 0, 0, out.key, out.value, dict(out.headers or []))
    assert [o.topic for o in stage.process([again]).outputs] == ["blue." + MEDIATED]
    bad = stage.process(raw_records("blue." + RAW, b"not json"))
    assert [o.topic for o in bad.outputs] == ["blue." + REJECTED]


def test_dlq_copies_keep_the_headers_that_say_how_to_read_them() -> None:
    # Without them a replay of a binary-mode CloudEvent, or of a CDR read in a zone, reads another record.
    ce = {
        "ce_specversion": b"1.0", "ce_id": b"bin-ghost", "ce_type": b"api_calls", "ce_subject": b"ghost",
        "ce_time": b"2026-03-05T10:00:00Z", "content-type": b"application/json",
        "meterline.source.line": b"7",
    }  # fmt: skip
    stage = processor()
    first = stage.process(raw_records(RAW, b'{"quantity": 2}', headers=ce))
    [out] = first.outputs
    assert {"ce_id", "ce_subject", "content-type"} <= {name for name, _ in out.headers or []}
    [dead] = stage.process(list(forwarded(first.outputs))).outputs  # unknown_account, in the keyed step
    kept = dict(dead.headers or [])
    assert (kept["meterline.reason"], dead.value) == (b"unknown_account", b'{"quantity": 2}')
    assert {n: v for n, v in kept.items() if not n.startswith("meterline.")} == {
        n: v for n, v in ce.items() if not n.startswith("meterline.")
    }
    zoned = {"meterline.format": b"asterisk-csv", "meterline.cdr_timezone": b"Europe/Paris"}
    [late] = stage.process(raw_records(RAW, CDR_LATE.replace(b'"acme"', b'"ghost"'), headers=zoned)).outputs
    [dead] = stage.process(list(forwarded([late]))).outputs
    assert {n: v for n, v in (dead.headers or []) if n in zoned} == zoned


def test_plain_records_are_forwarded_with_no_extra_header() -> None:
    result = processor().process(raw_records(RAW, native("plain"), headers={"meterline.format": b"json"}))
    [out] = result.outputs
    assert [name for name, _ in out.headers or []] == [LINEAGE_HEADER, ORIGIN_HEADER, RAW_HEADER]

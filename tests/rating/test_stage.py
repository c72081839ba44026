"""The rating stage's transform without Kafka: counts, outputs, DLQ and changelog per partition."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from structlog.testing import capture_logs

from meterline.kernel.catalog import Catalog, Charge, ChargeFilters, Meter
from meterline.kernel.headers import ORIGIN_HEADER, RAW_HEADER
from meterline.kernel.lineage import LINEAGE_HEADER, lineage_value
from meterline.kernel.messages import InputRecord, OutputRecord
from meterline.kernel.topics import MEDIATED, RATED, REJECTED
from meterline.runtime.tables import ContractsTable, PeriodsTable
from rating.stage import RatingProcessor
from schemas.codec import decode_rated, encode_usage
from tests.strategies import catalog_with, usage_event

STORAGE = Meter("storage", "GB-hour", "sum")
EU = Charge(
    "storage-eu", "storage", "flat", unit_price=Decimal("0.02"),
    filters=ChargeFilters(attributes={"region": frozenset({"eu-west"})}),
)  # fmt: skip
CATALOG = catalog_with([STORAGE], [EU])


class _Contracts:
    catalog = CATALOG


class _Periods:
    def is_closed(self, account_id: str, period: str) -> bool:
        return False


def processor() -> RatingProcessor:
    return RatingProcessor(cast(ContractsTable, _Contracts()), cast(PeriodsTable, _Periods()))


def record(partition: int, offset: int, value: bytes) -> InputRecord:
    return InputRecord(MEDIATED, partition, offset, b"acct", value, {})


def stored(event_id: str, quantity: int, region: str = "eu-west") -> bytes:
    when = datetime(2026, 10, 5, 12, tzinfo=UTC)
    return encode_usage(
        usage_event(event_id, quantity, meter="storage", event_time=when, attributes={"region": region})
    )


def test_a_batch_rates_rejects_and_counts_per_partition() -> None:
    records = [
        record(0, 10, stored("a", 3)),
        record(0, 11, b"not avro"),
        # No charge matches (mediation rejects such events; rating still does if the catalog
        # changed between the stages).
        record(1, 5, stored("b", 2, region="us-east")),
        record(0, 12, stored("c", 4)),
    ]
    result = processor().process(records)
    assert result.counts == {
        (MEDIATED, 0): Counter({"rated": 2, "rejected.malformed": 1}),
        (MEDIATED, 1): Counter({"rejected.no_matching_charge": 1}),
    }
    rated = [out for out in result.outputs if out.topic == RATED]
    assert [decode_rated(out.value or b"").amount for out in rated] == [Decimal("0.06"), Decimal("0.08")]
    assert [dict(out.headers or [])[LINEAGE_HEADER] for out in rated] == [
        lineage_value(MEDIATED, 0, 10),
        lineage_value(MEDIATED, 0, 12),
    ]
    assert [out.partition for out in rated] == [0, 0]
    rejected = [dict(out.headers or []) for out in result.outputs if out.topic == REJECTED]
    assert [h["meterline.reason"] for h in rejected] == [b"malformed", b"no_matching_charge"]


def test_state_restored_from_the_changelog_continues_the_running_aggregate() -> None:
    first = processor()
    result = first.process([record(0, 0, stored("a", 3))])
    second = processor()
    second.restore((MEDIATED, 0), iter(result.changelog[(MEDIATED, 0)]))
    again: Any = second.process([record(0, 1, stored("b", 4))]).outputs[0]
    rated = decode_rated(again.value)
    assert (rated.aggregate_before, rated.aggregate_after, rated.amount) == (
        Decimal(3),
        Decimal(7),
        Decimal("0.08"),
    )


# --- containment, limits, forgetting closed periods ----------------------------------------------


class Periods:
    """Closed periods as the stage sees them; optionally a period whose lookup fails."""

    def __init__(self, failing: str | None = None) -> None:
        self.failing = failing
        self.closed_accounts: set[tuple[str, str]] = set()
        self.changed = False

    def poll(self) -> bool:
        changed, self.changed = self.changed, False
        return changed

    def close(self, account_id: str, period: str) -> None:
        self.closed_accounts.add((period, account_id))
        self.changed = True

    def is_closed(self, account_id: str, period: str) -> bool:
        if period == self.failing:
            raise RuntimeError(f"periods view broken for {period}")
        return (period, account_id) in self.closed_accounts


class Contracts:
    def __init__(self, catalog: Catalog = CATALOG) -> None:
        self.catalog = catalog

    def poll(self) -> bool:
        return False


def stage(periods: Periods, catalog: Catalog = CATALOG) -> RatingProcessor:
    return RatingProcessor(cast(ContractsTable, Contracts(catalog)), cast(PeriodsTable, periods))


def event_bytes(event_id: str, quantity: Decimal | int, when: datetime, meter: str = "storage") -> bytes:
    period = f"{when.year:04d}-{when.month:02d}"
    return encode_usage(
        usage_event(
            event_id, quantity, meter=meter, event_time=when, period=period, attributes={"region": "eu-west"}
        )
    )


MARCH = datetime(2026, 3, 5, 12, tzinfo=UTC)
APRIL = datetime(2026, 4, 5, 12, tzinfo=UTC)


def dead_letters(outputs: list[OutputRecord]) -> list[tuple[bytes | None, dict[str, bytes]]]:
    return [(out.value, dict(out.headers or [])) for out in outputs if out.topic == REJECTED]


def test_an_aggregate_reaching_ten_to_the_twenty_is_rejected_with_the_original_bytes() -> None:
    # Reproduced on c9cf9a2: both were rated, and consolidation died on the 1.2 * 10^20 aggregate.
    big = Decimal("60000000000000000000")
    records = [
        InputRecord(
            MEDIATED,
            0,
            offset,
            b"acct",
            event_bytes(f"big-{offset}", big, MARCH),
            {
                RAW_HEADER: f"raw line {offset}".encode(),
                ORIGIN_HEADER: lineage_value("meterline.raw", 2, 40 + offset),
            },
        )
        for offset in range(2)
    ]
    result = processor().process(records)
    assert result.counts == {(MEDIATED, 0): Counter({"rated": 1, "rejected.invalid_quantity": 1})}
    [(value, headers)] = dead_letters(result.outputs)
    assert value == b"raw line 1"
    assert (headers["meterline.stage"], headers["meterline.source.offset"]) == (b"rating", b"41")
    assert result.changelog[(MEDIATED, 0)] == [
        (b"acct-1\x1facct-1-2026\x1fstorage-eu\x1f2026-03", b"60000000000000000000.000000000000000000")
    ]


def test_a_record_that_fails_unexpectedly_is_an_internal_error_and_the_batch_goes_on() -> None:
    records = [
        record(0, 0, event_bytes("a", 3, MARCH)),
        record(0, 1, event_bytes("b", 4, APRIL)),  # its period lookup fails
        record(0, 2, event_bytes("c", 5, MARCH)),
    ]
    with capture_logs() as logs:
        result = stage(Periods(failing="2026-04")).process(records)
    assert result.counts == {(MEDIATED, 0): Counter({"rated": 2, "rejected.internal_error": 1})}
    [line] = [entry for entry in logs if entry["event"] == "record_failed"]
    assert (line["stage"], line["topic"], line["partition"], line["offset"]) == ("rating", MEDIATED, 0, 1)
    [(value, headers)] = dead_letters(result.outputs)
    assert value == records[1].value
    assert headers["meterline.detail"] == b"RuntimeError: periods view broken for 2026-04"
    rated = [decode_rated(out.value or b"") for out in result.outputs if out.topic == RATED]
    assert [(r.aggregate_before, r.aggregate_after) for r in rated] == [
        (Decimal(0), Decimal(3)),
        (Decimal(3), Decimal(8)),
    ]


def test_a_record_that_cannot_be_encoded_leaves_no_trace_in_the_aggregates() -> None:
    # A charge id that cannot be written (a lone surrogate): its events fail after rating moved
    # the aggregate; the partition's batch is rated again without them.
    odd = Charge("odd-\ud800", "transfer", "flat", unit_price=Decimal(1))
    catalog = catalog_with([STORAGE, Meter("transfer", "GB", "sum")], [EU, odd])
    records = [
        record(0, 0, event_bytes("a", 3, MARCH)),
        record(0, 1, event_bytes("t1", 7, MARCH, meter="transfer")),
        record(0, 2, event_bytes("b", 4, MARCH)),
        record(0, 3, event_bytes("t2", 1, MARCH, meter="transfer")),
    ]
    processor_ = stage(Periods(), catalog)
    result = processor_.process(records)
    assert result.counts == {(MEDIATED, 0): Counter({"rated": 2, "rejected.internal_error": 2})}
    assert [h["meterline.source.offset"] for _, h in dead_letters(result.outputs)] == [b"1", b"3"]
    assert all(b"UnicodeEncodeError" in h["meterline.detail"] for _, h in dead_letters(result.outputs))
    [state] = processor_.state.values()
    assert state.aggregates == {("acct-1", "acct-1-2026", "storage-eu", "2026-03"): Decimal(7)}
    assert [key for key, _ in result.changelog[(MEDIATED, 0)]] == [
        b"acct-1\x1facct-1-2026\x1fstorage-eu\x1f2026-03"
    ]


def test_closed_periods_are_forgotten_and_tombstoned() -> None:
    users = Meter("users", "user", "unique_count", value_property="user_id")
    seats = Charge("seats", "users", "flat", unit_price=Decimal(2))
    catalog = catalog_with([STORAGE, users], [EU, seats])

    def seat(event_id: str, user: str, when: datetime) -> bytes:
        period = f"{when.year:04d}-{when.month:02d}"
        return encode_usage(
            usage_event(event_id, 1, meter="users", value=user, event_time=when, period=period)
        )

    periods = Periods()
    first = stage(periods, catalog)
    batch = first.process([
        record(0, 0, event_bytes("a", 3, MARCH)), record(0, 1, seat("s1", "u1", MARCH)),
        record(0, 2, event_bytes("b", 4, APRIL)), record(0, 3, seat("s2", "u2", APRIL)),
    ])  # fmt: skip
    changelog = list(batch.changelog[(MEDIATED, 0)])

    periods.close("acct-1", "2026-03")
    first.idle()
    march = [key for key in first.state[(MEDIATED, 0)].aggregates if key[3] == "2026-03"]
    assert march == []
    assert all(key[3] == "2026-04" for key in first.state[(MEDIATED, 0)].unique_values)
    later = first.process(
        [record(0, 4, event_bytes("c", 1, APRIL)), record(0, 5, event_bytes("d", 1, MARCH))]
    )
    assert later.counts[(MEDIATED, 0)] == Counter({"rated": 1, "rejected.period_closed": 1})
    tombstones = sorted(key for key, value in later.changelog[(MEDIATED, 0)] if value is None)
    assert tombstones == [
        b"acct-1\x1facct-1-2026\x1fseats\x1f2026-03",
        b"acct-1\x1facct-1-2026\x1fseats\x1f2026-03\x1eu1",
        b"acct-1\x1facct-1-2026\x1fstorage-eu\x1f2026-03",
    ]
    changelog += later.changelog[(MEDIATED, 0)]

    # The changelog alone rebuilds the state without the closed period, and nothing more to forget.
    restored = stage(periods, catalog)
    restored.restore((MEDIATED, 0), iter(changelog))
    assert restored.state == first.state
    assert restored.state[(MEDIATED, 0)].aggregates == {
        ("acct-1", "acct-1-2026", "storage-eu", "2026-04"): Decimal(5),
        ("acct-1", "acct-1-2026", "seats", "2026-04"): Decimal(1),
    }
    restored.idle()
    assert restored.process([record(0, 6, event_bytes("e", 1, APRIL))]).changelog[(MEDIATED, 0)] == [
        (b"acct-1\x1facct-1-2026\x1fstorage-eu\x1f2026-04", b"6.000000000000000000")
    ]


def test_a_restored_state_forgets_what_was_closed_meanwhile() -> None:
    periods = Periods()
    first = stage(periods)
    changelog = first.process([record(0, 0, event_bytes("a", 3, MARCH))]).changelog[(MEDIATED, 0)]
    periods.close("acct-1", "2026-03")
    periods.poll()  # the change is seen before the new process restores
    second = stage(periods)
    second.restore((MEDIATED, 0), iter(changelog))
    second.idle()
    assert second.state[(MEDIATED, 0)].aggregates == {}
    tombstones = second.process([record(0, 1, event_bytes("b", 1, APRIL))]).changelog[(MEDIATED, 0)]
    assert (b"acct-1\x1facct-1-2026\x1fstorage-eu\x1f2026-03", None) in tombstones

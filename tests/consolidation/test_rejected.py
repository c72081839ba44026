"""rejected_events without Kafka: rows read best effort from DLQ records, stored exactly once."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import generate_latest

from consolidation.rejected import (
    WAITING,
    DeadLetter,
    export_parquet,
    export_waiting,
    mark_replayed,
    parquet_path,
    row_of,
    save_rejected,
    waiting_by_reason,
)
from consolidation.store import BillingStore
from meterline.kernel.catalog import Catalog
from meterline.kernel.catalog_file import load_catalog
from meterline.kernel.dlq import dead_letter
from meterline.kernel.records import RatedUsage, UsageEvent, invoice_id_for
from meterline.kernel.topics import RATED, REJECTED
from schemas.codec import encode_rated

DATA = Path(__file__).parent.parent / "data" / "flat"
DLQ_TIME_MS = 1_790_000_000_000  # 2026-09-21T14:13:20Z
FORMATS = {"usage.json": "json", "usage.cdr": "asterisk-csv"}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(DATA / "catalog.yaml")


def letter(
    value: bytes | None,
    reason: str = "unknown_account",
    source: tuple[str, int, int] = ("usage.json", 0, 7),
    offset: int = 0,
    stage: str = "mediation",
    partition: int = 0,
) -> DeadLetter:
    """A DLQ record as mediation builds it (meterline.kernel.dlq.dead_letter), read back at `offset`."""
    out = dead_letter(value, b"key", reason, f"detail of {reason}", stage, *source)
    return DeadLetter(REJECTED, partition, offset, DLQ_TIME_MS, out.value, out.headers or [])


def native(account: str, time: str = "2026-10-01T02:00:00Z", meter: str = "api_calls") -> bytes:
    return orjson.dumps(
        {"event_id": f"{account}-1", "account_id": account, "meter": meter, "timestamp": time, "quantity": 3}
    )


def test_a_reference_data_rejection_names_account_meter_time_and_the_accounts_period(
    catalog: Catalog,
) -> None:
    row = row_of(letter(native("beta")), FORMATS, catalog)
    assert row == {
        "dlq_topic": REJECTED,
        "dlq_partition": 0,
        "dlq_offset": 0,
        "dlq_time": datetime(2026, 9, 21, 14, 13, 20, tzinfo=UTC),
        "reason": "unknown_account",
        "detail": "detail of unknown_account",
        "stage": "mediation",
        "source_topic": "usage.json",
        "source_partition": 0,
        "source_offset": 7,
        "account_id": "beta",
        "meter": "api_calls",
        "event_id": "beta-1",
        "event_time": datetime(2026, 10, 1, 2, tzinfo=UTC),
        "period": "2026-09",  # 22:00 on 30 September in New York
        "truncated": False,
    }


def test_an_account_the_catalog_does_not_know_gets_the_utc_month(catalog: Catalog) -> None:
    row = row_of(letter(native("gamma")), FORMATS, catalog)
    assert (row["account_id"], row["period"]) == ("gamma", "2026-10")


def test_a_future_timestamp_still_shows_its_event_time(catalog: Catalog) -> None:
    row = row_of(letter(native("alpha", "2099-01-01T00:00:00Z"), "future_timestamp"), FORMATS, catalog)
    assert row["event_time"] == datetime(2099, 1, 1, tzinfo=UTC) and row["period"] == "2099-01"


def test_a_validation_failure_keeps_the_readable_account(catalog: Catalog) -> None:
    row = row_of(letter(native("alpha", "yesterday"), "invalid_timestamp"), FORMATS, catalog)
    assert (row["reason"], row["account_id"], row["meter"], row["event_time"], row["period"]) == (
        "invalid_timestamp", "alpha", None, None, None,
    )  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [b"", None, b"\xff\xfe garbage", b'{"account_id": ', b"[1]", b'{"account_id": {"x": 1}}', b"\x00" * 40],
)
def test_bytes_that_cannot_be_read_give_a_row_of_nulls(catalog: Catalog, value: bytes | None) -> None:
    row = row_of(letter(value, "malformed"), FORMATS, catalog)
    assert (row["reason"], row["source_offset"], row["dlq_offset"]) == ("malformed", 7, 0)
    assert [row[c] for c in ("account_id", "meter", "event_id", "event_time", "period")] == [None] * 5


def test_a_foreign_record_without_meterline_headers_still_makes_a_row(catalog: Catalog) -> None:
    headers = [("meterline.source.partition", b"minus one"), ("meterline.detail", b"\xff\xfe"), ("x", None)]
    odd = DeadLetter(REJECTED, 2, 9, None, native("beta"), headers)
    row = row_of(odd, FORMATS, catalog)
    assert (row["dlq_partition"], row["dlq_offset"], row["dlq_time"]) == (2, 9, None)
    assert (row["reason"], row["stage"], row["source_topic"], row["source_partition"]) == (None,) * 4
    assert row["detail"] == "\ufffd\ufffd"
    assert row["account_id"] == "beta"  # the value is read with the default format


def test_a_cdr_is_read_with_its_topics_format(catalog: Catalog) -> None:
    cdr = (
        b'"alpha","100","200","ctx","clid","chan","dchan","Dial","x","2026-09-30 23:30:00",'
        b'"2026-09-30 23:30:05","2026-09-30 23:31:05","65","60","ANSWERED","DOCUMENTATION","u-1"'
    )
    row = row_of(letter(cdr, source=("usage.cdr", 1, 3)), FORMATS, catalog)
    assert (row["account_id"], row["meter"], row["event_id"]) == ("alpha", "voice", "u-1")
    assert row["event_time"] is not None and row["period"] is not None


def test_a_record_consolidation_rejected_is_read_as_a_rated_record(catalog: Catalog) -> None:
    event = UsageEvent(
        "r-1", "alpha", "api_calls", Decimal(1), datetime(2026, 9, 10, tzinfo=UTC), {}, None,
        "json", "alpha-1", "basic-eur", "EUR", "2026-09",
    )  # fmt: skip
    usage = RatedUsage(
        event, "eur-api", "flat", Decimal(1), Decimal("0.002"), Decimal(0), Decimal(1),
        invoice_id_for("alpha", "2026-09"),
    )  # fmt: skip
    rated = encode_rated(usage)
    row = row_of(letter(rated, "period_closed", (RATED, 0, 4), stage="consolidation"), FORMATS, catalog)
    assert (row["account_id"], row["meter"], row["event_id"], row["period"]) == (
        "alpha", "api_calls", "r-1", "2026-09",
    )  # fmt: skip
    assert row["event_time"] == datetime(2026, 9, 10, tzinfo=UTC)
    broken = row_of(letter(b"\x00\x00\x00\x00\x02not Avro", "malformed", (RATED, 0, 5)), FORMATS, catalog)
    assert broken["account_id"] is None and broken["reason"] == "malformed"


def test_a_truncated_copy_is_flagged() -> None:
    out = dead_letter(native("alpha") * 100, None, "too_large", "big", "mediation", "usage.json", 0, 1,
                      max_bytes=1000)  # fmt: skip
    row = row_of(DeadLetter(REJECTED, 0, 0, 0, out.value, out.headers or []), FORMATS, Catalog.empty())
    assert row["truncated"] is True and row["account_id"] is None


# -- stored exactly once -----------------------------------------------------------


def rows(store: BillingStore, sql: str) -> list[tuple[Any, ...]]:
    return store.db.execute(sql).fetchall()


def test_rows_and_dlq_offsets_are_stored_together_and_a_second_pass_adds_nothing(
    tmp_path: Path, catalog: Catalog
) -> None:
    store = BillingStore(tmp_path)
    batch = [row_of(letter(native(a), offset=i), FORMATS, catalog) for i, a in enumerate(("beta", "gamma"))]
    batch[1]["source_offset"] = 8
    save_rejected(store, REJECTED, batch, {0: 2})
    save_rejected(store, REJECTED, batch, {0: 2})  # consumed again (a crash before the commit)
    assert rows(store, "SELECT dlq_offset, account_id FROM rejected_events ORDER BY 1") == [
        (0, "beta"),
        (1, "gamma"),
    ]
    assert store.positions(REJECTED)[0].next_offset == 2
    assert rows(store, "SELECT replayed FROM rejected_events") == [(False,), (False,)]


def test_a_second_dlq_copy_of_one_original_is_not_a_second_row(tmp_path: Path, catalog: Catalog) -> None:
    store = BillingStore(tmp_path)
    first = row_of(letter(native("beta"), offset=0), FORMATS, catalog)
    again = row_of(letter(native("beta"), offset=5, partition=1), FORMATS, catalog)
    other_stage = row_of(letter(native("beta"), offset=6, stage="rating"), FORMATS, catalog)
    save_rejected(store, REJECTED, [first], {0: 1})
    save_rejected(store, REJECTED, [again, other_stage], {0: 7, 1: 6})
    assert rows(store, "SELECT dlq_partition, dlq_offset, stage FROM rejected_events ORDER BY 2") == [
        (0, 0, "mediation"),
        (0, 6, "rating"),
    ]
    assert {p: pos.next_offset for p, pos in store.positions(REJECTED).items()} == {0: 7, 1: 6}


def test_a_failed_save_stores_neither_rows_nor_offsets(tmp_path: Path, catalog: Catalog) -> None:
    store = BillingStore(tmp_path)
    row = row_of(letter(native("beta")), FORMATS, catalog)

    def offsets_fail(topic: str, offsets: object) -> None:  # after the rows, in the same transaction
        raise duckdb.IOException("disk full")

    store.append_offsets = offsets_fail  # type: ignore[method-assign]
    with pytest.raises(duckdb.IOException):
        save_rejected(store, REJECTED, [row], {0: 1})
    assert rows(store, "SELECT count(*) FROM rejected_events") == [(0,)]
    assert store.positions(REJECTED) == {}


def test_the_waiting_gauge_and_replayed_marks(tmp_path: Path, catalog: Catalog) -> None:
    store = BillingStore(tmp_path)
    batch = [
        row_of(letter(native("gamma"), source=("usage.json", 0, i), offset=i), FORMATS, catalog)
        for i in range(3)
    ]
    batch.append(row_of(letter(b"?", "malformed", ("usage.json", 0, 3), offset=3), FORMATS, catalog))
    batch += [row_of(letter(b"?", f"made-up-{i}", ("usage.json", 1, i), offset=4 + i), FORMATS, catalog)
              for i in range(2)]  # fmt: skip
    save_rejected(store, REJECTED, batch, {0: 6})
    export_waiting(store.db)
    assert WAITING.labels("unknown_account")._value.get() == 3
    assert WAITING.labels("malformed")._value.get() == 1
    assert WAITING.labels("unknown_meter")._value.get() == 0
    assert WAITING.labels("other")._value.get() == 2  # reasons not meterline's: one label
    assert WAITING.labels("none")._value.get() == 0
    at = datetime(2026, 10, 2, tzinfo=UTC)
    assert mark_replayed(store.db, [(REJECTED, 0, 0), (REJECTED, 0, 1), (REJECTED, 0, 99)], at) == 2
    assert mark_replayed(store.db, [(REJECTED, 0, 0)], datetime(2026, 10, 3, tzinfo=UTC)) == 0
    export_waiting(store.db)
    assert WAITING.labels("unknown_account")._value.get() == 1
    waiting = {"unknown_account": 1, "malformed": 1, "made-up-0": 1, "made-up-1": 1}
    assert waiting_by_reason(store.db) == waiting
    # In the default registry, so /metrics shows it.
    assert b'meterline_rejected_waiting{reason="unknown_account"} 1.0' in generate_latest()
    assert rows(store, "SELECT replayed_at FROM rejected_events WHERE dlq_offset = 0") == [(at,)]


def test_the_parquet_export_holds_the_table(tmp_path: Path, catalog: Catalog) -> None:
    store = BillingStore(tmp_path)
    batch = [row_of(letter(native(a), offset=i, source=("usage.json", 0, i)), FORMATS, catalog)
             for i, a in enumerate(("beta", "gamma"))]  # fmt: skip
    save_rejected(store, REJECTED, batch, {0: 2})
    export_parquet(store.db, tmp_path)
    exported = pq.read_table(parquet_path(tmp_path))
    assert exported.column("account_id").to_pylist() == ["beta", "gamma"]
    assert exported.column("replayed").to_pylist() == [False, False]
    assert exported.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    # A write killed half way leaves a temporary file: the next store opening removes it.
    (parquet_path(tmp_path).parent / ".rejected_events.parquet.tmp-123").write_bytes(b"half")
    store.close()
    BillingStore(tmp_path).close()
    assert [p.name for p in parquet_path(tmp_path).parent.iterdir()] == ["rejected_events.parquet"]

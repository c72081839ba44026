"""BillingStore and closing without Kafka: the sink's store steps and their crash-safety."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from consolidation.checkpoint import StoreCheckpoint
from consolidation.close_control import export_final_invoices
from consolidation.closing import finalize_period, refresh_previews
from consolidation.files import RatedRows
from consolidation.lake import ALIAS
from consolidation.store import BillingStore, Position
from meterline.kernel.catalog_file import load_catalog
from meterline.kernel.checkpoint import commit_checkpoint
from schemas.codec import RATED_FIELDS
from tests.support.store_batches import apply_batch

DATA = Path(__file__).parent.parent / "data" / "flat"
NOW = datetime(2026, 11, 2, tzinfo=UTC)
Key = tuple[str, str, str, str, str]


def record(event_id: str, period: str = "2026-09", amount: str = "0.002", after: str = "1") -> list[Any]:
    """A decoded rated record as decode_rated_row gives it (values in RATED_FIELDS order)."""
    values = {
        "event_id": event_id,
        "account_id": "alpha",
        "meter": "api_calls",
        "charge_id": "eur-api",
        "model": "flat",
        "contract_id": "alpha-1",
        "plan_id": "basic-eur",
        "event_time": 1_788_998_400_000_000,  # 2026-09-10T00:00:00Z in microseconds, as decoded
        "quantity": "1",
        "rated_quantity": "1",
        "amount": amount,
        "aggregate_before": "0",
        "aggregate_after": after,
        "currency": "EUR",
        "invoice_id": "INV",
        "attributes": {"region": "eu"},
        "period": period,
        "value": None,
        "source_format": "json",
    }
    return [values[name] for name in RATED_FIELDS]


@pytest.fixture
def store(tmp_path: Path) -> Any:
    opened = BillingStore(tmp_path / "out")
    yield opened
    opened.close()


def test_rated_rows_cast_decimal_text_exactly() -> None:
    rows = RatedRows()
    rows.append(record("e1", amount="0.000000000000000001"), 2, 7)
    table = rows.table()
    assert table.column("amount").to_pylist() == [Decimal("1E-18")]
    assert table.column("source_offset").to_pylist() == [7]
    too_precise = RatedRows()
    too_precise.append(record("e2", amount="0.0000000000000000001"), 0, 0)
    with pytest.raises(Exception, match="data loss"):
        too_precise.table()


def test_rated_rows_land_in_period_folders_with_relative_paths(store: BillingStore) -> None:
    rows = RatedRows()
    for offset in range(20):  # more rows than DuckLake keeps inline in its catalog
        rows.append(record(f"e{offset}", "2026-09" if offset % 2 else "2026-10"), 1, offset)
    apply_batch(store, "t", {1: Position(20, {}, {})}, [], [rows.table()])
    files = sorted(p.relative_to(store.out).parent.as_posix() for p in store.out.rglob("*.parquet"))
    assert files == ["data/main/rated_usage/period=2026-09", "data/main/rated_usage/period=2026-10"]
    assert store.db.execute("SELECT count(*) FROM rated_usage").fetchall() == [(20,)]
    stored = store.db.execute(f"SELECT path FROM __ducklake_metadata_{ALIAS}.ducklake_data_file").fetchall()
    assert stored and all(not path.startswith("/") for (path,) in stored)


def test_a_batch_whose_partition_moved_on_is_not_stored(store: BillingStore) -> None:
    """A worker that lost its partition to another (a rebalance) cannot commit a batch for it."""
    key: Key = ("alpha", "2026-09", "eur-api", "api_calls", "alpha-1")
    apply_batch(store, "t", {0: Position(5, {}, {})}, [(key, Decimal(2), Decimal(1), 1)])
    delta = [(key, Decimal(3), Decimal(1), 1, 0, 5)]
    stale = StoreCheckpoint(store, "t", [], delta, {0: Position(6, {}, {})}, {0: None})
    failure = commit_checkpoint(stale)
    assert failure is not None and "moved on" in failure[0]
    assert store.positions("t")[0].next_offset == 5
    assert store.stored_amounts([key]) == {key: Decimal(1)}


def test_temporary_files_of_a_killed_writer_are_removed_on_restart(tmp_path: Path) -> None:
    out = tmp_path / "out"
    BillingStore(out).close()
    invoices = out / "invoices" / "period=2026-09"
    rejected = out / "rejected"
    invoices.mkdir(parents=True)
    rejected.mkdir(parents=True)
    left = [
        invoices / ".invoice_drafts.parquet.tmp-4242",  # a close's export
        invoices / ".invoice_lines.parquet.tmp-77",
        rejected / ".rejected_events.parquet.tmp-12",
    ]
    for path in left:
        path.write_bytes(b"half a Parquet file")
    kept = invoices / "invoice_drafts.parquet"
    kept.write_bytes(b"an earlier export")
    BillingStore(out).close()
    assert [p for p in left if p.exists()] == []
    assert kept.exists()


def test_apply_batch_accumulates_totals_and_positions(store: BillingStore) -> None:
    key: Key = ("alpha", "2026-09", "eur-api", "api_calls", "alpha-1")
    apply_batch(
        store, "t", {0: Position(5, {"src": 4}, {"stored": 2})}, [(key, Decimal(2), Decimal("0.004"), 2)]
    )
    apply_batch(
        store, "t", {0: Position(9, {"src": 8}, {"stored": 3})}, [(key, Decimal(3), Decimal("0.002"), 1)]
    )
    assert store.db.execute("SELECT aggregate, amount_exact, event_count FROM usage_totals").fetchall() == [
        (Decimal(3), Decimal("0.006"), 3)
    ]
    assert store.positions("t") == {0: Position(9, {"src": 8}, {"stored": 3})}
    apply_batch(store, "t", {}, [])  # an empty batch is a no-op, not an error
    assert store.positions("t") == {0: Position(9, {"src": 8}, {"stored": 3})}


def test_previews_then_final_are_idempotent_and_exported(store: BillingStore) -> None:
    catalog = load_catalog(DATA / "catalog.yaml")
    key: Key = ("alpha", "2026-09", "eur-api", "api_calls", "alpha-1")
    apply_batch(store, "t", {0: Position(1, {}, {})}, [(key, Decimal(1000), Decimal(2), 1)])
    assert store.stale_previews(lambda _: True) == {("alpha", "2026-09")}
    refresh_previews(store, catalog, store.stale_previews(lambda _: True), NOW)
    assert store.stale_previews(lambda _: True) == set()
    assert store.db.execute("SELECT status, event_count FROM invoice_drafts").fetchall() == [("open", 1)]
    apply_batch(store, "t", {0: Position(2, {}, {})}, [(key, Decimal(1500), Decimal(1), 1)])
    assert store.stale_previews(lambda _: True) == {
        ("alpha", "2026-09")
    }  # usage moved on: a restart refreshes it

    assert finalize_period(store, catalog, "2026-09", NOW) >= 1
    first = store.db.execute("SELECT * FROM invoice_drafts ORDER BY ALL").fetchall()
    assert {r[10] for r in first} == {"final"}
    assert finalize_period(store, catalog, "2026-09", NOW) == 0  # a repeated close changes nothing
    assert store.db.execute("SELECT * FROM invoice_drafts ORDER BY ALL").fetchall() == first
    export_final_invoices(store, "2026-09")
    exported = pq.read_table(store.out / "invoices" / "period=2026-09" / "invoice_drafts.parquet")
    assert exported.num_rows == len(first)
    lines = store.db.execute("SELECT count(*) FROM invoice_lines").fetchone()
    assert pq.read_table(store.out / "invoices" / "period=2026-09" / "invoice_lines.parquet").num_rows == (
        lines[0] if lines else -1
    )


def test_overlapping_writers_on_the_sqlite_catalog_queue_and_both_commit(tmp_path: Path) -> None:
    """SQLite's catalog fails a DuckLake commit whose transaction began before another
    writer's commit ("database is locked"): the writer lock makes the second one wait."""
    first, second = BillingStore(tmp_path / "out"), BillingStore(tmp_path / "out")
    key: Key = ("alpha", "2026-09", "eur-api", "api_calls", "alpha-1")
    began = threading.Event()

    def write(store: BillingStore, partition: int) -> None:
        with store.transaction():
            began.set()
            store.write_deltas([(key, Decimal(1), Decimal(1), 1, partition, 0)])

    try:
        with first.transaction():
            first.write_deltas([(key, Decimal(1), Decimal(1), 1, 0, 0)])
            other = threading.Thread(target=write, args=(second, 1))
            other.start()
            assert not began.wait(0.5), "the second writer began while the first held the store"
        other.join(30)
        assert began.is_set()
        assert first.stored_amounts([key]) == {key: Decimal(2)}
    finally:
        first.close()
        second.close()

"""BillingStore and closing without Kafka: the sink's DuckDB/Parquet steps and their crash-safety."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from consolidation.closing import finalize_period, refresh_previews
from consolidation.files import RatedRows
from consolidation.store import BillingStore, Position
from meterline.catalog_file import load_catalog
from schemas.codec import RATED_FIELDS

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


def test_rated_files_split_by_period_and_uncommitted_ones_are_discarded(store: BillingStore) -> None:
    rows = RatedRows()
    rows.append(record("e1", "2026-09"), 1, 10)
    rows.append(record("e2", "2026-10"), 1, 11)
    store.write_rated_files(1, 10, 11, rows)
    later = RatedRows()
    later.append(record("e3", "2026-10"), 1, 12)
    store.write_rated_files(1, 12, 12, later)
    files = sorted(p.relative_to(store.out).as_posix() for p in store.out.rglob("*.parquet"))
    assert files == [
        "rated_usage/period=2026-09/part-001-000000000010-000000000011.parquet",
        "rated_usage/period=2026-10/part-001-000000000010-000000000011.parquet",
        "rated_usage/period=2026-10/part-001-000000000012-000000000012.parquet",
    ]
    # Offset 12 was never committed: a restart at next_offset 12 removes its file, keeps the rest.
    store.discard_uncommitted_files(1, 12)
    assert len(list(store.out.rglob("*.parquet"))) == 2
    store.refresh_view()
    assert store.db.execute("SELECT count(*) FROM rated_usage").fetchone() == (2,)


def test_temporary_files_of_a_killed_writer_are_removed_on_restart(tmp_path: Path) -> None:
    out = tmp_path / "out"
    BillingStore(out).close()
    rated = out / "rated_usage" / "period=2026-10"
    invoices = out / "invoices" / "period=2026-09"
    rated.mkdir(parents=True)
    invoices.mkdir(parents=True)
    left = [
        rated / ".part-001-000000000012-000000000020.parquet.tmp-4242",
        rated / ".part-002-000000000012-000000000020.parquet.tmp-4242",  # any partition
        rated / ".part-002-000000000000-000000000999-c1.parquet.tmp-4243",  # a compaction's
        invoices / ".invoice_drafts.parquet.tmp-4242",  # a close's export
        invoices / ".invoice_lines.parquet.tmp-77",
    ]
    for path in left:
        path.write_bytes(b"half a Parquet file")
    kept = invoices / "invoice_drafts.parquet"
    kept.write_bytes(b"an earlier export")
    # DuckDB lets one process write the store: whoever opens it is the only writer left.
    BillingStore(out).close()
    assert [p for p in left if p.exists()] == []
    assert kept.exists()


def test_apply_batch_accumulates_totals_and_positions(store: BillingStore) -> None:
    key: Key = ("alpha", "2026-09", "eur-api", "api_calls", "alpha-1")
    store.apply_batch(
        "t", {0: Position(5, {"src": 4}, {"stored": 2})}, [(key, Decimal(2), Decimal("0.004"), 2)]
    )
    store.apply_batch(
        "t", {0: Position(9, {"src": 8}, {"stored": 3})}, [(key, Decimal(3), Decimal("0.002"), 1)]
    )
    assert store.db.execute("SELECT aggregate, amount_exact, event_count FROM usage_totals").fetchall() == [
        (Decimal(3), Decimal("0.006"), 3)
    ]
    assert store.positions("t") == {0: Position(9, {"src": 8}, {"stored": 3})}
    store.apply_batch("t", {}, [])  # an empty batch is a no-op, not an error


def test_previews_then_final_are_idempotent_and_exported(store: BillingStore) -> None:
    catalog = load_catalog(DATA / "catalog.yaml")
    key: Key = ("alpha", "2026-09", "eur-api", "api_calls", "alpha-1")
    store.apply_batch("t", {0: Position(1, {}, {})}, [(key, Decimal(1000), Decimal(2), 1)])
    assert store.stale_previews() == {("alpha", "2026-09")}
    refresh_previews(store, catalog, store.stale_previews(), NOW)
    assert store.stale_previews() == set()
    assert store.db.execute("SELECT status, event_count FROM invoice_drafts").fetchall() == [("open", 1)]
    store.apply_batch("t", {0: Position(2, {}, {})}, [(key, Decimal(1500), Decimal(1), 1)])
    assert store.stale_previews() == {("alpha", "2026-09")}  # usage moved on: a restart refreshes it

    assert finalize_period(store, catalog, "2026-09", NOW) >= 1
    first = store.db.execute("SELECT * FROM invoice_drafts ORDER BY ALL").fetchall()
    assert {r[10] for r in first} == {"final"}
    assert finalize_period(store, catalog, "2026-09", NOW) == 0  # a repeated close changes nothing
    assert store.db.execute("SELECT * FROM invoice_drafts ORDER BY ALL").fetchall() == first
    exported = pq.read_table(store.out / "invoices" / "period=2026-09" / "invoice_drafts.parquet")
    assert exported.num_rows == len(first)
    lines = store.db.execute("SELECT count(*) FROM invoice_lines").fetchone()
    assert pq.read_table(store.out / "invoices" / "period=2026-09" / "invoice_lines.parquet").num_rows == (
        lines[0] if lines else -1
    )

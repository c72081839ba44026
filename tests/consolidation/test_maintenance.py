"""Store maintenance: roll-ups and DuckLake's checkpoint change no figure and shrink the store."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from consolidation.files import RatedRows
from consolidation.maintenance import checkpoint, roll_up
from consolidation.store import BillingStore, Position
from tests.consolidation.test_store import record
from tests.support.store_batches import apply_batch

KEY = ("alpha", "2026-09", "eur-api", "api_calls", "alpha-1")
TOTALS = "SELECT account_id, aggregate, amount_exact, event_count FROM usage_totals"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BillingStore]:
    opened = BillingStore(tmp_path / "out")
    yield opened
    opened.close()


def _current_files(store: BillingStore, table: str) -> int:
    rows = store.db.execute(f"SELECT count(*) FROM ducklake_list_files('billing', '{table}')").fetchall()
    return int(rows[0][0])


def test_roll_up_and_checkpoint_keep_every_figure_and_merge_small_files(store: BillingStore) -> None:
    offset = 0
    for batch in range(6):
        rows = RatedRows()
        for _ in range(20):  # more rows than DuckLake keeps inline: a file per batch
            rows.append(record(f"e{offset}"), 0, offset)
            offset += 1
        totals = [(KEY, Decimal(offset), Decimal("0.04"), 20)]
        apply_batch(store, "t", {0: Position(offset, {"src": batch}, {})}, totals, [rows.table()])
    before = store.db.execute(TOTALS).fetchall()
    rated = store.db.execute("SELECT count(*), sum(amount) FROM rated_usage").fetchall()
    assert _current_files(store, "rated_usage") == 6

    roll_up(store, "t", [0])
    assert checkpoint(store, history_days=400)

    assert store.db.execute(TOTALS).fetchall() == before == [("alpha", Decimal(120), Decimal("0.24"), 120)]
    assert store.db.execute("SELECT count(*) FROM usage_deltas").fetchall() == [(1,)]
    assert store.db.execute("SELECT count(*) FROM consumer_positions").fetchall() == [(1,)]
    assert store.positions("t") == {0: Position(120, {"src": 5}, {})}
    assert store.db.execute("SELECT count(*), sum(amount) FROM rated_usage").fetchall() == rated
    assert _current_files(store, "rated_usage") == 1
    # The batches after maintenance add to the rolled-up totals.
    apply_batch(store, "t", {0: Position(121, {}, {})}, [(KEY, Decimal(121), Decimal("0.002"), 1)])
    assert store.stored_amounts([KEY]) == {KEY: Decimal("0.242")}

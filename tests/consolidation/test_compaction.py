"""Compaction of the rated-usage files: bounded file counts, every row seen exactly once by
rated_usage before, after, and after a crash at any step of a merge."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from consolidation import compaction
from consolidation.compaction import FANOUT, compact_partition
from consolidation.files import RatedFile, RatedRows, merge_parquet, publish_file, rated_files, temporary_name
from consolidation.store import BillingStore, Position
from tests.consolidation.test_store import record

PERIOD = "2026-09"
ROWS_PER_BATCH = 3


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def store(out: Path) -> Iterator[BillingStore]:
    opened = BillingStore(out)
    yield opened
    opened.close()


def _write_batches(store: BillingStore, partition: int, batches: int, start: int = 0) -> int:
    """`batches` committed batches of ROWS_PER_BATCH rows each; returns the next offset."""
    offset = start
    for _ in range(batches):
        rows = RatedRows()
        for i in range(ROWS_PER_BATCH):
            rows.append(record(f"p{partition}-e{offset + i}", PERIOD, amount="0.5"), partition, offset + i)
        store.write_rated_files(partition, offset, offset + ROWS_PER_BATCH - 1, rows)
        offset += ROWS_PER_BATCH
        store.apply_batch("t", {partition: Position(offset, {}, {})}, [])
    return offset


def _seen(store: BillingStore) -> tuple[Any, ...]:
    store.refresh_view()
    row = store.db.execute(
        "SELECT count(*), count(DISTINCT (source_partition, source_offset)), sum(amount) FROM rated_usage"
    ).fetchall()
    return tuple(row[0])


def _files(store: BillingStore, partition: int) -> list[RatedFile]:
    return rated_files(store.rated_dir / f"period={PERIOD}", partition)


def test_batch_files_are_merged_level_by_level_and_rows_stay_exactly_once(store: BillingStore) -> None:
    batches = FANOUT * FANOUT + 5
    next_offset = 0
    for _ in range(batches):  # as the stage does: compact after each committed batch
        next_offset = _write_batches(store, 1, 1, next_offset)
        compact_partition(store, PERIOD, 1, next_offset)
    files = _files(store, 1)
    # One level-2 file (FANOUT^2 batches) and the 5 newest batch files.
    assert [f.level for f in files] == [2, 0, 0, 0, 0, 0]
    assert files[0].first == 0 and files[0].last == FANOUT * FANOUT * ROWS_PER_BATCH - 1
    rows = batches * ROWS_PER_BATCH
    assert _seen(store) == (rows, rows, Decimal("0.5") * rows)
    assert store.hidden_files() == set()


def test_only_committed_files_are_merged(store: BillingStore) -> None:
    committed = _write_batches(store, 0, FANOUT)
    # A batch written but not committed (the process died before its DuckDB commit).
    rows = RatedRows()
    rows.append(record("late", PERIOD), 0, committed)
    store.write_rated_files(0, committed, committed, rows)
    assert compact_partition(store, PERIOD, 0, committed) == FANOUT
    files = _files(store, 0)
    assert [(f.level, f.first, f.last) for f in files] == [(1, 0, committed - 1), (0, committed, committed)]


def test_a_closed_period_becomes_one_file_per_partition(store: BillingStore) -> None:
    ends = {p: _write_batches(store, p, 4) for p in (0, 1)}
    before = _seen(store)
    assert compaction.compact_period(store, PERIOD, ends) == 8
    assert [len(_files(store, p)) for p in (0, 1)] == [1, 1]
    assert _seen(store) == before


def _merge_until(store: BillingStore, partition: int, step: int) -> None:
    """Run a merge of all the partition's files up to `step` (see compaction), then stop as if killed."""
    sources = _files(store, partition)
    folder = sources[0].path.parent
    target = folder / f"part-{partition:03d}-{0:012d}-{sources[-1].last:012d}-c1.parquet"
    temporary = temporary_name(target)
    merge_parquet([f.path for f in sources], temporary)  # 1
    if step >= 2:
        store.swap_hidden((), [target])
    if step >= 3:
        publish_file(temporary, target)
    if step >= 4:
        store.swap_hidden([target], [f.path for f in sources])
    if step >= 5:
        sources[0].path.unlink()  # killed halfway through the unlinks


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5])
def test_a_merge_killed_at_any_step_neither_duplicates_nor_loses_rows(out: Path, step: int) -> None:
    store = BillingStore(out)
    _write_batches(store, 2, 5)
    before = _seen(store)
    _merge_until(store, 2, step)
    assert _seen(store) == before  # readers see every row once while the merge runs
    store.db.close()  # killed: nothing else runs

    reopened = BillingStore(out)
    try:
        assert _seen(reopened) == before
        assert reopened.hidden_files() == set()
        files = _files(reopened, 2)
        assert [f.level for f in files] == ([1] if step >= 4 else [0] * 5)
        leftovers = [p.name for p in reopened.rated_dir.rglob("*") if p.is_file() and ".tmp-" in p.name]
        assert leftovers == []
        # And the partition goes on: more batches, another merge.
        next_offset = _write_batches(reopened, 2, FANOUT, start=files[-1].last + 1)
        compact_partition(reopened, PERIOD, 2, next_offset)
        assert _seen(reopened)[0] == before[0] + FANOUT * ROWS_PER_BATCH
    finally:
        reopened.close()

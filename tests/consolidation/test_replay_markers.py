"""Replay markers -> rejected_events.replayed: which markers can be read, and the table
following them whatever order markers and DLQ records come in (the broker-backed
follower is covered by tests/integration/test_replay.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from consolidation.rejected import row_of, save_rejected
from consolidation.replay_markers import letter_of_key, marker_problem, replayed_at, sync_replayed
from consolidation.store import BillingStore
from meterline.kernel.catalog import Catalog
from meterline.kernel.topics import REJECTED
from tests.consolidation.test_rejected import FORMATS, letter, native

AT = datetime(2026, 10, 2, 8, 30, tzinfo=UTC)
LATER = datetime(2026, 10, 5, tzinfo=UTC)


@pytest.fixture
def catalog() -> Catalog:
    from meterline.kernel.catalog_file import load_catalog

    return load_catalog(Path(__file__).parent.parent / "data" / "flat" / "catalog.yaml")


def marker(at: datetime = AT) -> bytes:
    return orjson.dumps({"replayed_at": at.isoformat(), "topic": "usage.json", "reason": "unknown_account"})


def test_a_marker_names_its_dlq_record_and_when() -> None:
    dlq = "blue.meterline.usage.rejected"
    assert letter_of_key(f"{dlq}/3/1207".encode()) == (dlq, 3, 1207)
    assert replayed_at(marker()) == AT
    assert marker_problem(b"t/0/1", marker()) is None
    assert marker_problem(b"t/0/1", None) is None  # a tombstone un-marks


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"no-slashes", marker()),
        (b"t/x/1", marker()),
        (b"t/0/-1", marker()),
        (b"/0/1", marker()),
        (b"\xff/0/1", marker()),
        (b"t/0/1", b"not json"),
        (b"t/0/1", b"[1]"),
        (b"t/0/1", b'{"topic": "usage.json"}'),
        (b"t/0/1", b'{"replayed_at": "yesterday"}'),
        (b"t/0/1", b'{"replayed_at": "2026-10-02T08:30:00"}'),  # no zone
    ],
)
def test_a_marker_that_cannot_be_read_is_reported(key: bytes, value: bytes) -> None:
    assert marker_problem(key, value)


def _store(tmp_path: Path, catalog: Catalog, count: int) -> BillingStore:
    store = BillingStore(tmp_path)
    batch = [
        row_of(letter(native(f"acct{i}"), source=("usage.json", 0, i), offset=i), FORMATS, catalog)
        for i in range(count)
    ]
    save_rejected(store, REJECTED, batch, {0: count})
    return store


def _replayed(store: BillingStore) -> list[tuple[Any, ...]]:
    return store.db.execute(
        "SELECT dlq_offset, replayed_at FROM rejected_events WHERE replayed ORDER BY 1"
    ).fetchall()


def test_the_table_follows_the_markers_idempotently(tmp_path: Path, catalog: Catalog) -> None:
    store = _store(tmp_path, catalog, 4)
    try:
        marked = {(REJECTED, 0, 1): AT, (REJECTED, 0, 2): AT, (REJECTED, 0, 99): AT}  # 99: not stored yet
        assert sync_replayed(store, marked) == 2
        assert sync_replayed(store, marked) == 0  # read again from the start: nothing changes
        assert _replayed(store) == [(1, AT), (2, AT)]
        # A second replay's marker keeps the first time; a tombstone (key gone) un-marks.
        assert sync_replayed(store, {(REJECTED, 0, 1): LATER, (REJECTED, 0, 99): AT}) == 1
        assert _replayed(store) == [(1, AT)]
        # Another installation's DLQ topic, same partition and offset: not this row.
        assert sync_replayed(store, {("green.meterline.usage.rejected", 0, 3): AT}) == 1
        assert _replayed(store) == []
    finally:
        store.close()


def test_a_marker_read_before_its_dlq_record_applies_when_the_row_arrives(
    tmp_path: Path, catalog: Catalog
) -> None:
    store = _store(tmp_path, catalog, 2)
    try:
        marked = {(REJECTED, 0, 2): AT, (REJECTED, 0, 0): LATER}
        late = row_of(letter(native("late"), source=("usage.json", 0, 2), offset=2), FORMATS, catalog)
        save_rejected(store, REJECTED, [late], {0: 3})
        # Only the new rows are looked at: offset 0's marker waits for a full pass.
        assert sync_replayed(store, marked, [(REJECTED, 0, 2)]) == 1
        assert sync_replayed(store, marked, [(REJECTED, 0, 1)]) == 0
        assert _replayed(store) == [(2, AT)]
        assert sync_replayed(store, marked) == 1
        assert _replayed(store) == [(0, LATER), (2, AT)]
    finally:
        store.close()

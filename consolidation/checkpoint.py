"""The consolidator's checkpoint: one batch into the billing store, one store transaction.

The steps of meterline.kernel.checkpoint, for the store:

    1. begin a store transaction
    2. the batch's rated-usage rows. Its DLQ records went out before step 1 and were
       delivered: a Kafka producer cannot join a store transaction, so a batch that
       is replayed may repeat them, and rejected_events keeps one row per original.
    3. the batch's running-total deltas (usage_totals sums them)
    4. check that no other worker committed for these partitions since this one
       read their positions (it would own them now: a rebalance)
    5. the consumed positions, with lineage and counts
    6. commit: one DuckLake snapshot; readers see the whole batch or nothing
    7. on failure: roll back; the stage rewinds to the stored positions
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import duckdb
import pyarrow as pa
import structlog

from consolidation.store import BillingStore, Delta, Position, PositionMovedError, error_text, is_conflict
from meterline.kernel.checkpoint import Failure, commit_checkpoint

log = structlog.get_logger()


class StoreCheckpoint:
    failures: tuple[type[Exception], ...] = (duckdb.Error, PositionMovedError)

    def __init__(
        self,
        store: BillingStore,
        topic: str,
        rows: Iterable[pa.Table],
        deltas: Sequence[Delta],
        positions: Mapping[int, Position],
        expected: Mapping[int, int | None],
    ) -> None:
        self.store = store
        self.topic = topic
        self.rows = rows
        self.deltas = deltas
        self.positions = positions
        self.expected = expected

    def begin(self) -> None:
        self.store.begin()

    def write_outputs(self) -> None:
        self.store.write_rated(self.rows)

    def write_state(self) -> None:
        self.store.write_deltas(self.deltas)

    def write_progress(self) -> None:
        self.store.check_positions(self.topic, self.expected)

    def write_offsets(self) -> None:
        self.store.append_positions(self.topic, self.positions)

    def commit(self) -> None:
        self.store.commit()

    def abort(self, error: Exception) -> Failure:
        self.store.abort()
        detail = error_text(error)
        log.warning("store_batch_aborted", error=detail, conflict=is_conflict(error))
        return (detail, False)


class BatchNotStoredError(Exception):
    """A batch committed with store_batch was aborted."""


def store_batch(
    store: BillingStore,
    topic: str,
    rows: Iterable[pa.Table],
    deltas: Sequence[Delta],
    positions: Mapping[int, Position],
) -> None:
    """Commit one batch as the only writer of its partitions (benchmarks and tests; the
    stage checks against the positions it read at assignment instead)."""
    stored = store.positions(topic)
    expected = {p: stored[p].next_offset if p in stored else None for p in positions}
    failure = commit_checkpoint(StoreCheckpoint(store, topic, rows, deltas, positions, expected))
    if failure is not None:
        raise BatchNotStoredError(failure[0])

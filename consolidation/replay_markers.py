"""`meterline replay`'s markers -> `rejected_events.replayed`.

Replay writes one marker per re-published DLQ record on the installation's compacted
topic `meterline.replays`: key "DLQ_TOPIC/PARTITION/OFFSET", value JSON
{"replayed_at", "topic", "reason"}; a tombstone un-marks the record. Consolidation
follows that topic like a control table (meterline.runtime.tables): read in full at start,
then polled between batches; a marker it cannot read is skipped with the
control-record log line and metric, never raised.

The table follows the markers, whatever order they come in: a row with a marker is
replayed (at the marker's time), a row without one is not. Every marker change
re-applies the whole set (markers change only when someone replays), and the rows of
each new batch of DLQ records get the markers already known for them, so a marker
read before its DLQ record still counts. Applying is idempotent.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Final

import orjson
import pyarrow as pa

from meterline.kernel.config import Settings
from meterline.runtime.tables import CompactedTable

if TYPE_CHECKING:
    from consolidation.store import BillingStore

Letter = tuple[str, int, int]  # DLQ topic, partition, offset

_KEYS: Final = "replay_markers"


def letter_of_key(key: bytes) -> Letter:
    """The DLQ record a marker's key names; ValueError if it names none."""
    topic, partition, offset = key.decode().rsplit("/", 2)
    if not topic or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{key[:100]!r} is not DLQ_TOPIC/PARTITION/OFFSET")
    return topic, int(partition), int(offset)


def replayed_at(value: bytes) -> datetime:
    """When a marker says its record was replayed; ValueError if it does not say."""
    marker = orjson.loads(value)
    at = marker.get("replayed_at") if isinstance(marker, dict) else None
    if not isinstance(at, str):
        raise ValueError("no replayed_at")
    when = datetime.fromisoformat(at)
    if when.tzinfo is None:
        raise ValueError(f"replayed_at {at!r} has no time zone")
    return when


def marker_problem(key: bytes, value: bytes | None) -> str | None:
    """Why a marker record cannot be applied (CompactedTable's validator), or None."""
    try:
        letter_of_key(key)
        if value is not None:
            replayed_at(value)
    except ValueError as exc:  # orjson.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return str(exc)
    return None


class ReplayMarkers:
    """The installation's replay markers, followed like a control table."""

    def __init__(self, settings: Settings) -> None:
        topics = settings.topics
        self._table = CompactedTable(
            topics.replays,
            settings.bootstrap_servers,
            settings.kafka,
            f"replays-{settings.instance_id}",
            validate=marker_problem,
            prefix=topics.prefix,
        )
        self.marked: dict[Letter, datetime] = {}

    def load(self) -> None:
        """Read the topic to its end (blocks)."""
        self._table.load()
        self._rebuild()

    def poll(self) -> bool:
        """Apply what arrived since the last call; True if the markers changed."""
        if self._table.poll():
            self._rebuild()
            return True
        return False

    def close(self) -> None:
        self._table.close()

    def _rebuild(self) -> None:
        # The table's validator let only readable records in.
        self.marked = {letter_of_key(k): replayed_at(v) for k, v in self._table.values.items()}


def sync_replayed(
    store: BillingStore, marked: Mapping[Letter, datetime], only: Collection[Letter] | None = None
) -> int:
    """Make `rejected_events.replayed` follow the markers; returns how many rows changed.

    Without `only`, every row: marked ones replayed (keeping an earlier replayed_at),
    the others not. With `only` (rows just stored, none replayed yet), those rows are
    marked if a marker names them.
    """
    wanted = marked if only is None else {letter: marked[letter] for letter in only if letter in marked}
    if not wanted and only is not None:
        return 0
    keys = pa.table(
        {
            "dlq_topic": pa.array([t for t, _, _ in wanted], pa.string()),
            "dlq_partition": pa.array([p for _, p, _ in wanted], pa.int32()),
            "dlq_offset": pa.array([o for _, _, o in wanted], pa.int64()),
            "replayed_at": pa.array(list(wanted.values()), pa.timestamp("us", tz="UTC")),
        }
    )
    match = """rejected_events.dlq_topic = k.dlq_topic AND rejected_events.dlq_partition = k.dlq_partition
               AND rejected_events.dlq_offset = k.dlq_offset"""

    def sync() -> int:
        changed = 0
        with store.transaction() as db:
            rows = db.execute(
                f"""UPDATE rejected_events SET replayed = true, replayed_at = k.replayed_at
                    FROM {_KEYS} k WHERE NOT replayed AND {match}"""
            ).fetchall()
            changed += int(rows[0][0]) if rows else 0
            if only is None:  # un-marked (a tombstone): the record waits again
                rows = db.execute(
                    f"""UPDATE rejected_events SET replayed = false, replayed_at = NULL
                        WHERE replayed AND NOT EXISTS (SELECT 1 FROM {_KEYS} k WHERE {match})"""
                ).fetchall()
                changed += int(rows[0][0]) if rows else 0
        return changed

    store.db.register(_KEYS, keys)
    try:
        return store.retrying(sync)
    finally:
        store.db.unregister(_KEYS)

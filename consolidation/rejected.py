"""`rejected_events`: every DLQ record as a row, for "what usage is waiting, whose, since when".

One row per record of `meterline.usage.rejected`, whichever stage rejected it. Its
identity is the DLQ record's own topic/partition/offset; the DLQ offsets consumed are
stored in `consumer_positions` in the same store transaction as the rows, so a
restarted worker neither loses nor repeats one.

Account, meter, event id and event time are read from the original bytes, best
effort: with mediation's parser for raw records (the raw topic's configured format),
with the rated codec for records consolidation rejected. Bytes that cannot be read
(garbage, a truncated prefix, a validation failure) leave those columns NULL; the
row is written all the same. `period` is the event's month in its account's zone
when the catalog knows the account, else the UTC month.

Several DLQ records can stand for one original: consolidation delivers a batch's DLQ
records before it commits, so a crash can repeat them, and the embedded broker shows
records of aborted transactions to read_committed readers. A row is kept only for
the first DLQ record of each (stage, source topic, partition, offset).

`replayed` is false until the original is re-published. The mechanism meant for
`meterline replay` (not built yet): in one Kafka transaction, the copy to the raw
topic (header `meterline.replay.of` = "TOPIC/PARTITION/OFFSET" of the DLQ record) and
a marker on a compacted control topic keyed the same way; the consolidator applies
the markers with `mark_replayed` (idempotent, so they can be read again from the
start). A replayed copy rejected again is a new DLQ record with a new source offset:
a new row, waiting in its turn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import duckdb
import pyarrow as pa
import structlog
from prometheus_client import Gauge

from consolidation.files import write_parquet_atomically
from mediation.formats import account_of, parse_record
from meterline.kernel.catalog import Catalog
from meterline.kernel.headers import DETAIL_HEADER, REASON_HEADER, STAGE_HEADER, TRUNCATED_HEADER
from meterline.kernel.reasons import REASONS, Rejected
from meterline.kernel.topics import RATED
from schemas.codec import RATED_FIELDS, decode_rated_row

if TYPE_CHECKING:
    from consolidation.store import BillingStore

log = structlog.get_logger()

WAITING = Gauge(
    "meterline_rejected_waiting",
    "Rejected records not replayed yet (rows of rejected_events with replayed = false), by reason",
    ["reason"],
)
NO_REASON: Final = "none"  # the gauge's label for DLQ records without a reason header
OTHER_REASON: Final = "other"  # and for reasons that are not meterline's (bounded label values)

REJECTED_SCHEMA: Final = pa.schema(
    [
        ("dlq_topic", pa.string()),
        ("dlq_partition", pa.int32()),
        ("dlq_offset", pa.int64()),
        ("dlq_time", pa.timestamp("ms", tz="UTC")),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("stage", pa.string()),
        ("source_topic", pa.string()),
        ("source_partition", pa.int32()),
        ("source_offset", pa.int64()),
        ("account_id", pa.string()),
        ("meter", pa.string()),
        ("event_id", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("period", pa.string()),
        ("truncated", pa.bool_()),
    ]
)
_COLUMNS: Final = ", ".join(REJECTED_SCHEMA.names)


# Far enough ahead that no event counts as "in the future": a future_timestamp rejection
# still shows its event time.
_NOW: Final = datetime(9000, 1, 1, tzinfo=UTC)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_RATED_ACCOUNT, _RATED_METER, _RATED_EVENT_ID, _RATED_TIME, _RATED_PERIOD = (
    RATED_FIELDS.index(name) for name in ("account_id", "meter", "event_id", "event_time", "period")
)


class DeadLetter(NamedTuple):
    """One record read from the DLQ topic, as the consumer gave it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


class Found(NamedTuple):
    account_id: str | None = None
    meter: str | None = None
    event_id: str | None = None
    event_time: datetime | None = None
    period: str | None = None


def row_of(
    letter: DeadLetter, formats: Mapping[str, str], catalog: Catalog, rated_topic: str = RATED
) -> dict[str, Any]:
    """The rejected_events row of one DLQ record. Never raises: what cannot be read is NULL.
    `formats` maps the installation's raw topics to their formats; `rated_topic` is its rated topic."""
    row: dict[str, Any] = dict.fromkeys(REJECTED_SCHEMA.names)
    row.update(
        dlq_topic=letter.topic,
        dlq_partition=letter.partition,
        dlq_offset=letter.offset,
        dlq_time=_instant_ms(letter.timestamp_ms),
        truncated=False,
    )
    try:
        headers = {name: _text(value) for name, value in letter.headers if value is not None}
        row.update(
            reason=headers.get(REASON_HEADER),
            detail=headers.get(DETAIL_HEADER),
            stage=headers.get(STAGE_HEADER),
            source_topic=headers.get("meterline.source.topic"),
            source_partition=_integer(headers.get("meterline.source.partition"), 2**31),
            source_offset=_integer(headers.get("meterline.source.offset"), 2**63),
            truncated=TRUNCATED_HEADER in headers,
        )
        found = found_in(letter.value or b"", row["source_topic"], formats, catalog, rated_topic)
        row.update(found._asdict())
    except Exception as exc:  # a foreign or damaged record: a row with what was read
        log.warning(
            "rejected_record_unreadable",
            partition=letter.partition,
            offset=letter.offset,
            error=f"{type(exc).__name__}: {exc}",
        )
    # Lone surrogates (which UTF-8, hence Arrow, refuses) become U+FFFD: one odd record
    # must not stop the batch.
    for name, value in row.items():
        if type(value) is str:
            row[name] = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return row


def found_in(
    value: bytes,
    source_topic: str | None,
    formats: Mapping[str, str],
    catalog: Catalog,
    rated_topic: str = RATED,
) -> Found:
    """Account, meter, event id, time and period read from a DLQ record's value, best effort."""
    if source_topic == rated_topic:
        try:
            rated = decode_rated_row(value)
            time = _EPOCH + timedelta(microseconds=rated[_RATED_TIME])
        except Exception:  # SchemaError, or a time past datetime's range
            return Found()
        return Found(
            rated[_RATED_ACCOUNT], rated[_RATED_METER], rated[_RATED_EVENT_ID], time, rated[_RATED_PERIOD]
        )
    fmt = formats.get(source_topic or "", "auto")
    size = max(len(value), 1)
    try:
        event = parse_record(value, fmt, {}, _NOW, size)
    except Rejected:  # a validation failure: the account may still be readable
        return Found(account_of(value, fmt, size))
    account = catalog.accounts.get(event.account_id)
    time = event.event_time
    period = account.period_of(time) if account is not None else f"{time.year:04d}-{time.month:02d}"
    return Found(event.account_id, event.meter, event.event_id, time, period)


def save_rejected(
    store: BillingStore, topic: str, rows: Sequence[dict[str, Any]], positions: Mapping[int, int]
) -> None:
    """Insert the rows and store the DLQ's next offsets (partition -> offset), in one store
    transaction. Rows of a DLQ record or of an original already stored are left out (a batch
    consumed again after a crash, an original rejected twice)."""
    table = pa.Table.from_pylist(list(rows), schema=REJECTED_SCHEMA)

    def save() -> None:
        with store.transaction() as db:
            if table.num_rows:
                db.register("batch_rejected", table)
                try:
                    db.execute(
                        f"""INSERT INTO rejected_events ({_COLUMNS}, replayed, replayed_at)
                            SELECT {_COLUMNS}, false, NULL::TIMESTAMPTZ FROM batch_rejected b
                            WHERE NOT EXISTS (SELECT 1 FROM rejected_events r
                                              WHERE r.dlq_topic = b.dlq_topic
                                                AND r.dlq_partition = b.dlq_partition
                                                AND r.dlq_offset = b.dlq_offset)
                              AND (b.source_offset IS NULL OR NOT EXISTS (
                                  SELECT 1 FROM rejected_events r
                                  WHERE r.stage IS NOT DISTINCT FROM b.stage
                                    AND r.source_topic = b.source_topic
                                    AND r.source_partition = b.source_partition
                                    AND r.source_offset = b.source_offset))
                            QUALIFY b.source_offset IS NULL OR row_number() OVER (
                                PARTITION BY b.stage, b.source_topic, b.source_partition, b.source_offset
                                ORDER BY b.dlq_partition, b.dlq_offset) = 1
                            ORDER BY b.dlq_partition, b.dlq_offset"""
                    )
                finally:
                    db.unregister("batch_rejected")
            store.append_offsets(topic, positions)

    store.retrying(save)


def mark_replayed(
    db: duckdb.DuckDBPyConnection, letters: Iterable[tuple[str, int, int]], at: datetime
) -> int:
    """Mark the rows of these DLQ records (topic, partition, offset) replayed; returns how many
    changed. Marking a row twice keeps the first time."""
    wanted = list(letters)
    if not wanted:
        return 0
    keys = pa.table(
        {
            "dlq_topic": pa.array([t for t, _, _ in wanted], pa.string()),
            "dlq_partition": pa.array([p for _, p, _ in wanted], pa.int32()),
            "dlq_offset": pa.array([o for _, _, o in wanted], pa.int64()),
        }
    )
    db.register("replayed_keys", keys)
    try:
        rows = db.execute(
            """UPDATE rejected_events SET replayed = true, replayed_at = ?
               FROM replayed_keys k WHERE NOT replayed AND rejected_events.dlq_topic = k.dlq_topic
                 AND rejected_events.dlq_partition = k.dlq_partition
                 AND rejected_events.dlq_offset = k.dlq_offset""",
            [at],
        ).fetchall()
    finally:
        db.unregister("replayed_keys")
    return int(rows[0][0]) if rows else 0


def parquet_path(out: Path) -> Path:
    """Where the table is exported, for tools that read plain Parquet."""
    return out / "rejected" / "rejected_events.parquet"


def export_parquet(db: duckdb.DuckDBPyConnection, out: Path) -> None:
    """Rewrite the export from the table (temporary file, fsync, rename)."""
    query = "SELECT * FROM rejected_events ORDER BY dlq_topic, dlq_partition, dlq_offset"
    table = db.sql(query).to_arrow_table()
    # Time zone "UTC" like the other exports (DuckDB names it Etc/UTC).
    schema = pa.schema(
        [
            pa.field(f.name, pa.timestamp("us", tz="UTC")) if pa.types.is_timestamp(f.type) else f
            for f in table.schema
        ]
    )
    write_parquet_atomically(table.cast(schema), parquet_path(out))


def waiting_by_reason(db: duckdb.DuckDBPyConnection) -> dict[str, int]:
    rows = db.execute(
        "SELECT coalesce(reason, ?), count(*) FROM rejected_events WHERE NOT replayed GROUP BY ALL",
        [NO_REASON],
    ).fetchall()
    return {reason: int(count) for reason, count in rows}


def export_waiting(db: duckdb.DuckDBPyConnection) -> None:
    """Set the gauge from the table: every known reason has a value (0 when none waits)."""
    counts = dict.fromkeys((*REASONS, NO_REASON, OTHER_REASON), 0)
    for reason, count in waiting_by_reason(db).items():
        label = reason if reason in counts else OTHER_REASON
        counts[label] += count
    for label, count in counts.items():
        WAITING.labels(label).set(count)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _integer(text: str | None, limit: int) -> int | None:
    if text is None or not text.isascii() or not text.isdigit():
        return None
    number = int(text)
    return number if number < limit else None


def _instant_ms(timestamp_ms: int | None) -> datetime | None:
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    try:
        return _EPOCH + timedelta(milliseconds=timestamp_ms)
    except OverflowError:
        return None

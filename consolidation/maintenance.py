"""Keeping the billing store small: roll-ups of a worker's own rows, and DuckLake upkeep.

Per batch the consolidator only appends, so rows and files pile up:
- `usage_deltas` gets a row per key and batch, `consumer_positions` one per
  partition and batch. A roll-up replaces a partition's rows by one per key (one
  position per partition), in one transaction; only the partition's owner does it,
  so two workers never delete the same rows.
- every commit writes small Parquet files. DuckLake's checkpoint merges them into
  few large ones per table partition (a period of rated_usage becomes few files),
  writes inlined rows out, expires snapshots older than the draft history kept
  (`draft_history_days`) and deletes the files no remaining snapshot reads.

Snapshots younger than the history kept still read the files they were made with,
so `meterline query --at` keeps working across a merge.
"""

from __future__ import annotations

from collections.abc import Collection

import duckdb
import structlog

from consolidation.store import BillingStore, error_text, is_conflict
from consolidation.store_schema import DELTA_SCHEMA, column_list

log = structlog.get_logger()

_KEY = "account_id, period, charge_id, meter, contract_id"
FILE_GRACE = "1 day"


def roll_up(store: BillingStore, topic: str, partitions: Collection[int]) -> None:
    """Rows of usage_deltas and consumer_positions of these partitions, one per key."""
    for partition in sorted(partitions):

        def one(partition: int = partition) -> None:
            with store.transaction() as db:
                rows = db.execute(
                    "SELECT count(*), count(DISTINCT (account_id, period, charge_id, meter, contract_id)) "
                    "FROM usage_deltas WHERE partition = ?",
                    [partition],
                ).fetchall()
                if rows and rows[0][0] > rows[0][1]:
                    db.execute(
                        f"""CREATE OR REPLACE TEMP TABLE rolled AS
                            SELECT {_KEY}, arg_max(aggregate, through) AS aggregate,
                                   sum(amount_exact)::DECIMAL(38,18) AS amount_exact,
                                   sum(event_count)::BIGINT AS event_count,
                                   ?::INTEGER AS partition, max(through) AS through
                            FROM usage_deltas WHERE partition = ? GROUP BY ALL""",
                        [partition, partition],
                    )
                    db.execute("DELETE FROM usage_deltas WHERE partition = ?", [partition])
                    db.execute(f"INSERT INTO usage_deltas SELECT {column_list(DELTA_SCHEMA)} FROM rolled")
                    db.execute("DROP TABLE temp.rolled")
                db.execute(
                    """DELETE FROM consumer_positions WHERE topic = $topic AND partition = $partition
                       AND next_offset < (SELECT max(next_offset) FROM consumer_positions
                                          WHERE topic = $topic AND partition = $partition)""",
                    {"topic": topic, "partition": partition},
                )

        try:
            store.retrying(one)
        except duckdb.Error as exc:  # the next maintenance tries again
            log.warning("roll_up_failed", partition=partition, error=error_text(exc))


def checkpoint(store: BillingStore, history_days: int) -> bool:
    """DuckLake's upkeep: merge small files, expire old snapshots, delete unread files.

    Another worker's upkeep may run at the same time; the one that conflicts skips
    this turn (True when it ran)."""
    db = store.db
    try:
        catalog = _catalog(db)
        with store.writer.held():
            db.execute(f"CALL {catalog}.set_option('expire_older_than', '{int(history_days)} days')")
            # Unreferenced files are deleted only once this old: a file another worker has just
            # written for its open transaction looks orphaned, and a long read may still scan a
            # file a merge replaced.
            db.execute(f"CALL {catalog}.set_option('delete_older_than', '{FILE_GRACE}')")
            db.execute("CHECKPOINT")
    except duckdb.Error as exc:
        if not is_conflict(exc):
            raise
        log.info("store_checkpoint_skipped", error=error_text(exc))
        return False
    return True


def merge_period(store: BillingStore, period: str) -> None:
    """A closed period's rated usage into few files (the files of every other period as well:
    DuckLake merges per table partition)."""
    db = store.db
    try:
        with store.writer.held():
            db.execute(f"CALL ducklake_merge_adjacent_files('{_catalog(db)}', 'rated_usage')")
    except duckdb.Error as exc:
        if not is_conflict(exc):
            raise
        log.info("store_merge_skipped", period=period, error=error_text(exc))


def _catalog(db: duckdb.DuckDBPyConnection) -> str:
    rows = db.execute("SELECT current_database()").fetchall()
    return str(rows[0][0])

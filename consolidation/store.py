"""The consolidator's outputs: the billing store (DuckLake; see consolidation.lake).

Consumed offsets are stored with the rows and totals they produced, in one store
transaction (a DuckLake snapshot: readers see whole batches, earlier ones stay
readable), so the sink is exactly-once: on assignment it seeks to them. Several
workers may write one store, each owning its rated partitions; per-batch writes only
append, and a write that conflicts with another worker's (a preview, a close,
maintenance) is retried. On a SQLite catalog writers take turns (lake.WriterLock).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, TypeVar

import duckdb
import orjson
import pyarrow as pa
import structlog

from consolidation import lake
from consolidation.files import RATED_SCHEMA, temporary_files
from consolidation.invoice import InvoiceDraft, UsageTotal
from consolidation.invoice_tables import draft_table, line_table
from consolidation.store_schema import (
    CLOSE_PROBLEM_SCHEMA,
    DELTA_SCHEMA,
    POSITION_SCHEMA,
    column_list,
    create_missing,
)

__all__ = ["RATED_SCHEMA", "BillingStore", "Position", "PositionMovedError"]

log = structlog.get_logger()

TotalKey = tuple[str, str, str, str, str]  # account, period, charge, meter, contract
# (key, aggregate after, amount, events, partition, last offset)
Delta = tuple[TotalKey, Decimal, Decimal, int, int, int]

CONFLICT_RETRY_S: Final = 60.0  # a commit conflicting with another worker's: retried this long
T = TypeVar("T")

_LATEST_POSITIONS: Final = """
SELECT partition, next_offset, lineage, counts FROM consumer_positions WHERE topic = $topic
QUALIFY row_number() OVER (PARTITION BY partition ORDER BY next_offset DESC) = 1
"""


@dataclass(frozen=True, slots=True)
class Position:
    next_offset: int
    lineage: dict[str, int]
    counts: dict[str, int]


class PositionMovedError(Exception):
    """A partition's stored position is not the one this process read: another process
    committed for it (it owns the partition now). The batch is not stored."""


def error_text(exc: BaseException) -> str:
    """The whole message on one line: DuckLake puts the cause after a generic first line."""
    return " ".join(str(exc).split())[:500] or type(exc).__name__


def is_conflict(exc: BaseException) -> bool:
    """A commit that lost a race with another writer (DuckLake conflict, busy catalog)."""
    return isinstance(exc, duckdb.TransactionException) or (
        isinstance(exc, duckdb.Error) and "database is locked" in str(exc)
    )


class BillingStore:
    """The store of one output folder: tables in DuckLake, final-invoice Parquet exports."""

    def __init__(self, out_dir: str | Path, catalog: str = "") -> None:
        self.out = Path(out_dir).absolute()
        self.db = lake.connect(self.out, catalog=catalog)
        self.writer = lake.WriterLock(self.out, catalog)  # held by every write transaction

        def create() -> None:
            with self.writer.held():
                create_missing(self.db)

        self.retrying(create, also=duckdb.CatalogException)
        # Exports are written to a temporary name and renamed: a killed writer's leftovers go.
        for path in temporary_files(self.out / "invoices", self.out / "rejected"):
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self.db.close()

    # -- transactions ----------------------------------------------------------

    @contextmanager
    def transaction(self) -> Any:
        db = self.db
        self.begin()
        try:
            yield db
            self.commit()
        except BaseException:
            self.abort()
            raise

    def retrying(self, work: Callable[[], T], also: type[duckdb.Error] | None = None) -> T:
        """Run `work` (one whole transaction), again while it conflicts with another writer
        (or raises `also`: two workers creating the same table at once, say)."""
        deadline = time.monotonic() + CONFLICT_RETRY_S
        attempt = 0
        while True:
            try:
                return work()
            except duckdb.Error as exc:
                retry = is_conflict(exc) or (also is not None and isinstance(exc, also))
                if not retry or time.monotonic() >= deadline:
                    raise
                attempt += 1
                log.info("store_commit_conflict", attempt=attempt, error=error_text(exc))
                time.sleep(min(0.01 * attempt, 0.5))

    # -- positions -------------------------------------------------------------

    def positions(self, topic: str) -> dict[int, Position]:
        rows = self.db.execute(_LATEST_POSITIONS, {"topic": topic}).fetchall()
        return {p: Position(o, orjson.loads(lin), orjson.loads(cnt)) for p, o, lin, cnt in rows}

    def check_positions(self, topic: str, expected: Mapping[int, int | None]) -> None:
        """PositionMovedError unless the partitions' stored next offsets are `expected`
        (None: none stored), the ones this worker read when it was assigned them."""
        stored = {p: pos.next_offset for p, pos in self.positions(topic).items()}
        moved = {p: stored.get(p) for p, offset in expected.items() if stored.get(p) != offset}
        if moved:
            raise PositionMovedError(f"{topic} partitions moved on: {moved}")

    def append_offsets(self, topic: str, offsets: Mapping[int, int]) -> None:
        """Store next offsets of a topic read without lineage or counts (the DLQ), inside the
        caller's transaction."""
        self.append_positions(topic, {p: Position(o, {}, {}) for p, o in offsets.items()})

    def append_positions(self, topic: str, positions: Mapping[int, Position]) -> None:
        table = pa.Table.from_pylist(
            [
                {
                    "topic": topic,
                    "partition": partition,
                    "next_offset": position.next_offset,
                    "lineage": orjson.dumps(position.lineage).decode(),
                    "counts": orjson.dumps(position.counts).decode(),
                }
                for partition, position in positions.items()
            ],
            schema=POSITION_SCHEMA,
        )
        self._append("consumer_positions", table)

    def _append(self, name: str, table: pa.Table) -> None:
        if not table.num_rows:
            return
        view = f"new_{name}"
        self.db.register(view, table)
        try:
            self.db.execute(f"INSERT INTO {name} SELECT * FROM {view}")
        finally:
            self.db.unregister(view)

    # -- one batch -------------------------------------------------------------

    def stored_amounts(self, keys: Collection[TotalKey]) -> dict[TotalKey, Decimal]:
        """The stored amount_exact of these usage totals (keys without a row are left out)."""
        if not keys:
            return {}
        names = ("account_id", "period", "charge_id", "meter", "contract_id")
        wanted = pa.table({n: pa.array([k[i] for k in keys], pa.string()) for i, n in enumerate(names)})
        self.db.register("wanted_totals", wanted)
        try:
            rows = self.db.execute(
                """SELECT w.account_id, w.period, w.charge_id, w.meter, w.contract_id,
                          sum(d.amount_exact)::DECIMAL(38,18)
                   FROM wanted_totals w JOIN usage_deltas d
                     USING (account_id, period, charge_id, meter, contract_id)
                   GROUP BY ALL"""
            ).fetchall()
        finally:
            self.db.unregister("wanted_totals")
        return {(a, p, c, m, k): amount for a, p, c, m, k, amount in rows}

    def begin(self) -> None:
        self.writer.acquire()
        try:
            self.db.execute("BEGIN TRANSACTION")
        except BaseException:
            self.writer.release()
            raise

    def write_rated(self, tables: Iterable[pa.Table]) -> None:
        for table in tables:
            self._append("rated_usage", table)

    def write_deltas(self, deltas: Sequence[Delta]) -> None:
        table = pa.Table.from_pylist(
            [
                {
                    "account_id": key[0],
                    "period": key[1],
                    "charge_id": key[2],
                    "meter": key[3],
                    "contract_id": key[4],
                    "aggregate": aggregate,
                    "amount_exact": amount,
                    "event_count": events,
                    "partition": partition,
                    "through": through,
                }
                for key, aggregate, amount, events, partition, through in deltas
            ],
            schema=DELTA_SCHEMA,
        )
        self._append("usage_deltas", table)

    def commit(self) -> None:
        try:
            self.db.execute("COMMIT")
        finally:
            self.writer.release()

    def abort(self) -> None:
        with suppress(duckdb.Error):  # the transaction ended with a failed COMMIT already
            self.db.execute("ROLLBACK")
        self.writer.release()

    # -- usage and drafts ------------------------------------------------------

    def usage_for(self, period: str, accounts: Collection[str] | None = None) -> dict[str, list[UsageTotal]]:
        """The usage totals of a period by account (all accounts, or only those given)."""
        query = (
            "SELECT account_id, period, contract_id, charge_id, meter, aggregate, amount_exact, event_count "
            "FROM usage_totals WHERE period = $period"
        )
        if accounts is not None:
            wanted = pa.table({"account_id": pa.array(sorted(accounts), pa.string())})
            self.db.register("wanted_accounts", wanted)
            query += " AND account_id IN (SELECT account_id FROM wanted_accounts)"
        try:
            # Column-wise: one Arrow fetch instead of a Python tuple per row.
            result = as_table(self.db.sql(query, params={"period": period}).to_arrow_table())
        finally:
            if accounts is not None:
                self.db.unregister("wanted_accounts")
        usage: dict[str, list[UsageTotal]] = {}
        for row in zip(*(result.column(i).to_pylist() for i in range(8)), strict=True):
            usage.setdefault(row[0], []).append(UsageTotal(*row))
        return usage

    def periods_with_usage(self) -> list[str]:
        return [
            r[0] for r in self.db.execute("SELECT DISTINCT period FROM usage_deltas ORDER BY 1").fetchall()
        ]

    def final_keys(self) -> set[tuple[str, str]]:
        rows = self.db.execute(
            "SELECT account_id, period FROM invoice_drafts WHERE status = 'final'"
        ).fetchall()
        return {(a, p) for a, p in rows}

    def open_drafts(self) -> list[tuple[str, str]]:
        rows = self.db.execute(
            "SELECT account_id, period FROM invoice_drafts WHERE status = 'open'"
        ).fetchall()
        return [(a, p) for a, p in rows]

    def count_drafts(self, status: str) -> int:
        rows = self.db.execute("SELECT count(*) FROM invoice_drafts WHERE status = ?", [status]).fetchall()
        return int(rows[0][0]) if rows else 0

    def final_invoice_ids(self, period: str) -> set[str]:
        rows = self.db.execute(
            "SELECT invoice_id FROM invoice_drafts WHERE period = ? AND status = 'final'", [period]
        ).fetchall()
        return {r[0] for r in rows}

    def save_drafts(self, drafts: Sequence[InvoiceDraft], generated_at: Any) -> None:
        """Replace the rows of these drafts (one transaction, set-based: no SQL per draft)."""
        if not drafts:
            return
        db = self.db
        db.register("new_drafts", draft_table(drafts, generated_at))
        db.register("new_lines", line_table(drafts))

        def save() -> None:
            with self.transaction():
                db.execute(
                    "DELETE FROM invoice_lines WHERE invoice_id IN (SELECT invoice_id FROM new_drafts)"
                )
                db.execute(
                    "DELETE FROM invoice_drafts WHERE invoice_id IN (SELECT invoice_id FROM new_drafts)"
                )
                db.execute("INSERT INTO invoice_drafts SELECT * FROM new_drafts")
                db.execute("INSERT INTO invoice_lines SELECT * FROM new_lines")

        try:
            self.retrying(save)
        finally:
            db.unregister("new_drafts")
            db.unregister("new_lines")

    def stale_previews(self, owned: Callable[[str], bool]) -> set[tuple[str, str]]:
        """(account, period) pairs of owned accounts whose usage is newer than their draft, or
        that have none yet: previews are refreshed from a set kept in memory, gone after a crash."""
        rows = self.db.execute(
            """SELECT u.account_id, u.period FROM usage_totals u
               LEFT JOIN invoice_drafts d ON d.account_id = u.account_id AND d.period = u.period
               GROUP BY ALL
               HAVING count(d.invoice_id) = 0
                   OR (any_value(d.status) = 'open' AND any_value(d.event_count) <> sum(u.event_count))"""
        ).fetchall()
        return {(a, p) for a, p in rows if owned(a)}

    # -- closes ----------------------------------------------------------------

    def close_done(self, period: str, account_id: str | None, partitions: Collection[int]) -> bool:
        """Whether the close of `period` (all accounts, or one) is done for every partition given."""
        rows = self.db.execute(
            """SELECT DISTINCT partition FROM closes_done
               WHERE period = ? AND account_id IS NOT DISTINCT FROM ?""",
            [period, account_id],
        ).fetchall()
        done = {r[0] for r in rows}
        return all(p in done for p in partitions)

    def mark_close_done(self, period: str, account_id: str | None, partitions: Collection[int]) -> None:
        rows = [[period, account_id, p] for p in partitions]
        self.retrying(lambda: self._execute_in_transaction("INSERT INTO closes_done VALUES (?, ?, ?)", rows))

    def _execute_in_transaction(self, sql: str, parameters: Any) -> None:
        with self.transaction() as db:
            if isinstance(parameters, list):
                db.executemany(sql, parameters)
            else:
                db.execute(sql, parameters)

    # -- accounts a close could not finalize -----------------------------------

    def record_close_problems(
        self, period: str, problems: Sequence[tuple[str, str, str]], noticed_at: Any
    ) -> None:
        """Remember (account, reason, detail) of accounts the close of `period` had to leave open."""
        if not problems:
            return
        table = pa.Table.from_pylist(
            [
                {"period": period, "account_id": a, "reason": r, "detail": d, "noticed_at": noticed_at}
                for a, r, d in problems
            ],
            schema=CLOSE_PROBLEM_SCHEMA,
        )

        def record() -> None:
            with self.transaction() as db:
                db.register("new_problems", table)
                try:
                    db.execute(
                        """DELETE FROM close_problems WHERE period = ?
                           AND account_id IN (SELECT account_id FROM new_problems)""",
                        [period],
                    )
                    columns = column_list(CLOSE_PROBLEM_SCHEMA)
                    db.execute(f"INSERT INTO close_problems SELECT {columns} FROM new_problems")
                finally:
                    db.unregister("new_problems")

        self.retrying(record)

    def resolve_close_problems(self, period: str) -> None:
        """Forget the problems of accounts whose draft of `period` is final now."""
        self.retrying(lambda: self._execute_in_transaction(
            """DELETE FROM close_problems WHERE period = $period AND account_id IN
               (SELECT account_id FROM invoice_drafts WHERE period = $period AND status = 'final')""",
            {"period": period},
        ))  # fmt: skip

    def close_problems(self, period: str | None = None) -> list[tuple[str, str, str, str]]:
        """(period, account_id, reason, detail) of accounts with usage that a close could not
        finalize and that are still not final; all periods unless one is given."""
        rows = self.db.execute(
            """SELECT period, account_id, reason, detail FROM close_problems
               WHERE $period IS NULL OR period = $period ORDER BY period, account_id""",
            {"period": period},
        ).fetchall()
        return [(p, a, r, d) for p, a, r, d in rows]


def as_table(result: Any) -> pa.Table:
    return result.read_all() if hasattr(result, "read_all") else result

"""The consolidator's outputs: DuckDB tables and Parquet files.

Consumed Kafka offsets are stored in DuckDB in the same DuckDB transaction as the
aggregates they produced, so the sink is exactly-once: on start it seeks to them.
Parquet files are written to a temporary name and renamed, with names derived
from partition and offset range, so a rewrite after a crash replaces a file
instead of adding a second copy (consolidation.files).

`rated_usage` is a view over the Parquet files minus those listed in
`hidden_files`: the files a compaction is replacing or about to replace
(consolidation.compaction). The view sees every row once at every commit.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from consolidation.files import (
    EXACT,
    RATED_SCHEMA,
    RatedRows,
    fsync_dir,
    rated_file_name,
    temporary_files,
)
from consolidation.files import write_parquet_atomically as write_parquet_atomically
from consolidation.invoice import InvoiceDraft, UsageTotal
from consolidation.invoice_tables import DRAFT_SCHEMA, LINE_SCHEMA, draft_table, line_table
from consolidation.rejected import ensure_table as ensure_rejected_table

__all__ = ["RATED_SCHEMA", "BillingStore", "Position", "RatedRows", "write_parquet_atomically"]

TotalKey = tuple[str, str, str, str, str]  # account, period, charge, meter, contract

TOTALS_SCHEMA = pa.schema(
    [
        ("account_id", pa.string()),
        ("period", pa.string()),
        ("charge_id", pa.string()),
        ("meter", pa.string()),
        ("contract_id", pa.string()),
        ("aggregate", EXACT),
        ("amount_exact", EXACT),
        ("event_count", pa.int64()),
    ]
)

_DDL = """
CREATE TABLE IF NOT EXISTS usage_totals(
    account_id VARCHAR, period VARCHAR, charge_id VARCHAR, meter VARCHAR, contract_id VARCHAR,
    aggregate DECIMAL(38,18), amount_exact DECIMAL(38,18), event_count BIGINT,
    PRIMARY KEY (account_id, period, charge_id, contract_id));
CREATE TABLE IF NOT EXISTS invoice_drafts(
    invoice_id VARCHAR PRIMARY KEY, account_id VARCHAR, period VARCHAR, period_start DATE, period_end DATE,
    currency VARCHAR, subtotal DECIMAL(38,4), discount DECIMAL(38,4), tax DECIMAL(38,4), total DECIMAL(38,4),
    status VARCHAR, issue_date DATE, due_date DATE, event_count BIGINT, generated_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS invoice_lines(
    invoice_id VARCHAR, account_id VARCHAR, period VARCHAR, line_no INTEGER, kind VARCHAR, charge_id VARCHAR,
    description VARCHAR, quantity DECIMAL(38,18), unit VARCHAR, unit_price DECIMAL(38,18),
    amount DECIMAL(38,4), currency VARCHAR, PRIMARY KEY (invoice_id, line_no));
CREATE TABLE IF NOT EXISTS closes_done(period VARCHAR, account_id VARCHAR);
CREATE TABLE IF NOT EXISTS consumer_positions(
    topic VARCHAR, partition INTEGER, next_offset BIGINT, lineage VARCHAR, counts VARCHAR,
    PRIMARY KEY (topic, partition));
CREATE TABLE IF NOT EXISTS hidden_files(file VARCHAR PRIMARY KEY);
CREATE TABLE IF NOT EXISTS close_problems(
    period VARCHAR, account_id VARCHAR, reason VARCHAR, detail VARCHAR, noticed_at TIMESTAMPTZ,
    PRIMARY KEY (period, account_id));
"""


@dataclass(frozen=True, slots=True)
class Position:
    next_offset: int
    lineage: dict[str, int]
    counts: dict[str, int]


class BillingStore:
    """billing.duckdb plus the Parquet datasets under one output folder."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out = Path(out_dir).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.rated_dir = self.out / "rated_usage"
        # DuckDB locks the file for one writing process: no other writer of this folder runs
        # now, so whatever a killed writer left half done can go.
        self.db = duckdb.connect(str(self.out / "billing.duckdb"))
        self.db.execute(_DDL)
        ensure_rejected_table(self.db)
        for path in temporary_files(self.rated_dir, self.out / "invoices", self.out / "rejected"):
            path.unlink(missing_ok=True)
        self._forget_hidden_files()
        self._create_rated_view()

    def _create_rated_view(self) -> None:
        # An absolute path, so the view works from any working directory.
        pattern = _sql_text((self.rated_dir / "*" / "*.parquet").as_posix())
        prefix = _sql_text(self.rated_dir.as_posix() + "/")
        if any(self.rated_dir.glob("*/*.parquet")):
            self.db.execute(
                f"""CREATE OR REPLACE VIEW rated_usage AS SELECT * EXCLUDE (filename)
                    FROM read_parquet('{pattern}', hive_partitioning = false, union_by_name = true,
                                      filename = true)
                    WHERE filename NOT IN (SELECT '{prefix}' || file FROM hidden_files)"""
            )
        else:
            columns = ", ".join(f"NULL::{_duck_type(f.type)} AS {f.name}" for f in RATED_SCHEMA)
            self.db.execute(f"CREATE OR REPLACE VIEW rated_usage AS SELECT {columns} WHERE false")

    def refresh_view(self) -> None:
        self._create_rated_view()

    def close(self) -> None:
        self._create_rated_view()
        self.db.close()

    # -- positions -----------------------------------------------------------

    def positions(self, topic: str) -> dict[int, Position]:
        rows = self.db.execute(
            "SELECT partition, next_offset, lineage, counts FROM consumer_positions WHERE topic = ?", [topic]
        ).fetchall()
        return {p: Position(o, orjson.loads(lin), orjson.loads(cnt)) for p, o, lin, cnt in rows}

    def discard_uncommitted_files(self, partition: int, next_offset: int) -> None:
        """Remove rated-usage files of batches that were written but never committed, and the
        temporary files of writes a killed process left half done (see write_parquet_atomically)."""
        for path in self.rated_dir.glob(f"*/part-{partition:03d}-*.parquet"):
            first = int(path.stem.split("-")[2])
            if first >= next_offset:
                path.unlink()
        for path in self.rated_dir.glob(f"*/.part-{partition:03d}-*.parquet.tmp-*"):
            path.unlink(missing_ok=True)

    # -- hidden files (compaction) -------------------------------------------

    def hidden_files(self) -> set[Path]:
        return {self.rated_dir / f for (f,) in self.db.execute("SELECT file FROM hidden_files").fetchall()}

    def swap_hidden(self, show: Collection[Path], hide: Collection[Path]) -> None:
        """In one DuckDB transaction: make `show` visible in rated_usage and hide `hide`."""
        db = self.db
        db.execute("BEGIN TRANSACTION")
        try:
            if show:
                db.executemany("DELETE FROM hidden_files WHERE file = ?", [[self._relative(p)] for p in show])
            if hide:
                db.executemany(
                    "INSERT INTO hidden_files VALUES (?) ON CONFLICT DO NOTHING",
                    [[self._relative(p)] for p in hide],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _forget_hidden_files(self) -> None:
        """Finish an interrupted compaction: a hidden file is either a compacted file that was
        never made visible or a source that its compacted file already replaces; both go."""
        hidden = self.hidden_files()
        for path in hidden:
            path.unlink(missing_ok=True)
        if hidden:
            for folder in {p.parent for p in hidden if p.parent.exists()}:
                fsync_dir(folder)
            self.swap_hidden(hidden, ())

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.rated_dir).as_posix()

    # -- one batch -----------------------------------------------------------

    def write_rated_files(self, partition: int, first: int, last: int, rows: RatedRows | pa.Table) -> None:
        """One file per period touched by the batch, named after the partition and offset range."""
        table = rows.table() if isinstance(rows, RatedRows) else rows
        periods = table.column("period")
        touched = pc.unique(periods).to_pylist()
        for period in touched:
            items = table if len(touched) == 1 else table.filter(pc.equal(periods, period))
            folder = self.rated_dir / f"period={period}"
            write_parquet_atomically(items, folder / rated_file_name(partition, first, last))

    def stored_amounts(self, keys: Collection[TotalKey]) -> dict[TotalKey, Decimal]:
        """The stored amount_exact of these usage totals (keys without a row are left out)."""
        if not keys:
            return {}
        names = ("account_id", "period", "charge_id", "meter", "contract_id")
        wanted = pa.table({n: pa.array([k[i] for k in keys], pa.string()) for i, n in enumerate(names)})
        self.db.register("wanted_totals", wanted)
        try:
            rows = self.db.execute(
                """SELECT w.account_id, w.period, w.charge_id, w.meter, w.contract_id, u.amount_exact
                   FROM wanted_totals w JOIN usage_totals u
                     USING (account_id, period, charge_id, contract_id)"""
            ).fetchall()
        finally:
            self.db.unregister("wanted_totals")
        return {(a, p, c, m, k): amount for a, p, c, m, k, amount in rows}

    def apply_batch(
        self,
        topic: str,
        positions: dict[int, Position],
        totals: Iterable[tuple[tuple[str, str, str, str, str], Decimal, Decimal, int]],
    ) -> None:
        """Upsert usage_totals and the consumed positions in one DuckDB transaction."""
        db = self.db
        db.execute("BEGIN TRANSACTION")
        try:
            batch = pa.Table.from_pylist(
                [
                    {
                        "account_id": account,
                        "period": period,
                        "charge_id": charge,
                        "meter": meter,
                        "contract_id": contract,
                        "aggregate": aggregate,
                        "amount_exact": amount,
                        "event_count": count,
                    }
                    for (account, period, charge, meter, contract), aggregate, amount, count in totals
                ],
                schema=TOTALS_SCHEMA,
            )
            if batch.num_rows:
                # Columnar upsert: one statement per batch, not one per row.
                db.register("batch_totals", batch)
                db.execute(
                    """INSERT INTO usage_totals SELECT * FROM batch_totals
                       ON CONFLICT (account_id, period, charge_id, contract_id) DO UPDATE SET
                         aggregate = excluded.aggregate,
                         amount_exact = usage_totals.amount_exact + excluded.amount_exact,
                         event_count = usage_totals.event_count + excluded.event_count"""
                )
                db.unregister("batch_totals")
            if positions:
                db.executemany(
                    """INSERT INTO consumer_positions VALUES (?, ?, ?, ?, ?)
                       ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset,
                         lineage = excluded.lineage, counts = excluded.counts""",
                    [
                        (
                            topic,
                            p,
                            pos.next_offset,
                            orjson.dumps(pos.lineage).decode(),
                            orjson.dumps(pos.counts).decode(),
                        )
                        for p, pos in positions.items()
                    ],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- invoices ------------------------------------------------------------

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
            result = self.db.sql(query, params={"period": period}).to_arrow_table()
        finally:
            if accounts is not None:
                self.db.unregister("wanted_accounts")
        usage: dict[str, list[UsageTotal]] = {}
        for row in zip(*(_as_table(result).column(i).to_pylist() for i in range(8)), strict=True):
            usage.setdefault(row[0], []).append(UsageTotal(*row))
        return usage

    def periods_with_usage(self) -> list[str]:
        return [
            r[0] for r in self.db.execute("SELECT DISTINCT period FROM usage_totals ORDER BY 1").fetchall()
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
        # fetchall, not fetchone: a result left unfinished blocks register() on this connection.
        rows = self.db.execute("SELECT count(*) FROM invoice_drafts WHERE status = ?", [status]).fetchall()
        return int(rows[0][0]) if rows else 0

    def save_run_counts(self, counts: dict[str, int], rejected: Mapping[str, int]) -> None:
        """The run's event counts (`run_counts`) and rejections by reason (`rejected_counts`;
        the rejected records themselves are rows of `rejected_events`)."""
        self.db.execute("CREATE OR REPLACE TABLE run_counts(name VARCHAR, events BIGINT)")
        self.db.execute("CREATE OR REPLACE TABLE rejected_counts(reason VARCHAR, events BIGINT)")
        self.db.executemany("INSERT INTO run_counts VALUES (?, ?)", list(counts.items()))
        if rejected:
            self.db.executemany("INSERT INTO rejected_counts VALUES (?, ?)", sorted(rejected.items()))

    def close_done(self, period: str, account_id: str | None) -> bool:
        rows = self.db.execute(
            "SELECT count(*) FROM closes_done WHERE period = ? AND account_id IS NOT DISTINCT FROM ?",
            [period, account_id],
        ).fetchall()
        return bool(rows and rows[0][0])

    def mark_close_done(self, period: str, account_id: str | None) -> None:
        self.db.execute("INSERT INTO closes_done VALUES (?, ?)", [period, account_id])

    def final_invoice_ids(self, period: str) -> set[str]:
        rows = self.db.execute(
            "SELECT invoice_id FROM invoice_drafts WHERE period = ? AND status = 'final'", [period]
        ).fetchall()
        return {r[0] for r in rows}

    def save_drafts(self, drafts: Sequence[InvoiceDraft], generated_at: Any) -> None:
        """Replace the rows of these drafts (one DuckDB transaction, set-based: no SQL per draft)."""
        if not drafts:
            return
        db = self.db
        db.register("new_drafts", draft_table(drafts, generated_at))
        db.register("new_lines", line_table(drafts))
        db.execute("BEGIN TRANSACTION")
        try:
            db.execute("DELETE FROM invoice_lines WHERE invoice_id IN (SELECT invoice_id FROM new_drafts)")
            db.execute("DELETE FROM invoice_drafts WHERE invoice_id IN (SELECT invoice_id FROM new_drafts)")
            db.execute("INSERT INTO invoice_drafts SELECT * FROM new_drafts")
            db.execute("INSERT INTO invoice_lines SELECT * FROM new_lines")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.unregister("new_drafts")
            db.unregister("new_lines")

    def stale_previews(self) -> set[tuple[str, str]]:
        """(account, period) pairs whose usage is newer than their draft, or that have none yet.

        Previews are refreshed every preview interval from a set kept in memory; after
        a crash that set is gone, so a restarted worker asks the tables instead.
        """
        rows = self.db.execute(
            """SELECT u.account_id, u.period FROM usage_totals u
               LEFT JOIN invoice_drafts d ON d.account_id = u.account_id AND d.period = u.period
               GROUP BY ALL
               HAVING count(d.invoice_id) = 0
                   OR (any_value(d.status) = 'open' AND any_value(d.event_count) <> sum(u.event_count))"""
        ).fetchall()
        return {(a, p) for a, p in rows}

    def export_final_invoices(self, period: str) -> None:
        """Rewrite invoices/period=P/*.parquet from the final drafts of the period."""
        folder = self.out / "invoices" / f"period={period}"
        drafts = self.db.sql(
            "SELECT * FROM invoice_drafts WHERE period = $period AND status = 'final' ORDER BY account_id",
            params={"period": period},
        ).to_arrow_table()
        lines = self.db.sql(
            "SELECT l.* FROM invoice_lines l JOIN invoice_drafts d USING (invoice_id) "
            "WHERE d.period = $period AND d.status = 'final' ORDER BY l.account_id, l.line_no",
            params={"period": period},
        ).to_arrow_table()
        write_parquet_atomically(_as_table(drafts).cast(DRAFT_SCHEMA), folder / "invoice_drafts.parquet")
        write_parquet_atomically(_as_table(lines).cast(LINE_SCHEMA), folder / "invoice_lines.parquet")

    # -- accounts a close could not finalize ---------------------------------

    def record_close_problems(
        self, period: str, problems: Sequence[tuple[str, str, str]], noticed_at: Any
    ) -> None:
        """Remember (account, reason, detail) of accounts the close of `period` had to leave open."""
        if problems:
            self.db.executemany(
                """INSERT INTO close_problems VALUES (?, ?, ?, ?, ?) ON CONFLICT (period, account_id)
                   DO UPDATE SET reason = excluded.reason, detail = excluded.detail,
                     noticed_at = excluded.noticed_at""",
                [[period, account, reason, detail, noticed_at] for account, reason, detail in problems],
            )

    def resolve_close_problems(self, period: str) -> None:
        """Forget the problems of accounts whose draft of `period` is final now."""
        self.db.execute(
            """DELETE FROM close_problems WHERE period = ? AND account_id IN
               (SELECT account_id FROM invoice_drafts WHERE period = ? AND status = 'final')""",
            [period, period],
        )

    def close_problems(self, period: str | None = None) -> list[tuple[str, str, str, str]]:
        """(period, account_id, reason, detail) of accounts with usage that a close could not
        finalize and that are still not final; all periods unless one is given."""
        rows = self.db.execute(
            """SELECT period, account_id, reason, detail FROM close_problems
               WHERE $period IS NULL OR period = $period ORDER BY period, account_id""",
            {"period": period},
        ).fetchall()
        return [(p, a, r, d) for p, a, r, d in rows]


def _as_table(result: Any) -> pa.Table:
    return result.read_all() if hasattr(result, "read_all") else result


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def _duck_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_decimal(arrow_type):
        return f"DECIMAL({arrow_type.precision},{arrow_type.scale})"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ"
    if pa.types.is_integer(arrow_type):
        return "BIGINT"
    return "VARCHAR"

"""The billing store (DuckLake) alone: closing 100,000 accounts, and its files before and after upkeep.

    .venv/bin/python -m bench.bench_store [--close-accounts 100000] [--rows 1000000] [--batch-rows 5000]
                                          [--reader-rows 0] [--runs 3] [--no-record]

1. Close. Each run: a fresh store gets, in one store_batch, the usage totals of
   every charge of every contract in effect of a generated catalog (priced with
   rating.pricing) and one rated row per total; then timed as a worker closes:
   `finalize_period` and `export_final_invoices`. Checked: one final draft per
   active account, Parquet rows = store rows, reconciliation.
2. Files. Each run: --rows rated rows of one period into a fresh store through
   store_batch, --batch-rows per commit, each commit shaped as one worker's batch
   over 4 partitions; no Kafka. Files counted (on disk under DIR/data, and read by
   the current snapshot), then timed and counted again: roll_up + `checkpoint`
   keeping 400 days of history (the worker's upkeep), `checkpoint` keeping none,
   and a CHECKPOINT with DuckLake's delete_older_than at 0 s (maintenance leaves it
   unset). Checked after each: each row once, usage_totals counts them all,
   reconciliation; a snapshot from before the upkeep reads the same rows after.
3. Reader (--reader-rows): commit times of fills alone and with the live reader of
   bench.bench_consolidation, interleaved.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import BenchmarkFailed, add_runs_option, record, spread
from consolidation import lake
from consolidation.checkpoint import store_batch
from consolidation.close_control import export_final_invoices
from consolidation.closing import accounts_active_in, finalize_period, reconcile_amounts
from consolidation.maintenance import checkpoint, roll_up
from consolidation.store import RATED_SCHEMA, BillingStore, Delta, Position
from generator import generate_catalog
from meterline.kernel.catalog import Catalog, period_bounds
from meterline.kernel.catalog_file import parse_catalog
from meterline.kernel.headers import partition_of
from meterline.kernel.records import invoice_id_for
from meterline.kernel.topics import RATED

PERIOD = "2026-10"  # the generator's month
PARTITIONS = 4
HISTORY_DAYS = 400  # the default draft_history_days
FILE_KEYS = ("disk", "current", "rated_usage", "usage_deltas", "consumer_positions", "snapshots", "to_delete")


def rated_table(columns: dict[str, list[Any]]) -> pa.Table:
    return pa.table({f.name: pa.array(columns[f.name], f.type) for f in RATED_SCHEMA}, schema=RATED_SCHEMA)


# -- 1. close ------------------------------------------------------------------------


def populate(store: BillingStore, catalog: Catalog, period: str, seed: int) -> int:
    """Usage totals for every charge of every contract in effect, plus one rated row per total."""
    from rating.pricing import price

    rng = random.Random(seed)
    first, following = period_bounds(period)
    event_time = datetime(first.year, first.month, 15, 12, tzinfo=UTC)
    deltas: list[Delta] = []
    rated: dict[str, list[Any]] = {name: [] for name in RATED_SCHEMA.names}
    for account in catalog.accounts.values():
        for contract in account.contracts:
            if not (contract.start < following and (contract.end is None or contract.end > first)):
                continue
            plan = catalog.plans[contract.plan_id]
            for charge in plan.charges:
                if rng.random() < 0.3:
                    continue  # not every charge has activity
                aggregate = Decimal(rng.randint(0, 20_000))
                amount = price(charge, aggregate)
                offset = len(deltas)
                key = (account.id, period, charge.id, charge.meter, contract.id)
                deltas.append((key, aggregate, amount, 1, 0, offset))
                values = (
                    f"e-{offset}", account.id, charge.meter, charge.id, charge.model, contract.id, plan.id,
                    event_time, aggregate, aggregate, amount, Decimal(0), aggregate, plan.currency,
                    invoice_id_for(account.id, period), "{}", 0, offset, period,
                )  # fmt: skip
                for name, value in zip(RATED_SCHEMA.names, values, strict=True):
                    rated[name].append(value)
    store_batch(store, RATED, [rated_table(rated)], deltas, {0: Position(len(deltas), {}, {})})
    return len(deltas)


def close_catalog(accounts: int) -> Catalog:
    started = time.monotonic()
    catalog = parse_catalog(generate_catalog(accounts, seed=5), source="generated")
    print(f"catalog of {accounts:,} accounts in {time.monotonic() - started:.0f} s", flush=True)
    return catalog


def close_period(catalog: Catalog, folder: Path) -> dict[str, Any]:
    """Fill a fresh BillingStore in `folder`, time `finalize_period`, check what it wrote."""
    store = BillingStore(folder)
    try:
        totals = populate(store, catalog, PERIOD, seed=5)
        print(f"{totals:,} usage totals stored", flush=True)
        started = time.perf_counter()
        written = finalize_period(store, catalog, PERIOD, datetime.now(UTC))
        finalized = time.perf_counter() - started
        # As a worker's close goes on: the Parquet export of the period's final invoices.
        export_final_invoices(store, PERIOD)
        elapsed = time.perf_counter() - started

        active = set(accounts_active_in(catalog, PERIOD))
        drafts = store.db.execute(
            "SELECT account_id, status, count(*) FROM invoice_drafts WHERE period = ? GROUP BY ALL", [PERIOD]
        ).fetchall()
        if written != len(active) or {a for a, _, _ in drafts} != active:
            raise BenchmarkFailed(f"{written} drafts written for {len(active)} active accounts")
        if any(status != "final" or n != 1 for _, status, n in drafts):
            raise BenchmarkFailed("expected exactly one final draft per account")
        if reconcile_amounts(store, PERIOD):
            raise BenchmarkFailed("rated amounts differ from usage_totals")
        exported = store.out / "invoices" / f"period={PERIOD}"
        for name in ("invoice_drafts", "invoice_lines"):
            in_parquet = pq.read_table(exported / f"{name}.parquet")
            in_db = store.db.sql(f"SELECT * FROM {name}").to_arrow_table().cast(in_parquet.schema)
            if _rows(in_parquet) != _rows(in_db):
                raise BenchmarkFailed(f"{name}: Parquet and store rows differ")
        lines = store.db.execute("SELECT count(*) FROM invoice_lines").fetchone()
    finally:
        store.close()
    print(f"close: {elapsed:.1f} s ({finalized:.1f} s finalize_period)", flush=True)
    return {
        "accounts": len(active), "totals": totals, "lines": lines[0] if lines else 0,
        "seconds": elapsed, "finalize_s": finalized,
    }  # fmt: skip


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    return sorted(tuple(row.values()) for row in table.to_pylist())


# -- 2. files before and after upkeep ------------------------------------------------


def fill(store: BillingStore, rows: int, batch_rows: int, seed: int) -> list[float]:
    """`rows` rated rows through store_batch, `batch_rows` per commit; seconds per commit."""
    rng = random.Random(seed)
    accounts = [f"acct-{i:05d}" for i in range(1000)]
    partition = {a: partition_of(a.encode(), PARTITIONS) for a in accounts}
    charges = [
        ("calls", "voice-minutes", "tiered"),
        ("api", "api-calls", "per_unit"),
        ("gb", "storage", "flat"),
    ]
    prices = [Decimal(q) / 100 for q in range(1001)]  # 0.01 per unit
    first, _ = period_bounds(PERIOD)
    month_start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    aggregates: dict[tuple[str, str, str, str, str], Decimal] = defaultdict(Decimal)
    offsets = [0] * PARTITIONS
    seconds: list[float] = []
    done = 0
    while done < rows:
        size = min(batch_rows, rows - done)
        columns: list[dict[str, list[Any]]] = [{n: [] for n in RATED_SCHEMA.names} for _ in range(PARTITIONS)]
        batch: dict[tuple[str, str, str, str, str], list[Any]] = {}  # key -> [amount, events, partition]
        for i in range(size):
            account = rng.choice(accounts)
            charge, meter, model = charges[rng.randrange(3)]
            quantity = rng.randint(1, 1000)
            p = partition[account]
            key = (account, PERIOD, charge, meter, f"k-{account}")
            before = aggregates[key]
            aggregates[key] = after = before + quantity
            amount = prices[quantity]
            entry = batch.setdefault(key, [Decimal(0), 0, p])
            entry[0] += amount
            entry[1] += 1
            row = columns[p]
            values = (
                f"e-{done + i}", account, meter, charge, model, key[4], "plan-1",
                month_start + timedelta(seconds=(done + i) % 2_500_000), Decimal(quantity),
                Decimal(quantity), amount, before, after, "EUR", invoice_id_for(account, PERIOD), "{}",
                p, offsets[p], PERIOD,
            )  # fmt: skip
            for name, value in zip(RATED_SCHEMA.names, values, strict=True):
                row[name].append(value)
            offsets[p] += 1
        deltas: list[Delta] = [
            (key, aggregates[key], amount, events, p, offsets[p] - 1)
            for key, (amount, events, p) in batch.items()
        ]
        tables = [rated_table(c) for c in columns if c["event_id"]]
        positions = {p: Position(offsets[p], {}, {}) for p in range(PARTITIONS) if offsets[p]}
        started = time.perf_counter()
        store_batch(store, RATED, tables, deltas, positions)
        seconds.append(time.perf_counter() - started)
        done += size
    return seconds


def files(store: BillingStore) -> dict[str, int]:
    """Parquet files on disk under DIR/data, the data files the current snapshot reads, snapshots,
    and the files no snapshot reads that DuckLake has not deleted yet."""
    meta = f"__ducklake_metadata_{lake.ALIAS}"
    found = {"disk": sum(1 for _ in (store.out / lake.DATA_DIR).rglob("*.parquet"))}
    for name, count in store.db.execute(
        f"""SELECT t.table_name, count(*) FROM {meta}.ducklake_data_file f
            JOIN {meta}.ducklake_table t USING (table_id)
            WHERE f.end_snapshot IS NULL AND t.end_snapshot IS NULL GROUP BY ALL"""
    ).fetchall():
        found[name] = int(count)
    found["current"] = sum(v for k, v in found.items() if k != "disk")
    for name, query in (
        ("rated_usage_listed", f"FROM ducklake_list_files('{lake.ALIAS}', 'rated_usage')"),
        ("snapshots", f"FROM {meta}.ducklake_snapshot"),
        ("to_delete", f"FROM {meta}.ducklake_files_scheduled_for_deletion"),
    ):
        rows = store.db.execute(f"SELECT count(*) {query}").fetchall()
        found[name] = int(rows[0][0])
    return found


def _check(store: BillingStore, rows: int) -> None:
    counts = "count(*), count(DISTINCT event_id), (SELECT sum(event_count) FROM usage_totals)"
    found = store.db.execute(f"SELECT {counts} FROM rated_usage").fetchall()
    if found != [(rows, rows, rows)]:
        raise BenchmarkFailed(f"rated_usage rows, distinct, usage_totals events: {found}, for {rows} rows")
    if reconcile_amounts(store, PERIOD):
        raise BenchmarkFailed("rated amounts differ from usage_totals")


def compaction(folder: Path, rows: int, batch_rows: int) -> dict[str, Any]:
    store = BillingStore(folder)
    try:
        commits: list[float] = []
        filled, before = _step(store, rows, "fill", lambda: commits.extend(fill(store, rows, batch_rows, 7)))
        time.sleep(1.1)  # a snapshot time strictly before the upkeep, to read back after it
        then = datetime.now(UTC)
        old = store.db.execute("SELECT count(*), sum(amount) FROM rated_usage").fetchall()
        rolled, _ = _step(store, rows, "roll_up", lambda: roll_up(store, RATED, range(PARTITIONS)))
        merged, kept = _step(store, rows, "checkpoint", lambda: checkpoint(store, HISTORY_DAYS))
        reader = lake.connect(folder, read_only=True, at=then)
        try:
            if reader.execute("SELECT count(*), sum(amount) FROM rated_usage").fetchall() != old:
                raise BenchmarkFailed("a snapshot from before the upkeep reads other rows after it")
        finally:
            reader.close()
        expired, final = _step(store, rows, "no history", lambda: checkpoint(store, 0))
        # Not what maintenance does: DuckLake deletes unread files only once older than its
        # delete_older_than option, which maintenance.checkpoint leaves unset.
        store.db.execute(f"CALL {lake.ALIAS}.set_option('delete_older_than', '0 seconds')")
        _, deleted = _step(store, rows, "delete_older_than 0 s", lambda: store.db.execute("CHECKPOINT"))
    finally:
        store.close()
    return {
        "fill_s": filled, "commits": commits, "before": before, "kept": kept, "final": final,
        "roll_up_s": rolled, "checkpoint_s": merged, "expire_s": expired, "deleted": deleted,
    }  # fmt: skip


def _step(
    store: BillingStore, rows: int, name: str, work: Callable[[], object]
) -> tuple[float, dict[str, int]]:
    """Seconds `work` took, then the store checked and its files counted."""
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    _check(store, rows)
    found = files(store)
    print(f"{name} {seconds:.1f} s: {found}", flush=True)
    return seconds, found


def with_reader(folder: Path, rows: int, batch_rows: int, runs: int) -> list[tuple[str, str]]:
    """Commit times of fills alone and with bench_consolidation's live reader, interleaved."""
    medians: dict[bool, list[float]] = {False: [], True: []}
    for number in range(runs):
        for reading in (False, True):
            out = folder / f"reader-{number}-{reading}"
            store = BillingStore(out)
            answers = folder / f"reader-{number}.jsonl"
            with answers.open("wb") as lines:
                command = [sys.executable, "-m", "bench.bench_consolidation", "--reader", str(out)]
                live = subprocess.Popen(command, stdout=lines) if reading else None
            deadline = time.monotonic() + 60
            while live is not None and not answers.stat().st_size and time.monotonic() < deadline:
                time.sleep(0.1)  # the reader's startup is not part of the comparison
            try:
                medians[reading].append(statistics.median(fill(store, rows, batch_rows, seed=7)))
            finally:
                store.close()
                if live is not None:
                    live.terminate()
                    live.wait()
    ratio = statistics.median(medians[False]) / statistics.median(medians[True])
    return [
        (f"store_batch s per commit ({batch_rows:,} rows), median of a {rows:,}-row fill: alone; with a "
         "reader querying every second", f"{spread(medians[False], '.3f')}; {spread(medians[True], '.3f')}"),
        ("commit rate with the reader / alone", f"{ratio:.3f}"),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--close-accounts", type=int, default=100_000, help="accounts for the close (0: skip)"
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rated rows for the file count (0: skip)")
    parser.add_argument("--batch-rows", type=int, default=5_000, help="rated rows per store commit")
    parser.add_argument("--reader-rows", type=int, default=0, help="rows per fill with and without a reader")
    add_runs_option(parser)
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args(argv)
    rows: list[tuple[str, str]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
            folder = Path(tmp)
            if args.rows:
                runs = [
                    compaction(folder / f"files-{n}", args.rows, args.batch_rows) for n in range(args.runs)
                ]
                rows += compaction_rows(runs, args.rows, args.batch_rows)
            if args.reader_rows:
                rows += with_reader(folder, args.reader_rows, args.batch_rows, args.runs)
            if args.close_accounts:
                catalog = close_catalog(args.close_accounts)
                closes = [close_period(catalog, folder / f"close-{n}") for n in range(args.runs)]
                close = closes[0]  # accounts, lines and totals are the same every run (seeded catalog)
                rows.append(
                    (
                        f"close a period: finalize_period + export_final_invoices, {close['accounts']:,} "
                        "accounts, s",
                        f"{spread([c['seconds'] for c in closes], '.1f')} (target < 30 s; finalize_period "
                        f"alone {spread([c['finalize_s'] for c in closes], '.1f')}); "
                        f"{close['lines']:,} lines, {close['totals']:,} totals",
                    )
                )
    except BenchmarkFailed as exc:
        print(f"bench_store: WRONG RESULT: {exc}", file=sys.stderr)
        return 1
    if args.no_record:
        for name, value in rows:
            print(f"{name}: {value}")
    else:
        notes = [text for option, text in NOTES.items() if getattr(args, option)]
        record("Billing store (DuckLake)", rows, " ".join([*notes, MACHINE]))
    return 0


def compaction_rows(runs: list[dict[str, Any]], rows: int, batch_rows: int) -> list[tuple[str, str]]:
    def files_of(stage: str) -> str:
        return "; ".join(f"{k} {spread([float(r[stage].get(k, 0)) for r in runs])}" for k in FILE_KEYS)

    commits = [s for r in runs for s in r["commits"]]
    tenth = max(1, len(runs[0]["commits"]) // 10)
    early = [s for r in runs for s in r["commits"][:tenth]]
    late = [s for r in runs for s in r["commits"][-tenth:]]
    return [
        (f"fill: {rows:,} rated rows, {batch_rows:,} per store_batch, s",
         f"{spread([r['fill_s'] for r in runs], '.1f')} (row generation in Python included)"),
        ("store_batch seconds per commit, median / p95 (all commits of all runs)",
         f"{statistics.median(commits):.3f} / {sorted(commits)[int(len(commits) * 0.95)]:.3f}; "
         f"first tenth median {statistics.median(early):.3f}, last tenth {statistics.median(late):.3f}"),
        ("files before upkeep (disk = Parquet under DIR/data; others: read by the current snapshot)",
         files_of("before")),
        ("upkeep: roll_up of 4 partitions, s", spread([r["roll_up_s"] for r in runs], ".1f")),
        (f"upkeep: checkpoint (merge, expire > {HISTORY_DAYS} days), s",
         spread([r["checkpoint_s"] for r in runs], ".1f")),
        ("files after upkeep, history kept", files_of("kept")),
        ("checkpoint with no history kept (0 days), s", spread([r["expire_s"] for r in runs], ".1f")),
        ("files after, no history kept", files_of("final")),
        ("files after a further CHECKPOINT with delete_older_than '0 seconds' (not set by maintenance)",
         files_of("deleted")),
    ]  # fmt: skip


NOTES = {
    "rows": "Files: rated rows of one period written straight into a fresh store through "
    "consolidation.checkpoint.store_batch (no Kafka, no pipeline, to keep the run short), each commit "
    "shaped as one worker's batch over 4 partitions (a rated table per partition, a usage delta per "
    "key, a position per partition). 'current': the catalog's data files not ended (ducklake_data_file, "
    "end_snapshot IS NULL); 'disk': Parquet files under DIR/data; rows under DuckLake's inlining limit "
    "(10) live in the catalog. Checked before and after upkeep: each row once, usage_totals counts them "
    "all, reconciliation; a snapshot from before the upkeep reads the same rows after it.",
    "reader_rows": "Reader: fills of rated rows through store_batch (shaped as in the files figure), "
    "alone and with bench_consolidation's live reader (one read-only connection, one query a second, "
    "started and answering before the fill), interleaved.",
    "close_accounts": "Close: as in the section 'Consolidation sink and period close', on the DuckLake "
    "store, timed with the Parquet export a worker runs after finalize_period.",
}
MACHINE = "Figures from the shared 2-core machine (other engineers' tests running), plain Python (no mypyc)."


if __name__ == "__main__":
    sys.exit(main())

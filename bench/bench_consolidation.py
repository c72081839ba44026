"""Consolidation: sink throughput, and the time to close a period for 100,000 accounts.

    .venv/bin/python -m bench.bench_consolidation [--events 100000] [--accounts 300]
                                                  [--close-accounts 100000] [--no-record]

1. Throughput. A generated month of SaaS and telecom usage goes through
   mediation and rating on the embedded broker (4 partitions) until everything is
   rated; those two workers are stopped, then one `meterline consolidation`
   worker is started alone and timed until its progress records
   (meterline.stats, StatsReader) show every rated record stored in DuckDB and
   Parquet. Reported: steady rate from its first committed batch to the last
   (startup and the group join excluded) and the rate over the wall time from
   process start. Checked: rated_usage holds each rated event once and
   sum(rated amounts) = usage_totals.amount_exact for every account/charge.
2. Close. A BillingStore is filled with the usage totals of a generated
   100,000-account catalog (every charge of every contract in effect, priced
   with rating.pricing) plus one rated-usage row per total, then
   `finalize_period` is timed: drafts for every active account, written to
   DuckDB and exported to Parquet, reconciliation included. Checked: one final
   draft per active account, Parquet rows = DuckDB rows, reconciliation holds.

Any wrong result exits 1 and records nothing; otherwise a section is appended
to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from bench.common import BenchmarkFailed, record
from consolidation.closing import accounts_active_in, finalize_period, reconcile_amounts
from consolidation.store import RATED_SCHEMA, BillingStore, Position, write_parquet_atomically
from meterline.catalog import Catalog, period_bounds
from meterline.catalog_file import parse_catalog
from meterline.generate import generate_catalog, generate_events
from meterline.records import invoice_id_for

PERIOD = "2026-10"  # the generator's month
PARTITIONS = 4


# -- 1. throughput -------------------------------------------------------------------


def throughput(events: int, accounts: int, folder: Path) -> dict[str, Any]:
    from meterline.broker import EmbeddedBroker
    from meterline.config import Settings
    from meterline.pipeline import Workers
    from meterline.progress import StatsReader, Totals
    from meterline.publish import InputFile, create_topics, produce_inputs, publish_catalog

    document = generate_catalog(accounts, seed=3)
    catalog_path = folder / "catalog.yaml"
    catalog_path.write_text(yaml.safe_dump(document, sort_keys=False))
    events_path = folder / "events.jsonl"
    with events_path.open("wb") as handle:
        for line in generate_events(document, events, 3):
            handle.write(line + b"\n")
    out = folder / "out"

    with EmbeddedBroker() as broker:
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers, partitions=PARTITIONS, instance_id="bench"
        )
        create_topics(settings)
        publish_catalog(settings, catalog_path)
        reader = StatsReader(settings.bootstrap_servers, {})
        raw = [t.name for t in settings.raw_topics]

        def wait(condition: Any, workers: Workers, timeout: float = 1800) -> tuple[Totals, float]:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                reader.poll(0.05)
                totals = reader.totals(raw)
                if condition(totals):
                    return totals, time.monotonic()
                workers.check()
            raise BenchmarkFailed(f"timed out; last totals {reader.totals(raw)}")

        upstream = Workers(settings, out, None)
        try:
            upstream.start("mediation")
            upstream.start("rating")
            published = produce_inputs(settings, [InputFile(events_path, "json")])
            rated_totals, _ = wait(
                lambda t: (
                    t.events_in >= published
                    and t.keyed_consumed >= t.forwarded
                    and t.rating_consumed >= t.mediated
                ),
                upstream,
            )
        finally:
            upstream.stop()
        rated = rated_totals.rated
        print(f"upstream done: {published:,} published, {rated:,} rated", flush=True)

        sink = Workers(settings, out, None)
        try:
            started = time.monotonic()
            sink.start("consolidation")
            first, first_at = wait(lambda t: t.stored > 0, sink)
            done, done_at = wait(lambda t: t.consolidation_consumed >= rated, sink)
        finally:
            sink.stop()
        reader.close()

    if done.stored != rated:
        raise BenchmarkFailed(f"consolidation stored {done.stored} of {rated} rated events")
    store = BillingStore(out)
    try:
        count, distinct = store.db.execute(
            "SELECT count(*), count(DISTINCT (account_id, event_id)) FROM rated_usage"
        ).fetchone() or (0, 0)
        if not count == distinct == rated:
            raise BenchmarkFailed(f"rated_usage holds {count} rows, {distinct} distinct, for {rated} rated")
        counted = store.db.execute("SELECT sum(event_count) FROM usage_totals").fetchone()
        if not counted or counted[0] != rated:
            raise BenchmarkFailed(f"usage_totals counts {counted} events for {rated} rated")
        for period in store.periods_with_usage():
            if reconcile_amounts(store, period):
                raise BenchmarkFailed(f"{period}: rated amounts differ from usage_totals")
    finally:
        store.close()
    steady = (rated - first.stored) / max(done_at - first_at, 1e-9)
    return {
        "events": published,
        "rated": rated,
        "steady": steady,
        "wall_s": done_at - started,
        "wall_rate": rated / (done_at - started),
    }


# -- 2. close ------------------------------------------------------------------------


def populate(store: BillingStore, catalog: Catalog, period: str, seed: int) -> int:
    """Usage totals for every charge of every contract in effect, plus one rated row per total."""
    from rating.pricing import price

    rng = random.Random(seed)
    first, following = period_bounds(period)
    event_time = datetime(first.year, first.month, 15, 12, tzinfo=UTC)
    totals: list[tuple[tuple[str, str, str, str, str], Decimal, Decimal, int]] = []
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
                key = (account.id, period, charge.id, charge.meter, contract.id)
                totals.append((key, aggregate, amount, 1))
                row = {
                    "event_id": f"e-{len(totals)}",
                    "account_id": account.id,
                    "meter": charge.meter,
                    "charge_id": charge.id,
                    "model": charge.model,
                    "contract_id": contract.id,
                    "plan_id": plan.id,
                    "event_time": event_time,
                    "quantity": aggregate,
                    "rated_quantity": aggregate,
                    "amount": amount,
                    "aggregate_before": Decimal(0),
                    "aggregate_after": aggregate,
                    "currency": plan.currency,
                    "invoice_id": invoice_id_for(account.id, period),
                    "attributes": "{}",
                    "source_partition": 0,
                    "source_offset": len(totals) - 1,
                    "period": period,
                }
                for name, value in row.items():
                    rated[name].append(value)
    table = pa.table({f.name: pa.array(rated[f.name], f.type) for f in RATED_SCHEMA}, schema=RATED_SCHEMA)
    folder = store.out / "rated_usage" / f"period={period}"
    write_parquet_atomically(table, folder / f"part-000-{0:012d}-{len(totals) - 1:012d}.parquet")
    store.apply_batch("bench", {0: Position(len(totals), {}, {})}, totals)
    return len(totals)


def close_period(accounts: int, folder: Path) -> dict[str, Any]:
    started = time.monotonic()
    catalog = parse_catalog(generate_catalog(accounts, seed=5), source="generated")
    print(f"catalog of {accounts:,} accounts in {time.monotonic() - started:.0f} s", flush=True)
    store = BillingStore(folder / "close")
    try:
        totals = populate(store, catalog, PERIOD, seed=5)
        print(f"{totals:,} usage totals stored", flush=True)
        started = time.perf_counter()
        written = finalize_period(store, catalog, PERIOD, datetime.now(UTC))
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
                raise BenchmarkFailed(f"{name}: Parquet and DuckDB rows differ")
        lines = store.db.execute("SELECT count(*) FROM invoice_lines").fetchone()
    finally:
        store.close()
    return {"accounts": len(active), "totals": totals, "lines": lines[0] if lines else 0, "seconds": elapsed}


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    return sorted(tuple(row.values()) for row in table.to_pylist())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="raw events for the throughput run")
    parser.add_argument("--accounts", type=int, default=300, help="accounts for the throughput run")
    parser.add_argument("--close-accounts", type=int, default=100_000, help="accounts for the close")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-consolidation-") as tmp:
            sink = throughput(args.events, args.accounts, Path(tmp))
            close = close_period(args.close_accounts, Path(tmp))
    except BenchmarkFailed as exc:
        print(f"bench_consolidation: WRONG RESULT: {exc}", file=sys.stderr)
        return 1
    rows = [
        (
            "consolidation throughput, steady (first to last committed batch)",
            f"{sink['steady']:,.0f} rated events/s",
        ),
        (
            "consolidation throughput, wall (process start to all stored)",
            f"{sink['wall_rate']:,.0f} rated events/s ({sink['rated']:,} events in {sink['wall_s']:.1f} s)",
        ),
        (
            f"close a period: finalize_period, {close['accounts']:,} accounts",
            f"{close['seconds']:.1f} s (target < 30 s); {close['lines']:,} lines, {close['totals']:,} totals",
        ),
    ]
    if not args.no_record:
        record(
            "Consolidation sink and period close",
            rows,
            f"Throughput: {sink['events']:,} generated events ({args.accounts} accounts, SaaS + telecom) "
            f"through mediation and rating first, then one `meterline consolidation` worker alone on "
            f"{PARTITIONS} partitions, timed by its meterline.stats progress; rated_usage and usage_totals "
            "checked (each event once, reconciliation). Close: usage_totals of a generated catalog written "
            "directly to a BillingStore, then `finalize_period` timed (drafts assembled in Python, written "
            "to DuckDB and Parquet as Arrow tables, reconciliation included); one final draft per active "
            "account and Parquet = DuckDB checked.",
        )
    else:
        for name, value in rows:
            print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Consolidation: sink throughput, and the time to close a period for 100,000 accounts.

    .venv/bin/python -m bench.bench_consolidation [--events 100000] [--accounts 300]
                                                  [--close-accounts 100000] [--runs 3] [--no-record]

1. Throughput. Prepared once: a generated month of SaaS and telecom usage goes
   through mediation and rating on the embedded broker (4 partitions) until
   everything is rated, and the rated topic (read_committed, after the lineage
   guard) is kept in memory. Each run: a fresh broker gets the catalog and those
   rated records (same partitions, same headers), then one `meterline
   consolidation` worker is started alone and timed until its progress records
   (meterline.stats, StatsReader) show every rated record stored in DuckDB and
   Parquet. Reported: steady rate from its first committed batch to the last
   (startup and the group join excluded) and the rate over the wall time from
   process start. Checked each run: rated_usage holds each rated event once and
   sum(rated amounts) = usage_totals.amount_exact for every account/charge.
   After each run the plain batched consume -> JSON parse -> produce loop
   (bench.baselines) runs over the same raw events on a broker of its own: the
   same-run baseline the steady rate is given as a ratio to.
2. Close. The catalog of 100,000 generated accounts is built once. Each run: a
   fresh BillingStore is filled with the usage totals of every charge of every
   contract in effect (priced with rating.pricing) plus one rated-usage row per
   total, then `finalize_period` is timed: drafts for every active account,
   written to DuckDB and exported to Parquet, reconciliation included. Checked
   each run: one final draft per active account, Parquet rows = DuckDB rows,
   reconciliation holds.

Every figure is the median of --runs runs, with min and max. Any wrong result
exits 1 and records nothing; otherwise a section is appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from bench.baselines import plain_loop_alone
from bench.common import (
    BenchmarkFailed,
    Record,
    add_runs_option,
    ratio_rows,
    read_guarded,
    record,
    replay,
    spread,
)
from consolidation.closing import accounts_active_in, finalize_period, reconcile_amounts
from consolidation.store import RATED_SCHEMA, BillingStore, Position, write_parquet_atomically
from meterline.broker import EmbeddedBroker
from meterline.catalog import Catalog, period_bounds
from meterline.catalog_file import parse_catalog
from meterline.config import Settings
from meterline.generate import generate_catalog, generate_events
from meterline.pipeline import Workers
from meterline.progress import StatsReader, Totals
from meterline.publish import InputFile, create_topics, produce_inputs, publish_catalog
from meterline.records import invoice_id_for
from meterline.topics import RATED, RAW

PERIOD = "2026-10"  # the generator's month
PARTITIONS = 4


# -- 1. throughput -------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    catalog: Path
    events: Path  # the raw JSON-lines file, for the plain-loop baseline
    published: int
    rated: list[Record]  # the rated topic after the lineage guard


@dataclass(frozen=True)
class Sink:
    steady: float  # rated events/s, first committed batch to the last
    wall_s: float  # process start until every rated record was consumed


def _wait(
    reader: StatsReader, workers: Workers, condition: Callable[[Totals], bool], timeout: float = 1800
) -> tuple[Totals, float]:
    """Totals once `condition` holds, and when (time.monotonic)."""
    raw = [RAW]  # the default raw topic, which the bench settings keep
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reader.poll(0.05)
        totals = reader.totals(raw)
        if condition(totals):
            return totals, time.monotonic()
        workers.check()
    raise BenchmarkFailed(f"timed out; last totals {reader.totals(raw)}")


def _settings(broker: EmbeddedBroker) -> Settings:
    return Settings(bootstrap_servers=broker.bootstrap_servers, partitions=PARTITIONS, instance_id="bench")


def prepare(events: int, accounts: int, folder: Path) -> Prepared:
    """Generate the input, run mediation and rating to the end once, keep the rated topic."""
    document = generate_catalog(accounts, seed=3)
    catalog_path = folder / "catalog.yaml"
    catalog_path.write_text(yaml.safe_dump(document, sort_keys=False))
    events_path = folder / "events.jsonl"
    with events_path.open("wb") as handle:
        for line in generate_events(document, events, 3):
            handle.write(line + b"\n")

    with EmbeddedBroker() as broker:
        settings = _settings(broker)
        create_topics(settings)
        publish_catalog(settings, catalog_path)
        reader = StatsReader(settings.bootstrap_servers, {})
        upstream = Workers(settings, folder / "upstream", None)
        try:
            upstream.start("mediation")
            upstream.start("rating")
            published = produce_inputs(settings, [InputFile(events_path, "json")])
            totals, _ = _wait(
                reader,
                upstream,
                lambda t: (
                    t.events_in >= published
                    and t.keyed_consumed >= t.forwarded
                    and t.rating_consumed >= t.mediated
                ),
            )
        finally:
            upstream.stop()
            reader.close()
        rated = read_guarded(settings.bootstrap_servers, RATED)
    if len(rated) != totals.rated:
        raise BenchmarkFailed(f"rating reported {totals.rated} rated events, the topic holds {len(rated)}")
    print(f"upstream done: {published:,} published, {len(rated):,} rated", flush=True)
    return Prepared(catalog_path, events_path, published, rated)


def throughput(prepared: Prepared, out: Path) -> Sink:
    """One consolidation worker alone over the prepared rated topic, on a fresh broker."""
    rated = len(prepared.rated)
    with EmbeddedBroker() as broker:
        settings = _settings(broker)
        create_topics(settings)
        publish_catalog(settings, prepared.catalog)
        replay(settings.bootstrap_servers, RATED, prepared.rated)
        reader = StatsReader(settings.bootstrap_servers, {})
        sink = Workers(settings, out, None)
        try:
            started = time.monotonic()
            sink.start("consolidation")
            first, first_at = _wait(reader, sink, lambda t: t.stored > 0)
            done, done_at = _wait(reader, sink, lambda t: t.consolidation_consumed >= rated)
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
    return Sink((rated - first.stored) / max(done_at - first_at, 1e-9), done_at - started)


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
    add_runs_option(parser)
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args(argv)
    sinks: list[Sink] = []
    loop: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-consolidation-") as tmp:
            folder = Path(tmp)
            prepared = prepare(args.events, args.accounts, folder)
            published, rated = prepared.published, len(prepared.rated)
            for number in range(args.runs):
                sinks.append(throughput(prepared, folder / f"sink-{number}"))
                # Interleaved, so a slow spell of the shared machine hits both sides of the ratio.
                loop.append(plain_loop_alone(prepared.events, PARTITIONS))
            del prepared  # the rated records: freed before the close builds its large catalog
            catalog = close_catalog(args.close_accounts)
            closes = [close_period(catalog, folder / f"close-{number}") for number in range(args.runs)]
    except BenchmarkFailed as exc:
        print(f"bench_consolidation: WRONG RESULT: {exc}", file=sys.stderr)
        return 1
    steady = [s.steady for s in sinks]
    close = closes[0]  # accounts, lines and totals are the same every run (seeded catalog)
    rows = [
        ("consolidation throughput, steady (first to last committed batch), rated events/s", spread(steady)),
        (
            "consolidation throughput, wall (process start to all stored), rated events/s",
            spread([rated / s.wall_s for s in sinks]),
        ),
        (f"consolidation wall s for {rated:,} rated events", spread([s.wall_s for s in sinks], ".1f")),
        *ratio_rows("consolidation (steady)", steady, loop),
        (
            f"close a period: finalize_period, {close['accounts']:,} accounts, s",
            f"{spread([c['seconds'] for c in closes], '.1f')} (target < 30 s); "
            f"{close['lines']:,} lines, {close['totals']:,} totals",
        ),
    ]
    if not args.no_record:
        record(
            "Consolidation sink and period close",
            rows,
            f"Throughput: {published:,} generated events ({args.accounts} accounts, SaaS + telecom) "
            "through mediation and rating once; each run replays the rated topic to a fresh broker and "
            f"times one `meterline consolidation` worker alone on {PARTITIONS} partitions by its "
            "meterline.stats progress; rated_usage and usage_totals checked (each event once, "
            "reconciliation). The plain loop runs over the same raw events after each run, on a broker of "
            "its own. Close: usage_totals of a generated catalog written directly to a fresh BillingStore "
            "each run, then `finalize_period` timed (drafts assembled in Python, written to DuckDB and "
            "Parquet as Arrow tables, reconciliation included); one final draft per active account and "
            "Parquet = DuckDB checked.",
        )
    else:
        for name, value in rows:
            print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

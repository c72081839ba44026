"""Mediation throughput: one mediation process, exactly-once on, on the embedded broker.

    .venv/bin/python -m bench.bench_mediation [--events 200000] [--runs 3]

Each run: a fresh broker gets a generated catalog and N native JSON events (5%
duplicates, 1% bad records; raw topic not keyed by account, so the repartition
hop runs too), then one `meterline mediation` worker is timed from its first
committed batch until its progress shows every record mediated, rejected or
counted as a duplicate. Checked against the generator's planned counts; a wrong
result exits 1 and records nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import BenchmarkFailed, record, spread
from meterline.broker import EmbeddedBroker
from meterline.config import Settings
from meterline.generate import planned_counts
from meterline.pipeline import Workers
from meterline.progress import StatsReader, Totals
from meterline.publish import InputFile, create_topics, produce_inputs, publish_catalog
from tests.integration.harness import write_dataset


def wait(reader: StatsReader, workers: Workers, condition: object, timeout: float = 1800) -> Totals:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reader.poll(0.05)
        totals = reader.totals(["meterline.raw"])
        if condition(totals):  # type: ignore[operator]
            return totals
        workers.check()
    raise BenchmarkFailed("timed out")


def run_once(folder: Path, catalog: Path, events: Path, expected: int, partitions: int) -> float:
    with EmbeddedBroker() as broker:
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers, partitions=partitions, instance_id="b"
        )
        create_topics(settings)
        publish_catalog(settings, catalog)
        published = produce_inputs(settings, [InputFile(events, "json")])
        workers = Workers(settings, folder, None)
        reader = StatsReader(settings.bootstrap_servers, {})
        try:
            workers.start("mediation")
            first = wait(reader, workers, lambda t: t.events_in > 0)
            started = time.monotonic()
            done = wait(
                reader, workers, lambda t: t.events_in >= published and t.keyed_consumed >= t.forwarded
            )
            elapsed = time.monotonic() - started
        finally:
            workers.stop()
            reader.close()
    if done.events_in != expected or done.mediated + done.duplicates + done.rejected_total != expected:
        raise BenchmarkFailed(f"counts do not reconcile: {done}")
    return (expected - first.events_in) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        catalog, events = write_dataset(folder, args.accounts, args.events, seed=42)
        planned = planned_counts(args.events)
        rates = [run_once(folder, catalog, events, args.events, args.partitions) for _ in range(args.runs)]
    record(
        f"Mediation alone, {args.events:,} events",
        [
            ("events/s, one process, exactly-once (median, min, max)", spread(rates)),
            (
                "planned duplicates / bad records",
                f"{planned['duplicates']:,} / "
                f"{sum(v for k, v in planned.items() if k.startswith('rejected.')):,}",
            ),
        ],
    )


if __name__ == "__main__":
    main()

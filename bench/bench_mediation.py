"""Mediation throughput: one mediation process, exactly-once on, on the embedded broker.

    .venv/bin/python -m bench.bench_mediation [--events 200000] [--runs 3]

Each run: a fresh broker gets a generated catalog and N native JSON events (5%
duplicates, 1% bad records), then one `meterline mediation` worker is timed from
its first committed batch until its progress shows every record mediated,
rejected or counted as a duplicate. Two configurations, each measured: the raw
topic keyed by account (as `meterline run` publishes it: dedup straight from the
raw partitions) and not keyed (the repartition hop runs too: every event is
encoded, produced, consumed and decoded once more). Checked against the generator's planned counts; a wrong
result exits 1 and records nothing.

After each run the plain batched consume -> JSON parse -> produce loop
(bench.baselines) runs over the same raw records on a broker of its own, so the
section also gives mediation's rate as a ratio to that same-run baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.baselines import plain_loop_alone
from bench.common import BenchmarkFailed, add_runs_option, keyed_workers, ratio_rows, record, spread
from generator import planned_counts
from meterline.app.pipeline import Workers
from meterline.app.publish import InputFile, create_topics, produce_inputs, publish_catalog
from meterline.kernel.config import Settings
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.progress import StatsReader, Totals
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


def run_once(folder: Path, catalog: Path, events: Path, expected: int, partitions: int, keyed: bool) -> float:
    with EmbeddedBroker() as broker:
        if keyed:
            workers = keyed_workers(broker.bootstrap_servers, folder / "keyed", partitions, "b")
            settings = workers.settings
        else:
            settings = Settings(
                bootstrap_servers=broker.bootstrap_servers, partitions=partitions, instance_id="b"
            )
            create_topics(settings)
            workers = Workers(settings, folder, None)
        publish_catalog(settings, catalog)
        published = produce_inputs(settings, [InputFile(events, "json")], key_by_account=keyed)
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=12)
    add_runs_option(parser)
    args = parser.parse_args()
    rates: dict[bool, list[float]] = {True: [], False: []}
    loop: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            catalog, events = write_dataset(folder, args.accounts, args.events, seed=42)
            planned = planned_counts(args.events)
            for _ in range(args.runs):
                # Interleaved, so a slow spell of the shared machine hits both sides of the ratio.
                for keyed in (True, False):
                    rates[keyed].append(
                        run_once(folder, catalog, events, args.events, args.partitions, keyed)
                    )
                loop.append(plain_loop_alone(events, args.partitions))
    except BenchmarkFailed as failure:
        print(f"bench_mediation: {failure}", file=sys.stderr)
        return 1
    record(
        f"Mediation alone, {args.events:,} events",
        [
            ("events/s, raw topic keyed by account (as `meterline run`)", spread(rates[True])),
            ("events/s, raw topic not keyed (repartition hop)", spread(rates[False])),
            *ratio_rows("mediation (keyed)", rates[True], loop),
            (
                "mediation (not keyed) / plain loop",
                f"{statistics.median(rates[False]) / statistics.median(loop):.3f}",
            ),
            (
                "planned duplicates / bad records",
                f"{planned['duplicates']:,} / "
                f"{sum(v for k, v in planned.items() if k.startswith('rejected.')):,}",
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

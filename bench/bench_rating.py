"""Rating throughput: one rating process, exactly-once on, on the embedded broker.

    .venv/bin/python -m bench.bench_rating [--events N] [--runs 3] [--record]

1. Prepare once: generate a catalog and N raw events (meterline.generate mixes
   every pricing model: graduated, flat with attribute and time-of-day filters,
   volume over unique_count, package, per-minute voice), run mediation to
   completion on a broker, and keep the mediated topic (read_committed, after the
   lineage guard) in memory.
2. Each run: a fresh broker gets the catalog and the mediated records (same
   partitions, same headers), then one `meterline rating` worker is started and
   timed until its progress records (meterline.stats) show every mediated record
   consumed. Reported: steady-state events/s, from the first committed rating
   batch to the last (startup and the ~4 s group join excluded), and the wall
   time from process start.
3. Each run is checked: rated + rejected == mediated, rated == the valid events
   the generator planned, and the rated topic (read_committed, lineage guard)
   holds each event once. Any mismatch exits 1.

`--record` appends a section to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import confluent_kafka
from confluent_kafka import Producer

from meterline.broker import EmbeddedBroker
from meterline.config import Settings
from meterline.generate import planned_counts
from meterline.kafka_config import plain_producer_config
from meterline.pipeline import Workers
from meterline.progress import StatsReader, Totals
from meterline.publish import InputFile, create_topics, produce_inputs, publish_catalog
from meterline.topics import MEDIATED, RATED
from schemas.codec import decode_rated_record
from tests.integration.harness import after_lineage_guard, write_dataset
from tests.integration.harness import read_topic as read_whole_topic

RESULTS = Path(__file__).with_name("RESULTS.md")

Record = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]


class BenchError(RuntimeError):
    """The benchmark could not run, or its result is wrong."""


@dataclass(frozen=True)
class Run:
    events_per_s: float  # steady state: first committed batch to the last
    wall_s: float  # from process start until every mediated record was consumed
    rated: int
    rejected: int


def _settings(broker: EmbeddedBroker, partitions: int) -> Settings:
    return Settings(bootstrap_servers=broker.bootstrap_servers, partitions=partitions, instance_id="bench")


def _totals(reader: StatsReader, settings: Settings) -> Totals:
    reader.poll(0.05)
    return reader.totals([t.name for t in settings.raw_topics])


def _watch(
    workers: Workers, reader: StatsReader, settings: Settings, done: Callable[[Totals], bool], timeout: float
) -> Totals:
    deadline = time.monotonic() + timeout
    while True:
        totals = _totals(reader, settings)
        if done(totals):
            return totals
        workers.check()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s; last totals {totals}")


def read_topic(settings: Settings, topic: str) -> list[Record]:
    """A whole topic, read_committed, minus the copies the lineage guard drops (see meterline.lineage)."""
    return [
        (m.partition(), m.key(), m.value(), list(m.headers() or []))
        for m in after_lineage_guard(read_whole_topic(settings.bootstrap_servers, topic))
    ]


def prepare(
    folder: Path, events: int, accounts: int, seed: int, partitions: int
) -> tuple[Path, list[Record]]:
    catalog, stream = write_dataset(folder, accounts, events, seed)
    with EmbeddedBroker() as broker:
        settings = _settings(broker, partitions)
        create_topics(settings)
        publish_catalog(settings, catalog)
        published = produce_inputs(settings, [InputFile(stream, "json")])
        workers = Workers(settings, folder / "mediation", None)
        reader = StatsReader(settings.bootstrap_servers, {})
        try:
            workers.start("mediation")
            totals = _watch(
                workers,
                reader,
                settings,
                lambda t: t.events_in >= published and t.keyed_consumed >= t.forwarded,
                timeout=1800,
            )
        finally:
            workers.stop()
            reader.close()
        mediated = read_topic(settings, MEDIATED)
    if len(mediated) != totals.mediated:
        raise BenchError(
            f"mediation reported {totals.mediated} mediated events, the topic holds {len(mediated)}"
        )
    return catalog, mediated


def _publish_mediated(settings: Settings, mediated: list[Record]) -> None:
    """The prepared mediated records, same partitions and headers (the producer is gone on return)."""
    producer = Producer(plain_producer_config(settings.bootstrap_servers, {}))
    for partition, key, value, headers in mediated:
        while True:
            try:
                producer.produce(MEDIATED, value=value, key=key, partition=partition, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise BenchError("could not publish the mediated records")


def run_once(folder: Path, catalog: Path, mediated: list[Record], partitions: int, valid: int) -> Run:
    with EmbeddedBroker() as broker:
        settings = _settings(broker, partitions)
        create_topics(settings)
        publish_catalog(settings, catalog)
        _publish_mediated(settings, mediated)
        workers = Workers(settings, folder, None)
        reader = StatsReader(settings.bootstrap_servers, {})
        expected = len(mediated)
        try:
            started = time.monotonic()
            workers.start("rating")
            first = _watch(workers, reader, settings, lambda t: t.rating_consumed > 0, timeout=300)
            first_at = time.monotonic()
            last = _watch(workers, reader, settings, lambda t: t.rating_consumed >= expected, timeout=1800)
            done_at = time.monotonic()
        finally:
            workers.stop()
            reader.close()
        rated_topic = read_topic(settings, RATED)
    rated, rejected = last.rated, last.rating_consumed - last.rated
    problems = []
    if rated + rejected != expected:
        problems.append(f"rated {rated} + rejected {rejected} != mediated {expected}")
    if rated != valid:
        problems.append(f"rated {rated}, the generator planned {valid} valid events")
    keys = {
        (r["account_id"], r["event_id"])
        for r in (decode_rated_record(v or b"") for _, _, v, _ in rated_topic)
    }
    if not len(rated_topic) == len(keys) == rated:
        problems.append(f"rated topic holds {len(rated_topic)} records, {len(keys)} distinct; rated {rated}")
    if problems:
        raise BenchError("wrong result: " + "; ".join(problems))
    steady = (expected - first.rating_consumed) / max(done_at - first_at, 1e-9)
    return Run(steady, done_at - started, rated, rejected)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"librdkafka {confluent_kafka.libversion()[0]}, confluent-kafka {confluent_kafka.version()}, "
        f"{platform.system()} {platform.release()}"
    )


def record(command: str, events: int, mediated: int, runs: list[Run], partitions: int) -> None:
    def spread(values: list[float], fmt: str) -> str:
        return " | ".join(format(v, fmt) for v in (statistics.median(values), min(values), max(values)))

    rates = spread([r.events_per_s for r in runs], ",.0f")
    walls = spread([r.wall_s for r in runs], ".1f")
    section = f"""
## Rating throughput (bench/bench_rating.py)

{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · `{command}`

One `meterline rating` process, exactly-once (transactions + changelog), embedded
broker (Tansu), {partitions} partitions, {events:,} generated events → {mediated:,} mediated
(every pricing model of meterline.generate), rated from a prepared mediated topic.

| figure | median | min | max |
| --- | ---: | ---: | ---: |
| events/s, steady state (first to last committed batch) | {rates} |
| wall s, process start → all consumed | {walls} |

Runs: {len(runs)}; every run checked rated + rejected == mediated ({runs[0].rated:,} + {runs[0].rejected:,}).
Machine: {machine()}.
"""
    with RESULTS.open("a") as handle:
        if RESULTS.stat().st_size == 0:
            handle.write("# Benchmark results\n")
        handle.write(section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_rating", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--events", type=int, default=200_000, help="raw events to generate (default 200000)")
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    args = parser.parse_args(argv)
    valid = planned_counts(args.events)["valid"]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-rating-") as tmp:
            folder = Path(tmp)
            began = time.monotonic()
            catalog, mediated = prepare(folder, args.events, args.accounts, args.seed, args.partitions)
            print(
                f"prepared {len(mediated):,} mediated events in {time.monotonic() - began:.0f}s", flush=True
            )
            runs = []
            for number in range(1, args.runs + 1):
                run = run_once(folder / f"run{number}", catalog, mediated, args.partitions, valid)
                runs.append(run)
                print(
                    f"run {number}: {run.events_per_s:,.0f} events/s steady, {run.wall_s:.1f}s wall, "
                    f"rated {run.rated:,} rejected {run.rejected:,}",
                    flush=True,
                )
    except BenchError as exc:
        print(f"bench_rating: {exc}", file=sys.stderr)
        return 1
    rates = [r.events_per_s for r in runs]
    median, low, high = statistics.median(rates), min(rates), max(rates)
    print(f"rating: median {median:,.0f} events/s (min {low:,.0f}, max {high:,.0f})")
    print(f"machine: {machine()}")
    if args.record:
        command = "python -m bench.bench_rating " + " ".join(argv if argv is not None else sys.argv[1:])
        record(command.strip(), args.events, len(mediated), runs, args.partitions)
    return 0


if __name__ == "__main__":
    sys.exit(main())

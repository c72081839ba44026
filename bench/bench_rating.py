"""Rating throughput: one rating process, exactly-once on, on the embedded broker.

    .venv/bin/python -m bench.bench_rating [--events N] [--runs 3] [--record]

1. Prepare once: generate a catalog and N raw events (generator mixes
   every pricing model: graduated, flat with attribute and time-of-day filters,
   volume over unique_count, package, per-minute voice), run mediation to
   completion on a broker, and keep the mediated topic (read_committed, after the
   lineage guard) in memory.
2. Each run: a fresh broker gets the catalog and the mediated records (same
   partitions, same headers), then one `meterline rating` worker is started and
   timed until its progress records (meterline.stats) show every mediated record
   consumed. Reported: steady-state events/s, from the first committed rating
   batch to the last (startup and the ~4 s group join excluded), and the wall
   time from process start. After each run the plain batched consume -> JSON
   parse -> produce loop (bench.baselines) runs over the same raw events on a
   broker of its own: the same-run baseline rating's rate is given as a ratio to.
3. Each run is checked: rated + rejected == mediated, rated == the valid events
   the generator planned, and the rated topic (read_committed, lineage guard)
   holds each event once. Any mismatch exits 1 and records nothing.

`--record` appends a section to bench/RESULTS.md; without it the figures are printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
from generator import planned_counts
from meterline.app.pipeline import Workers
from meterline.app.publish import InputFile, create_topics, produce_inputs, publish_catalog
from meterline.kernel.config import Settings
from meterline.kernel.topics import MEDIATED, RATED
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.progress import StatsReader, Totals
from schemas.codec import decode_rated_record
from tests.integration.harness import write_dataset


@dataclass(frozen=True)
class Run:
    events_per_s: float  # steady state: first committed batch to the last
    wall_s: float  # from process start until every mediated record was consumed
    rated: int
    rejected: int


def _settings(broker: EmbeddedBroker, partitions: int) -> Settings:
    return Settings(bootstrap_servers=broker.bootstrap_servers, partitions=partitions, instance_id="bench")


def _watch(
    workers: Workers, reader: StatsReader, settings: Settings, done: Callable[[Totals], bool], timeout: float
) -> Totals:
    deadline = time.monotonic() + timeout
    while True:
        reader.poll(0.05)
        totals = reader.totals([t.name for t in settings.raw_topics])
        if done(totals):
            return totals
        workers.check()
        if time.monotonic() > deadline:
            raise BenchmarkFailed(f"timed out after {timeout:.0f}s; last totals {totals}")


def prepare(
    folder: Path, events: int, accounts: int, seed: int, partitions: int
) -> tuple[Path, Path, list[Record]]:
    """(catalog, raw events file, mediated records) for the runs to replay."""
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
        mediated = read_guarded(settings.bootstrap_servers, MEDIATED)
    if len(mediated) != totals.mediated:
        raise BenchmarkFailed(
            f"mediation reported {totals.mediated} mediated events, the topic holds {len(mediated)}"
        )
    return catalog, stream, mediated


def run_once(folder: Path, catalog: Path, mediated: list[Record], partitions: int, valid: int) -> Run:
    with EmbeddedBroker() as broker:
        settings = _settings(broker, partitions)
        create_topics(settings)
        publish_catalog(settings, catalog)
        replay(settings.bootstrap_servers, MEDIATED, mediated)
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
        rated_topic = read_guarded(settings.bootstrap_servers, RATED)
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
        raise BenchmarkFailed("wrong result: " + "; ".join(problems))
    steady = (expected - first.rating_consumed) / max(done_at - first_at, 1e-9)
    return Run(steady, done_at - started, rated, rejected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_rating", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--events", type=int, default=200_000, help="raw events to generate (default 200000)")
    parser.add_argument("--accounts", type=int, default=300)
    add_runs_option(parser)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    args = parser.parse_args(argv)
    valid = planned_counts(args.events)["valid"]
    runs: list[Run] = []
    loop: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-rating-") as tmp:
            folder = Path(tmp)
            began = time.monotonic()
            catalog, stream, mediated = prepare(
                folder, args.events, args.accounts, args.seed, args.partitions
            )
            print(
                f"prepared {len(mediated):,} mediated events in {time.monotonic() - began:.0f}s", flush=True
            )
            for number in range(1, args.runs + 1):
                run = run_once(folder / f"run{number}", catalog, mediated, args.partitions, valid)
                runs.append(run)
                # Interleaved, so a slow spell of the shared machine hits both sides of the ratio.
                loop.append(plain_loop_alone(stream, args.partitions))
                print(
                    f"run {number}: {run.events_per_s:,.0f} events/s steady, {run.wall_s:.1f}s wall, "
                    f"rated {run.rated:,} rejected {run.rejected:,}; plain loop {loop[-1]:,.0f} records/s",
                    flush=True,
                )
    except BenchmarkFailed as exc:
        print(f"bench_rating: {exc}", file=sys.stderr)
        return 1
    rates = [r.events_per_s for r in runs]
    rows = [
        ("events/s, steady state (first to last committed batch)", spread(rates)),
        ("wall s, process start → all consumed", spread([r.wall_s for r in runs], ".1f")),
        *ratio_rows("rating", rates, loop),
    ]
    notes = (
        f"One `meterline rating` process, exactly-once (transactions + changelog), embedded broker "
        f"(Tansu), {args.partitions} partitions, {args.events:,} generated events → {len(mediated):,} "
        "mediated (every pricing model of generator), rated from a prepared mediated topic. "
        f"Every run checked rated + rejected == mediated ({runs[0].rated:,} + {runs[0].rejected:,}), "
        "rated == the planned valid events, each event once on the rated topic. The plain loop runs "
        "over the same raw events after each rating run, on a broker of its own."
    )
    if args.record:
        record(f"Rating throughput, {args.events:,} events", rows, notes)
    else:
        for name, value in rows:
            print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

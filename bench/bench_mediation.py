"""Mediation alone and chained with rating: one worker, exactly-once on, on the embedded broker.

    .venv/bin/python -m bench.bench_mediation [--events 200000] [--runs 3] [--no-record]

Each run measures three configurations, each on a fresh broker that gets a generated
catalog and N native JSON events (5% duplicates, 1% bad records):

- mediation, raw topic keyed by account (as `meterline run` publishes it: dedup
  straight from the raw partitions);
- mediation, raw topic not keyed (the repartition hop runs too: every event is
  encoded, produced, consumed and decoded once more);
- the chained worker (`meterline chained`: mediation and rating in one process, one
  transaction per batch, no mediated topic) on the raw topic keyed by account.

One worker is timed from its first committed batch until its progress shows every
record settled (mediated, rejected or counted as a duplicate; the chained worker's
mediated records rated too). Checked against the generator's planned counts; a wrong
result exits 1 and records nothing.

After each run two same-run baselines run over the same raw records, each on a broker
of its own (bench.baselines): the plain batched consume -> JSON parse -> produce loop,
and the raw pipe (the records produced to and consumed from the broker, no processing:
N / (N / produce rate + N / consume rate)). The section gives each configuration's rate
as a ratio to the plain loop (ratio of the medians) and to the raw pipe (the median of
the per-run ratios), and the worker's CPU seconds per 1M events: the whole process, start
and idle polls included, from the `worker_stopped` line it logs when stopped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from bench.baselines import plain_loop_alone, raw_pipe_alone
from bench.common import BenchmarkFailed, add_runs_option, keyed_workers, ratio_rows, record, spread
from generator import planned_counts
from meterline.app.chained import STAGE as CHAINED
from meterline.app.pipeline import Workers
from meterline.app.publish import InputFile, create_topics, produce_inputs, publish_catalog
from meterline.kernel.config import Settings
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.progress import StatsReader, Totals
from tests.integration.harness import write_dataset

# Configuration -> its label in the results table, and its short name in the ratio rows.
CONFIGS = {
    "keyed": "mediation, raw topic keyed by account (as `meterline run`)",
    "not keyed": "mediation, raw topic not keyed (repartition hop)",
    "chained": "chained worker (mediation + rating), raw topic keyed by account",
}
SHORT = {"keyed": "mediation (keyed)", "not keyed": "mediation (not keyed)", "chained": "chained"}


def wait(
    reader: StatsReader, workers: Workers, condition: Callable[[Totals], bool], timeout: float = 1800
) -> Totals:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reader.poll(0.05)
        totals = reader.totals(["meterline.raw"])
        if condition(totals):
            return totals
        workers.check()
    raise BenchmarkFailed("timed out")


def cpu_seconds(folder: Path, stage: str) -> float:
    """The CPU seconds a stopped worker logged (meterline.app.workers.log_peak_memory)."""
    log = folder / "logs" / f"{stage}.log"
    for line in reversed(log.read_bytes().splitlines()):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "worker_stopped" and entry.get("stage") == stage:
            return float(entry["cpu_seconds"])
    raise BenchmarkFailed(f"no worker_stopped line in {log}: did the worker stop cleanly?")


def check(config: str, done: Totals, expected: int, planned: dict[str, int]) -> None:
    settled = done.rated if config == "chained" else done.mediated
    if done.events_in != expected or settled + done.duplicates + done.rejected_total != expected:
        raise BenchmarkFailed(f"{config}: counts do not reconcile: {done}")
    if done.duplicates != planned["duplicates"]:
        raise BenchmarkFailed(f"{config}: {done.duplicates} duplicates, {planned['duplicates']} planned")
    if config == "chained" and done.rated != planned["valid"]:
        raise BenchmarkFailed(f"chained: {done.rated} rated, {planned['valid']} valid events planned")


def run_once(
    folder: Path, catalog: Path, events: Path, planned: dict[str, int], partitions: int, config: str
) -> tuple[float, float]:
    """(events/s, worker CPU seconds) of one configuration on a fresh broker; `folder` is new."""
    expected = planned["events_in"]
    keyed = config != "not keyed"
    stage = CHAINED if config == "chained" else "mediation"
    with EmbeddedBroker() as broker:
        if keyed:
            workers = keyed_workers(broker.bootstrap_servers, folder, partitions, "b")
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
            workers.start(stage)
            first = wait(reader, workers, lambda t: t.events_in > 0)
            started = time.monotonic()
            if config == "chained":
                done = wait(
                    reader, workers, lambda t: t.events_in >= published and t.raw_outcomes >= published
                )
            else:
                done = wait(
                    reader, workers, lambda t: t.events_in >= published and t.keyed_consumed >= t.forwarded
                )
            elapsed = time.monotonic() - started
        finally:
            workers.stop()
            reader.close()
    check(config, done, expected, planned)
    return (expected - first.events_in) / elapsed, cpu_seconds(folder, stage)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument(
        "--no-record", action="store_true", help="print the figures instead of appending them to RESULTS.md"
    )
    add_runs_option(parser)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {config: [] for config in CONFIGS}
    cpu: dict[str, list[float]] = {config: [] for config in CONFIGS}
    loop: list[float] = []
    pipe: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            catalog, events = write_dataset(folder, args.accounts, args.events, seed=42)
            planned = planned_counts(args.events)
            for run in range(args.runs):
                # Interleaved, so a slow spell of the shared machine hits every side of the ratios.
                for n, config in enumerate(CONFIGS):
                    out = folder / f"run{run}-{n}"
                    rate, seconds = run_once(out, catalog, events, planned, args.partitions, config)
                    rates[config].append(rate)
                    cpu[config].append(seconds / args.events * 1_000_000)
                loop.append(plain_loop_alone(events, args.partitions))
                pipe.append(raw_pipe_alone(events, args.partitions))
    except BenchmarkFailed as failure:
        print(f"bench_mediation: {failure}", file=sys.stderr)
        return 1
    rows = [(f"events/s, {label}", spread(rates[config])) for config, label in CONFIGS.items()]
    rows += [("raw pipe, records/s", spread(pipe))]
    rows += [
        (
            f"{SHORT[config]} / raw pipe",
            spread([r / p for r, p in zip(rates[config], pipe, strict=True)], ".3f"),
        )
        for config in CONFIGS
    ]
    rows += ratio_rows(SHORT["keyed"], rates["keyed"], loop)
    rows += [
        (f"{SHORT[config]} / plain loop", f"{statistics.median(rates[config]) / statistics.median(loop):.3f}")
        for config in ("not keyed", "chained")
    ]
    rows += [
        (f"worker CPU s per 1M events, {SHORT[config]}", spread(cpu[config], ",.1f")) for config in CONFIGS
    ]
    bad = sum(v for k, v in planned.items() if k.startswith("rejected."))
    rows += [("planned duplicates / bad records", f"{planned['duplicates']:,} / {bad:,}")]
    title = f"Mediation alone and chained with rating, {args.events:,} events"
    if args.no_record:
        print(f"{title} (not recorded)")
        for name, value in rows:
            print(f"| {name} | {value} |")
    else:
        record(title, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

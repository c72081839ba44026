"""`make bench` / `make bench-quick`: the benchmark suite of meterline.

    .venv/bin/python -m bench.run --quick     # ~2 minutes: 50k events, one run each
    .venv/bin/python -m bench.run --full      # 1M events, medians of 3 runs, then the stage benches

Input is generated deterministically (seeded): a mixed SaaS and telecom catalog
of 1,000 accounts, native JSON events with 5% duplicates and 1% bad records, 12
partitions. In the same run it measures the broker's raw produce and consume
rates (the raw pipe: the records produced, then consumed, no processing) and a
plain batched consume -> parse -> produce loop, so meterline's figures can be read
as ratios on a noisy machine. `meterline run` (mediation and rating chained in one
worker) is measured, and the same pipeline with the stages apart, with the CPU
seconds each process spent. Every figure is checked first:
the reconciliation of docs/outputs.md, the generator's planned counts, and invoice
totals equal to a Kafka-free reference computed from the same input
(bench/reference.py). A wrong result exits 1 and records nothing.

Every figure is the median of the runs with min and max (3 runs in full mode, 1
in quick mode). The latency run publishes as `meterline run` does: raw records
keyed by account on a raw topic declared keyed, so mediation skips the
repartition hop.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench.baselines import plain_loop_rate, raw_rates
from bench.common import BenchmarkFailed, keyed_workers, record, spread
from bench.reference import reference_totals
from consolidation.lake import connect as connect_store
from generator import planned_counts
from mediation.formats import account_of
from meterline.app.publish import InputFile, publish_catalog, read_records
from meterline.kernel.headers import FORMAT_HEADER
from meterline.kernel.topics import RATED, RAW
from meterline.runtime.broker import EmbeddedBroker
from schemas.binary import Reader
from tests.integration.harness import LivePipeline, meterline_run, write_dataset

ACCOUNTS = 1000
PARTITIONS = 12
SEED = 2026
FULL_RUNS = 3


# `meterline run` with mediation and rating as separate workers, as before they were chained.
APART = """
import sys
from pathlib import Path
from meterline.app.pipeline import run_pipeline, write_summary_json
from meterline.app.publish import InputFile
from meterline.app.workers import STAGES
from meterline.kernel.config import Settings
catalog, events, out, partitions = sys.argv[1:]
inputs = [InputFile(Path(events), "json")]
result = run_pipeline(Settings(partitions=int(partitions)), catalog, inputs, out, True, stages=STAGES)
write_summary_json(result, str(Path(out) / "summary.json"))
"""


def end_to_end(
    folder: Path, catalog: Path, events: Path, total: int, apart: bool = False
) -> tuple[float, dict[str, float], dict[str, float]]:
    """`meterline run --close-all`, timed as a whole (broker start and group joins included);
    with `apart`, the same pipeline with mediation and rating in separate workers. Returns
    events/s, the workers' peak RSS (MB) and CPU seconds by process."""
    out = folder / f"e2e-{time.monotonic_ns()}"
    summary = out / "summary.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    if apart:
        command = [sys.executable, "-c", APART, str(catalog), str(events), str(out), str(PARTITIONS)]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=7200)
    else:
        completed = meterline_run(
            catalog, f"json:{events}", out, "--close-all", "--summary-json", str(summary),
            partitions=PARTITIONS, timeout=7200,
        )  # fmt: skip
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if completed.returncode != 0:
        raise BenchmarkFailed(f"meterline run failed: {completed.stdout[-2000:]} {completed.stderr[-2000:]}")
    counts = json.loads(summary.read_text())
    planned = planned_counts(total)
    if counts["events_in"] != total or counts["duplicates"] != planned["duplicates"]:
        raise BenchmarkFailed(f"summary {counts} does not match the planned counts {planned}")
    if counts["events_in"] != counts["rated"] + counts["duplicates"] + counts["rejected"]:
        raise BenchmarkFailed(f"summary does not reconcile: {counts}")
    db = connect_store(out, read_only=True)
    found = dict(db.execute("SELECT invoice_id, total FROM invoice_drafts WHERE status = 'final'").fetchall())
    db.close()
    expected = reference_totals(catalog, read_records(InputFile(events, "json")), datetime.now(UTC))
    if found != expected:
        wrong = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
        raise BenchmarkFailed(f"{len(wrong)} invoices differ from the reference, e.g. {wrong[:3]}")
    peaks, cpu = worker_figures(out)
    # The command's own process tree less its workers: `run` itself (publishing, the close,
    # the invoice site) and the embedded broker.
    cpu["run + broker"] = spent - sum(cpu.values())
    return total / elapsed, peaks, cpu


def worker_figures(out: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Peak RSS (MB) and CPU seconds each worker logged when it stopped."""
    peaks: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for log in (out / "logs").glob("*.log"):
        for line in log.read_text().splitlines():
            if '"worker_stopped"' in line:
                entry = json.loads(line)
                peaks[entry["stage"]] = max(peaks.get(entry["stage"], 0.0), entry["peak_rss_mb"])
                cpu[entry["stage"]] = cpu.get(entry["stage"], 0.0) + entry["cpu_seconds"]
    return peaks, cpu


def _account_key(raw: bytes) -> bytes | None:
    """The key `meterline run` gives a raw record: its account id, read the way mediation reads it."""
    account = account_of(raw, "json")
    return account.encode() if account is not None else None


def _event_id(raw: bytes) -> str | None:
    match = re.search(rb'"event_id": ?"([^"]+)"', raw)
    return match.group(1).decode() if match else None


def latency(
    folder: Path, catalog: Path, events: Path, rate: float, seconds: float
) -> tuple[float, float, int]:
    """Produce at a steady rate; time from each produce call until its rated record is readable."""
    records = list(read_records(InputFile(events, "json")))[: int(rate * seconds)]
    # Worked out before the clock starts, so the paced loop only produces.
    keys = [_account_key(raw) for raw in records]
    event_ids = [_event_id(raw) for raw in records]
    headers = [(FORMAT_HEADER, b"json")]  # as produce_inputs marks a JSON input file
    produced_at: dict[str, float] = {}
    seen: dict[str, float] = {}
    with EmbeddedBroker() as broker:
        out = folder / f"latency-{time.monotonic_ns()}"
        workers = keyed_workers(broker.bootstrap_servers, out, PARTITIONS, "latency")
        try:
            publish_catalog(workers.settings, catalog)
            workers.start("chained")  # as `meterline run` runs mediation and rating
            time.sleep(8)  # group joins done before the clock starts
            workers.check()
            stop = threading.Event()

            def tail() -> None:
                consumer = Consumer(
                    {
                        "bootstrap.servers": broker.bootstrap_servers,
                        "group.id": "latency",
                        "isolation.level": "read_committed",
                        "auto.offset.reset": "earliest",
                        "fetch.wait.max.ms": 10,
                    }
                )
                # assign, not subscribe: no group join to wait for
                consumer.assign([TopicPartition(RATED, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
                while not stop.is_set():
                    for message in consumer.consume(10000, 0.05):
                        if message.error() is None:
                            now = time.time()
                            # event_id is the record's first field: read it alone, as the
                            # measuring side must not take the CPU the pipeline needs.
                            event_id = Reader(message.value(), 5).string()
                            seen.setdefault(event_id, now)
                consumer.close()

            reader = threading.Thread(target=tail)
            reader.start()
            # linger.ms 50 (the wait is inside the measured latency): keyed records spread over
            # 12 partitions, and the embedded broker slows down as tiny record batches pile up
            # in a partition. Measured on 2 cores at 4,500 records/s: raw produce -> consume
            # p50 3.3 s with linger.ms 1; with 10 ms 36 ms at first, 252 ms after 35 s; the
            # pipeline's produce -> rated p99 3.4 s with 10 ms, 0.73 s with 50 ms.
            producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 50})
            started = time.time()
            for i, (raw, key, event_id) in enumerate(zip(records, keys, event_ids, strict=True)):
                due = started + i / rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                if event_id is not None:
                    produced_at.setdefault(event_id, time.time())
                producer.produce(RAW, value=raw, key=key, headers=headers)
                producer.poll(0)
            producer.flush(30)
            time.sleep(10)
            stop.set()
            reader.join(30)
            workers.check()  # a worker that died mid-run makes the figure meaningless
        finally:
            workers.stop()
    delays = sorted(seen[e] - produced_at[e] for e in seen if e in produced_at)
    if len(delays) < 0.8 * len(records):
        raise BenchmarkFailed(
            f"only {len(delays)} of {len(records)} events were rated during the latency run"
        )
    return delays[len(delays) // 2], delays[int(len(delays) * 0.99)], len(delays)


def restore_after_kill(folder: Path, catalog: Path, events: Path, total: int) -> dict[str, float]:
    """SIGKILL the chained worker (mediation and rating, as `meterline run` runs them) once the
    stream is rated, restart it, read its restore time."""
    stages = ("chained",)
    with EmbeddedBroker() as broker:
        out = folder / f"restore-{time.monotonic_ns()}"
        pipeline = LivePipeline(broker, out, partitions=PARTITIONS, keyed_by_account=True)
        try:
            pipeline.publish(catalog, events)
            pipeline.start(*stages)
            pipeline.wait_until(lambda t: t.events_in == total and t.raw_outcomes >= total, 7200)
            for stage in stages:
                pipeline.kill(stage)
            logs = {stage: (out / "logs" / f"{stage}.log").read_text().count("\n") for stage in stages}
            pipeline.start(*stages)
            pipeline.wait_until(
                lambda t: all(
                    '"state_restored"'
                    in "".join((out / "logs" / f"{s}.log").read_text().splitlines()[logs[s] :])
                    for s in logs
                ),
                600,
            )
        finally:
            pipeline.stop()
    seconds: dict[str, float] = {}
    for stage, skip in logs.items():
        for line in (out / "logs" / f"{stage}.log").read_text().splitlines()[skip:]:
            if '"state_restored"' in line:
                seconds[stage] = seconds.get(stage, 0.0) + json.loads(line)["seconds"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="50k events, one run of each figure")
    mode.add_argument("--full", action="store_true", help="1M events, medians of 3 runs")
    parser.add_argument("--events", type=int, help="override the number of events")
    args = parser.parse_args()
    total = args.events or (1_000_000 if args.full else 50_000)
    runs = FULL_RUNS if args.full else 1
    with tempfile.TemporaryDirectory(prefix="meterline-bench-") as tmp:
        folder = Path(tmp)
        catalog, events = write_dataset(folder, ACCOUNTS, total, SEED)
        records = list(read_records(InputFile(events, "json")))
        produce, consume, loop = [], [], []
        with EmbeddedBroker() as broker:
            for _ in range(runs):
                p, c = raw_rates(broker.bootstrap_servers, records, PARTITIONS)
                produce.append(p)
                consume.append(c)
                loop.append(plain_loop_rate(broker.bootstrap_servers, records, PARTITIONS))
        del records
        pipe = [1 / (1 / p + 1 / c) for p, c in zip(produce, consume, strict=True)]
        e2e: list[float] = []
        apart: list[float] = []
        rss: dict[str, float] = {}
        cpu: dict[str, list[float]] = {}
        for _ in range(runs):
            for separate in (False, True):
                rate, peaks, seconds = end_to_end(folder, catalog, events, total, apart=separate)
                (apart if separate else e2e).append(rate)
                rss.update({k: max(v, rss.get(k, 0.0)) for k, v in peaks.items()})
                for process, spent in seconds.items():
                    name = f"{process} ({'stages apart' if separate else 'meterline run'})"
                    cpu.setdefault(name, []).append(spent * 1_000_000 / total)
        e2e_median = statistics.median(e2e)
        # Restore after SIGKILL needs the whole stream rated first: full mode only.
        restores = (
            [restore_after_kill(folder, catalog, events, total) for _ in range(runs)] if args.full else []
        )
        # Half the measured end-to-end rate: the latency of a pipeline that keeps up with room to spare.
        load = e2e_median / 2
        latencies = [
            latency(folder, catalog, events, rate=load, seconds=20 if args.full else 10) for _ in range(runs)
        ]
    p50 = [p * 1000 for p, _, _ in latencies]
    p99 = [p * 1000 for _, p, _ in latencies]
    measured = min(n for _, _, n in latencies)
    pipe_median = statistics.median(pipe)
    rows: list[tuple[str, Any]] = [
        ("broker raw produce, records/s", spread(produce)),
        ("broker raw consume, records/s", spread(consume)),
        ("raw pipe (produce, then consume; no processing), records/s", spread(pipe)),
        ("plain batched consume -> JSON parse -> produce loop (at-least-once), records/s", spread(loop)),
        (
            "end-to-end `meterline run --close-all` (chained), exactly-once, events/s (whole command)",
            spread(e2e),
        ),
        ("end-to-end / raw pipe (target >= 0.3)", f"{e2e_median / pipe_median:.3f}"),
        ("end-to-end / plain loop", f"{e2e_median / statistics.median(loop):.3f}"),
        ("the same pipeline with mediation and rating apart, events/s", spread(apart)),
        ("stages apart / raw pipe", f"{statistics.median(apart) / pipe_median:.3f}"),
        *[(f"CPU s per 1M events, {name}", spread(values, ".1f")) for name, values in sorted(cpu.items())],
        (
            f"latency produce -> rated record committed at {load:,.0f} ev/s (50%), "
            "raw topic keyed by account, chained worker, p50 / p99 (target p99 < 1 s)",
            f"{spread(p50)} ms / {spread(p99)} ms (>= {measured:,} events per run)",
        ),
        *[(f"peak RSS, {stage}", f"{mb:,.0f} MB") for stage, mb in sorted(rss.items())],
        *[
            (
                f"state restore after SIGKILL at {total:,} events, {stage}, s",
                spread([seconds[stage] for seconds in restores], ".1f"),
            )
            for stage in sorted(restores[0] if restores else {})
        ],
    ]
    title = f"Suite ({'full' if args.full else 'quick'}): {total:,} events, {ACCOUNTS} accounts"
    record(
        f"{title}, {PARTITIONS} partitions",
        rows,
        "Correctness checked before recording: summary counts equal the generator's plan, events in = "
        "rated + duplicates + rejected, and every final invoice total equals the Kafka-free reference. "
        f"Each figure: median (min, max) of {runs} run(s); peak RSS is the maximum over the runs.",
    )


# Full mode only, after the suite; each appends its own section to RESULTS.md and gets `--runs 3`.
STAGE_BENCHES = [
    "bench.bench_mediation --events 1000000",
    "bench.bench_rating --events 1000000 --accounts 1000 --partitions 12 --record",
    "bench.bench_consolidation --events 1000000 --accounts 1000",
    "bench.bench_store --close-accounts 100000 --rows 1000000",
    "bench.bench_dedup --keys 5000000",
]


def stage_benches() -> None:
    for line in STAGE_BENCHES:
        module, *args = line.split()
        completed = subprocess.run(
            [sys.executable, "-m", module, *args, "--runs", str(FULL_RUNS)], timeout=7200
        )
        if completed.returncode != 0:
            raise BenchmarkFailed(f"{module} failed with exit code {completed.returncode}")


if __name__ == "__main__":
    try:
        main()
        if "--full" in sys.argv:
            stage_benches()
    except BenchmarkFailed as failure:
        print(f"benchmark failed: {failure}", file=sys.stderr)
        sys.exit(1)

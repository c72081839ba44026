"""`make bench` / `make bench-quick`: the benchmark suite of meterline.

    .venv/bin/python -m bench.run --quick     # ~2 minutes: 50k events, one run each
    .venv/bin/python -m bench.run --full      # 1M events, medians of 3 runs

Input is generated deterministically (seeded): a mixed SaaS and telecom catalog
of 1,000 accounts, native JSON events with 5% duplicates and 1% bad records, 12
partitions. In the same run it measures the broker's raw produce and consume
rates and a plain batched consume -> parse -> produce loop, so meterline's
figures can be read as ratios on a noisy machine. Every figure is checked first:
the reconciliation of DESIGN.md §7, the generator's planned counts, and invoice
totals equal to a Kafka-free reference computed from the same input
(bench/reference.py). A wrong result exits 1 and records nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench.baselines import plain_loop_rate, raw_rates
from bench.common import BenchmarkFailed, record, spread
from bench.reference import reference_totals
from meterline.broker import EmbeddedBroker
from meterline.generate import planned_counts
from meterline.publish import InputFile, read_records
from meterline.topics import RATED, RAW
from schemas.codec import decode_rated_record
from tests.integration.harness import LivePipeline, meterline_run, write_dataset

ACCOUNTS = 1000
PARTITIONS = 12
SEED = 2026


def end_to_end(folder: Path, catalog: Path, events: Path, total: int) -> tuple[float, dict[str, float]]:
    """`meterline run --close-all`, timed as a whole (broker start and group joins included)."""
    out = folder / f"e2e-{time.monotonic_ns()}"
    summary = out / "summary.json"
    started = time.monotonic()
    completed = meterline_run(
        catalog, f"json:{events}", out, "--close-all", "--summary-json", str(summary),
        partitions=PARTITIONS, timeout=7200,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    if completed.returncode != 0:
        raise BenchmarkFailed(f"meterline run failed: {completed.stdout[-2000:]} {completed.stderr[-2000:]}")
    counts = json.loads(summary.read_text())
    planned = planned_counts(total)
    if counts["events_in"] != total or counts["duplicates"] != planned["duplicates"]:
        raise BenchmarkFailed(f"summary {counts} does not match the planned counts {planned}")
    if counts["events_in"] != counts["rated"] + counts["duplicates"] + counts["rejected"]:
        raise BenchmarkFailed(f"summary does not reconcile: {counts}")
    db = duckdb.connect(str(out / "billing.duckdb"), read_only=True)
    found = dict(db.execute("SELECT invoice_id, total FROM invoice_drafts WHERE status = 'final'").fetchall())
    db.close()
    expected = reference_totals(catalog, read_records(InputFile(events, "json")), datetime.now(UTC))
    if found != expected:
        wrong = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
        raise BenchmarkFailed(f"{len(wrong)} invoices differ from the reference, e.g. {wrong[:3]}")
    return total / elapsed, peak_rss(out)


def peak_rss(out: Path) -> dict[str, float]:
    """Peak RSS (MB) each worker logged when it stopped."""
    peaks: dict[str, float] = {}
    for log in (out / "logs").glob("*.log"):
        for line in log.read_text().splitlines():
            if '"worker_stopped"' in line:
                entry = json.loads(line)
                peaks[entry["stage"]] = max(peaks.get(entry["stage"], 0.0), entry["peak_rss_mb"])
    return peaks


def latency(
    folder: Path, catalog: Path, events: Path, rate: float, seconds: float
) -> tuple[float, float, int]:
    """Produce at a steady rate; time from each produce call until its rated record is readable."""
    records = list(read_records(InputFile(events, "json")))[: int(rate * seconds)]
    produced_at: dict[str, float] = {}
    seen: dict[str, float] = {}
    with EmbeddedBroker() as broker:
        pipeline = LivePipeline(broker, folder / f"latency-{time.monotonic_ns()}", partitions=PARTITIONS)
        pipeline.publish(catalog, events.parent / "empty.jsonl")
        pipeline.start("mediation", "rating")
        pipeline.wait_until(lambda t: True)
        time.sleep(8)  # group joins done before the clock starts
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
                        event_id = decode_rated_record(message.value())["event_id"]
                        seen.setdefault(event_id, now)
            consumer.close()

        reader = threading.Thread(target=tail)
        reader.start()
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 1})
        started = time.time()
        for i, raw in enumerate(records):
            due = started + i / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            match = re.search(rb'"event_id": ?"([^"]+)"', raw)
            if match:
                produced_at.setdefault(match.group(1).decode(), time.time())
            producer.produce(RAW, value=raw)
            producer.poll(0)
        producer.flush(30)
        time.sleep(10)
        stop.set()
        reader.join(30)
        pipeline.stop()
    delays = sorted(seen[e] - produced_at[e] for e in seen if e in produced_at)
    if len(delays) < 0.8 * len(records):
        raise BenchmarkFailed(
            f"only {len(delays)} of {len(records)} events were rated during the latency run"
        )
    return delays[len(delays) // 2], delays[int(len(delays) * 0.99)], len(delays)


def restore_after_kill(folder: Path, catalog: Path, events: Path, total: int) -> dict[str, float]:
    """SIGKILL mediation and rating once the stream is rated, restart them, read their restore times."""
    with EmbeddedBroker() as broker:
        out = folder / f"restore-{time.monotonic_ns()}"
        pipeline = LivePipeline(broker, out, partitions=PARTITIONS)
        try:
            pipeline.publish(catalog, events)
            pipeline.start("mediation", "rating")
            pipeline.wait_until(lambda t: t.events_in == total and t.rating_consumed >= t.mediated > 0, 7200)
            for stage in ("mediation", "rating"):
                pipeline.kill(stage)
            logs = {
                stage: (out / "logs" / f"{stage}.log").read_text().count("\n")
                for stage in ("mediation", "rating")
            }
            pipeline.start("mediation", "rating")
            time.sleep(5)
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
    runs = 3 if args.full else 1
    with tempfile.TemporaryDirectory(prefix="meterline-bench-") as tmp:
        folder = Path(tmp)
        catalog, events = write_dataset(folder, ACCOUNTS, total, SEED)
        (folder / "empty.jsonl").write_text("")
        records = list(read_records(InputFile(events, "json")))
        produce, consume, loop = [], [], []
        with EmbeddedBroker() as broker:
            for _ in range(runs):
                p, c = raw_rates(broker.bootstrap_servers, records, PARTITIONS)
                produce.append(p)
                consume.append(c)
                loop.append(plain_loop_rate(broker.bootstrap_servers, records, PARTITIONS))
        del records
        e2e, rss = [], {}
        for _ in range(runs):
            rate, peaks = end_to_end(folder, catalog, events, total)
            e2e.append(rate)
            rss = {k: max(v, rss.get(k, 0.0)) for k, v in peaks.items()}
        e2e_median = sorted(e2e)[len(e2e) // 2]
        restores = restore_after_kill(folder, catalog, events, total) if args.full else {}
        p50, p99, measured = latency(
            folder, catalog, events, rate=e2e_median / 2, seconds=20 if args.full else 10
        )
    loop_median = sorted(loop)[len(loop) // 2]
    rows: list[tuple[str, Any]] = [
        ("broker raw produce, records/s", spread(produce)),
        ("broker raw consume, records/s", spread(consume)),
        ("plain batched consume -> JSON parse -> produce loop (at-least-once), records/s", spread(loop)),
        ("end-to-end `meterline run --close-all`, exactly-once, events/s (whole command)", spread(e2e)),
        ("end-to-end / plain loop", f"{e2e_median / loop_median:.2f}"),
        (
            f"latency produce -> rated record committed at {e2e_median / 2:,.0f} ev/s (50%), p50 / p99",
            f"{p50 * 1000:,.0f} ms / {p99 * 1000:,.0f} ms ({measured:,} events)",
        ),
        *[(f"peak RSS, {stage}", f"{mb:,.0f} MB") for stage, mb in sorted(rss.items())],
        *[
            (f"state restore after SIGKILL at {total:,} events, {stage}", f"{sec:.1f} s")
            for stage, sec in sorted(restores.items())
        ],
    ]
    title = f"Suite ({'full' if args.full else 'quick'}): {total:,} events, {ACCOUNTS} accounts"
    record(
        f"{title}, {PARTITIONS} partitions",
        rows,
        "Correctness checked before recording: summary counts equal the generator's plan, events in = "
        "rated + duplicates + rejected, and every final invoice total equals the Kafka-free reference.",
    )


STAGE_BENCHES = [  # full mode only: each appends its own section to RESULTS.md
    ["bench.bench_mediation", "--events", "1000000", "--runs", "3"],
    [
        "bench.bench_rating",
        "--events",
        "1000000",
        "--accounts",
        "1000",
        "--partitions",
        "12",
        "--runs",
        "3",
        "--record",
    ],
    ["bench.bench_consolidation", "--events", "1000000", "--accounts", "1000", "--close-accounts", "100000"],
    ["bench.bench_dedup", "--keys", "5000000"],
]


def stage_benches() -> None:
    for module, *args in STAGE_BENCHES:
        completed = subprocess.run([sys.executable, "-m", module, *args], timeout=7200)
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

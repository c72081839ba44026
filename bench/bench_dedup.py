"""Dedup state: memory per remembered key, and restore time from the changelog.

Builds the seen-set of one partition the way the mediation stage does (batches
of new keys), measures its memory at N keys, then writes the same keys to a real
changelog topic as mediation's blocks and times the runtime's restore of them.
Each figure is the median of --runs runs (each restore on a fresh broker), with
min and max; every run checks its key count, and a wrong count exits 1 and
records nothing. A median above its target exits 1 after recording.

    .venv/bin/python -m bench.bench_dedup [--keys 5000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc

from bench.common import BenchmarkFailed, add_runs_option, record, spread
from mediation.dedup import SeenSet, dedup_key

BATCH = 10_000
PERIOD = "2026-10"


def keys_of(batch: int) -> list[bytes]:
    return [dedup_key(f"acct-{i % 1000}", f"evt-{batch}-{i}") for i in range(BATCH)]


def memory_per_key(total: int) -> tuple[float, SeenSet]:
    gc.collect()
    tracemalloc.start()
    seen = SeenSet()
    for batch in range(total // BATCH):
        verdicts = seen.admit(keys_of(batch), [PERIOD] * BATCH)
        if not all(verdicts):
            raise BenchmarkFailed("a fresh key was reported as a duplicate")
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if len(seen) != total:
        raise BenchmarkFailed(f"expected {total} keys, found {len(seen)}")
    return current / total, seen


def restore_seconds(total: int) -> float:
    """Write `total` keys as changelog blocks to a real broker and time the stage's restore."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from mediation.stage import BLOCK, MediationProcessor
    from meterline.app.publish import create_topics
    from meterline.kernel.config import Settings
    from meterline.kernel.topics import CONTRACTS, PERIODS, REPARTITION, changelog_topic
    from meterline.runtime.broker import EmbeddedBroker
    from meterline.runtime.stage_runner import StageRunner
    from meterline.runtime.tables import CompactedTable, ContractsTable, PeriodsTable

    with EmbeddedBroker() as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, partitions=1)
        create_topics(settings)
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 20})
        topic = changelog_topic(REPARTITION, "mediation")
        for batch in range(total // BATCH):
            key = BLOCK + PERIOD.encode() + b"\x1f" + str(batch).encode()
            producer.produce(
                topic,
                key=key,
                value=b"".join(keys_of(batch)),
                partition=0,
                headers=[("ml.through", str(batch).encode())],
            )
            producer.poll(0)
        producer.flush()
        tables = [
            CompactedTable(CONTRACTS, broker.bootstrap_servers, {}, "bench"),
            CompactedTable(PERIODS, broker.bootstrap_servers, {}, "bench-p"),
        ]
        processor = MediationProcessor(settings, ContractsTable(tables[0]), PeriodsTable(tables[1]), 1)
        runner = StageRunner(processor, settings, [REPARTITION])
        consumer = runner._consumer = Consumer(
            {"bootstrap.servers": broker.bootstrap_servers, "group.id": "meterline-mediation"}
        )
        try:
            # Pretend everything was committed: restore keeps changelog records below the committed offset.
            consumer.commit(offsets=[TopicPartition(REPARTITION, 0, 10**9)], asynchronous=False)
            started = time.perf_counter()
            runner._restore([(REPARTITION, 0)])
            restored = len(processor.seen[(REPARTITION, 0)])
            elapsed = time.perf_counter() - started
        finally:
            # Closed while the broker is up, so the next run's broker sees no clients of this one.
            consumer.close()
            for table in tables:
                table.close()
        if restored != total:
            raise BenchmarkFailed(f"restored {restored} keys, expected {total}")
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=5_000_000)
    add_runs_option(parser)
    args = parser.parse_args()
    per_key: list[float] = []
    restore: list[float] = []
    try:
        for _ in range(args.runs):
            size, seen = memory_per_key(args.keys)
            del seen  # the next run measures from an empty heap
            per_key.append(size)
            restore.append(restore_seconds(args.keys))
    except BenchmarkFailed as failure:
        print(f"bench_dedup: {failure}", file=sys.stderr)
        return 1
    record(
        f"Dedup state at {args.keys:,} keys",
        [
            ("memory per remembered key (tracemalloc), bytes", f"{spread(per_key, '.1f')} (target <= 64)"),
            ("restore from changelog, s", f"{spread(restore, '.1f')} (target < 30 s)"),
        ],
        "Keys are 16-byte BLAKE2b digests in a sorted numpy array per period"
        " plus a bounded set of recent keys;"
        " the changelog holds one block of concatenated digests per batch.",
    )
    return 1 if statistics.median(per_key) > 64 or statistics.median(restore) > 30 else 0


if __name__ == "__main__":
    sys.exit(main())

"""librdkafka client settings: what meterline ships versus the alternative it weighed.

Shipped: the configs of meterline.runtime.kafka_config, so the benchmark follows the code.
lz4: the same configs with lz4 compression on both producers and transactional linger.ms
20 as user properties (which win); it halves the broker's CPU, but the clients spend as
much more, so meterline ships without compression.
Each repetition runs both variants, each on a fresh embedded broker, in alternating order:
a raw pipe (the plain producer publishes --records usage-like JSON records to 12
partitions, then a consumer reads them back) and a transactional loop on that topic
(consume up to 10,000 -> produce -> send_offsets_to_transaction -> commit). Reported:
records/s, and CPU seconds per 100k records of the broker (Tansu, /proc/<pid>/stat) and of
this process (os.times, librdkafka's threads included). Then the end-to-end latency at 200
records/s (feeder -> loop -> read_committed reader) for fetch.wait.max.ms 20 vs 50.
Every run checks its records (each read once, the loop's sink holds every input record
exactly once, the latency reader sees every record fed); a failure exits 1, records nothing.

    .venv/bin/python -m bench.bench_client_settings [--records 200000] [--runs 3]
        [--latency-seconds 6] [--no-record]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.common import BenchmarkFailed, add_runs_option, record, spread
from meterline.kernel.topics import LOG
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.kafka_config import (
    consumer_config,
    plain_producer_config,
    transactional_producer_config,
)
from meterline.runtime.topic_admin import ensure_topics
from tests.integration.harness import read_topic

PARTITIONS = 12
BATCH = 10_000
PHASE_LIMIT_S = 180.0
TICK = os.sysconf("SC_CLK_TCK")
LATENCY_RATE = 200  # records/s fed in the latency runs

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


@dataclass(frozen=True)
class Variant:
    """A set of client settings: the shipped configs with these user properties over them."""

    name: str
    consumer: Mapping[str, str]
    transactional: Mapping[str, str]
    plain: Mapping[str, str]

    def consumer_config(self, bootstrap: str, group: str) -> dict[str, Any]:
        return consumer_config(bootstrap, self.consumer, group)

    def transactional_config(self, bootstrap: str, transactional_id: str) -> dict[str, Any]:
        return transactional_producer_config(bootstrap, self.transactional, transactional_id)

    def plain_config(self, bootstrap: str) -> dict[str, Any]:
        return plain_producer_config(bootstrap, self.plain)


SHIPPED = Variant("shipped", {}, {}, {})
LZ4 = Variant("lz4", {}, {"compression.type": "lz4", "linger.ms": "20"}, {"compression.type": "lz4"})


def make_records(count: int) -> list[Record]:
    """Usage-like JSON records with a unique event id each (so the sink can be checked by value)."""
    rng = random.Random(7)
    out: list[Record] = []
    for i in range(count):
        account = f"acct-{rng.randrange(2000):05d}"
        doc = {
            "event_id": f"ev-{i:010d}-{rng.getrandbits(48):012x}",
            "account_id": account,
            "subscription_id": f"sub-{rng.randrange(10000):06d}",
            "metric": rng.choice(("api.calls", "storage.gb_hours", "egress.bytes", "compute.vcpu_seconds")),
            "quantity": round(rng.random() * 1000, 3),
            "unit": "unit",
            "occurred_at": 1_764_979_200_000 + i * 7,
            "region": rng.choice(("eu-west-1", "us-east-1", "ap-south-1")),
            "attrs": {"sku": f"sku-{rng.randrange(50):03d}", "tier": "standard"},
        }
        trace = b"%016x" % rng.getrandbits(64)
        headers = [("source", b"gateway-3"), ("schema", b"usage.v1"), ("trace", trace)]
        out.append((account.encode(), orjson.dumps(doc), headers))
    return out


def broker_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def client_cpu() -> float:
    times = os.times()
    return times.user + times.system


def measured(pid: int, action: Callable[[], float]) -> tuple[float, float, float]:
    """Seconds the action reports, and the client's and the broker's CPU seconds meanwhile."""
    client, broker = client_cpu(), broker_cpu(pid)
    return action(), client_cpu() - client, broker_cpu(pid) - broker


def new_topics(bootstrap: str, *names: str) -> None:
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), {n: (PARTITIONS, LOG) for n in names})


def produce_all(variant: Variant, bootstrap: str, topic: str, records: list[Record]) -> float:
    producer = Producer(variant.plain_config(bootstrap))
    started = time.perf_counter()
    for key, value, headers in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers)
                break
            except BufferError:
                producer.poll(0.01)
    if producer.flush(PHASE_LIMIT_S):
        raise BenchmarkFailed(f"{variant.name}: the producer could not deliver every record")
    return time.perf_counter() - started


def consume_all(variant: Variant, bootstrap: str, topic: str, total: int) -> float:
    consumer = Consumer(variant.consumer_config(bootstrap, "bench-pipe"))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    try:
        # Connected and fetching first, then back to offset 0 (as bench/baselines.py).
        deadline = time.monotonic() + 30
        while not consumer.consume(1, 1.0):
            if time.monotonic() > deadline:
                raise BenchmarkFailed(f"{variant.name}: the pipe's consumer got nothing")
        for p in range(PARTITIONS):
            consumer.seek(TopicPartition(topic, p, 0))
        started, seen = time.perf_counter(), 0
        deadline = time.monotonic() + PHASE_LIMIT_S
        while seen < total:
            seen += sum(1 for m in consumer.consume(BATCH, 0.1) if m.error() is None)
            if time.monotonic() > deadline:
                raise BenchmarkFailed(f"{variant.name}: the pipe's consumer read {seen} of {total}")
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    if seen != total:
        raise BenchmarkFailed(f"{variant.name}: the pipe's consumer read {seen} records, expected {total}")
    return elapsed


def transactional_loop(variant: Variant, bootstrap: str, source: str, sink: str, total: int) -> float:
    """Consume -> produce -> send offsets -> commit until `total` records went through; seconds."""
    consumer = Consumer(variant.consumer_config(bootstrap, "bench-loop"))
    assigned: list[float] = []
    consumer.subscribe(
        [source], on_assign=lambda _c, parts: assigned.append(time.perf_counter()) if parts else None
    )
    producer = Producer(variant.transactional_config(bootstrap, "bench-loop"))
    producer.init_transactions(30)
    group = consumer.consumer_group_metadata()
    seen, started = 0, 0.0
    deadline = time.monotonic() + PHASE_LIMIT_S + 30
    try:
        while seen < total:
            if time.monotonic() > deadline:
                raise BenchmarkFailed(f"{variant.name}: the loop read {seen} of {total}")
            batch = consumer.consume(BATCH, 0.1)
            if not batch:
                continue
            if not started:  # the clock starts at the assignment: fetching starts then
                started = assigned[0] if assigned else time.perf_counter()
            producer.begin_transaction()
            ends: dict[int, int] = {}
            for m in batch:
                if m.error() is not None:
                    continue
                seen += 1
                ends[m.partition()] = m.offset() + 1
                while True:
                    try:
                        producer.produce(sink, value=m.value(), key=m.key(), headers=m.headers())
                        break
                    except BufferError:
                        producer.poll(0.01)
            offsets = [TopicPartition(source, p, o) for p, o in ends.items()]
            producer.send_offsets_to_transaction(offsets, group, 30)
            producer.commit_transaction(60)
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    if seen != total:
        raise BenchmarkFailed(f"{variant.name}: the loop read {seen} records, expected {total}")
    return elapsed


def check_sink(variant: Variant, bootstrap: str, sink: str, expected: Counter[bytes]) -> None:
    """The loop's output, read_committed, holds every input record exactly once."""
    found = Counter(m.value() for m in read_topic(bootstrap, sink))
    if found != expected:
        missing, extra = sum((expected - found).values()), sum((found - expected).values())
        raise BenchmarkFailed(f"{variant.name}: the loop's output lacks {missing} records, has {extra} more")


def throughput_run(variant: Variant, records: list[Record], expected: Counter[bytes]) -> dict[str, float]:
    total = len(records)
    with EmbeddedBroker() as broker:
        assert broker._process is not None
        pid, bootstrap = broker._process.pid, broker.bootstrap_servers
        new_topics(bootstrap, "bench.in", "bench.out")
        produce = measured(pid, lambda: produce_all(variant, bootstrap, "bench.in", records))
        consume = measured(pid, lambda: consume_all(variant, bootstrap, "bench.in", total))
        loop = measured(pid, lambda: transactional_loop(variant, bootstrap, "bench.in", "bench.out", total))
        check_sink(variant, bootstrap, "bench.out", expected)
    per = 100_000 / total
    return {
        "pipe": total / (produce[0] + consume[0]),
        "loop": total / loop[0],
        "pipe broker": (produce[2] + consume[2]) * per,
        "loop broker": loop[2] * per,
        "pipe client": (produce[1] + consume[1]) * per,
        "loop client": loop[1] * per,
    }


def latency_run(bootstrap: str, variant: Variant, seconds: float) -> list[float]:
    """End-to-end ms at LATENCY_RATE records/s, feeder produce() -> loop -> read_committed reader."""
    tag = time.monotonic_ns()
    source, sink = f"bench.lat.in.{tag}", f"bench.lat.out.{tag}"
    new_topics(bootstrap, source, sink)
    stop, ready = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def loop() -> None:
        try:
            consumer = Consumer(variant.consumer_config(bootstrap, f"bench-lat-{tag}"))
            consumer.subscribe([source], on_assign=lambda *_: ready.set())
            producer = Producer(variant.transactional_config(bootstrap, f"bench-lat-{tag}"))
            producer.init_transactions(30)
            group = consumer.consumer_group_metadata()
            while not stop.is_set():
                batch = [m for m in consumer.consume(5000, 0.1) if m.error() is None]
                if not batch:
                    continue
                producer.begin_transaction()
                for m in batch:
                    producer.produce(sink, value=m.value(), key=m.key())
                ends = {m.partition(): m.offset() + 1 for m in batch}
                offsets = [TopicPartition(source, p, o) for p, o in ends.items()]
                producer.send_offsets_to_transaction(offsets, group, 30)
                producer.commit_transaction(30)
            consumer.close()
        except (KafkaException, RuntimeError) as exc:
            failures.append(exc)
            ready.set()

    reader = Consumer(variant.consumer_config(bootstrap, f"bench-lat-read-{tag}"))
    reader.assign([TopicPartition(sink, p, 0) for p in range(PARTITIONS)])
    worker = threading.Thread(target=loop)
    worker.start()
    latencies: list[float] = []

    def read(timeout: float) -> None:
        for m in reader.consume(1000, timeout):
            if m.error() is None:
                latencies.append((time.perf_counter() - float(m.value())) * 1000)

    try:
        if not ready.wait(30) or failures:
            raise BenchmarkFailed(f"{variant.name}: the latency loop did not start: {failures}")
        time.sleep(0.5)
        feeder = Producer(variant.plain_config(bootstrap))
        sent, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            while sent < int((time.perf_counter() - started) * LATENCY_RATE):
                value = f"{time.perf_counter():.6f}".encode().ljust(250)
                feeder.produce(source, value=value, key=f"acct-{sent % 2000:05d}".encode())
                sent += 1
            feeder.poll(0)
            read(0.002)
        if feeder.flush(10):
            raise BenchmarkFailed(f"{variant.name}: the latency feeder could not deliver")
        deadline = time.monotonic() + 15
        while len(latencies) < sent and time.monotonic() < deadline and not failures:
            read(0.05)
    finally:
        stop.set()
        worker.join()
        reader.close()
    if failures or len(latencies) != sent:
        raise BenchmarkFailed(f"{variant.name}: the reader saw {len(latencies)} of {sent} records {failures}")
    return latencies[len(latencies) // 10 :]  # the first tenth warms up


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def settings_of(variant: Variant) -> str:
    plain, txn = variant.plain_config("x"), variant.transactional_config("x", "x")
    return (
        f"compression.type {plain.get('compression.type', 'none')} (plain) / "
        f"{txn.get('compression.type', 'none')} (transactional), transactional linger.ms "
        f"{txn['linger.ms']}, fetch.wait.max.ms {variant.consumer_config('x', 'x')['fetch.wait.max.ms']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=200_000, help="records per pipe and loop run")
    parser.add_argument(
        "--latency-seconds", type=float, default=6.0, help="seconds of feeding per latency run (default 6)"
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    add_runs_option(parser)
    args = parser.parse_args()
    records = make_records(args.records)
    expected = Counter(value for _, value, _ in records)
    size = statistics.mean(len(k) + len(v) + sum(len(a) + len(b) for a, b in h) for k, v, h in records)
    variants = (SHIPPED, LZ4)
    figures: dict[str, dict[str, list[float]]] = {v.name: {} for v in variants}
    fetch_variants = (
        ("fetch.wait.max.ms 20", Variant("fetch 20", {"fetch.wait.max.ms": "20"}, {}, {})),
        ("fetch.wait.max.ms 50", Variant("fetch 50", {"fetch.wait.max.ms": "50"}, {}, {})),
    )
    latency: dict[str, list[float]] = {}
    try:
        for run in range(args.runs):
            for variant in variants if run % 2 == 0 else variants[::-1]:
                result = throughput_run(variant, records, expected)
                for name, value in result.items():
                    figures[variant.name].setdefault(name, []).append(value)
                print(
                    f"run {run + 1} {variant.name}: {', '.join(f'{k} {v:,.2f}' for k, v in result.items())}"
                )
        for run in range(args.runs):
            with EmbeddedBroker() as broker:
                for label, variant in fetch_variants if run % 2 == 0 else fetch_variants[::-1]:
                    values = latency_run(broker.bootstrap_servers, variant, args.latency_seconds)
                    latency.setdefault(f"p50 ms, {label}", []).append(statistics.median(values))
                    latency.setdefault(f"p99 ms, {label}", []).append(p99(values))
                    print(f"latency run {run + 1} {label}: p50 {statistics.median(values):.1f} ms")
    except (BenchmarkFailed, KafkaException) as failure:
        print(f"bench_client_settings: {failure}", file=sys.stderr)
        return 1
    rows: list[tuple[str, str]] = []
    for figure, label, fmt in (
        ("loop", "transactional loop, records/s", ",.0f"),
        ("pipe", "raw pipe (produce, then consume), records/s", ",.0f"),
        ("loop broker", "loop: broker CPU s per 100k records", ".2f"),
        ("pipe broker", "pipe: broker CPU s per 100k records", ".2f"),
        ("loop client", "loop: client CPU s per 100k records", ".2f"),
        ("pipe client", "pipe: client CPU s per 100k records", ".2f"),
    ):
        for variant in variants:
            rows.append((f"{label}, {variant.name}", spread(figures[variant.name][figure], fmt)))
    rows += [(f"end-to-end latency at {LATENCY_RATE}/s, {k}", spread(v, ".1f")) for k, v in latency.items()]
    if args.no_record:
        print("\n".join(f"{name}: {value}" for name, value in rows))
        return 0
    record(
        f"Client settings, shipped vs lz4, {args.records:,} records",
        rows,
        f"Shipped (meterline.runtime.kafka_config): {settings_of(SHIPPED)}. "
        f"lz4: {settings_of(LZ4)}. Records ~{size:.0f} bytes (key, JSON value, 3 headers),"
        f" {PARTITIONS} partitions; every run on a fresh embedded broker, the variants alternating"
        " (A B, B A, ...); the loop reads the pipe's topic and commits up to 10,000 records a transaction,"
        " its clock starts at the assignment. CPU per 100k records covers the phase (the loop's group join"
        " included). Latency: shipped settings but the consumers' fetch.wait.max.ms, feeder -> loop ->"
        " read_committed reader, from produce() to the reader; per run p50/p99 of"
        f" {args.latency_seconds:g} s of feeding less the first tenth, one broker per repetition.",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

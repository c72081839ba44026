"""Same-run baselines: what the broker and a plain Python loop do with no billing logic.

- raw produce: records/s a batched producer pushes into the embedded broker;
- raw consume: records/s a consumer reads back (no processing);
- raw pipe: both as one rate, N / (N / produce rate + N / consume rate);
- plain loop: a hand-written batched consume -> JSON parse -> produce loop,
  at-least-once, no state, no transactions: the ceiling a Python stage can hope for.

The stage benchmarks call `plain_loop_alone` and `raw_pipe_alone` between their own runs, so a
stage's rate can be read as a ratio to the loop or the pipe measured on the same machine at the
same time.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from meterline.app.publish import InputFile, read_records
from meterline.kernel.topics import LOG
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.topic_admin import ensure_topics


def _produce_all(bootstrap: str, topic: str, records: list[bytes], partitions: int) -> float:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_097_151,
        }
    )
    started = time.perf_counter()
    for i, value in enumerate(records):
        while True:
            try:
                producer.produce(topic, value=value, partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(300)
    return len(records) / (time.perf_counter() - started)


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "fetch.wait.max.ms": 50,
            "queued.min.messages": 200000,
        }
    )


def raw_rates(bootstrap: str, records: list[bytes], partitions: int) -> tuple[float, float]:
    """(produce records/s, consume records/s) on a fresh topic."""
    topic = f"bench.raw.{time.monotonic_ns()}"
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), {topic: (partitions, LOG)})
    produce = _produce_all(bootstrap, topic, records, partitions)
    consumer = _consumer(bootstrap, f"bench-consume-{topic}")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    # Connected and fetching before the clock starts, then back to the start: seek drops what
    # was prefetched. (Timing from the first batch measured the client's memory, not the broker:
    # by then the whole quick-mode topic sat in the prefetch queue.)
    while not consumer.consume(1, 1.0):
        pass
    for partition in range(partitions):
        consumer.seek(TopicPartition(topic, partition, 0))
    started = time.perf_counter()
    seen = 0
    while seen < len(records):
        batch = consumer.consume(10_000, 0.1)  # a short wait: the last batch is never full
        seen += sum(1 for m in batch if m.error() is None)
    consumer.close()
    return produce, seen / (time.perf_counter() - started)


def plain_loop_rate(bootstrap: str, records: list[bytes], partitions: int) -> float:
    """A batched consume -> orjson parse -> produce loop, at-least-once, timed from its first batch."""
    source, sink = f"bench.loop.in.{time.monotonic_ns()}", f"bench.loop.out.{time.monotonic_ns()}"
    ensure_topics(
        AdminClient({"bootstrap.servers": bootstrap}), {source: (partitions, LOG), sink: (partitions, LOG)}
    )
    _produce_all(bootstrap, source, records, partitions)
    consumer = _consumer(bootstrap, f"bench-loop-{source}")
    consumer.subscribe([source])
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000,
        }
    )
    seen, started = 0, None
    while seen < len(records):
        batch = consumer.consume(10_000, 0.5)
        if not batch:
            continue
        if started is None:
            started = time.perf_counter()
        for message in batch:
            if message.error() is not None:
                continue
            seen += 1
            try:
                doc = orjson.loads(message.value())
            except orjson.JSONDecodeError:
                continue
            key = str(doc.get("account_id", "")).encode() if isinstance(doc, dict) else None
            while True:
                try:
                    producer.produce(sink, value=orjson.dumps(doc), key=key)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
        consumer.commit(asynchronous=True)
    producer.flush(60)
    consumer.close()
    return len(records) / (time.perf_counter() - (started or time.perf_counter()))


def plain_loop_alone(events: Path, partitions: int) -> float:
    """`plain_loop_rate` over the raw records of a JSON-lines file, on a broker of its own.

    A fresh broker per call, as each stage run gets one, so both see an empty broker;
    the records are read here and freed on return, not held between a stage's runs.
    """
    records = list(read_records(InputFile(events, "json")))
    with EmbeddedBroker() as broker:
        return plain_loop_rate(broker.bootstrap_servers, records, partitions)


def raw_pipe_alone(events: Path, partitions: int) -> float:
    """The raw pipe's rate over the raw records of a JSON-lines file, on a broker of its own.

    The records produced to and consumed from a fresh topic with no processing (`raw_rates`),
    as one rate: N / (N / produce rate + N / consume rate), the time to push them through
    the broker and read them back. A fresh broker per call, as `plain_loop_alone`.
    """
    records = list(read_records(InputFile(events, "json")))
    with EmbeddedBroker() as broker:
        produce, consume = raw_rates(broker.bootstrap_servers, records, partitions)
    return 1 / (1 / produce + 1 / consume)

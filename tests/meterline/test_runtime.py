"""The exactly-once runtime against the real embedded broker.

A small real transform (a per-key running count with a changelog) is driven by
StageRunner. The tests plant what a crashed or aborted transaction leaves on
Tansu, which shows aborted records to read_committed readers, and check that
restore and the lineage guard ignore it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from meterline.broker import EmbeddedBroker
from meterline.config import Settings
from meterline.lineage import LINEAGE_HEADER, lineage_value
from meterline.messages import InputRecord, OutputRecord
from meterline.runtime import TP, BatchResult, StageRunner
from meterline.topics import LOG, STATS, changelog_topic, ensure_topics

pytestmark = pytest.mark.integration

IN, OUT = "test.counts.in", "test.counts.out"


class RunningCount:
    """Counts records per key; emits the running count for each record."""

    stage = "counter"

    def __init__(self) -> None:
        self.counts: dict[TP, Counter[bytes]] = {}

    def restore(self, tp: TP, entries: Iterator[tuple[bytes, bytes | None]]) -> None:
        state = self.counts.setdefault(tp, Counter())
        for key, value in entries:
            state[key] = int(value or b"0")

    def release(self, tp: TP) -> None:
        self.counts.pop(tp, None)

    def idle(self) -> None:
        return None

    def process(self, records: Sequence[InputRecord]) -> BatchResult:
        result = BatchResult()
        for record in records:
            tp = (record.topic, record.partition)
            state = self.counts.setdefault(tp, Counter())
            key = record.key or b""
            state[key] += 1
            result.outputs.append(OutputRecord(OUT, str(state[key]).encode(), key, record.partition))
            result.changelog.setdefault(tp, []).append((key, str(state[key]).encode()))
            result.counts.setdefault(tp, Counter())["seen"] += 1
        return result


def run_until(broker: EmbeddedBroker, processor: RunningCount, expected_seen: int) -> dict[bytes, int]:
    """Run the stage until its committed progress covers `expected_seen` records; the counts then."""
    settings = Settings(bootstrap_servers=broker.bootstrap_servers, instance_id="t", batch_size=50)
    runner = StageRunner(processor, settings, [IN])
    done = threading.Event()

    def seen() -> bool:
        return sum(sum(c.values()) for c in processor.counts.values()) >= expected_seen

    thread = threading.Thread(target=runner.run, kwargs={"should_stop": lambda: done.is_set()})
    thread.start()
    snapshot: dict[bytes, int] = {}
    try:
        for _ in range(600):
            if seen():
                snapshot = dict(processor.counts[(IN, 0)])
                break
            threading.Event().wait(0.1)
        threading.Event().wait(1)  # let the batch's transaction commit
    finally:
        done.set()
        thread.join(30)
    return snapshot


def read_all(broker: EmbeddedBroker, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "group.id": "reader",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    found: list[tuple[bytes | None, bytes | None]] = []
    while True:
        message = consumer.poll(5)
        assert message is not None, "no end of partition"
        error = message.error()
        if error is not None and error.code() == KafkaError._PARTITION_EOF:
            break
        found.append((message.key(), message.value()))
    consumer.close()
    return found


def test_restore_ignores_aborted_changelog_and_guard_skips_replays(fresh_broker: EmbeddedBroker) -> None:
    admin = AdminClient({"bootstrap.servers": fresh_broker.bootstrap_servers})
    ensure_topics(
        admin, {IN: (1, LOG), OUT: (1, LOG), STATS: (1, LOG), changelog_topic(IN, "counter"): (1, LOG)}
    )
    producer = Producer({"bootstrap.servers": fresh_broker.bootstrap_servers})
    for i in range(30):
        producer.produce(
            IN, key=b"k", value=b"x", partition=0, headers=[(LINEAGE_HEADER, lineage_value("up", 0, i))]
        )
    producer.flush()

    assert run_until(fresh_broker, RunningCount(), 30) == {b"k": 30}

    # What a crashed or aborted transaction leaves behind on Tansu, visible to read_committed readers:
    # a changelog value from a batch past the committed offset, and a replayed upstream copy.
    zombie = Producer({"bootstrap.servers": fresh_broker.bootstrap_servers, "transactional.id": "zombie"})
    zombie.init_transactions()
    zombie.begin_transaction()
    zombie.produce(
        changelog_topic(IN, "counter"), key=b"k", value=b"999", partition=0, headers=[("ml.through", b"1000")]
    )
    zombie.produce(
        IN, key=b"k", value=b"x", partition=0, headers=[(LINEAGE_HEADER, lineage_value("up", 0, 29))]
    )
    zombie.flush()
    zombie.abort_transaction()
    producer.produce(
        IN, key=b"k", value=b"x", partition=0, headers=[(LINEAGE_HEADER, lineage_value("up", 0, 30))]
    )
    producer.flush()

    # Restored 30 (not the aborted 999), skipped the replayed copy of upstream offset 29, counted offset 30.
    assert run_until(fresh_broker, RunningCount(), 31) == {b"k": 31}
    outputs = [int(v or b"0") for _, v in read_all(fresh_broker, OUT)]
    assert outputs == list(range(1, 32))

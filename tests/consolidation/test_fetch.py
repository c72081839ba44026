"""consolidation.fetch.gather: a store batch takes what keeps arriving, up to its limit."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from consolidation.fetch import gather
from meterline.kernel.topics import LOG
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.topic_admin import ensure_topics

pytestmark = pytest.mark.integration


def reader(broker: EmbeddedBroker, topic: str) -> Consumer:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": f"fetch-{topic}"})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    return consumer


def produce(broker: EmbeddedBroker, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    for number in range(count):
        producer.produce(topic, value=str(number).encode(), partition=0)
    assert producer.flush(10) == 0


def ready(broker: EmbeddedBroker, name: str) -> tuple[str, Consumer]:
    """A topic and a reader that has fetched its first record (connected, nothing left to read)."""
    topic = f"fetch.{name}.{time.monotonic_ns()}"
    ensure_topics(AdminClient({"bootstrap.servers": broker.bootstrap_servers}), {topic: (1, LOG)})
    produce(broker, topic, 1)
    consumer = reader(broker, topic)
    while not consumer.consume(1, 1.0):
        pass
    return topic, consumer


def test_bursts_that_keep_coming_make_one_batch_up_to_the_limit(broker: EmbeddedBroker) -> None:
    topic, consumer = ready(broker, "bursts")
    try:
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers})  # connected once

        def bursts() -> None:
            for _ in range(5):
                for number in range(50):
                    producer.produce(topic, value=str(number).encode(), partition=0)
                assert producer.flush(10) == 0

        producing = threading.Thread(target=bursts)
        producing.start()
        batch = gather(consumer, limit=1000, wait_s=1.0)
        producing.join()
        rest = gather(consumer, limit=1000, wait_s=1.0)
        assert len(batch) > 50  # more than the first burst that one wait brings
        assert [int(m.value()) for m in batch + rest] == [n for _ in range(5) for n in range(50)]
        produce(broker, topic, 30)
        assert len(gather(consumer, limit=10, wait_s=0.5)) == 10
    finally:
        consumer.close()


def test_a_quiet_topic_gives_what_there_is(broker: EmbeddedBroker) -> None:
    topic, consumer = ready(broker, "quiet")
    try:
        produce(broker, topic, 20)
        batch = gather(consumer, limit=1000, wait_s=0.5)
        assert [int(m.value()) for m in batch] == list(range(20))
        assert gather(consumer, limit=1000, wait_s=0.05) == []
    finally:
        consumer.close()

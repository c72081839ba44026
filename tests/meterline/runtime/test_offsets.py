"""Stored positions past a topic's end, on the real embedded broker, whose ListOffsets(latest)
can answer less than the true end."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from meterline.kernel.topics import LOG
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.kafka_errors import OffsetsPastEndError
from meterline.runtime.offsets import check_positions, past_end
from meterline.runtime.topic_admin import ensure_topics

pytestmark = pytest.mark.integration


def test_positions_are_checked_against_the_true_end(fresh_broker: EmbeddedBroker) -> None:
    bootstrap = fresh_broker.bootstrap_servers
    ensure_topics(AdminClient({"bootstrap.servers": bootstrap}), {"full": (1, LOG), "empty": (1, LOG)})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 100})
    for _ in range(2):  # two batches of 10: ListOffsets may answer 11, the fetch says 20
        for _ in range(10):
            producer.produce("full", b"v", partition=0)
        assert producer.flush(10) == 0
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
    _, reported = probe.get_watermark_offsets(TopicPartition("full", 0), timeout=10)
    probe.close()
    assert reported <= 20

    within = {("full", 0): 20, ("empty", 0): -1001}  # the end itself; nothing stored
    assert past_end(bootstrap, {}, within) == {}
    check_positions(bootstrap, {}, within)
    beyond = {("full", 0): 21, ("empty", 0): 51}
    assert past_end(bootstrap, {}, beyond) == {("full", 0): (21, 20), ("empty", 0): (51, 0)}
    with pytest.raises(OffsetsPastEndError, match=r"empty\[0\] at 51 \(end 0\), full\[0\] at 21 \(end 20\)"):
        check_positions(bootstrap, {}, beyond)

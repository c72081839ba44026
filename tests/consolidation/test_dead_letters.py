"""The consolidator's DLQ producer reports every record it could not deliver (real librdkafka
clients: one with no broker to reach, one whose record limit is below the DLQ copy)."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from consolidation.batch import Rejection
from consolidation.dead_letters import DeadLetterSender, Undelivered
from meterline.kernel.messages import InputRecord


def _rejection(size: int) -> Rejection:
    record = InputRecord("meterline.usage.rated", 1, 7, b"alpha", b"x" * size, {})
    return Rejection("malformed", "not Avro", record)


def test_an_unreachable_broker_is_a_retriable_failure_not_a_silent_loss() -> None:
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 500, "log_level": 0})
    with pytest.raises(Undelivered) as failed:
        DeadLetterSender(producer, 1_000_000).send([_rejection(10)])
    assert failed.value.fatal is False
    assert "DLQ delivery failed" in str(failed.value)


def test_a_record_the_producer_refuses_for_good_is_fatal() -> None:
    # The sender is told a larger limit than the producer's: the copy is not cut, and refused.
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": 2000, "log_level": 0})
    with pytest.raises(Undelivered) as failed:
        DeadLetterSender(producer, 1_000_000).send([_rejection(10_000)])
    assert failed.value.fatal is True


def test_nothing_to_send_needs_no_broker() -> None:
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
    DeadLetterSender(producer, 1_000_000).send([])

"""Kafka errors sorted into what a worker does about them."""

from __future__ import annotations

from confluent_kafka import KafkaError

from meterline.runtime.kafka_errors import (
    ABORTABLE,
    FATAL,
    FENCED,
    RETRIABLE,
    OffsetsPastEndError,
    broker_trouble,
    classify,
    consumer_failure,
)


def test_classes() -> None:
    assert classify(KafkaError(KafkaError._FENCED, fatal=True)) == FENCED
    assert classify(KafkaError(KafkaError.PRODUCER_FENCED)) == FENCED
    assert classify(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)) == FATAL
    assert classify(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, txn_requires_abort=True)) == FATAL
    assert classify(KafkaError(KafkaError.INVALID_TXN_STATE)) == FATAL
    assert classify(KafkaError(KafkaError._INCONSISTENT, fatal=True)) == FATAL
    assert classify(KafkaError(KafkaError._MSG_TIMED_OUT, txn_requires_abort=True)) == ABORTABLE
    assert classify(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)) == ABORTABLE
    assert classify(KafkaError(KafkaError._TIMED_OUT, retriable=True)) == RETRIABLE
    assert classify(None) == ABORTABLE


def test_broker_trouble_is_not_the_batch_at_fault() -> None:
    assert broker_trouble(KafkaError(KafkaError._MSG_TIMED_OUT))
    assert broker_trouble(KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert not broker_trouble(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    assert not broker_trouble(None)


def test_consumer_errors() -> None:
    reset = consumer_failure(KafkaError(KafkaError._AUTO_OFFSET_RESET), "in", 3)
    assert isinstance(reset, OffsetsPastEndError) and "in[3]" in reset.reason
    denied = consumer_failure(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED), "in", 0)
    assert denied is not None and "GROUP_AUTHORIZATION_FAILED" in denied.reason
    assert consumer_failure(KafkaError(KafkaError._TRANSPORT), "in", 0) is None

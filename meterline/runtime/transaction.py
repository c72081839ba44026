"""A stage's transactional producer, with Kafka's error classes applied to every call
(see meterline.runtime.kafka_errors): retriable calls are retried with backoff, a failed
transaction is aborted, fatal errors raise FatalKafkaError.

A fenced producer is replaced once in a worker's life: a transaction that outlived
`transaction.timeout.ms` (a long broker stall) fences it, and a new one can carry on.
Fenced a second time, the worker stops instead: another process is running with the
same instance id, and replacing producers in turn with it would never end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from meterline.kernel.checkpoint import Failure
from meterline.kernel.config import Settings
from meterline.runtime import metrics
from meterline.runtime.health import HEALTH
from meterline.runtime.kafka_config import transactional_producer_config
from meterline.runtime.kafka_errors import (
    FATAL,
    FENCED,
    RETRIABLE,
    FatalKafkaError,
    broker_trouble,
    classify,
    describe,
    error_of,
)

# Retriable calls are retried for this long, well under transaction.timeout.ms.
RETRY_WINDOW_S: Final = 45.0
CALL_TIMEOUT_S: Final = 10.0


class Transactions:
    """The producer of one stage worker and the transaction calls, error classes applied."""

    def __init__(self, settings: Settings, stage: str, stopping: Callable[[], bool]) -> None:
        self.settings = settings
        self.stage = stage
        self.transactional_id = settings.topics.group(f"meterline-{stage}-{settings.instance_id}")
        self._stopping = stopping
        self._log = structlog.get_logger().bind(stage=stage)
        self._fenced_once = False
        self.producer = self._new_producer()

    def _new_producer(self) -> Producer:
        s = self.settings
        config = transactional_producer_config(s.bootstrap_servers, s.kafka, self.transactional_id)
        producer = Producer(config)
        # Fences any earlier incarnation with the same id and aborts its open transaction;
        # waits out an unreachable broker (/healthz says so meanwhile).
        while True:
            try:
                producer.init_transactions(30)
                return producer
            except KafkaException as exc:
                error = error_of(exc)
                if classify(error) != RETRIABLE or self._stopping():
                    reason = f"cannot start the transactional producer: {describe(error)}"
                    raise FatalKafkaError(reason) from None
                HEALTH.broker_down()
                self._log.warning("producer_init_retry", error=describe(error))

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        target = -1 if partition is None else partition  # -1: let the partitioner choose
        while True:
            try:
                self.producer.produce(topic, value, key, target, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.05)  # local queue full: let deliveries drain

    def send_offsets(self, offsets: list[TopicPartition], group: object) -> None:
        producer = self.producer
        self._retrying(
            "send_offsets", lambda: producer.send_offsets_to_transaction(offsets, group, CALL_TIMEOUT_S)
        )

    def commit(self) -> None:
        producer = self.producer
        self._retrying("commit", lambda: producer.commit_transaction(CALL_TIMEOUT_S))

    def _retrying(self, step: str, call: Callable[[], None]) -> None:
        """Run a transaction call; retriable errors retry with backoff within RETRY_WINDOW_S."""
        deadline = time.monotonic() + RETRY_WINDOW_S
        attempt = 0
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                error = error_of(exc)
                if classify(error) != RETRIABLE or time.monotonic() >= deadline:
                    raise
                attempt += 1
                if broker_trouble(error):
                    HEALTH.broker_down()
                HEALTH.beat()
                self._log.warning("transaction_retry", step=step, error=describe(error), attempt=attempt)
                time.sleep(min(0.2 * attempt, 2.0))

    def abort(self, error: KafkaError | None, detail: str | None = None) -> Failure:
        """Abort the failed transaction; FatalKafkaError for what no replay can fix.

        `detail` says what failed when it was no Kafka error (`error` None)."""
        kind, detail = classify(error), detail or describe(error)
        self._log.warning("transaction_failed", error=detail, kind=kind)
        metrics.ABORTS.labels(self.stage, kind).inc()
        if kind == FATAL:
            raise FatalKafkaError(f"transaction failed: {detail}")
        if kind == FENCED:
            self._replace_fenced(detail)
            return (detail, False)
        producer = self.producer
        try:
            self._retrying("abort", lambda: producer.abort_transaction(CALL_TIMEOUT_S))
        except KafkaException as exc:
            abort_error = error_of(exc)
            abort_kind = classify(abort_error)
            if abort_kind == FATAL:
                raise FatalKafkaError(f"transaction abort failed: {describe(abort_error)}") from None
            if abort_kind == FENCED:
                self._replace_fenced(describe(abort_error))
            else:  # a new producer aborts the open transaction when it starts
                self._log.warning("abort_failed", error=describe(abort_error))
                self.producer = self._new_producer()
        return (detail, broker_trouble(error))

    def _replace_fenced(self, detail: str) -> None:
        if self._fenced_once:
            raise FatalKafkaError(
                f"producer {self.transactional_id} fenced again ({detail}): another worker may run "
                f"with instance id {self.settings.instance_id!r}"
            )
        self._fenced_once = True
        self._log.warning("producer_fenced", error=detail, action="replaced once")
        self.producer = self._new_producer()

"""The consolidator's DLQ producer: a batch's rejected records, each delivered or the batch retried.

Not transactional with DuckDB: a batch's DLQ records are delivered before its offsets
are committed, so after a crash the DLQ may hold a copy twice (readers tell copies
apart by the source topic/partition/offset headers), but never misses one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from consolidation.batch import STAGE, Rejection
from meterline.kernel.dlq import cut_short, dead_letter
from meterline.kernel.headers import RAW_HEADER, TRUNCATED_HEADER
from meterline.kernel.reasons import INTERNAL_ERROR
from meterline.kernel.topics import RATED, REJECTED
from meterline.runtime import metrics

DELIVERY_TIMEOUT_S = 30.0
# Delivery errors that no retry can fix.
_FATAL_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


class Undelivered(Exception):
    """Some DLQ records of a batch were not delivered: the batch must not be committed."""

    def __init__(self, reason: str, fatal: bool) -> None:
        super().__init__(reason)
        self.fatal = fatal


class DeadLetterSender:
    def __init__(
        self, producer: Producer, max_bytes: int, rated_topic: str = RATED, dlq_topic: str = REJECTED
    ) -> None:
        self._producer = producer
        self._max_bytes = max_bytes
        # The installation's topics (with its topic prefix, if any).
        self._rated = rated_topic
        self._dlq_topic = dlq_topic
        self._errors: list[KafkaError] = []

    def send(self, rejected: Sequence[Rejection]) -> None:
        """Produce the DLQ records and wait for every delivery report; raises Undelivered."""
        if not rejected:
            return
        self._errors = []
        for item in rejected:
            record = item.record
            metrics.REJECTED.labels(STAGE, item.reason).inc()
            if item.reason == INTERNAL_ERROR:
                metrics.INTERNAL_ERRORS.labels(STAGE).inc()
            original = record.headers.get(RAW_HEADER, record.value)
            out = dead_letter(
                original,
                record.key,
                item.reason,
                item.detail,
                STAGE,
                self._rated,
                record.partition,
                record.offset,
                truncated=record.headers.get(TRUNCATED_HEADER),
                max_bytes=self._max_bytes,
                dlq_topic=self._dlq_topic,
            )
            if cut_short(out, original):
                metrics.DLQ_TRUNCATED.labels(STAGE).inc()
            while True:
                try:
                    self._producer.produce(
                        out.topic, out.value, out.key, headers=out.headers, on_delivery=self._delivered
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self._producer.poll(0.05)
                except KafkaException as exc:  # refused before it left (too large for this producer)
                    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                    fatal = error is None or error.fatal() or error.code() in _FATAL_CODES
                    raise Undelivered(f"DLQ record refused: {exc}", fatal) from exc
        left = self._producer.flush(DELIVERY_TIMEOUT_S)
        if self._errors:
            fatal = any(e.fatal() or e.code() in _FATAL_CODES for e in self._errors)
            raise Undelivered(f"DLQ delivery failed: {self._errors[0]}", fatal)
        if left:
            raise Undelivered(f"{left} records not delivered within {DELIVERY_TIMEOUT_S:.0f}s", False)

    def _delivered(self, error: KafkaError | None, _: Any) -> None:
        if error is not None:
            self._errors.append(error)

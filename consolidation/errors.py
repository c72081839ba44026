"""The consolidation worker's fatal errors: it stops, /healthz and one log line say why.

They are meterline.runtime.kafka_errors.FatalKafkaError, which the worker turns into exit code 1.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import structlog
from confluent_kafka import KafkaError

from meterline.runtime.kafka_errors import FatalKafkaError, OffsetsPastEndError

log = structlog.get_logger()

# Consume errors after which going on would lose or skip records: the worker stops.
FATAL_CONSUME_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.OFFSET_OUT_OF_RANGE,
        KafkaError._AUTO_OFFSET_RESET,
    }
)
_UNKNOWN_TOPIC = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC})
# How long a topic may stay unknown (metadata catching up) before that is fatal.
UNKNOWN_TOPIC_GRACE_S = 30.0


class FatalStageError(FatalKafkaError):
    """The stage cannot go on without losing or skipping data (unauthorized, a topic gone,
    a DLQ record refused for good, stored offsets past a recreated topic's end)."""


class StoredOffsetsPastEndError(FatalStageError, OffsetsPastEndError):
    """Offsets stored in the billing store lie past the end of their partitions."""

    @staticmethod
    def of(topic: str, past: Mapping[int, tuple[int, int]], out: Path) -> StoredOffsetsPastEndError:
        where = ", ".join(f"{topic}[{p}] stored offset {o}, end {e}" for p, (o, e) in sorted(past.items()))
        return StoredOffsetsPastEndError(
            f"stored positions lie past the end of their partitions ({where}): the topic was "
            "recreated or lost its data (a broker without persistent storage restarted?). Restore "
            f"the broker's data, or move {out} away to consolidate the new topic from its start; "
            "nothing is skipped"
        )


class ConsumeErrors:
    """What an error a consumer returned with a message means for the stage: fatal (raised
    as FatalStageError), or logged and retried. A topic may stay unknown for a while
    (metadata catching up) before that is fatal too."""

    def __init__(self, topic: str, grace_s: float = UNKNOWN_TOPIC_GRACE_S) -> None:
        self.topic = topic
        self.grace_s = grace_s
        self._unknown_since: float | None = None

    def ok(self) -> None:
        """A message arrived: the topic is known."""
        self._unknown_since = None

    def check(self, error: KafkaError) -> None:
        code = error.code()
        if error.fatal() or code in FATAL_CONSUME_CODES:
            raise FatalStageError(f"consuming {self.topic} failed: {error}")
        if code in _UNKNOWN_TOPIC:
            now = time.monotonic()
            since = self._unknown_since = self._unknown_since or now
            if now - since > self.grace_s:
                raise FatalStageError(f"topic {self.topic} is unknown to the broker: {error}")
        log.warning("consume_error", topic=self.topic, error=str(error))

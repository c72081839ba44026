"""Stored consumer positions that lie beyond their topic's end.

When a topic is recreated (a broker restarted with memory storage, a topic deleted
and created again), a position stored earlier, in Kafka or in DuckDB, points past
the new topic's end. The embedded broker then answers fetches there with nothing
at all, not OFFSET_OUT_OF_RANGE, so a consumer would wait silently until the new
topic grows past the old position, skipping everything before it. Workers check
their positions on assignment and stop with :class:`OffsetsPastEndError` instead.

The embedded broker's ListOffsets(latest) can answer the base offset of the last
batch + 1 rather than the true end, so a position past that answer is confirmed by
a fetch, whose response carries the true high watermark, before it counts.

    check_positions(bootstrap_servers, kafka, {(topic, partition): next_offset, ...})
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import structlog
from confluent_kafka import Consumer, KafkaError, TopicPartition

from meterline.runtime import metrics
from meterline.runtime.kafka_config import consumer_config
from meterline.runtime.kafka_errors import OffsetsPastEndError

log = structlog.get_logger()

TP = tuple[str, int]


def past_end(
    bootstrap_servers: str,
    kafka: Mapping[str, str],
    positions: Mapping[TP, int],
    timeout: float = 30.0,
    prefix: str = "",
) -> dict[TP, tuple[int, int]]:
    """{(topic, partition): (stored next offset, topic end)} for every position past its end.

    `positions` are next offsets to read (the committed offset); negative ones (none
    stored) are ignored. `prefix` is the installation's topic_prefix (it names the reader).
    """
    stored = {tp: offset for tp, offset in positions.items() if offset > 0}
    if not stored:
        return {}
    consumer = Consumer(
        consumer_config(
            bootstrap_servers,
            kafka,
            prefix + "meterline-offsets-check",
            **{"enable.partition.eof": True, "isolation.level": "read_uncommitted"},
        )
    )
    try:
        reported = {
            tp: consumer.get_watermark_offsets(TopicPartition(tp[0], tp[1]), timeout=timeout)[1]
            for tp in stored
        }
        doubtful = {tp: end for tp, end in reported.items() if stored[tp] > end}
        if not doubtful:
            return {}
        ends = _fetched_ends(consumer, doubtful, timeout)
    finally:
        consumer.close()
    return {tp: (stored[tp], end) for tp, end in ends.items() if stored[tp] > end}


def _fetched_ends(consumer: Consumer, reported: dict[TP, int], timeout: float) -> dict[TP, int]:
    """True high watermarks, read from fetch responses starting just before the reported ends."""
    consumer.assign([TopicPartition(t, p, max(end - 1, 0)) for (t, p), end in reported.items()])
    pending = set(reported)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for message in consumer.consume(10000, 0.2):
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                pending.discard((message.topic(), message.partition()))
    ends = {}
    for tp in reported:
        if tp in pending:
            # Unconfirmed: never stop a worker on a guess.
            log.warning("offsets_check_inconclusive", topic=tp[0], partition=tp[1])
            continue
        _, high = consumer.get_watermark_offsets(TopicPartition(tp[0], tp[1]), cached=True)
        ends[tp] = max(high, reported[tp])
    return ends


def check_positions(
    bootstrap_servers: str,
    kafka: Mapping[str, str],
    positions: Mapping[TP, int],
    timeout: float = 30.0,
    prefix: str = "",
) -> None:
    """Raise OffsetsPastEndError naming every stored position that lies past its topic's end."""
    problems = past_end(bootstrap_servers, kafka, positions, timeout, prefix)
    if not problems:
        return
    where = ", ".join(
        f"{topic}[{partition}] at {offset} (end {end})"
        for (topic, partition), (offset, end) in sorted(problems.items())
    )
    raise OffsetsPastEndError(
        f"stored positions lie beyond the topic's end: {where}; the topic was recreated "
        "(a broker restarted with memory storage?), and reading on would skip its records. "
        "Reset the stage's stored positions (and its outputs) to reprocess the new topic"
    )


def export_consumer_lag(consumer: Consumer, stage: str, next_offsets: Mapping[tuple[str, int], int]) -> None:
    """Set the consumer lag gauge of each partition from its next offset to consume."""
    for (topic, partition), position in next_offsets.items():
        # cached=True reads the high watermark of the last fetch response: no broker round trip.
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        if high >= 0:
            metrics.CONSUMER_LAG.labels(stage, topic, str(partition)).set(max(high - position, 0))

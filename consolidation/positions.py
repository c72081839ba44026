"""Stored positions against the topic they point into: never resume past a partition's end.

Consolidation keeps its consumed offsets in DuckDB, outside Kafka. If the topic was
recreated (a broker that kept its data in memory restarted), those offsets point past
the new partitions' ends, and a consumer seeking there would wait for records that
never come, or, with a reset policy, skip or re-read silently.

The embedded broker's ListOffsets may answer the base offset of the last batch + 1
rather than the true end, so an offset beyond that answer is only a suspect: a fetch
at the offset before it confirms (a record there, or a fetch response's high
watermark at or beyond it, clears it; an out-of-range error, or a high watermark
below it, confirms).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, TopicPartition

from meterline.kafka_config import consumer_config

log = structlog.get_logger()

_OUT_OF_RANGE = (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET)


def positions_past_end(
    bootstrap_servers: str,
    kafka: Mapping[str, str],
    topic: str,
    stored: Mapping[int, int],
    timeout: float = 10.0,
) -> dict[int, tuple[int, int]]:
    """{partition: (stored offset, end)} for stored positions confirmed to lie past the end."""
    probe = Consumer(
        consumer_config(
            bootstrap_servers,
            kafka,
            "meterline-consolidation-probe",
            **{"isolation.level": "read_uncommitted", "auto.offset.reset": "error"},
        )
    )
    try:
        suspects: dict[int, tuple[int, int]] = {}
        for partition, offset in stored.items():
            if offset <= 0:
                continue
            _, high = probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
            if offset > high:
                suspects[partition] = (offset, high)
        if not suspects:
            return {}
        return _confirm(probe, topic, suspects, timeout)
    finally:
        probe.close()


def _confirm(
    probe: Any, topic: str, suspects: dict[int, tuple[int, int]], timeout: float
) -> dict[int, tuple[int, int]]:
    probe.assign([TopicPartition(topic, p, offset - 1) for p, (offset, _) in suspects.items()])
    decided: dict[int, int | None] = {}  # partition -> end if past it, None if not
    deadline = time.monotonic() + timeout
    while len(decided) < len(suspects) and time.monotonic() < deadline:
        for message in probe.consume(100, 0.2):
            partition = message.partition()
            if partition not in suspects or partition in decided:
                continue
            error = message.error()
            if error is None:
                decided[partition] = None  # the record before the stored offset is there
            elif error.code() in _OUT_OF_RANGE:
                decided[partition] = suspects[partition][1]
        for partition, (offset, _) in suspects.items():
            if partition in decided:
                continue
            _, high = probe.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            if high >= 0:  # a fetch response came back: its high watermark is the true end
                decided[partition] = high if offset > high else None
    unconfirmed = sorted(set(suspects) - set(decided))
    if unconfirmed:
        log.warning("stored_offsets_unconfirmed", topic=topic, partitions=unconfirmed)
    return {p: (suspects[p][0], end) for p, end in decided.items() if end is not None}


def past_end_message(topic: str, past: Mapping[int, tuple[int, int]], out: Path) -> str:
    where = ", ".join(f"{topic}[{p}] stored offset {o}, end {e}" for p, (o, e) in sorted(past.items()))
    return (
        f"stored positions lie past the end of their partitions ({where}): the topic was recreated "
        "or lost its data (a broker without persistent storage restarted?). Restore the broker's "
        f"data, or move {out} away to consolidate the new topic from its start; nothing is skipped"
    )

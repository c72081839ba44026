"""Dead-letter records: the original bytes plus the reason headers, for every stage.

    dead_letter(original, key, reason, detail, stage, topic, partition, offset) -> OutputRecord

The headers say why (`meterline.reason`, `meterline.detail`), who (`meterline.stage`)
and where the original came from (`meterline.source.topic/partition/offset`).

A DLQ copy must fit the DLQ topic, or producing it fails the whole transaction and
the batch is retried forever. A copy too large keeps the longest prefix of the
original that fits, and gets header `meterline.truncated` = the original length in
bytes (ASCII decimal); a DLQ reader knows it holds a prefix. A stage counts such a
copy as `dlq_truncated` in its batch's counts (see `cut_short`); the runtime turns
counts into metrics once the batch is committed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import structlog

from meterline.kernel.headers import (
    DETAIL_HEADER,
    REASON_HEADER,
    SOURCE_ORIGIN_HEADERS,
    STAGE_HEADER,
    TRUNCATED_HEADER,
)
from meterline.kernel.messages import OutputRecord
from meterline.kernel.reasons import INTERNAL_ERROR, Rejected
from meterline.kernel.topics import REJECTED

# librdkafka's default message.max.bytes: the producer refuses a larger record (key,
# value and headers together), and brokers default to about the same.
DEFAULT_MAX_BYTES: Final = 1_000_000
# What a record adds around its key, value and headers (varint lengths, attributes,
# timestamp and offset deltas, the batch header when it travels alone): well under this.
FRAMING_BYTES: Final = 512
HEADER_FRAMING_BYTES: Final = 10  # two varint lengths per header
MAX_DETAIL_BYTES: Final = 1024


def dead_letter_headers(
    reason: str, detail: str, stage: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    return [
        (REASON_HEADER, reason.encode()),
        (DETAIL_HEADER, detail.encode("utf-8", "replace")[:MAX_DETAIL_BYTES]),
        (STAGE_HEADER, stage.encode()),
        (SOURCE_ORIGIN_HEADERS[0], topic.encode("utf-8", "replace")),
        (SOURCE_ORIGIN_HEADERS[1], str(partition).encode()),
        (SOURCE_ORIGIN_HEADERS[2], str(offset).encode()),
    ]


def max_bytes_of(kafka: Mapping[str, str]) -> int:
    """The record size limit of a producer configured with these librdkafka properties."""
    try:
        return int(kafka.get("message.max.bytes", DEFAULT_MAX_BYTES))
    except ValueError:
        return DEFAULT_MAX_BYTES


def dead_letter(
    original: bytes | None,
    key: bytes | None,
    reason: str,
    detail: str,
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    *,
    truncated: bytes | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    kept: Sequence[tuple[str, bytes]] = (),
    dlq_topic: str = REJECTED,
) -> OutputRecord:
    """The DLQ record of one rejected record, cut to fit `max_bytes` if needed.

    `original` is the record as it first entered the pipeline; `topic`, `partition` and
    `offset` say where. `truncated` is the `meterline.truncated` value the original
    already carried (a publisher cut it to publish it): the DLQ copy keeps it, since it
    names the true original length. `kept` are headers of the original that say how to
    read it (format, time zone, CloudEvents attributes), so a replay reads it the same way.
    `dlq_topic` is the installation's DLQ topic (with its topic prefix). The partition
    is left to the producer's partitioner.
    """
    value = original or b""
    headers = [*dead_letter_headers(reason, detail, stage, topic, partition, offset), *kept]
    if truncated is not None:
        headers.append((TRUNCATED_HEADER, truncated))
    if record_size(value, key, headers) <= max_bytes:
        return OutputRecord(dlq_topic, original, key, headers=headers)
    if truncated is None:
        headers.append((TRUNCATED_HEADER, str(len(value)).encode()))
    if record_size(b"", key, headers) > max_bytes:
        key = None  # an oversized key: the DLQ is not read by key
    room = max(max_bytes - record_size(b"", key, headers), 0)
    return OutputRecord(dlq_topic, value[:room], key, headers=headers)


def cut_short(letter: OutputRecord, original: bytes | None) -> bool:
    """Whether a DLQ copy holds only a prefix of its original (it did not fit)."""
    return len(letter.value or b"") < len(original or b"")


def record_size(value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]]) -> int:
    """Bytes a record counts against message.max.bytes, framing included (an upper bound)."""
    size = FRAMING_BYTES + len(value) + (len(key) if key else 0)
    for name, header in headers:
        size += len(name.encode()) + len(header) + HEADER_FRAMING_BYTES
    return size


def log_internal_error(stage: str, rejection: Rejected, topic: str, partition: int, offset: int) -> None:
    """Log a rejection that is a stage's own failure (it raises an alert); other rejections
    are only counted. `topic`, `partition` and `offset` are where the stage read the record.
    """
    if rejection.reason == INTERNAL_ERROR:
        structlog.get_logger().error(  # looked up here: rare, and what the current configuration says
            "record_failed",
            stage=stage,
            topic=topic,
            partition=partition,
            offset=offset,
            error=rejection.detail,
            exc_info=rejection.__cause__,
        )

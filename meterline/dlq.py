"""Dead-letter records: the original bytes plus the reason headers of DESIGN.md §4."""

from __future__ import annotations


def dead_letter_headers(
    reason: str, detail: str, stage: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    return [
        ("meterline.reason", reason.encode()),
        ("meterline.detail", detail.encode("utf-8", "replace")[:1024]),
        ("meterline.stage", stage.encode()),
        ("meterline.source.topic", topic.encode()),
        ("meterline.source.partition", str(partition).encode()),
        ("meterline.source.offset", str(offset).encode()),
    ]

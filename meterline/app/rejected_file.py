"""`DIR/rejected.jsonl` of `meterline run`: each rejection with the input file and line it
came from (the DLQ names a record by topic, partition and offset; meterline.kernel.headers.SourceLines
remembers which line was published at each offset).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import orjson

from meterline.app.replay_select import read_to_end
from meterline.kernel.config import Settings
from meterline.kernel.headers import (
    DETAIL_HEADER,
    REASON_HEADER,
    REJECTED_FILE,
    SOURCE_ORIGIN_HEADERS,
    STAGE_HEADER,
    SourceLines,
)


def write_rejected(settings: Settings, topic: str, lines: SourceLines, out: Path) -> tuple[int, Path]:
    """Write `out/rejected.jsonl`: one object per DLQ record of `topic`, with the input
    `file` and `line` it came from (null when it cannot be told), `reason`, `detail` and
    `stage`, in file and line order. Returns the count and the path."""
    rows: list[dict[str, object]] = []
    seen: set[tuple[bytes, ...]] = set()
    for message in read_to_end(settings, settings.topics.rejected, "run-rejected"):
        headers: Mapping[str, bytes] = {n: v for n, v in message.headers() or [] if v is not None}
        # One row per original: a stage may deliver a DLQ record again after an abort.
        origin = tuple(headers.get(n, b"") for n in (STAGE_HEADER, *SOURCE_ORIGIN_HEADERS))
        if origin[1] and origin in seen:
            continue
        seen.add(origin)
        where = None
        if headers.get("meterline.source.topic", b"").decode("utf-8", "replace") == topic:
            try:
                partition = int(headers.get("meterline.source.partition", b""))
                offset = int(headers.get("meterline.source.offset", b""))
            except ValueError:
                pass
            else:
                where = lines.where(partition, offset)
        rows.append(
            {
                "file": where[0] if where else None,
                "line": where[1] if where else None,
                "reason": _text(headers.get(REASON_HEADER)),
                "detail": _text(headers.get(DETAIL_HEADER)),
                "stage": _text(headers.get(STAGE_HEADER)),
            }
        )
    rows.sort(key=lambda r: (r["file"] is None, str(r["file"]), r["line"] or 0))
    path = out / REJECTED_FILE
    with path.open("wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")
    return len(rows), path


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")

"""Compaction of the rated-usage Parquet files: a bounded number of files per period.

Every batch adds one small file per input partition and period. Files are merged
like a log-structured merge tree: when a partition's period folder holds FANOUT
files of one level, they become one file of the next level (batch files are level
0). A row is rewritten once per level, about log_FANOUT(rows) times, and a folder
holds fewer than FANOUT files per level. When a period closes, all its files of a
partition become one.

Only committed files are merged (their last offset is below the partition's stored
position), and the merged file is named after the partition and the offsets it
covers, like a batch file, so restarts handle both alike.

Crash safety. `rated_usage` reads every file of the folders except those listed in
DuckDB's `hidden_files`; each step below is a rename, an unlink or a DuckDB commit:

    1. write the merged rows to a temporary file, fsync it
    2. commit: the merged file's name is hidden
    3. rename the temporary file to that name, fsync the folder
    4. commit: the merged file shown, the sources hidden (the view switches at once)
    5. unlink the sources, fsync the folder
    6. commit: the sources' names forgotten

Opening the store deletes temporary files and every hidden file, then forgets the
hidden names. A crash before 4 leaves the sources visible and the merged file, if
any, hidden: it is deleted. A crash after 4 leaves the merged file visible and the
sources hidden: they are deleted. So no row is ever seen twice or lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import structlog

from consolidation.files import (
    RatedFile,
    fsync_dir,
    merge_parquet,
    publish_file,
    rated_file_name,
    rated_files,
    temporary_name,
)
from consolidation.store import BillingStore

FANOUT = 16

log = structlog.get_logger()


def compact_partition(
    store: BillingStore, period: str, partition: int, next_offset: int, full: bool = False
) -> int:
    """Merge the committed files of one partition in one period folder; returns files merged.

    `next_offset` is the partition's stored position: files at or past it are not
    committed yet and are left alone. `full` merges every file into one (a closed period).
    """
    folder = store.rated_dir / f"period={period}"
    merged = 0
    while True:
        committed = [f for f in rated_files(folder, partition) if f.last < next_offset]
        sources = _plan(committed, full)
        if not sources:
            return merged
        _merge(store, folder, sources, max(f.level for f in sources) + 1)
        merged += len(sources)


def compact_period(store: BillingStore, period: str, positions: dict[int, int]) -> int:
    """Merge each partition's committed files of a closed period into one."""
    return sum(compact_partition(store, period, p, offset, full=True) for p, offset in positions.items())


def _plan(files: list[RatedFile], full: bool) -> list[RatedFile]:
    """The files to merge next: all of them (full), or the FANOUT files of the lowest full level."""
    if full:
        return files if len(files) > 1 else []
    by_level: dict[int, list[RatedFile]] = {}
    for f in files:
        by_level.setdefault(f.level, []).append(f)
    for level in sorted(by_level):
        if len(by_level[level]) >= FANOUT:
            return by_level[level][:FANOUT]
    return []


def _merge(store: BillingStore, folder: Path, sources: list[RatedFile], level: int) -> None:
    target = folder / rated_file_name(
        sources[0].partition, min(f.first for f in sources), max(f.last for f in sources), level
    )
    temporary = temporary_name(target)
    rows = merge_parquet([f.path for f in sources], temporary)  # 1
    store.swap_hidden((), [target])  # 2
    publish_file(temporary, target)  # 3
    store.swap_hidden([target], [f.path for f in sources])  # 4
    _unlink(f.path for f in sources)  # 5
    fsync_dir(folder)
    store.swap_hidden([f.path for f in sources], ())  # 6
    log.debug("rated_files_compacted", folder=folder.name, files=len(sources), rows=rows, into=target.name)


def _unlink(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)

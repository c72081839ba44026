"""The options of `meterline replay`, kept light: every command builds the parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, Final

from meterline.kernel.command_errors import UserError
from meterline.kernel.reasons import (
    NO_CONTRACT_IN_EFFECT,
    NO_MATCHING_CHARGE,
    REASONS,
    UNKNOWN_ACCOUNT,
    UNKNOWN_METER,
)

# What a fixed catalog can cure: replayed when no --reason is given.
CATALOG_GAP_REASONS: Final = (UNKNOWN_ACCOUNT, NO_CONTRACT_IN_EFFECT, UNKNOWN_METER, NO_MATCHING_CHARGE)


class UsageError(UserError):
    """A replay option the user got wrong."""


# --------------------------------------------------------------------------- options


def parse_reasons(given: list[str] | None) -> frozenset[str]:
    if not given:
        return frozenset(CATALOG_GAP_REASONS)
    unknown = [r for r in given if r not in REASONS]
    if unknown:
        raise UsageError(f"--reason {unknown[0]!r} is not a reason code; use one of {', '.join(REASONS)}")
    return frozenset(given)


def parse_time(text: str, option: str) -> datetime:
    """ISO 8601 date or date-time; without an offset it is UTC."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is not an ISO 8601 date or time (e.g. 2026-09-01T00:00:00Z)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def add_parser(
    sub: argparse._SubParsersAction[Any], kafka_options: Callable[[argparse.ArgumentParser], None]
) -> None:
    gaps = ", ".join(CATALOG_GAP_REASONS)
    replay = sub.add_parser(
        "replay",
        help="re-publish rejected records from the DLQ once the catalog is fixed",
        description="Re-publish records of the DLQ (meterline.usage.rejected) to the raw topic "
        "they came from, so that records the catalog now accepts are rated. The DLQ keeps its "
        "records; each copy carries the header meterline.replay.of = DLQ_TOPIC/PARTITION/OFFSET. "
        f"Without --reason only the reasons a catalog fix can cure are replayed: {gaps}. "
        "Skipped and counted: records replayed before (unless --include-replayed), truncated "
        "DLQ copies, records that did not come from a raw topic, and records whose period is "
        "closed for their account. Safe to interrupt and to rerun: once a copy is accepted, "
        "every later copy of the event is a duplicate.",
    )
    replay.add_argument(
        "--reason",
        action="append",
        metavar="R",
        help=f"replay records rejected for this reason (repeatable; default: {gaps})",
    )
    replay.add_argument("--account", metavar="ID", help="only this account's records")
    replay.add_argument(
        "--since",
        metavar="T",
        help="only records that reached the DLQ at or after T (ISO 8601; UTC without an offset)",
    )
    replay.add_argument("--until", metavar="T", help="only records that reached the DLQ before T")
    replay.add_argument(
        "--dry-run", action="store_true", help="print counts by reason and account; publish nothing"
    )
    replay.add_argument(
        "--include-replayed",
        action="store_true",
        help="also replay records replayed before (once a copy was accepted, these are duplicates)",
    )
    kafka_options(replay)

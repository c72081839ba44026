"""The event stream: `generate_events` fills the templates of generator.templates in a
tight loop (pre-rendered fragments, no per-event JSON encoding) because benchmarks
generate millions of events, mixing in exact duplicates and bad records at the
requested rates; `planned_counts` says what it emits.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Final

from generator.bad_records import BAD_REASONS, BadRecords
from generator.templates import Template, event_templates
from meterline.kernel.catalog import Catalog, period_bounds
from meterline.kernel.catalog_file import parse_catalog

__all__ = ["generate_events", "planned_counts"]

_GOOD, _DUPLICATE, _BAD = 0, 1, 2
_RING: Final = 8192  # duplicates re-send one of the last _RING good events
_PICK_TABLE: Final = 1 << 16  # at least; always a power of two


def planned_counts(events: int, duplicate_rate: float = 0.05, bad_rate: float = 0.01) -> dict[str, int]:
    """What `generate_events` emits for these arguments: total, duplicates, bad records by reason.

    `valid` events are unique and well-formed; for a catalog from `generate_catalog`
    every one of them is rated.
    """
    duplicates, bad = _split(events, duplicate_rate, bad_rate)
    counts = {"events_in": events, "valid": events - duplicates - bad, "duplicates": duplicates}
    for position, reason in enumerate(BAD_REASONS):
        counts[f"rejected.{reason}"] = bad // len(BAD_REASONS) + (
            1 if position < bad % len(BAD_REASONS) else 0
        )
    return counts


def _split(events: int, duplicate_rate: float, bad_rate: float) -> tuple[int, int]:
    if events < 0 or not 0 <= duplicate_rate <= 1 or not 0 <= bad_rate <= 1:
        raise ValueError("events must be >= 0 and rates between 0 and 1")
    duplicates, bad = round(events * duplicate_rate), round(events * bad_rate)
    if duplicates + bad > events:
        raise ValueError("duplicate_rate + bad_rate must not exceed 1")
    return duplicates, bad


def generate_events(
    catalog_doc: Mapping[str, Any],
    events: int,
    seed: int,
    month: str = "2026-10",
    duplicate_rate: float = 0.05,
    bad_rate: float = 0.01,
) -> Iterator[bytes]:
    """`events` native-JSON lines (bytes, no newline) of usage in `month` for a catalog.

    Good events fall while a contract is in effect and carry the attributes its
    charges' filters need. `round(events * duplicate_rate)` lines are exact re-sends
    of earlier good events; `round(events * bad_rate)` are bad records rotating over
    BAD_REASONS. See :func:`planned_counts`.
    """
    duplicates, bad = _split(events, duplicate_rate, bad_rate)
    rng = random.Random(seed)
    catalog = parse_catalog(catalog_doc, source="generated catalog")
    templates, weights = event_templates(catalog, month, rng)
    if not templates:
        raise ValueError(f"no account has a contract in effect in {month}")
    size = _PICK_TABLE
    while size < 4 * len(templates):
        size *= 2
    table = rng.choices(templates, weights, k=size)
    kinds = bytearray(events)  # all _GOOD; then distinct random positions for the others
    if 2 * (duplicates + bad) > events:
        special = rng.sample(range(events), duplicates + bad)
        kinds_of_special = [_BAD] * bad + [_DUPLICATE] * duplicates
        for position, kind in zip(special, kinds_of_special, strict=True):
            kinds[position] = kind
    else:
        # Faster than random.sample for the usual few percent: retry the rare collisions.
        for kind, count in ((_BAD, bad), (_DUPLICATE, duplicates)):
            while count:
                position = int(rng.random() * events)
                if not kinds[position]:
                    kinds[position] = kind
                    count -= 1
    return _stream(catalog, month, rng, table, kinds, f"ev{seed & 0xFFFFFFFF:x}-")


def _stream(
    catalog: Catalog,
    month: str,
    rng: random.Random,
    templates: list[Template],
    kinds: bytearray,
    id_prefix: str,
) -> Iterator[bytes]:
    # Timestamps are rendered from a day table and an hh:mm:ss table: no datetime per event.
    first, _ = period_bounds(month)
    base_day = first - timedelta(days=2)
    base = int(datetime(base_day.year, base_day.month, base_day.day, tzinfo=UTC).timestamp())
    days = [f"{base_day + timedelta(days=offset):%Y-%m-%d}T" for offset in range(36)]
    clock = _clock_table()
    bad_maker = BadRecords(catalog, templates, rng)

    # Hot loop: one 64-bit draw picks the template (low bits), the instant (32 bits
    # scaled to the contract's span), the quantity (8 bits) and the attributes (8 bits).
    draw = rng.getrandbits
    # Plain tuples: unpacking one is cheaper than reading dataclass attributes.
    table = [(t.head, t.start, t.span, t.quantities, t.attributes, len(t.attributes) - 1) for t in templates]
    table_mask = len(table) - 1
    ring_mask = _RING - 1
    ring: list[bytes] = [b""] * _RING
    good = 0  # good events emitted so far (the ring holds the latest of them)
    owed = 0  # duplicates postponed because no good event had been sent yet
    serial = 0
    bad_count = 0
    for kind in kinds:
        if kind == _DUPLICATE or (owed and good and kind == _GOOD):
            if good:
                if kind == _GOOD:
                    owed -= 1
                yield ring[draw(32) % min(good, _RING)]
                continue
            owed += 1  # nothing to re-send yet: send a good event now, the duplicate later
        bits = draw(64)
        head, start, span, quantities, attributes, attributes_mask = table[bits & table_mask]
        day, second = divmod(start + (((bits >> 16) & 0xFFFFFFFF) * span >> 32) - base, 86400)
        serial += 1
        line = (
            f'{{"event_id":"{id_prefix}{serial}",{head}{quantities[(bits >> 48) & 255]}'
            f',"timestamp":"{days[day]}{clock[second]}"{attributes[(bits >> 56) & attributes_mask]}}}'
        ).encode()
        if kind == _BAD:
            yield bad_maker.spoil(line, BAD_REASONS[bad_count % len(BAD_REASONS)], bad_count)
            bad_count += 1
            continue
        ring[good & ring_mask] = line
        good += 1
        yield line


@cache
def _clock_table() -> list[str]:
    """`hh:mm:ssZ` for every second of a day."""
    minutes = [f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60)]
    seconds = [f"{s:02d}Z" for s in range(60)]
    return [minute + second for minute in minutes for second in seconds]

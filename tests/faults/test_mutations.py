"""The hostile-record generator of the garbage fault (no broker): reproducible, one input
line per record, every format and kind, oversized lines up to past 1 MB, accounts of
every time zone, and reasons that exist."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from generator import generate_catalog, generate_events
from meterline.kernel.reasons import REASONS
from tests.faults.garbage import FORMATS, MAX_RECORD_BYTES, ONE_MB, Hostile
from tests.faults.harness import MONTH
from tests.faults.mutations import hostile_records as generate
from tests.faults.mutations import kinds_for

CATALOG = generate_catalog(40, 3, MONTH)


@pytest.fixture(scope="module")
def records() -> list[Hostile]:
    return generate(CATALOG, 3000, 11, MONTH)


def test_the_same_seed_gives_the_same_records(records: list[Hostile]) -> None:
    assert generate(CATALOG, 3000, 11, MONTH) == records
    assert [h.data for h in generate(CATALOG, 3000, 12, MONTH)] != [h.data for h in records]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_record_is_one_input_line(seed: int) -> None:
    for h in generate(CATALOG, 400, seed, MONTH):
        assert b"\n" not in h.data and not h.data.endswith(b"\r") and h.data.strip(), h
        assert h.expected is None or (h.expected and h.expected <= set(REASONS)), h


def test_every_format_gets_every_kind(records: list[Hostile]) -> None:
    found = Counter((h.fmt, h.kind) for h in records)
    for fmt in FORMATS:
        for kind in kinds_for(fmt):
            assert found[(fmt, kind)] > 0, (fmt, kind)
    oversized = [h for h in records if h.kind == "oversized"]
    assert {h.fmt for h in oversized} == set(FORMATS)
    assert max(len(h.data) for h in oversized) > ONE_MB
    assert all(len(h.data) > MAX_RECORD_BYTES for h in oversized)


def test_out_of_range_instants_hit_accounts_of_every_zone(records: list[Hostile]) -> None:
    zones = {a["id"]: a["timezone"] for a in CATALOG["accounts"]}
    hit = set()
    for h in records:
        if h.kind == "time_out_of_range" and h.fmt != "asterisk-csv":
            doc: dict[str, Any] = json.loads(h.data)
            hit.add(zones[doc.get("account_id") or doc.get("subject") or doc["external_customer_id"]])
    assert hit == set(zones.values())


def test_no_hostile_record_is_a_line_of_the_valid_stream(records: list[Hostile]) -> None:
    valid = set(generate_events(CATALOG, 20_000, 3, MONTH))
    assert not valid & {h.data for h in records}

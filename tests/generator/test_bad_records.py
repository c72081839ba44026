"""Bad records: each spoiled line is rejected by mediation for exactly its planned reason."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from generator.bad_records import BAD_REASONS, BadRecords
from generator.events import generate_events
from generator.templates import event_templates
from mediation.enrich import enrich, local_time
from mediation.formats import parse_record
from meterline.kernel.catalog import Catalog
from meterline.kernel.reasons import Rejected
from tests.generator.conftest import MONTH


def _rejection(line: bytes, catalog: Catalog) -> str | None:
    try:
        event = parse_record(line, "auto", catalog.meters, datetime(2026, 11, 2, tzinfo=UTC))
        enrich(event, catalog, *local_time(event, catalog))
    except Rejected as rejected:
        return rejected.reason
    return None


def test_every_variant_of_every_reason_is_rejected_for_it(
    catalog_doc: dict[str, Any], catalog: Catalog
) -> None:
    rng = random.Random(3)
    templates, _ = event_templates(catalog, MONTH, rng)
    spoiler = BadRecords(catalog, templates, rng)
    good = list(generate_events(catalog_doc, 200, seed=3, duplicate_rate=0, bad_rate=0))
    assert all(_rejection(line, catalog) is None for line in good)
    # Numbers cycle through the reasons; 30 rounds cover every variant of each.
    for number in range(30 * len(BAD_REASONS)):
        reason = BAD_REASONS[number % len(BAD_REASONS)]
        spoiled = spoiler.spoil(good[number % len(good)], reason, number)
        assert _rejection(spoiled, catalog) == reason, (number, spoiled)


def test_the_unknown_meter_is_not_in_the_catalog(catalog: Catalog) -> None:
    spoiler = BadRecords(catalog, event_templates(catalog, MONTH, random.Random(1))[0], random.Random(1))
    assert spoiler.unknown_meter not in catalog.meters
    assert spoiler.quantity_meters and set(spoiler.quantity_meters) <= set(catalog.meters)

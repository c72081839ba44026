"""The event stream: deterministic, the planned mix of good events, duplicates and bad
records, exact decimal quantities, any valid catalog."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from generator.bad_records import BAD_REASONS
from generator.catalog import generate_catalog
from generator.events import generate_events, planned_counts
from meterline.kernel.catalog import Catalog, period_bounds
from meterline.kernel.catalog_file import load_catalog, read_catalog_document
from meterline.kernel.reasons import MALFORMED, Rejected
from tests.generator.conftest import MONTH

EXAMPLE = Path(__file__).resolve().parent.parent / "data" / "catalog.yaml"


def _no_float(text: str) -> Any:
    raise AssertionError(f"a JSON number with a fraction: {text}")


def test_events_are_deterministic(catalog_doc: dict[str, Any]) -> None:
    first = list(generate_events(catalog_doc, 3000, seed=5))
    assert first == list(generate_events(catalog_doc, 3000, seed=5))
    assert first != list(generate_events(catalog_doc, 3000, seed=6))


@pytest.mark.parametrize(
    ("events", "duplicate_rate", "bad_rate"),
    [(0, 0.05, 0.01), (1, 0, 0), (5000, 0.05, 0.01), (300, 0.5, 0.3), (40, 0, 1)],
)
def test_event_count(
    catalog_doc: dict[str, Any], events: int, duplicate_rate: float, bad_rate: float
) -> None:
    lines = list(
        generate_events(catalog_doc, events, seed=1, duplicate_rate=duplicate_rate, bad_rate=bad_rate)
    )
    assert len(lines) == events
    assert all(isinstance(line, bytes) and b"\n" not in line for line in lines)


def test_planned_counts_add_up() -> None:
    counts = planned_counts(10_000, duplicate_rate=0.05, bad_rate=0.01)
    assert counts["events_in"] == 10_000
    assert counts["duplicates"] == 500
    rejected = sum(counts[f"rejected.{reason}"] for reason in BAD_REASONS)
    assert rejected == 100
    assert counts["valid"] + counts["duplicates"] + rejected == 10_000


def test_invalid_rates_are_refused(catalog_doc: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        generate_events(catalog_doc, 10, seed=1, duplicate_rate=0.7, bad_rate=0.5)
    with pytest.raises(ValueError):
        generate_events(catalog_doc, 10, seed=1, bad_rate=-0.1)


def test_events_parse_as_json_except_the_malformed(catalog_doc: dict[str, Any], catalog: Catalog) -> None:
    lines = list(generate_events(catalog_doc, 6000, seed=2))
    counts = planned_counts(6000)
    parsed: list[dict[str, Any]] = []
    unparsable = 0
    for line in lines:
        try:
            parsed.append(json.loads(line, parse_float=_no_float))
        except json.JSONDecodeError:
            unparsable += 1
    assert unparsable == counts[f"rejected.{MALFORMED}"]
    # Leave out the deliberately bad records: missing fields, unknown names, odd timestamps.
    good = [
        event
        for event in parsed
        if event.get("event_id")
        and event.get("account_id") in catalog.accounts
        and event.get("meter") in catalog.meters
        and event.get("timestamp", "").endswith("Z")
        and "T99" not in event["timestamp"]
    ]
    assert len(good) > 0.9 * len(lines)
    first, following = period_bounds(MONTH)
    for event in good:
        assert isinstance(event["event_id"], str)
        instant = datetime.fromisoformat(event["timestamp"])
        account = catalog.accounts[event["account_id"]]
        assert first <= account.local_date(instant) < following  # the month, in the account's zone
        assert account.contract_at(instant) is not None
        quantity = event.get("quantity")
        assert quantity is None or isinstance(quantity, int | str)
        assert all(isinstance(value, str) for value in event.get("attributes", {}).values())


def test_duplicates_are_exact_resends_of_earlier_events(catalog_doc: dict[str, Any]) -> None:
    lines = list(generate_events(catalog_doc, 8000, seed=3))
    seen: set[bytes] = set()
    resent = 0
    for line in lines:
        if line in seen:
            resent += 1
        seen.add(line)
    assert resent == planned_counts(8000)["duplicates"]
    # Same event id means same bytes: no two different records share (account, event_id).
    keys: Counter[tuple[str | None, str | None]] = Counter()
    for line in seen:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        keys[(event.get("account_id"), event.get("event_id"))] += 1
    assert all(count == 1 for key, count in keys.items() if key[1])


def test_mediation_and_rating_see_the_planned_outcomes(catalog_doc: dict[str, Any], catalog: Catalog) -> None:
    """Every valid event is rated; duplicates and bad records are counted as planned."""
    from mediation.dedup import dedup_key
    from mediation.enrich import enrich, local_time
    from mediation.formats import parse_record
    from rating.charges import select_charge

    now = datetime(2026, 11, 2, tzinfo=UTC)
    outcomes: Counter[str] = Counter()
    seen: set[bytes] = set()
    for line in generate_events(catalog_doc, 12_000, seed=4):
        try:
            event = parse_record(line, "auto", catalog.meters, now)
            key = dedup_key(event.account_id, event.event_id)
            if key in seen:
                outcomes["duplicates"] += 1
                continue
            seen.add(key)
            event = enrich(event, catalog, *local_time(event, catalog))
        except Rejected as rejected:
            outcomes[f"rejected.{rejected.reason}"] += 1
            continue
        account = catalog.accounts[event.account_id]
        charge = select_charge(catalog.plans[event.plan_id], event, event.event_time.astimezone(account.zone))
        outcomes["valid" if charge is not None else "rejected.no_matching_charge"] += 1
    planned = planned_counts(12_000)
    assert dict(outcomes) == {key: value for key, value in planned.items() if key != "events_in"}


def test_exact_decimal_quantities(catalog_doc: dict[str, Any]) -> None:
    quantities = set()
    for line in generate_events(catalog_doc, 3000, seed=8, duplicate_rate=0, bad_rate=0):
        event = json.loads(line, parse_float=_no_float)
        if "quantity" in event:
            quantities.add(type(event["quantity"]))
            Decimal(str(event["quantity"]))  # decimal text or an integer
    assert quantities == {int, str}


def test_events_for_the_design_example_catalog() -> None:
    """Any valid catalog works, e.g. the docs/catalog.md example (one account, one contract)."""
    doc = read_catalog_document(EXAMPLE)
    catalog = load_catalog(EXAMPLE)
    lines = list(generate_events(doc, 2000, seed=9, duplicate_rate=0, bad_rate=0))
    assert len(lines) == 2000
    meters = Counter(json.loads(line)["meter"] for line in lines)
    assert set(meters) == set(catalog.meters)
    first, _ = period_bounds(MONTH)
    assert all(
        catalog.accounts["acme"].local_date(datetime.fromisoformat(json.loads(line)["timestamp"])) >= first
        for line in lines[:100]
    )


def test_events_in_a_month_without_contracts_are_refused() -> None:
    doc = read_catalog_document(EXAMPLE)
    with pytest.raises(ValueError, match="no account has a contract"):
        generate_events(doc, 10, seed=1, month="2025-06")


def test_month_parameter() -> None:
    doc = generate_catalog(10, seed=1, month="2027-02")
    for line in generate_events(doc, 50, seed=1, month="2027-02", bad_rate=0):
        stamp = json.loads(line)["timestamp"]
        # Feb 1 in Auckland is Jan 31 in UTC; Feb 28 in New York can be Mar 1 in UTC.
        assert date(2027, 1, 31) <= date.fromisoformat(stamp[:10]) <= date(2027, 3, 1)


@pytest.mark.slow
def test_generation_speed() -> None:
    doc = generate_catalog(500, seed=1)
    started = time.perf_counter()
    count = sum(1 for _ in generate_events(doc, 1_000_000, seed=1))
    rate = count / (time.perf_counter() - started)
    assert rate >= 200_000, f"{rate:,.0f} events/s"

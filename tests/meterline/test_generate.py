"""The deterministic demo/benchmark data generator."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from meterline.catalog import Catalog, period_bounds
from meterline.catalog_file import load_catalog, parse_catalog, read_catalog_document
from meterline.generate import BAD_REASONS, generate_catalog, generate_events, planned_counts
from meterline.reasons import MALFORMED, Rejected

EXAMPLE = Path(__file__).resolve().parent.parent / "data" / "catalog.yaml"
MONTH = "2026-10"


@pytest.fixture(scope="module")
def catalog_doc() -> dict[str, Any]:
    return generate_catalog(60, seed=11)


@pytest.fixture(scope="module")
def catalog(catalog_doc: dict[str, Any]) -> Catalog:
    return parse_catalog(catalog_doc, source="generated")


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _no_float(text: str) -> Any:
    raise AssertionError(f"a JSON number with a fraction: {text}")


# --------------------------------------------------------------------------- catalog


def test_catalog_is_deterministic() -> None:
    assert generate_catalog(25, seed=3) == generate_catalog(25, seed=3)
    assert generate_catalog(25, seed=3) != generate_catalog(25, seed=4)


@pytest.mark.parametrize(("accounts", "seed"), [(1, 0), (8, 1), (300, 2)])
def test_generated_catalog_is_valid(accounts: int, seed: int) -> None:
    doc = generate_catalog(accounts, seed)
    catalog = parse_catalog(doc, source="generated")
    assert len(catalog.accounts) == accounts
    # Decimal text everywhere, never a float; the document is plain JSON.
    assert not any(isinstance(value, float) for value in _walk(doc))
    assert json.loads(json.dumps(doc)) == doc


def test_every_account_has_a_contract_in_the_month(catalog: Catalog) -> None:
    first, following = period_bounds(MONTH)
    for account in catalog.accounts.values():
        assert any(
            contract.start < following and (contract.end is None or contract.end > first)
            for contract in account.contracts
        ), account.id


def test_catalog_covers_the_product_mix(catalog: Catalog) -> None:
    first, following = period_bounds(MONTH)
    plans = catalog.plans.values()
    charges = [charge for plan in plans for charge in plan.charges]
    accounts = list(catalog.accounts.values())
    contracts = [contract for account in accounts for contract in account.contracts]
    assert {plan.currency for plan in plans} == {"EUR", "USD", "GBP", "JPY"}
    assert {plan.rounding for plan in plans} == {"half_even", "half_up"}
    assert {charge.model for charge in charges} == {"flat", "graduated", "volume", "package"}
    assert {"Pacific/Auckland", "America/New_York", "Asia/Tokyo"} <= {a.timezone for a in accounts}
    used_currencies = {catalog.plans[c.plan_id].currency for c in contracts}
    assert {"EUR", "USD", "GBP", "JPY"} <= used_currencies
    assert any(charge.included for charge in charges if charge.model == "graduated")
    assert any(charge.filters.attributes.get("region") for charge in charges)
    assert any(charge.filters.local_time and charge.filters.destination_prefixes for charge in charges)
    assert any(charge.rounding for charge in charges)
    assert catalog.meters["active_users"].aggregation == "unique_count"
    assert catalog.meters["voice"].source_unit == "second"
    assert all(plan.recurring for plan in plans)
    assert any(contract.minimum_commitment for contract in contracts)
    assert any(contract.discount_percent for contract in contracts)
    assert any(first <= item.date < following for contract in contracts for item in contract.one_time)
    # Contracts starting mid-month, and plan or contract changes inside the month.
    assert any(first < contract.start < following for contract in contracts)
    assert any(
        sum(1 for c in account.contracts if c.start < following and (c.end is None or c.end > first)) > 1
        for account in accounts
    )


# --------------------------------------------------------------------------- events


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


def test_generated_catalog_survives_a_yaml_file(tmp_path: Path, catalog_doc: dict[str, Any]) -> None:
    """`meterline demo` writes the generated catalog as YAML and loads it back."""
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog_doc, sort_keys=False))
    assert load_catalog(path) == parse_catalog(catalog_doc)

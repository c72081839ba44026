"""The generated catalog: valid, deterministic, every feature of the contract model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from generator.catalog import generate_catalog
from meterline.kernel.catalog import Catalog, period_bounds
from meterline.kernel.catalog_file import load_catalog, parse_catalog
from tests.generator.conftest import MONTH


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


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


def test_no_accounts_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        generate_catalog(0, seed=1)


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


def test_generated_catalog_survives_a_yaml_file(tmp_path: Path, catalog_doc: dict[str, Any]) -> None:
    """`meterline demo` writes the generated catalog as YAML and loads it back."""
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog_doc, sort_keys=False))
    assert load_catalog(path) == parse_catalog(catalog_doc)

"""The generated plans: one SaaS starter, SaaS pro and telecom plan per currency, prices
scaled exactly from EUR."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from generator.plans import CURRENCIES, amount, meters, plans
from meterline.kernel.catalog_file import parse_catalog


def test_three_plans_per_currency_with_unique_ids() -> None:
    documents = plans()
    assert Counter(plan["currency"] for plan in documents) == dict.fromkeys(CURRENCIES, 3)
    assert len({plan["id"] for plan in documents}) == len(documents)
    charge_ids = [charge["id"] for plan in documents for charge in plan["charges"]]
    assert len(set(charge_ids)) == len(charge_ids)


def test_plans_are_a_valid_catalog_on_their_meters() -> None:
    catalog = parse_catalog({"meters": meters(), "plans": plans(), "accounts": []}, source="plans")
    assert {charge.meter for plan in catalog.plans.values() for charge in plan.charges} == set(catalog.meters)


def test_amounts_are_scaled_exactly_to_minor_units() -> None:
    assert amount("499", "EUR") == "499.00"
    assert amount("15", "USD") == "16.50"
    assert amount("49", "GBP") == "44.10"
    assert amount("499", "JPY") == "74850"  # no minor units


def test_unit_prices_are_decimal_text_scaled_from_eur() -> None:
    by_currency = {plan["currency"]: plan for plan in plans() if plan["id"].startswith("saas-pro-")}
    eur = by_currency["EUR"]["charges"][0]["tiers"][0]["unit_price"]
    usd = by_currency["USD"]["charges"][0]["tiers"][0]["unit_price"]
    assert isinstance(usd, str)
    assert Decimal(usd) == Decimal(eur) * Decimal("1.1")

"""The one ISO 4217 table: catalog validation and invoice rounding agree on it."""

from __future__ import annotations

import pytest

import consolidation.currency
from meterline.kernel import currency
from meterline.kernel.catalog_file import CatalogError, parse_catalog


def test_consolidation_uses_the_kernel_table() -> None:
    assert consolidation.currency.MINOR_UNITS is currency.MINOR_UNITS
    assert consolidation.currency.UnknownCurrencyError is currency.UnknownCurrencyError
    assert consolidation.currency.minor_units is currency.minor_units


def test_every_code_the_validator_accepts_can_be_rounded() -> None:
    for code in currency.MINOR_UNITS:
        assert currency.is_currency(code)
        assert 0 <= currency.minor_units(code) <= 4


@pytest.mark.parametrize("code", ["XAU", "XAG", "XDR", "XTS", "XXX", "eur", ""])
def test_codes_without_minor_units_are_not_currencies(code: str) -> None:
    assert not currency.is_currency(code)


def test_unknown_currency_error_names_the_code() -> None:
    with pytest.raises(currency.UnknownCurrencyError, match="'XAU'"):
        currency.minor_units("XAU")


def test_validator_refuses_what_rounding_would_refuse() -> None:
    document = {
        "meters": [{"code": "gold", "unit": "gram", "aggregation": "sum"}],
        "plans": [
            {
                "id": "p",
                "currency": "XAU",
                "charges": [{"id": "c", "meter": "gold", "model": "flat", "unit_price": "1"}],
            }
        ],
        "accounts": [],
    }
    with pytest.raises(CatalogError, match=r"^inline: plans\[0\]\.currency: 'XAU' is not an ISO 4217"):
        parse_catalog(document, source="inline")

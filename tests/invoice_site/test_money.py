"""Amounts per currency and locale, with exactly the currency's ISO 4217 minor units."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from invoice_site.money import Formatter

NBSP = "\xa0"


@pytest.mark.parametrize(
    ("locale", "currency", "stored", "shown"),
    [
        ("de", "EUR", "1234.5600", f"1.234,56{NBSP}€"),
        ("en_US", "USD", "1234.5600", "$1,234.56"),
        ("en", "JPY", "2202122.0000", "¥2,202,122"),
        ("en", "BHD", "1234.5670", "BHD1,234.567"),
        ("de", "BHD", "0.0050", f"0,005{NBSP}BHD"),
        ("en", "EUR", "-82.4000", "-€82.40"),
        ("en", "CLF", "1.2345", "CLF1.2345"),  # 4 minor units
    ],
)
def test_stored_amounts_with_the_currency_minor_units(
    locale: str, currency: str, stored: str, shown: str
) -> None:
    assert Formatter(locale, currency).money(Decimal(stored)) == shown


def test_iso_minor_units_win_over_cldr_digits() -> None:
    # CLDR writes IQD with 0 digits; ISO 4217 (and the invoice) has 3.
    assert Formatter("en", "IQD").money(Decimal("5.1230")) == "IQD5.123"


def test_an_amount_is_never_rounded_for_display() -> None:
    # Not an invoice amount (more digits than the currency has): every digit is shown.
    assert Formatter("en", "EUR").money(Decimal("2.505")) == "€2.505"
    assert Formatter("en", "JPY").money(Decimal("2202121.5")) == "¥2,202,121.5"


def test_exact_values_keep_every_digit_and_at_least_the_minor_units() -> None:
    fmt = Formatter("de", "EUR")
    assert fmt.exact(Decimal("0.000500000000000000")) == f"0,0005{NBSP}€"
    assert fmt.exact(Decimal("8")) == f"8,00{NBSP}€"
    assert fmt.number(Decimal("149000.500000000000000000")) == "149.000,5"
    assert fmt.number(Decimal("0E-18")) == "0"
    assert fmt.number(Decimal("1E+5")) == "100.000"


def test_dates_and_instants_in_the_locale_and_zone() -> None:
    assert Formatter("de", "EUR").day(date(2026, 12, 31)) == "31.12.2026"
    assert Formatter("en_US", "USD").day(date(2026, 12, 31)) == "Dec 31, 2026"
    instant = datetime(2026, 12, 3, 9, 15, tzinfo=UTC)
    assert Formatter("de", "EUR").instant(instant, "Europe/Berlin") == "03.12.2026, 10:15:00 (Europe/Berlin)"

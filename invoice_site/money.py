"""Amounts, numbers and dates as the account's locale writes them (Babel, CLDR data).

Invoice amounts are shown with exactly the currency's ISO 4217 minor units (CLDR's own
digits differ for a few currencies): a stored amount is already rounded to them, so
the text is the stored value, never a re-rounded one. Exact values (unit prices,
quantities, rated amounts) keep every significant digit.
"""

from __future__ import annotations

import copy
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.numbers import NumberPattern, format_decimal, parse_pattern

from meterline.kernel.currency import minor_units

__all__ = ["Formatter"]


@lru_cache(maxsize=64)
def _locale(name: str) -> Locale:
    return Locale.parse(name)


@lru_cache(maxsize=256)
def _pattern(locale: str, low: int, high: int) -> NumberPattern:
    pattern = copy.copy(parse_pattern(_locale(locale).currency_formats["standard"]))
    pattern.frac_prec = (low, high)
    return pattern


# Memoised: quantities, prices and days recur across a site's pages. The text depends on
# the value only (never on its trailing zeros: the callers fix the digits shown), and on the
# sign of a zero, which equal keys would not tell apart.
@lru_cache(maxsize=1 << 16)
def _currency(amount: Decimal, signed: bool, locale: str, currency: str, low: int, high: int) -> str:
    pattern = _pattern(locale, low, high)
    return str(pattern.apply(amount, _locale(locale), currency=currency, currency_digits=False))


@lru_cache(maxsize=1 << 16)
def _number(value: Decimal | int, locale: str) -> str:  # zero is normalized unsigned first
    return str(format_decimal(value, locale=_locale(locale), decimal_quantization=False))


@lru_cache(maxsize=4096)
def _day(value: date, locale: str) -> str:
    """A date as the locale writes it (the days of a month recur on every account's pages)."""
    return str(format_date(value, format="medium", locale=_locale(locale)))


def _places(value: Decimal) -> int:
    """Significant decimal places of a finite value (trailing zeros do not count)."""
    exponent = value.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(-exponent, 0)


class Formatter:
    """Formats for one account's locale and one invoice's currency."""

    def __init__(self, locale: str, currency: str) -> None:
        self.locale = locale
        # Babel parses a locale given by name on every call: a site formats ~10^5 values.
        self._babel = _locale(locale)
        self.currency = currency
        self.digits = minor_units(currency)

    def money(self, amount: Decimal) -> str:
        """A stored invoice amount: the currency's minor units, or more digits if it has them."""
        digits = max(self.digits, _places(amount))
        return self._currency(amount, digits, digits)

    def exact(self, amount: Decimal) -> str:
        """An exact amount (unit price, rated amount): at least the minor units, every digit kept."""
        return self._currency(amount, self.digits, max(self.digits, _places(amount)))

    def _currency(self, amount: Decimal, low: int, high: int) -> str:
        return _currency(amount, amount.is_signed(), self.locale, self.currency, low, high)

    def number(self, value: Decimal | int) -> str:
        if isinstance(value, Decimal):
            value = value.normalize() if value else Decimal(0)
        return _number(value, self.locale)

    def day(self, value: date) -> str:
        return _day(value, self.locale)

    def instant(self, value: datetime, zone: str) -> str:
        text = format_datetime(value, format="medium", tzinfo=ZoneInfo(zone), locale=self._babel)
        return f"{text} ({zone})"

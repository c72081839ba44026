"""ISO 4217 minor units and exact money rounding."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consolidation.currency import (
    MINOR_UNITS,
    UnknownCurrencyError,
    minor_units,
    round_money,
    round_money_ratio,
)
from meterline.kernel.catalog import RoundingMode

D = Decimal


@pytest.mark.parametrize(
    ("decimals", "codes"),
    [
        (2, "EUR USD GBP CHF SEK NOK DKK PLN CZK CAD AUD NZD CNY INR BRL ZAR MXN"),
        (0, "JPY KRW ISK CLP VND"),
        (3, "BHD KWD JOD OMR TND IQD LYD"),
    ],
)
def test_minor_units_table(decimals: int, codes: str) -> None:
    for code in codes.split():
        assert minor_units(code) == decimals, code


def test_codes_are_case_insensitive() -> None:
    assert minor_units("eur") == 2
    assert minor_units("jpy") == 0


@pytest.mark.parametrize("code", ["XYZ", "", "EURO", "XAU", "XDR"])
def test_unknown_currency_is_an_error_not_two_decimals(code: str) -> None:
    with pytest.raises(UnknownCurrencyError, match="unknown currency") as raised:
        minor_units(code)
    assert raised.value.currency == code
    # Callers that only know ValueError still catch it.
    assert isinstance(raised.value, ValueError)
    with pytest.raises(UnknownCurrencyError):
        round_money(D("1.00"), code, "half_even")


def test_table_holds_only_known_exponents() -> None:
    assert set(MINOR_UNITS.values()) <= {0, 2, 3, 4}
    assert all(len(code) == 3 and code.isupper() for code in MINOR_UNITS)


@pytest.mark.parametrize(
    ("amount", "currency", "mode", "expected"),
    [
        # Ties: half_even goes to the even neighbour, half_up away from zero.
        ("2.345", "EUR", "half_even", "2.34"),
        ("2.345", "EUR", "half_up", "2.35"),
        ("2.355", "EUR", "half_even", "2.36"),
        ("2.355", "EUR", "half_up", "2.36"),
        ("-2.345", "EUR", "half_even", "-2.34"),
        ("-2.345", "EUR", "half_up", "-2.35"),
        # Not ties: both modes agree.
        ("2.3449999", "EUR", "half_up", "2.34"),
        ("2.3450001", "EUR", "half_even", "2.35"),
        # Zero decimals.
        ("1234.5", "JPY", "half_even", "1234"),
        ("1235.5", "JPY", "half_even", "1236"),
        ("1234.5", "JPY", "half_up", "1235"),
        ("0.4", "KRW", "half_up", "0"),
        # Three decimals.
        ("12.3455", "BHD", "half_even", "12.346"),
        ("12.3465", "BHD", "half_even", "12.346"),
        ("12.3455", "BHD", "half_up", "12.346"),
        ("7", "KWD", "half_even", "7.000"),
        # Already in minor units, or padded up to them.
        ("10", "EUR", "half_even", "10.00"),
        ("0", "EUR", "half_up", "0.00"),
    ],
)
def test_round_money(amount: str, currency: str, mode: RoundingMode, expected: str) -> None:
    # Compared as text: the exponent (EUR .00, JPY none, BHD .000) is part of the result.
    assert str(round_money(D(amount), currency, mode)) == expected


def test_no_negative_zero() -> None:
    assert str(round_money(D("-0.001"), "EUR", "half_up")) == "0.00"
    assert not round_money(D("-0.004"), "EUR", "half_even").is_signed()


def test_exact_beyond_28_digits() -> None:
    # The default Decimal context would round this 37-digit value at 28 digits.
    amount = D("1234567890123456789012345678901234.565")
    assert str(round_money(amount, "EUR", "half_even")) == "1234567890123456789012345678901234.56"
    assert str(round_money(amount, "EUR", "half_up")) == "1234567890123456789012345678901234.57"


def test_ratio_is_prorated_from_the_exact_value() -> None:
    # 499 × 15 / 31 = 241.451612903... -> 241.45
    assert str(round_money_ratio(D("7485"), 31, "EUR", "half_even")) == "241.45"
    # 100 × 1 / 8 = 12.5 (a true tie) -> JPY 12 (even) / 13 (up)
    assert str(round_money_ratio(D("100"), 8, "JPY", "half_even")) == "12"
    assert str(round_money_ratio(D("100"), 8, "JPY", "half_up")) == "13"


def test_ratio_has_no_double_rounding() -> None:
    # Exact value: 0.005 - 1e-40, just below a tie. A quotient first rounded to
    # 28 digits reads 0.005000... and half_up would give 0.01; the true answer is 0.00.
    numerator = Context(prec=100).subtract(D("0.015"), D("3E-40"))
    assert numerator < D("0.015")
    assert numerator / 3 == D("0.005")  # what the default context sees
    assert str(round_money_ratio(numerator, 3, "EUR", "half_up")) == "0.00"


def test_rejects_non_finite_bad_denominator_and_bad_mode() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        round_money(D("NaN"), "EUR", "half_even")
    with pytest.raises(ValueError, match="non-finite"):
        round_money(D("-Infinity"), "EUR", "half_even")
    with pytest.raises(ValueError, match="denominator"):
        round_money_ratio(D("1"), 0, "EUR", "half_even")
    with pytest.raises(ValueError, match="rounding mode"):
        round_money(D("1"), "EUR", "ceiling")  # type: ignore[arg-type]


_WIDE = Context(prec=200)


@given(
    amount=st.decimals(min_value=-(10**12), max_value=10**12, places=18, allow_nan=False),
    currency=st.sampled_from(["EUR", "JPY", "BHD", "CLF"]),
    mode=st.sampled_from(["half_even", "half_up"]),
)
def test_round_money_agrees_with_decimal_quantize(amount: Decimal, currency: str, mode: RoundingMode) -> None:
    # Decimal's ROUND_HALF_UP is "half away from zero", the meaning of half_up here.
    rounding = ROUND_HALF_EVEN if mode == "half_even" else ROUND_HALF_UP
    expected = amount.quantize(D(1).scaleb(-minor_units(currency)), rounding=rounding, context=_WIDE)
    rounded = round_money(amount, currency, mode)
    assert rounded == expected
    assert rounded.as_tuple().exponent == -minor_units(currency)

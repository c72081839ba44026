"""Unit conversion: exact factors, one half-even rounding to 18 places."""

from __future__ import annotations

from decimal import Context, Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.kernel.units import UNITS, ZERO, UnknownConversion, convert, is_convertible, quantize

# An oracle independent of the module's table: size of each unit in its dimension's base.
SIZES: dict[str, tuple[str, Fraction]] = {
    "millisecond": ("time", Fraction(1, 1000)),
    "second": ("time", Fraction(1)),
    "minute": ("time", Fraction(60)),
    "hour": ("time", Fraction(3600)),
    "day": ("time", Fraction(86400)),
    "byte": ("data", Fraction(1)),
    **{name: ("data", Fraction(10 ** (3 * i))) for i, name in enumerate(("KB", "MB", "GB", "TB", "PB"), 1)},
    **{
        name: ("data", Fraction(2 ** (10 * i)))
        for i, name in enumerate(("KiB", "MiB", "GiB", "TiB", "PiB"), 1)
    },
}
PAIRS = [(a, b) for a in SIZES for b in SIZES if SIZES[a][0] == SIZES[b][0]]


def exact(quantity: Decimal, source_unit: str, unit: str) -> Decimal:
    value = Fraction(quantity) * SIZES[source_unit][1] / SIZES[unit][1]
    # round() of a Fraction is half-even; the wide context keeps scaleb exact.
    return Decimal(round(value * 10**18)).scaleb(-18, Context(prec=100))


@pytest.mark.parametrize(
    ("quantity", "source_unit", "unit", "expected"),
    [
        ("125", "second", "minute", "2.083333333333333333"),
        ("90", "second", "minute", "1.5"),
        ("1", "second", "minute", "0.016666666666666667"),
        ("5400", "second", "hour", "1.5"),
        ("1", "second", "hour", "0.000277777777777778"),
        ("1500", "millisecond", "second", "1.5"),
        ("1", "millisecond", "minute", "0.000016666666666667"),
        ("30", "minute", "hour", "0.5"),
        ("1500", "byte", "KB", "1.5"),
        ("2500000000", "byte", "GB", "2.5"),
        ("1", "byte", "TB", "0.000000000001"),
        ("1536", "byte", "KiB", "1.5"),
        ("3221225472", "byte", "GiB", "3"),
        ("1", "byte", "TiB", "0.000000000000909495"),
        ("2500", "KB", "MB", "2.5"),
        ("1", "KB", "GB", "0.000001"),
        ("512", "MiB", "GiB", "0.5"),
        ("1", "hour", "second", "3600"),
        ("1000", "KiB", "KB", "1024"),
    ],
)
def test_conversion_table(quantity: str, source_unit: str, unit: str, expected: str) -> None:
    result = convert(Decimal(quantity), source_unit, unit)
    assert result == Decimal(expected)
    assert result.as_tuple().exponent == -18


def test_identity_rounds_to_18_places() -> None:
    assert convert(Decimal("12.5"), "call", "call") == Decimal("12.5")
    assert convert(Decimal("0.1234567890123456785"), "GB-hour", "GB-hour") == Decimal("0.123456789012345678")
    assert convert(Decimal("0.1234567890123456795"), "user", "user") == Decimal("0.123456789012345680")


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("0.0000000000000025", "0.000000000000000002"),  # 2.5e-18 s: tie, to even
        ("0.0000000000000035", "0.000000000000000004"),  # 3.5e-18 s: tie, to even
        ("0.0000000000000026", "0.000000000000000003"),
        ("-0.0000000000000025", "-0.000000000000000002"),
    ],
)
def test_rounding_is_half_even(quantity: str, expected: str) -> None:
    assert convert(Decimal(quantity), "millisecond", "second") == Decimal(expected)


def test_zero_is_unsigned() -> None:
    for result in (
        convert(Decimal("-0"), "second", "minute"),
        convert(Decimal("-1E-30"), "second", "minute"),
        quantize(Decimal("-0.0000000000000000001")),
    ):
        assert result == 0
        assert result.as_tuple() == ZERO.as_tuple()


def test_hostile_exponents_stay_cheap() -> None:
    assert convert(Decimal("1E-999999999999"), "byte", "PB") == 0
    assert convert(Decimal("1E-999999999999"), "PiB", "byte") == 0
    assert quantize(Decimal("1E-999999999999")) == 0


@pytest.mark.parametrize("quantity", ["NaN", "Infinity", "-Infinity", "1E+70"])
def test_unconvertible_quantities_raise_value_error(quantity: str) -> None:
    with pytest.raises(ValueError):
        convert(Decimal(quantity), "second", "minute")
    with pytest.raises(ValueError):
        quantize(Decimal(quantity) * Decimal("1E+20"))


@pytest.mark.parametrize(
    ("source_unit", "unit"), [("second", "GB"), ("second", "GB-hour"), ("call", "message")]
)
def test_unknown_conversion(source_unit: str, unit: str) -> None:
    assert not is_convertible(source_unit, unit)
    with pytest.raises(UnknownConversion, match=f"no known conversion from '{source_unit}' to '{unit}'"):
        convert(Decimal(1), source_unit, unit)


def test_is_convertible_within_each_dimension() -> None:
    assert set(UNITS) == set(SIZES)
    for source_unit in SIZES:
        for unit in SIZES:
            assert is_convertible(source_unit, unit) == (SIZES[source_unit][0] == SIZES[unit][0])
    assert is_convertible("GB-hour", "GB-hour")


@given(
    pair=st.sampled_from(PAIRS),
    quantity=st.decimals(min_value=0, max_value=10**12, places=18, allow_nan=False, allow_infinity=False)
    | st.decimals(min_value=0, max_value=10**6, allow_nan=False, allow_infinity=False),
)
def test_conversion_is_exact_then_rounded_once(pair: tuple[str, str], quantity: Decimal) -> None:
    source_unit, unit = pair
    assert convert(quantity, source_unit, unit) == exact(quantity, source_unit, unit)

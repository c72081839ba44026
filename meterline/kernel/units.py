"""Unit conversion of usage quantities (a meter's `source_unit` → its `unit`).

Factors are exact ratios of integers and every result is rounded once, half-even,
to the 18 decimal places that quantities keep (docs/catalog.md). Only units of the
same dimension convert; anything else is an `UnknownConversion`, which the
catalog loader reports through `is_convertible` before a catalog goes live.
"""

from __future__ import annotations

from decimal import MAX_EMAX, MIN_EMIN, ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Final

PLACES: Final = 18
ZERO: Final = Decimal(0).scaleb(-PLACES)

# Size of each unit in the smallest unit of its dimension, so any two units of a
# dimension convert by an exact integer ratio.
_SIZES: Final[dict[str, tuple[str, int]]] = {
    "millisecond": ("time", 1),
    "second": ("time", 1_000),
    "minute": ("time", 60_000),
    "hour": ("time", 3_600_000),
    "day": ("time", 86_400_000),
    "byte": ("data", 1),
    "KB": ("data", 10**3),
    "MB": ("data", 10**6),
    "GB": ("data", 10**9),
    "TB": ("data", 10**12),
    "PB": ("data", 10**15),
    "KiB": ("data", 2**10),
    "MiB": ("data", 2**20),
    "GiB": ("data", 2**30),
    "TiB": ("data", 2**40),
    "PiB": ("data", 2**50),
}

UNITS: Final = tuple(_SIZES)

# (source_unit, unit) -> (numerator, denominator) of the factor, for every
# ordered pair of distinct units of one dimension.
_RATIOS: Final[dict[tuple[str, str], tuple[int, int]]] = {
    (source, target): (source_size, target_size)
    for source, (source_dim, source_size) in _SIZES.items()
    for target, (target_dim, target_size) in _SIZES.items()
    if source != target and source_dim == target_dim
}

# Beyond these magnitudes no storable quantity can come out (the largest factor is
# 2^50 < 10^16, and storage keeps 20 integer digits), so the exact arithmetic below
# never has to build huge integers from a hostile exponent.
_LARGEST_ADJUSTED: Final = 60
_NEGLIGIBLE_ADJUSTED: Final = -40

# 100 digits: quantize() is exact below 10^82 and traps above; convert()'s quotients
# (below 10^61 * 2^50 * 10^18) always fit.
_CONTEXT: Final = Context(
    prec=100, rounding=ROUND_HALF_EVEN, Emin=MIN_EMIN, Emax=MAX_EMAX, traps=[InvalidOperation]
)
_STEP: Final = Decimal(1).scaleb(-PLACES)
_SCALE: Final = 10**PLACES


class UnknownConversion(ValueError):
    """No conversion is known between two units."""

    def __init__(self, source_unit: str, unit: str) -> None:
        super().__init__(f"no known conversion from {source_unit!r} to {unit!r}")
        self.source_unit = source_unit
        self.unit = unit


def is_convertible(source_unit: str, unit: str) -> bool:
    """Whether `convert(q, source_unit, unit)` is defined (identity included)."""
    return source_unit == unit or (source_unit, unit) in _RATIOS


def quantize(quantity: Decimal) -> Decimal:
    """Round half-even to 18 places; zero comes out unsigned.

    Raises `ValueError` for a quantity that is not finite or not below 10^82.
    """
    if not quantity.is_finite():
        raise ValueError(f"quantity {quantity} is not finite")
    try:
        result = _CONTEXT.quantize(quantity, _STEP)
    except InvalidOperation:  # trapped: more digits than the context holds
        raise ValueError(f"quantity {quantity} is out of range") from None
    return result if result else ZERO


def convert(quantity: Decimal, source_unit: str, unit: str) -> Decimal:
    """`quantity` in `source_unit` expressed in `unit`, rounded half-even to 18 places.

    Raises `UnknownConversion` for units of different (or unknown) dimensions, and
    `ValueError` for a quantity that is not finite or not below 10^61.
    """
    if source_unit == unit:
        return quantize(quantity)
    ratio = _RATIOS.get((source_unit, unit))
    if ratio is None:
        raise UnknownConversion(source_unit, unit)
    _check_range(quantity)
    if quantity.adjusted() < _NEGLIGIBLE_ADJUSTED:
        return ZERO
    # Exact rational arithmetic: quantity * num / den scaled to 18 places, then one
    # half-even rounding of the integer quotient (floor division keeps 0 <= rest < den).
    numerator, denominator = quantity.as_integer_ratio()
    dividend = numerator * ratio[0] * _SCALE
    divisor = denominator * ratio[1]
    quotient, rest = divmod(dividend, divisor)
    if 2 * rest > divisor or (2 * rest == divisor and quotient % 2 == 1):
        quotient += 1
    if quotient == 0:
        return ZERO
    return Decimal(quotient).scaleb(-PLACES, context=_CONTEXT)


def _check_range(quantity: Decimal) -> None:
    if not quantity.is_finite():
        raise ValueError(f"quantity {quantity} is not finite")
    if quantity and quantity.adjusted() > _LARGEST_ADJUSTED:
        raise ValueError(f"quantity {quantity} is out of range")

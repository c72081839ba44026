"""Money rounding to ISO 4217 minor units.

Invoice lines are the only rounded values in meterline (docs/catalog.md): exact
amounts stay `Decimal` with 18 places until an invoice line is made, then are
rounded to the currency's minor units with the plan's rounding mode. Rounding
here is exact: a value given as a ratio (a prorated fee: amount × days / days
in the month) is rounded from the true rational value, never from a quotient
truncated at some precision first, so no double rounding can move a cent.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Final

from meterline.kernel.catalog import RoundingMode
from meterline.kernel.currency import MINOR_UNITS, UnknownCurrencyError, minor_units

# The ISO 4217 table itself lives in the kernel (meterline.kernel.currency), shared with
# catalog validation, so a catalog that validates can always be invoiced.

__all__ = [
    "MINOR_UNITS",
    "UnknownCurrencyError",
    "minor_units",
    "round_money",
    "round_money_ratio",
]


# quantize() rounds exactly once, in C; the precision only has to hold the result's digits.
_QUANTIZE: Final = {
    "half_even": Context(prec=1000, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation]),
    "half_up": Context(prec=1000, rounding=ROUND_HALF_UP, traps=[InvalidOperation]),  # ties away from 0
}
_QUANTUM: Final = {decimals: Decimal(1).scaleb(-decimals) for decimals in range(5)}


def round_money(amount: Decimal, currency: str, mode: RoundingMode) -> Decimal:
    """Round an exact amount to the currency's minor units (half_even or half_up, away from zero)."""
    if not amount.is_finite():
        raise ValueError(f"cannot round a non-finite amount: {amount}")
    context = _QUANTIZE.get(mode)
    if context is None:
        raise ValueError(f"unknown rounding mode {mode!r}")
    rounded = amount.quantize(_QUANTUM[minor_units(currency)], context=context)
    return rounded if rounded else rounded.copy_abs()  # never a negative zero


def round_money_ratio(numerator: Decimal, denominator: int, currency: str, mode: RoundingMode) -> Decimal:
    """Round the exact value `numerator / denominator` to the currency's minor units.

    Works on integers, so the result is the correctly rounded true quotient
    whatever its length (a fee prorated over 31 days never terminates).
    The result has exactly the currency's exponent (JPY `Decimal("12")`,
    EUR `Decimal("12.30")`) and is never a negative zero.
    """
    if not numerator.is_finite():
        raise ValueError(f"cannot round a non-finite amount: {numerator}")
    if denominator <= 0:
        raise ValueError(f"denominator must be positive, got {denominator}")
    if mode not in ("half_even", "half_up"):
        raise ValueError(f"unknown rounding mode {mode!r}")
    decimals = minor_units(currency)
    # numerator = num / den exactly; the value in minor units is num * 10^d / (den * denominator).
    num, den = numerator.as_integer_ratio()
    minor = _round_quotient(num * 10**decimals, den * denominator, mode)
    # Built from text, not scaleb(): context arithmetic would round past 28 digits.
    return Decimal(f"{minor}E-{decimals}")


def _round_quotient(dividend: int, divisor: int, mode: RoundingMode) -> int:
    """Round dividend / divisor (divisor > 0) to an integer; ties per `mode`, symmetric around zero."""
    negative = dividend < 0
    quotient, remainder = divmod(abs(dividend), divisor)
    twice = 2 * remainder
    if twice > divisor or (twice == divisor and (mode == "half_up" or quotient % 2 == 1)):
        quotient += 1
    return -quotient if negative else quotient

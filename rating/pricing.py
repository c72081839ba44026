"""Pricing models (docs/catalog.md): the price of a charge's aggregate, and per-event rounding.

Pure and exact. Every operation runs in a private 80-digit decimal context that
traps `Inexact`, so arithmetic either is exact or fails loudly; the only rounding
is the final half-even quantization of a price to 18 decimal places. The default
28-digit context would silently round products of 18-place values.

This is the hot path of rating (two calls per event), so a charge's tier table is
turned once into a `PriceSchedule` (lower bounds and the cumulative graduated
price at each tier's start) and a price lookup is a binary search plus a few
multiplications.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)

from meterline.kernel.catalog import Charge, EventRounding, PricingModel, Tier

# Exact arithmetic: 80 digits hold any product of two 18-place amounts up to
# 10^40, and trapping Inexact turns an impossible rounding into an error.
_EXACT = Context(
    prec=80, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact]
)
# The one sanctioned rounding: a price to 18 places, half-even.
_ROUND = Context(prec=80, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])
PRICE_EXPONENT = Decimal("1e-18")
ZERO = Decimal(0)
_ZERO_PRICE = ZERO.quantize(PRICE_EXPONENT)


@dataclass(frozen=True, slots=True)
class PriceSchedule:
    """A charge's pricing, precomputed for repeated `price()` calls.

    `uppers` holds the inclusive upper bounds of every tier but the last (which
    is open, whatever its `up_to` says); `lowers[i]` is the exclusive lower bound
    of tier i; `graduated_base[i]` is the graduated price of exactly `lowers[i]`
    units (all earlier tiers full, their flat fees included).
    """

    charge_id: str
    model: PricingModel
    included: Decimal
    unit_price: Decimal
    package_size: Decimal
    package_price: Decimal
    tiers: tuple[Tier, ...]
    uppers: tuple[Decimal, ...]
    lowers: tuple[Decimal, ...]
    graduated_base: tuple[Decimal, ...]

    @classmethod
    def of(cls, charge: Charge) -> PriceSchedule:
        """Build a schedule, checking the fields its model needs (ValueError otherwise)."""
        unit_price = package_size = package_price = ZERO
        uppers: list[Decimal] = []
        lowers: list[Decimal] = []
        bases: list[Decimal] = []
        if charge.model == "flat":
            unit_price = _required(charge, "unit_price", charge.unit_price)
        elif charge.model == "package":
            package_size = _required(charge, "package_size", charge.package_size)
            package_price = _required(charge, "package_price", charge.package_price)
            if package_size <= 0:
                raise ValueError(f"charge {charge.id!r}: package_size must be positive")
        elif charge.model in ("graduated", "volume"):
            if not charge.tiers:
                raise ValueError(f"charge {charge.id!r}: model {charge.model} needs tiers")
            lower = base = ZERO
            for index, tier in enumerate(charge.tiers):
                lowers.append(lower)
                bases.append(base)
                if index == len(charge.tiers) - 1:
                    break
                if tier.up_to is None or tier.up_to <= lower:
                    raise ValueError(
                        f"charge {charge.id!r}: tier {index + 1} needs an up_to above {lower}"
                        " (only the last tier is open)"
                    )
                width = _EXACT.subtract(tier.up_to, lower)
                base = _EXACT.add(base, _EXACT.add(_EXACT.multiply(width, tier.unit_price), tier.flat_fee))
                uppers.append(tier.up_to)
                lower = tier.up_to
        else:
            raise ValueError(f"charge {charge.id!r}: unknown pricing model {charge.model!r}")
        return cls(
            charge_id=charge.id,
            model=charge.model,
            included=charge.included,
            unit_price=unit_price,
            package_size=package_size,
            package_price=package_price,
            tiers=charge.tiers,
            uppers=tuple(uppers),
            lowers=tuple(lowers),
            graduated_base=tuple(bases),
        )

    def price(self, aggregate: Decimal) -> Decimal:
        """The price of an aggregate A, rounded half-even to 18 places."""
        billable = _EXACT.subtract(aggregate, self.included)
        if billable <= 0:
            # B = max(A - I, 0) and every model prices B = 0 at zero.
            return _ZERO_PRICE
        model = self.model
        if model == "flat":
            exact = _EXACT.multiply(billable, self.unit_price)
        elif model == "package":
            packages, remainder = _EXACT.divmod(billable, self.package_size)
            if remainder:
                packages = _EXACT.add(packages, 1)
            exact = _EXACT.multiply(packages, self.package_price)
        else:
            # The tier containing B: lower < B <= upper (bisect_left: first upper >= B).
            index = bisect_left(self.uppers, billable)
            tier = self.tiers[index]
            if model == "graduated":
                in_tier = _EXACT.subtract(billable, self.lowers[index])
                exact = _EXACT.add(
                    self.graduated_base[index],
                    _EXACT.add(_EXACT.multiply(in_tier, tier.unit_price), tier.flat_fee),
                )
            else:  # volume
                exact = _EXACT.add(_EXACT.multiply(billable, tier.unit_price), tier.flat_fee)
        return _ROUND.quantize(exact, PRICE_EXPONENT)


def _required(charge: Charge, name: str, value: Decimal | None) -> Decimal:
    if value is None:
        raise ValueError(f"charge {charge.id!r}: model {charge.model} needs {name}")
    return value


# Schedules keyed by id(charge). Each entry keeps its charge alive, so the id
# cannot be reused while cached; the identity check guards against a stale hit.
# Charges are not hashable (their filters hold a dict), hence no lru_cache.
_SCHEDULES: dict[int, tuple[Charge, PriceSchedule]] = {}
# Catalog updates replace Charge objects; a bound keeps old ones from piling up.
_SCHEDULE_CACHE_LIMIT = 4096


def schedule_for(charge: Charge) -> PriceSchedule:
    """The cached `PriceSchedule` of a charge object."""
    entry = _SCHEDULES.get(id(charge))
    if entry is not None and entry[0] is charge:
        return entry[1]
    schedule = PriceSchedule.of(charge)
    if len(_SCHEDULES) >= _SCHEDULE_CACHE_LIMIT:
        _SCHEDULES.clear()
    _SCHEDULES[id(charge)] = (charge, schedule)
    return schedule


def price(charge: Charge, aggregate: Decimal) -> Decimal:
    """The price of a charge's aggregate A (docs/catalog.md), exact to 18 places.

    With included units I, B = max(A - I, 0); tiers cover (previous up_to, up_to].
    flat: B * unit_price. graduated: each unit at its tier's price plus the
    flat_fee of every entered tier. volume: all of B at the tier containing B plus
    its flat_fee. package: ceil(B / package_size) * package_price.
    """
    return schedule_for(charge).price(aggregate)


def add_quantity(aggregate: Decimal, quantity: Decimal) -> Decimal:
    """aggregate + quantity, exactly (the default 28-digit context would round)."""
    return _EXACT.add(aggregate, quantity)


def price_difference(after: Decimal, before: Decimal) -> Decimal:
    """A rated amount, price(after) - price(before), exactly (prices can exceed 28 digits)."""
    return _EXACT.subtract(after, before)


def round_event_quantity(rounding: EventRounding | None, quantity: Decimal) -> Decimal:
    """Per-event rounding: q > 0 becomes max(minimum, ceil(q / increment) * increment)."""
    if rounding is None or quantity <= 0:
        return quantity
    steps, remainder = _EXACT.divmod(quantity, rounding.increment)
    if remainder:
        steps = _EXACT.add(steps, 1)
    rounded = _EXACT.multiply(steps, rounding.increment)
    return max(rounded, rounding.minimum)

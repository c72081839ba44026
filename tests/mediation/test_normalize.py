"""Validation limits of mediation.normalize, in every input format: the storable quantity
(below 10^20 after unit conversion)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from mediation.formats import parse_record
from meterline.kernel.catalog import Meter
from meterline.kernel.reasons import INVALID_QUANTITY, Rejected
from tests.mediation.test_formats import cloudevent, lago, native, parse, rejection

TRANSFER = {"transfer": Meter("transfer", "GB", "sum", source_unit="byte")}


def quantity_of(quantity: object, meters: dict[str, Meter]) -> Decimal:
    raw = json.dumps(native(meter="transfer", quantity=quantity)).encode()
    return parse_record(raw, "json", meters, datetime(2026, 3, 31, tzinfo=UTC)).quantity


def test_the_maximum_applies_after_unit_conversion() -> None:
    # 10^21 bytes is 10^12 GB: storable, though the figure sent is not.
    assert quantity_of("1000000000000000000000", TRANSFER) == Decimal(10) ** 12
    assert quantity_of("99999999999999999999999999999", TRANSFER) == Decimal("99999999999999999999.999999999")
    for too_large in ("100000000000000000000000000000", "1e40", "1e400", 10**61):
        with pytest.raises(Rejected) as caught:
            quantity_of(too_large, TRANSFER)
        assert caught.value.reason == INVALID_QUANTITY
        assert "once converted to GB" in caught.value.detail


@pytest.mark.parametrize(
    "quantity", ["100000000000000000000", "99999999999999999999.9999999999999999995", "1e20"]
)
def test_a_quantity_reaching_ten_to_the_twenty_is_invalid(quantity: str) -> None:
    # The last one rounds up to 10^20 at 18 places.
    assert rejection(native(quantity=quantity)).reason == INVALID_QUANTITY
    assert rejection(cloudevent(data={"quantity": quantity})).reason == INVALID_QUANTITY
    assert rejection(lago(properties={"quantity": quantity})).reason == INVALID_QUANTITY


def test_the_largest_storable_quantity_is_valid() -> None:
    largest = "99999999999999999999.999999999999999999"
    assert parse(native(quantity=largest)).quantity == Decimal(largest)


@pytest.mark.parametrize("literal", [b"-1E-999999999", b"-1e-400", b"-4.9e-325"])
def test_a_negative_quantity_that_underflows_a_double_is_still_negative(literal: bytes) -> None:
    # orjson reads these as -0.0; the literal is negative, hence invalid.
    for record in (native(quantity=0), lago(properties={"quantity": 0})):
        raw = json.dumps(record).replace('"quantity": 0', '"quantity": ' + literal.decode()).encode()
        found = rejection(raw)
        assert (found.reason, "negative" in found.detail) == (INVALID_QUANTITY, True)


def test_negative_zero_is_zero() -> None:
    assert parse(json.dumps(native(quantity=0)).replace('"quantity": 0', '"quantity": -0.0')).quantity == 0


@pytest.mark.parametrize("depth", [50, 900])
def test_a_deeply_nested_quantity_is_invalid_not_an_internal_error(depth: int) -> None:
    nested = "[" * depth + "1" + "]" * depth
    raw = json.dumps(native(quantity=0)).replace('"quantity": 0', '"quantity": ' + nested)
    found = rejection(raw)
    assert found.reason == INVALID_QUANTITY
    assert len(found.detail) < 100

"""Reading a schema-valid catalog document's values: decimals, dates and clock times,
with the limits the JSON Schema cannot express; a problem is a CatalogError naming
the path inside the document."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, time
from decimal import Decimal
from typing import Any, Final, NoReturn

from meterline.kernel.catalog_read import CatalogError, DocPath, format_path

_INTEGER_DIGITS: Final = 20
_PLACES: Final = 18


class ValueReader:
    """The values of one catalog document; `source` names it in every CatalogError."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: DocPath, problem: str) -> NoReturn:
        raise CatalogError(self.source, format_path(path), problem)

    def decimal(
        self, path: DocPath, text: str, *, positive: bool = False, at_most: int | None = None
    ) -> Decimal:
        value = Decimal(text)  # the schema guarantees non-negative decimal text
        # Exact values are stored as DECIMAL(38,18): 20 integer digits, 18 places.
        if value and value.adjusted() >= _INTEGER_DIGITS:
            self.fail(path, f"must be below 10^{_INTEGER_DIGITS}, got {json.dumps(text)}")
        if _decimal_places(value) > _PLACES:
            self.fail(path, f"must have at most {_PLACES} decimal places, got {json.dumps(text)}")
        if positive and value <= 0:
            self.fail(path, f"must be greater than 0, got {json.dumps(text)}")
        if at_most is not None and value > at_most:
            self.fail(path, f"must be between 0 and {at_most}, got {json.dumps(text)}")
        return value

    def optional_decimal(self, path: DocPath, spec: Mapping[str, Any], name: str) -> Decimal | None:
        text = spec.get(name)
        return None if text is None else self.decimal((*path, name), text)

    def date(self, path: DocPath, text: str) -> date:
        try:
            return date.fromisoformat(text)
        except ValueError:
            self.fail(path, f"not a valid calendar date: {json.dumps(text)}")

    def clock_time(self, path: DocPath, text: str) -> time:
        return time(int(text[:2]), int(text[3:5]))  # the schema guarantees HH:MM


def _decimal_places(value: Decimal) -> int:
    """Significant decimal places: "1.500" has 1 (trailing zeros do not count)."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # the schema admits finite numbers only
    if not value:
        return 0
    places = -exponent
    for digit in reversed(digits):
        if places <= 0 or digit != 0:
            break
        places -= 1
    return max(places, 0)

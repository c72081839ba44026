"""A raw record's JSON values read as the fields of a usage event: ids, nested
objects, attribute text, decimal text, and a short rendering for rejection details.

JSON values arrive as orjson reads them (str, int, float, bool, None, dict, list) or,
for records read exactly, with numbers as `Decimal` (`IntLiteral` for integer
literals); both read alike here.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Mapping
from decimal import Decimal
from typing import Final

import orjson

from mediation.literals import IntLiteral
from meterline.kernel.reasons import MALFORMED, Rejected

# Range of the integers orjson returns as int (larger ones come back as float).
_INT_RANGE: Final = range(-(2**63), 2**64)
# ASCII only: Python's \d also matches other scripts' digits.
_DECIMAL_TEXT: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def identifier(value: object, name: str) -> str | None:
    """An id-like field (event id, account, meter): a string, or an integer rendered as text."""
    if value is None or type(value) is str:
        return value
    if type(value) is int or type(value) is IntLiteral:
        number = int(value)
        if number in _INT_RANGE:  # orjson reads larger integers as floats: keep both modes alike
            return str(number)
    raise Rejected(MALFORMED, f"{name} must be a string, not {_json_type(value)}")


def payload(value: object, name: str) -> Mapping[str, object]:
    """A nested object (`attributes`, CloudEvents `data`, Lago `properties`); absent means empty."""
    if value is None:
        return {}
    if type(value) is dict:
        return value
    raise Rejected(MALFORMED, f"{name} must be an object, not {_json_type(value)}")


def flatten_attributes(source: Mapping[str, object], name: str, skip: str | None = None) -> dict[str, str]:
    """Attribute values as strings; null values are dropped, nested ones become compact JSON."""
    attributes: dict[str, str] = {}
    for key, value in source.items():
        if key == skip:
            continue
        text = attribute_text(value, name, key)
        if text is not None:
            attributes[key] = text
    return attributes


def attribute_text(value: object, name: str, key: str = "") -> str | None:
    """A JSON value as the string an attribute (or a unique_count value) holds.

    `name` (and `key`, inside an object) name the value in a rejection detail.
    """
    if type(value) is str:
        return value
    if value is None:
        return None
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return str(value)
    if isinstance(value, float | Decimal):
        return _number_text(value)
    try:
        return orjson.dumps(value, default=_json_number, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as exc:  # too deeply nested for orjson (JSONEncodeError is a TypeError)
        raise Rejected(MALFORMED, f"{name}.{key}: {exc}" if key else f"{name}: {exc}") from None


def _number_text(value: float | Decimal) -> str:
    # Render as orjson reading would: an int in 64-bit range, else the shortest float repr.
    number = _json_number(value)
    return str(number) if type(number) is int else repr(number)


def _json_number(value: object) -> int | float:
    if type(value) is IntLiteral and int(value) in _INT_RANGE:
        return int(value)
    if isinstance(value, float | Decimal):
        return float(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _json_type(value: object) -> str:
    if value is True or value is False:
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


_BOUNDED = reprlib.Repr()
_BOUNDED.maxlevel = 3  # a record may nest a value a thousand levels deep: str() would recurse


def short(value: object) -> str:
    """A value as a rejection detail shows it: at most 40 characters, nesting bounded."""
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, dict | list):
        text = _BOUNDED.repr(value)
    else:
        text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def decimal_text(text: str, name: str, reason: str) -> Decimal:
    """A decimal number written as text, exactly; Rejected with `reason` otherwise."""
    if _DECIMAL_TEXT.fullmatch(text) is None:
        raise Rejected(reason, f"{name} is not a decimal number: {short(text)}")
    try:
        return Decimal(text)
    except ArithmeticError:  # exponent beyond what Decimal can hold
        raise Rejected(reason, f"{name} is out of range: {short(text)}") from None

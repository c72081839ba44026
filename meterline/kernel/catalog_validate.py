"""The first validation pass of a catalog document: its JSON Schema.

`schemas/catalog.schema.json` checks shape, types and decimal text; the rules
that span objects are checked while the catalog is built (meterline.kernel.catalog_file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import Any, cast

import jsonschema
from jsonschema.exceptions import ValidationError

from meterline.kernel.catalog_read import CatalogError, DocPath, format_path

__all__ = ["catalog_schema", "validate_document"]


@lru_cache(maxsize=1)
def catalog_schema() -> dict[str, Any]:
    """The JSON Schema of catalog documents (shipped as package data of `schemas`)."""
    text = resources.files("schemas").joinpath("catalog.schema.json").read_text(encoding="utf-8")
    return cast(dict[str, Any], json.loads(text))


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    # Local `$ref`s are inlined: resolving them on every object halves validation speed,
    # which matters for catalogs of thousands of accounts. The schema is not recursive.
    schema = catalog_schema()
    definitions: dict[str, Any] = schema["$defs"]

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/$defs/"):
                return inline(definitions[reference.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items() if key != "$defs"}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return jsonschema.Draft202012Validator(inline(schema))


def _as_document(value: Any) -> Any:
    """A plain JSON-shaped copy of a document with numbers and dates as text.

    Readers already keep numbers as text; this covers documents built in Python
    (ints, Decimals, dates). A float is taken as its shortest round-trip text,
    which is the literal its author wrote.
    """
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(_as_document(key)): _as_document(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_as_document(item) for item in value]
    return value


def _schema_problem(error: ValidationError) -> tuple[DocPath, str]:
    """A user-facing path and problem for one schema violation."""
    path: DocPath = tuple(error.absolute_path)
    instance = error.instance
    if error.validator == "required" and isinstance(instance, Mapping):
        missing = [name for name in cast(list[str], error.validator_value) if name not in instance]
        return (*path, missing[0]), "required field is missing"
    if error.validator == "additionalProperties" and isinstance(instance, Mapping):
        allowed = set(cast(Mapping[str, Any], error.schema).get("properties", {}))
        extra = sorted(str(name) for name in instance if name not in allowed)
        return (*path, extra[0]), f"unknown field (allowed: {', '.join(sorted(allowed))})"
    custom = error.schema.get("errorMessage") if isinstance(error.schema, Mapping) else None
    if custom and error.validator in ("pattern", "enum", "type", "minimum"):
        return path, f"{custom}, got {json.dumps(instance)}"
    if error.validator == "type":
        return path, f"must be of type {error.validator_value}, got {json.dumps(instance)}"
    return path, error.message


def validate_document(document: Mapping[str, Any], source: str = "<catalog>") -> dict[str, Any]:
    """Check a document against the JSON Schema; returns its normalized (JSON-shaped) copy."""
    normalized = _as_document(document)
    if not isinstance(normalized, dict):
        raise CatalogError(source, "$", "a catalog must be a mapping with meters, plans and accounts")
    errors = list(_validator().iter_errors(normalized))
    if errors:
        # The first problem in document order, as the cross-object checks report theirs.
        problems = [_schema_problem(error) for error in errors]
        path, problem = min(problems, key=lambda item: _document_position(normalized, item[0]))
        raise CatalogError(source, format_path(path), problem)
    return normalized


def _document_position(document: Any, path: DocPath) -> list[int]:
    """Where a path lies in the document: list indexes and key positions (missing keys last)."""
    position: list[int] = []
    node = document
    for part in path:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            position.append(part)
            node = node[part]
        elif isinstance(node, dict) and part in node:
            position.append(list(node).index(part))
            node = node[part]
        else:
            position.append(len(node) if isinstance(node, dict | list) else 0)
            node = None
    return position

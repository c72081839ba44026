"""Reading contract catalog files (YAML or JSON) into plain documents.

Numbers are never floats: the YAML and JSON readers keep every number as its
decimal text. Problems reading or parsing a file are :class:`CatalogError`s,
naming the file, the position and the problem, like every catalog error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from re import Pattern
from typing import Any, Final, NoReturn, cast

import yaml

__all__ = ["CatalogError", "DocPath", "PathPart", "format_path", "read_catalog_document"]

PathPart = str | int
DocPath = tuple[PathPart, ...]


class CatalogError(ValueError):
    """An invalid catalog: which file, where in it, and what is wrong.

    `str()` is one line, `FILE: PATH: PROBLEM`, e.g.
    `catalog.yaml: plans[1].charges[0].tiers[2].unit_price: must be a non-negative decimal`.
    """

    def __init__(self, source: str, path: str, problem: str) -> None:
        super().__init__(f"{source}: {path}: {problem}")
        self.source = source
        self.path = path
        self.problem = problem


_PATH_SPECIAL: Final = ' .[]"'


def format_path(parts: Iterable[PathPart]) -> str:
    """`("plans", 1, "charges", 0, "id")` -> `plans[1].charges[0].id`; the root is `$`."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part and part.isprintable() and not any(c in part for c in _PATH_SPECIAL):
            text += f".{part}" if text else part
        else:  # a key that would break the path, or the one-line message: quoted, escaped
            text += f"[{json.dumps(part)}]"
    return text or "$"


# --------------------------------------------------------------------------- reading


_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG: Final = "tag:yaml.org,2002:timestamp"


class _CatalogYamlLoader(yaml.SafeLoader):
    """SafeLoader that keeps numbers as their text and dates as strings.

    Also YAML 1.2 booleans only (`no` stays the string "no", e.g. a region code)
    and duplicate keys are an error rather than a silent overwrite.
    """


def _scalar_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(cast(yaml.ScalarNode, node)))


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.Node) -> dict[Any, Any]:
    assert isinstance(node, yaml.MappingNode)
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


def _catalog_resolvers() -> dict[Any, list[tuple[str, Pattern[str]]]]:
    """SafeLoader's implicit resolvers without timestamps and with YAML 1.2 booleans."""
    yaml_1_2_bool = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
    resolvers: dict[Any, list[tuple[str, Pattern[str]]]] = {}
    for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items():
        kept = [(tag, rx) for tag, rx in entries if tag not in (_BOOL_TAG, _TIMESTAMP_TAG)]
        if first in ("t", "T", "f", "F"):
            kept.append((_BOOL_TAG, yaml_1_2_bool))
        resolvers[first] = kept
    return resolvers


_CatalogYamlLoader.yaml_implicit_resolvers = _catalog_resolvers()
# Numbers (and explicitly tagged timestamps) stay the text their author wrote.
for _tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", _TIMESTAMP_TAG):
    _CatalogYamlLoader.add_constructor(_tag, _scalar_text)
_CatalogYamlLoader.add_constructor("tag:yaml.org,2002:map", _mapping_without_duplicates)


def _reject_json_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a valid number")


def read_catalog_document(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON catalog file, keeping every number as its decimal text.

    `.json` files are read as JSON, anything else as YAML (a superset of JSON).
    Problems reading or parsing the file are CatalogErrors too.
    """
    path = Path(path)
    source = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(source, "$", f"cannot read the file: {exc}") from exc
    document: Any
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text, parse_float=str, parse_int=str, parse_constant=_reject_json_constant)
        except ValueError as exc:
            position = (
                f"line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "$"
            )
            problem = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise CatalogError(source, position, f"invalid JSON: {problem}") from exc
    else:
        try:
            document = yaml.load(
                text, Loader=_CatalogYamlLoader
            )  # a SafeLoader subclass: no arbitrary objects
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            position = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "$"
            problem = getattr(exc, "problem", None) or str(exc)
            raise CatalogError(source, position, f"invalid YAML: {problem}") from exc
    if not isinstance(document, dict):
        raise CatalogError(source, "$", "a catalog must be a mapping with meters, plans and accounts")
    return document

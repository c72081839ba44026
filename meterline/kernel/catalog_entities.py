"""A catalog as keyed entities on the compacted contracts topic, and back.

Keys are `meter/<code>`, `plan/<id>`, `seller/<id>`, `account/<id>`; every stage reassembles the
latest values into a document and parses it like a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from meterline.kernel.catalog_validate import validate_document

__all__ = ["ENTITY_VERSION", "SECTIONS", "catalog_entities", "document_from_entities"]

SECTIONS: Final = {
    "meter": ("meters", "code"),
    "plan": ("plans", "id"),
    "seller": ("sellers", "id"),
    "account": ("accounts", "id"),
}
ENTITY_VERSION: Final = 1


def catalog_entities(
    document: Mapping[str, Any], source: str = "<catalog>"
) -> list[tuple[str, dict[str, Any]]]:
    """Split a validated document into keyed entities for the compacted contracts topic.

    Validate the whole catalog first (:func:`parse_catalog`); this only re-checks the
    shape, so a malformed document is a CatalogError here rather than a KeyError.

    Keys are `meter/<code>`, `plan/<id>`, `seller/<id>`, `account/<id>`; values are JSON-serializable
    dicts `{"kind", "id", "version", "spec"}` with decimals as text. Meters come first,
    then plans and sellers, then accounts, so a reader never sees a reference before its target
    when the topic is read in order.
    """
    normalized = validate_document(document, source)
    entities: list[tuple[str, dict[str, Any]]] = []
    for kind, (section, id_field) in SECTIONS.items():
        for spec in normalized.get(section, ()):
            entity_id = spec[id_field]
            value = {"kind": kind, "id": entity_id, "version": ENTITY_VERSION, "spec": spec}
            entities.append((f"{kind}/{entity_id}", value))
    return entities


def document_from_entities(values: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Reassemble a catalog document from entity values (see :func:`catalog_entities`).

    Pass the latest value of each key; a later value of the same entity replaces an
    earlier one and None (a tombstone) is skipped. Entities are ordered by id, so the
    document does not depend on the order the topic was read in.
    """
    latest: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in SECTIONS}
    for value in values:
        if value is None:
            continue
        kind = value.get("kind")
        if kind not in SECTIONS:
            raise ValueError(f"not a catalog entity: kind {kind!r}")
        if value.get("version") != ENTITY_VERSION:
            raise ValueError(f"unsupported catalog entity version {value.get('version')!r}")
        latest[kind][str(value["id"])] = dict(value["spec"])
    return {
        section: [latest[kind][key] for key in sorted(latest[kind])]
        for kind, (section, _) in SECTIONS.items()
    }

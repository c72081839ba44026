"""write_month: the generated catalog and events as the files `meterline run` reads."""

from __future__ import annotations

from pathlib import Path

from generator.catalog import generate_catalog
from generator.events import generate_events
from generator.files import write_month
from meterline.kernel.catalog_file import load_catalog, parse_catalog


def test_write_month_writes_the_generated_catalog_and_events(tmp_path: Path) -> None:
    catalog, events = write_month(tmp_path, 5, 300, seed=4)
    assert (catalog, events) == (tmp_path / "catalog.yaml", tmp_path / "events.jsonl")
    document = generate_catalog(5, 4)
    assert load_catalog(catalog) == parse_catalog(document)
    assert events.read_bytes() == b"".join(line + b"\n" for line in generate_events(document, 300, 4))

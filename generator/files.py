"""A generated month as the files `meterline run` reads: catalog.yaml and events.jsonl."""

from __future__ import annotations

from pathlib import Path

import yaml

from generator.catalog import generate_catalog
from generator.events import generate_events

__all__ = ["write_month"]


def write_month(folder: Path, accounts: int, events: int, seed: int) -> tuple[Path, Path]:
    """Write a catalog of `accounts` accounts and `events` raw usage lines into `folder`.

    Returns the catalog (YAML) and events (native JSON, one per line) paths.
    """
    document = generate_catalog(accounts, seed)
    catalog = folder / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(document, sort_keys=False))
    lines = folder / "events.jsonl"
    with lines.open("wb") as handle:
        for line in generate_events(document, events, seed):
            handle.write(line + b"\n")
    return catalog, lines

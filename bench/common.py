"""What every benchmark shares: the machine description, medians, and RESULTS.md."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

import confluent_kafka

RESULTS = Path(__file__).parent / "RESULTS.md"


class BenchmarkFailed(RuntimeError):
    """A benchmark produced a wrong result: its figures must not be recorded."""


def machine() -> str:
    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"librdkafka {confluent_kafka.libversion()[0]}, {platform.machine()}"
    )


def spread(values: list[float]) -> str:
    """Median with min and max, as the results table shows it."""
    return (
        f"{statistics.median(values):,.0f} (min {min(values):,.0f}, max {max(values):,.0f}, n={len(values)})"
    )


def command() -> str:
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    module = spec.name if spec is not None else sys.argv[0]
    return " ".join([".venv/bin/python -m", module, *sys.argv[1:]])


def record(title: str, rows: list[tuple[str, str]], notes: str = "") -> None:
    """Append one section to bench/RESULTS.md."""
    lines = [
        f"\n## {title} — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        f"\nCommand: `{command()}`  \nMachine: {machine()}\n\n",
        "| figure | value |\n| --- | --- |\n",
        *[f"| {name} | {value} |\n" for name, value in rows],
    ]
    if notes:
        lines.append(f"\n{notes}\n")
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section is appended by the benchmark named in it.\n")
    with RESULTS.open("a") as handle:
        handle.writelines(lines)
    print("".join(lines))

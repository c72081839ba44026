"""What every benchmark shares: the machine description, medians, repeated runs and RESULTS.md."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

import confluent_kafka
from confluent_kafka import Producer

import schemas.binary
from meterline.app.pipeline import Workers
from meterline.app.publish import create_topics
from meterline.kernel.config import RawTopic, Settings, settings_to_toml
from meterline.kernel.topics import RAW
from meterline.runtime.kafka_config import plain_producer_config
from tests.integration.harness import after_lineage_guard, read_topic

RESULTS = Path(__file__).parent / "RESULTS.md"

# One record of a topic, as a stage bench keeps it to replay: partition, key, value, headers.
Record = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]


class BenchmarkFailed(RuntimeError):
    """A benchmark produced a wrong result: its figures must not be recorded."""


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _build() -> str:
    """Whether the hot path runs compiled (mypyc, see setup.py) or interpreted: figures differ a lot."""
    compiled = Path(schemas.binary.__file__).suffix == ".so"
    return "hot path compiled with mypyc" if compiled else "plain Python (hot path not compiled)"


def machine() -> str:
    cpu = _cpu_model()
    return (
        f"{os.cpu_count()} cores{f' ({cpu})' if cpu else ''}, Python {platform.python_version()}, "
        f"librdkafka {confluent_kafka.libversion()[0]}, confluent-kafka {confluent_kafka.version()}, "
        f"{platform.system()} {platform.release()} {platform.machine()}, {_build()}"
    )


def spread(values: list[float], fmt: str = ",.0f") -> str:
    """Median with min and max, as the results table shows it; `fmt` formats each of the three."""
    return (
        f"{statistics.median(values):{fmt}} "
        f"(min {min(values):{fmt}}, max {max(values):{fmt}}, n={len(values)})"
    )


def add_runs_option(parser: argparse.ArgumentParser, default: int = 3) -> None:
    """`--runs N`: every figure is the median of N runs (bench.run --full passes 3, --quick 1)."""
    parser.add_argument(
        "--runs", type=int, default=default, help=f"runs per figure; median, min and max (default {default})"
    )


def ratio_rows(stage: str, stage_rates: list[float], loop_rates: list[float]) -> list[tuple[str, str]]:
    """The same-run baseline rows: the plain loop's rate and the stage's rate as a ratio of the medians."""
    ratio = statistics.median(stage_rates) / statistics.median(loop_rates)
    return [
        ("plain loop, records/s", spread(loop_rates)),
        (f"{stage} / plain loop", f"{ratio:.3f}"),
    ]


def read_guarded(bootstrap_servers: str, topic: str) -> list[Record]:
    """A whole topic, read_committed, minus the copies the lineage guard drops (meterline.kernel.lineage)."""
    return [
        (m.partition(), m.key(), m.value(), list(m.headers() or []))
        for m in after_lineage_guard(read_topic(bootstrap_servers, topic))
    ]


def replay(bootstrap_servers: str, topic: str, records: list[Record]) -> None:
    """Publish kept records again, same partitions, keys and headers (the producer is gone on return)."""
    producer = Producer(plain_producer_config(bootstrap_servers, {}))
    for partition, key, value, headers in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=partition, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise BenchmarkFailed(f"could not publish the prepared records to {topic}")


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


def keyed_workers(bootstrap_servers: str, out: Path, partitions: int, instance_id: str) -> Workers:
    """Stage workers whose settings declare the raw topic keyed by account, as `meterline run` does.

    The workers read their settings from a meterline.toml (like run_pipeline's), since
    the raw topics cannot be passed as flags; workers on the defaults (raw topic not
    keyed) would add the repartition hop to every event. Creates the topics too.
    """
    settings = Settings(
        bootstrap_servers=bootstrap_servers,
        partitions=partitions,
        instance_id=instance_id,
        raw_topics=(RawTopic(RAW, keyed_by_account=True),),
    )
    out.mkdir(parents=True, exist_ok=True)
    config = out / "meterline.toml"
    config.write_text(settings_to_toml(settings))
    create_topics(settings)
    return Workers(settings, out, str(config))

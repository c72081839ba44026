"""Stage workers with `schema_registry_url`, against the in-process STAND-IN for the
Confluent Schema Registry (tests/support/fake_registry.py, which speaks its REST API):
the workers register the schemas under their installation's subjects at startup, frame
records with the registry's ids, and bill exactly what a run with the pinned ids bills.
A registry that refuses the schemas stops a worker with exit code 1."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from meterline.app.publish import publish_close
from meterline.runtime.broker import EmbeddedBroker
from schemas.codec import PINNED, configure
from tests.integration.harness import LivePipeline, meterline_run, read_topic, table
from tests.support.fake_registry import FakeSchemaRegistry

pytestmark = pytest.mark.integration

FLAT = Path(__file__).parent.parent / "data" / "flat"
PREFIX = "reg."
USER, PASSWORD = "meterline", "s3cret-pw"
AUTH = "Basic bWV0ZXJsaW5lOnMzY3JldC1wdw=="  # meterline:s3cret-pw

DRAFTS = """SELECT account_id, period, currency, subtotal, discount, tax, total, status, event_count
            FROM invoice_drafts ORDER BY ALL"""
LINES = """SELECT account_id, period, line_no, kind, charge_id, description, quantity, unit, unit_price,
                  amount, currency FROM invoice_lines ORDER BY ALL"""
TOTALS = "SELECT * FROM usage_totals ORDER BY ALL"


@pytest.fixture
def registry() -> Iterator[FakeSchemaRegistry]:
    with FakeSchemaRegistry(users={USER: PASSWORD}) as running:
        yield running
    configure(PINNED)


def _registered_id(registry: FakeSchemaRegistry, subject: str) -> int:
    request = urllib.request.Request(f"{registry.url}/subjects/{subject}/versions/latest")
    request.add_header("Authorization", AUTH)
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = orjson.loads(response.read())
    return int(answer["id"])


def _wait_for(path: Path, pipeline: LivePipeline, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for stage, process in pipeline.workers.processes.items():
            assert process.poll() is None, f"{stage} worker died with {process.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)  # polling a file the consolidator writes; no event to wait on


def test_workers_frame_with_the_registry_ids_and_bill_the_same(
    fresh_broker: EmbeddedBroker,
    registry: FakeSchemaRegistry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog, events = FLAT / "catalog.yaml", FLAT / "events.jsonl"
    reference = tmp_path / "reference"
    completed = meterline_run(catalog, f"json:{events}", reference, "--close-all", partitions=2, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    periods = [p for (p,) in table(reference, "SELECT DISTINCT period FROM invoice_drafts ORDER BY 1")]

    # The workers read their settings from the environment (no config file is handed them).
    monkeypatch.setenv("METERLINE_SCHEMA_REGISTRY_URL", registry.url)
    monkeypatch.setenv("METERLINE_SCHEMA_REGISTRY_USER_INFO", f"{USER}:{PASSWORD}")
    out = tmp_path / "out"
    pipeline = LivePipeline(fresh_broker, out, partitions=2, topic_prefix=PREFIX)
    try:
        published = pipeline.publish(catalog, events)
        pipeline.start("mediation", "rating", "consolidation")
        totals = pipeline.wait_drained()
        assert totals.events_in == published and totals.rated > 0
        for period in periods:
            publish_close(pipeline.settings, period)
        for period in periods:
            _wait_for(out / "invoices" / f"period={period}" / "invoice_lines.parquet", pipeline)
        rated = read_topic(fresh_broker.bootstrap_servers, pipeline.settings.topics.rated)
        mediated = read_topic(fresh_broker.bootstrap_servers, pipeline.settings.topics.mediated)
    finally:
        pipeline.stop()

    # The subjects are the installation's topics (TopicNameStrategy), and the ids the registry's.
    rated_id = _registered_id(registry, f"{PREFIX}meterline.usage.rated-value")
    mediated_id = _registered_id(registry, f"{PREFIX}meterline.usage.mediated-value")
    assert (mediated_id, rated_id) != tuple(PINNED)
    assert len(rated) == totals.rated and len(mediated) >= totals.rated
    assert {struct.unpack_from(">bI", m.value()) for m in rated} == {(0, rated_id)}
    assert {struct.unpack_from(">bI", m.value()) for m in mediated} == {(0, mediated_id)}

    assert table(out, DRAFTS) == table(reference, DRAFTS)
    assert table(out, LINES) == table(reference, LINES)
    assert table(out, TOTALS) == table(reference, TOTALS)
    logs = "".join(path.read_text() for path in (out / "logs").glob("*.log"))
    assert "schema_ids" in logs and PASSWORD not in logs


def test_a_registry_that_lacks_the_schemas_stops_the_worker(
    broker: EmbeddedBroker, registry: FakeSchemaRegistry, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "METERLINE_SCHEMA_REGISTRY_URL": registry.url,
        "METERLINE_SCHEMA_REGISTRY_USER_INFO": f"{USER}:{PASSWORD}",
        # Look up only: nothing is registered, so the registry answers 404 (subject not found).
        "METERLINE_SCHEMA_REGISTRY_AUTO_REGISTER": "false",
        "METERLINE_TOPIC_PREFIX": "reg-fatal.",
    }
    command = [sys.executable, "-m", "meterline", "rating", "--bootstrap-servers", broker.bootstrap_servers]
    completed = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert completed.returncode == 1, completed.stdout + completed.stderr
    output = completed.stdout + completed.stderr
    lines = [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]
    fatal = [line for line in lines if line.get("event") == "worker_fatal"]
    assert len(fatal) == 1, output
    assert fatal[0]["reason"].startswith("schema registry: ") and "404" in fatal[0]["reason"]
    assert "Traceback" not in output and PASSWORD not in output
    assert registry.schemas == {}  # looked up, never registered
